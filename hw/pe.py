"""The mixed-precision processing element.

Operands arrive decoded (``hw.operands``): an 8-bit weight word and an activation word, each with
a shift and a special flag for the float modes. The run-time ``mode`` picks one of the configured
(weight, activation) pairs; only their hardware is generated.

**Sub-word decomposition (Bit Fusion style).** The 8-bit weight word is cut into ``slices``
slices of 8/slices bits (1, 2 or 4 slices: as many as the most lanes any configured mode needs).
Each slice has its own small signed multiplier against a 9-bit activation, and the slice
products are added after shifts fixed by the mode:

- 8-bit weights (1 lane): w = sum_j w_j * 2**(s*j), every slice against the same activation, the
  top slice signed: the sum is the full 8x9-bit product;
- 4-bit weights (2 lanes): slices pair up into two 4-bit weights, each against its own
  activation lane: p = w0*a0 + w1*a1, two products per cycle;
- 2-bit, ternary and binary weights (4 lanes): four products per cycle (binary codes become the
  2-bit values +1 = 0b01, -1 = 0b11 at the array's edge).

So an 8-bit PE delivers 8/bits multiply-accumulates per cycle for 8-, 4- and 2-bit weights.
Float modes (FP8, FP6, FP4, posit, and FP4 x INT8) use the same slices on an 8-bit two's-
complement significand, then shift the product left by the two operand shifts: the result is
exact in the mode's fixed-point accumulator, so a dot product is never rounded.

Accumulation saturates at the mode's width (``ModeSpec.acc_width``): ``acc_bits`` for integer
modes, the exact ``qaccel.formats.accumulator_format`` width for float modes. A NaN, inf or NaR
operand sets the sticky ``invalid`` flag of the sum it joins; the value then holds the sum of the
finite products.

**MX block scales** (output-stationary only). In an MX mode the accumulator holds one block's
exact sum; at the block's last step the sum is shifted left by its combined E8M0 exponent
(relative to the low end of the configured window, ``qaccel.modes``) and added, saturating, to the
tile's outer accumulator. Blocks that cannot join exactly (NaN scale, or a nonzero sum outside
the window) add nothing and set ``invalid``.

**Pipelining** (``Datapath.pipelined``): a register between the multiplier and the
accumulating adder, so that neither the multiply nor the add-and-saturate has the other on its
path; in a datapath with float modes, a second one after the product's shift (the product is
registered unshifted, with its shift, and then shifted). Everything behind them (sums, tokens,
results) runs ``Datapath.stages`` cycles later.

**Dataflows.** Weight-stationary: a shadow weight, latched from the vertical weight chain while
the active weight computes, and copied into the active one the cycle before the next tile's first
activation arrives (``a_next`` looks one cycle ahead); the partial sum flows down,
``p_out = sat(p_in + w*a)``.
Output-stationary: weights flow down, activations right; the PE accumulates and, at the tile's
last step, moves the sum to ``hold``; a token that walks down the column at half speed tells the
PE when to insert ``hold`` into the drain chain, so the tile's rows leave the bottom on
consecutive cycles while the next tile accumulates. The drain chain is the partial-sum chain
(``p_in``/``p_out``) in an output-stationary-only PE and a chain of its own (``d_in``/``d_out``)
in a PE with both dataflows, whose column picks one at the bottom.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from qaccel import formats
from qaccel.modes import (
    ACT_SIG_BITS,
    MAX_SLICES,
    BusWidths,
    ModeSpec,
    pe_stages,
    shift_bits,
    sig_bits,
)
from qaccel.toolchain import DONT_MERGE

__all__ = ["PE", "Datapath", "mode_cases"]


@dataclass(frozen=True)
class Datapath:
    """The widths every block of an array shares, derived from its modes."""

    modes: tuple[ModeSpec, ...]
    ws: bool = True
    os: bool = True
    pipelined: bool = False  # a register between the multiplier and the adder

    @property
    def stages(self) -> int:
        """Cycles the PE adds to the array's latency beyond one per PE."""
        return pe_stages(self.modes, self.pipelined)

    def __post_init__(self):
        if not self.modes:
            raise ValueError("a datapath needs at least one mode")
        if not (self.ws or self.os):
            raise ValueError("a datapath needs a dataflow")
        if self.mx and not self.os:
            raise ValueError("MX modes need the output-stationary dataflow (os or both)")
        if len({(m.block, m.scale_range) for m in self.mx}) > 1:
            raise ValueError("all MX modes of a datapath share one block size and scale range")

    @cached_property
    def slices(self) -> int:
        return max(m.lanes for m in self.modes)

    @property
    def slice_bits(self) -> int:
        return 8 // self.slices

    @cached_property
    def floats(self) -> tuple[ModeSpec, ...]:
        return tuple(m for m in self.modes if not m.integer)

    @cached_property
    def mx(self) -> tuple[ModeSpec, ...]:
        return tuple(m for m in self.modes if m.block)

    @property
    def block(self) -> int:
        """k values per MX scale (0 without MX modes)."""
        return self.mx[0].block if self.mx else 0

    @property
    def scale_range(self) -> tuple[int, int]:
        return self.mx[0].scale_range if self.mx else (0, 0)

    @cached_property
    def block_width(self) -> int:
        return max((m.block_width for m in self.mx), default=0)

    @property
    def scale_bits(self) -> int:
        return self.bus.scale_bits

    @cached_property
    def bus(self) -> BusWidths:
        return BusWidths.of(self.modes)

    @property
    def w_word_bits(self) -> int:
        """Width of one weight on the array's input bus (all of a word's lanes)."""
        return self.bus.w_word_bits

    @property
    def a_word_bits(self) -> int:
        return self.bus.a_word_bits

    @cached_property
    def a_data_bits(self) -> int:
        """Activation operand data: raw lanes (integer modes) or a significand (float)."""
        widths = [m.a_word_bits for m in self.modes if m.integer]
        widths += [sig_bits(m.activation) for m in self.floats]
        return max(widths)

    @cached_property
    def w_shift_bits(self) -> int:
        return max([shift_bits(m.weight) for m in self.floats], default=0)

    @cached_property
    def a_shift_bits(self) -> int:
        return max([shift_bits(m.activation) for m in self.floats], default=0)

    @cached_property
    def has_special(self) -> bool:
        return any(
            f.nan_codes or f.inf_codes for m in self.floats for f in (m.weight, m.activation)
        )

    @property
    def has_invalid(self) -> bool:
        """Sums carry an ``invalid`` flag: a special operand, or an MX block that cannot join."""
        return self.has_special or bool(self.mx)

    @property
    def acc_width(self) -> int:
        return self.bus.acc_width

    @cached_property
    def product_bits(self) -> int:
        """Signed width of one cycle's product (all lanes summed), in accumulator LSBs."""
        return max(
            formats.accumulator_format(m.weight, m.activation, m.lanes).width for m in self.modes
        )

    @property
    def mode_bits(self) -> int:
        return self.bus.mode_bits

    def ws_sum_bits(self, row: int) -> int | None:
        """Weight-stationary: the width of every mode's exact partial sum leaving PE row
        ``row`` ((row + 1) steps), or None where some mode's sum could saturate there."""
        widths = [
            formats.accumulator_format(m.weight, m.activation, (row + 1) * m.lanes).width
            for m in self.modes
        ]
        if any(w > m.acc_width for w, m in zip(widths, self.modes, strict=True)):
            return None
        return max(widths)

    def w_operand(self) -> data.StructLayout:
        return data.StructLayout(
            {
                "data": 8,
                "shift": self.w_shift_bits,
                "special": int(self.has_special),
                "scale": self.scale_bits,  # MX: the column's E8M0 block scale
            }
        )

    def a_operand(self) -> data.StructLayout:
        return data.StructLayout(
            {"data": self.a_data_bits, "shift": self.a_shift_bits, "special": int(self.has_special)}
        )

    def a_tagged(self) -> data.StructLayout:
        """An activation on its way right, with what the PEs need to know about it."""
        return data.StructLayout(
            {
                "op": self.a_operand(),
                "valid": 1,
                "mode": self.mode_bits,
                "bank": 1,
                "first": 1,
                "last": 1,
                # both dataflows: the dataflow travels with each beat, so that no PE waits for
                # a broadcast net (single-dataflow PEs know theirs)
                "os": int(self.ws and self.os),
                "scale": self.scale_bits,  # MX: the row's E8M0 block scale
                "block_end": int(bool(self.mx)),  # MX: the last step of a block
            }
        )

    def a_ahead(self) -> data.StructLayout:
        """Weight-stationary: the tags of the beat a PE's ``a_in`` carries next cycle."""
        return data.StructLayout({"valid": 1, "bank": 1, "os": int(self.ws and self.os)})

    def psum(self) -> data.StructLayout:
        return data.StructLayout(
            {"value": signed(self.acc_width), "valid": 1, "invalid": int(self.has_invalid)}
        )


