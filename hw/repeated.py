"""Repeated blocks written once: while ``hw.generate.to_verilog`` converts a design, a block
built many times over (the array's PEs) becomes one Verilog module per variant, and each copy
an instance of it.

Amaranth elaborates and emits every copy of a submodule on its own; for the 256 PEs of a
16x16 array that was most of ``qaccel generate``'s time and of its Verilog. Outside a
conversion (amaranth.sim, the benches' netlists) ``once`` returns the block itself, so the
simulated design and the written one are the same hardware; the RTL tests run the latter.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Callable, Hashable, Iterator

from amaranth.hdl import ClockSignal, Elaboratable, Instance, ResetSignal, Signal
from amaranth.lib import wiring

__all__ = ["collecting", "once"]


class _Collector:
    def __init__(self, prefix: str, convert: Callable[[wiring.Component, str], str]):
        self.prefix, self.convert = prefix, convert
        self.modules: dict[Hashable, tuple[str, str]] = {}  # key -> (module name, Verilog)


_ACTIVE: contextvars.ContextVar[_Collector | None] = contextvars.ContextVar(
    "qaccel_repeated", default=None
)


@contextlib.contextmanager
def collecting(prefix: str, convert: Callable[[wiring.Component, str], str]) -> Iterator[list[str]]:
    """Within the block, ``once`` writes each variant with ``convert(block, module name)`` as a
    module named ``<prefix>__<name>``; the list given holds their texts once the block ends."""
    texts: list[str] = []
    collector = _Collector(prefix, convert)
    token = _ACTIVE.set(collector)
    try:
        yield texts
    finally:
        _ACTIVE.reset(token)
        texts.extend(text for _, text in collector.modules.values())


def _port_signals(component: wiring.Component) -> list[tuple[str, Signal]]:
    """(direction "i" | "o", Signal) for every port of ``component``, as the Verilog names it."""
    result = []
    for _, member, value in component.signature.flatten(component):
        value = value.as_value() if hasattr(value, "as_value") else value
        if isinstance(value, Signal):
            result.append(("i" if member.flow == wiring.In else "o", value))
    return result


def once(component: wiring.Component, key: Hashable, name: str) -> Elaboratable:
    """``component``, or, inside ``collecting``, an instance of the module written for ``key``
    (blocks with equal keys must be the same hardware; ``name``: the module's name suffix)."""
    collector = _ACTIVE.get()
    if collector is None:
        return component
    component._MustUse__used = True  # stands in for its module: not an unused Elaboratable
    if key not in collector.modules:
        module = f"{collector.prefix}__{name}"
        token = _ACTIVE.set(None)
        try:
            text = collector.convert(component, module)
        finally:
            _ACTIVE.reset(token)
        collector.modules[key] = (module, text)
    module, text = collector.modules[key]
    header = re.search(rf"^module {re.escape(module)}\((.*?)\);", text, re.M | re.S)
    declared = set(re.findall(r"\w+", header.group(1))) if header else set()
    ports = {}
    if "clk" in declared:
        ports["i_clk"] = ClockSignal()
    if "rst" in declared:
        ports["i_rst"] = ResetSignal()
    for direction, signal in _port_signals(component):
        ports[f"{direction}_{signal.name}"] = signal
    return Instance(module, **ports)
