"""`qaccel synth` for one bench configuration, as the command a reader can rerun."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# nextpnr's router1 had not routed these after 40 to 70 minutes on two cores, or (the 8x8 INT8
# both-dataflow array, since ECP5 logic maps to LUT4s only) still had about 1,500 overused
# wires after 18, or (the 4x4 W4A8 array, since its slices multiply by Booth digits) 100 to
# 300 after 30; router2 routes them.
ROUTER = {f"array8_{mode}": "router2" for mode in ("int8", "int8_os", "w4a8", "fp8")}
ROUTER["array4_w4a8"] = "router2"


def router(name: str) -> str:
    """The nextpnr router a bench configuration is routed with."""
    return ROUTER.get(name, "router1")


def command(name: str, top: str, target: str, router: str = "router1") -> list[str]:
    argv = [
        "qaccel", "synth", "--config", f"bench/configs/{name}.toml", "--top", top,
        "--target", target, "-o", f"build/bench/{name}-{target}",
    ]  # fmt: skip
    return argv if router == "router1" else [*argv[:-2], "--router", router, *argv[-2:]]


@functools.cache  # sections of one `bench/run.py` share a row's run (same command, same code)
def synth(
    name: str, top: str, targets: tuple[str, ...], router: str = "router1"
) -> tuple[str, dict | str]:
    """(target, report) on the first of ``targets`` the design fits, else (the last target
    tried, the error line the run ended with). The report gains ``synth_seconds``: the wall
    time of that target's whole ``qaccel synth`` run."""
    for target in targets:
        argv = command(name, top, target, router)
        exe = Path(sys.executable).parent / argv[0]
        start = time.perf_counter()
        done = subprocess.run(
            [str(exe), *argv[1:]], cwd=ROOT, capture_output=True, text=True, check=False
        )
        if done.returncode == 0:
            report = ROOT / "build" / "bench" / f"{name}-{target}" / "report.json"
            return target, json.loads(report.read_text()) | {
                "synth_seconds": time.perf_counter() - start
            }
        error = done.stderr.strip().splitlines()[-1].removeprefix("qaccel: error: ")
        if "does not fit" not in error:
            break
    return target, error


def manifest(name: str, top: str, target: str) -> dict:
    """The JSON manifest ``qaccel synth`` wrote beside the design's Verilog."""
    return json.loads((ROOT / "build" / "bench" / f"{name}-{target}" / f"{top}.json").read_text())
