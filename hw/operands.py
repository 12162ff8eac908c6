"""Operand decoders: a format's code -> (significand, shift, special), combinationally.

The array decodes each operand once, at its edge, into the fields the PEs multiply: an integer
significand ``sig`` and a left ``shift`` with value == sig * 2**(shift + lsb_exponent), plus a
``special`` flag for NaN, inf and NaR (whose sig and shift read 0). The Python definition of these
fields, which these circuits must match bit for bit, is ``qaccel.modes.decode_fields``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from qaccel import formats
from qaccel.modes import shift_bits, sig_bits

__all__ = ["ScalarDecoder"]


class ScalarDecoder(wiring.Component):
    """Decode one code of ``fmt`` (integer, binary, ternary, float or posit up to 8 bits).

    Ternary code 0b10 is not a value; it decodes as -2 (its int2 reading)."""

    def __init__(self, fmt: formats.NumberFormat):
        if fmt.kind == "scale" or fmt.bits > 16:
            raise ValueError(f"{fmt.name} has no operand decoder")
        self._fmt = fmt
        super().__init__(
            {
                "code": In(fmt.bits),
                "sig": Out(signed(sig_bits(fmt))),
                "shift": Out(max(1, shift_bits(fmt))),
                "special": Out(1),
            }
        )

    @property
    def fmt(self) -> formats.NumberFormat:
        return self._fmt

    def elaborate(self, platform):
        m = Module()
        fmt, code = self._fmt, self.code
        if fmt.kind == "int":
            m.d.comb += self.sig.eq(code.as_signed() if fmt.signed else code)
        elif fmt.kind == "binary":
            m.d.comb += self.sig.eq(Mux(code[0], 1, -1))
        elif fmt.kind == "ternary":
            m.d.comb += self.sig.eq(code.as_signed())
        elif fmt.kind == "float":
            self._float(m)
        elif fmt.kind == "posit":
            self._posit(m)
        else:  # pragma: no cover - every registered kind is handled above
            raise AssertionError(fmt.kind)
        return m

    def _float(self, m: Module) -> None:
        fmt, code = self._fmt, self.code
        mant = code[: fmt.man_bits]
        exp = code[fmt.man_bits : fmt.man_bits + fmt.exp_bits]
        negative = code[fmt.bits - 1]
        if fmt.ieee:
            special = exp == (1 << fmt.exp_bits) - 1
        elif fmt.nan_all_ones:
            special = code[: fmt.bits - 1] == (1 << (fmt.bits - 1)) - 1
        else:
            special = Const(0)
        magnitude = Mux(exp != 0, Cat(mant, Const(1, 1)), mant)  # hidden bit on normals
        with m.If(~special):
            m.d.comb += [
                self.sig.eq(Mux(negative, -magnitude, magnitude)),
                self.shift.eq(Mux(exp == 0, 0, exp - 1)),  # subnormals share exponent 1
            ]
        m.d.comb += self.special.eq(special)

    def _posit(self, m: Module) -> None:
        fmt, code = self._fmt, self.code
        n, es, lsb = fmt.bits, fmt.es, fmt.lsb_exponent
        negative = code[n - 1]
        magnitude = Mux(negative, -code, code)[:n]
        body = magnitude[: n - 1]
        mag = Signal(n)
        # Each regime length fixes where the exponent and fraction bits sit: one case each.
        with m.Switch(body):
            for first in (1, 0):
                for run in range(1, n):
                    if first == 0 and run == n - 1:
                        continue  # zero and NaR: both stay 0
                    stop = "" if run == n - 1 else str(1 - first)
                    pattern = str(first) * run + stop + "-" * (n - 1 - run - len(stop))
                    with m.Case(pattern):
                        k = run - 1 if first else -run
                        rest = max(n - 2 - run, 0)
                        e_bits = min(es, rest)
                        f_bits = rest - e_bits
                        exponent = body[f_bits:rest] << (es - e_bits) if e_bits else Const(0, 1)
                        m.d.comb += [
                            mag.eq(Cat(body[:f_bits], Const(1, 1))),
                            self.shift.eq((k << es) - f_bits - lsb + exponent),
                        ]
        m.d.comb += [
            self.sig.eq(Mux(negative, -mag, mag)),
            self.special.eq(code == fmt.nar),
        ]