class PE(wiring.Component):
    """One processing element in row ``row`` (the top row starts its column's
    output-stationary token)."""

    def __init__(self, dp: Datapath, *, row: int = 0):
        self._dp, self._row, self._top = dp, row, row == 0
        super().__init__(
            {
                "a_in": In(dp.a_tagged()),
                "a_out": Out(dp.a_tagged()),
                "w_in": In(dp.w_operand()),
                "w_out": Out(dp.w_operand()),
                "w_shift": In(1),  # weight-stationary: shift the weight chain this cycle
                "w_latch": In(1),  # ...and copy w_in into the shadow weight
                # weight-stationary: what a_in will carry next cycle (the left neighbour's a_in)
                **({"a_next": In(dp.a_ahead())} if dp.ws else {}),
                "p_in": In(dp.psum()),
                "p_out": Out(dp.psum()),
                # Both dataflows: the output-stationary drain chain runs beside the partial
                # sums (one chain would need a wide multiplexer in front of its register).
                **({"d_in": In(dp.psum()), "d_out": Out(dp.psum())} if dp.ws and dp.os else {}),
                "tok_in": In(1),
                "tok_out": Out(1),
            }
        )

    @property
    def variant(self) -> tuple:
        """What the row changes in this PE's hardware: PEs of one array with equal variants
        are the same hardware (``hw.repeated`` writes them as one Verilog module)."""
        dp = self._dp
        if dp.os:
            return (self._top,)
        return (
            self._top,
            dp.ws_sum_bits(self._row),
            dp.ws_sum_bits(self._row - 1) if self._row else 0,
        )

    def elaborate(self, platform):
        m = Module()
        dp = self._dp
        a = self.a_in
        self._pass_right(m, a)
        # Sub-blocks as submodules, so that synthesis with the hierarchy kept can say where the
        # area goes (fpga.synth.block_counts); flattened, they cost nothing.
        m.submodules.multiplier = mul = Module()
        m.submodules.accumulator = accu = Module()

        # Weights: the chain register (w_out), and in weight-stationary designs a shadow weight
        # (loaded from the chain) and the active one the multiplier reads.
        os = self._os(a)
        with m.If(os | self.w_shift):
            m.d.sync += self.w_out.eq(self.w_in)
        weight = Signal(dp.w_operand())
        if dp.ws:
            m.submodules.weights = wb = Module()
            shadow = Signal(dp.w_operand(), name="w_shadow")
            active = Signal(dp.w_operand(), name="w_active")
            active_bank = Signal(init=1, name="w_active_bank")  # the tile parity active holds
            latch = self.w_latch & ~os
            with wb.If(latch):
                wb.d.sync += shadow.eq(self.w_in)
            # The copy happens the cycle before the tile's first activation arrives (so the
            # multiplier reads a register, not a bank multiplexer); the top row's copy can meet
            # its own tile's latch, and then takes the weight from the chain.
            ahead = self.a_next
            with wb.If(ahead.valid & (ahead.bank != active_bank) & ~self._os(ahead)):
                fresh = Mux(latch, self.w_in, shadow) if self._top else shadow
                wb.d.sync += [active.eq(fresh), active_bank.eq(self.a_next.bank)]
            wb.d.comb += weight.eq(Mux(os, self.w_in, active) if dp.os else active)
        else:
            m.d.comb += weight.eq(self.w_in)

        product = Signal(signed(dp.product_bits))
        lane_sum, shift, is_float = self._multiply(mul, weight, a.op, a.mode)
        if dp.pipelined:
            # The accumulating stage runs dp.stages cycles behind the multiplier: the product
            # is registered (a DSP's output register), the activation's tags are a_out (a_in
            # one cycle later), and the weight's scale and flags are registered beside the
            # product. A float product is registered unshifted, with its shift, and registered
            # again once shifted: the shifter then has neither a DSP that may sit far from the
            # PE nor the accumulator's carry chain on its path.
            weight_reg = Signal(dp.w_operand(), name="weight_reg")
            mul.d.sync += weight_reg.eq(weight)
            if dp.floats and len(dp.floats) < len(dp.modes):
                lane_sum, shift, is_float = _registered(mul, lane_sum, shift, is_float)
            elif dp.floats:  # every mode is a float mode: is_float is 1, never a register
                lane_sum, shift = _registered(mul, lane_sum, shift)
                is_float = Const(1)
            weight, a = weight_reg, self.a_out
        if dp.floats:
            m.submodules.shifter = shifter = Module()
            shifted = Signal(signed(dp.product_bits), name="shifted")
            shifter.d.comb += shifted.eq(Mux(is_float, lane_sum << shift, lane_sum))
            if dp.pipelined:
                # The second stage: the shifted product, and the tags and weight flags the
                # accumulator reads, one more cycle later. The tags are copies of this PE's
                # own registers, so synthesis cannot merge them across an anti-diagonal.
                a_late = Signal(dp.a_tagged(), name="a_late")
                weight_late = Signal(dp.w_operand(), name="weight_late")
                shifter.d.sync += [a_late.eq(a), weight_late.eq(weight)]
                (shifted,) = _registered(shifter, shifted)
                a, weight = a_late, weight_late
            accu.d.comb += product.eq(shifted)
        elif dp.pipelined:
            registered = Signal(signed(dp.product_bits), name="product_reg")
            mul.d.sync += registered.eq(lane_sum)
            accu.d.comb += product.eq(registered)
        else:
            accu.d.comb += product.eq(lane_sum)
        mode = _ModeControls(dp)
        self._mx_controls(accu, a.mode, mode)
        special = (weight.special | a.op.special) if dp.has_special else Const(0)

        # The OS accumulator restarts with each tile, and in MX modes with each block.
        restart = a.first
        new_block = Signal(init=1)
        if dp.mx:
            with accu.If(a.valid & self._os(a)):
                accu.d.sync += new_block.eq(a.block_end)
            restart = a.first | (mode.mx & new_block)

        # One saturating adder serves both dataflows: it adds this cycle's product to the
        # partial sum from above (weight-stationary) or to the PE's own accumulator.
        acc = Signal(signed(dp.acc_width))
        total = Signal(signed(dp.acc_width))
        exact = dp.ws_sum_bits(self._row) if not dp.os else None
        if exact is not None:
            # Weight-stationary only, and no mode's sum can saturate this far down the column:
            # an adder as wide as the exact sum, no clamp (the chain carries sign extensions).
            above = dp.ws_sum_bits(self._row - 1) if self._row else 0
            base = self.p_in.value[:above].as_signed() if above else 0
            accu.d.comb += total.eq((base + product)[:exact].as_signed())
        else:
            if dp.ws and dp.os:
                base = Mux(self._os(a), Mux(restart, 0, acc), self.p_in.value)
            else:
                base = self.p_in.value if dp.ws else Mux(restart, 0, acc)
            raw = Signal(signed(dp.acc_width + 1))
            accu.d.comb += raw.eq(base + product)
            sum_widths = [s.block_width if s.block else s.acc_width for s in dp.modes]
            _clamp(accu, a.mode, raw, total, sum_widths)

        ws_next, os_next = Signal.like(self.p_out), Signal.like(self.p_out)
        if dp.ws:
            accu.d.comb += [ws_next.value.eq(total), ws_next.valid.eq(a.valid)]
            if dp.has_invalid:  # MX modes have no weight-stationary form: never a valid sum
                accu.d.comb += ws_next.invalid.eq(
                    self.p_in.invalid | (a.valid & (special | mode.mx))
                )
        drain_in, drain_out = (
            (self.d_in, self.d_out) if dp.ws and dp.os else (self.p_in, self.p_out)
        )
        if dp.os:
            self._output_stationary(
                accu, a, weight, acc, total, special, restart, mode, drain_in, os_next
            )
            accu.d.sync += drain_out.eq(os_next)
        if dp.ws:
            accu.d.sync += self.p_out.eq(ws_next)
        return m

    def _output_stationary(
        self, m, a, weight, acc, total, special, restart, mode, drain_in, os_next
    ):
        dp = self._dp
        acc_invalid = Signal()
        hold = Signal(dp.psum())
        total_invalid = (~restart & acc_invalid) | special
        result, result_invalid = total, total_invalid
        step = a.valid & self._os(a)
        if dp.mx:
            outer = self._block_scaling(m, a, weight, total, total_invalid, mode)
            result = Mux(mode.mx, outer.value, total)
            result_invalid = Mux(mode.mx, outer.invalid, total_invalid)
        with m.If(step):
            m.d.sync += [acc.eq(total), acc_invalid.eq(total_invalid)]
            with m.If(a.last):
                m.d.sync += [hold.value.eq(result), hold.valid.eq(1)]
                if dp.has_invalid:
                    m.d.sync += hold.invalid.eq(result_invalid)
        # The insertion token: this PE's own last step (top row) or the token from above,
        # delayed one more cycle per row, so row r inserts r + 1 cycles after its last step.
        insert, delay = Signal(), Signal()
        if self._top:
            m.d.sync += insert.eq(step & a.last)
        else:
            m.d.sync += [delay.eq(self.tok_in), insert.eq(delay)]
        m.d.comb += [
            self.tok_out.eq(insert),
            os_next.eq(Mux(insert, hold, drain_in)),
        ]

    def _block_scaling(self, m, a, weight, block_sum, block_invalid, mode):
        """MX: at a block's last step, shift its exact sum by the block's combined scale
        exponent (relative to the window's low end) into the tile's outer accumulator. Returns
        the outer sum including this block (a psum-like struct)."""
        dp = self._dp
        lo, hi = dp.scale_range
        window = hi - lo
        outer = Signal(dp.psum())  # the tile's sum of shifted blocks so far
        live = Signal()  # outer holds blocks of the current tile
        shift = Signal(signed(11))
        m.d.comb += shift.eq(a.scale + weight.scale - (254 + lo))
        nan_scale = (a.scale == 0xFF) | (weight.scale == 0xFF)
        fits = (shift >= 0) & (shift <= window) & ~nan_scale
        block = block_sum[: dp.block_width].as_signed()
        shifted = Signal(signed(dp.acc_width))
        m.d.comb += shifted.eq(Mux(fits, block << shift[: max(1, window.bit_length())], 0))
        raw = Signal(signed(dp.acc_width + 1))
        m.d.comb += raw.eq(Mux(live, outer.value, 0) + shifted)
        new = Signal(dp.psum())
        _clamp(m, a.mode, raw, new.value, [spec.acc_width for spec in dp.modes])
        m.d.comb += [
            new.invalid.eq(
                (live & outer.invalid) | block_invalid | nan_scale | (~fits & (block != 0))
            ),
        ]
        with m.If(a.valid & self._os(a) & mode.mx & a.block_end):
            m.d.sync += [outer.eq(new), live.eq(~a.last)]
        return new

    def _pass_right(self, m, a):
        """a_out = a_in, one cycle later. A beat's control tags (valid, first, last, the bank,
        the mode in a multi-mode array, the dataflow in a both-dataflow one) are equal in
        every PE of an anti-diagonal (r + c), and synthesis would merge their registers into
        one that drives a diagonal across the die (in the 8x8 output-stationary array, a
        merged ``first`` on the critical path: 4.4 ns of routing); ``dont_merge``
        (fpga.synth) keeps one per PE, beside the logic it steers. Only tags the datapath
        reads are marked, as a marked register is never removed; the copies the last column
        passes on (and, for the bank, the one before it) are read by no PE and stay, a few
        flip-flops per row."""
        dp = self._dp
        wanted = {
            "valid": True,
            "bank": dp.ws,
            "first": dp.os,
            "last": dp.os,
            "block_end": bool(dp.mx),
            "mode": len(dp.modes) > 1,
            "os": dp.ws and dp.os,
        }
        held = Signal(dp.a_tagged(), name="a_held")
        m.d.sync += held.eq(a)
        m.d.comb += self.a_out.eq(held)
        for name in (name for name, on in wanted.items() if on):
            tag = getattr(a, name)
            own = Signal(len(tag), name=f"a_{name}", attrs={DONT_MERGE: 1})
            m.d.sync += own.eq(tag)
            m.d.comb += getattr(self.a_out, name).eq(own)

    def _os(self, tag):
        """1 where ``tag`` (an activation's tags) is an output-stationary beat."""
        dp = self._dp
        return tag.os if dp.ws and dp.os else Const(int(dp.os), 1)

    def _mx_controls(self, m, mode, controls):
        """``controls.mx``: the mode is an MX mode."""
        if self._dp.mx:
            for _, spec in mode_cases(m, mode, self._dp.modes):
                m.d.comb += controls.mx.eq(bool(spec.block))

    def _multiply(self, m, weight, act, mode):
        """This cycle's sum of lane products, and for float modes the shift that puts it into
        accumulator LSBs: (lane_sum, shift, is_float)."""
        dp = self._dp
        s, sw = dp.slices, dp.slice_bits
        w_slices = [Signal(signed(sw + 1), name=f"w_slice{j}") for j in range(s)]
        a_slices = [Signal(signed(ACT_SIG_BITS), name=f"a_slice{j}") for j in range(s)]
        positions = [Signal(range(MAX_SLICES), name=f"pos{j}") for j in range(s)]
        shift = Signal(dp.w_shift_bits + dp.a_shift_bits + 1)
        is_float = Signal()
        for _, spec in mode_cases(m, mode, dp.modes):
            self._route(m, spec, weight, act, w_slices, a_slices, positions)
            if not spec.integer:
                m.d.comb += [is_float.eq(1), shift.eq(weight.shift + act.shift)]
        lane_sum = Signal(signed(8 + ACT_SIG_BITS + 2))
        m.d.comb += lane_sum.eq(
            sum(
                _slice_product(w_slices[j], a_slices[j], s) << (positions[j] * sw) for j in range(s)
            )
        )
        return lane_sum, shift, is_float

    def _route(self, m, spec: ModeSpec, weight, act, w_slices, a_slices, positions):
        """Wire the slice multipliers for one mode (see the module docstring)."""
        dp = self._dp
        s, sw = dp.slices, dp.slice_bits
        per_lane = s // spec.lanes  # slices that make up one weight lane
        for j in range(s):
            lane, pos = divmod(j, per_lane)
            top = pos == per_lane - 1
            bits = weight.data[j * sw : (j + 1) * sw]
            if spec.integer:
                signed_w = top and (spec.weight.kind != "int" or spec.weight.signed)
                ab = spec.a_code_bits
                a_bits = act.data[lane * ab : (lane + 1) * ab]
                a_val = a_bits.as_signed() if spec.activation.signed else a_bits
            else:  # an 8-bit two's-complement significand against the activation's
                signed_w = j == s - 1
                a_val = act.data[: sig_bits(spec.activation)].as_signed()
            m.d.comb += [
                w_slices[j].eq(bits.as_signed() if signed_w else bits),
                a_slices[j].eq(a_val),
                positions[j].eq(pos),
            ]


