"""The LUT core's generated Verilog on Icarus and Verilator (cocotb): every weight format,
random and extreme matrices, outputs bit-exact and every row on the latency formula's cycle."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from hw.generate import to_verilog
from hw.lut_core import LutCore
from hw.rtl_bench import run_rtl
from sim.lut_model import LUT_WEIGHT_FORMATS, LutBeats, lut_beats, lut_weight

SEED = 20261123


def random_jobs(core: LutCore, seed: int) -> list[LutBeats]:
    """Per weight format: a random tile over three groups and a partial one, then a tile of the
    most negative weights against the largest activations, back to back."""
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    rows, cols, g = core.tile_m, core.tile_n, core.group
    acts = core.activation.finite_codes()
    top = acts[np.argmax(core.activation.decode(acts))]
    jobs = []
    for index, mode in enumerate(core.modes):
        codes = mode.fmt.finite_codes()
        low = codes[np.argmin(mode.fmt.decode(codes))]
        k = 3 * g + 1
        job = lut_beats(core, index, rng.choice(codes, (k, cols)), rng.integers(0, 256, (rows, k)))
        job.extend(lut_beats(core, index, np.full((4 * g, cols), low), np.full((rows, 4 * g), top)))
        jobs.append(job)
    return jobs


def run_core(tmp_path, simulator, weights, activation, group=4, tile_m=2, tile_n=4):
    core = LutCore(
        [lut_weight(n) for n in weights],
        group=group,
        tile_m=tile_m,
        tile_n=tile_n,
        activation=activation,
    )
    tmp_path.mkdir(parents=True, exist_ok=True)
    verilog = tmp_path / "lut_core.v"
    verilog.write_text(to_verilog(core, "lut_core"))
    key = repr((SEED, weights, activation, group, tile_m, tile_n)).encode()
    jobs = random_jobs(core, zlib.crc32(key))
    widths = {"cols": tile_n, "acc_width": core.acc_bits}
    results = run_rtl(
        verilog,
        "lut_core",
        jobs,
        simulator=simulator,
        build_dir=tmp_path / simulator,
        widths=widths,
    )
    assert [len(r["w_cycles"]) for r in results] == [len(j.w) for j in jobs]


@pytest.mark.parametrize("activation", ["int8", "uint8"])
def test_icarus_every_weight_format(tmp_path, activation):
    run_core(tmp_path, "icarus", LUT_WEIGHT_FORMATS, activation)


def test_verilator_low_bit_formats(tmp_path):
    run_core(tmp_path, "verilator", ("binary", "int2", "uint4", "ternary"), "int8", group=2)


@pytest.mark.slow
def test_verilator_every_weight_format(tmp_path):
    run_core(tmp_path, "verilator", LUT_WEIGHT_FORMATS, "uint8", tile_m=3, tile_n=8)


def test_a_wrong_row_fails_with_the_row(tmp_path):
    """The LUT bench can fail: one expected value off by one is reported with its row."""
    core = LutCore([lut_weight("int2")], group=2, tile_m=1, tile_n=2)
    verilog = tmp_path / "lut_core.v"
    verilog.write_text(to_verilog(core, "lut_core"))
    job = lut_beats(core, 0, np.ones((2, 2), dtype=np.int64), np.ones((1, 2), dtype=np.int64))
    assert job.expected == [[2, 2]]
    job.expected[0][1] += 1
    with pytest.raises(AssertionError, match=r"output row 0: got \[2, 2\], expected \[2, 3\]"):
        run_rtl(
            verilog,
            "lut_core",
            [job],
            simulator="icarus",
            build_dir=tmp_path / "icarus",
            widths={"cols": 2, "acc_width": core.acc_bits},
        )
