"""The whole accelerator's Verilog under cocotb (cocotbext-axi AxiRam as DRAM, AxiLiteMaster as
host) against the functional executor: outputs bit for bit, the timing-free counters exactly,
faults stopped with the checker's code and instruction, on configurations beyond the presets."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.gemm import lower_gemm
from hw.accel_bench import compare, predict_timing, run_on_rtl
from hw.selftest import run_selftest
from qaccel import config, formats, isa
from qaccel.isa import ErrorCode, Geometry
from qaccel.program import ProgramBuilder, ProgramError
from sim.cycle import run_cycles
from sim.executor import run_program
from sim.fast import run_fast
from sim.random_programs import random_program

TINY = config.load_config("configs/tiny.toml")


def small(name: str, **sections) -> config.AcceleratorConfig:
    base = {
        "name": name,
        "memory": {
            "scratchpad_kib": 4,
            "scratchpad_banks": 2,
            "accumulator_kib": 4,
            "accumulator_banks": 2,
        },
        "dram": {"bytes_per_cycle": 4, "latency_cycles": 10, "read_bursts": 1},
    }
    return config.config_from_dict(base | sections)


# a 3x5 output-stationary array with an integer and two MX modes, a 4-byte bus
ODD = small(
    "odd",
    array={
        "rows": 3,
        "cols": 5,
        "dataflow": "os",
        "max_k": 64,
        "modes": [
            {"weight": "int8", "activation": "int8"},
            {"weight": "mxint8", "activation": "mxint8"},
            {"weight": "mxfp4", "activation": "mxfp8_e4m3"},
        ],
    },
)
# a LUT core alone, narrow tile, 8-byte bus
LUT_ONLY = small(
    "lutonly",
    lut={"group": 4, "tile_m": 2, "tile_n": 8, "weight_bits": [1, 2, 4], "ternary": True},
    dram={"bytes_per_cycle": 8, "latency_cycles": 10, "read_bursts": 2},
)
# a 3x5 weight-stationary array, one mode, 32-byte bus (wider than an instruction word)
WS_ONLY = small(
    "wsonly",
    array={
        "rows": 3,
        "cols": 5,
        "dataflow": "ws",
        "modes": [{"weight": "int4", "activation": "int8"}],
    },
    dram={"bytes_per_cycle": 32, "latency_cycles": 10, "read_bursts": 3},
)
# a 3x4 array with PEs that are not pipelined, both dataflows, integer, float and MX modes
UNPIPELINED = small(
    "unpipelined",
    array={
        "rows": 3,
        "cols": 4,
        "dataflow": "both",
        "pipelined": False,
        "max_k": 64,
        "modes": [
            {"weight": "int8", "activation": "int8"},
            {"weight": "int2", "activation": "int8"},
            {"weight": "fp8_e4m3", "activation": "fp8_e4m3"},
            {"weight": "mxint8", "activation": "mxint8"},
        ],
    },
)


def check(results):
    failed = [f"{r.name}: {r.detail}" for r in results if not r.ok]
    assert not failed, "\n".join(failed)
    assert len(results) >= 10


def test_selftest_tiny_every_mode_icarus(tmp_path):
    check(run_selftest(TINY, simulator="icarus", build_dir=tmp_path))


@pytest.mark.parametrize("cfg", [ODD, LUT_ONLY, WS_ONLY, UNPIPELINED], ids=lambda c: c.name)
def test_selftest_other_configurations_icarus(cfg, tmp_path):
    check(run_selftest(cfg, simulator="icarus", build_dir=tmp_path, seed=7))


def test_random_back_pressure_changes_no_output(tmp_path):
    """Pauses on every AXI channel: the same outputs and timing-free counters, more cycles."""
    plain = run_selftest(ODD, simulator="icarus", build_dir=tmp_path / "plain")
    paused = run_selftest(ODD, simulator="icarus", build_dir=tmp_path / "paused", pause=0.4)
    check(paused)
    assert sum(r.cycles for r in paused) > sum(r.cycles for r in plain)


def test_float_accumulators_are_exact_beyond_rows(tmp_path):
    """fp4_e2m1 x int8 over K = 16 on the 4x4 array: weights +6 then -6, activations 127.
    One 16-step GEMM would leave its accumulators' range: the checker refuses it, and the
    compiler cuts K into exact 4-step chunks summed in the accumulator memory: exactly 0."""
    fp4 = formats.get_format("fp4_e2m1")
    six, minus_six = (int(fp4.encode(np.array([v]))[0]) for v in (6.0, -6.0))
    w = np.array([[six] * 4] * 8 + [[minus_six] * 4] * 8)
    x = np.full((4, 16), 127)
    program = lower_gemm(TINY, w, m=4, mode="fp4_e2m1*int8")
    want = run_program(program, {"x": x})
    assert np.array_equal(want.outputs["y"], np.zeros((4, 4)))
    (got,) = run_on_rtl(TINY, [(program, {"x": x})], build_dir=tmp_path)
    compare(want, got, predict_timing(program))
    g = Geometry.of(TINY)
    b = ProgramBuilder(TINY)
    b.gemm(mode=8, dataflow=1, a_addr=0, w_addr=16, acc_addr=0, m=4, k=16)
    with pytest.raises(ProgramError, match=r"fp4_e2m1\*int8 accumulators hold 4 steps"):
        b.build()
    assert g.max_steps(8) == 4


def test_multi_tile_gemms(tmp_path):
    """GEMMs of several tiles: weight-stationary with one row of A over three weight tiles
    (the row read in the cycle it is written, forwarded), and output-stationary with three
    row tiles, the last partial: outputs equal to numpy's, cycles to the simulator's."""
    rng = np.random.default_rng(7)
    runs = []
    for dataflow, m, k, n in (("ws", 1, 12, 8), ("os", 9, 10, 8)):
        w, x = rng.integers(-128, 128, (k, n)), rng.integers(-128, 128, (m, k))
        program = lower_gemm(TINY, w, m=m, mode="int8*int8", dataflow=dataflow)
        assert any(i.fields.get("k", 0) > 4 or i.fields.get("m", 0) > 4 for i in program.body)
        want = run_program(program, {"x": x})
        assert np.array_equal(want.outputs["y"], x @ w)
        runs.append((program, {"x": x}, want))
    got = run_on_rtl(TINY, [r[:2] for r in runs], build_dir=tmp_path)
    for (program, _, want), result in zip(runs, got, strict=True):
        compare(want, result, predict_timing(program))


def random_programs_on_rtl(cfg, seeds, tmp_path, simulator="icarus"):
    """Random valid programs (``sim.random_programs``) on the RTL: outputs equal to the
    executor's, CYCLES and every busy and stall counter equal to the cycle engine's, which
    equal the fast engine's."""
    drawn = [random_program(cfg, seed) for seed in seeds]
    runs = run_on_rtl(cfg, drawn, simulator=simulator, build_dir=tmp_path)
    for seed, (program, inputs), got in zip(seeds, drawn, runs, strict=True):
        timing = run_cycles(program)
        assert run_fast(program).counters == timing.counters, f"seed {seed}"
        try:
            compare(run_program(program, inputs), got, timing.counters)
        except AssertionError as e:
            raise AssertionError(f"{cfg.name} random program {seed}: {e}") from None


