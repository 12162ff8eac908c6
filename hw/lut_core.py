"""The LUT tensor core: low-bit weights x 8-bit activations by table lookup (LUT Tensor Core,
T-MAC). The algebra, its exactness and the widths are in ``sim.lut_model``, which is also the
core's reference.

Geometry: an elongated ``tile_m`` x ``tile_n`` tile (rows of A x columns of W); K advances one
group of ``group`` activations at a time.

- **Precompute.** An ``a`` beat carries one group per row (``tile_m`` x ``group`` codes). The
  precompute unit builds each row's symmetrized table, the 2**(group-1) stored entries
  T[idx] = sum_j (bit_j(idx) ? +a_j : -a_j), and the group sum S, into the table register.
- **LUT array.** A ``w`` beat carries one weight bit plane of that group: ``group`` bits per
  column (bit j: k index j of the group) and the mode. Each of the tile_m x tile_n cells looks
  its index up in its row's table (an index with the top bit set reads -T[~idx]), scales the
  entry by the plane's coefficient (a shift, negated for the top plane of a signed format) and
  accumulates. Planes are bit-serial: a k-bit mode takes k ``w`` beats per group, plane 0 first.
  The next group's table loads while the last plane of the current one is consumed, so the
  core takes one plane per cycle without a bubble.
- **Correction.** After the tile's last plane (the group whose ``a`` beat had ``last``), each
  cell holds its sum and each row its (C - 2z) * S (shifts and adds: C - 2z is 0, -1 or
  2**k - 1); as a row leaves, each column adds the two and halves: the exact integer dot
  product, saturated at ``acc_bits``.

Streams: ``a`` {data: tile_m x group codes, last}; ``w`` {data: tile_n x group bits, mode};
``o`` {data: tile_n x acc_bits signed}, one row of C per beat, always ready.

Latency: row r of a tile leaves in cycle t + 1 + r, t the cycle its last ``w`` beat was
accepted. A tile's results drain in tile_m cycles; a tile ending sooner waits for them.
"""

from __future__ import annotations

from collections.abc import Sequence

from amaranth.hdl import Array, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.pe import mode_cases
from qaccel import config as qconfig
from qaccel import formats
from sim.lut_model import LutWeight, lut_weight, plane_acc_bits

__all__ = ["LutCore", "lut_modes"]


def lut_modes(cfg: qconfig.LutCoreConfig) -> tuple[LutWeight, ...]:
    """The weight formats of a LUT core configuration: binary for 1 bit, intk and uintk."""
    names = []
    for bits in cfg.weight_bits:
        names += ["binary"] if bits == 1 else [f"int{bits}", f"uint{bits}"]
    if cfg.ternary:
        names.append("ternary")
    return tuple(lut_weight(n) for n in names)


