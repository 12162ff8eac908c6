"""A run's reports: statistics (cycles, busy and stalls per unit, MAC utilization, SRAM and DRAM
traffic, energy) and a Chrome/Perfetto trace, both JSON-ready, from a ``sim.cycle.Timing``.

Definitions, stated once:

- **Cycles** count from START (cycle 1) to the run's end. A unit is *busy* from the cycle after
  it takes an instruction from its queue through the instruction's last cycle (``take + 1`` ..
  ``end`` of ``InsnTiming``), *idle* otherwise.
- **Stalls**, by cause: ``token``, the hardware's ``*_STALL`` counters (cycles in which the
  unit's queue head waits for a token; the head may wait while the unit is still busy with the
  instruction before it, so these cycles are not a subset of the idle ones); ``fetch``, idle
  cycles with an empty queue while the unit's next instruction is still to be fetched; ``bank``,
  cycles LOAD's row write or STORE's row read waits for a bank port the compute unit holds
  (``Timing.causes``, the same from both engines).
- **Useful MACs**: a GEMM multiplies an ``m`` x K block by a K x ``cols`` one, with K = ``k *
  lanes`` elements output-stationary and ``rows * lanes`` weight-stationary (``lanes``: the
  mode's sub-word lanes per PE); a LUT_GEMM, ``m`` x (``k * group``) by (``k * group``) x
  ``tile_n``. Zero padding the compiler adds to fill a tile counts as useful: the array cannot
  tell it apart. Rows an output-stationary tile computes beyond ``m`` are not counted.
- **Peak MACs per cycle**: the array, ``rows * cols * lanes`` of the instruction's mode; the LUT
  core, ``tile_m * tile_n * group / bits``: it consumes one weight bit plane a cycle, and a
  ``bits``-wide weight needs ``bits`` planes. An instruction's *full-rate cycles* are its useful
  MACs over its peak. Utilization (per mode, per compute engine, overall) is full-rate cycles
  over the run's cycles: the fraction of the run the engine would need at full rate.
- **Energy** (``qaccel.energy.energy_report``): MACs per array mode pair, the useful MACs above;
  LUT lookups, one per kept output element, weight plane and group: ``m * tile_n * k * planes``
  per LUT_GEMM; SRAM bytes, the rows each port moved times the row's width (scratchpad:
  ``sp_row_bytes``; accumulator: ``acc_cols * acc_elem_bytes``); DRAM bytes, everything read
  (instruction words included) and written.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from itertools import pairwise
from typing import NamedTuple

import numpy as np

from qaccel.energy import energy_report
from qaccel.isa import Geometry, Instruction, Opcode
from qaccel.program import Program
from sim.cycle import UNITS, Timing, run_cycles
from sim.executor import run_program
from sim.fast import run_fast

__all__ = ["ENGINES", "RunReport", "chrome_trace", "run_and_report", "stats", "summary"]

ENGINES = {"fast": run_fast, "cycle": run_cycles}
PID = 1
TID = {unit: i + 1 for i, unit in enumerate(UNITS)}


def _mode_of(program: Program, g: Geometry, insn: Instruction) -> tuple[str, str] | None:
    """(engine, mode name) of a GEMM or LUT_GEMM; None for other instructions."""
    if insn.opcode == Opcode.GEMM:
        return "array", str(program.config.array.modes[insn.fields.get("mode", 0)])
    if insn.opcode == Opcode.LUT_GEMM:
        return "lut", f"{g.lut_modes[insn.fields.get('mode', 0)]}*{g.lut_activation}"
    return None


def _macs(g: Geometry, insn: Instruction) -> tuple[int, float]:
    """(useful MACs, peak MACs per cycle) of a GEMM or LUT_GEMM."""
    f = insn.fields
    m, k, mode = f.get("m", 0), f.get("k", 0), f.get("mode", 0)
    if insn.opcode == Opcode.GEMM:
        lanes = g.array_modes[mode].lanes
        return m * k * lanes * g.cols, g.rows * g.cols * lanes
    return m * k * g.lut_group * g.lut_tile_n, (
        g.lut_tile_m * g.lut_tile_n * g.lut_group / g.lut_planes(mode)
    )


def _transfer_bytes(g: Geometry, insn: Instruction) -> int:
    """DRAM bytes a LOAD or STORE moves."""
    f = insn.fields
    return f["y_size"] * f["x_size"] * g.row_bytes(f["mem"], f["elem"])


def _units(timing: Timing, cycles: int) -> dict:
    out = {}
    for unit in UNITS:
        recs = sorted((r for r in timing.insns if r.unit == unit), key=lambda r: r.take)
        busy = sum(r.end - r.take for r in recs)
        if recs:
            # idle cycles: 1..take of the first, end+1..take between, after the last end
            before = recs[0].take
            between = sum(b.take - a.end for a, b in pairwise(recs))
            after = cycles - recs[-1].end
        else:
            before, between, after = 0, 0, cycles
        out[unit] = {
            "instructions": len(recs),
            "busy": busy,
            "idle": cycles - busy,
            "busy_fraction": busy / cycles,
            "stall": {
                "token": timing.counters[f"{unit.upper()}_STALL"],
                **timing.causes.get(unit, {}),
            },
            "idle_split": {"before_first": before, "between": between, "after_last": after},
        }
    return out


def _utilization(program: Program, g: Geometry, cycles: int) -> tuple[dict, dict]:
    """The utilization figures, and the MACs and LUT lookups for the energy counts."""
    modes: dict[tuple[str, str], dict] = {}
    pair_macs: dict[str, int] = {}
    lookups = 0
    for insn in program.body:
        key = _mode_of(program, g, insn)
        if key is None:
            continue
        useful, peak = _macs(g, insn)
        entry = modes.setdefault(
            key,
            {
                "unit": key[0],
                "mode": key[1],
                "instructions": 0,
                "useful_macs": 0,
                "peak_macs_per_cycle": peak,
                "full_rate_cycles": 0.0,
            },
        )
        entry["instructions"] += 1
        entry["useful_macs"] += useful
        if key[0] == "array":
            pair_macs[key[1]] = pair_macs.get(key[1], 0) + useful
        else:
            f = insn.fields
            lookups += f["m"] * g.lut_tile_n * f["k"] * g.lut_planes(f["mode"])
    per_engine = {}
    for e in modes.values():
        e["full_rate_cycles"] = e["useful_macs"] / e["peak_macs_per_cycle"]
        e["utilization"] = e["full_rate_cycles"] / cycles
        agg = per_engine.setdefault(e["unit"], {"useful_macs": 0, "full_rate_cycles": 0.0})
        agg["useful_macs"] += e["useful_macs"]
        agg["full_rate_cycles"] += e["full_rate_cycles"]
    for agg in per_engine.values():
        agg["utilization"] = agg["full_rate_cycles"] / cycles
    full = sum(e["full_rate_cycles"] for e in modes.values())
    util = {
        "overall": full / cycles,
        "array": per_engine.get("array"),
        "lut": per_engine.get("lut"),
        "modes": list(modes.values()),
    }
    return util, {"macs": pair_macs, "lut_lookups": lookups}


def _sram(g: Geometry, timing: Timing) -> dict:
    widths = {"scratchpad": g.sp_row_bytes, "accumulator": g.acc_cols * g.acc_elem_bytes}
    out = {}
    for mem, prefix in (("scratchpad", "sp"), ("accumulator", "acc")):
        reads, writes = timing.sram[f"{prefix}_read"], timing.sram[f"{prefix}_write"]
        out[mem] = {
            "row_bytes": widths[mem],
            "read_rows": list(reads),
            "write_rows": list(writes),
            "read_bytes": sum(reads) * widths[mem],
            "write_bytes": sum(writes) * widths[mem],
        }
    out["read_bytes"] = sum(out[m]["read_bytes"] for m in widths)
    out["write_bytes"] = sum(out[m]["write_bytes"] for m in widths)
    return out


def stats(
    program: Program,
    timing: Timing,
    counters: dict | None = None,
    *,
    engine: str | None = None,
    wall_s: float | None = None,
) -> dict:
    """The statistics of a run of ``program`` with ``timing`` (the module docstring defines
    every figure), JSON-ready. ``counters``: the executor's timing-free counters, merged into
    ``"counters"`` with the timed ones; without them INSNS and the DRAM byte counters are
    derived from the instructions and SATURATIONS and INVALID are absent (they need data).
    ``engine`` and ``wall_s`` (the timing engine's wall-clock seconds) are recorded if given."""
    cfg, g = program.config, program.geometry
    cycles = timing.counters["CYCLES"]
    body = program.body
    load_bytes = sum(_transfer_bytes(g, i) for i in body if i.opcode == Opcode.LOAD)
    if counters is None:
        counters = {
            "INSNS": len(body),
            "DRAM_READ_BYTES": load_bytes,
            "DRAM_WRITE_BYTES": timing.dram_write_bytes,
        }
    util, compute_counts = _utilization(program, g, cycles)
    sram = _sram(g, timing)
    counts = {
        **compute_counts,
        "sram_read_bytes": sram["read_bytes"],
        "sram_write_bytes": sram["write_bytes"],
        "dram_bytes": timing.dram_read_bytes + timing.dram_write_bytes,
    }
    energy = energy_report(cfg, counts)
    run = {}
    if engine is not None:
        run["name"] = engine
    if wall_s is not None:
        run["wall_s"] = wall_s
    return {
        "engine": run,
        "config": cfg.name,
        "clock_mhz": cfg.clock_mhz,
        "cycles": cycles,
        "time_us": cycles / cfg.clock_mhz,
        "instructions": dict(Counter(i.opcode.name for i in body)),
        "units": _units(timing, cycles),
        "utilization": util,
        "sram": sram,
        "dram": {
            "read_bytes": timing.dram_read_bytes,
            "write_bytes": timing.dram_write_bytes,
            "load_bytes": load_bytes,
            "fetch_bytes": timing.dram_read_bytes - load_bytes,
        },
        "energy": {
            "counts": counts,
            "pj": energy,
            "total_uj": energy["total"] * 1e-6,
            # pJ per cycle times cycles per µs is µW
            "average_power_mw": energy["total"] / cycles * cfg.clock_mhz * 1e-3,
        },
        "counters": {k: int(v) for k, v in {**timing.counters, **counters}.items()},
    }


def _meta(tid: int, kind: str, **args) -> dict:
    return {"ph": "M", "pid": PID, "tid": tid, "name": kind, "args": args}


def _counter(name: str, ts: float, **series) -> dict:
    return {"ph": "C", "pid": PID, "tid": 0, "name": name, "ts": ts, "args": series}


def chrome_trace(program: Program, timing: Timing) -> dict:
    """A Chrome/Perfetto trace (JSON object format) of the run: one track per unit with a
    complete ("X") event per instruction over its busy cycles, and counter ("C") tracks of the
    busy units and of the DRAM bytes of finished LOADs and STOREs. Times are microseconds of
    simulated time at the configured clock (cycle c starts at (c - 1) / clock_mhz); every event's
    args hold its cycle numbers."""
    cfg, g = program.config, program.geometry
    mhz = cfg.clock_mhz
    body = program.body
    events = [_meta(0, "process_name", name="accelerator")]
    for unit, tid in TID.items():
        events += [
            _meta(tid, "thread_name", name=unit),
            _meta(tid, "thread_sort_index", sort_index=tid),
        ]
    busy_delta: Counter[int] = Counter()
    moved: list[tuple[int, str, int]] = []  # (end cycle, "read"|"write", bytes)
    for rec in sorted(timing.insns, key=lambda r: (r.take, TID[r.unit])):
        insn = body[rec.index]
        fields = {k: v for k, v in insn.to_dict().items() if k != "op"}
        events.append(
            {
                "ph": "X",
                "pid": PID,
                "tid": TID[rec.unit],
                "name": rec.opcode,
                "ts": rec.take / mhz,
                "dur": (rec.end - rec.take) / mhz,
                "args": {"index": rec.index, **fields, "take": rec.take, "end": rec.end},
            }
        )
        busy_delta[rec.take] += 1
        busy_delta[rec.end] -= 1
        if insn.opcode in (Opcode.LOAD, Opcode.STORE):
            way = "read" if insn.opcode == Opcode.LOAD else "write"
            moved.append((rec.end, way, _transfer_bytes(g, insn)))
    # both counter tracks start from zero at START
    events += [_counter("busy units", 0.0, busy=0)]
    events += [_counter("DRAM bytes (LOAD/STORE done)", 0.0, read=0, write=0)]
    busy = 0
    for cycle in sorted(busy_delta):
        busy += busy_delta[cycle]
        events.append(_counter("busy units", cycle / mhz, busy=busy))
    totals = {"read": 0, "write": 0}
    for cycle, way, n in sorted(moved):
        totals[way] += n
        events.append(_counter("DRAM bytes (LOAD/STORE done)", cycle / mhz, **totals))
    return {
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": {"config": cfg.name, "clock_mhz": mhz, "cycles": timing.counters["CYCLES"]},
    }


class RunReport(NamedTuple):
    """What ``run_and_report`` returns: the outputs (empty when timing only), the statistics
    and the trace (None unless asked for)."""

    outputs: dict[str, np.ndarray]
    stats: dict
    trace: dict | None


def run_and_report(
    program: Program,
    inputs: dict | None = None,
    *,
    engine: str = "fast",
    trace: bool = False,
    timing_only: bool = False,
    status: Callable[[str], None] | None = None,
) -> RunReport:
    """Run ``program``: the functional executor on ``inputs`` (skipped, and ``inputs`` unused,
    with ``timing_only``), then the timing engine ``engine`` ("fast" or "cycle"; both give the
    same timing). ``status`` is told each phase. Returns the outputs, ``stats`` (with the
    engine's name, its wall seconds and the executor's under ``"engine"``) and, with ``trace``,
    ``chrome_trace``."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    say = status or (lambda text: None)
    outputs, counters, executor_s = {}, None, None
    if not timing_only:
        say("the functional executor")
        start = time.perf_counter()
        result = run_program(program, inputs or {})
        executor_s = time.perf_counter() - start
        outputs, counters = result.outputs, result.counters
    say(f"the {engine} timing engine")
    start = time.perf_counter()
    timing = ENGINES[engine](program)
    wall = time.perf_counter() - start
    say("the reports")
    report = stats(program, timing, counters, engine=engine, wall_s=wall)
    report["engine"]["executor_wall_s"] = executor_s
    return RunReport(outputs, report, chrome_trace(program, timing) if trace else None)


def summary(report: dict) -> list[tuple[str, str]]:
    """A few (figure, value) rows of a ``stats`` report for a terminal."""
    c = report["counters"]
    util = report["utilization"]
    parts = [f"{m['unit']} {m['mode']} {m['utilization']:.1%}" for m in util["modes"]]
    e = report["energy"]
    pj = e["pj"]
    share = ", ".join(f"{k} {pj[k] / pj['total']:.1%}" for k in ("compute", "sram", "dram"))
    rows = [
        ("CYCLES", f"{c['CYCLES']} ({report['time_us']:.6g} µs at {report['clock_mhz']:g} MHz)"),
        ("MAC utilization", f"{util['overall']:.1%}" + (f" ({'; '.join(parts)})" if parts else "")),
        ("DRAM_READ_BYTES", f"{c['DRAM_READ_BYTES']} (+{report['dram']['fetch_bytes']} fetch)"),
        ("DRAM_WRITE_BYTES", str(c["DRAM_WRITE_BYTES"])),
        ("energy", f"{e['total_uj']:.6g} µJ ({share})"),
        ("average power", f"{e['average_power_mw']:.6g} mW"),
    ]
    rows += [(k, str(c[k])) for k in ("SATURATIONS", "INVALID") if k in c]
    return rows
