"""compiler.simulate: a SCALE-Sim topology timed layer by layer with the fast engine."""

import csv
import math

import numpy as np
import pytest

import compiler.simulate as simulate
from compiler.gemm import lower_gemm
from compiler.simulate import (
    CSV_COLUMNS,
    format_table,
    simulate_topology,
    write_layers_csv,
)
from compiler.topology import Layer, parse_topology
from qaccel import config
from qaccel.energy import mac_pj
from qaccel.isa import ErrorCode, Geometry
from qaccel.program import ProgramError
from sim.cycle import Timing
from sim.fast import run_fast

CONV = (
    "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter,"
    " Strides,\nconv,9,9,3,3,16,40,2,\n"
)
GEMM = """Layer, M, N, K,
fc,20,50,70,
"""


def ws32(**dram) -> config.AcceleratorConfig:
    """A 32x32 weight-stationary int8 array with room for 256-row tiles."""
    return config.config_from_dict(
        {
            "name": "ws32",
            "array": {
                "rows": 32,
                "cols": 32,
                "dataflow": "ws",
                "modes": [{"weight": "int8", "activation": "int8"}],
            },
            "memory": {
                "scratchpad_kib": 256,
                "scratchpad_banks": 4,
                "accumulator_kib": 128,
                "accumulator_banks": 2,
            },
            "dram": {"bytes_per_cycle": 16, "latency_cycles": 100} | dram,
        }
    )


@pytest.fixture(scope="module")
def layers():
    return parse_topology(CONV) + parse_topology(GEMM)


@pytest.fixture(scope="module")
def results(layers):
    return simulate_topology(ws32(), layers)


def test_shapes(results):
    conv, fc = results
    # conv: ceil((9 - 3) / 2) + 1 = 4 output rows and columns; K = 3 * 3 * 16
    assert (conv.name, conv.m, conv.k, conv.n, conv.macs) == ("conv", 16, 144, 40, 16 * 144 * 40)
    assert (fc.name, fc.m, fc.k, fc.n, fc.macs) == ("fc", 20, 70, 50, 20 * 70 * 50)
    assert {(r.unit, r.mode, r.dataflow) for r in results} == {("array", "int8*int8", "ws")}


def test_cycles_are_the_fast_engine_s(results):
    cfg = ws32()
    for r in results:
        program = lower_gemm(cfg, np.zeros((r.k, r.n), dtype=np.int64), m=r.m, mode="int8*int8")
        timing = run_fast(program)
        assert r.cycles == timing.counters["CYCLES"]
        assert (r.dram_read_bytes, r.dram_write_bytes) == (
            timing.dram_read_bytes,
            timing.dram_write_bytes,
        )


def test_ideal_cycles_and_utilization(results):
    conv, fc = results
    assert conv.ideal_cycles == math.ceil(16 * 144 * 40 / 1024) == 90
    assert fc.ideal_cycles == math.ceil(20 * 70 * 50 / 1024) == 69
    for r in results:
        assert 0 < r.utilization <= 1
        assert r.utilization == r.ideal_cycles / r.cycles


def test_energy_counts_macs_dram_and_sram_rows(results):
    cfg = ws32()
    g = Geometry.of(cfg)
    r = results[0]
    sram = r.timing.sram
    sram_bytes = (sum(sram["sp_read"]) + sum(sram["sp_write"])) * g.sp_row_bytes
    sram_bytes += (sum(sram["acc_read"]) + sum(sram["acc_write"])) * g.acc_cols * 4
    pj = r.macs * mac_pj(cfg, "int8", "int8")
    pj += (r.dram_read_bytes + r.dram_write_bytes) * cfg.energy.dram_byte
    pj += sram_bytes * cfg.energy.sram_read_byte  # reads and writes cost the same by default
    assert r.energy_uj == pytest.approx(pj / 1e6)