class LutCore(wiring.Component):
    """See the module docstring."""

    def __init__(
        self,
        modes: Sequence[LutWeight],
        *,
        group: int = 4,
        tile_m: int = 2,
        tile_n: int = 64,
        activation: str = "int8",
        acc_bits: int = 32,
    ):
        try:
            self._check(modes, group, tile_m, tile_n, activation, acc_bits)
        except ValueError:
            self._MustUse__silence = True  # rejected, so never elaborated
            raise
        self._modes = tuple(modes)
        self._group, self._m, self._n = group, tile_m, tile_n
        self._act = formats.get_format(activation)
        self._acc_bits = acc_bits
        super().__init__(
            {
                "a": In(
                    stream.Signature(
                        data.StructLayout(
                            {
                                "data": data.ArrayLayout(data.ArrayLayout(8, group), tile_m),
                                "last": 1,
                            }
                        )
                    )
                ),
                "w": In(
                    stream.Signature(
                        data.StructLayout(
                            {"data": data.ArrayLayout(group, tile_n), "mode": self.mode_bits}
                        )
                    )
                ),
                "o": Out(
                    stream.Signature(
                        data.StructLayout({"data": data.ArrayLayout(signed(acc_bits), tile_n)}),
                        always_ready=True,
                    )
                ),
                "busy": Out(1),
            }
        )

    @staticmethod
    def _check(modes, group, tile_m, tile_n, activation, acc_bits):
        if not modes:
            raise ValueError("a LUT core needs at least one weight format")
        for name, value, lo, hi in (
            ("group", group, 2, 8),
            ("tile_m", tile_m, 1, 256),
            ("tile_n", tile_n, 1, 1024),
            ("acc_bits", acc_bits, 16, 64),
        ):
            if not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{name} must be an integer in {lo}..{hi}, not {value!r}")
        if activation not in ("int8", "uint8"):
            raise ValueError(f"the LUT core takes int8 or uint8 activations, not {activation!r}")

    @classmethod
    def from_config(cls, cfg: qconfig.AcceleratorConfig) -> LutCore:
        lut = cfg.lut
        return cls(
            lut_modes(lut),
            group=lut.group,
            tile_m=lut.tile_m,
            tile_n=lut.tile_n,
            activation=lut.activation,
            acc_bits=lut.acc_bits,
        )

    modes = property(lambda self: self._modes)
    group = property(lambda self: self._group)
    tile_m = property(lambda self: self._m)
    tile_n = property(lambda self: self._n)
    acc_bits = property(lambda self: self._acc_bits)
    activation = property(lambda self: self._act)

    @property
    def mode_bits(self) -> int:
        return max(1, (len(self._modes) - 1).bit_length())

    @property
    def entry_bits(self) -> int:
        """Signed width of a table entry: |T| <= group * max |a|."""
        largest = self._group * self._act.max_magnitude
        return int(largest).bit_length() + 1

    def mode_index(self, weight: str) -> int:
        for i, mode in enumerate(self._modes):
            if mode.fmt.name == weight:
                return i
        raise ValueError(f"the LUT core has no {weight} weights")

    def elaborate(self, platform):
        m = Module()
        g, rows, cols = self._group, self._m, self._n
        entries = 1 << (g - 1)
        wide = plane_acc_bits(self._acc_bits)

        # ---- precompute: tables and group sums into the table register ------------------
        table = [
            Array(Signal(signed(self.entry_bits), name=f"t{r}_{e}") for e in range(entries))
            for r in range(rows)
        ]
        full, table_last = Signal(), Signal()
        plane = Signal(range(4))
        w_take, a_take = Signal(), Signal()
        last_plane = Signal()
        m.d.comb += [
            w_take.eq(self.w.valid & self.w.ready),
            a_take.eq(self.a.valid & self.a.ready),
        ]
        s_sum = [Signal(signed(wide), name=f"s{r}") for r in range(rows)]
        a_fresh = Signal(init=1)  # the next a beat starts a tile
        # Sub-blocks as submodules, so that synthesis with the hierarchy kept counts them apart.
        m.submodules.table_unit = tu = Module()
        m.submodules.row_correction = cu = Module()
        for r in range(rows):
            acts = [self.a.payload.data[r][j] for j in range(g)]
            acts = [a.as_signed() if self._act.signed else a for a in acts]
            with tu.If(a_take):
                for e, entry in enumerate(_entries(acts)):
                    tu.d.sync += table[r][e].eq(entry)
                tu.d.sync += s_sum[r].eq(_sat(Mux(a_fresh, 0, s_sum[r]) + sum(acts), wide))
        with m.If(a_take):
            m.d.sync += [table_last.eq(self.a.payload.last), a_fresh.eq(self.a.payload.last)]
        consumed = w_take & last_plane
        with m.If(a_take):
            m.d.sync += full.eq(1)
        with m.Elif(consumed):
            m.d.sync += full.eq(0)
        m.d.comb += self.a.ready.eq(~full | consumed)

        # ---- plane control: which plane, its shift and sign ------------------------------
        shift, negative = Signal(range(4)), Signal()
        for _, mode in mode_cases(m, self.w.payload.mode, self._modes):
            m.d.comb += last_plane.eq(plane == mode.planes - 1)
            with m.Switch(plane):
                for b, c in enumerate(mode.coefficients):
                    with m.Case(b):
                        m.d.comb += [shift.eq(abs(c).bit_length() - 1), negative.eq(c < 0)]
        with m.If(w_take):
            m.d.sync += plane.eq(Mux(last_plane, 0, plane + 1))

        # ---- the LUT array and the output rows -------------------------------------------
        tile_end = last_plane & table_last
        pending = Signal(range(rows + 1))  # result rows still to leave
        row = Signal(range(max(rows, 2)))
        m.d.comb += self.w.ready.eq(full & ~(tile_end & (pending > 1)))
        # The cells hold their plane sums; the correction, the halving and the saturation run
        # once per column, on the row leaving (``row``), instead of once per cell.
        hold = [
            [Signal(signed(wide), name=f"hold{r}_{c}") for c in range(cols)] for r in range(rows)
        ]
        corr_bits = wide + max(abs(mode.correction) for mode in self._modes).bit_length() + 1
        held_corr = [Signal(signed(corr_bits), name=f"held_corr{r}") for r in range(rows)]
        idx_bits = self.w.payload.data
        for r in range(rows):
            corr = Signal(signed(corr_bits), name=f"corr{r}")
            for _, mode in mode_cases(cu, self.w.payload.mode, self._modes):
                cu.d.comb += corr.eq(_times(s_sum[r], mode.correction))
            with cu.If(w_take & tile_end):
                cu.d.sync += held_corr[r].eq(corr)
            for c in range(cols):
                m.submodules[f"cell_{r}_{c}"] = cell = Module()
                idx = idx_bits[c]
                top = idx[g - 1]
                low = Mux(top, ~idx, idx)[: g - 1]
                entry = table[r][low]
                scaled = Signal(signed(self.entry_bits + 3), name=f"term{r}_{c}")
                cell.d.comb += scaled.eq(entry << shift)
                # -x = ~x + 1: the inversion merges into the lookup's last LUT and the + 1 is
                # the adder's carry in (in a one-cell model, a negation and a multiplexer cost
                # 19 LUT4 more).
                minus = top ^ negative
                flipped = scaled ^ minus.replicate(len(scaled)).as_signed()
                acc = Signal(signed(wide), name=f"acc{r}_{c}")
                total = Signal(signed(wide), name=f"sum{r}_{c}")
                cell.d.comb += total.eq(_sat(acc + flipped + minus, wide))
                # A tile's last plane leaves the accumulator zero for the next tile: the
                # flip-flops' synchronous reset instead of a zeroing multiplexer in front of
                # the adder (with the carry-in negation, a cell went from 231 to 198 LUT4).
                with cell.If(w_take):
                    cell.d.sync += acc.eq(total)
                    with cell.If(tile_end):
                        cell.d.sync += [acc.eq(0), hold[r][c].eq(total)]
        with m.If(w_take & tile_end):
            m.d.sync += [pending.eq(rows), row.eq(0)]
        with m.Elif(pending != 0):
            m.d.sync += [pending.eq(pending - 1), row.eq(row + 1)]
        m.d.comb += self.o.valid.eq(pending != 0)
        m.submodules.output_stage = out = Module()
        row_corr = Array(held_corr)[row]
        for c in range(cols):
            plane_sum = Array(h[c] for h in hold)[row]
            result = Signal(signed(self._acc_bits), name=f"result{c}")
            out.d.comb += result.eq(_sat((plane_sum + row_corr) >> 1, self._acc_bits))
            m.d.comb += self.o.payload.data[c].eq(result)
        m.d.comb += self.busy.eq(full | (pending != 0) | ~a_fresh)
        return m


