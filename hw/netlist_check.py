"""A faster combinational-cycle check for Amaranth 0.5's netlist, installed before Verilog is
generated.

Amaranth checks every netlist for combinational cycles by a depth-first search over each output
bit's combinational inputs. An arithmetic operator's output bits each read every input bit,
so for a W-bit multiplier or shifter the search enumerates W x W edges, most of them to nets
already checked: for the 16x16 edge array that is over a billion edge visits and nearly all
of ``qaccel generate``'s time. The search here is the same, except that once one output bit
of such a cell (every bit reading the same inputs) has been explored without finding a cycle,
its other bits are known to be free of cycles too: their inputs are the same, all explored,
and none of them leads back into the cell (that path would have been found from the first
bit). Cycles are still found and reported as Amaranth reports them.
"""

from __future__ import annotations

import amaranth
from amaranth.hdl import _ast, _nir

__all__ = ["check_comb_cycles", "install"]

_UPSTREAM = _nir.Netlist.check_comb_cycles  # Amaranth's own, for comparison in the tests

_BIT_BY_BIT = ("~", "&", "|", "^", "m")  # operators whose output bit i reads input bits i


def _every_bit_reads_every_input(cell) -> bool:
    if isinstance(cell, _nir.Operator):
        return cell.operator not in _BIT_BY_BIT
    return isinstance(cell, _nir.Part)


def _message(path) -> str:
    lines = ["Combinational cycle detected, path:\n"]
    for obj, bit, src_loc in reversed(path):
        if isinstance(obj, _ast.Signal):
            obj = f"signal {obj.name}"
        elif isinstance(obj, _nir.Operator):
            obj = f"operator {obj.operator}"
        else:
            obj = f"cell {obj.__class__.__qualname__}"
        where = "<unknown>:0" if src_loc is None else f"{src_loc[0]}:{src_loc[1]}"
        lines.append(f"  {where}: {obj} bit {bit}\n")
    return "".join(lines)


def check_comb_cycles(netlist) -> None:
    """Raise ``amaranth.hdl.CombinationalCycle`` if ``netlist`` has a combinational cycle."""
    checked, busy, clean_cells = set(), set(), set()

    class Cycle:
        def __init__(self, start):
            self.start, self.path = start, []

    def traverse(net):
        if net in checked:
            return None
        if net in busy:
            return Cycle(net)
        cycle = None
        if not net.is_const and not net.is_late and net.cell in clean_cells:
            checked.add(net)  # a sibling bit read the same inputs, all free of cycles
            return None
        busy.add(net)
        if net.is_const:
            pass
        elif net.is_late:
            cycle = traverse(netlist.connections[net])
            if cycle is not None:
                sig, bit = netlist.late_to_signal[net]
                cycle.path.append((sig, bit, sig.src_loc))
        else:
            cell = netlist.cells[net.cell]
            for src, src_loc in cell.comb_edges_to(net.bit):
                cycle = traverse(src)
                if cycle is not None:
                    cycle.path.append((cell, net.bit, src_loc))
                    break
            if cycle is None and _every_bit_reads_every_input(cell):
                clean_cells.add(net.cell)
        if cycle is not None and cycle.start == net:
            raise _nir.CombinationalCycle(_message(cycle.path))
        busy.remove(net)
        checked.add(net)
        return cycle

    for cell_idx, cell in enumerate(netlist.cells):
        for net in cell.output_nets(cell_idx):
            assert traverse(net) is None
    for value in netlist.signals.values():
        for net in value:
            assert traverse(net) is None


def install() -> None:
    """Use this check for the Amaranth release it was written against (0.5.x), whose
    netlist structures it reads; other releases keep their own."""
    if amaranth.__version__.startswith("0.5.") and hasattr(_nir.Netlist, "check_comb_cycles"):
        _nir.Netlist.check_comb_cycles = check_comb_cycles
