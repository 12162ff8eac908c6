"""Run stream beats (``sim.array_model.Beats``) through a block in amaranth.sim."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

from amaranth.sim import Simulator

from sim.array_model import Beats, unpack_output

__all__ = ["ArrayRun", "LutRun", "simulate_array", "simulate_jobs", "simulate_lut"]


@dataclass
class ArrayRun:
    a_cycles: list[int]  # the cycle each a beat was accepted in
    outputs: list[tuple[int, list[int], list[int]]]  # (cycle, values, invalid) per o beat
    cycles: int  # from the job's first cycle (its first beat offered) to its last output
    w_cycles: list[int] = field(default_factory=list)  # the cycle each w beat was accepted in


def simulate_array(
    array,
    beats: Beats,
    *,
    vcd: str | None = None,
    timeout: int = 100_000,
    a_not_before: dict[int, int] | None = None,
) -> ArrayRun:
    """Feed ``beats`` to ``array`` (a ``hw.array.SystolicArray``) as fast as it accepts them
    (``a_not_before``: a beats held back until a cycle, by index) and record every output.
    ``vcd`` (or $QACCEL_VCD, a directory) writes a waveform."""
    return simulate_jobs(array, [beats], vcd=vcd, timeout=timeout, a_not_before=a_not_before)[0]


def simulate_jobs(
    array,
    jobs: list[Beats],
    *,
    vcd: str | None = None,
    timeout: int = 100_000,
    a_not_before: dict[int, int] | None = None,
) -> list[ArrayRun]:
    """Run ``jobs`` one after the other in one simulation, each once the array is idle (so
    each may change the dataflow)."""
    runs: list[ArrayRun] = []

    async def testbench(ctx):
        for beats in jobs:
            idle = 0
            while ctx.get(array.busy):
                await ctx.tick()
                idle += 1
                if idle > timeout:
                    raise AssertionError(f"still busy after {timeout} cycles")
            runs.append(await _run_job(ctx, array, beats, timeout, a_not_before or {}))

    sim = Simulator(array)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    if vcd is None and os.environ.get("QACCEL_VCD"):  # one new file per run, never a fixed name
        handle, vcd = tempfile.mkstemp(prefix="array-", suffix=".vcd", dir=os.environ["QACCEL_VCD"])
        os.close(handle)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return runs


async def _drive(ctx, block, beats, acc_width: int, cols: int, timeout: int, a_not_before=None):
    """Offer every ``w`` and ``a`` beat as fast as ``block`` accepts them (a beats not before
    their cycle in ``a_not_before``) until all expected outputs came: (cycles of accepted w
    beats, of accepted a beats, (cycle, values, invalid) per output)."""
    a_not_before = a_not_before or {}
    w_cycles: list[int] = []
    a_cycles: list[int] = []
    outputs: list = []
    w_next = a_next = cycle = 0
    while len(outputs) < len(beats.expected):
        w_valid = w_next < len(beats.w)
        a_valid = a_next < len(beats.a) and cycle >= a_not_before.get(a_next, 0)
        ctx.set(block.w.valid, w_valid)
        ctx.set(block.a.valid, a_valid)
        if w_valid:
            ctx.set(block.w.payload.as_value(), beats.w[w_next])
        if a_valid:
            ctx.set(block.a.payload.as_value(), beats.a[a_next])
        *_, w_ready, a_ready, o_valid, o_payload = await ctx.tick().sample(
            block.w.ready, block.a.ready, block.o.valid, block.o.payload.as_value()
        )
        if w_valid and w_ready:
            w_next += 1
            w_cycles.append(cycle)
        if a_valid and a_ready:
            a_next += 1
            a_cycles.append(cycle)
        if o_valid:
            outputs.append((cycle, *unpack_output(o_payload, acc_width, cols)))
        cycle += 1
        if cycle > timeout:
            raise AssertionError(
                f"{len(outputs)} of {len(beats.expected)} results after {timeout} cycles"
            )
    ctx.set(block.w.valid, 0)
    ctx.set(block.a.valid, 0)
    return w_cycles, a_cycles, outputs


async def _run_job(ctx, array, beats: Beats, timeout: int, a_not_before) -> ArrayRun:
    if hasattr(array, "dataflow"):
        ctx.set(array.dataflow, int(beats.os))
    acc_width = array.datapath.bus.acc_width
    w_cycles, a_cycles, outputs = await _drive(
        ctx, array, beats, acc_width, array.cols, timeout, a_not_before
    )
    return ArrayRun(a_cycles, outputs, outputs[-1][0] + 1 if outputs else 0, w_cycles)


@dataclass
class LutRun:
    w_cycles: list[int]  # the cycle each w beat was accepted in
    outputs: list[tuple[int, list[int]]]  # (cycle, values) per o beat


def simulate_lut(core, beats, *, timeout: int = 100_000) -> LutRun:
    """Feed ``beats`` (``sim.lut_model.LutBeats``) to a ``hw.lut_core.LutCore``, each stream as
    fast as the core accepts it, and record every output row."""
    run = LutRun([], [])

    async def testbench(ctx):
        w_cycles, _, outputs = await _drive(ctx, core, beats, core.acc_bits, core.tile_n, timeout)
        run.w_cycles[:] = w_cycles
        run.outputs[:] = [(cycle, values) for cycle, values, _ in outputs]

    sim = Simulator(core)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return run
