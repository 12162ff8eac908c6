"""Time a SCALE-Sim topology on a configuration, layer by layer: each layer's GEMM lowered with
``compiler.gemm.lower_gemm`` and timed with ``sim.fast.run_fast`` (timing only, no data).

Each layer is ``Y = X @ W`` with M = ``layer.m``, K = ``layer.k``, N = ``layer.n`` (a conv layer
by im2col, its stride already in M; ``compiler.topology``), zero weights and no epilogue: ``y``
holds the raw accumulators, as ``lower_gemm`` writes them without one.

What each :class:`LayerResult` reports:

- **ideal cycles**: ceil(MACs / peak), peak = rows x cols x the mode's lanes MACs a cycle on
  the array; on the LUT core, tile_m x tile_n cells each covering a group of K per weight bit
  plane, i.e. tile_m x tile_n x group / planes. **utilization** = ideal / cycles.
- **DRAM bytes** read and written, everything the run moves: the instruction fetch, ``x``, the
  weights, ``y``.
- **energy** (µJ) from ``qaccel.energy.energy_report``: the layer's (dense) MACs at the mode's
  pJ (LUT core: its lookups, one per cell, group and plane), the DRAM bytes, and every SRAM row
  access the run counts (``Timing.sram``) as a full row: scratchpad rows of ``sp_row_bytes``,
  accumulator rows of ``acc_cols x acc_elem_bytes``. No static power.
- **bound**: ``"dram"`` when the busier AXI channel (reads and writes each carry
  ``dram.bytes_per_cycle`` a cycle) moves data in at least 90% of the layer's cycles; else
  ``"compute"``, ``"load"`` or ``"store"`` when that unit is busy at least 90% of the cycles
  (``"load"`` without ``"dram"``: its time goes to DRAM latency more than to data); else
  ``"other"`` (the units wait on each other and on the instruction fetch).

Layers with the same (M, K, N) are lowered and timed once and share one ``Timing``.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np

from compiler.gemm import lower_gemm
from compiler.topology import Layer
from qaccel import formats
from qaccel.config import AcceleratorConfig
from qaccel.energy import energy_report
from qaccel.isa import Geometry
from qaccel.program import ProgramError
from sim.cycle import Timing
from sim.fast import run_fast

__all__ = [
    "CSV_COLUMNS",
    "LayerResult",
    "format_table",
    "simulate_topology",
    "write_layers_csv",
]

CSV_COLUMNS = (
    "layer",
    "M",
    "K",
    "N",
    "MACs",
    "cycles",
    "ideal_cycles",
    "utilization",
    "dram_read_bytes",
    "dram_write_bytes",
    "energy_uJ",
    "bound",
)
BOUND_SHARE = 0.9
MX_SCALE_ONE = 127  # the E8M0 code of 2**0


@dataclass(frozen=True)
class LayerResult:
    """One layer's timing on a configuration (module docstring: what each figure counts)."""

    name: str
    m: int
    k: int
    n: int
    macs: int
    cycles: int
    ideal_cycles: int
    dram_read_bytes: int
    dram_write_bytes: int
    energy_uj: float
    bound: str
    unit: str
    mode: str
    dataflow: str
    timing: Timing = field(repr=False, compare=False)  # shared by layers of the same shape

    @property
    def utilization(self) -> float:
        return self.ideal_cycles / self.cycles


def _default_mode(cfg: AcceleratorConfig) -> str:
    if cfg.array is not None and cfg.array.modes:
        return str(cfg.array.modes[0])
    g = Geometry.of(cfg)
    if not g.lut_modes:
        raise ValueError(f"configuration {cfg.name!r} has neither an array nor a LUT core")
    return f"{g.lut_modes[0]}*{g.lut_activation}"


def _mx_block(g: Geometry, mode: str) -> int:
    """The MX block size of array mode ``mode`` (0: not an MX mode, or not an array mode)."""
    for spec in g.array_modes:
        if spec.name == mode:
            return spec.block
    return 0


