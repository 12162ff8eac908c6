"""Verilog, a JSON manifest and a Markdown datasheet for the blocks of a configuration
(``qaccel generate``).

Ports are named after the block's signature (``a__payload``, ``o__valid``), plus ``clk`` and
``rst``."""

from __future__ import annotations

import json
import re
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Signal
from amaranth.lib import wiring

from hw import netlist_check, repeated
from qaccel import config

__all__ = ["TOPS", "build_top", "generate", "manifest", "ports", "to_verilog"]


def ports(component: wiring.Component) -> dict[str, tuple[str, int]]:
    """Verilog port name -> (direction "in" | "out", width), without ``clk`` and ``rst``.

    Members fixed by the signature (an always-ready stream's ``ready``) are not ports."""
    result = {}
    for path, member, value in component.signature.flatten(component):
        if not isinstance(value, Signal) and not hasattr(value, "as_value"):
            continue
        value = value.as_value() if hasattr(value, "as_value") else value
        if not isinstance(value, Signal):
            continue
        name = "__".join(str(p) for p in path)
        result[name] = ("in" if member.flow == wiring.In else "out", len(value))
    return result


# Yosys wakes every ``always @*`` block at time 0 by initialising a dummy register in its
# declaration; under IEEE 1800 semantics (Icarus -g2012) that is no event, so blocks that only
# read constant registers stay X. A #0 write is an event in every simulator.
_WAKE = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend\S*dump_module\$\d+) += 0;$", re.M)


def _convert(component: wiring.Component, name: str) -> str:
    signals = [
        v.as_value() if hasattr(v, "as_value") else v
        for _, _, v in component.signature.flatten(component)
    ]
    ports = [s for s in signals if isinstance(s, Signal)]
    return verilog.convert(component, name=name, ports=ports, emit_src=False)


def to_verilog(component: wiring.Component, name: str) -> str:
    """The Verilog of ``component`` as module ``name``; repeated blocks (the PEs) are one
    module per variant, named ``<name>__...`` (``hw.repeated``)."""
    netlist_check.install()  # Amaranth's cycle check dominated large arrays' generation
    with repeated.collecting(name, _convert) as modules:
        text = _convert(component, name)
    text = "".join([text, *modules])
    return _WAKE.sub(r"\1reg \2 = 0;\n\1initial #0 \2 = 1;", text)


TOPS = ("array", "lut_core", "accel")
SIMULATOR_FLAGS = {
    "icarus": [],
    "verilator": [
        "--no-timing",
        "-Wno-WIDTH",
        "-Wno-STMTDLY",
        "-Wno-CASEINCOMPLETE",
        "-Wno-ASCRANGE",
    ],
    "verilator_make_env": {"MAKEFLAGS": "CFG_CXXFLAGS_PCH_I=-include"},
    "timescale": "none in the Verilog: pass one to the simulator (e.g. 1ns/1ps)",
}


def build_top(cfg: config.AcceleratorConfig, top: str) -> wiring.Component:
    """The block ``top`` of an accelerator configuration."""
    if top not in TOPS:
        raise ValueError(f"unknown top {top!r}; known: {', '.join(TOPS)}")
    if top == "accel":
        from hw.accel import Accelerator

        return Accelerator(cfg)
    section = "lut" if top == "lut_core" else "array"
    if getattr(cfg, section) is None:
        raise config.ConfigError(
            section, f"missing: the configuration has no [{section}] for --top {top}"
        )
    if top == "lut_core":
        from hw.lut_core import LutCore

        return LutCore.from_config(cfg)
    from hw.array import SystolicArray

    return SystolicArray.from_config(cfg)


