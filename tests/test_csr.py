"""The control and status registers: the description (``qaccel.csr``), the AXI4-Lite slave in
amaranth.sim (``hw.csr``), and its Verilog under cocotbext-axi on Icarus and Verilator
(``hw.csr_bench``)."""

from __future__ import annotations

import random
import re

import pytest
from amaranth.sim import Simulator

from hw.csr import RESP_OKAY, RESP_SLVERR, AxiLiteSignature, ControlRegisters
from hw.csr_bench import run_csr_bench
from hw.generate import ports
from qaccel import csr
from qaccel.csr import Access, Counter, Field, Register, RegisterMap

LIMIT = 40  # cycles any handshake may wait in these benches before the test fails
SEED = 20261122

# ---- the description ---------------------------------------------------------------------------


def test_offsets_are_distinct_aligned_and_in_a_4k_window():
    offsets = [r.offset for r in csr.MAP.registers]
    assert len(set(offsets)) == len(offsets)
    assert all(o % 4 == 0 for o in offsets)
    assert csr.MAP.span <= 1 << 12
    assert csr.OFFSETS["ID"] == 0 and csr.offset("PROG_LEN") == csr.OFFSETS["PROG_LEN"]


def test_the_map_holds_what_the_accelerator_needs():
    assert csr.MAP["ID"].reset == csr.ID_VALUE == 0x51414343
    assert csr.ID_VALUE.to_bytes(4, "big") == b"QACC"
    assert csr.MAP["VERSION"].reset == csr.ISA_VERSION == 2
    assert [f.name for f in csr.MAP["CTRL"].fields] == ["START", "CLEAR"]
    status = csr.MAP["STATUS"]
    assert {f.name: (f.lsb, f.msb) for f in status.fields} == {
        "BUSY": (0, 0),
        "DONE": (1, 1),
        "ERROR": (2, 2),
        "ERROR_CODE": (8, 15),
    }
    names = [c.name for c in csr.COUNTERS]
    assert names == [
        "CYCLES",
        "LOAD_BUSY",
        "COMPUTE_BUSY",
        "STORE_BUSY",
        "LOAD_STALL",
        "COMPUTE_STALL",
        "STORE_STALL",
        "DRAM_READ_BYTES",
        "DRAM_WRITE_BYTES",
        "INSNS",
        "SATURATIONS",
        "INVALID",
    ]
    for name in names:
        lo, hi = csr.counter_offsets(name)
        assert hi == lo + 4 and csr.MAP.at(lo).access is Access.RO


def test_every_register_and_field_is_documented():
    for reg in csr.MAP:
        assert reg.description.strip(), reg.name
        for f in reg.fields:
            assert f.description.strip(), f"{reg.name}.{f.name}"


def test_the_markdown_table_has_every_register_and_field():
    table = csr.markdown_table()
    rows = [line for line in table.splitlines() if re.match(r"\| 0x[0-9A-F]+ \|", line)]
    assert len(rows) == len(csr.MAP)
    for reg, row in zip(csr.MAP, rows, strict=True):
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert cells[:4] == [
            f"0x{reg.offset:03X}",
            reg.name,
            reg.access.value,
            f"0x{reg.reset:08X}",
        ]
        for f in reg.fields:
            assert f"{f.bits} {f.name}:" in cells[4]
    assert "[15:8] ERROR_CODE:" in table
    sheet = csr.datasheet()
    assert table in sheet and "read `_LO` first, then `_HI`" in sheet and "SLVERR" in sheet


def test_the_c_header_defines_every_register():
    header = csr.c_header()
    for reg in csr.MAP:
        assert f"#define QACC_{reg.name} 0x{reg.offset:03X}u" in header
    assert "#define QACC_STATUS_ERROR_CODE_MASK 0x0000FF00u" in header
    assert "#define QACC_ID_VALUE 0x51414343u" in header


def test_field_helpers_round_trip():
    rng = random.Random(SEED)
    for reg in csr.MAP:
        for f in reg.fields:
            for value in {0, 1, (1 << f.width) - 1, rng.randrange(1 << f.width)}:
                word = rng.randrange(1 << 32)
                packed = csr.insert(reg.name, f.name, word, value)
                assert csr.extract(reg.name, f.name, packed) == value
                assert packed & ~f.mask == word & ~f.mask, "other bits must be kept"
    assert csr.insert("STATUS", "ERROR_CODE", 0, 0x7) == 0x700
    assert csr.join64(0x89AB_CDEF, 0x0123_4567) == 0x0123_4567_89AB_CDEF


