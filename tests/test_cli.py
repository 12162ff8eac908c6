"""The qaccel command: help, version, the formats table, config checking, one-line errors."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qaccel import __version__, formats
from qaccel.cli import main

CONFIGS = Path(__file__).parent.parent / "configs"


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("formats", "config", "doctor"):
        assert command in out


def test_version_from_the_installed_script():
    exe = Path(sys.executable).parent / "qaccel"
    done = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"qaccel {__version__}"


def test_formats_table_lists_every_format_with_its_range(capsys):
    assert main(["formats"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for name, fmt in formats.FORMATS.items():
        assert rows[name][1] == str(fmt.bits)
    for name in formats.MX_FORMATS:
        assert name in rows
    assert rows["fp8_e4m3"][3:6] == ["-448", "448", "0.00195312"]
    assert rows["posit8_0"][3:6] == ["-64", "64", "0.015625"]
    assert "NaN 0x7f/0xff" in out and "NaR 0x8000" in out


def test_config_prints_the_normal_form(capsys):
    assert main(["config", str(CONFIGS / "edge.toml")]) == 0
    out = capsys.readouterr().out
    assert out.startswith('name = "edge"') and "[array]" in out and "rows = 16" in out


def test_bad_config_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[array]\nrows = "four"\ncols = 4\nmodes = []\n')
    assert main(["config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("qaccel: error: array.rows: expected an integer, got str 'four'")
    assert err.count("\n") == 1


SMALL = """
name = "small"
[array]
rows = 2
cols = 3
dataflow = "both"
mx_scale_range = [-30, 1]
modes = [
  { weight = "int8", activation = "int8" },
  { weight = "fp8_e4m3", activation = "fp8_e4m3" },
  { weight = "mxfp4", activation = "mxfp8_e4m3" },
]
"""


def test_generate_writes_verilog_and_a_manifest_that_agree(tmp_path, capsys):
    cfg = tmp_path / "small.toml"
    cfg.write_text(SMALL)
    out = tmp_path / "out"
    assert main(["generate", "--config", str(cfg), "--top", "array", "-o", str(out)]) == 0
    verilog = (out / "array.v").read_text()
    manifest = json.loads((out / "array.json").read_text())
    assert manifest["parameters"] == {
        "rows": 2,
        "cols": 3,
        "dataflow": "both",
        "acc_bits": 32,
        "max_k": 2,
        "pipelined": True,
    }
    sheet = (out / "array.md").read_text()
    for fact in (
        "bottom PE row first",
        "`o` has no ready",
        "--no-timing",
        "-Wno-ASCRANGE",
        "CFG_CXXFLAGS_PCH_I",
        "synchronous, active high",
        "binary: 1",
        "2^-",
    ):
        assert fact in sheet, fact
    assert [m["macs_per_cycle"] for m in manifest["modes"]] == [6, 6, 6]
    mx = manifest["modes"][2]
    assert (mx["weight"], mx["activation"], mx["block"], mx["scale_range"]) == (
        "mxfp4",
        "mxfp8_e4m3",
        32,
        [-30, 1],
    )
    # weights: 3 columns x (8-bit word + 8-bit scale) + 2 mode bits
    assert manifest["ports"]["w__payload"]["width"] == 3 * 16 + 2
    header = re.search(r"^module array\((.*)\);", verilog, re.M).group(1)
    assert sorted(header.replace(" ", "").split(",")) == sorted([*manifest["ports"], "clk", "rst"])
    for name, port in manifest["ports"].items():
        width = port["width"]
        decl = f"{'input' if port['direction'] == 'in' else 'output'} "
        decl += f"[{width - 1}:0] {name};" if width > 1 else f"{name};"
        assert decl in verilog, decl
    assert "wrote" in capsys.readouterr().out


def test_generate_names_the_bad_key(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(SMALL.replace('weight = "int8"', 'weight = "int3"'))
    assert main(["generate", "--config", str(cfg), "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("qaccel: error: array.modes[0]: int3*int8: int3 weights are not")
    assert len(err.splitlines()) == 1


def test_generate_rejects_an_unknown_top(tmp_path, capsys):
    cfg = tmp_path / "small.toml"
    cfg.write_text(SMALL)
    assert main(["generate", "--config", str(cfg), "--top", "cpu", "-o", str(tmp_path)]) == 1
    assert "unknown top 'cpu'; known: array" in capsys.readouterr().err


def one_mode_config(tmp_path, rows, cols, dataflow="ws"):
    cfg = tmp_path / f"a{rows}x{cols}.toml"
    cfg.write_text(
        f'name = "a{rows}x{cols}"\n[array]\nrows = {rows}\ncols = {cols}\n'
        f'dataflow = "{dataflow}"\nmodes = [{{ weight = "int8", activation = "int8" }}]\n'
    )
    return cfg


def test_synth_writes_a_report_and_prints_the_table(tmp_path, capsys):
    cfg, out = one_mode_config(tmp_path, 1, 1), tmp_path / "out"
    assert main(["synth", "--config", str(cfg), "--target", "ecp5-25k", "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["target"] == "ecp5-25k" and report["seed"] == 1
    assert report["resources"]["DSP"]["used"] == 1  # the PE's one 8x9 multiplier
    assert report["resources"]["FF"]["used"] > 8 and report["fmax_mhz"] > 0
    table = capsys.readouterr().out
    assert "LUT4" in table and "Fmax" in table
    # Per block: the multiplier holds the DSP and the product's register (pipelined), the
    # accumulator the partial sum's register (one PE's sum is the product: Yosys merges its
    # sign bits and removes the adder and the saturation, which cannot act).
    blocks = report["blocks"]
    assert blocks["pe/multiplier"]["DSP"] == 1 and blocks["pe/multiplier"]["instances"] == 1
    assert blocks["pe/multiplier"]["FF"] >= 16  # the int8 x int8 product
    assert blocks["pe/accumulator"]["FF"] >= 16
    assert sum(b["DSP"] for b in blocks.values()) == 1
    assert "pe/accumulator" in table.split("per block")[1]
    # Its ports fit the pins; --wrap-io yes puts it behind the serial I/O wrapper all the same.
    assert report["wrapped_io"] is False
    argv = ["synth", "--config", str(cfg), "--target", "ecp5-25k", "--wrap-io", "yes"]
    assert main([*argv, "-o", str(tmp_path / "wrapped")]) == 0
    wrapped = json.loads((tmp_path / "wrapped" / "report.json").read_text())
    assert wrapped["wrapped_io"] is True
    assert wrapped["resources"]["FF"]["used"] > report["resources"]["FF"]["used"]
    assert wrapped["resources"]["IO"]["used"] < report["resources"]["IO"]["used"]


def test_synth_names_the_resource_that_overflows(tmp_path, capsys):
    cfg = one_mode_config(tmp_path, 3, 3)  # nine multipliers, the UP5K has eight DSPs
    argv = ["synth", "--config", str(cfg), "--target", "ice40-up5k", "-o", str(tmp_path / "o")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("qaccel: error: does not fit ice40-up5k: needs 9 DSP") and "\n" not in err


def test_synth_rejects_an_unknown_target_at_once(tmp_path, capsys):
    cfg = one_mode_config(tmp_path, 1, 1)
    assert main(["synth", "--config", str(cfg), "--target", "xc7", "-o", str(tmp_path)]) == 1
    assert "unknown target 'xc7'; known: ecp5-25k, ecp5-85k, ice40-up5k" in capsys.readouterr().err
    argv = ["synth", "--config", str(cfg), "--target", "ecp5-25k", "--router", "fast"]
    assert main([*argv, "-o", str(tmp_path)]) == 1
    assert "unknown router 'fast'; known: router1, router2" in capsys.readouterr().err


def test_generate_lut_core(tmp_path):
    cfg = tmp_path / "lut.toml"
    cfg.write_text('name = "l"\n[lut]\ngroup = 4\ntile_m = 2\ntile_n = 8\nweight_bits = [1, 2]\n')
    out = tmp_path / "out"
    assert main(["generate", "--config", str(cfg), "--top", "lut_core", "-o", str(out)]) == 0
    manifest = json.loads((out / "lut_core.json").read_text())
    assert [m["weight"] for m in manifest["modes"]] == ["binary", "int2", "uint2", "ternary"]
    assert [m["macs_per_cycle"] for m in manifest["modes"]] == [64, 32, 32, 32]
    assert manifest["ports"]["w__payload"]["width"] == 8 * 4 + 2
    assert "module lut_core(" in (out / "lut_core.v").read_text()


def test_synth_lut_core(tmp_path, capsys):
    cfg = tmp_path / "lut.toml"
    cfg.write_text(
        'name = "l"\n[lut]\ngroup = 2\ntile_m = 1\ntile_n = 2\nweight_bits = [1]\n'
        "ternary = false\nacc_bits = 16\n"
    )
    out = tmp_path / "out"
    argv = ["synth", "--config", str(cfg), "--top", "lut_core", "--target", "ecp5-25k"]
    assert main([*argv, "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["top"] == "lut_core" and report["resources"]["DSP"]["used"] == 0
    # at least the two 16-bit accumulators and the 2-entry table of the one row
    assert report["resources"]["FF"]["used"] >= 2 * 16 + 2 * 10 and report["fmax_mhz"] > 0
    assert "lut_core of l on ecp5-25k" in capsys.readouterr().out


def test_gemm_then_run_writes_the_outputs(tmp_path, capsys):
    import numpy as np

    w = np.arange(-20, 20).reshape(8, 5)
    x = np.arange(24).reshape(3, 8) - 10
    np.save(tmp_path / "w.npy", w)
    np.save(tmp_path / "x.npy", x)
    prog, out = tmp_path / "prog", tmp_path / "out"
    config = str(CONFIGS / "tiny.toml")
    args = ["gemm", "--config", config, "--weights", str(tmp_path / "w.npy"), "--m", "3"]
    assert main([*args, "--mode", "int8*int8", "-o", str(prog)]) == 0
    assert "3x8x5 int8*int8 on the array (os)" in capsys.readouterr().out
    assert main(["run", str(prog), "--input", f"x={tmp_path / 'x.npy'}", "--out", str(out)]) == 0
    assert np.array_equal(np.load(out / "y.npy"), x @ w)
    counters = json.loads((out / "counters.json").read_text())
    assert counters["INSNS"] > 0 and counters["SATURATIONS"] == 0
    assert "DRAM_READ_BYTES" in capsys.readouterr().out


def test_run_errors_are_one_line(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "w.npy", np.ones((4, 4), dtype=np.int64))
    prog = tmp_path / "prog"
    args = ["gemm", "--config", str(CONFIGS / "tiny.toml"), "--weights", str(tmp_path / "w.npy")]
    assert main([*args, "--m", "2", "--mode", "int8*int8", "-o", str(prog)]) == 0
    capsys.readouterr()
    assert main(["run", str(prog), "--input", "x", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err == "qaccel: error: --input takes NAME=FILE.npy, not 'x'\n"
    assert main(["run", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 1
    assert "not a program directory" in capsys.readouterr().err
    assert main([*args, "--m", "2", "--mode", "int3*int8", "-o", str(prog)]) == 1
    assert "has no unit for int3*int8" in capsys.readouterr().err


def test_generate_lut_core_datasheet(tmp_path):
    out = tmp_path / "out"
    assert (
        main(
            ["generate", "--config", str(CONFIGS / "lut.toml"), "--top", "lut_core", "-o", str(out)]
        )
        == 0
    )
    sheet = (out / "lut_core.md").read_text()
    for fact in (
        "least significant plane first",
        "multiple of `group`",
        "code 0 = -1",
        "`o` has no ready",
        "--no-timing",
    ):
        assert fact in sheet, fact
    manifest = json.loads((out / "lut_core.json").read_text())
    assert manifest["simulators"]["verilator"]
    assert "least significant plane first" in manifest["protocol"]["protocol"]  # same facts


ACCEL = """
name = "acc2x2"
[array]
rows = 2
cols = 2
dataflow = "os"
modes = [{ weight = "int8", activation = "int8" }]
[memory]
scratchpad_kib = 1
scratchpad_banks = 1
accumulator_kib = 1
accumulator_banks = 1
[dram]
bytes_per_cycle = 4
latency_cycles = 10
"""


def test_generate_accel_writes_verilog_manifest_and_datasheet(tmp_path):
    from qaccel import csr
    from qaccel.config import load_config
    from qaccel.isa import Geometry, Opcode

    cfg = tmp_path / "acc.toml"
    cfg.write_text(ACCEL)
    out = tmp_path / "out"
    assert main(["generate", "--config", str(cfg), "--top", "accel", "-o", str(out)]) == 0
    verilog = (out / "accel.v").read_text()
    manifest = json.loads((out / "accel.json").read_text())
    assert "module accel(" in verilog
    assert {"m_axi__araddr", "m_axi__rdata", "s_axil__awaddr"} <= set(manifest["ports"])
    g = Geometry.of(load_config(cfg))
    gemm = {f["name"]: f for f in manifest["isa"]["GEMM"]}
    assert gemm["acc_addr"]["lsb"] == g.layout(Opcode.GEMM)["acc_addr"].offset
    assert manifest["register_offsets"]["PROG_ADDR"] == csr.offset("PROG_ADDR")
    sheet = (out / "accel.md").read_text()
    for fact in ("CTRL.START", "PROG_LEN", "ILLEGAL_OPCODE", "### LOAD", "4 KiB", "_LO"):
        assert fact in sheet, fact


def test_verify_and_selftest_on_the_rtl(tmp_path, capsys):
    import numpy as np

    cfg = tmp_path / "acc.toml"
    cfg.write_text(ACCEL)
    w, x = np.arange(-6, 6).reshape(4, 3), np.arange(8).reshape(2, 4)
    np.save(tmp_path / "w.npy", w)
    np.save(tmp_path / "x.npy", x)
    prog = tmp_path / "prog"
    assert (
        main(
            [
                "gemm",
                "--config",
                str(cfg),
                "--weights",
                str(tmp_path / "w.npy"),
                "--m",
                "2",
                "--mode",
                "int8*int8",
                "--requant",
                "0.5",
                "--relu",
                "-o",
                str(prog),
            ]
        )
        == 0
    )
    capsys.readouterr()
    build = tmp_path / "build"
    verify = ["verify", str(prog), "--input", f"x={tmp_path / 'x.npy'}", "--build", str(build)]
    assert main(verify) == 0
    out = capsys.readouterr().out
    assert "y       2x3    equal" in out and "outputs bit for bit" in out
    assert "every busy and stall counter equal to the simulator's" in out
    cycles = re.search(r"CYCLES\s+(\d+)\s+(\d+)", out)
    assert cycles and cycles.group(1) == cycles.group(2)  # RTL, simulator
    assert main(["selftest", "--config", str(cfg), "--build", str(build)]) == 0
    out = capsys.readouterr().out
    assert "bad: token deadlock" in out and " 0 failed" in out


def test_gemm_with_mx_weight_scales(tmp_path, capsys):
    import numpy as np

    cfg = tmp_path / "mx.toml"
    cfg.write_text(
        'name = "mx"\n[array]\nrows = 2\ncols = 2\ndataflow = "os"\nmax_k = 64\n'
        'modes = [{ weight = "mxint8", activation = "mxint8" }]\n'
    )
    np.save(tmp_path / "w.npy", np.ones((40, 3), dtype=np.int64))
    np.save(tmp_path / "s.npy", np.full((2, 3), 127))
    np.save(tmp_path / "x.npy", np.ones((2, 40), dtype=np.int64))
    np.save(tmp_path / "xs.npy", np.full((2, 2), 127))
    prog, out = tmp_path / "prog", tmp_path / "out"
    args = ["gemm", "--config", str(cfg), "--weights", str(tmp_path / "w.npy"), "--m", "2"]
    assert main([*args, "--mode", "mxint8*mxint8", "-o", str(prog)]) == 1
    assert "need w_scales of shape (2, 3)" in capsys.readouterr().err
    args += ["--w-scales", str(tmp_path / "s.npy"), "--mode", "mxint8*mxint8", "-o", str(prog)]
    assert main(args) == 0
    inputs = ["--input", f"x={tmp_path / 'x.npy'}", "--input", f"x_scales={tmp_path / 'xs.npy'}"]
    assert main(["run", str(prog), *inputs, "--out", str(out)]) == 0
    # 40 products of (1 * 2**-6) * (1 * 2**-6), scales 2**0, in the accumulator's unit
    from qaccel.config import load_config
    from qaccel.isa import Geometry

    frac = Geometry.of(load_config(cfg)).array_modes[0].frac_bits
    assert np.array_equal(np.load(out / "y.npy"), np.full((2, 3), 40 * 2 ** (frac - 12)))


def _gemm_program(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "w.npy", np.arange(-20, 20).reshape(8, 5))
    np.save(tmp_path / "x.npy", np.arange(24).reshape(3, 8) - 10)
    prog = tmp_path / "prog"
    args = ["gemm", "--config", str(CONFIGS / "tiny.toml"), "--weights", str(tmp_path / "w.npy")]
    assert main([*args, "--m", "3", "--mode", "int8*int8", "-o", str(prog)]) == 0
    capsys.readouterr()
    return prog, ["--input", f"x={tmp_path / 'x.npy'}"]


def test_run_engines_write_identical_stats(tmp_path, capsys):
    import numpy as np

    prog, inputs = _gemm_program(tmp_path, capsys)
    stats = {}
    for engine in ("cycle", "fast"):
        out = tmp_path / engine
        assert main(["run", str(prog), *inputs, "--engine", engine, "--out", str(out)]) == 0
        text = capsys.readouterr().out
        assert "MAC utilization" in text and "µJ" in text and f"{engine} engine:" in text
        stats[engine] = json.loads((out / "stats.json").read_text())
        assert stats[engine].pop("engine")["name"] == engine
        counters = json.loads((out / "counters.json").read_text())
        assert counters == stats[engine]["counters"]
        assert counters["CYCLES"] > 0 and counters["SATURATIONS"] == 0
        assert not (out / "trace.json").exists()
    assert stats["cycle"] == stats["fast"]
    assert np.array_equal(
        np.load(tmp_path / "cycle" / "y.npy"), np.load(tmp_path / "fast" / "y.npy")
    )


def test_run_trace_and_timing_only(tmp_path, capsys):
    prog, inputs = _gemm_program(tmp_path, capsys)
    full, timing = tmp_path / "full", tmp_path / "timing"
    assert main(["run", str(prog), *inputs, "--trace", "--out", str(full)]) == 0
    trace = json.loads((full / "trace.json").read_text())
    slices = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(slices) == json.loads((full / "stats.json").read_text())["counters"]["INSNS"]
    assert main(["run", str(prog), "--timing-only", "--out", str(timing)]) == 0
    assert "CYCLES" in capsys.readouterr().out
    assert not (timing / "y.npy").exists() and not (timing / "trace.json").exists()
    a, b = (json.loads((d / "stats.json").read_text()) for d in (full, timing))
    for s in (a, b):
        del s["engine"]
    assert "SATURATIONS" not in b.pop("counters")
    del a["counters"]
    assert a == b


def test_run_rejects_an_unknown_engine(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", str(tmp_path), "--engine", "rtl", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert "invalid choice: 'rtl'" in capsys.readouterr().err


def test_simulate_a_scalesim_topology(tmp_path, capsys):
    topology = tmp_path / "layers.csv"
    topology.write_text(
        "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, "
        "Num Filter, Strides,\nconv, 6, 6, 3, 3, 2, 5, 1,\n"
    )
    out = tmp_path / "out"
    args = ["simulate", "--config", str(CONFIGS / "tiny.toml"), "--topology", str(topology)]
    assert main([*args, "-o", str(out)]) == 0
    rows = (out / "layers.csv").read_text().splitlines()
    assert rows[0].startswith("layer,M,K,N,MACs,cycles,ideal_cycles,utilization")
    fields = rows[1].split(",")
    assert fields[:5] == ["conv", "16", "18", "5", str(16 * 18 * 5)]  # im2col: 4x4 outputs
    assert "total" in capsys.readouterr().out


def test_simulate_names_the_bad_line(tmp_path, capsys):
    topology = tmp_path / "gemm.csv"
    topology.write_text("Layer, M, N, K,\nfc, 4, four, 8,\n")
    args = ["simulate", "--config", str(CONFIGS / "tiny.toml"), "--topology", str(topology)]
    assert main([*args, "-o", str(tmp_path / "out")]) == 1
    assert "gemm.csv:2: column 3 (N): 'four' is not a positive integer" in capsys.readouterr().err