def manifest(cfg: config.AcceleratorConfig, component: wiring.Component, top: str) -> dict:
    """What a user of the Verilog needs: ports, parameters, modes, stream layouts, latency."""
    if top == "lut_core":
        return _lut_manifest(cfg, component)
    if top == "accel":
        return _accel_manifest(cfg, component)
    from sim.array_model import os_latency, ws_latency

    rows, cols = component.rows, component.cols
    bus, stages = component.datapath.bus, component.datapath.stages
    return {
        "top": top,
        "config": cfg.name,
        "clock": "clk (rising edge); rst: synchronous, active high",
        "ports": {name: {"direction": d, "width": w} for name, (d, w) in ports(component).items()},
        "parameters": {
            "rows": rows,
            "cols": cols,
            "dataflow": component.supported_dataflow,
            "acc_bits": cfg.array.acc_bits,
            "max_k": max(rows, cfg.array.max_k),
            "pipelined": component.pipelined,
        },
        "modes": [_mode_entry(i, m, rows, cols) for i, m in enumerate(component.modes)],
        "payloads": {
            "w__payload": {
                "data": f"{cols} x {bus.w_word_bits} bits, column 0 lowest",
                "mode": f"{bus.mode_bits} bits above data",
            },
            "a__payload": {
                "data": f"{rows} x {bus.a_word_bits} bits, row 0 lowest",
                "last": "1 bit above data",
            },
            **(
                {
                    "scales": f"w__payload and a__payload: {bus.scale_bits}-bit E8M0 scale per "
                    "column / row above the other fields (MX modes; see hw.array)"
                }
                if bus.scale_bits
                else {}
            ),
            "o__payload": {
                "data": f"{cols} x {bus.acc_width} bits signed, column 0 lowest",
                "invalid": f"{cols} bits above data",
            },
            "lanes": "lane l of a word holds k index lanes*i + l in bits [l*code, (l+1)*code)",
        },
        "latency": {
            "weight_stationary": f"o beat in cycle t + {ws_latency(rows, cols, stages)} for the "
            "a beat accepted in cycle t",
            "output_stationary": f"row r in cycle t_last + {os_latency(rows, cols, 0, stages)} + r",
        },
    }


def _lut_manifest(cfg: config.AcceleratorConfig, core) -> dict:
    g, rows, cols = core.group, core.tile_m, core.tile_n
    return {
        "top": "lut_core",
        "config": cfg.name,
        "clock": "clk (rising edge); rst: synchronous, active high",
        "ports": {name: {"direction": d, "width": w} for name, (d, w) in ports(core).items()},
        "parameters": {
            "group": g,
            "tile_m": rows,
            "tile_n": cols,
            "activation": core.activation.name,
            "acc_bits": core.acc_bits,
            "table_entry_bits": core.entry_bits,
        },
        "modes": [
            {
                "index": i,
                "weight": mode.fmt.name,
                "planes": mode.planes,
                "plane_coefficients": list(mode.coefficients),
                "macs_per_cycle": rows * cols * g // mode.planes,
            }
            for i, mode in enumerate(core.modes)
        ],
        "payloads": {
            "a__payload": {
                "data": f"{rows} rows x {g} codes x 8 bits, row 0 and k 0 lowest",
                "last": "1 bit above data: the tile's last group",
            },
            "w__payload": {
                "data": f"{cols} columns x {g} bits: one bit plane, bit j = k index j of the group",
                "mode": f"{core.mode_bits} bits above data",
            },
            "o__payload": {"data": f"{cols} x {core.acc_bits} bits signed, column 0 lowest"},
        },
        "latency": "row r in cycle t + 1 + r, t the cycle the tile's last w beat was accepted",
    }