def test_field_helpers_refuse_what_does_not_fit():
    with pytest.raises(ValueError, match=r"field ERROR_CODE holds 8 bit\(s\): 0\.\.255, not 256"):
        csr.insert("STATUS", "ERROR_CODE", 0, 256)
    with pytest.raises(ValueError, match=r"a register word is an integer .*, not -1"):
        csr.extract("STATUS", "DONE", -1)
    with pytest.raises(KeyError, match=r"no register named 'STATS'; known: ID, VERSION"):
        csr.offset("STATS")
    with pytest.raises(
        KeyError, match=r"register CTRL has no field 'GO'; its fields: START, CLEAR"
    ):
        csr.field("CTRL", "GO")
    with pytest.raises(KeyError, match=r"no counter named 'CYCLE'"):
        csr.counter_offsets("CYCLE")


def _reg(name="R", offset=0, access=Access.RW, reset=0, fields=(), **kw):
    return Register(name, offset, access, reset, "a register", fields, **kw)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: _reg(offset=6),
            r"register R: the offset must be a non-negative multiple of 4, not 6",
        ),
        (lambda: _reg(name="ctrl"), r"register name must be upper case .*, not 'ctrl'"),
        (lambda: Register("R", 0, Access.RW, 0, " "), r"register R needs a description, not ' '"),
        (lambda: _reg(reset=1 << 32), r"register R: the reset value must fit 32 bits"),
        (lambda: Field("F", 3, 2, "f"), r"field F: bits must satisfy .*, not lsb=3, msb=2"),
        (lambda: Field("F", 0, 32, "f"), r"field F: bits must satisfy 0 <= lsb <= msb < 32"),
        (
            lambda: _reg(fields=(Field("A", 0, 3, "a"), Field("B", 3, 4, "b"))),
            r"register R: field B \[4:3\] overlaps another",
        ),
        (
            lambda: _reg(fields=(Field("A", 0, 0, "a"), Field("A", 1, 1, "b"))),
            r"register R: two fields are named A",
        ),
        (
            lambda: _reg(reset=2, fields=(Field("A", 0, 0, "a"),)),
            r"register R: reset 0x00000002 sets bits outside its fields",
        ),
        (
            lambda: _reg(access=Access.W1P, fields=(Field("GO", 0, 1, "go"),)),
            r"register R: a W1P register needs fields of one bit each, not \['\[1:0\]'\]",
        ),
        (lambda: _reg(constant=True), r"register R: only an RO register can be constant, not RW"),
        (
            lambda: RegisterMap((_reg("A", 4), _reg("B", 4))),
            r"registers A and B overlap at offset 0x4",
        ),
        (lambda: RegisterMap((_reg("A", 0), _reg("A", 4))), r"two registers are named A"),
        (
            lambda: RegisterMap((_reg("A_LO", 0, Access.RO),), (Counter("A", "a"),)),
            r"counter A needs registers A_LO and A_HI, 4 bytes apart; found 0x0 and None",
        ),
    ],
)
def test_description_errors_say_what_was_wrong(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_counter_is_one_line():
    counters = (*csr.COUNTERS, Counter("EXTRA", "something else counted"))
    regmap = RegisterMap.with_counters(csr.REGISTERS, counters, csr.COUNTER_BASE)
    end = csr.MAP.span
    assert (regmap["EXTRA_LO"].offset, regmap["EXTRA_HI"].offset) == (end, end + 4)
    assert "| EXTRA_HI | RO |" in csr.markdown_table(regmap)


# ---- the slave in amaranth.sim -----------------------------------------------------------------


def simulate(dut: ControlRegisters, *benches, background=()):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for bench in benches:
        sim.add_testbench(bench)
    for bench in background:
        sim.add_testbench(bench, background=True)
    sim.run()


async def _handshake(ctx, channels: dict, what: str) -> None:
    """Raise each (valid, ready) pair's valid until its ready: all in the same cycles."""
    for valid, _ in channels.values():
        ctx.set(valid, 1)
    left = dict(channels)
    for _ in range(LIMIT):
        taken = [name for name, (_, ready) in left.items() if ctx.get(ready)]
        await ctx.tick()
        for name in taken:
            ctx.set(left.pop(name)[0], 0)
        if not left:
            return
    raise AssertionError(f"{what}: {', '.join(left)} not taken in {LIMIT} cycles")


async def _response(ctx, valid, ready, payload, hold: int, what: str):
    """Wait for a response, keep ``ready`` low for ``hold`` cycles (it must stay the same),
    then take it."""
    for _ in range(LIMIT):
        if ctx.get(valid):
            break
        await ctx.tick()
    else:
        raise AssertionError(f"{what}: no response in {LIMIT} cycles")
    first = [ctx.get(p) for p in payload]
    for _ in range(hold):
        await ctx.tick()
        assert ctx.get(valid) and [ctx.get(p) for p in payload] == first, f"{what}: not held"
    ctx.set(ready, 1)
    await ctx.tick()
    ctx.set(ready, 0)
    return first


async def axil_write(ctx, dut, offset, value, *, strb=0xF, order="together", gap=0, hold=0):
    """One write; ``order``: "together", "aw_first" or "w_first", ``gap`` cycles apart.
    Returns bresp."""
    bus = dut.s_axil
    ctx.set(bus.awaddr, offset)
    ctx.set(bus.wdata, value)
    ctx.set(bus.wstrb, strb)
    aw, w = {"aw": (bus.awvalid, bus.awready)}, {"w": (bus.wvalid, bus.wready)}
    what = f"write {offset:#x}"
    if order == "together":
        await _handshake(ctx, aw | w, what)
    else:
        first, second = (aw, w) if order == "aw_first" else (w, aw)
        await _handshake(ctx, first, what)
        for _ in range(gap):
            assert not ctx.get(bus.bvalid), f"{what}: answered before both halves came"
            await ctx.tick()
        await _handshake(ctx, second, what)
    (resp,) = await _response(ctx, bus.bvalid, bus.bready, [bus.bresp], hold, what)
    return resp


async def axil_read(ctx, dut, offset, *, hold=0):
    """One read: (rdata, rresp)."""
    bus = dut.s_axil
    ctx.set(bus.araddr, offset)
    what = f"read {offset:#x}"
    await _handshake(ctx, {"ar": (bus.arvalid, bus.arready)}, what)
    data, resp = await _response(ctx, bus.rvalid, bus.rready, [bus.rdata, bus.rresp], hold, what)
    return data, resp


async def reg(ctx, dut, name):
    data, resp = await axil_read(ctx, dut, csr.OFFSETS[name])
    assert resp == RESP_OKAY, f"reading {name}: resp {resp}"
    return data


async def command(ctx, dut, *fields, strb=0xF):
    """Write CTRL with ``fields`` set, then give a pulse monitor two cycles to see it."""
    word = 0
    for f in fields:
        word = csr.insert("CTRL", f, word, 1)
    resp = await axil_write(ctx, dut, csr.OFFSETS["CTRL"], word, strb=strb)
    await ctx.tick().repeat(2)
    return resp


def pulse_counter(dut, counts: dict):
    """A background bench counting the cycles each W1P port is high."""

    async def bench(ctx):
        async for _, _, start, clear in ctx.tick().sample(dut.start, dut.clear):
            counts["start"] += start
            counts["clear"] += clear

    return bench


def test_ports_reset_values_and_constants():
    dut = ControlRegisters()
    names = ports(dut)
    assert names["s_axil__awaddr"] == ("in", 12) and names["s_axil__rdata"] == ("out", 32)
    assert names["start"] == names["clear"] == ("out", 1)
    assert names["prog_addr"] == names["prog_len"] == ("out", 32)
    assert names["busy"] == names["run_done"] == ("in", 1)
    assert names["error_code"] == ("in", 8) and names["error_insn"] == ("in", 32)
    assert {n for n, (_, w) in names.items() if w == 64} == {c.name.lower() for c in csr.COUNTERS}

    async def bench(ctx):
        for reg_ in csr.MAP:
            data, resp = await axil_read(ctx, dut, reg_.offset)
            assert (data, resp) == (reg_.reset, RESP_OKAY), reg_.name
        assert ctx.get(dut.prog_addr) == ctx.get(dut.prog_len) == 0

    simulate(dut, bench)


def test_rw_registers_whole_words_and_byte_lanes():
    dut = ControlRegisters()

    async def bench(ctx):
        off = csr.OFFSETS["PROG_ADDR"]
        assert await axil_write(ctx, dut, off, 0x8765_4321) == RESP_OKAY
        assert ctx.get(dut.prog_addr) == 0x8765_4321
        assert await axil_write(ctx, dut, off, 0xAABB_CCDD, strb=0b0100) == RESP_OKAY
        assert await reg(ctx, dut, "PROG_ADDR") == 0x87BB_4321
        assert await axil_write(ctx, dut, off + 3, 0x1100_0000, strb=0b1000) == RESP_OKAY
        assert await reg(ctx, dut, "PROG_ADDR") == 0x11BB_4321, "low address bits are ignored"
        assert await axil_write(ctx, dut, csr.OFFSETS["PROG_LEN"], 77, strb=0) == RESP_OKAY
        assert await reg(ctx, dut, "PROG_LEN") == 0, "no lane, no change"
        await axil_write(ctx, dut, csr.OFFSETS["PROG_LEN"], 77)
        assert (ctx.get(dut.prog_len), await reg(ctx, dut, "PROG_LEN")) == (77, 77)
        assert ctx.get(dut.prog_addr) == 0x11BB_4321

    simulate(dut, bench)


@pytest.mark.parametrize(("order", "gap"), [("together", 0), ("aw_first", 3), ("w_first", 3)])
def test_aw_and_w_in_either_order(order, gap):
    dut = ControlRegisters()

    async def bench(ctx):
        value = {"together": 1, "aw_first": 2, "w_first": 3}[order]
        resp = await axil_write(ctx, dut, csr.OFFSETS["PROG_LEN"], value, order=order, gap=gap)
        assert resp == RESP_OKAY
        for _ in range(4):  # one response per write
            await ctx.tick()
            assert not ctx.get(dut.s_axil.bvalid)
        assert await reg(ctx, dut, "PROG_LEN") == value

    simulate(dut, bench)


def test_back_pressure_on_b_and_r_holds_the_response():
    dut = ControlRegisters()

    async def bench(ctx):
        bus = dut.s_axil
        assert await axil_write(ctx, dut, csr.OFFSETS["PROG_ADDR"], 0x40, hold=5) == RESP_OKAY
        assert await axil_write(ctx, dut, 0x1C, 1, hold=3) == RESP_SLVERR
        ctx.set(bus.araddr, csr.OFFSETS["ID"])
        await _handshake(ctx, {"ar": (bus.arvalid, bus.arready)}, "read ID")
        ctx.set(bus.arvalid, 1)  # a second read offered while R waits: not taken
        for _ in range(5):
            await ctx.tick()
            assert ctx.get(bus.rvalid) and not ctx.get(bus.arready)
            assert ctx.get(bus.rdata) == csr.ID_VALUE
        ctx.set(bus.arvalid, 0)
        ctx.set(bus.rready, 1)
        await ctx.tick()
        ctx.set(bus.rready, 0)
        assert not ctx.get(bus.rvalid)

    simulate(dut, bench)


def test_a_write_waits_for_the_previous_response():
    """AW and W of a second write are buffered while B waits; each write answers once."""
    dut = ControlRegisters()

    async def bench(ctx):
        bus = dut.s_axil
        ctx.set(bus.awaddr, csr.OFFSETS["PROG_LEN"])
        ctx.set(bus.wdata, 5)
        ctx.set(bus.wstrb, 0xF)
        await _handshake(
            ctx, {"aw": (bus.awvalid, bus.awready), "w": (bus.wvalid, bus.wready)}, "1"
        )
        ctx.set(bus.wdata, 6)
        await _handshake(
            ctx, {"aw": (bus.awvalid, bus.awready), "w": (bus.wvalid, bus.wready)}, "2"
        )
        for _ in range(3):
            await ctx.tick()
            assert ctx.get(bus.bvalid) and ctx.get(dut.prog_len) == 5, "the second write waits"
        responses = 0
        ctx.set(bus.bready, 1)
        for _ in range(6):
            responses += ctx.get(bus.bvalid)
            await ctx.tick()
        assert responses == 2
        assert ctx.get(dut.prog_len) == 6

    simulate(dut, bench)


def test_slverr_on_unmapped_and_read_only_offsets():
    dut = ControlRegisters()

    async def bench(ctx):
        mapped = {r.offset for r in csr.MAP}
        unmapped = [o for o in range(0, 1 << 12, 4) if o not in mapped]
        assert len(unmapped) == (1 << 10) - len(csr.MAP)
        for offset in [*unmapped[:3], unmapped[-1]]:
            assert await axil_read(ctx, dut, offset) == (0, RESP_SLVERR), hex(offset)
            assert await axil_write(ctx, dut, offset, 0xFFFF_FFFF) == RESP_SLVERR, hex(offset)
        read_only = [r for r in csr.MAP if r.access is Access.RO]
        for r in read_only:
            assert await axil_write(ctx, dut, r.offset, 0xFFFF_FFFF) == RESP_SLVERR, r.name
            assert await reg(ctx, dut, r.name) == r.reset, f"{r.name} changed"
        assert await reg(ctx, dut, "PROG_ADDR") == 0

    simulate(dut, bench)


def test_start_and_clear_pulse_once_and_read_as_zero():
    dut = ControlRegisters()
    counts = {"start": 0, "clear": 0}

    async def bench(ctx):
        assert await command(ctx, dut, "START") == RESP_OKAY
        assert counts == {"start": 1, "clear": 0}
        assert await reg(ctx, dut, "CTRL") == 0
        await command(ctx, dut, "CLEAR")
        await command(ctx, dut, "START", strb=0b1110)  # bit 0's lane not written: no pulse
        assert counts == {"start": 1, "clear": 1}
        await command(ctx, dut, "START", "CLEAR")
        assert counts == {"start": 2, "clear": 2}

    simulate(dut, bench, background=[pulse_counter(dut, counts)])


def test_start_and_clear_are_ignored_while_busy():
    """A controller that raises busy the cycle after start: a second START, and CLEAR, written
    during the run do nothing."""
    dut = ControlRegisters()
    counts = {"start": 0, "clear": 0}

    async def controller(ctx):
        left = 0
        async for _, _, start in ctx.tick().sample(dut.start):
            left = 30 if start else max(left - 1, 0)
            ctx.set(dut.busy, left > 0)
            ctx.set(dut.run_done, left == 1)

    async def bench(ctx):
        await command(ctx, dut, "START")
        await command(ctx, dut, "START")
        await command(ctx, dut, "CLEAR")
        assert csr.extract("STATUS", "BUSY", await reg(ctx, dut, "STATUS")) == 1
        assert counts == {"start": 1, "clear": 0}
        for _ in range(40):
            await ctx.tick()
        assert await reg(ctx, dut, "STATUS") == csr.insert("STATUS", "DONE", 0, 1)
        await command(ctx, dut, "CLEAR")
        assert counts == {"start": 1, "clear": 1}

    simulate(dut, bench, background=[pulse_counter(dut, counts), controller])


def test_done_and_error_are_sticky_until_start_or_clear():
    dut = ControlRegisters()

    async def run_done(ctx, code=0, insn=0):
        ctx.set(dut.busy, 0)
        ctx.set(dut.run_done, 1)
        ctx.set(dut.error_code, code)
        ctx.set(dut.error_insn, insn)
        await ctx.tick()
        ctx.set(dut.run_done, 0)
        ctx.set(dut.error_code, 0)  # the code is only valid with run_done
        ctx.set(dut.error_insn, 0xDEAD)

    def status(**fields):
        word = 0
        for name, value in fields.items():
            word = csr.insert("STATUS", name.upper(), word, value)
        return word

    async def bench(ctx):
        await run_done(ctx, 0, 99)
        assert await reg(ctx, dut, "STATUS") == status(done=1)
        assert await reg(ctx, dut, "ERROR_INSN") == 0, "no fault, no instruction"
        await command(ctx, dut, "START")
        assert await reg(ctx, dut, "STATUS") == 0
        await run_done(ctx, 5, 17)
        for _ in range(3):
            assert await reg(ctx, dut, "STATUS") == status(done=1, error=1, error_code=5)
            assert await reg(ctx, dut, "ERROR_INSN") == 17
        ctx.set(dut.busy, 1)
        assert await reg(ctx, dut, "STATUS") == status(busy=1, done=1, error=1, error_code=5)
        await command(ctx, dut, "CLEAR")  # ignored while busy
        assert await reg(ctx, dut, "ERROR_INSN") == 17
        ctx.set(dut.busy, 0)
        await command(ctx, dut, "CLEAR")
        assert await reg(ctx, dut, "STATUS") == 0
        assert await reg(ctx, dut, "ERROR_INSN") == 0
        await run_done(ctx, 0xFF, 0xFFFF_FFFF)
        assert await reg(ctx, dut, "STATUS") == status(done=1, error=1, error_code=0xFF)
        assert await reg(ctx, dut, "ERROR_INSN") == 0xFFFF_FFFF
        await command(ctx, dut, "START")
        assert await reg(ctx, dut, "STATUS") == 0 and await reg(ctx, dut, "ERROR_INSN") == 0

    simulate(dut, bench)


def test_reading_lo_latches_hi():
    dut = ControlRegisters()

    async def bench(ctx):
        for i, c in enumerate(csr.COUNTERS):
            ctx.set(getattr(dut, c.name.lower()), (i + 1) << 32 | (0xFFFF_FFF0 + i))
        lo_off, hi_off = csr.counter_offsets("CYCLES")
        assert await reg(ctx, dut, "CYCLES_HI") == 0, "HI before any LO read: the reset snapshot"
        assert (await axil_read(ctx, dut, lo_off))[0] == 0xFFFF_FFF0
        ctx.set(dut.cycles, 0x2_0000_0003)  # carried since the LO read
        assert (await axil_read(ctx, dut, hi_off))[0] == 1, "HI is the half latched with LO"
        assert (await axil_read(ctx, dut, hi_off))[0] == 1
        assert (await axil_read(ctx, dut, lo_off))[0] == 3
        assert (await axil_read(ctx, dut, hi_off))[0] == 2
        for i, c in enumerate(csr.COUNTERS[1:], start=1):  # each counter its own snapshot
            lo = await reg(ctx, dut, c.lo)
            assert csr.join64(lo, await reg(ctx, dut, c.hi)) == (i + 1) << 32 | lo
        assert await reg(ctx, dut, "CYCLES_HI") == 2
        await command(ctx, dut, "CLEAR")
        assert await reg(ctx, dut, "CYCLES_HI") == 0, "CLEAR zeroes the snapshots"

    simulate(dut, bench)


def test_a_map_with_an_extra_counter_reads_it():
    counters = (*csr.COUNTERS, Counter("EXTRA", "something else counted"))
    dut = ControlRegisters(regmap=RegisterMap.with_counters(csr.REGISTERS, counters, 0x20))
    assert ports(dut)["extra"] == ("in", 64)

    async def bench(ctx):
        ctx.set(dut.extra, 0x1234_5678_9ABC_DEF0)
        lo, hi = dut.regmap["EXTRA_LO"].offset, dut.regmap["EXTRA_HI"].offset
        assert (await axil_read(ctx, dut, lo))[0] == 0x9ABC_DEF0
        assert (await axil_read(ctx, dut, hi))[0] == 0x1234_5678

    simulate(dut, bench)


def _without(name: str) -> RegisterMap:
    return RegisterMap(tuple(r for r in csr.MAP.registers if r.name != name))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"addr_width": 2}, r"addr_width must be an integer in 3\.\.32, not 2"),
        ({"addr_width": 6}, r"addr_width 6 addresses 64 bytes; the map needs 128"),
        ({"regmap": {}}, r"regmap must be a qaccel.csr.RegisterMap, not \{\}"),
        ({"regmap": _without("STATUS")}, r"the register map has no STATUS, which the hardware"),
        (
            {"regmap": RegisterMap((*csr.REGISTERS, _reg("BUSY", 0x1C)))},
            r"the register map gives two ports the name 'busy'",
        ),
    ],
)
def test_control_registers_errors_say_what_was_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ControlRegisters(**kwargs)


def test_axi_lite_signature():
    sig = AxiLiteSignature(16)
    assert sig == AxiLiteSignature(16) and sig != AxiLiteSignature(12)
    assert [name for name, _ in sig.members.items()] == [
        "awaddr", "awprot", "awvalid", "awready", "wdata", "wstrb", "wvalid", "wready",
        "bresp", "bvalid", "bready", "araddr", "arprot", "arvalid", "arready",
        "rdata", "rresp", "rvalid", "rready",
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"AXI4-Lite data_width must be 32 or 64, not 16"):
        AxiLiteSignature(12, 16)


# ---- the Verilog under cocotbext-axi -----------------------------------------------------------


def test_icarus_host_driver(tmp_path):
    run_csr_bench("icarus", tmp_path, seed=SEED)


def test_verilator_host_driver(tmp_path):
    run_csr_bench("verilator", tmp_path, seed=SEED)