def _weights(k: int, n: int, block: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Zero weight codes (the timing does not depend on the codes, and 0 is one in every
    format) and, for MX modes, unit scales."""
    scales = np.full((-(-k // block), n), MX_SCALE_ONE, dtype=np.int64) if block else None
    return np.zeros((k, n), dtype=np.int64), scales


def ideal_cycles(g: Geometry, unit: str, mode: str, macs: int) -> int:
    """ceil(MACs / peak MACs a cycle), in integers (the LUT core's peak is a fraction)."""
    if unit == "lut":
        planes = g.lut_planes(g.lut_modes.index(mode.partition("*")[0]))
        return -(-macs * planes // (g.lut_tile_m * g.lut_tile_n * g.lut_group))
    lanes = next(s.lanes for s in g.array_modes if s.name == mode)
    return -(-macs // (g.rows * g.cols * lanes))


def energy_uj(cfg, g: Geometry, unit: str, mode: str, m: int, k: int, n: int, t: Timing) -> float:
    sp_bytes, acc_bytes = g.sp_row_bytes, g.acc_cols * g.acc_elem_bytes
    counts = {
        "sram_read_bytes": sum(t.sram["sp_read"]) * sp_bytes + sum(t.sram["acc_read"]) * acc_bytes,
        "sram_write_bytes": sum(t.sram["sp_write"]) * sp_bytes
        + sum(t.sram["acc_write"]) * acc_bytes,
        "dram_bytes": t.dram_read_bytes + t.dram_write_bytes,
    }
    if unit == "lut":
        planes = formats.get_format(mode.partition("*")[0]).bits
        counts["lut_lookups"] = m * n * -(-k // g.lut_group) * planes
    else:
        counts["macs"] = {mode: m * k * n}
    return energy_report(cfg, counts)["total"] / 1e6


def _bound(g: Geometry, t: Timing) -> str:
    cycles = t.counters["CYCLES"]
    beats = max(t.dram_read_bytes, t.dram_write_bytes) / g.data_bytes
    if beats >= BOUND_SHARE * cycles:
        return "dram"
    busy = {u: t.counters[f"{u.upper()}_BUSY"] for u in ("compute", "load", "store")}
    unit = max(busy, key=busy.get)
    return unit if busy[unit] >= BOUND_SHARE * cycles else "other"


def _time_shape(job) -> tuple[str, Timing]:
    """Lower one layer shape and time it: (the unit it runs on, its Timing)."""
    cfg, (m, k, n), name, mode, dataflow, block = job
    weights, scales = _weights(k, n, block)
    try:
        program = lower_gemm(
            cfg, weights, m=m, mode=mode, dataflow=dataflow, w_scales=scales, name=name
        )
    except ProgramError as e:
        raise ProgramError(f"layer {name!r} (M={m}, K={k}, N={n}): {e}", e.code) from e
    return program.notes["gemm"]["unit"], run_fast(program, check=False)


def simulate_topology(
    cfg: AcceleratorConfig,
    layers: Iterable[Layer],
    *,
    dataflow: str | None = None,
    mode: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    workers: int | None = None,
) -> list[LayerResult]:
    """Each layer of ``layers`` (``compiler.topology``) lowered and timed on ``cfg``.

    ``mode``: ``"weight*activation"``, default the array's first mode (the LUT core's first
    weight format when there is no array). ``dataflow``: ``"ws"`` or ``"os"``, default the
    array's; an array that runs both runs weight-stationary, SCALE-Sim's usual choice (MX modes,
    output-stationary only, run ``"os"``). ``progress(done, total, layer_name)`` is called as
    each distinct layer shape is timed (``layer_name``: the first layer of that shape). A layer
    that cannot be lowered raises ``ProgramError`` naming it. Distinct shapes are timed in
    ``workers`` processes (default: one per CPU; 1: in this one).
    """
    layers = list(layers)
    g = Geometry.of(cfg)
    mode = mode or _default_mode(cfg)
    block = _mx_block(g, mode)
    if dataflow is None and g.has_array:
        dataflow = "os" if g.dataflow == "os" or (g.dataflow == "both" and block) else "ws"
    cache: dict[tuple[int, int, int], tuple[str, Timing]] = {}
    shapes = {}  # each distinct shape, with the first layer that has it
    for layer in layers:
        shapes.setdefault((layer.m, layer.k, layer.n), layer.name)
    jobs = [(cfg, shape, name, mode, dataflow, block) for shape, name in shapes.items()]
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    if workers > 1:
        # the biggest shapes first, so that no worker is left with a long one at the end
        jobs.sort(key=lambda job: -job[1][0] * job[1][1] * job[1][2])
        context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
        failed: dict[tuple, ProgramError] = {}
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = {pool.submit(_time_shape, job): job for job in jobs}
            for done, future in enumerate(as_completed(futures), 1):
                job = futures[future]
                try:
                    cache[job[1]] = future.result()
                except ProgramError as e:
                    failed[job[1]] = e
                if progress is not None:
                    progress(done, len(jobs), job[2])
        if failed:  # the first layer in order that cannot be lowered, as without workers
            raise next(failed[s] for s in shapes if s in failed)
    else:
        for done, job in enumerate(jobs, 1):
            cache[job[1]] = _time_shape(job)
            if progress is not None:
                progress(done, len(jobs), job[2])
    results = []
    for layer in layers:
        m, k, n = layer.m, layer.k, layer.n
        unit, timing = cache[m, k, n]
        cycles = timing.counters["CYCLES"]
        results.append(
            LayerResult(
                name=layer.name,
                m=m,
                k=k,
                n=n,
                macs=layer.macs,
                cycles=cycles,
                ideal_cycles=ideal_cycles(g, unit, mode, layer.macs),
                dram_read_bytes=timing.dram_read_bytes,
                dram_write_bytes=timing.dram_write_bytes,
                energy_uj=energy_uj(cfg, g, unit, mode, m, k, n, timing),
                bound=_bound(g, timing),
                unit=unit,
                mode=mode,
                dataflow=dataflow if unit == "array" else "-",
                timing=timing,
            )
        )
    return results


def _row(r: LayerResult) -> list:
    return [
        r.name,
        r.m,
        r.k,
        r.n,
        r.macs,
        r.cycles,
        r.ideal_cycles,
        f"{r.utilization:.4f}",
        r.dram_read_bytes,
        r.dram_write_bytes,
        f"{r.energy_uj:.6f}",
        r.bound,
    ]


def write_layers_csv(results: Iterable[LayerResult], path: str | os.PathLike) -> None:
    """Write one row per layer to the CSV file ``path`` (``CSV_COLUMNS`` as its header)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(_row(r) for r in results)


def format_table(results: Iterable[LayerResult]) -> str:
    """A plain text table of the layers, one a line, and a total line (its utilization: total
    ideal cycles over total cycles)."""
    results = list(results)
    head = ["layer", "M", "K", "N", "MACs", "cycles", "ideal", "util", "DRAM rd", "DRAM wr"]
    head += ["energy uJ", "bound"]

    def line(name, shape, macs, cycles, ideal, read, write, energy, bound):
        util = f"{ideal / cycles:.1%}" if cycles else ""
        return [name, *shape, macs, cycles, ideal, util, read, write, f"{energy:.2f}", bound]

    rows = [
        line(
            r.name,
            (r.m, r.k, r.n),
            r.macs,
            r.cycles,
            r.ideal_cycles,
            r.dram_read_bytes,
            r.dram_write_bytes,
            r.energy_uj,
            r.bound,
        )
        for r in results
    ]
    keys = ("macs", "cycles", "ideal_cycles", "dram_read_bytes", "dram_write_bytes", "energy_uj")
    total = [sum(getattr(r, key) for r in results) for key in keys]
    rows.append(line("total", ("", "", ""), *total, ""))
    cells = [head] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    rule = "  ".join("-" * w for w in widths)
    out = []
    for row in cells:
        # names and bounds read left to right, numbers line up on the right
        parts = [
            c.ljust(w) if j in (0, len(head) - 1) else c.rjust(w)
            for j, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  ".join(parts).rstrip())
    return "\n".join([out[0], rule, *out[1:-1], rule, out[-1]])
