"""ResNet-18 end to end through the compiler: a float ONNX model with random weights at
224x224 (``compiler.zoo.resnet18``), quantized by onnxruntime's ``quantize_static`` (QDQ,
per-channel weights, one random calibration image) and, beside it, by the compiler's own
quantizer (which fuses the residual adds into the post-processing unit), compiled for
``configs/edge.toml`` and timed by the fast engine. Compile = frontend and passes up to the
Programs; simulate = the fast engine on every layer's Program. Goal: compile + simulate under
30 s."""

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


def measure(quantizer: str = "onnxruntime") -> dict:
    """The figures for ResNet-18 quantized by ``quantizer``: "onnxruntime" or "qaccel"."""
    from compiler.ptq import quantize_model

    logging.disable(logging.WARNING)  # onnxruntime's quantizer suggests pre-processing
    cfg = config.load_config(ROOT / "configs" / "edge.toml")
    model = zoo.resnet18()
    image = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    start = time.perf_counter()
    if quantizer == "onnxruntime":
        quantized = zoo.quantize(model, [image], per_channel=True)
    else:
        quantized = quantize_model(model, [image])
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
        "fused_adds": sum(n["attrs"]["form"].res_shift is not None for n in compiled.layers),
        "cycles": cycles,
        "utilization": sum(r.utilization * r.cycles for r in rows) / cycles,
        "energy_uj": sum(r.energy_uj for r in rows),
        "clock_mhz": cfg.clock_mhz,
        "instructions": sum(
            len(n["attrs"]["program"].instructions) for n in compiled.layers if n["unit"] != "host"
        ),
    }


def run() -> str:
    ort, own = measure("onnxruntime"), measure("qaccel")

    def row(label: str, fmt) -> str:
        return f"| {label} | {fmt(ort)} | {fmt(own)} |"

    def total(r):
        return r["compile_s"] + r["simulate_s"]

    def passes(r):
        return ", ".join(f"{k} {v:.2f} s" for k, v in r["passes"].items())

    return "\n".join(
        [
            f"## {TITLE}",
            "",
            "`python bench/run.py resnet18_compile` (ResNet-18 with random weights, 1x3x224x224, "
            "one random calibration image, `configs/edge.toml`; "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores):",
            "",
            "| figure | onnxruntime QDQ, int8 per channel | the compiler's quantizer, int8 |",
            "|---|---|---|",
            row("compile (frontend, passes, 21 Programs)", lambda r: f"{r['compile_s']:.1f} s"),
            row("simulate (fast engine, every layer)", lambda r: f"{r['simulate_s']:.1f} s"),
            row("compile + simulate (goal: under 30 s)", lambda r: f"**{total(r):.1f} s**"),
            row("quantize (not counted)", lambda r: f"{r['quantize_s']:.1f} s"),
            row(
                "GEMM layers on the array / host ops",
                lambda r: f"{r['on_array']} / {r['host_ops']}",
            ),
            row("residual adds fused into the layers", lambda r: f"{r['fused_adds']} of 8"),
            row("instructions", lambda r: f"{r['instructions']:,}"),
            row(
                "cycles",
                lambda r: (
                    f"{r['cycles']:,} ({r['cycles'] / r['clock_mhz'] / 1000:.1f} ms at "
                    f"{r['clock_mhz']:g} MHz)"
                ),
            ),
            row("MAC utilization", lambda r: f"{r['utilization']:.1%}"),
            row(
                "energy (table of `qaccel/energy.py`)",
                lambda r: f"{r['energy_uj'] / 1000:.2f} mJ",
            ),
            "",
            f"Per pass (onnxruntime's model): {passes(ort)}.",
            "",
            "The cycles are the 21 layers one after another (each its own Program, tiles double "
            "buffered inside); the host's pooling, remaining adds and im2col between them are not "
            "counted. The compiler's quantizer gives each layer that feeds a residual add one "
            "weight scale that puts the residual at a power of two of its accumulator's unit, so "
            "the post-processing unit adds it (loading the residual with the layer's tiles).",
            "",
        ]
    )


if __name__ == "__main__":
    print(run())
