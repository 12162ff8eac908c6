"""The generated Verilog of the array on Icarus and Verilator (cocotb): every mode, random
matrices, outputs bit-exact and every result on the latency formula's cycle."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from hw.array import SystolicArray
from hw.generate import to_verilog
from hw.rtl_bench import run_rtl
from qaccel import config, formats
from qaccel.modes import mode_spec
from sim.array_model import Beats, os_beats, random_scales, random_tile, ws_beats

SEED = 20261122
TINY_PAIRS = [(p.weight, p.activation) for p in config.load_config("configs/tiny.toml").array.modes]


def random_jobs(array: SystolicArray, seed: int) -> list[Beats]:
    """Per mode: two weight-stationary tiles and two output-stationary tiles, back to back.
    MX modes (output-stationary only): tiles of one and of 2.5 blocks."""
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    rows, cols, bus = array.rows, array.cols, array.datapath.bus
    kw = {"stages": array.datapath.stages}
    jobs = []
    for index, spec in enumerate(array.modes):
        if spec.block:
            job = None
            for k in (spec.block, spec.block * 5 // 2):
                w, a = random_tile(spec, rng, rows, k, cols)
                scales = random_scales(spec, rng, rows, k, cols)
                tile = os_beats(bus, rows, cols, index, spec, w, a, *scales, **kw)
                job = tile if job is None else job.extend(tile)
            jobs.append(job)
            continue
        k = spec.lanes * rows
        if array.supported_dataflow != "os":
            tiles = [random_tile(spec, rng, n, k, cols) for n in (rows + 1, rows)]
            job = ws_beats(bus, rows, cols, index, spec, *tiles[0], **kw)
            job.extend(ws_beats(bus, rows, cols, index, spec, *tiles[1], **kw))
            jobs.append(job)
        if array.supported_dataflow != "ws":
            tiles = [random_tile(spec, rng, rows, n, cols) for n in (k, 2 * k)]
            job = os_beats(bus, rows, cols, index, spec, *tiles[0], **kw)
            job.extend(os_beats(bus, rows, cols, index, spec, *tiles[1], **kw))
            jobs.append(job)
    return jobs


def run_array(tmp_path, simulator, rows, cols, pairs, dataflow="both", pipelined=False):
    modes = [mode_spec(w, a, rows=rows, acc_bits=32) for w, a in pairs]
    array = SystolicArray(rows, cols, modes, dataflow, pipelined=pipelined)
    tmp_path.mkdir(parents=True, exist_ok=True)
    verilog = tmp_path / "array.v"
    verilog.write_text(to_verilog(array, "array"))
    jobs = random_jobs(array, zlib.crc32(repr((SEED, rows, cols, pairs)).encode()))
    widths = {"cols": cols, "acc_width": array.datapath.acc_width}
    results = run_rtl(
        verilog, "array", jobs, simulator=simulator, build_dir=tmp_path / simulator, widths=widths
    )
    assert len(results) == len(jobs)
    for job, result in zip(jobs, results, strict=True):
        assert result["outputs"] == len(job.expected)
    return results


def test_icarus_every_mode(tmp_path):
    run_array(tmp_path, "icarus", 4, 4, TINY_PAIRS)


def test_icarus_non_square_single_dataflows(tmp_path):
    run_array(tmp_path, "icarus", 3, 2, [("int8", "int8"), ("int2", "int8")], "ws")
    run_array(tmp_path / "os", "icarus", 2, 3, [("int4", "int4"), ("fp8_e5m2", "fp8_e5m2")], "os")


MX_PAIRS = [(f, f) for f in formats.MX_FORMATS] + [("mxfp4", "mxfp8_e4m3")]


def test_icarus_mx_modes(tmp_path):
    run_array(tmp_path, "icarus", 2, 3, [("int8", "int8"), *MX_PAIRS])


def test_icarus_pipelined(tmp_path):
    """Pipelined PEs: every mode family (integer lanes, float, MX) one cycle later, both
    dataflows in one array and each alone."""
    pairs = [("int8", "int8"), ("int2", "int8"), ("fp8_e4m3", "fp8_e4m3"), ("mxfp4", "mxfp4")]
    run_array(tmp_path, "icarus", 3, 2, pairs, pipelined=True)
    run_array(tmp_path / "ws", "icarus", 2, 3, pairs[:3], "ws", pipelined=True)
    run_array(tmp_path / "os", "icarus", 2, 2, pairs, "os", pipelined=True)


def test_verilator_pipelined(tmp_path):
    pairs = [("int8", "int8"), ("int4", "int4"), ("posit8_0", "posit8_0"), ("mxint8", "mxint8")]
    run_array(tmp_path, "verilator", 2, 3, pairs, pipelined=True)


def test_verilator_mixed_modes(tmp_path):
    run_array(
        tmp_path,
        "verilator",
        2,
        3,
        [
            ("int8", "int8"),
            ("int4", "int8"),
            ("fp8_e4m3", "fp8_e4m3"),
            ("posit8_0", "posit8_0"),
            ("mxfp8_e4m3", "mxfp8_e4m3"),
            ("mxfp4", "mxfp8_e4m3"),
        ],
    )


@pytest.mark.slow
def test_verilator_every_mode(tmp_path):
    run_array(tmp_path, "verilator", 4, 4, TINY_PAIRS)


def test_a_wrong_expectation_fails_with_the_beat(tmp_path):
    """The RTL bench can fail: one expected value off by one is reported with its beat."""
    modes = [mode_spec("int8", "int8", rows=2, acc_bits=32)]
    array = SystolicArray(2, 2, modes, "ws")
    verilog = tmp_path / "array.v"
    verilog.write_text(to_verilog(array, "array"))
    job = ws_beats(array.datapath.bus, 2, 2, 0, modes[0], np.ones((2, 2)), np.ones((3, 2)))
    job.expected[1][0][0] += 1
    with pytest.raises(AssertionError, match=r"output beat 1: got \[2, 2\].*expected \[3, 2\]"):
        run_rtl(
            verilog,
            "array",
            [job],
            simulator="icarus",
            build_dir=tmp_path / "icarus",
            widths={"cols": 2, "acc_width": 32},
        )