def test_csv_round_trips(results, tmp_path):
    path = tmp_path / "layers.csv"
    write_layers_csv(results, path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 1 + len(results)
    for row, r in zip(rows[1:], results, strict=True):
        d = dict(zip(CSV_COLUMNS, row, strict=True))
        assert d["layer"] == r.name and d["bound"] == r.bound
        assert [int(d[c]) for c in ("M", "K", "N", "MACs", "cycles", "ideal_cycles")] == [
            r.m,
            r.k,
            r.n,
            r.macs,
            r.cycles,
            r.ideal_cycles,
        ]
        assert (int(d["dram_read_bytes"]), int(d["dram_write_bytes"])) == (
            r.dram_read_bytes,
            r.dram_write_bytes,
        )
        assert float(d["utilization"]) == pytest.approx(r.utilization, abs=1e-4)
        assert float(d["energy_uJ"]) == pytest.approx(r.energy_uj, abs=1e-6)


def test_table_has_every_layer_and_a_total(results):
    lines = format_table(results).splitlines()
    assert lines[0].split()[:4] == ["layer", "M", "K", "N"]
    assert [line.split()[0] for line in lines if line[0].isalpha()][1:] == ["conv", "fc", "total"]
    total = lines[-1].split()
    assert int(total[1]) == sum(r.macs for r in results)
    assert int(total[2]) == sum(r.cycles for r in results)


def test_same_shape_is_timed_once(monkeypatch):
    runs = []

    def counting(program, **options):
        runs.append(program)
        return run_fast(program, **options)

    monkeypatch.setattr(simulate, "run_fast", counting)
    layers = [Layer.from_gemm(name, 8, 40, 40) for name in ("a", "b")]
    layers.append(Layer.from_gemm("c", 8, 40, 41))
    a, b, c = simulate_topology(ws32(), layers, workers=1)  # counted in this process
    assert len(runs) == 2
    assert a.timing is b.timing and a.timing is not c.timing
    assert (a.name, b.name, a.cycles) == ("a", "b", b.cycles)


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_is_called_after_each_shape(layers, workers):
    calls = []
    simulate_topology(ws32(), layers, progress=lambda *a: calls.append(a), workers=workers)
    assert [c[:2] for c in calls] == [(1, 2), (2, 2)]
    assert sorted(c[2] for c in calls) == ["conv", "fc"]


def test_workers_give_the_same_results(layers):
    one = simulate_topology(ws32(), layers, workers=1)
    two = simulate_topology(ws32(), layers, workers=2)
    assert [r.timing.counters for r in one] == [r.timing.counters for r in two]


def test_a_layer_that_does_not_fit_is_named():
    # 1 MiB of DRAM holds the first layer's program but not the second's input
    layers = [Layer.from_gemm("small", 8, 32, 32), Layer.from_gemm("big", 4096, 64, 256)]
    with pytest.raises(ProgramError, match=r"layer 'big' \(M=4096, K=256, N=64\): .*DRAM"):
        simulate_topology(ws32(size_mib=1), layers)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_mode_the_configuration_lacks_is_named(layers, workers):
    with pytest.raises(ProgramError, match=r"layer 'conv' .*no unit for int4\*int8") as e:
        simulate_topology(ws32(), layers, mode="int4*int8", workers=workers)
    assert e.value.code == ErrorCode.ILLEGAL_FIELD


def test_a_worker_keeps_the_error_code():
    layers = [Layer.from_gemm("small", 8, 32, 32), Layer.from_gemm("big", 4096, 64, 256)]
    with pytest.raises(ProgramError, match=r"layer 'big'") as e:
        simulate_topology(ws32(size_mib=1), layers, workers=2)
    assert e.value.code == ErrorCode.DRAM_RANGE


def test_edge_runs_weight_stationary_by_default(layers):
    cfg = config.load_config("configs/edge.toml")
    assert cfg.array.dataflow == "both"
    ws = simulate_topology(cfg, layers)
    os_ = simulate_topology(cfg, layers, dataflow="os")
    assert {r.dataflow for r in ws} == {"ws"} and {r.dataflow for r in os_} == {"os"}
    for r in ws + os_:
        assert r.ideal_cycles == math.ceil(r.macs / 256)  # 16 x 16, one int8 lane
        assert 0 < r.utilization <= 1
    # int2 packs four weights a PE: a quarter of the ideal cycles
    int2 = simulate_topology(cfg, layers, mode="int2*int8")
    assert [r.ideal_cycles for r in int2] == [math.ceil(r.macs / 1024) for r in int2]


def test_lut_only_configuration_uses_the_lut_core(layers):
    cfg = config.config_from_dict(
        {
            "name": "lutonly",
            "lut": {"group": 4, "tile_m": 2, "tile_n": 8, "weight_bits": [1, 2, 4]},
            "memory": {"scratchpad_kib": 16, "accumulator_kib": 16},
            "dram": {"bytes_per_cycle": 8, "latency_cycles": 10},
        }
    )
    r = simulate_topology(cfg, layers[1:])[0]
    assert (r.unit, r.mode, r.dataflow) == ("lut", "binary*int8", "-")
    # 2 x 8 cells, each a group of 4 K values per cycle, one weight plane
    assert r.ideal_cycles == math.ceil(r.macs / (2 * 8 * 4))
    assert 0 < r.utilization <= 1


def _timing(cycles, read=0, write=0, **busy) -> Timing:
    counters = {"CYCLES": cycles} | {
        f"{u.upper()}_BUSY": busy.get(u, 0) for u in ("load", "compute", "store")
    }
    return Timing(counters, [], {}, read, write)


@pytest.mark.parametrize(
    ("timing", "bound"),
    [
        (_timing(100, read=90 * 16), "dram"),
        (_timing(100, write=95 * 16, store=99), "dram"),
        (_timing(100, read=89 * 16, compute=90, load=80), "compute"),
        (_timing(100, load=95, compute=91), "load"),
        (_timing(100, read=50 * 16, load=89, compute=89, store=89), "other"),
    ],
)
def test_bound(timing, bound):
    assert simulate._bound(Geometry.of(ws32()), timing) == bound
