"""hw.netlist_check: the faster combinational-cycle check finds every cycle Amaranth's own
does (through arithmetic, bitwise and mux cells, and signals), names the path the same way,
and accepts what it accepts."""

from __future__ import annotations

import pytest
from amaranth.back import rtlil
from amaranth.hdl import CombinationalCycle, Module, Mux, Signal, _nir

from hw import netlist_check

# Amaranth's own check, whether or not this process has installed ours already
UPSTREAM = getattr(netlist_check, "_UPSTREAM", _nir.Netlist.check_comb_cycles)


def _convert(m: Module, ports) -> None:
    rtlil.convert(m, ports=ports)


def _cycles():
    """Modules with a cycle: through an adder (every output bit reads every input bit), a
    bitwise and, a mux, a multiplier's one bit, and a wide loop closed on one bit."""
    for kind in ("add", "and", "mux", "mul_bit", "wide"):
        m = Module()
        a, b, c = Signal(8), Signal(8), Signal(8)
        if kind == "add":
            m.d.comb += [a.eq(b + c), b.eq(a + 1)]
        elif kind == "and":
            m.d.comb += [a.eq(b & c), b.eq(a | 3)]
        elif kind == "mux":
            m.d.comb += [a.eq(Mux(c[0], b, 5)), b.eq(a ^ c)]
        elif kind == "mul_bit":
            m.d.comb += [a.eq(b * c), b[3].eq(a[7])]
        else:
            m.d.comb += [a.eq((b << c[:3]) + c), b.eq(Mux(a[5], c, 0))]
        yield kind, m, [c]


@pytest.mark.parametrize(("kind", "module", "ports"), list(_cycles()))
def test_every_cycle_is_found_as_amaranth_finds_it(kind, module, ports, monkeypatch):
    monkeypatch.setattr(_nir.Netlist, "check_comb_cycles", UPSTREAM)  # even once installed
    with pytest.raises(CombinationalCycle) as theirs:
        _convert(module, ports)
    monkeypatch.setattr(_nir.Netlist, "check_comb_cycles", netlist_check.check_comb_cycles)
    with pytest.raises(CombinationalCycle) as ours:
        _convert(module, ports)
    assert str(ours.value) == str(theirs.value), kind


def test_designs_without_cycles_pass(monkeypatch):
    """A chain of wide arithmetic sharing inputs (the case the shortcut serves), and the
    tiny array, pass both checks."""
    from hw.generate import build_top, to_verilog
    from qaccel import config

    m = Module()
    a, b = Signal(16), Signal(16)
    c, d, e = Signal(32), Signal(32), Signal(32)
    m.d.comb += [c.eq(a * b), d.eq(c + (a << b[:4])), e.eq(Mux(d[0], c, d) ^ c)]
    tiny = build_top(config.load_config("configs/tiny.toml"), "array")
    monkeypatch.setattr(_nir.Netlist, "check_comb_cycles", netlist_check.check_comb_cycles)
    _convert(m, [a, b, e])
    assert "module array" in to_verilog(tiny, "array")


def test_installed_for_the_pinned_amaranth():
    import amaranth

    netlist_check.install()
    try:
        if amaranth.__version__.startswith("0.5."):
            assert _nir.Netlist.check_comb_cycles is netlist_check.check_comb_cycles
    finally:
        _nir.Netlist.check_comb_cycles = UPSTREAM
