"""The run reports: utilization, SRAM bytes and energy against hand counts, both engines giving
the same statistics, the Perfetto trace well-formed and consistent with the counters."""

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from compiler.gemm import Epilogue, lower_gemm
from qaccel import config
from qaccel.energy import energy_report
from qaccel.isa import Opcode
from qaccel.program import ProgramBuilder
from sim.cycle import run_cycles
from sim.executor import run_program
from sim.fast import run_fast
from sim.report import chrome_trace, run_and_report, stats, summary

CONFIGS = Path(__file__).parent.parent / "configs"
TINY = config.load_config(CONFIGS / "tiny.toml")
LUT = config.load_config(CONFIGS / "lut.toml")
SEED = 7


def _gemm(cfg, mode, m, k, n, **kw):
    rng = np.random.default_rng(SEED)
    return lower_gemm(cfg, rng.integers(-1, 2, (k, n)), m=m, mode=mode, **kw)


def _compute_only(cfg, compute):
    """LOAD zero rows 0..15, the compute instructions (dicts with "op"), STORE accumulator row
    0: a constant program for mixing modes, which the lowering never does in one program."""
    b = ProgramBuilder(cfg)
    g = b.geometry
    src = b.constant(bytes(16 * g.sp_row_bytes))
    out = b.alloc(g.acc_row_bytes)
    b.load(mem=0, sram_addr=0, dram_addr=src, y_size=1, x_size=16, push_next=True)
    for i, fields in enumerate(compute):
        fields = dict(fields)
        op = fields.pop("op")
        flags = {"pop_prev": i == 0, "push_next": i == len(compute) - 1}
        b.emit(op, **fields, **flags)
    b.store(mem=1, sram_addr=0, dram_addr=out, y_size=1, x_size=1, pop_prev=True)
    return b.build()


@pytest.mark.parametrize(
    ("mode", "lanes", "dataflow", "k"),
    [
        ("int8*int8", 1, "os", 16),
        ("int2*int8", 4, "os", 16),
        ("int8*int8", 1, "ws", 4),  # weight-stationary: K = rows * lanes in one instruction
        ("int2*int8", 4, "ws", 16),
    ],
)
def test_utilization_of_one_gemm_by_hand(mode, lanes, dataflow, k):
    m, n = 3, 4  # one tile of the 4x4 array
    program = _gemm(TINY, mode, m, k, n, dataflow=dataflow)
    assert [i.opcode for i in program.body].count(Opcode.GEMM) == 1
    timing = run_fast(program)
    s = stats(program, timing)
    cycles = timing.counters["CYCLES"]
    useful = m * k * n
    want = useful / (4 * 4 * lanes) / cycles
    (entry,) = s["utilization"]["modes"]
    assert (entry["unit"], entry["mode"], entry["useful_macs"]) == ("array", mode, useful)
    assert entry["peak_macs_per_cycle"] == 16 * lanes
    assert s["utilization"]["overall"] == pytest.approx(want)
    assert s["utilization"]["array"]["utilization"] == pytest.approx(want)
    assert s["utilization"]["lut"] is None
    assert s["energy"]["counts"]["macs"] == {mode: useful}


def test_lut_utilization_and_energy_by_hand():
    # int2 weights: 2 planes; K = 8 is 2 groups of 4; one 2 x 64 tile
    program = _gemm(LUT, "int2*int8", 2, 8, 64, unit="lut")
    assert [i.opcode for i in program.body].count(Opcode.LUT_GEMM) == 1
    timing = run_fast(program)
    s = stats(program, timing)
    (entry,) = s["utilization"]["modes"]
    assert (entry["unit"], entry["mode"]) == ("lut", "int2*int8")
    assert entry["useful_macs"] == 2 * 8 * 64
    assert entry["peak_macs_per_cycle"] == 2 * 64 * 4 / 2
    cycles = timing.counters["CYCLES"]
    assert s["utilization"]["overall"] == pytest.approx(2 * 8 * 64 / 256 / cycles)
    lookups = 2 * 64 * 2 * 2  # m * tile_n * groups * planes
    sram = s["sram"]
    want = energy_report(
        LUT,
        {
            "lut_lookups": lookups,
            "sram_read_bytes": sram["read_bytes"],
            "sram_write_bytes": sram["write_bytes"],
            "dram_bytes": timing.dram_read_bytes + timing.dram_write_bytes,
        },
    )
    assert s["energy"]["pj"] == want
    assert s["energy"]["total_uj"] == pytest.approx(want["total"] / 1e6)
    seconds = cycles / (LUT.clock_mhz * 1e6)
    assert s["energy"]["average_power_mw"] == pytest.approx(want["total"] * 1e-12 / seconds * 1e3)


