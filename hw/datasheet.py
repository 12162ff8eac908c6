"""Datasheets: what a stranger needs to drive a generated top without reading our source.

``datasheet(manifest)`` turns the JSON manifest that ``hw.generate`` writes (the facts, as
data) into Markdown (``OUT/<top>.md``): ports, clock and reset, the protocol step by step, bit
positions of every packed field, value units and sign extension, saturation and flags, latency,
and the simulator flags the Verilog needs.
"""

from __future__ import annotations

__all__ = ["SIMULATOR_NOTES", "datasheet"]

SIMULATOR_NOTES = {
    "icarus": "iverilog -g2012 as is (cocotb: pass a timescale, e.g. 1ns/1ps; the Verilog has "
    "none).",
    "verilator": "verilator --no-timing -Wno-WIDTH -Wno-STMTDLY -Wno-CASEINCOMPLETE "
    "-Wno-ASCRANGE (not -Wall); for large designs build with "
    "MAKEFLAGS=CFG_CXXFLAGS_PCH_I=-include or linking fails; needs Verilator >= 5.036 for "
    "cocotb 2.",
    "why": "one `#0` assignment wakes the combinational blocks at time zero for event-driven "
    "simulators; Verilator evaluates everything at time zero anyway, hence --no-timing.",
}


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fields(payloads: dict) -> list[str]:
    lines = []
    for name, fields in payloads.items():
        if isinstance(fields, dict):
            fields = "; ".join(f"`{k}`: {v}" for k, v in fields.items())
        lines.append(f"- `{name}`: {fields}")
    return lines


def _ports(manifest: dict) -> str:
    rows = [[name, p["direction"], p["width"]] for name, p in manifest["ports"].items()]
    return _table(["port", "direction", "bits"], rows)


def _common(manifest: dict, title: str) -> list[str]:
    return [
        f"# `{manifest['top']}` — {title} (configuration `{manifest['config']}`)",
        "",
        "## Clock and reset",
        "",
        "`clk`: every register on its rising edge. `rst`: synchronous, active high; hold it "
        "for at least one cycle. After reset every stream is empty and every unit idle.",
        "",
        "## Ports",
        "",
        "Vectors are little-endian: element 0 of an array field sits in the least "
        "significant bits. Stream ports are `<name>__valid`, `<name>__ready` and "
        "`<name>__payload`; a beat moves in a cycle where valid and ready are both high.",
        "",
        _ports(manifest),
        "",
    ]


def _simulators() -> list[str]:
    return [
        "## Simulating the Verilog",
        "",
        f"- Icarus: {SIMULATOR_NOTES['icarus']}",
        f"- Verilator: {SIMULATOR_NOTES['verilator']}",
        f"- Why: {SIMULATOR_NOTES['why']}",
        "",
    ]


def protocol(manifest: dict) -> dict[str, str]:
    """The prose facts of a block's datasheet (the manifest carries them as ``protocol``)."""
    p = manifest["parameters"]
    if manifest["top"] == "accel":
        return {
            "using": [
                "Put the Program's DRAM image (instructions, weights, constants, zero-filled "
                "input regions) in DRAM (the memory behind `m_axi`), then the input tensors.",
                "Write PROG_ADDR (the first instruction word's byte address) and PROG_LEN (the "
                "most instructions the run may fetch) over `s_axil`.",
                "Write CTRL.START = 1; STATUS.BUSY is high during the run.",
                "Poll STATUS until DONE = 1. ERROR_CODE 0: the outputs are in DRAM; otherwise "
                "ERROR_INSN names the instruction that faulted, and the accelerator is idle "
                "again.",
                "Read the counters (`_LO` then `_HI`); CTRL.CLEAR zeroes them and DONE/ERROR.",
            ],
            "dma": "DMA: AXI4 INCR bursts of at most 256 beats that never cross a 4 KiB "
            "boundary, `*size` = log2(data bytes), IDs 0 (so reads come back in order; up to "
            "`dram.read_bursts` of them in flight), `wstrb` all ones; SLVERR/DECERR stop "
            "the run with ERROR_CODE BUS. Every DMA address and stride is a multiple of the "
            "data bytes.",
        }
    if manifest["top"] == "lut_core":
        return {
            "protocol": "For each group of `group` k indices: one a beat (the group's "
            "activations of every row, row 0 and k 0 lowest; `last` on the tile's final group), "
            "then the group's weight bit planes as w beats, **least significant plane first** "
            "(plane b holds bit b of every weight code; bit j of column c is k index j of the "
            "group). A k-bit format takes k w beats per group; binary takes 1 (code 1 = +1, "
            "code 0 = -1). K must be padded to a multiple of `group` with activation code 0. "
            "`mode` may change between tiles only. `o` has no ready: one result row per cycle, "
            "row 0 first.",
            "values": f"o values are exact integer dot products, two's complement, "
            f"{p['acc_bits']} bits; they saturate at that width (the plane accumulator holds 3 "
            "more bits).",
        }
    return {
        "packing": "Lanes: a word of `lanes` codes holds k index lanes*i + l in bits "
        "[l*code_bits, (l+1)*code_bits), code_bits the format's own (int8 and FP8: 8, int4 "
        "and FP4: 4, int2 and ternary: 2, binary: 1), the rest of the bus word zero. K must be "
        "padded to a multiple of `lanes` with activation code 0 (a zero value in every "
        "activation format). Binary weights: code 0 is -1, code 1 is +1; ternary: 0 -> 0, 1 "
        "-> +1, 3 -> -1 (2 is not a value; the PE reads it as -2).",
        "weight_stationary": "Weight-stationary (`dataflow` = 0): send `rows` w beats, the "
        "bottom PE row first (beat i holds the words of PE row rows-1-i, k indices "
        "(rows-1-i)*lanes .. +lanes-1), all with the same `mode`; then one a beat per row of A "
        "(all K codes), `last` on the tile's final beat. Each a beat gives one o beat: C row = "
        "A row x W. The next tile's weights may load while the current one computes (each PE "
        "holds a shadow weight beside the active one); a tile's last w beat waits until the "
        "tile before it has started (max(rows - 2, 0) cycles after its first a beat).",
        "output_stationary": "Output-stationary (`dataflow` = 1): w and a move together, one "
        "K slice per step: each step carries one weight word per column and one activation "
        "word per row (lanes k values). `last` ends the tile; its `rows` result rows then "
        "leave as consecutive o beats, row 0 first. A tile shorter than `rows` steps stalls "
        "(ready low) until then.",
        "changes": "`mode` travels with every w beat; `dataflow` may change only while "
        "`busy` is low. `o` has no ready: the consumer must take every beat in the cycle it "
        "is valid.",
        "values": "o values are two's complement in the mode's accumulator unit (the modes "
        "table), sign-extended to the bus's "
        f"{manifest['payloads']['o__payload']['data']}. Integer modes saturate at their "
        "accumulator bits; float modes are exact for tiles of up to "
        f"{p.get('max_k', p['rows'])} steps (`array.max_k`); MX modes add a block only if its "
        "scale exponent lies in the window, else set `invalid`. `invalid` per column: a NaN, "
        "inf or NaR joined the sum (or an MX block fell outside the window).",
    }


