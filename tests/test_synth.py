"""The FPGA flow on tiny hand-written designs: Yosys + nextpnr for every target, the fit check
before place and route, and the serial I/O wrapper (synthesized, and simulated on Icarus)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from amaranth.back import verilog as amaranth_verilog
from amaranth.hdl import Array, Elaboratable, Module, Signal, signed

from fpga import synth as synth_module
from fpga.io_wrapper import Port, wrapper_verilog
from fpga.synth import (
    ROUTERS,
    TARGETS,
    Device,
    DoesNotFit,
    _block_name,
    _pnr_failure,
    block_counts,
    logic_counts,
    synthesize,
)
from hw.lut_core import _sat
from qaccel.toolchain import DONT_MERGE

ADDER = """
module adder8(input clk, input rst, input [7:0] a, input [7:0] b, output reg [8:0] y);
  reg [7:0] ra, rb;
  always @(posedge clk)
    if (rst) begin ra <= 0; rb <= 0; y <= 0; end
    else begin ra <= a; rb <= b; y <= ra + rb; end
endmodule
"""
ADDER_PORT_BITS = 1 + 1 + 8 + 8 + 9  # clk, rst, a, b, y


def mults(n: int) -> str:
    """``n`` independent registered 16x16 multipliers behind 34 port bits."""
    products = "\n".join(f"    p[{i}] <= ra * (rb ^ 16'd{3 * i + 1});" for i in range(n))
    folded = " ^ ".join(f"p[{i}][31:16]" for i in range(n))
    return f"""
module mults(input clk, input rst, input [15:0] a, output reg [15:0] y);
  reg [15:0] ra, rb;
  reg [31:0] p [0:{n - 1}];
  always @(posedge clk) begin
    ra <= a; rb <= ra;
{products}
    y <= {folded};
  end
endmodule
"""


WIDE = """
module wide(input clk, input rst, input [199:0] d, output reg [7:0] y);
  integer i;
  reg [7:0] x;
  always @* begin
    x = 0;
    for (i = 0; i < 25; i = i + 1) x = x ^ d[8 * i +: 8];
  end
  always @(posedge clk) y <= rst ? 8'd0 : x;
endmodule
"""


# Named as Amaranth names submodules: the top's path, a dot, the submodule's name.
HIERARCHY = r"""
module \top.lane_0 (input clk, input [7:0] a, input [7:0] b, output reg [8:0] y);
  always @(posedge clk) y <= a + b;
endmodule
module \top.lane_1 (input clk, input [7:0] a, input [7:0] b, output reg [8:0] y);
  always @(posedge clk) y <= a + b;
endmodule
module \top.mul (input clk, input [15:0] a, input [15:0] b, output reg [31:0] y);
  always @(posedge clk) y <= a * b;
endmodule
module top(input clk, input rst, input [15:0] a, input [15:0] b, output reg [31:0] y,
           output [17:0] s);
  reg [15:0] ra, rb;
  wire [31:0] p;
  always @(posedge clk) begin ra <= a; rb <= b; y <= p; end
  \top.lane_0 lane_0 (.clk(clk), .a(ra[7:0]), .b(rb[7:0]), .y(s[8:0]));
  \top.lane_1 lane_1 (.clk(clk), .a(ra[15:8]), .b(rb[15:8]), .y(s[17:9]));
  \top.mul mul (.clk(clk), .a(ra), .b(rb), .y(p));
endmodule
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.v"
    path.write_text(text)
    return path