def test_random_programs_icarus(tmp_path):
    random_programs_on_rtl(TINY, [11, 12, 13], tmp_path)


def test_random_programs_unpipelined_icarus(tmp_path):
    random_programs_on_rtl(UNPIPELINED, [21, 22], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "cfg, seeds",
    [
        (TINY, range(100, 108)),
        (ODD, range(4)),
        (LUT_ONLY, range(4)),
        (WS_ONLY, range(4)),
        (UNPIPELINED, range(4)),
    ],
    ids=lambda v: getattr(v, "name", ""),
)
def test_more_random_programs_icarus(cfg, seeds, tmp_path):
    random_programs_on_rtl(cfg, list(seeds), tmp_path)


@pytest.mark.slow
def test_random_programs_verilator(tmp_path):
    random_programs_on_rtl(TINY, [200, 201, 202], tmp_path, simulator="verilator")


@pytest.mark.slow
def test_selftest_tiny_verilator(tmp_path):
    check(run_selftest(TINY, simulator="verilator", build_dir=tmp_path))


@pytest.mark.slow
def test_selftest_lut_preset_icarus(tmp_path):
    check(run_selftest(config.load_config("configs/lut.toml"), build_dir=tmp_path))


def test_selftest_ulx3s_preset_icarus(tmp_path):
    check(run_selftest(config.load_config("configs/ulx3s.toml"), build_dir=tmp_path))