def _registered(m, *values):
    """Registers holding ``values`` one cycle later, named after them."""
    regs = [Signal.like(v, name=f"{v.name}_reg") for v in values]
    m.d.sync += [r.eq(v) for r, v in zip(regs, values, strict=True)]
    return regs


def mode_cases(m, mode, modes):
    """Yield (index, item) of ``modes`` inside the ``Switch`` case of each mode code. The last
    mode's case is the default (codes beyond the configured modes, which the accelerator
    refuses, select it), so a one-mode datapath has no mode logic on its paths."""
    with m.Switch(mode):
        for index, item in enumerate(modes):
            with m.Default() if index == len(modes) - 1 else m.Case(index):
                yield index, item


class _ModeControls:
    """Per-mode settings beyond the multiplier's: MX block scaling."""

    def __init__(self, dp: Datapath):
        self.mx = Signal(name="mx_mode")


def _clamp(m, mode, raw, out, widths):
    """out = raw saturated to the signed range of ``widths[mode]`` bits. ``raw`` (one bit wider
    than ``out``) cannot overflow itself, so it fits where its bits from ``width - 1`` up are
    all equal, and the bound it passed is given by its sign: an AND/OR tree and one LUT per
    bit, not two magnitude comparators."""
    fits, limit = Signal(), Signal.like(out)
    sign = raw[-1]
    for _, width in mode_cases(m, mode, widths):
        high = raw[width - 1 :]
        low, top = -(1 << (width - 1)), (1 << (width - 1)) - 1
        m.d.comb += [fits.eq(high.all() | ~high.any()), limit.eq(Mux(sign, low, top))]
    m.d.comb += out.eq(Mux(fits, raw, limit))