@pytest.mark.parametrize("target", list(TARGETS))
def test_adder_on_every_target(tmp_path, target):
    out = tmp_path / "out"
    report = synthesize(write(tmp_path, "adder8", ADDER), "adder8", target, out)
    r = report.resources
    assert set(r) >= {"LUT4", "FF", "carry", "DSP", "BRAM", "IO"}
    assert r["FF"].used >= 8 + 8 + 9
    assert r["LUT4"].used > 0 and r["carry"].used > 0
    assert r["IO"].used == ADDER_PORT_BITS
    assert all(0 <= u.used <= u.available for u in r.values())
    assert report.fmax_mhz > 20 and report.timing_met and not report.wrapped_io
    assert report.tools["yosys"].startswith("Yosys ")
    assert json.loads((out / "report.json").read_text()) == report.to_dict()
    for name in ("yosys.log", "nextpnr.log"):
        assert (out / name).stat().st_size > 0
    # The capacities in TARGETS are the ones nextpnr reports for the device.
    available = {
        cell: u["available"]
        for cell, u in json.loads((out / "nextpnr_report.json").read_text())["utilization"].items()
    }
    device = TARGETS[target]
    if device.family == "ecp5":
        assert r["LUT4"].used >= 2 * r["carry"].used  # a CCU2C counts its two LUT4s
        pairs = [("TRELLIS_COMB", "LUT4"), ("TRELLIS_FF", "FF"), ("MULT18X18D", "DSP")]
        pairs += [("DP16KD", "BRAM"), ("TRELLIS_IO", "IO")]
    else:
        pairs = [("ICESTORM_LC", "LUT4"), ("ICESTORM_DSP", "DSP"), ("ICESTORM_RAM", "BRAM")]
        pairs += [("SB_IO", "IO"), ("ICESTORM_SPRAM", "SPRAM")]
    for cell, resource in pairs:
        assert device.capacity[resource] == available[cell], (cell, resource)
    table = report.table()
    assert "IO" in table and "Fmax" in table and f"{ADDER_PORT_BITS}" in table
    assert report.mapper == ("abc9" if device.family == "ecp5" else "abc")
    assert "Mapping" not in table


@pytest.mark.parametrize("router", ROUTERS)
def test_router_is_passed_to_nextpnr(tmp_path, router):
    out = tmp_path / "out"
    report = synthesize(write(tmp_path, "adder8", ADDER), "adder8", "ecp5-25k", out, router=router)
    assert report.router == router and report.fmax_mhz > 20
    log = (out / "nextpnr.log").read_text()
    assert f"{router.capitalize()} time" in log and ("Router2" in log) == (router == "router2")


def test_ecp5_multiplier_maps_to_dsp(tmp_path):
    report = synthesize(write(tmp_path, "mults", mults(2)), "mults", "ecp5-25k", tmp_path / "out")
    assert report.resources["DSP"].used == 2
    assert report.pnr_utilization["MULT18X18D"].used == 2
    assert report.fmax_mhz > 0


@pytest.mark.parametrize(
    ("module", "block"),
    [
        ("array", "array"),
        ("array_io_wrapper", "io_wrapper"),
        ("array.pe_3_1", "pe"),
        ("array.pe_3_1.accumulator", "pe/accumulator"),
        ("array__pe_2", "pe"),
        ("array__pe_2.accumulator", "pe/accumulator"),
        ("array.skew", "skew"),
        ("lut_core.cell_0_12", "cell"),
    ],
)
def test_block_names(module, block):
    top = module.split(".")[0].split("__")[0].removesuffix("_io_wrapper")
    assert _block_name(module, top) == block


def test_resources_per_block(tmp_path):
    verilog = write(tmp_path, "top", HIERARCHY)
    blocks = block_counts(verilog, "top", "ecp5-25k", tmp_path / "blocks")
    assert set(blocks) == {"top", "lane", "mul"}
    assert blocks["lane"]["instances"] == 2 and blocks["lane"]["FF"] == 2 * 9
    assert blocks["lane"]["LUT4"] >= 2 * 8  # two 8-bit adders: at least a LUT4 per bit
    assert blocks["mul"] == {"instances": 1, "LUT4": 0, "FF": 32, "DSP": 1}
    assert blocks["top"]["FF"] == 16 + 16 + 32 and blocks["top"]["DSP"] == 0
    # The flat run of synthesize counts the same registers, and its table lists the blocks.
    report = synthesize(verilog, "top", "ecp5-25k", tmp_path / "out", wrap_io=False)
    assert report.blocks == blocks
    assert sum(b["FF"] for b in blocks.values()) == report.resources["FF"].used
    assert sum(b["DSP"] for b in blocks.values()) == report.resources["DSP"].used == 1
    table = report.table()
    assert "per block" in table and "lane" in table.split("per block")[1]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["blocks"] == blocks


