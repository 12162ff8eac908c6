"""The two timing engines agree: ``sim.fast`` (events per instruction, row and burst) gives the
cycle engine's (``sim.cycle``, stepped per cycle) counters, instruction times and memory
traffic on every program: random ones (hypothesis), every selftest program and compiled GEMMs.
The cycle engine's equality with the RTL is tested in ``tests/test_accel_rtl.py``."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from compiler.gemm import lower_gemm
from hw.selftest import selftest_cases
from qaccel import config
from qaccel.isa import Geometry
from qaccel.program import ProgramBuilder
from sim.cycle import run_cycles
from sim.dram import DramTiming, split_bursts
from sim.fast import run_fast
from sim.random_programs import programs, random_program
from tests.test_accel_rtl import LUT_ONLY, ODD, TINY, WS_ONLY
from tests.test_dma import contract_schedule

EDGE = config.load_config("configs/edge.toml")
LUT = config.load_config("configs/lut.toml")
CONFIGS = [TINY, ODD, LUT_ONLY, WS_ONLY, EDGE, LUT]


def assert_same_timing(program) -> None:
    """The engines agree, or AssertionError names the first instruction that differs."""
    cycle, fast = run_cycles(program), run_fast(program)
    by_index = {r.index: r for r in fast.insns}
    for want in sorted(cycle.insns, key=lambda r: r.take):
        got = by_index.get(want.index)
        if got is None or (got.take, got.end) != (want.take, want.end):
            seen = "missing" if got is None else f"taken {got.take}, ended {got.end}"
            raise AssertionError(
                f"instruction {want.index} ({want.opcode}, {want.unit}): cycle engine took it "
                f"in cycle {want.take} and ended it in {want.end}; fast engine: {seen}"
            )
    assert len(fast.insns) == len(cycle.insns)
    assert fast.counters == cycle.counters
    assert fast.sram == cycle.sram
    assert fast.causes == cycle.causes
    assert (fast.dram_read_bytes, fast.dram_write_bytes) == (
        cycle.dram_read_bytes,
        cycle.dram_write_bytes,
    )


def _property(cfg):
    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(programs(cfg))
    def check(drawn):
        program, _ = drawn
        assert_same_timing(program)

    return check


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_random_programs_same_timing(cfg):
    _property(cfg)()


@pytest.mark.slow
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_random_medium_programs_same_timing(cfg):
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(programs(cfg, size="medium"))
    def check(drawn):
        assert_same_timing(drawn[0])

    check()


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_selftest_programs_same_timing(cfg):
    for case in selftest_cases(cfg, 5):
        if case.error is None:
            assert_same_timing(case.program)


@pytest.mark.parametrize("dataflow", ["ws", "os"])
def test_compiled_gemm_same_timing(dataflow):
    w = np.random.default_rng(1).integers(-8, 8, (70, 40))
    assert_same_timing(lower_gemm(EDGE, w, m=50, mode="int8*int8", dataflow=dataflow))


def test_a_difference_names_the_instruction(monkeypatch):
    """The comparison can fail, and says where: a fast engine one cycle late on POST."""
    import sim.fast

    program = next(c.program for c in selftest_cases(TINY, 1) if c.name.startswith("requant"))
    monkeypatch.setattr(sim.fast, "POST_LATENCY", sim.fast.POST_LATENCY + 1)
    with pytest.raises(AssertionError, match=r"instruction \d+ \(POST, compute\)"):
        assert_same_timing(program)


def test_compute_unit_feeds_a_gemm_while_the_last_drains():
    """Random programs take GEMMs before the compute instruction ahead of them has ended
    (its results still leaving the array), and both engines time them alike."""
    overlapped = 0
    for seed in range(8):
        program, _ = random_program(TINY, seed)
        assert_same_timing(program)
        compute = sorted(
            (r for r in run_cycles(program).insns if r.unit == "compute"), key=lambda r: r.take
        )
        overlapped += sum(b.take < a.end for a, b in itertools.pairwise(compute))
    assert overlapped >= 8


@pytest.mark.parametrize("in_flight", [1, 2, 4])
def test_a_strided_load_follows_the_dma_contract(in_flight):
    """One LOAD of 5 strided DRAM rows (each several bursts at 4 bytes a beat): both engines
    end it when hw.dma's recurrence for bursts in flight says, counted from its ISSUE."""
    cfg = dataclasses.replace(
        ODD, dram=dataclasses.replace(ODD.dram, read_bursts=in_flight, latency_cycles=9)
    )
    g = Geometry.of(cfg)
    b = ProgramBuilder(cfg)
    x_size, y_size, stride = 20, 5, 4096 - 64  # rows 1..4 cross a 4 KiB boundary
    base = b.alloc(stride * y_size)
    b.load(mem=0, sram_addr=0, dram_addr=base, dram_stride=stride, y_size=y_size, x_size=x_size)
    program = b.build()
    d = g.data_bytes
    beats = x_size * g.sp_row_bytes // d
    lengths = [n for y in range(y_size) for _, n in split_bursts(base + y * stride, beats, d)]
    assert len(lengths) > y_size  # some rows take two bursts
    _, ends = contract_schedule(lengths, DramTiming.of(cfg).first_beat_delay, in_flight)
    for timing in (run_cycles(program), run_fast(program)):
        (load,) = [r for r in timing.insns if r.unit == "load"]
        # take, CHECK, ISSUE (the command's cycle 0); done at e_b + 1; FINISH (the last row's
        # write, its bank free) ends the instruction the cycle after
        assert load.end - load.take == 2 + ends[-1] + 2