def _slice_product(w, a, slices: int):
    """w * a for one slice. An 8-bit slice is a plain multiply (a DSP block, where there is
    one). A narrow slice is a radix-4 Booth sum, cheaper in LUTs than a DSP each (which FPGA
    synthesis would otherwise spend on every 3x9 or 5x9 multiply): w = sum_i d_i * 4**i with
    digits d_i = -2*w[2i+1] + w[2i] + w[2i-1] in {-2..2} (w[-1] = 0, the sign bit repeated
    above), so a 5-bit w needs 3 partial products and a 3-bit one 2, each a choice of 0, a or
    2a. A negative digit's product is its one's complement (an XOR, which merges into the LUT
    that chooses) and a 1 in the correction word (-x = ~x + 1), so that synthesis sums every
    partial product and the correction in one adder tree. On ECP5 this halves the LUT4 of a
    Bit Fusion PE's slices against summing a conditional shifted copy of a per weight bit."""
    if slices == 1:
        return w * a
    n = len(w)
    bits = [Const(0, 1), *(w[j] for j in range(n))]
    if n % 2:
        bits.append(w[n - 1])
    width = len(a) + 1  # |d| <= 2
    terms, negative = [], []
    for i in range(0, len(bits) - 2, 2):
        lo, mid, hi = bits[i], bits[i + 1], bits[i + 2]
        one = lo ^ mid  # |d| = 1
        two = Mux(hi, ~mid & ~lo, mid & lo)  # |d| = 2
        neg = hi & ~(mid & lo)  # d < 0 (hi, mid and lo all set is d = 0)
        magnitude = Mux(one, a, Mux(two, a << 1, 0))
        terms.append((magnitude ^ neg.replicate(width).as_signed()) << i)
        negative += [neg, Const(0, 1)]
    return sum(terms) + Cat(*negative)
