"""How long ``qaccel generate`` takes for the 16x16 array of ``configs/edge.toml``, side by
side in one run: as it writes it (one module per PE variant, ``hw/repeated.py``; the cycle
check of ``hw/netlist_check.py``), and with every PE its own module, with that check and with
Amaranth's own. Goal (issue 13): under 30 s."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from amaranth.hdl import _nir

from hw import generate, netlist_check
from qaccel import config

TITLE = "Verilog generation of the 16x16 edge array"
ROOT = Path(__file__).resolve().parent.parent


def _generate(check, once: bool, top: str = "array") -> tuple[float, int]:
    """Seconds to build ``top`` and write its Verilog, and the Verilog's size in bytes;
    ``check``: the netlist's combinational-cycle check; ``once``: PEs written once per variant
    (``hw.generate.to_verilog``), else every PE elaborated and written on its own."""
    cfg = config.load_config(ROOT / "configs" / "edge.toml")
    netlist_check.install()
    previous = _nir.Netlist.check_comb_cycles
    _nir.Netlist.check_comb_cycles = check
    install = netlist_check.install
    netlist_check.install = lambda: None  # keep ``check`` for this run
    try:
        start = time.perf_counter()
        block = generate.build_top(cfg, top)
        text = generate.to_verilog(block, top) if once else generate._convert(block, top)
        return time.perf_counter() - start, len(text)
    finally:
        _nir.Netlist.check_comb_cycles = previous
        netlist_check.install = install


def run() -> str:
    ours = netlist_check.check_comb_cycles
    rows = [
        ("one module per PE variant (what `qaccel generate` writes)", "array", ours, True),
        ("every PE its own module", "array", ours, False),
        ("every PE its own module, Amaranth 0.5's own cycle check", "array", None, False),
        ("the whole accelerator (`--top accel`), one module per PE variant", "accel", ours, True),
    ]
    table = ["| Verilog | seconds | MB |", "|---|---|---|"]
    for label, top, check, once in rows:
        seconds, size = _generate(check or netlist_check._UPSTREAM, once, top)
        figure = f"**{seconds:.1f}**" if once and top == "array" else f"{seconds:.1f}"
        table.append(f"| {label} | {figure} | {size / 1e6:.1f} |")
    return "\n".join(
        [
            f"## {TITLE}",
            "",
            "`python bench/run.py generate_speed` (`configs/edge.toml`, top `array` unless "
            f"named; {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
            "goal: under 30 s):",
            "",
            *table,
            "",
            "Amaranth elaborates and writes every submodule on its own; the array's 256 PEs are "
            "a handful of distinct blocks (the top row starts the drain token; weight-stationary-"
            "only rows differ in the width of their exact column sum), so `hw/repeated.py` writes "
            "each once and instances it (the RTL tests run this Verilog). Amaranth's cycle check "
            "walks every combinational edge; an arithmetic cell's output bits each read all its "
            "input bits, so a W-bit multiplier alone is W x W edges. Ours explores one output "
            "bit of such a cell and knows the others from it (`hw/netlist_check.py` says why that "
            "is sound; `tests/test_netlist_check.py` finds every cycle Amaranth finds).",
            "",
        ]
    )


if __name__ == "__main__":
    print(run())