def test_fault_codes_are_the_checkers(tmp_path):
    """A deadlock that only fetch's in-order dispatch creates: the load queue fills with
    loads waiting for a token that a compute instruction behind them would push."""
    g = Geometry.of(ODD)
    b = ProgramBuilder(ODD)
    load = dict(
        mem=0, sram_addr=0, dram_addr=b.alloc(g.sp_row_bytes), dram_stride=0, y_size=1, x_size=1
    )
    b.load(**load, pop_next=True)
    for _ in range(5):
        b.load(**load)
    b.post(
        acc_addr=0, out_addr=1, param_addr=1, rows=1, out_signed=1, lo=-128, hi=127, push_prev=True
    )
    program = b.build(check=False)
    with pytest.raises(ProgramError, match="fetch at instruction 4 \\(its queue is full\\)") as e:
        b.build()
    assert e.value.code == ErrorCode.TOKEN
    (got,) = run_on_rtl(ODD, [(program, {})], build_dir=tmp_path)
    assert (got.error_code, got.error_insn) == (ErrorCode.TOKEN, e.value.index)


def test_ternary_code_two_reads_as_minus_two_on_both(tmp_path):
    """Ternary code 0b10 is not a value (the compiler refuses it); a hand-written program can
    still hold it: the PE reads it as int2 (-2), and the executor says the same."""
    from qaccel.program import row_major

    cfg = small(
        "tern",
        array={
            "rows": 1,
            "cols": 2,
            "dataflow": "os",
            "modes": [{"weight": "ternary", "activation": "int8"}],
        },
    )
    b = ProgramBuilder(cfg)
    g = b.geometry
    rows = bytes([3, 1, 1, 1]).ljust(g.sp_row_bytes, b"\0")  # activations 3, 1, 1, 1
    rows += bytes([0b10101010, 0b01010110]).ljust(g.sp_row_bytes, b"\0")  # codes 2 / 1 and 2
    ops = b.constant(rows)
    y = b.tensor(
        row_major(
            "y",
            (1, 2),
            "acc",
            b.alloc(g.acc_row_bytes),
            pitch=g.acc_row_bytes,
            bits=8 * g.acc_elem_bytes,
        ),
        output=True,
    )
    b.load(mem=0, sram_addr=0, dram_addr=ops, dram_stride=0, y_size=1, x_size=2, push_next=True)
    b.gemm(
        mode=0, dataflow=1, a_addr=0, w_addr=1, acc_addr=0, m=1, k=1, pop_prev=True, push_next=True
    )
    b.store(
        mem=1, sram_addr=0, dram_addr=y.address, dram_stride=0, y_size=1, x_size=1, pop_prev=True
    )
    program = b.build()
    want = run_program(program, {})
    assert want.outputs["y"].tolist() == [[-2 * 6, -2 * 3 + 3]]
    (got,) = run_on_rtl(cfg, [(program, {})], build_dir=tmp_path)
    compare(want, got)


BOTH = small(
    "both",
    array={
        "rows": 2,
        "cols": 2,
        "dataflow": "os",
        "modes": [{"weight": "int8", "activation": "int8"}],
    },
    lut={"group": 2, "tile_m": 1, "tile_n": 4, "weight_bits": [2], "ternary": False},
)


