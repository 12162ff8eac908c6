"""The area yardstick: the plainest correct INT8 systolic arrays, one per dataflow.

No modes, no saturation, no handshakes, no overlap of loading or draining with computing: what
a designer who needs one GEMM shape on an FPGA would write by hand. ``bench/yardstick.py``
synthesizes them beside ``hw.array.SystolicArray`` so our area and Fmax read as ratios to them.
Both take int8 codes and accumulate in 32-bit two's complement (wrapping). Each operand edge is
skewed (row r by r cycles, column c by c cycles) and the results de-skewed, as in our array, so
the host side sees whole rows.

**Weight-stationary** (``PlainWS``). ``load``: the ``w`` beat shifts into the weight chain (send
``rows`` beats, bottom row first). Then every ``a`` beat with ``valid`` (one row of A, ``rows``
codes) gives one ``o`` beat ``rows + cols - 1`` cycles later: its dot products with W's columns.

**Output-stationary** (``PlainOS``). Each ``valid`` step carries one k of A (per row) and W (per
column); ``first`` starts a tile (the accumulators restart). From ``rows`` cycles after the tile's
last step, ``rows`` beats of ``drain`` shift the accumulators down their columns: the i-th beat
gives, ``cols - 1`` cycles later, result row ``rows - 1 - i``.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["PlainOS", "PlainWS"]

ACC_BITS = 32


def _delay(m, value, cycles: int, name: str):
    for i in range(cycles):
        reg = Signal.like(value, name=f"{name}_{i}")
        m.d.sync += reg.eq(value)
        value = reg
    return value


def _check(component, rows, cols):
    for name, n in (("rows", rows), ("cols", cols)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            component._MustUse__silence = True  # rejected, so never elaborated: no warning
            raise ValueError(f"{name} must be a positive integer, not {n!r}")


class PlainWS(wiring.Component):
    """rows x cols weight-stationary INT8 array (see the module docstring)."""

    def __init__(self, rows: int, cols: int):
        _check(self, rows, cols)
        self._rows, self._cols = rows, cols
        super().__init__(
            {
                "w": In(data.ArrayLayout(signed(8), cols)),
                "load": In(1),
                "a": In(data.ArrayLayout(signed(8), rows)),
                "valid": In(1),
                "o": Out(data.ArrayLayout(signed(ACC_BITS), cols)),
                "o_valid": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        rows, cols = self._rows, self._cols
        weight = [[Signal(signed(8), name=f"wt_{r}_{c}") for c in range(cols)] for r in range(rows)]
        with m.If(self.load):
            for c in range(cols):
                m.d.sync += weight[0][c].eq(self.w[c])
                for r in range(1, rows):
                    m.d.sync += weight[r][c].eq(weight[r - 1][c])
        act = [_delay(m, self.a[r], r, f"a_skew{r}") for r in range(rows)]
        psum = [
            [Signal(signed(ACC_BITS), name=f"psum_{r}_{c}") for c in range(cols)]
            for r in range(rows)
        ]
        for r in range(rows):
            # Partial sums update with their row's valid (a free clock enable): without it,
            # Yosys's ABC9 pass asserts on the 4x4 and 8x8 arrays of the bench (it still does on
            # some other shapes, e.g. 3x1; amaranth.sim and the tests are unaffected).
            a, v = act[r], _delay(m, self.valid, r, f"v_skew{r}")
            for c in range(cols):
                a_reg = Signal(signed(8), name=f"act_{r}_{c}")
                v_reg = Signal(name=f"valid_{r}_{c}")
                m.d.sync += [a_reg.eq(a), v_reg.eq(v)]
                product = a * weight[r][c]
                above = psum[r - 1][c] if r else Const(0, signed(ACC_BITS))
                with m.If(v):
                    m.d.sync += psum[r][c].eq(above + product)
                a, v = a_reg, v_reg
        for c in range(cols):
            out = _delay(m, psum[rows - 1][c], cols - 1 - c, f"o_deskew{c}")
            m.d.comb += self.o[c].eq(out)
        m.d.comb += self.o_valid.eq(_delay(m, self.valid, rows + cols - 1, "o_valid_delay"))
        return m


class PlainOS(wiring.Component):
    """rows x cols output-stationary INT8 array (see the module docstring)."""

    def __init__(self, rows: int, cols: int):
        _check(self, rows, cols)
        self._rows, self._cols = rows, cols
        super().__init__(
            {
                "w": In(data.ArrayLayout(signed(8), cols)),
                "a": In(data.ArrayLayout(signed(8), rows)),
                "valid": In(1),
                "first": In(1),
                "drain": In(1),
                "o": Out(data.ArrayLayout(signed(ACC_BITS), cols)),
                "o_valid": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        rows, cols = self._rows, self._cols
        step = data.StructLayout({"a": signed(8), "valid": 1, "first": 1})
        edge = Signal(step)
        m.d.comb += [edge.a.eq(0), edge.valid.eq(self.valid), edge.first.eq(self.first)]
        left = []
        for r in range(rows):
            row = Signal(step, name=f"a_edge{r}")
            m.d.comb += [row.eq(edge), row.a.eq(self.a[r])]
            left.append(_delay(m, row, r, f"a_skew{r}"))
        top = [_delay(m, self.w[c], c, f"w_skew{c}") for c in range(cols)]
        drain = [_delay(m, self.drain, c, f"drain_skew{c}") for c in range(cols)]
        acc = [
            [Signal(signed(ACC_BITS), name=f"acc_{r}_{c}") for c in range(cols)]
            for r in range(rows)
        ]
        w_down = top
        for r in range(rows):
            s = left[r]
            below = []
            for c in range(cols):
                s_reg = Signal(step, name=f"s_{r}_{c}")
                w_reg = Signal(signed(8), name=f"w_{r}_{c}")
                m.d.sync += [s_reg.eq(s), w_reg.eq(w_down[c])]
                product = s.a * w_down[c]
                with m.If(drain[c]):
                    m.d.sync += acc[r][c].eq(acc[r - 1][c] if r else 0)
                with m.Elif(s.valid):
                    m.d.sync += acc[r][c].eq(Mux(s.first, 0, acc[r][c]) + product)
                below.append(w_reg)
                s = s_reg
            w_down = below
        for c in range(cols):
            out = _delay(m, acc[rows - 1][c], cols - 1 - c, f"o_deskew{c}")
            m.d.comb += self.o[c].eq(out)
        m.d.comb += self.o_valid.eq(_delay(m, self.drain, cols - 1, "ov"))
        return m
