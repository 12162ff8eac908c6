"""Throughput of the number-format library, which the reference and the simulator call on
every tensor. Reproduce: `make bench` or `python bench/format_speed.py`."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np

from qaccel import formats

TITLE = "Number formats: encode / decode throughput"

ELEMENTS = 1 << 20
SCALAR = ["int8", "int4", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "bf16", "posit8_0", "posit16_1"]
MX = ["mxfp8_e4m3", "mxfp4", "mxint8"]


def machine() -> str:
    """The CPU and the Python stack these throughputs depend on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}; Python {platform.python_version()}; numpy {np.__version__}"


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run() -> str:
    rng = np.random.default_rng(0)
    x = rng.normal(size=ELEMENTS)
    rows = []
    for name in SCALAR:
        fmt = formats.get_format(name)
        scaled = x * fmt.max_magnitude / 4
        codes = fmt.encode(scaled)
        enc = best_of(lambda fmt=fmt, scaled=scaled: fmt.encode(scaled))
        dec = best_of(lambda fmt=fmt, codes=codes: fmt.decode(codes))
        rows.append(f"| {name} | {ELEMENTS / enc / 1e6:.1f} | {ELEMENTS / dec / 1e6:.1f} |")
    for name in MX:
        fmt = formats.get_mx_format(name)
        t = fmt.quantize(x)
        enc = best_of(lambda fmt=fmt: fmt.quantize(x))
        dec = best_of(lambda t=t: t.dequantize())
        rows.append(f"| {name} | {ELEMENTS / enc / 1e6:.1f} | {ELEMENTS / dec / 1e6:.1f} |")
    header = [
        f"## {TITLE}",
        "",
        f"{ELEMENTS} float64 values, best of 3, one core. Command: `python bench/format_speed.py`.",
        f"Machine: {machine()}.",
        "",
        "| format | encode (M values/s) | decode (M values/s) |",
        "|---|---:|---:|",
    ]
    return "\n".join(header + rows) + "\n"


if __name__ == "__main__":
    print(run())