def _array(manifest: dict) -> str:
    p = manifest["parameters"]
    rows, cols = p["rows"], p["cols"]
    out = _common(manifest, f"{rows}x{cols} systolic array")
    out += ["## Modes", ""]
    out.append(
        _table(
            ["mode", "weight", "activation", "lanes", "MACs/cycle", "acc bits", "acc unit"],
            [
                [
                    m["index"],
                    m["weight"],
                    m["activation"],
                    m["lanes"],
                    m["macs_per_cycle"],
                    m["acc_width"],
                    f"2^-{m['acc_frac_bits']}",
                ]
                for m in manifest["modes"]
            ],
        )
    )
    text = manifest.get("protocol") or protocol(manifest)
    out += [
        "",
        "## Packed fields",
        "",
        *_fields(manifest["payloads"]),
        "",
        text["packing"],
        "",
        "## Protocol",
        "",
        text["weight_stationary"],
        "",
        text["output_stationary"],
        "",
        text["changes"],
        "",
        "## Values, saturation and flags",
        "",
        text["values"],
        "",
        "## Latency",
        "",
        f"- weight-stationary: {manifest['latency']['weight_stationary']}",
        f"- output-stationary: {manifest['latency']['output_stationary']}",
        "",
    ]
    return "\n".join(out + _simulators())


def _lut(manifest: dict) -> str:
    p = manifest["parameters"]
    text = manifest.get("protocol") or protocol(manifest)
    out = _common(
        manifest, f"LUT tensor core, {p['tile_m']}x{p['tile_n']} tile, group {p['group']}"
    )
    out += [
        "## Weight formats",
        "",
        _table(
            ["mode", "weight", "planes", "plane coefficients", "MACs/cycle"],
            [
                [m["index"], m["weight"], m["planes"], m["plane_coefficients"], m["macs_per_cycle"]]
                for m in manifest["modes"]
            ],
        ),
        "",
        "## Packed fields",
        "",
        *_fields(manifest["payloads"]),
        "",
        "## Protocol",
        "",
        text["protocol"],
        "",
        "## Values and saturation",
        "",
        text["values"],
        "",
        "## Latency",
        "",
        f"- {manifest['latency']}",
        "",
    ]
    return "\n".join(out + _simulators())


def _accel(manifest: dict) -> str:
    p = manifest["parameters"]
    text = manifest.get("protocol") or protocol(manifest)
    out = _common(manifest, "the whole accelerator")
    out += [
        "## Using it",
        "",
        *[f"{i}. {step}" for i, step in enumerate(text["using"], 1)],
        "",
        "## Memories and buses",
        "",
        _table(
            ["fact", "value"],
            [[k, v] for k, v in p.items()],
        ),
        "",
        text["dma"],
        "",
        "## Instruction words",
        "",
        f"{p['instruction bytes']}-byte words, little-endian in DRAM, fields from bit 0 up; bits "
        "above an opcode's fields must be 0. Token flags as in `qaccel.isa`.",
        "",
    ]
    for op, fields in manifest["isa"].items():
        out += [
            f"### {op}",
            "",
            _table(
                ["field", "bits", "width"],
                [
                    [f["name"], f"[{f['lsb'] + f['width'] - 1}:{f['lsb']}]", f["width"]]
                    for f in fields
                ],
            ),
            "",
        ]
    out += [
        "## Error codes",
        "",
        _table(["code", "name", "meaning"], manifest["error_codes"]),
        "",
        "## Registers (AXI4-Lite)",
        "",
        manifest["registers"],
        "",
        "## Timing",
        "",
        *[f"- {line}" for line in manifest["timing"]],
        "",
    ]
    return "\n".join(out + _simulators())


def datasheet(manifest: dict) -> str:
    """The Markdown datasheet of a generated top, from its manifest."""
    return {"array": _array, "lut_core": _lut, "accel": _accel}[manifest["top"]](manifest)