def test_energy_equals_the_report_on_hand_counted_macs():
    m, k, n = 5, 12, 6  # two column tiles, each a 5-row GEMM in two 4-row output tiles
    program = _gemm(TINY, "int4*int8", m, k, n, dataflow="os")
    timing = run_cycles(program)
    s = stats(program, timing)
    # output-stationary: int4 has 2 lanes, 6 steps per tile; tiles of 4 + 1 rows, 4 + 2 columns
    # run on all 4 columns, so the columns beyond n are padding that counts
    macs = (4 + 1) * (6 * 2) * 4 * 2
    assert s["energy"]["counts"]["macs"] == {"int4*int8": macs}
    counts = {
        "macs": {"int4*int8": macs},
        "sram_read_bytes": s["sram"]["read_bytes"],
        "sram_write_bytes": s["sram"]["write_bytes"],
        "dram_bytes": timing.dram_read_bytes + timing.dram_write_bytes,
    }
    report = energy_report(TINY, counts)
    assert s["energy"]["pj"] == report
    pj = s["energy"]["pj"]
    assert pj["total"] == pj["compute"] + pj["sram"] + pj["dram"]


def test_sram_bytes_from_the_rows_each_port_moved():
    m, k, n = 3, 16, 4
    program = _gemm(TINY, "int8*int8", m, k, n, dataflow="os")
    g = program.geometry
    timing = run_fast(program)
    sram = stats(program, timing)["sram"]
    sp, acc = sram["scratchpad"], sram["accumulator"]
    loaded = sum(i.y_size * i.x_size for i in program.body if i.opcode == Opcode.LOAD)
    assert sum(sp["write_rows"]) == loaded  # only LOAD writes the scratchpad here
    assert sum(sp["read_rows"]) == 2 * k  # an activation and a weight row per step
    assert sum(acc["write_rows"]) == m
    assert sp["row_bytes"] == g.sp_row_bytes == 16
    assert acc["row_bytes"] == g.acc_cols * g.acc_elem_bytes
    assert sp["write_bytes"] == loaded * 16 and sp["read_bytes"] == 2 * k * 16
    assert acc["write_bytes"] == m * acc["row_bytes"]
    assert acc["read_bytes"] == sum(timing.sram["acc_read"]) * acc["row_bytes"]
    assert sram["read_bytes"] == sp["read_bytes"] + acc["read_bytes"]
    assert sram["write_bytes"] == sp["write_bytes"] + acc["write_bytes"]


def test_mixed_modes_per_mode_and_overall():
    program = _compute_only(
        TINY,
        [
            dict(op=Opcode.GEMM, mode=0, dataflow=1, a_addr=0, w_addr=8, acc_addr=0, m=4, k=8),
            dict(op=Opcode.GEMM, mode=3, dataflow=1, a_addr=0, w_addr=8, acc_addr=0, m=2, k=4),
            dict(op=Opcode.GEMM, mode=0, dataflow=0, a_addr=0, w_addr=8, acc_addr=0, m=3, k=4),
        ],
    )
    timing = run_fast(program)
    s = stats(program, timing)
    cycles = timing.counters["CYCLES"]
    by_mode = {e["mode"]: e for e in s["utilization"]["modes"]}
    int8 = 4 * 8 * 4 + 3 * 4 * 4  # OS m * k * cols, then WS m * rows * cols
    int2 = 2 * (4 * 4) * 4  # 4 lanes
    assert by_mode["int8*int8"]["useful_macs"] == int8
    assert by_mode["int8*int8"]["instructions"] == 2
    assert by_mode["int2*int8"]["useful_macs"] == int2
    assert by_mode["int8*int8"]["utilization"] == pytest.approx(int8 / 16 / cycles)
    assert by_mode["int2*int8"]["utilization"] == pytest.approx(int2 / 64 / cycles)
    assert s["utilization"]["overall"] == pytest.approx((int8 / 16 + int2 / 64) / cycles)
    assert s["energy"]["counts"]["macs"] == {"int8*int8": int8, "int2*int8": int2}


def test_array_and_lut_core_in_one_program():
    program = _compute_only(
        LUT,
        [
            dict(op=Opcode.GEMM, mode=0, dataflow=0, a_addr=0, w_addr=8, acc_addr=0, m=5, k=8),
            dict(op=Opcode.LUT_GEMM, mode=1, a_addr=0, w_addr=4, acc_addr=8, m=2, k=3),
        ],
    )
    s = stats(program, run_fast(program))
    cycles = s["cycles"]
    array, lut = s["utilization"]["array"], s["utilization"]["lut"]
    assert array["useful_macs"] == 5 * 8 * 8 and array["full_rate_cycles"] == 5
    # 2 rows x 3 groups of 4 x 64 columns; 2 planes a group at one plane a cycle
    assert lut["useful_macs"] == 2 * 12 * 64 and lut["full_rate_cycles"] == 6
    assert s["utilization"]["overall"] == pytest.approx(11 / cycles)
    assert s["energy"]["counts"]["lut_lookups"] == 2 * 64 * 3 * 2


def test_units_busy_idle_and_stalls_match_the_counters():
    program = _gemm(TINY, "int8*int8", 6, 20, 7, max_chunk=8)
    timing = run_fast(program)
    s = stats(program, timing)
    c = timing.counters
    for unit, u in s["units"].items():
        assert u["busy"] == c[f"{unit.upper()}_BUSY"]
        assert u["idle"] == c["CYCLES"] - u["busy"]
        assert sum(u["idle_split"].values()) == u["idle"]
        assert u["stall"] == {"token": c[f"{unit.upper()}_STALL"], **timing.causes[unit]}
    assert s["units"]["compute"]["instructions"] == s["instructions"]["GEMM"]


