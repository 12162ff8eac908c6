"""The systolic array: rows x cols PEs with skewed edges and stream interfaces.

Streams (all payloads are ``lib.data`` layouts; ``ArrayLayout`` element 0 sits in the LSBs):

- ``w``: one weight word per column and the mode of the whole transfer. A word holds
  ``ModeSpec.lanes`` codes (``qaccel.modes.pack_lanes``).
- ``a``: one activation word per row, and ``last``.
- ``o``: one accumulator per column (two's complement, in units of 2**-frac_bits of the
  mode), and ``invalid`` per column (a NaN, inf or NaR joined the sum). ``o`` is never stalled:
  whoever consumes it must always take it (the memories behind it do).

Each operand is decoded once, at the edge (``hw.operands``), registered, skewed (row r by r
cycles, column c by c cycles) and then passed PE to PE through registers. The bottom row's
partial sums are de-skewed (column c delayed by cols-1-c), so a result row leaves in one beat.

**Weight-stationary** (``dataflow`` = 0). A matrix W (K x cols, K = lanes * rows) is loaded as
``rows`` ``w`` beats, bottom row first (beat i holds the words of PE row rows-1-i); the beats
shift down the weight chain, and the last one latches the whole chain into the PEs' shadow
weights; each PE copies its shadow into its active weight the cycle before the tile's first
activation reaches it. Then every ``a`` beat (one row of the left matrix, K codes) yields one
``o`` beat, its dot products with the columns of W; the beat with ``last`` ends the tile. The
next tile's weights load meanwhile, so tiles follow each other without a bubble as long as a
tile has at least rows activation beats; a tile's last ``w`` beat waits until the tile before it
has started (``sim.array_model.ws_copy_cycles``: max(rows - 2, 0) cycles after its first ``a``
beat). Latency: an ``a`` beat accepted in cycle t gives its ``o`` beat in cycle
t + rows + cols + s, where s = ``Datapath.stages``: 0 without pipelined PEs (``pipelined``),
1 with them, 2 with them and float modes (``qaccel.modes.pe_stages``).

**Output-stationary** (``dataflow`` = 1). ``w`` and ``a`` are joined: each step carries one
k-slice (``lanes`` values of k) of W (per column) and of A (per row); each PE accumulates
C[r, c]. The step with ``last`` ends a tile; its rows leave as rows consecutive ``o`` beats, row r
in cycle t_last + rows + cols + 1 + s + r, while the next tile accumulates. Tiles must be at least
``rows`` steps long (shorter ones stall until then).

**MX modes** (output-stationary only; ``qaccel.modes`` has the arithmetic). ``w`` and ``a`` carry
one more field, ``scale``: an E8M0 code per column and per row, the scale of the block the step
belongs to (read at the block's last step; hold it for the whole block). Blocks are counted
from each tile's first step: every ``block`` steps, and the tile's last step, end one. In
weight-stationary mode an MX mode yields ``invalid`` results.

Change ``dataflow`` only while ``busy`` is low. A ``mode`` code beyond the configured modes
runs the last one (the accelerator refuses such codes before they reach the array).
"""

from __future__ import annotations

from collections.abc import Sequence

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw import repeated
from hw.operands import ScalarDecoder
from hw.pe import PE, Datapath, mode_cases
from qaccel import config as qconfig
from qaccel.modes import ModeSpec, mode_spec
from sim.array_model import ws_copy_cycles

__all__ = ["SystolicArray", "array_modes"]

DATAFLOWS = ("ws", "os", "both")


def array_modes(cfg: qconfig.ArrayConfig) -> tuple[ModeSpec, ...]:
    """The ModeSpecs of an array configuration, in the configuration's order; float
    accumulators hold ``max(rows, max_k)`` products (``qaccel.isa.Geometry``)."""
    return tuple(
        mode_spec(
            p.weight,
            p.activation,
            rows=max(cfg.rows, cfg.max_k),
            acc_bits=cfg.acc_bits,
            mx_scale_range=cfg.mx_scale_range,
        )
        for p in cfg.modes
    )


