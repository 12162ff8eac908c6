"""How long ``qaccel generate`` takes for the 16x16 array of ``configs/edge.toml``: the
Verilog with Amaranth's own combinational-cycle check and with ``hw.netlist_check``'s, side
by side in one run (the Verilog must be the same). Goal (issue 13): under 30 s."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from amaranth.hdl import _nir

from hw import netlist_check
from hw.generate import build_top
from qaccel import config

TITLE = "Verilog generation of the 16x16 edge array"
ROOT = Path(__file__).resolve().parent.parent


def _generate(check) -> tuple[float, str]:
    """Seconds to build the array and convert it to Verilog (as ``hw.generate.to_verilog``
    does) with ``check`` as the netlist's cycle check, and the Verilog."""
    from amaranth.back import verilog
    from amaranth.hdl import Signal

    cfg = config.load_config(ROOT / "configs" / "edge.toml")
    previous = _nir.Netlist.check_comb_cycles
    _nir.Netlist.check_comb_cycles = check
    try:
        start = time.perf_counter()
        top = build_top(cfg, "array")
        values = [
            v.as_value() if hasattr(v, "as_value") else v for *_, v in top.signature.flatten(top)
        ]
        ports = [v for v in values if isinstance(v, Signal)]
        text = verilog.convert(top, name="array", ports=ports, emit_src=False)
        return time.perf_counter() - start, text
    finally:
        _nir.Netlist.check_comb_cycles = previous


def run() -> str:
    theirs_s, theirs = _generate(netlist_check._UPSTREAM)
    ours_s, ours = _generate(netlist_check.check_comb_cycles)
    same = "the same" if ours == theirs else "DIFFERENT"
    return "\n".join(
        [
            f"## {TITLE}",
            "",
            "`python bench/run.py generate_speed` (`configs/edge.toml`, top `array`, "
            f"{len(ours) / 1e6:.1f} MB of Verilog; {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores):",
            "",
            "| combinational-cycle check | elaborate + Verilog |",
            "|---|---|",
            f"| Amaranth 0.5's own | {theirs_s:.0f} s |",
            f"| `hw/netlist_check.py` (goal: under 30 s) | **{ours_s:.0f} s** |",
            "",
            f"The two Verilog texts are {same}. Amaranth's check walks every combinational "
            "edge; an arithmetic cell's output bits each read all its input bits, so a W-bit "
            "multiplier alone is W x W edges, and the 16x16 array has over a billion. Ours "
            "explores one output bit of such a cell and knows the others from it "
            "(`hw/netlist_check.py` says why that is sound; `tests/test_netlist_check.py` finds "
            "every cycle Amaranth finds). The rest of the time is Amaranth building the netlist "
            "of a design this size.",
            "",
        ]
    )


if __name__ == "__main__":
    print(run())