PROGRAMS = {
    "os": lambda: _gemm(TINY, "int4*int8", 5, 24, 6, dataflow="os", max_chunk=4),
    "ws": lambda: _gemm(TINY, "int8*int8", 6, 9, 5, dataflow="ws"),
    "epilogue": lambda: _gemm(
        TINY, "int8*int8", 5, 8, 5, epilogue=Epilogue.requant(0.01, relu=True)
    ),
    "lut": lambda: _gemm(LUT, "int3*int8", 3, 10, 70, unit="lut"),
}


@pytest.mark.parametrize("name", PROGRAMS)
def test_both_engines_give_identical_stats(name):
    program = PROGRAMS[name]()
    a = stats(program, run_cycles(program))
    b = stats(program, run_fast(program))
    assert a == b
    assert json.loads(json.dumps(a)) == a  # JSON-ready as it is


@pytest.mark.parametrize("name", PROGRAMS)
def test_trace_is_well_formed_and_adds_up(name):
    program = PROGRAMS[name]()
    timing = run_fast(program)
    trace = json.loads(json.dumps(chrome_trace(program, timing)))
    assert trace["displayTimeUnit"] == "ns"
    events = trace["traceEvents"]
    mhz = program.config.clock_mhz
    names = {
        e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"
    }
    assert sorted(names.values()) == ["compute", "load", "store"]
    slices = [e for e in events if e["ph"] == "X"]
    for e in slices:
        assert e["pid"] == 1 and e["tid"] in names and e["ts"] >= 0 and e["dur"] >= 0
        assert e["name"] == program.body[e["args"]["index"]].opcode.name
        assert e["ts"] == pytest.approx(e["args"]["take"] / mhz)
    assert sorted(e["args"]["index"] for e in slices) == list(range(len(program.body)))
    for tid, unit in names.items():
        track = sorted((e for e in slices if e["tid"] == tid), key=lambda e: e["ts"])
        busy = sum(e["dur"] for e in track) * mhz
        assert round(busy) == timing.counters[f"{unit.upper()}_BUSY"]
        assert busy == pytest.approx(timing.counters[f"{unit.upper()}_BUSY"])
        for a, b in pairwise(track):  # a unit runs one at a time
            assert a["args"]["end"] <= b["args"]["take"]
    counters = [e for e in events if e["ph"] == "C"]
    busy_units = [e["args"]["busy"] for e in counters if e["name"] == "busy units"]
    assert busy_units[0] == 0 and busy_units[-1] == 0 and max(busy_units) <= 3
    dram = [e["args"] for e in counters if e["name"].startswith("DRAM bytes")]
    assert dram[-1] == {"read": _executor_dram(program)[0], "write": timing.dram_write_bytes}
    for e in counters:
        assert e["pid"] == 1 and e["ts"] >= 0


def _executor_dram(program):
    """The executor's DRAM bytes of LOAD and STORE, on zero inputs."""
    inputs = {s.name: np.zeros(s.shape, dtype=np.int64) for s in program.inputs}
    c = run_program(program, inputs).counters
    return c["DRAM_READ_BYTES"], c["DRAM_WRITE_BYTES"]


def test_run_and_report_and_timing_only_agree():
    program = _gemm(TINY, "int8*int8", 3, 8, 5)
    x = np.arange(24).reshape(3, 8) - 12
    w = np.random.default_rng(SEED).integers(-1, 2, (8, 5))  # _gemm's weights
    full = run_and_report(program, {"x": x}, engine="cycle", trace=True)
    assert np.array_equal(full.outputs["y"], x @ w)
    assert full.stats["engine"]["name"] == "cycle" and full.stats["engine"]["wall_s"] > 0
    assert full.trace is not None
    timing_only = run_and_report(program, timing_only=True)
    assert timing_only.outputs == {} and timing_only.trace is None
    assert timing_only.stats["engine"]["executor_wall_s"] is None
    # the counters derived from the instructions are the executor's
    for key in ("INSNS", "DRAM_READ_BYTES", "DRAM_WRITE_BYTES"):
        assert timing_only.stats["counters"][key] == full.stats["counters"][key]
    assert "SATURATIONS" not in timing_only.stats["counters"]
    strip = lambda s: {k: v for k, v in s.items() if k not in ("engine", "counters")}  # noqa: E731
    assert strip(timing_only.stats) == strip(full.stats)
    rows = dict(summary(full.stats))
    assert rows["CYCLES"].startswith(str(full.stats["cycles"]))
    assert rows["SATURATIONS"] == "0" and "SATURATIONS" not in dict(summary(timing_only.stats))


def test_run_and_report_rejects_an_unknown_engine():
    program = _gemm(TINY, "int8*int8", 2, 4, 4)
    with pytest.raises(ValueError, match="engine must be one of fast, cycle, not 'rtl'"):
        run_and_report(program, timing_only=True, engine="rtl")
