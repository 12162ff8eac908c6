"""The control and status registers behind an AXI4-Lite slave, generated from ``qaccel.csr``.

``ControlRegisters`` decodes, stores and drives ports from a ``qaccel.csr.RegisterMap``: the
map is the only place a register is described, so the hardware, the host driver's constants
and the datasheet agree by construction.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from qaccel import csr
from qaccel.csr import Access, Register, RegisterMap

__all__ = ["RESP_OKAY", "RESP_SLVERR", "AxiLiteSignature", "ControlRegisters", "register_layout"]

RESP_OKAY, RESP_SLVERR = 0, 2

# What the run-state logic of ControlRegisters reads and writes by name: it must be in the map.
_RUN_STATE_FIELDS = {
    "CTRL": ("START", "CLEAR"),
    "STATUS": ("BUSY", "DONE", "ERROR", "ERROR_CODE"),
    "ERROR_INSN": (),
}


class AxiLiteSignature(wiring.Signature):
    """AXI4-Lite, seen from the manager (master): a slave takes ``In(AxiLiteSignature(...))``.

    Members carry the standard names (``awaddr``, ``awprot``, ``awvalid``, ``awready``, ``wdata``,
    ``wstrb``, ``wvalid``, ``wready``, ``bresp``, ``bvalid``, ``bready``, ``araddr``, ``arprot``,
    ``arvalid``, ``arready``, ``rdata``, ``rresp``, ``rvalid``, ``rready``)."""

    def __init__(self, addr_width: int = 12, data_width: int = 32):
        if not isinstance(addr_width, int) or not 1 <= addr_width <= 64:
            raise ValueError(f"addr_width must be an integer in 1..64, not {addr_width!r}")
        if data_width not in (32, 64):
            raise ValueError(f"AXI4-Lite data_width must be 32 or 64, not {data_width!r}")
        self._addr_width, self._data_width = addr_width, data_width
        super().__init__(
            {
                "awaddr": Out(addr_width),
                "awprot": Out(3),
                "awvalid": Out(1),
                "awready": In(1),
                "wdata": Out(data_width),
                "wstrb": Out(data_width // 8),
                "wvalid": Out(1),
                "wready": In(1),
                "bresp": In(2),
                "bvalid": In(1),
                "bready": Out(1),
                "araddr": Out(addr_width),
                "arprot": Out(3),
                "arvalid": Out(1),
                "arready": In(1),
                "rdata": In(data_width),
                "rresp": In(2),
                "rvalid": In(1),
                "rready": Out(1),
            }
        )

    addr_width = property(lambda self: self._addr_width)
    data_width = property(lambda self: self._data_width)

    def __eq__(self, other):
        return (
            type(other) is type(self)
            and other.addr_width == self.addr_width
            and other.data_width == self.data_width
        )

    def __repr__(self):
        return f"AxiLiteSignature({self._addr_width}, {self._data_width})"


def register_layout(register: Register) -> data.FlexibleLayout:
    """A register word as an ``amaranth.lib.data`` layout: one member per field, lower case."""
    return data.FlexibleLayout(
        csr.REGISTER_BITS,
        {f.name.lower(): data.Field(unsigned(f.width), f.lsb) for f in register.fields},
    )


class ControlRegisters(wiring.Component):
    """The accelerator's control and status registers (``qaccel.csr.MAP``) on an AXI4-Lite slave.

    **Bus** (``s_axil``, 32-bit data, ``addr_width``-bit byte addresses): in the Verilog its
    members become ports ``s_axil__awaddr``, ``s_axil__wdata``, …, so cocotbext-axi finds them
    with ``AxiLiteBus.from_prefix(dut, "s_axil_")`` (prefix + ``_`` + name). AW and W may come in
    either order or together; each is taken into a one-entry buffer, and a write is performed in
    the cycle both are held and the B channel is free: one response per write. A read is
    answered from a register one cycle after AR is taken. B and R are held until ``bready`` /
    ``rready``; a new AR is taken once R is handed over. Unmapped reads, and writes to unmapped
    or RO registers, answer SLVERR and change nothing. Writes apply wstrb's byte lanes (a
    command bit acts only when its lane is written). The two low address bits are ignored.

    **Ports toward the accelerator** (named after the map):

    - one ``Out(1)`` pulse per W1P field (``start``, ``clear``), a cycle long, registered;
    - one ``Out(32)`` per RW register (``prog_addr``, ``prog_len``), holding the last write;
    - one ``In(64)`` per counter (``cycles``, ``load_busy``, …); the controller holds them and
      zeroes them on ``clear``; this block snapshots the upper half when ``_LO`` is read;
    - from the controller: ``busy`` (a run is in progress), ``run_done`` (a one-cycle pulse when
      a run ends) with ``error_code`` (0: no fault) and ``error_insn`` valid in that cycle.

    START and CLEAR are ignored while ``busy`` and in the cycle ``start`` is high (the controller
    must raise ``busy`` no later than the cycle after the ``start`` pulse, and keep it up until
    ``run_done``). DONE, ERROR, ERROR_CODE and ERROR_INSN live here: ``run_done`` sets DONE and
    latches the error code and, on a fault, the instruction index; an accepted START or CLEAR
    clears them.
    """

    def __init__(self, addr_width: int = 12, regmap: RegisterMap = csr.MAP):
        try:
            self._check(addr_width, regmap)
            members = self._members(addr_width, regmap)
        except ValueError:
            self._MustUse__silence = True  # rejected, so never elaborated: nothing to warn about
            raise
        self._addr_width, self._map = addr_width, regmap
        super().__init__(members)

    @staticmethod
    def _check(addr_width, regmap):
        if not isinstance(regmap, RegisterMap):
            raise ValueError(f"regmap must be a qaccel.csr.RegisterMap, not {regmap!r}")
        if not isinstance(addr_width, int) or not 2 < addr_width <= 32:
            raise ValueError(f"addr_width must be an integer in 3..32, not {addr_width!r}")
        if regmap.span > 1 << addr_width:
            raise ValueError(
                f"addr_width {addr_width} addresses {1 << addr_width} bytes; the map needs "
                f"{regmap.span}"
            )
        for name, fields in _RUN_STATE_FIELDS.items():
            if name not in regmap:
                raise ValueError(f"the register map has no {name}, which the hardware drives")
            for f in fields:
                try:
                    regmap[name].field(f)
                except KeyError as e:
                    raise ValueError(e.args[0]) from None
        if regmap["CTRL"].access is not Access.W1P:
            raise ValueError(f"CTRL must be W1P, not {regmap['CTRL'].access.name}")

    @staticmethod
    def _members(addr_width, regmap):
        """The ports: the bus, the controller's inputs, then one or more per register."""
        code_bits = regmap["STATUS"].field("ERROR_CODE").width
        members = {
            "s_axil": In(AxiLiteSignature(addr_width, csr.REGISTER_BITS)),
            "busy": In(1),
            "run_done": In(1),
            "error_code": In(code_bits),
            "error_insn": In(csr.REGISTER_BITS),
        }

        def add(name, member):
            if name in members or name in ("clk", "rst"):
                raise ValueError(f"the register map gives two ports the name {name!r}")
            members[name] = member

        made_here = set(_RUN_STATE_FIELDS) | {n for c in regmap.counters for n in (c.lo, c.hi)}
        for reg in regmap:
            if reg.access is Access.W1P:
                for f in reg.fields:
                    add(f.name.lower(), Out(1))
            elif reg.access is Access.RW:
                add(reg.name.lower(), Out(csr.REGISTER_BITS, init=reg.reset))
            elif not reg.constant and reg.name not in made_here:
                add(reg.name.lower(), In(csr.REGISTER_BITS))
        for c in regmap.counters:
            add(c.name.lower(), In(2 * csr.REGISTER_BITS))
        return members

    addr_width = property(lambda self: self._addr_width)
    regmap = property(lambda self: self._map)

    def elaborate(self, platform):
        m = Module()
        bus, regmap = self.s_axil, self._map
        width = csr.REGISTER_BITS

        # ---- run state: sticky DONE/ERROR, the latched fault ---------------------------------
        status = Signal(register_layout(regmap["STATUS"]))
        done = Signal()
        error_code = Signal.like(self.error_code, name="error_code_q")
        error_insn = Signal(width, name="error_insn_q")
        # The start pulse is registered: in its cycle the controller has not yet raised busy.
        running = self.busy | self.start
        start_now, clear_now = Signal(), Signal()  # an accepted START / CLEAR write
        with m.If(self.run_done):
            m.d.sync += [
                done.eq(1),
                error_code.eq(self.error_code),
                error_insn.eq(Mux(self.error_code != 0, self.error_insn, 0)),
            ]
        with m.If(start_now | clear_now):  # after run_done: the later event wins
            m.d.sync += [done.eq(0), error_code.eq(0), error_insn.eq(0)]
        m.d.comb += [
            status.busy.eq(self.busy),
            status.done.eq(done),
            status.error.eq(error_code != 0),
            status.error_code.eq(error_code),
        ]

        # ---- counters: reading _LO latches _HI ----------------------------------------------
        snapshots = {c.name: Signal(width, name=f"{c.name.lower()}_hi_q") for c in regmap.counters}
        with m.If(clear_now):
            m.d.sync += [s.eq(0) for s in snapshots.values()]

        read_value, read_effect = {}, {}
        for c in regmap.counters:
            counter = getattr(self, c.name.lower())
            read_value[c.lo] = counter[:width]
            read_value[c.hi] = snapshots[c.name]
            read_effect[c.lo] = snapshots[c.name].eq(counter[width:])
        read_value["STATUS"] = status.as_value()
        read_value["ERROR_INSN"] = error_insn
        for reg in regmap:
            if reg.constant:
                read_value[reg.name] = Const(reg.reset, width)
            elif reg.access is Access.W1P:
                read_value[reg.name] = Const(0, width)
            elif reg.name not in read_value:  # RW storage or a plain RO input
                read_value[reg.name] = getattr(self, reg.name.lower())

        # ---- write channel: AW and W buffered, performed together ----------------------------
        aw_full, w_full = Signal(), Signal()
        aw_addr = Signal.like(bus.awaddr, name="aw_addr")
        w_data = Signal(width, name="w_data")
        w_strb = Signal(width // 8, name="w_strb")
        m.d.comb += [bus.awready.eq(~aw_full), bus.wready.eq(~w_full)]
        with m.If(bus.awvalid & ~aw_full):
            m.d.sync += [aw_full.eq(1), aw_addr.eq(bus.awaddr)]
        with m.If(bus.wvalid & ~w_full):
            m.d.sync += [w_full.eq(1), w_data.eq(bus.wdata), w_strb.eq(bus.wstrb)]
        with m.If(bus.bvalid & bus.bready):
            m.d.sync += bus.bvalid.eq(0)

        # Performed once both halves are held and the previous response is taken (or being so).
        perform = aw_full & w_full & (~bus.bvalid | bus.bready)
        lanes = Cat(w_strb[i].replicate(8) for i in range(width // 8))
        written = w_data & lanes
        for reg in regmap:
            if reg.access is Access.W1P:
                for f in reg.fields:
                    m.d.sync += getattr(self, f.name.lower()).eq(0)  # a pulse: one cycle only
        with m.If(perform):
            m.d.sync += [aw_full.eq(0), w_full.eq(0), bus.bvalid.eq(1)]
            m.d.sync += bus.bresp.eq(RESP_SLVERR)
            with m.Switch(aw_addr[2:]):
                for reg in regmap:
                    if reg.access is Access.RO:
                        continue  # SLVERR, as unmapped
                    with m.Case(reg.offset >> 2):
                        m.d.sync += bus.bresp.eq(RESP_OKAY)
                        if reg.access is Access.RW:
                            port = getattr(self, reg.name.lower())
                            m.d.sync += port.eq((port & ~lanes) | written)
                        else:
                            self._command(m, reg, written, running, start_now, clear_now)

        # ---- read channel: answered from a register, held until rready -----------------------
        m.d.comb += bus.arready.eq(~bus.rvalid)
        with m.If(bus.rvalid & bus.rready):
            m.d.sync += bus.rvalid.eq(0)
        with m.If(bus.arvalid & ~bus.rvalid):
            m.d.sync += [bus.rvalid.eq(1), bus.rdata.eq(0), bus.rresp.eq(RESP_SLVERR)]
            with m.Switch(bus.araddr[2:]):
                for reg in regmap:
                    with m.Case(reg.offset >> 2):
                        m.d.sync += [bus.rdata.eq(read_value[reg.name]), bus.rresp.eq(RESP_OKAY)]
                        if reg.name in read_effect:
                            m.d.sync += read_effect[reg.name]
        return m

    def _command(self, m, reg, written, running, start_now, clear_now):
        """A W1P write: a pulse per field written as 1; START and CLEAR only while idle."""
        bits = data.View(register_layout(reg), written)
        for f in reg.fields:
            name = f.name.lower()
            pulse = getattr(self, name)
            if f.name in ("START", "CLEAR") and reg.name == "CTRL":
                accepted = start_now if f.name == "START" else clear_now
                m.d.comb += accepted.eq(getattr(bits, name) & ~running)
                m.d.sync += pulse.eq(accepted)
            else:
                m.d.sync += pulse.eq(getattr(bits, name))