def _entries(acts: list) -> list:
    """The stored table entries of one group, T[e] = sum_j (bit_j(e) ? +a_j : -a_j) with the
    top activation always negative, as one add each of two shared half tables: the signed sums
    of the low activations and of the high ones (24 adders at group 4 become 14)."""
    g = len(acts)
    half = g // 2

    def signed_sums(part: list, last_negative: bool) -> list:
        free = len(part) - last_negative  # the activations whose sign the index picks
        sums = []
        for i in range(1 << free):
            terms = [part[j] if (i >> j) & 1 else -part[j] for j in range(free)]
            sums.append(sum(terms + ([-part[-1]] if last_negative else [])))
        return sums

    low = signed_sums(acts[:half], last_negative=False)
    high = signed_sums(acts[half:], last_negative=True)
    return [low[e & ((1 << half) - 1)] + high[e >> half] for e in range(1 << (g - 1))]


def _sat(value, bits: int):
    """``value`` clamped to a signed ``bits``-bit range: it fits where its bits from
    ``bits - 1`` up are all equal, and its sign tells which bound it passed (no comparators)."""
    if len(value) <= bits:
        return value
    high = value[bits - 1 :]
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(high.all() | ~high.any(), value[:bits].as_signed(), Mux(value[-1], lo, hi))


def _times(x, constant: int):
    """x * constant as shifts and adds (constant 0, +-2**k or +-(2**k - 1)): the correction
    factors C - 2z; no multiplier."""
    magnitude = abs(constant)
    if magnitude == 0:
        return Const(0, 1)
    if magnitude & (magnitude - 1) == 0:
        product = x << (magnitude.bit_length() - 1)
    elif magnitude & (magnitude + 1) == 0:
        product = (x << magnitude.bit_length()) - x
    else:
        raise ValueError(f"no shift-add form for the correction factor {constant}")
    return -product if constant < 0 else product
