"""Simulated cycles per second of the fast engine, the cycle engine, Icarus and Verilator on one
program on the 16x16 array of configs/edge.toml (every engine counts the same cycles: the
bench checks it). RTL figures time the simulation from START to DONE, not the build."""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from compiler.gemm import lower_gemm
from hw.accel_bench import run_on_rtl
from qaccel import config
from sim.cycle import run_cycles
from sim.fast import run_fast

TITLE = "Simulator engines: simulated cycles per second"
ROOT = Path(__file__).resolve().parent.parent
N = 48  # a 48x48x48 int8 GEMM, output-stationary: about 7,000 cycles


def program():
    cfg = config.load_config(ROOT / "configs" / "edge.toml")
    w = np.random.default_rng(0).integers(-128, 128, (N, N))
    return lower_gemm(cfg, w, m=N, mode="int8*int8", dataflow="os")


def _best(fn, repeat=3):
    best, result = None, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)
    return best, result


def measure() -> list[tuple[str, int, float]]:
    """(engine, simulated cycles, seconds) for each engine."""
    prog = program()
    x = np.random.default_rng(1).integers(-128, 128, (N, N))
    rows = []
    seconds, fast = _best(lambda: run_fast(prog))
    rows.append(("fast engine", fast.counters["CYCLES"], seconds))
    seconds, cycle = _best(lambda: run_cycles(prog))
    rows.append(("cycle engine", cycle.counters["CYCLES"], seconds))
    for simulator in ("icarus", "verilator"):
        with tempfile.TemporaryDirectory() as tmp:
            (run,) = run_on_rtl(prog.config, [(prog, {"x": x})], simulator=simulator, build_dir=tmp)
        rows.append((simulator.capitalize(), run.counters["CYCLES"], run.seconds))
    if len({r[1] for r in rows}) != 1:
        raise AssertionError(f"the engines count different cycles: {rows}")
    return rows


def run() -> str:
    rows = measure()
    verilator = next(r for r in rows if r[0] == "Verilator")
    v_rate = verilator[1] / verilator[2]
    lines = [
        f"## {TITLE}",
        "",
        f"A {N}x{N}x{N} int8 GEMM (output-stationary, compiled by `compiler.gemm.lower_gemm`) on "
        "configs/edge.toml (16x16 array, every mode): every engine counts the same cycles "
        "(checked). Best of 3 for the Python engines; the RTL simulators time one run from "
        "START to DONE (cocotb driving the AXI DRAM model and the host), the build excluded. "
        f"Command: `python bench/run.py engine_speed`. Machine: {platform.processor() or 'x86'}"
        f", Python {platform.python_version()}.",
        "",
        "| engine | cycles | seconds | cycles/s | x Verilator |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, cycles, seconds in rows:
        rate = cycles / seconds
        lines.append(f"| {name} | {cycles} | {seconds:.4f} | {rate:,.0f} | {rate / v_rate:,.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
