"""The DMA engines: every DRAM transfer of the accelerator over one AXI4 master port.

``ReadEngine`` serves ``clients`` read ports (instruction fetch, LOAD, ...) on the AR/R half of
the port, ``WriteEngine`` one write port (STORE) on the AW/W/B half, and ``Dma`` joins both
behind one full AXI4 master port ``m_axi`` (``hw.axi``: Verilog ports ``m_axi__araddr``, ...;
cocotbext-axi: ``AxiBus.from_prefix(dut, "m_axi_")``).

Ports (``read_port_signature``, ``write_port_signature``; seen from the engine):

- ``cmd`` (in, stream): ``addr`` (``addr_width`` bits, a byte address; its low
  log2(data_bytes) bits are ignored, i.e. taken as zero) and ``beats`` (16 bits, the number of
  ``data_bytes``-wide beats, 1..65535; 0 finishes at once without bus traffic). A read command
  (``read_command_layout``) may be two-dimensional: ``extra_rows`` more rows of ``beats``
  beats follow the first, each ``stride`` bytes after the one before (zero: a plain read), so
  that a strided transfer's bursts follow each other without a command between them.
- ``data`` (stream of ``data_bytes * 8`` bits; out of a read port, into the write port): the
  beats in address order (row after row), byte ``i`` of a beat in bits ``8i..8i+7`` (AXI's
  little-endian lanes). No beat is marked last: count them, or wait for ``done``.
- ``done`` (out): high for one cycle when the command has finished: every read beat was
  delivered, or every write burst was answered.
- ``error`` (out): valid while ``done`` is high (and held until the next command is accepted):
  some response of the command was not OKAY (SLVERR, DECERR, or an EXOKAY that a normal access
  cannot get). Read beats are delivered either way, so a consumer never hangs.

Bursts: INCR, ``arsize``/``awsize`` = log2(data_bytes), at most ``max_burst`` beats and never
across a 4 KiB boundary or a row's end (``split_bursts`` is the rule in Python, per row). Up to
``read_bursts`` read bursts are in flight (all with ID 0, so the slave answers them in order);
write bursts follow each other without waiting for their B responses (which are counted).
Every ID is 0; ``*cache`` = 0b0011 (normal, non-cacheable, bufferable), ``*prot`` = 0 (data,
secure, unprivileged), ``*lock`` = ``*qos`` = 0; ``wstrb`` is all ones.

Timing contract. Cycle 0 is the cycle in which a command is accepted (``cmd.valid`` and
``cmd.ready`` both high); ``cmd.ready`` is high whenever the port has no command in progress,
that is from reset and again from the cycle in which ``done`` is high.

Read engine, rules that hold against any slave. A burst is *in flight* from the cycle after
its AR handshake through the cycle of its R handshake with ``rlast``; N = ``read_bursts``.

1. In a cycle in which no AR waits for its handshake and fewer than N bursts are in flight,
   the lowest-numbered port with a command in progress and beats left to request is granted
   its next burst (fixed priority, per burst), and ``arvalid`` is high from that cycle until
   the AR handshake. A new command's first burst is thus granted in cycle 1 unless N bursts
   are in flight or another port wins the grant; a port's next burst can follow in the cycle
   after the handshake.
2. R beats go to the ``data`` stream of the oldest burst in flight's port (``data.valid`` =
   ``rvalid``, ``rready`` = that port's ``data.ready``).
3. A burst stops being in flight after its R handshake with ``rlast``; if it was its
   command's last, ``done`` is high in the next cycle.

So against a slave that raises ``arready`` whenever ``arvalid`` is high, gives a burst's first
R beat L >= 1 cycles after the AR handshake but no sooner than the cycle after the previous
burst's last beat, and one beat per cycle after it, and a consumer that is always ready, one
command of bursts 1..b (``len_k`` beats) has AR handshakes in cycles a_1 = 1 and a_(k+1) =
max(a_k + 1, e_(k+1-N) + 1) (the second term only from k + 1 > N), with e_k the cycle of
burst k's last beat: e_k = max(a_k + L, e_(k-1) + 1) + len_k - 1; ``done`` is in cycle
e_b + 1, and the next command can be accepted in that same cycle. With N = 1 that is a_1 = 1,
a_(k+1) = a_k + L + len_k and, for n beats, ``done`` in cycle **b·L + n + 1** (each burst
costs L cycles besides its beats); with N bursts covering the latency (N - 1 bursts' beats
>= L) the beats follow each other and ``done`` is in cycle L + n + 1. From 16-byte beats up,
the 4 KiB rule keeps bursts to 4096 / data_bytes beats.

Write engine, rules that hold against any slave:

1. ``awvalid`` is high from cycle 1, and again from the cycle after each burst's last W beat
   while the command has beats left, until the AW handshake.
2. From the cycle after the AW handshake, W beats come from the ``data`` stream (``wvalid`` =
   ``data.valid``, ``data.ready`` = ``wready``), ``wlast`` on the burst's last beat.
3. ``bready`` is always high. ``done`` is high in the first cycle in which all of the command's
   bursts were issued and all their B responses had been received (the cycle after the last
   B handshake).

So against a slave with ``awready`` and ``wready`` always high that answers a burst's B L_B >= 1
cycles after its last W beat, and a producer that is always valid: burst k has its AW handshake
in cycle a_k, with a_1 = 1 and a_(k+1) = a_k + len_k + 1, and its W beats in cycles
a_k + 1 .. a_k + len_k. A write of n beats in b bursts has its last W beat in cycle n + b and
``done`` in cycle **n + b + L_B + 1**.

A command of 0 beats has ``done`` (with ``error`` low) in cycle 1 and makes no bus traffic.
cocotbext-axi's ``AxiRam`` without pause generators behaves as L = 2 and L_B = 2, with
``arready``, ``awready`` and ``wready`` always high (measured in ``tests/test_dma.py``).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.axi import (
    Burst,
    Resp,
    axi4_read_signature,
    axi4_signature,
    axi4_write_signature,
    check_data_bytes,
)
from sim.dram import PAGE_BYTES, split_bursts

__all__ = [
    "MAX_BEATS",
    "PAGE_BYTES",
    "Dma",
    "ReadEngine",
    "WriteEngine",
    "command_layout",
    "read_command_layout",
    "read_port_signature",
    "split_bursts",
    "write_port_signature",
]

MAX_BEATS = 2**16 - 1
CACHE = 0b0011  # normal, non-cacheable, bufferable: what a DMA into plain DRAM should say


def command_layout(addr_width: int) -> data.StructLayout:
    """A transfer: ``addr`` (byte address, bits 0..addr_width-1), then ``beats`` (16 bits)."""
    return data.StructLayout({"addr": addr_width, "beats": 16})


def read_command_layout(addr_width: int) -> data.StructLayout:
    """A read: ``addr`` and ``beats`` as in ``command_layout`` for its first row, then
    ``extra_rows`` (16 bits) more rows of ``beats`` beats, each ``stride`` bytes (``addr_width``
    bits, low log2(data_bytes) bits ignored) after the one before; all zero is a plain read."""
    return data.StructLayout(
        {"addr": addr_width, "beats": 16, "extra_rows": 16, "stride": addr_width}
    )


def read_port_signature(addr_width: int, data_bytes: int) -> wiring.Signature:
    """One read client, seen from the engine: ``cmd`` in, ``data`` out, ``done``, ``error``."""
    return wiring.Signature(
        {
            "cmd": In(stream.Signature(read_command_layout(addr_width))),
            "data": Out(stream.Signature(8 * data_bytes)),
            "done": Out(1),
            "error": Out(1),
        }
    )


def write_port_signature(addr_width: int, data_bytes: int) -> wiring.Signature:
    """The write client, seen from the engine: ``cmd`` and ``data`` in, ``done``, ``error``."""
    return wiring.Signature(
        {
            "cmd": In(stream.Signature(command_layout(addr_width))),
            "data": In(stream.Signature(8 * data_bytes)),
            "done": Out(1),
            "error": Out(1),
        }
    )


def _check(data_bytes, addr_width, max_burst, bursts=1):
    check_data_bytes(data_bytes)
    if not isinstance(bursts, int) or not 1 <= bursts <= 64:
        raise ValueError(f"read_bursts must be an integer in 1..64, not {bursts!r}")
    if not isinstance(addr_width, int) or not 12 <= addr_width <= 64:
        raise ValueError(f"addr_width must be an integer in 12..64, not {addr_width!r}")
    if not isinstance(max_burst, int) or not 1 <= max_burst <= 256:
        raise ValueError(f"max_burst must be an integer in 1..256, not {max_burst!r}")


class _Engine(wiring.Component):
    """What both engines share: parameters, the burst-length rule, the constant AXI fields."""

    def __init__(self, members, data_bytes, addr_width, max_burst):
        self._data_bytes, self._addr_width, self._max_burst = data_bytes, addr_width, max_burst
        self._shift = data_bytes.bit_length() - 1  # log2(data_bytes): byte -> beat address
        super().__init__(members)

    data_bytes = property(lambda self: self._data_bytes)
    addr_width = property(lambda self: self._addr_width)
    max_burst = property(lambda self: self._max_burst)

    def _word_addr(self, name):
        return Signal(self._addr_width - self._shift, name=name)

    def _burst_length(self, m, word_addr, left, prefix):
        """min(beats left, max_burst, beats to the next 4 KiB boundary), from registers only."""
        page_beats = PAGE_BYTES // self._data_bytes
        to_page = Signal(range(page_beats + 1), name=f"{prefix}_to_page")
        length = Signal(range(257), name=f"{prefix}_length")
        m.d.comb += to_page.eq(page_beats - word_addr[: page_beats.bit_length() - 1])
        cap = to_page
        if self._max_burst < page_beats:  # from 16-byte beats up, the page is always tighter
            cap = Mux(to_page < self._max_burst, to_page, self._max_burst)
        m.d.comb += length.eq(Mux(left < cap, left, cap))
        return length

    def _address_fields(self, m, prefix, word_addr, length):
        """Drive the address channel ``prefix`` (``ar`` or ``aw``) for one INCR burst."""
        axi = self.m_axi
        field = lambda name: getattr(axi, prefix + name)  # noqa: E731
        m.d.comb += [
            field("id").eq(0),
            field("addr").eq(Cat(Const(0, self._shift), word_addr)),
            field("len").eq(length - 1),
            field("size").eq(self._shift),
            field("burst").eq(Burst.INCR),
            field("lock").eq(0),
            field("cache").eq(CACHE),
            field("prot").eq(0),
            field("qos").eq(0),
        ]


class ReadEngine(_Engine):
    """Reads for ``clients`` ports over one AR/R channel pair (see the module docstring).

    Members: ``m_axi`` (``hw.axi.axi4_read_signature``) and ``read``, an array of ``clients``
    ports of ``read_port_signature``; port 0 has the highest priority. At most ``bursts``
    bursts are in flight."""

    def __init__(
        self,
        data_bytes: int,
        *,
        addr_width: int = 32,
        max_burst: int = 256,
        clients: int = 1,
        bursts: int = 1,
    ):
        try:
            _check(data_bytes, addr_width, max_burst, bursts)
            if not isinstance(clients, int) or clients < 1:
                raise ValueError(f"clients must be a positive integer, not {clients!r}")
        except ValueError:
            self._MustUse__silence = True  # rejected, so never elaborated: nothing to warn about
            raise
        self._clients, self._bursts = clients, bursts
        super().__init__(
            {
                "m_axi": Out(axi4_read_signature(addr_width, data_bytes)),
                "read": Out(read_port_signature(addr_width, data_bytes)).array(clients),
            },
            data_bytes,
            addr_width,
            max_burst,
        )

    clients = property(lambda self: self._clients)
    bursts = property(lambda self: self._bursts)

    def elaborate(self, platform):
        m = Module()
        axi, n, depth = self.m_axi, self._clients, self._bursts
        busy = Signal(n)  # a command in progress, per port
        err = Signal(n)
        done = Signal(n)
        word = lambda name: [self._word_addr(f"{name}{i}") for i in range(n)]  # noqa: E731
        addr = Array(word("addr"))  # the next burst's beat address
        row = Array(word("row"))  # the current row's first beat address
        stride = Array(word("stride"))
        beats = Array(Signal(16, name=f"beats{i}") for i in range(n))  # per row
        left = Array(Signal(16, name=f"left{i}") for i in range(n))  # of the row, not requested
        more = Array(Signal(16, name=f"more{i}") for i in range(n))  # rows after this one
        pending = Signal(n)  # ports with a command in progress and beats left to request
        grant = Signal(range(n))  # the lowest-numbered pending port
        owner = Signal(range(n))  # the port whose AR waits for its handshake
        sel = Signal(range(n))  # the port whose burst the AR channel offers

        m.d.sync += done.eq(0)
        for i, port in enumerate(self.read):
            cmd = port.cmd
            m.d.comb += [
                pending[i].eq(busy[i] & (left[i] != 0)),
                cmd.ready.eq(~busy[i]),
                port.done.eq(done[i]),
                port.error.eq(err[i]),
                port.data.payload.eq(axi.rdata),
            ]
            with m.If(cmd.valid & cmd.ready):
                p = cmd.payload
                first = p.addr[self._shift :]
                m.d.sync += [
                    addr[i].eq(first),
                    row[i].eq(first),
                    stride[i].eq(p.stride[self._shift :]),
                    beats[i].eq(p.beats),
                    left[i].eq(p.beats),
                    more[i].eq(p.extra_rows),
                    err[i].eq(0),
                    busy[i].eq(p.beats != 0),
                    done[i].eq(p.beats == 0),
                ]
        for i in reversed(range(n)):  # the last assignment wins: the lowest index
            with m.If(pending[i]):
                m.d.comb += grant.eq(i)

        # the bursts in flight (AR taken, rlast not yet), oldest first: (port, command's last)
        flight = Array(Signal(range(n), name=f"flight{i}") for i in range(depth))
        ends = Array(Signal(name=f"ends{i}") for i in range(depth))
        head = Signal(range(depth))
        tail = Signal(range(depth))
        count = Signal(range(depth + 1))

        length = self._burst_length(m, addr[sel], left[sel], "ar")
        self._address_fields(m, "ar", addr[sel], length)
        ar_take = axi.arvalid & axi.arready
        row_end = left[sel] == length
        last = row_end & (more[sel] == 0)
        with m.If(ar_take):
            m.d.sync += [
                flight[tail].eq(sel),
                ends[tail].eq(last),
                tail.eq(Mux(tail == depth - 1, 0, tail + 1)),
            ]
            with m.If(row_end & ~last):  # on to the next row
                m.d.sync += [
                    row[sel].eq(row[sel] + stride[sel]),
                    addr[sel].eq(row[sel] + stride[sel]),
                    left[sel].eq(beats[sel]),
                    more[sel].eq(more[sel] - 1),
                ]
            with m.Else():
                m.d.sync += [addr[sel].eq(addr[sel] + length), left[sel].eq(left[sel] - length)]

        with m.FSM():
            with m.State("OPEN"):
                # The grant is combinational so that a burst goes out in the first cycle with
                # room; if the slave is not ready, HOLD keeps it with the grant registered.
                m.d.comb += [sel.eq(grant), axi.arvalid.eq(pending.any() & (count < depth))]
                with m.If(axi.arvalid & ~axi.arready):
                    m.d.sync += owner.eq(grant)
                    m.next = "HOLD"
            with m.State("HOLD"):
                m.d.comb += [sel.eq(owner), axi.arvalid.eq(1)]
                with m.If(axi.arready):
                    m.next = "OPEN"

        # R beats go to the oldest burst's port, in order (one ID: the slave answers in order)
        current = flight[head]
        some = count != 0
        m.d.comb += axi.rready.eq(some & Array(p.data.ready for p in self.read)[current])
        for i, port in enumerate(self.read):
            m.d.comb += port.data.valid.eq(axi.rvalid & some & (current == i))
        r_last = Signal()
        m.d.comb += r_last.eq(axi.rvalid & axi.rready & axi.rlast)
        with m.If(axi.rvalid & axi.rready & (axi.rresp != Resp.OKAY)):
            m.d.sync += err.bit_select(current, 1).eq(1)
        with m.If(r_last):
            m.d.sync += head.eq(Mux(head == depth - 1, 0, head + 1))
            with m.If(ends[head]):
                m.d.sync += [
                    done.bit_select(current, 1).eq(1),
                    busy.bit_select(current, 1).eq(0),
                ]
        m.d.sync += count.eq(count + ar_take - r_last)
        return m


class WriteEngine(_Engine):
    """Writes for one port over one AW/W/B channel set (see the module docstring).

    Members: ``m_axi`` (``hw.axi.axi4_write_signature``) and ``write``
    (``write_port_signature``)."""

    def __init__(self, data_bytes: int, *, addr_width: int = 32, max_burst: int = 256):
        try:
            _check(data_bytes, addr_width, max_burst)
        except ValueError:
            self._MustUse__silence = True  # rejected, so never elaborated: nothing to warn about
            raise
        super().__init__(
            {
                "m_axi": Out(axi4_write_signature(addr_width, data_bytes)),
                "write": Out(write_port_signature(addr_width, data_bytes)),
            },
            data_bytes,
            addr_width,
            max_burst,
        )

    def elaborate(self, platform):
        m = Module()
        axi, port = self.m_axi, self.write
        busy = Signal()
        err = Signal()
        addr = self._word_addr("addr")
        left = Signal(16)  # beats not yet requested
        outstanding = Signal(16)  # bursts issued whose B has not come (at most 65535)
        burst_left = Signal(range(self._max_burst + 1))  # W beats left in the current burst

        # From registers alone, so neither depends on an input combinationally; the next
        # command may come in the done cycle, as on a read port.
        finished = Signal()
        m.d.comb += [
            port.cmd.ready.eq(~busy | finished),
            port.done.eq(finished),
            port.error.eq(err),
        ]
        with m.If(finished):
            m.d.sync += busy.eq(0)
        with m.If(port.cmd.valid & port.cmd.ready):  # after the line above: it wins
            m.d.sync += [
                busy.eq(1),
                addr.eq(port.cmd.payload.addr[self._shift :]),
                left.eq(port.cmd.payload.beats),
                err.eq(0),
            ]

        aw_take = axi.awvalid & axi.awready
        b_take = axi.bvalid & axi.bready
        m.d.comb += axi.bready.eq(1)
        m.d.sync += outstanding.eq(outstanding + aw_take - b_take)
        with m.If(b_take & (axi.bresp != Resp.OKAY)):
            m.d.sync += err.eq(1)

        length = self._burst_length(m, addr, left, "aw")
        self._address_fields(m, "aw", addr, length)
        m.d.comb += [axi.wdata.eq(port.data.payload), axi.wstrb.eq(-1)]
        with m.FSM():
            with m.State("ADDR"):
                m.d.comb += axi.awvalid.eq(busy & (left != 0))
                with m.If(aw_take):
                    m.d.sync += [
                        addr.eq(addr + length),
                        left.eq(left - length),
                        burst_left.eq(length),
                    ]
                    m.next = "DATA"
                m.d.comb += finished.eq(busy & (left == 0) & (outstanding == 0))
            with m.State("DATA"):
                m.d.comb += [
                    axi.wvalid.eq(port.data.valid),
                    port.data.ready.eq(axi.wready),
                    axi.wlast.eq(burst_left == 1),
                ]
                with m.If(axi.wvalid & axi.wready):
                    m.d.sync += burst_left.eq(burst_left - 1)
                    with m.If(burst_left == 1):
                        m.next = "ADDR"
        return m


class Dma(wiring.Component):
    """``ReadEngine`` and ``WriteEngine`` behind one AXI4 master port (module docstring).

    Members: ``m_axi`` (``hw.axi.axi4_signature``), ``read`` (an array of ``read_clients``
    ports of ``read_port_signature``, port 0 first in priority) and ``write``
    (``write_port_signature``)."""

    def __init__(
        self,
        data_bytes: int,
        *,
        addr_width: int = 32,
        max_burst: int = 256,
        read_clients: int = 1,
        read_bursts: int = 1,
    ):
        try:
            _check(data_bytes, addr_width, max_burst, read_bursts)
            if not isinstance(read_clients, int) or read_clients < 1:
                raise ValueError(f"read_clients must be a positive integer, not {read_clients!r}")
        except ValueError:
            self._MustUse__silence = True  # rejected, so never elaborated: nothing to warn about
            raise
        self._params = {"addr_width": addr_width, "max_burst": max_burst}
        self._data_bytes, self._read_clients = data_bytes, read_clients
        self._read_bursts = read_bursts
        super().__init__(
            {
                "m_axi": Out(axi4_signature(addr_width, data_bytes)),
                "read": Out(read_port_signature(addr_width, data_bytes)).array(read_clients),
                "write": Out(write_port_signature(addr_width, data_bytes)),
            }
        )

    data_bytes = property(lambda self: self._data_bytes)
    addr_width = property(lambda self: self._params["addr_width"])
    max_burst = property(lambda self: self._params["max_burst"])
    read_clients = property(lambda self: self._read_clients)
    read_bursts = property(lambda self: self._read_bursts)

    def elaborate(self, platform):
        m = Module()
        m.submodules.reader = reader = ReadEngine(
            self._data_bytes,
            clients=self._read_clients,
            bursts=self._read_bursts,
            **self._params,
        )
        m.submodules.writer = writer = WriteEngine(self._data_bytes, **self._params)
        for engine in (reader, writer):
            for name, member in engine.m_axi.signature.members.items():
                outer, inner = getattr(self.m_axi, name), getattr(engine.m_axi, name)
                m.d.comb += outer.eq(inner) if member.flow == Out else inner.eq(outer)
        for outer, inner in zip(self.read, reader.read, strict=True):
            wiring.connect(m, wiring.flipped(outer), inner)
        wiring.connect(m, wiring.flipped(self.write), writer.write)
        return m
