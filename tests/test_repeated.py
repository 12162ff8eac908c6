"""Repeated blocks written once (hw.repeated): one Verilog module per PE variant, one instance
per PE. That the written hardware computes what the array does is tests/test_array_rtl.py's
and tests/test_accel_rtl.py's job (they run this Verilog)."""

from __future__ import annotations

import re

from amaranth.hdl import Instance

from hw import repeated
from hw.array import SystolicArray
from hw.generate import to_verilog
from hw.pe import PE
from qaccel.modes import mode_spec


def array(rows, cols, dataflow, pairs=(("int8", "int8"),)):
    modes = [mode_spec(w, a, rows=rows, acc_bits=32) for w, a in pairs]
    return SystolicArray(rows, cols, modes, dataflow, pipelined=True)


def datapath():
    block = array(2, 2, "os")
    block._MustUse__silence = True  # only its datapath is wanted: never elaborated
    return block.datapath


def modules(text: str) -> list[str]:
    return re.findall(r"^module \\?(\S+?) ?\(", text, re.M)


def instances(text: str, module: str) -> int:
    return len(re.findall(rf"^\s*\\?{re.escape(module)} \\?\S+ \(", text, re.M))


def test_outside_a_conversion_the_block_is_itself():
    pe = PE(datapath())
    pe._MustUse__silence = True
    assert repeated.once(pe, "key", "pe") is pe


def test_inside_a_conversion_it_is_an_instance():
    pe = PE(datapath())
    with repeated.collecting("top", lambda block, name: f"module {name}(clk);\n") as texts:
        first = repeated.once(pe, "key", "pe")
        again = repeated.once(PE(datapath()), "key", "pe")
    assert isinstance(first, Instance) and isinstance(again, Instance)
    assert texts == ["module top__pe(clk);\n"]  # written once


def test_output_stationary_pes_are_two_modules():
    """The top row starts the drain token; every other row is the same hardware."""
    text = to_verilog(array(4, 3, "os"), "array")
    pes = [m for m in modules(text) if re.fullmatch(r"array__pe_\d+", m)]
    assert pes == ["array__pe_0", "array__pe_1"]
    assert instances(text, "array__pe_0") == 3 and instances(text, "array__pe_1") == 9


def test_weight_stationary_rows_differ_in_their_sums_width():
    text = to_verilog(array(4, 2, "ws"), "array")
    pes = [m for m in modules(text) if re.fullmatch(r"array__pe_\d+", m)]
    assert len(pes) == 4  # each row adds one bit to the exact column sum
    assert all(instances(text, pe) == 2 for pe in pes)
    assert "array__pe_0.accumulator" in modules(text)  # the blocks inside keep their names
