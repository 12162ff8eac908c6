"""The yardstick arrays compute what their docstrings promise: A @ W against numpy,
in amaranth.sim, on square and odd shapes, with each protocol's timing."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.yardstick import PlainOS, PlainWS


def run(dut, testbench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()


@pytest.mark.parametrize(("rows", "cols", "m"), [(4, 4, 9), (3, 5, 4), (1, 1, 3)])
def test_weight_stationary(rows, cols, m):
    rng = np.random.default_rng(rows * 10 + cols)
    a = rng.integers(-128, 128, (m, rows))
    w = rng.integers(-128, 128, (rows, cols))
    dut, got = PlainWS(rows, cols), {}

    async def bench(ctx):
        for r in reversed(range(rows)):  # bottom row first
            ctx.set(dut.load, 1)
            ctx.set(dut.w, [int(x) for x in w[r]])
            await ctx.tick()
        ctx.set(dut.load, 0)
        for cycle in range(m + rows + cols + 2):
            ctx.set(dut.valid, cycle < m)
            ctx.set(dut.a, [int(x) for x in a[cycle]] if cycle < m else [0] * rows)
            if ctx.get(dut.o_valid):
                got[cycle] = list(ctx.get(dut.o))
            await ctx.tick()

    run(dut, bench)
    latency = rows + cols - 1
    assert sorted(got) == [i + latency for i in range(m)]
    np.testing.assert_array_equal(np.array([got[i + latency] for i in range(m)]), a @ w)


@pytest.mark.parametrize(("rows", "cols", "k"), [(4, 4, 7), (3, 5, 2), (2, 1, 5)])
def test_output_stationary(rows, cols, k):
    rng = np.random.default_rng(rows * 10 + cols)
    tiles = [(rng.integers(-128, 128, (rows, k)), rng.integers(-128, 128, (k, cols)))
             for _ in range(2)]  # fmt: skip
    dut, got = PlainOS(rows, cols), []

    async def bench(ctx):
        for a, w in tiles:  # two tiles: the accumulators restart with ``first``
            for step in range(k):
                ctx.set(dut.valid, 1)
                ctx.set(dut.first, step == 0)
                ctx.set(dut.a, [int(x) for x in a[:, step]])
                ctx.set(dut.w, [int(x) for x in w[step]])
                await ctx.tick()
            ctx.set(dut.valid, 0)
            for _ in range(rows - 1):
                await ctx.tick()
            rows_out = []
            for cycle in range(rows + cols):
                ctx.set(dut.drain, cycle < rows)
                if ctx.get(dut.o_valid):
                    rows_out.append(list(ctx.get(dut.o)))
                await ctx.tick()
            ctx.set(dut.drain, 0)
            got.append(rows_out)

    run(dut, bench)
    for (a, w), rows_out in zip(tiles, got, strict=True):
        assert len(rows_out) == rows
        np.testing.assert_array_equal(np.array(rows_out[::-1]), a @ w)


@pytest.mark.parametrize("cls", [PlainWS, PlainOS])
def test_bad_size(cls):
    with pytest.raises(ValueError, match="rows must be a positive integer, not 0"):
        cls(0, 4)
