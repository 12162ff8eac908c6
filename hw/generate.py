"""Verilog from any block: ports named after its signature (``a__payload``, ``o__valid``)."""

from __future__ import annotations

from amaranth.back import verilog
from amaranth.hdl import Signal
from amaranth.lib import wiring

__all__ = ["ports", "to_verilog"]


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


def to_verilog(component: wiring.Component, name: str) -> str:
    signals = [
        v.as_value() if hasattr(v, "as_value") else v
        for _, _, v in component.signature.flatten(component)
    ]
    return verilog.convert(
        component,
        name=name,
        ports=[s for s in signals if isinstance(s, Signal)],
        emit_src=False,
    )