def _accel_manifest(cfg: config.AcceleratorConfig, accel) -> dict:
    from hw.accel import TIMING
    from qaccel import csr
    from qaccel.isa import ErrorCode, Opcode

    g = accel.geometry
    params = {
        "DRAM data bytes per beat": g.data_bytes,
        "DRAM bytes addressable": g.dram_bytes,
        "DMA read bursts in flight": cfg.dram.read_bursts,
        "instruction bytes": g.insn_bytes,
        "scratchpad": f"{g.sp_rows} rows x {g.sp_row_bytes} bytes in "
        f"{cfg.memory.scratchpad_banks} banks (row a in bank a % banks)",
        "accumulator memory": f"{g.acc_rows} rows x {g.acc_cols} elements of "
        f"{g.acc_elem_bits} bits (DRAM: {g.acc_elem_bytes} bytes each, sign-extended; "
        f"a row padded to {g.acc_row_bytes} bytes), {cfg.memory.accumulator_banks} banks",
    }
    if g.has_array:
        params["array"] = f"{g.rows}x{g.cols}, {g.dataflow}, modes " + ", ".join(
            f"{i}: {p}" for i, p in enumerate(cfg.array.modes)
        )
        if g.pe_stages:
            cycles = "1 cycle" if g.pe_stages == 1 else f"{g.pe_stages} cycles"
            params["array"] += f"; pipelined PEs (+{cycles} of latency)"
        params["array words in a scratchpad row"] = (
            f"activations: {g.rows} x {g.bus.a_word_bits} bits; weights: "
            f"{g.cols} x {g.bus.w_word_bits} bits (row 0 / column 0 lowest)"
        )
    if g.has_lut:
        params["LUT core"] = (
            f"{g.lut_tile_m}x{g.lut_tile_n}, group {g.lut_group}, weights "
            + ", ".join(f"{i}: {w}" for i, w in enumerate(g.lut_modes))
        )
    isa = {
        op.name: [{"name": n, "lsb": f.offset, "width": f.width} for n, f in g.layout(op)]
        for op in Opcode
    }
    descriptions = {
        "NONE": "no fault",
        "ILLEGAL_OPCODE": "an opcode the ISA does not define",
        "ILLEGAL_FIELD": "a field out of range (unknown mode, bits above the fields, zero size, "
        "a GEMM longer than its accumulators hold)",
        "DRAM_RANGE": "a DMA outside DRAM or off the bus alignment",
        "SCRATCHPAD_RANGE": "rows beyond the scratchpad",
        "ACCUMULATOR_RANGE": "rows beyond the accumulator memory",
        "TOKEN": "a token channel deadlocked or held tokens at HALT",
        "NO_HALT": "PROG_LEN instructions fetched without HALT",
        "BUS": "the DRAM answered SLVERR or DECERR",
        "HAZARD": "the checker's alone: two units touch the same rows or bytes with no token "
        "between them, or a read of rows nothing wrote",
    }
    return {
        "top": "accel",
        "config": cfg.name,
        "clock": "clk (rising edge); rst: synchronous, active high",
        "ports": {name: {"direction": d, "width": w} for name, (d, w) in ports(accel).items()},
        "parameters": params,
        "isa": isa,
        "error_codes": [[int(c), c.name, descriptions[c.name]] for c in ErrorCode],
        "registers": csr.datasheet(),
        "register_offsets": dict(csr.OFFSETS),
        "timing": list(TIMING),
    }


def _mode_entry(index: int, spec, rows: int, cols: int) -> dict:
    weight, activation = spec.mx or (spec.weight.name, spec.activation.name)
    entry = {
        "index": index,
        "weight": weight,
        "activation": activation,
        "lanes": spec.lanes,
        "macs_per_cycle": spec.lanes * rows * cols,
        "acc_width": spec.acc_width,
        "acc_frac_bits": spec.frac_bits,
    }
    if spec.block:
        entry |= {"block": spec.block, "scale_range": list(spec.scale_range)}
    return entry


def generate(cfg: config.AcceleratorConfig, top: str, out_dir: Path) -> tuple[Path, Path]:
    """Write ``OUT/<top>.v``, ``OUT/<top>.json`` (the manifest) and ``OUT/<top>.md`` (the
    datasheet); return the paths of the Verilog and the manifest."""
    from hw.datasheet import datasheet, protocol

    component = build_top(cfg, top)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = to_verilog(component, top)
    verilog_path, manifest_path = out_dir / f"{top}.v", out_dir / f"{top}.json"
    verilog_path.write_text(text)
    facts = manifest(cfg, component, top)
    facts["simulators"] = SIMULATOR_FLAGS
    facts["protocol"] = protocol(facts)
    manifest_path.write_text(json.dumps(facts, indent=2) + "\n")
    (out_dir / f"{top}.md").write_text(datasheet(facts))
    return verilog_path, manifest_path