class SystolicArray(wiring.Component):
    """A ``rows`` x ``cols`` array of mixed-precision PEs (see the module docstring)."""

    def __init__(
        self,
        rows: int,
        cols: int,
        modes: Sequence[ModeSpec],
        dataflow: str = "both",
        *,
        pipelined: bool = False,
    ):
        try:
            self._check(rows, cols, dataflow)
            self._dp = Datapath(
                tuple(modes), ws=dataflow != "os", os=dataflow != "ws", pipelined=pipelined
            )
        except ValueError:
            self._MustUse__silence = True  # rejected, so never elaborated: nothing to warn about
            raise
        self._rows, self._cols, self._dataflow = rows, cols, dataflow
        dp = self._dp
        w_fields = {"data": data.ArrayLayout(dp.w_word_bits, cols), "mode": dp.mode_bits}
        a_fields = {"data": data.ArrayLayout(dp.a_word_bits, rows), "last": 1}
        if dp.mx:  # one E8M0 block scale per column and per row, above the other fields
            w_fields["scale"] = data.ArrayLayout(dp.scale_bits, cols)
            a_fields["scale"] = data.ArrayLayout(dp.scale_bits, rows)
        members = {
            "w": In(stream.Signature(data.StructLayout(w_fields))),
            "a": In(stream.Signature(data.StructLayout(a_fields))),
            "o": Out(
                stream.Signature(
                    data.StructLayout(
                        {
                            "data": data.ArrayLayout(signed(dp.acc_width), cols),
                            "invalid": data.ArrayLayout(1, cols),
                        }
                    ),
                    always_ready=True,
                )
            ),
            "busy": Out(1),
        }
        if dataflow == "both":
            members["dataflow"] = In(1)
        super().__init__(members)

    @staticmethod
    def _check(rows, cols, dataflow):
        if not isinstance(rows, int) or rows < 1:
            raise ValueError(f"rows must be a positive integer, not {rows!r}")
        if not isinstance(cols, int) or cols < 1:
            raise ValueError(f"cols must be a positive integer, not {cols!r}")
        if dataflow not in DATAFLOWS:
            raise ValueError(f"dataflow must be one of {', '.join(DATAFLOWS)}, not {dataflow!r}")

    @classmethod
    def from_config(cls, cfg: qconfig.AcceleratorConfig) -> SystolicArray:
        arr = cfg.array
        return cls(arr.rows, arr.cols, array_modes(arr), arr.dataflow, pipelined=arr.pipelined)

    rows = property(lambda self: self._rows)
    cols = property(lambda self: self._cols)
    supported_dataflow = property(lambda self: self._dataflow)  # ws, os or both
    pipelined = property(lambda self: self._dp.pipelined)
    modes = property(lambda self: self._dp.modes)
    datapath = property(lambda self: self._dp)

    def mode_index(self, weight: str, activation: str) -> int:
        for i, spec in enumerate(self.modes):
            if (spec.mx or (spec.weight.name, spec.activation.name)) == (weight, activation):
                return i
        raise ValueError(f"the array has no mode {weight}*{activation}")

    def elaborate(self, platform):
        m = Module()
        dp, rows, cols = self._dp, self._rows, self._cols

        os = self.dataflow if self._dataflow == "both" else Const(int(self._dataflow == "os"), 1)

        # ---- control -------------------------------------------------------------------
        a_take = Signal()
        w_take = Signal()
        a_mode = Signal(dp.mode_bits)
        first = Signal(init=1)
        ws_bank = Signal()
        m.d.comb += [a_take.eq(self.a.valid & self.a.ready), w_take.eq(self.w.valid & self.w.ready)]
        ws_w_ready, ws_a_ready, ws_busy, os_ready = Const(0), Const(0), Const(0), Const(0)
        ws_mode = Signal(dp.mode_bits)
        if dp.ws:
            ws_w_ready, ws_a_ready, ws_shift, ws_latch, ws_busy = self._ws_control(
                m, w_take & ~os, a_take & ~os, ws_mode, ws_bank
            )
        block_end = Const(0)
        if dp.os:
            os_ready = self._os_control(m, a_take & os, first)
        if dp.mx:
            block_end = self._block_control(m, a_take & os)
        m.d.comb += [
            self.w.ready.eq(Mux(os, os_ready & self.a.valid, ws_w_ready)),
            self.a.ready.eq(Mux(os, os_ready & self.w.valid, ws_a_ready)),
            a_mode.eq(Mux(os, self.w.payload.mode, ws_mode)),
        ]

        # covers the slowest beat's path through the array
        in_flight = 2 * rows + cols + 3 + dp.stages
        flight = Signal(range(in_flight + 1))
        with m.If(a_take | w_take):
            m.d.sync += flight.eq(in_flight)
        with m.Elif(flight != 0):
            m.d.sync += flight.eq(flight - 1)
        m.d.comb += self.busy.eq((flight != 0) | ws_busy)

        # ---- edges: decode, register, skew --------------------------------------------
        # (submodules, so that synthesis with the hierarchy kept counts them apart)
        m.submodules.decoders = dec = Module()
        m.submodules.skew = skew = Module()
        m.submodules.deskew = deskew = Module()
        a_edge, a_ahead = [], []  # per row: what reaches column 0, and the cycle before
        for r in range(rows):
            tagged = Signal(dp.a_tagged(), name=f"a_edge{r}")
            op = self._decode_activation(dec, self.a.payload.data[r], a_mode, f"a{r}")
            m.d.comb += [
                tagged.op.eq(op),
                tagged.valid.eq(a_take),
                tagged.mode.eq(a_mode),
                tagged.bank.eq(ws_bank),
                tagged.os.eq(os) if dp.ws and dp.os else [],
                tagged.first.eq(first),
                tagged.last.eq(self.a.payload.last),
            ]
            if dp.mx:
                m.d.comb += [
                    tagged.scale.eq(self.a.payload.scale[r]),
                    tagged.block_end.eq(block_end),
                ]
            ahead = self._delay(skew, tagged, r, f"a_skew{r}")
            a_ahead.append(ahead)
            a_edge.append(self._delay(skew, ahead, 1, f"a_skew{r}_{r}"))
        w_edge, ctrl_edge = [], []
        for c in range(cols):
            op = self._decode_weight(dec, self.w.payload.data[c], self.w.payload.mode, f"w{c}")
            if dp.mx:
                dec.d.comb += op.scale.eq(self.w.payload.scale[c])
            w_edge.append(self._delay(skew, op, c + 1, f"w_skew{c}"))
            if dp.ws:
                ctrl = Signal(2, name=f"ws_ctrl{c}")
                m.d.comb += ctrl.eq(Cat(ws_shift, ws_latch))
                ctrl_edge.append(self._delay(skew, ctrl, c + 1, f"ws_ctrl_skew{c}"))

        # ---- the PE grid -----------------------------------------------------------------
        grid = [[PE(dp, row=r) for c in range(cols)] for r in range(rows)]
        variants: dict[tuple, int] = {}
        for r in range(rows):
            for c in range(cols):
                pe = grid[r][c]
                variant = variants.setdefault(pe.variant, len(variants))
                m.submodules[f"pe_{r}_{c}"] = repeated.once(
                    pe, (PE, id(dp), *pe.variant), f"pe_{variant}"
                )
                m.d.comb += [
                    pe.a_in.eq(a_edge[r] if c == 0 else grid[r][c - 1].a_out),
                    pe.w_in.eq(w_edge[c] if r == 0 else grid[r - 1][c].w_out),
                ]
                if dp.ws:
                    shift, latch = ctrl_edge[c]
                    ahead = a_ahead[r] if c == 0 else grid[r][c - 1].a_in
                    m.d.comb += [
                        pe.w_shift.eq(shift),
                        pe.w_latch.eq(latch),
                        pe.a_next.valid.eq(ahead.valid),
                        pe.a_next.bank.eq(ahead.bank),
                        pe.a_next.os.eq(ahead.os) if dp.os else [],
                    ]
                if r > 0:
                    m.d.comb += [
                        pe.p_in.eq(grid[r - 1][c].p_out),
                        pe.tok_in.eq(grid[r - 1][c].tok_out),
                    ]
                    if dp.ws and dp.os:
                        m.d.comb += pe.d_in.eq(grid[r - 1][c].d_out)

        # ---- de-skew ---------------------------------------------------------------------
        for c in range(cols):
            bottom = grid[rows - 1][c]
            result = bottom.p_out
            if dp.ws and dp.os:
                result = Signal.like(bottom.p_out, name=f"result{c}")
                m.d.comb += result.eq(Mux(os, bottom.d_out, bottom.p_out))
            out = self._delay(deskew, result, cols - 1 - c, f"o_deskew{c}")
            m.d.comb += [self.o.payload.data[c].eq(out.value)]
            if dp.has_invalid:
                m.d.comb += self.o.payload.invalid[c].eq(out.invalid)
            if c == cols - 1:
                m.d.comb += self.o.valid.eq(out.valid)
        return m

    # -- control blocks -------------------------------------------------------------------

    def _ws_control(self, m, w_take, a_take, ws_mode, use_bank):
        """Weight-stationary bookkeeping: which tile parity (``bank``) loads and which computes.
        A PE holds two weights, the active one and a shadow (``hw.pe``); a tile's last ``w``
        beat overwrites the shadows, so it waits until the tile latched before it has started
        and its first activation has passed every row's copy: ``copy_wait`` counts the cycles
        until then."""
        rows = self._rows
        count = Signal(range(rows), name="w_count")
        load_bank = Signal(name="load_bank")
        full = Signal(2, name="bank_full")
        bank_mode = Array(Signal(self._dp.mode_bits, name=f"bank_mode{i}") for i in range(2))
        pending = Signal(name="shadow_pending")  # the shadows hold a tile that has not started
        starting = Signal(init=1, name="tile_starting")  # the next a beat starts a tile
        wait = ws_copy_cycles(rows)
        copy_wait = Signal(range(max(wait, 1)), name="copy_wait")
        final = count == rows - 1
        a_ready = full.bit_select(use_bank, 1)
        free = ~pending & (copy_wait == 0)
        if wait == 0:  # one or two rows: the shadows are free as the tile's first beat enters
            free |= a_take & starting
        w_ready = ~final | free
        with m.If(copy_wait != 0):
            m.d.sync += copy_wait.eq(copy_wait - 1)
        with m.If(w_take):
            m.d.sync += count.eq(Mux(final, 0, count + 1))
            with m.If(final):
                m.d.sync += [
                    full.bit_select(load_bank, 1).eq(1),
                    bank_mode[load_bank].eq(self.w.payload.mode),
                    load_bank.eq(~load_bank),
                    pending.eq(1),
                ]
        with m.If(a_take):
            m.d.sync += starting.eq(self.a.payload.last)
            with m.If(starting):  # (a latch in this same cycle refills the shadows)
                m.d.sync += pending.eq(w_take & final)
                if wait > 1:
                    m.d.sync += copy_wait.eq(wait - 1)
            with m.If(self.a.payload.last):
                m.d.sync += [full.bit_select(use_bank, 1).eq(0), use_bank.eq(~use_bank)]
        m.d.comb += ws_mode.eq(bank_mode[use_bank])
        busy = full.any() | (count != 0)
        return w_ready, a_ready, w_take, w_take & final, busy

    def _os_control(self, m, a_take, first):
        """Output-stationary: a tile may end only ``rows`` steps after the previous one, so
        that every PE's ``hold`` has been inserted into the partial-sum chain."""
        rows = self._rows
        gap = Signal(range(rows), name="tile_gap")
        last = self.a.payload.last
        with m.If(a_take):
            m.d.sync += [first.eq(last), gap.eq(Mux(last, rows - 1, Mux(gap != 0, gap - 1, 0)))]
        with m.Elif(gap != 0):
            m.d.sync += gap.eq(gap - 1)
        return ~(last & (gap != 0))

    def _block_control(self, m, a_take):
        """MX: count the steps of each block; a block ends after ``block`` steps or with the
        tile (a last, partial block is as if padded with zeros)."""
        block = self._dp.block
        count = Signal(range(block), name="block_step")
        block_end = self.a.payload.last | (count == block - 1)
        with m.If(a_take):
            m.d.sync += count.eq(Mux(block_end, 0, count + 1))
        return block_end

    # -- edge decoders --------------------------------------------------------------------

    def _decode_activation(self, m, word, mode, name):
        dp = self._dp
        op = Signal(dp.a_operand(), name=f"{name}_op")
        decoded = self._float_decoders(m, [s.activation for s in dp.floats], word, name)
        for _, spec in mode_cases(m, mode, dp.modes):
            if spec.integer:
                m.d.comb += op.data.eq(word[: spec.a_word_bits])
            else:
                self._take(m, op, decoded[spec.activation.name])
        return op

    def _decode_weight(self, m, word, mode, name):
        dp = self._dp
        op = Signal(dp.w_operand(), name=f"{name}_op")
        decoded = self._float_decoders(m, [s.weight for s in dp.floats], word, name)
        for _, spec in mode_cases(m, mode, dp.modes):
            if spec.integer and spec.weight.kind == "binary":
                # A binary code c is the 2-bit two's complement value {~c, 1}: +1 or -1.
                m.d.comb += op.data.eq(
                    Cat(*(Cat(Const(1, 1), ~word[i]) for i in range(spec.lanes)))
                )
            elif spec.integer:
                m.d.comb += op.data.eq(word[: spec.w_word_bits])
            else:
                self._take(m, op, decoded[spec.weight.name])
        return op

    @staticmethod
    def _float_decoders(m, fmts, word, name):
        decoders = {}
        for fmt in fmts:
            if fmt.name not in decoders:
                dec = ScalarDecoder(fmt)
                m.submodules[f"{name}_{fmt.name}"] = dec
                m.d.comb += dec.code.eq(word[: fmt.bits])
                decoders[fmt.name] = dec
        return decoders

    def _take(self, m, op, dec):
        m.d.comb += [op.data.eq(dec.sig), op.shift.eq(dec.shift)]
        if self._dp.has_special:
            m.d.comb += op.special.eq(dec.special)

    @staticmethod
    def _delay(m, value, cycles, name):
        """``value`` through ``cycles`` registers."""
        for i in range(cycles):
            reg = Signal.like(value, name=f"{name}_{i}")
            m.d.sync += reg.eq(value)
            value = reg
        return value
