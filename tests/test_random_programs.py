"""The random program generator: every draw passes the checker and runs on the executor, the
same seed gives the same program, and 50 seeds cover every mode, transfer shape and token
pattern the generator promises."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings

from qaccel import config
from qaccel.isa import Geometry, Opcode, encode
from qaccel.program import ProgramBuilder, check_program
from sim.executor import run_program
from sim.random_programs import coverage_goals, program_features, programs, random_program

TINY = config.load_config("configs/tiny.toml")
EDGE = config.load_config("configs/edge.toml")
LUT = config.load_config("configs/lut.toml")
# odd sizes everywhere: a 3x5 array with both dataflows and an MX mode, a LUT core with
# tile_m 3 and groups of 3, one scratchpad bank, a 4-byte DRAM bus, 18 accumulator rows
ODD = config.config_from_dict(
    {
        "name": "odd",
        "array": {
            "rows": 3,
            "cols": 5,
            "dataflow": "both",
            "max_k": 40,
            "modes": [
                {"weight": "int8", "activation": "int8"},
                {"weight": "int2", "activation": "int8"},
                {"weight": "fp8_e4m3", "activation": "fp8_e4m3"},
                {"weight": "mxint8", "activation": "mxint8"},
            ],
        },
        "lut": {
            "group": 3,
            "tile_m": 3,
            "tile_n": 7,
            "weight_bits": [1, 3],
            "ternary": True,
            "activation": "uint8",
        },
        "memory": {
            "scratchpad_kib": 4,
            "scratchpad_banks": 1,
            "accumulator_kib": 2,
            "accumulator_banks": 2,
        },
        "dram": {"bytes_per_cycle": 4, "latency_cycles": 7, "read_bursts": 2},
    }
)
CONFIGS = [TINY, EDGE, LUT, ODD]
ids = [c.name for c in CONFIGS]


def words(program) -> list[int]:
    g = program.geometry
    return [encode(g, insn) for insn in program.instructions]


def dma_bytes(program) -> int:
    g = program.geometry
    return sum(
        insn.y_size * insn.x_size * g.row_bytes(insn.mem, insn.elem)
        for insn in program.body
        if insn.opcode in (Opcode.LOAD, Opcode.STORE)
    )


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
def test_200_seeds_pass_the_checker(cfg):
    for seed in range(200):
        program, _ = random_program(cfg, seed)
        check_program(program)
    for seed in range(30):
        program, _ = random_program(cfg, seed, size="medium")
        check_program(program)


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
def test_50_seeds_run_on_the_executor_deterministically(cfg):
    for seed in range(50):
        program, inputs = random_program(cfg, seed)
        again, inputs_again = random_program(cfg, random.Random(seed))
        assert words(program) == words(again)
        assert program.segments == again.segments
        assert program.inputs == again.inputs and program.outputs == again.outputs
        assert inputs.keys() == inputs_again.keys()
        assert all(np.array_equal(inputs[k], inputs_again[k]) for k in inputs)
        first, second = run_program(program, inputs), run_program(again, inputs_again)
        assert first.counters == second.counters
        assert first.outputs.keys() == second.outputs.keys()
        assert all(np.array_equal(first.outputs[k], second.outputs[k]) for k in first.outputs)
    for seed in range(5):
        run_program(*random_program(cfg, seed, size="medium"))


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
def test_50_seeds_cover_every_goal(cfg):
    g = Geometry.of(cfg)
    goals = coverage_goals(cfg)
    # the goals themselves: every mode and dataflow the configuration has, every legal token
    # flag combination (load 4, store 4, compute 16)
    for i, spec in enumerate(g.array_modes):
        assert f"gemm.{spec.name}.os" in goals or cfg.array.dataflow == "ws"
        ws = cfg.array.dataflow != "os" and not spec.block and g.rows <= g.max_steps(i)
        assert (f"gemm.{spec.name}.ws" in goals) == ws
    assert {f"lut.{name}" for name in g.lut_modes} <= goals
    assert len([goal for goal in goals if goal.startswith("tokens.")]) == 24
    assert {"dma.4k", "dma.gap", "queue.full", "concurrent.same_bank", "dram.reload"} <= goals
    seen = set()
    for seed in range(50):
        seen |= program_features(random_program(cfg, seed)[0])
    assert not goals - seen, f"not covered: {sorted(goals - seen)}"


@pytest.mark.parametrize("cfg", [TINY, EDGE, ODD], ids=lambda c: c.name)
def test_30_seeds_draw_multi_tile_gemms(cfg):
    """GEMMs of several tiles back to back: weight-stationary with k > rows (m = 1 among
    them: every tile adds into the same row), output-stationary with m > rows (the last row
    tile partial and full), MX ones with their scales of every row tile; all within bounds."""
    g = Geometry.of(cfg)
    seen = set()
    for seed in range(30):
        program, _ = random_program(cfg, seed)
        for insn in program.body:
            if insn.opcode != Opcode.GEMM:
                continue
            tiles = g.gemm_tiles(insn.dataflow, insn.m, insn.k)
            if insn.dataflow == 0:
                assert insn.k == tiles * g.rows and 1 <= tiles <= 3
                if tiles > 1:
                    seen.add("ws.k>rows")
                    seen |= {"ws.k>rows.m=1"} if insn.m == 1 else set()
            else:
                assert insn.m <= 3 * g.rows
                if insn.m > g.rows:
                    seen.add("os.m>rows")
                    seen.add("os.partial" if insn.m % g.rows else "os.exact")
                    seen |= {"mx.m>rows"} if g.array_modes[insn.mode].block else set()
    want = {"ws.k>rows", "ws.k>rows.m=1", "os.m>rows", "os.partial", "os.exact"}
    if any(spec.block for spec in g.array_modes):
        want.add("mx.m>rows")
    assert not want - seen, f"not drawn: {sorted(want - seen)}"


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
def test_sizes(cfg):
    small = [random_program(cfg, seed)[0] for seed in range(20)]
    medium = [random_program(cfg, seed, size="medium")[0] for seed in range(10)]
    assert max(len(p.body) for p in small) <= 30
    assert max(dma_bytes(p) for p in small) <= 16 << 10  # the budget, and one long transfer
    assert np.mean([len(p.body) for p in medium]) >= 20


@settings(max_examples=25, deadline=None)
@given(programs(ODD))
def test_strategy_draws_runnable_programs(drawn):
    program, inputs = drawn
    check_program(program)
    run_program(program, inputs)


def test_unknown_size():
    with pytest.raises(ValueError, match="size must be one of small, medium, not 'large'"):
        random_program(TINY, 1, size="large")


def test_features_of_a_hand_written_program():
    """A LOAD -> GEMM -> STORE -> POST chain, and a LOAD with no token beside the GEMM whose
    rows share a bank with the GEMM's operands (tiny: two scratchpad banks)."""
    b = ProgramBuilder(TINY)
    g = b.geometry
    src = b.alloc(4 * g.sp_row_bytes)
    rows = dict(mem=0, dram_stride=0, y_size=1, x_size=2)
    b.load(**rows, sram_addr=0, dram_addr=src, push_next=True)
    gemm = dict(mode=0, dataflow=1, a_addr=0, w_addr=0, acc_addr=0, m=4, k=2)
    b.gemm(**gemm, pop_prev=True, push_next=True)
    b.load(**rows, sram_addr=2, dram_addr=src + 2 * g.sp_row_bytes)
    b.store(
        mem=1,
        sram_addr=0,
        dram_addr=b.alloc(5 * g.acc_row_bytes),
        dram_stride=3 * g.acc_row_bytes,  # a row's gap: one accumulator row
        y_size=2,
        x_size=2,
        pop_prev=True,
        push_prev=True,
    )
    b.post(acc_addr=0, param_addr=0, out_addr=8, rows=1, lo=0, hi=255, pop_next=True)
    features = program_features(b.build())
    assert {
        "load.sp",
        "store.acc.native",
        "gemm.int8*int8.os",
        "gemm.overwrite",
        "gemm.m=rows",
        "post.plain",
        "post.unsigned",
        "dma.x>1",
        "dma.y>1",
        "dma.gap",
        "tokens.load.push_next",
        "tokens.load.none",
        "tokens.compute.pop_prev+push_next",
        "tokens.store.pop_prev+push_prev",
        "tokens.compute.pop_next",
        "order.load->store",
        "concurrent.tokenless",
        "concurrent.same_bank",
    } <= features
    assert not features & {"order.store->load", "queue.full", "burst", "dma.4k", "dma.long"}