def test_checker_and_rtl_agree_on_edge_programs(tmp_path):
    """Programs at the edges of the contract, on an array + LUT configuration: a GEMM leaves
    the accumulator columns beyond the array's alone; HALT with a token flag, a LOAD with a
    token toward a unit it does not have and tokens left at HALT stop with the checker's
    code and instruction; a good program runs after each."""
    from qaccel.program import check_program, row_major

    g = Geometry.of(BOTH)
    jobs, verdicts = [], []

    def acc_row(values):
        return b"".join(int(v).to_bytes(g.acc_elem_bytes, "little", signed=True) for v in values)

    b = ProgramBuilder(BOTH)
    operands = b.constant(
        bytes([2, 3]).ljust(g.sp_row_bytes, b"\0") + bytes([4, 5]).ljust(g.sp_row_bytes, b"\0")
    )
    row = b.constant(acc_row([11, 22, 33, 44]).ljust(g.acc_row_bytes, b"\0"))
    y = b.tensor(
        row_major(
            "y",
            (1, 4),
            "acc",
            b.alloc(g.acc_row_bytes),
            pitch=g.acc_row_bytes,
            bits=8 * g.acc_elem_bytes,
        ),
        output=True,
    )
    b.load(mem=0, sram_addr=0, dram_addr=operands, dram_stride=0, y_size=1, x_size=2)
    b.load(mem=1, sram_addr=0, dram_addr=row, dram_stride=0, y_size=1, x_size=1, push_next=True)
    b.gemm(
        mode=0, dataflow=1, a_addr=0, w_addr=1, acc_addr=0, m=1, k=1, pop_prev=True, push_next=True
    )
    b.store(
        mem=1, sram_addr=0, dram_addr=y.address, dram_stride=0, y_size=1, x_size=1, pop_prev=True
    )
    columns = b.build()
    want = run_program(columns, {})
    assert want.outputs["y"].tolist() == [[2 * 4, 2 * 5, 33, 44]]  # row 0 of A is [2]
    jobs.append((columns, {}))
    verdicts.append(None)

    def bad(emit):
        b = ProgramBuilder(BOTH)
        emit(b)
        program = b.build(check=False)
        with pytest.raises(ProgramError) as e:
            check_program(program)
        jobs.append((program, {}))
        verdicts.append((e.value.code, e.value.index))
        jobs.append((columns, {}))
        verdicts.append(None)

    load = dict(mem=0, sram_addr=0, dram_stride=0, y_size=1, x_size=1)
    bad(lambda b: b.emit(isa.Opcode.HALT, pop_prev=True))
    bad(lambda b: b.load(**load, dram_addr=b.alloc(g.sp_row_bytes), push_prev=True))
    bad(lambda b: b.load(**load, dram_addr=b.alloc(g.sp_row_bytes), push_next=True))
    runs = run_on_rtl(BOTH, jobs, build_dir=tmp_path)
    for (program, inputs), verdict, got in zip(jobs, verdicts, runs, strict=True):
        if verdict is None:
            compare(run_program(program, inputs), got)
        else:
            assert (got.error_code, got.error_insn) == verdict
    assert [v[0] for v in verdicts if v] == [ErrorCode.ILLEGAL_FIELD] * 2 + [ErrorCode.TOKEN]


def test_weight_stationary_columns_that_could_saturate_are_refused():
    cfg = small(
        "ws16",
        array={
            "rows": 4,
            "cols": 2,
            "dataflow": "ws",
            "acc_bits": 16,
            "modes": [{"weight": "int8", "activation": "int8"}],
        },
    )
    with pytest.raises(ProgramError, match="weight-stationary columns of 4 rows could saturate"):
        lower_gemm(cfg, np.full((4, 2), -128), m=1, mode="int8*int8")
    b = ProgramBuilder(cfg)
    b.gemm(mode=0, dataflow=0, a_addr=0, w_addr=4, acc_addr=0, m=1, k=4)
    with pytest.raises(ProgramError, match="a weight-stationary column of 4 rows could saturate"):
        b.build()
