"""ResNet-18 end to end through the compiler: a float ONNX model with random weights at
224x224 (``compiler.zoo.resnet18``), quantized by onnxruntime's ``quantize_static`` (QDQ,
per-channel weights, one random calibration image), compiled for ``configs/edge.toml`` and
timed by the fast engine. Compile = frontend and passes up to the Programs; simulate = the
fast engine on every layer's Program. Goal: compile + simulate under 30 s."""

from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path

import numpy as np

from compiler import zoo
from compiler.network import compile_model
from qaccel import config

TITLE = "ResNet-18 (224x224) compiled and simulated"
ROOT = Path(__file__).resolve().parent.parent


def measure() -> dict:
    logging.disable(logging.WARNING)  # onnxruntime's quantizer suggests pre-processing
    cfg = config.load_config(ROOT / "configs" / "edge.toml")
    start = time.perf_counter()
    model = zoo.resnet18()
    image = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    quantized = zoo.quantize(model, [image], per_channel=True)
    quantize_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = compile_model(quantized, cfg)
    total_s = time.perf_counter() - start
    passes = compiled.graph.graph["pass_s"]
    simulate_s = passes["predict_timing"]
    rows = compiled.report()
    cycles = sum(r.cycles for r in rows)
    return {
        "quantize_s": quantize_s,
        "compile_s": total_s - simulate_s,
        "simulate_s": simulate_s,
        "passes": passes,
        "layers": len(rows),
        "on_array": sum(r.unit == "array" for r in rows),
        "host_ops": len(compiled.host_ops()),
        "cycles": cycles,
        "utilization": sum(r.utilization * r.cycles for r in rows) / cycles,
        "energy_uj": sum(r.energy_uj for r in rows),
        "clock_mhz": cfg.clock_mhz,
        "instructions": sum(
            len(n["attrs"]["program"].instructions) for n in compiled.layers if n["unit"] != "host"
        ),
    }


def run() -> str:
    r = measure()
    total = r["compile_s"] + r["simulate_s"]
    passes = ", ".join(f"{k} {v:.2f} s" for k, v in r["passes"].items())
    return "\n".join(
        [
            f"## {TITLE}",
            "",
            "`python bench/run.py resnet18_compile` (ResNet-18 with random weights, 1x3x224x224, "
            "onnxruntime QDQ int8 per channel, `configs/edge.toml`; "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores):",
            "",
            "| figure | value |",
            "|---|---|",
            f"| compile (frontend, passes, 21 Programs) | {r['compile_s']:.1f} s |",
            f"| simulate (fast engine, every layer) | {r['simulate_s']:.1f} s |",
            f"| compile + simulate (goal: under 30 s) | **{total:.1f} s** |",
            f"| onnxruntime quantize_static (not counted) | {r['quantize_s']:.1f} s |",
            f"| GEMM layers on the array / host ops | {r['on_array']} / {r['host_ops']} |",
            f"| instructions | {r['instructions']:,} |",
            f"| cycles | {r['cycles']:,} ({r['cycles'] / r['clock_mhz'] / 1000:.1f} ms at "
            f"{r['clock_mhz']:g} MHz) |",
            f"| MAC utilization | {r['utilization']:.1%} |",
            f"| energy (table of `qaccel/energy.py`) | {r['energy_uj'] / 1000:.2f} mJ |",
            "",
            f"Per pass: {passes}.",
            "",
            "The cycles are the 21 layers one after another (each its own Program, tiles double "
            "buffered inside); the host's pooling, residual adds and im2col between them are not "
            "counted.",
            "",
        ]
    )


if __name__ == "__main__":
    print(run())