# Two registers of the same input, each steering its own logic, inside a submodule (as the PEs
# are): Yosys folds equal registers into one unless they are marked DONT_MERGE.
TWINS = r"""
module \twins.half (input clk, input d, input [3:0] x, output [3:0] y);
  {mark} reg t;
  always @(posedge clk) t <= d;
  assign y = x ^ {{4{{t}}}};
endmodule
module twins(input clk, input rst, input d, input [7:0] x, output [7:0] y);
  {mark} reg s;
  always @(posedge clk) s <= d;
  \twins.half lo (.clk(clk), .d(d), .x(x[3:0]), .y(y[3:0]));
  assign y[7:4] = x[7:4] & {{4{{s}}}};
endmodule
"""


@pytest.mark.parametrize(("mark", "ffs"), [("", 1), (f"(* {DONT_MERGE} *)", 2)])
@pytest.mark.parametrize("target", ["ecp5-25k", "ice40-up5k"])
def test_dont_merge_keeps_equal_registers_apart(tmp_path, mark, ffs, target):
    verilog = write(tmp_path, "twins", TWINS.format(mark=mark))
    assert logic_counts(verilog, "twins", target, tmp_path / "out")["FF"] == ffs


def test_too_many_multipliers_for_up5k(tmp_path):
    with pytest.raises(
        DoesNotFit, match=r"^does not fit ice40-up5k: needs 12 DSP, the device has 8$"
    ) as e:
        synthesize(write(tmp_path, "mults", mults(12)), "mults", "ice40-up5k", tmp_path / "out")
    assert e.value.resource == "DSP" and isinstance(e.value, ValueError)
    assert not (tmp_path / "out" / "nextpnr.log").exists()  # caught before place and route


def test_wide_ports_are_wrapped_automatically(tmp_path):
    out = tmp_path / "out"
    report = synthesize(write(tmp_path, "wide", WIDE), "wide", "ice40-up5k", out, clock_mhz=500)
    assert report.wrapped_io and json.loads((out / "report.json").read_text())["wrapped_io"]
    assert report.resources["IO"].used == 5  # clk, rst, sin, load, sout
    assert report.resources["FF"].used >= 200 + 8 + 8  # input chain, output chain, y
    assert report.top == "wide" and "serial wrapper" in report.table()
    # A missed constraint is reported, not raised.
    assert report.clock_mhz == 500 and report.fmax_mhz < 500 and report.timing_met is False


def test_wide_ports_unwrapped_do_not_fit(tmp_path):
    with pytest.raises(DoesNotFit, match=r"needs 210 IO, the device has 39") as e:
        synthesize(write(tmp_path, "wide", WIDE), "wide", "ice40-up5k", tmp_path, wrap_io=False)
    assert e.value.resource == "IO"


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="needs Icarus Verilog")
def test_wrapper_shifts_inputs_in_and_outputs_out(tmp_path):
    ports = [Port("clk", "input", 1), Port("rst", "input", 1), Port("a", "input", 8)]
    ports += [Port("b", "input", 8), Port("y", "output", 9)]
    vectors = [(0, 0), (200, 100), (255, 255), (17, 3)]
    loads = "\n".join(
        f"    vin = {{8'd{b}, 8'd{a}}}; shift_in; load = 1; tick; tick; tick; load = 0; shift_out;"
        for a, b in vectors
    )
    bench = f"""
module tb;
  reg clk = 0, rst = 1, sin = 0, load = 0;
  wire sout;
  reg [15:0] vin;
  reg [8:0] vout;
  integer i;
  adder8_io_wrapper dut(.clk(clk), .rst(rst), .sin(sin), .load(load), .sout(sout));
  task tick; begin #1 clk = 1; #1 clk = 0; end endtask
  task shift_in; for (i = 15; i >= 0; i = i - 1) begin sin = vin[i]; tick; end endtask
  task shift_out; begin
    for (i = 8; i >= 0; i = i - 1) begin vout[i] = sout; tick; end
    $display("%0d", vout);
  end endtask
  initial begin
    tick; rst = 0;
{loads}
    $finish;
  end
endmodule
"""
    sources = [write(tmp_path, "adder8", ADDER), write(tmp_path, "tb", bench)]
    wrapper = tmp_path / "wrapper.v"
    wrapper.write_text(wrapper_verilog("adder8", ports))
    sim = tmp_path / "sim.vvp"
    subprocess.run(["iverilog", "-o", sim, *sources, wrapper], check=True)
    done = subprocess.run(["vvp", "-n", sim], capture_output=True, text=True, check=True)
    assert [int(x) for x in done.stdout.split()] == [a + b for a, b in vectors]


