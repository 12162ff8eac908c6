"""The post-processing unit: accumulator rows in, 8-bit output codes out.

It computes ``sim.post_model.postprocess`` bit for bit (bias, residual add, dyadic
requantization rounded half to even, zero point, clamp, saturation flag), one row of ``lanes``
channels per cycle. Every intermediate is as wide as its exact range for the given
``acc_width``, so no parameter values in range can overflow it.

Members (``lib.data`` layouts; ``ArrayLayout`` element 0, lane 0, sits in the LSBs):

- ``params`` (in, ``params_layout``): bias, b, c per lane; zero_point, lo, hi, out_signed,
  residual (enable) and res_shift. The controller holds them from the cycle an instruction's
  first row enters until the cycle its last row leaves (t_last + ``latency``, a cycle in which
  the next instruction's parameters and first row may already apply), and keeps
  out_min <= lo <= hi <= out_max (otherwise the codes are unspecified; the other fields cannot
  leave their ranges).
- ``i`` (in, ``acc_row_layout``): one accumulator row with its invalid flags and the residual
  codes (read only while ``params.residual`` is set). No ``ready``: a row may enter every cycle.
- ``o`` (out, ``out_row_layout``): the codes, the saturation flags (the result lay outside the
  8-bit format; ``lo``/``hi`` clamping is not saturation) and the invalid flags passed through.
  No ``ready``: ``o`` is never stalled.

Timing: a row accepted in cycle t leaves in cycle t + ``latency`` (4). Four register stages
keep each path short enough for FPGA fabric: (1) the sum acc + bias + residual; (2) its product
with b, registered on both sides so synthesis can map it to DSP blocks; (3) the shift by c with
the rounding decision beside it, narrowed to a few bits; (4) round, zero point, clamp.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from sim.post_model import (
    B_BITS,
    BIAS_BITS,
    C_BITS,
    CODE_BITS,
    RES_SHIFT_BITS,
    ZP_BITS,
)

__all__ = ["PostProcessor", "acc_row_layout", "out_row_layout", "params_layout"]

MAX_ACC_WIDTH = 160


def params_layout(lanes: int) -> data.StructLayout:
    """The per-instruction parameters of a ``lanes``-wide post-processor."""
    return data.StructLayout(
        {
            "bias": data.ArrayLayout(signed(BIAS_BITS), lanes),
            "b": data.ArrayLayout(unsigned(B_BITS), lanes),
            "c": data.ArrayLayout(unsigned(C_BITS), lanes),
            "zero_point": signed(ZP_BITS),
            "lo": signed(ZP_BITS),
            "hi": signed(ZP_BITS),
            "out_signed": 1,
            "residual": 1,
            "res_shift": unsigned(RES_SHIFT_BITS),
        }
    )


def acc_row_layout(lanes: int, acc_width: int) -> data.StructLayout:
    """One accumulator row: the sums, their invalid flags and the residual codes."""
    return data.StructLayout(
        {
            "acc": data.ArrayLayout(signed(acc_width), lanes),
            "invalid": data.ArrayLayout(1, lanes),
            "residual": data.ArrayLayout(CODE_BITS, lanes),
        }
    )


def out_row_layout(lanes: int) -> data.StructLayout:
    """One output row: the codes, saturation flags and invalid flags."""
    return data.StructLayout(
        {
            "data": data.ArrayLayout(CODE_BITS, lanes),
            "saturated": data.ArrayLayout(1, lanes),
            "invalid": data.ArrayLayout(1, lanes),
        }
    )


def _span(lo: int, hi: int) -> Shape:
    """The narrowest shape holding every integer in [lo, hi] (``Shape.cast(range)`` without
    its limit of 2**63 elements)."""
    if lo >= 0:
        return unsigned(hi.bit_length())
    return signed(max((-lo - 1).bit_length(), hi.bit_length()) + 1)


def _narrow_bits() -> int:
    """Bits for the shifted product q such that every q outside them, and both of their ends,
    saturate whatever the rounding increment (0 or 1) and zero point: then clamping q to them
    changes neither the output code nor the saturation flag."""
    zp_lo, zp_hi = -(1 << (ZP_BITS - 1)), (1 << (ZP_BITS - 1)) - 1
    out_lo, out_hi = -(1 << (CODE_BITS - 1)), (1 << CODE_BITS) - 1  # of both output formats
    n = 2
    while not ((1 << (n - 1)) - 1 + zp_lo > out_hi and -(1 << (n - 1)) + 1 + zp_hi < out_lo):
        n += 1
    return n


class PostProcessor(wiring.Component):
    """Bias, residual add, per-lane dyadic requantization, clamp (see the module docstring)."""

    latency = 4  # the register stages below; sim.post_model.LATENCY states the same contract

    def __init__(self, lanes: int, acc_width: int):
        try:
            self._check(lanes, acc_width)
        except ValueError:
            self._MustUse__silence = True  # rejected, so never elaborated: nothing to warn about
            raise
        self._lanes, self._acc_width = lanes, acc_width
        super().__init__(
            {
                "params": In(params_layout(lanes)),
                "i": In(stream.Signature(acc_row_layout(lanes, acc_width), always_ready=True)),
                "o": Out(stream.Signature(out_row_layout(lanes), always_ready=True)),
            }
        )

    @staticmethod
    def _check(lanes, acc_width):
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
            raise ValueError(f"lanes must be a positive integer, not {lanes!r}")
        if (
            not isinstance(acc_width, int)
            or isinstance(acc_width, bool)
            or not CODE_BITS <= acc_width <= MAX_ACC_WIDTH
        ):
            raise ValueError(
                f"acc_width must be an integer from {CODE_BITS} to {MAX_ACC_WIDTH}, "
                f"not {acc_width!r}"
            )

    lanes = property(lambda self: self._lanes)
    acc_width = property(lambda self: self._acc_width)

    def elaborate(self, platform):
        m = Module()
        n, p = self._lanes, self.params
        row = self.i.payload

        # exact ranges of every intermediate
        max_shift = (1 << RES_SHIFT_BITS) - 1
        res_lo, res_hi = -128 << max_shift, 255 << max_shift  # an int8 or uint8 code, shifted
        acc_top = 1 << (self._acc_width - 1)
        bias_top = 1 << (BIAS_BITS - 1)
        x_lo, x_hi = -acc_top - bias_top + res_lo, acc_top - 1 + bias_top - 1 + res_hi
        b_max = (1 << B_BITS) - 1
        p_lo, p_hi = x_lo * b_max, x_hi * b_max  # b >= 0; q = p >>> c lies in it too
        q_bits = _narrow_bits()
        q_top = 1 << (q_bits - 1)
        zp_top = 1 << (ZP_BITS - 1)
        y_shape = _span(-q_top - zp_top, q_top - 1 + 1 + zp_top - 1)
        dropped = (1 << C_BITS) - 1  # c <= 63: at most 63 bits are shifted out

        def stage(shape, name):
            return Signal(data.ArrayLayout(shape, n), name=name, reset_less=True)

        # valid and the invalid flags travel beside the data, one register per stage
        valid = [Signal(name=f"valid{s}") for s in range(1, self.latency)]
        invalid = [stage(1, f"invalid{s}") for s in range(1, self.latency)]
        m.d.sync += [valid[0].eq(self.i.valid), invalid[0].eq(row.invalid)]
        for s in range(1, self.latency - 1):
            m.d.sync += [valid[s].eq(valid[s - 1]), invalid[s].eq(invalid[s - 1])]
        m.d.sync += [self.o.valid.eq(valid[-1]), self.o.payload.invalid.eq(invalid[-1])]

        x = stage(_span(x_lo, x_hi), "x")  # stage 1
        prod = stage(_span(p_lo, p_hi), "prod")  # stage 2
        q = stage(signed(q_bits), "q")  # stage 3: the shifted product, narrowed
        up = stage(1, "up")  # stage 3: round q up
        for j in range(n):
            # 1: x = acc + bias + residual
            r = Signal(_span(-128, 255), name=f"r{j}")
            res = Signal(_span(res_lo, res_hi), name=f"res{j}")
            code = row.residual[j]
            m.d.comb += [
                r.eq(Mux(p.out_signed, code.as_signed(), code)),
                res.eq(Mux(p.residual, r << p.res_shift, 0)),
            ]
            m.d.sync += x[j].eq(row.acc[j] + p.bias[j] + res)

            # 2: the product, between registers
            m.d.sync += prod[j].eq(x[j] * p.b[j])

            # 3: q = prod >>> c, narrowed, and round_shift's decision. Only q's low q_bits are
            # shifted out; whether q fits them is read off prod (its bits from c + q_bits - 1 up
            # all equal the sign), so no full-width shifter is built. With r the c dropped bits
            # and half = 1 << (c - 1): r > half is "bit c-1 set and any bit below it", r == half
            # "bit c-1 set and none below"; so up = bit c-1 & (any below | q odd), 0 if c = 0.
            c, v = p.c[j], prod[j]
            low = Signal(dropped, name=f"low{j}")  # ones at the c dropped bit positions
            kept = Signal(len(v), name=f"kept{j}")  # ones at the bits below c + q_bits - 1
            q_low = Signal(signed(q_bits), name=f"q_low{j}")
            m.d.comb += [
                low.eq((1 << c) - 1),
                kept.eq(Cat(Const(-1, q_bits - 1), low)),
                q_low.eq(v >> c),
            ]
            below, half = low >> 1, low ^ (low >> 1)
            guard, sticky = (v & half).any(), (v & below).any()
            m.d.sync += up[j].eq(guard & (sticky | q_low[0]))
            # beyond q_bits every q saturates, and so do the ends of its range (_narrow_bits)
            fits = ~((v.as_unsigned() ^ v[-1].replicate(len(v))) & ~kept).any()
            m.d.sync += q[j].eq(Mux(fits, q_low, Mux(v[-1], -q_top, q_top - 1)))

            # 4: y = q + up + zero_point, clamped to [lo, hi]; saturated outside the format
            y = Signal(y_shape, name=f"y{j}")
            m.d.comb += y.eq(q[j] + up[j] + p.zero_point)
            out_min = Mux(p.out_signed, -(1 << (CODE_BITS - 1)), 0)
            out_max = Mux(p.out_signed, (1 << (CODE_BITS - 1)) - 1, (1 << CODE_BITS) - 1)
            clamped = Mux(y < p.lo, p.lo, Mux(y > p.hi, p.hi, y))
            m.d.sync += [
                self.o.payload.data[j].eq(clamped[:CODE_BITS]),
                self.o.payload.saturated[j].eq((y < out_min) | (y > out_max)),
            ]
        return m