def test_wrapper_refuses_inout_and_output_less_tops():
    with pytest.raises(ValueError, match=r"^cannot wrap t: port 'z' is inout$"):
        wrapper_verilog("t", [Port("a", "input", 1), Port("z", "inout", 1)])
    with pytest.raises(ValueError, match="no output ports"):
        wrapper_verilog("t", [Port("a", "input", 4)])


def test_unknown_target_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown target 'xc7a35t'; known: ecp5-25k, ecp5-85k"):
        synthesize(tmp_path / "x.v", "x", "xc7a35t", tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top": "a b"}, "top must be a Verilog module name"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"router": "router3"}, "router must be one of router1, router2, not 'router3'"),
        ({"clock_mhz": 0}, "clock_mhz must be a positive number"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    args = {"top": "adder8", **kwargs}
    with pytest.raises(ValueError, match=message):
        synthesize(write(tmp_path, "adder8", ADDER), target="ecp5-25k", out_dir=tmp_path, **args)


def test_missing_verilog_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Verilog file not found"):
        synthesize(tmp_path / "nowhere.v", "x", "ecp5-25k", tmp_path)


def test_yosys_error_names_the_line_and_the_log(tmp_path):
    source = write(
        tmp_path, "broken", "module broken(input clk, output y);\n  assign y = ;\nendmodule\n"
    )
    with pytest.raises(
        OSError, match=r"^yosys failed: .*syntax error.*\(log: .*yosys_ports\.log\)$"
    ):
        synthesize(source, "broken", "ice40-up5k", tmp_path / "out")
    with pytest.raises(OSError, match=r"yosys failed: .*nosuch.*\(log: .*yosys\.log\)$"):
        synthesize(
            write(tmp_path, "adder8", ADDER), "nosuch", "ice40-up5k", tmp_path, wrap_io=False
        )


def test_abc9_assertion_falls_back_to_abc(tmp_path, monkeypatch):
    """Yosys's ABC9 trips an internal assertion on some netlists: the flow maps the design with
    ABC instead, and says so in the report and its table; other assertions still fail."""
    real = synth_module._yosys
    abc9_runs = []

    def yosys(sources, script, out_dir, log_name, *, log_text="Executing ABC9.\n"):
        if script.startswith("synth_ecp5") and synth_module.ABC_FALLBACK not in script:
            abc9_runs.append(log_name)
            (out_dir / log_name).write_text(log_text)
            raise OSError(f"yosys failed: Assert `x' failed in rtlil.cc:1. (log: {log_name})")
        return real(sources, script, out_dir, log_name)

    monkeypatch.setattr(synth_module, "_yosys", yosys)
    out = tmp_path / "out"
    report = synthesize(write(tmp_path, "adder8", ADDER), "adder8", "ecp5-25k", out)
    assert abc9_runs == ["yosys.log", "yosys_blocks.log"]
    assert report.mapper == "abc" and report.fmax_mhz > 20 and report.resources["LUT4"].used > 0
    log = (out / "yosys.log").read_text()
    assert synth_module.ABC_FALLBACK in log and "Executing ABC pass" in log
    assert f"LUTs mapped by `{synth_module.ABC_FALLBACK}`" in report.table()
    normal = synthesize(write(tmp_path, "adder8", ADDER), "adder8", "ecp5-25k", tmp_path / "o1")
    assert report.resources["FF"].used == normal.resources["FF"].used
    assert report.resources["carry"].used == normal.resources["carry"].used
    assert json.loads((out / "report.json").read_text())["mapper"] == "abc"

    def other_assert(sources, script, out_dir, log_name):
        return yosys(sources, script, out_dir, log_name, log_text="Executing OPT pass.\n")

    monkeypatch.setattr(synth_module, "_yosys", other_assert)
    with pytest.raises(OSError, match="Assert"):
        synthesize(write(tmp_path, "adder8", ADDER), "adder8", "ecp5-25k", tmp_path / "o2")


def test_nextpnr_out_of_cells_is_does_not_fit():
    device, log = TARGETS["ice40-up5k"], Path("nextpnr.log")
    line = "Unable to place cell 'p_DSP', no BELs remaining to implement cell type 'ICESTORM_DSP'"
    error = _pnr_failure(device, line, log)
    assert isinstance(error, DoesNotFit) and error.resource == "DSP"
    assert str(error).startswith("does not fit ice40-up5k: nextpnr ran out of DSP: Unable")
    other = _pnr_failure(device, "Failed to route", log)
    assert (
        type(other) is OSError
        and str(other) == "nextpnr failed: Failed to route (log: nextpnr.log)"
    )


def test_device_checks_its_family():
    with pytest.raises(ValueError, match="family must be one of ecp5, ice40, not 'xc7'"):
        Device("x", "xc7", (), lut4=1, ff=1, carry=1, dsp=0, bram=0, io=1)


class _SaturatedColumn(Elaboratable):
    """One output column of the LUT core: a row's 35-bit sum picked by a mux, plus a 38-bit
    correction, halved and saturated to 32 bits (``hw.lut_core._sat``)."""

    def __init__(self):
        self.held = [Signal(signed(35), name=f"held{i}") for i in range(2)]
        self.row, self.corr, self.y = Signal(), Signal(signed(38)), Signal(signed(32))

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.y.eq(_sat((Array(self.held)[self.row] + self.corr) >> 1, 32))
        return m


def test_ecp5_maps_saturating_sums_to_lut4s_only(tmp_path):
    # With wide LUTs ABC9 mapped this column to 322 LUT4 + 128 PFUMX + 96 L6MUX21 (plus the
    # 20 CCU2C of the sum); with LUT4s only, to 69 LUT4 and the 20 CCU2C.
    column = _SaturatedColumn()
    ports = [*column.held, column.row, column.corr, column.y]
    verilog = write(
        tmp_path, "column", amaranth_verilog.convert(column, name="column", ports=ports)
    )
    used = logic_counts(verilog, "column", "ecp5-25k", tmp_path / "out")
    assert used["carry"] == 20 and used["LUT4"] <= 2 * 20 + 100
    stat = json.loads((tmp_path / "out" / "stat.json").read_text())
    cells = synth_module._module(stat, "column")["num_cells_by_type"]
    assert not {"PFUMX", "L6MUX21"} & set(cells)


class _SlicedProducts(Elaboratable):
    """A W2A8 PE's four lane products, summed and registered (hw.pe's slices)."""

    def __init__(self):
        self.w, self.a, self.y = Signal(8), Signal(32), Signal(signed(20))

    def elaborate(self, platform):
        from hw.pe import _slice_product

        m = Module()
        w, a = Signal.like(self.w), Signal.like(self.a)
        m.d.sync += [w.eq(self.w), a.eq(self.a)]
        lanes = []
        for j in range(4):  # as hw.pe routes them: 3-bit signed slices, 9-bit activations
            w_slice, a_slice = Signal(signed(3)), Signal(signed(9))
            m.d.comb += [
                w_slice.eq(w[2 * j : 2 * j + 2].as_signed()),
                a_slice.eq(a[8 * j : 8 * j + 8].as_signed()),
            ]
            lanes.append(_slice_product(w_slice, a_slice, 4))
        m.d.sync += self.y.eq(sum(lanes))
        return m


def test_narrow_slices_multiply_in_few_lut4s(tmp_path):
    # A conditional shifted copy of a per weight bit took 255 LUT4 here; Booth digits, 99.
    block = _SlicedProducts()
    verilog = write(
        tmp_path,
        "sliced",
        amaranth_verilog.convert(block, name="sliced", ports=[block.w, block.a, block.y]),
    )
    assert logic_counts(verilog, "sliced", "ecp5-25k", tmp_path / "out")["LUT4"] <= 130
