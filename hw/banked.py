"""A memory split into banks, each with one read and one write port (so each maps to a simple
dual-port block RAM), shared by several readers and writers with fixed priority.

Row ``a`` lives in bank ``a % banks`` at index ``a // banks``. A reader or writer raises ``req``
with its ``addr`` (and ``data``); ``grant`` says in the same cycle whether its bank's port is
its own: the lowest-numbered requester of a bank wins. A granted read's ``data`` is there in the
next cycle; a granted write takes effect at the end of the cycle. A requester that is not
granted keeps asking: its cycle is lost, nothing else happens. Reads return the row as it was
before a write to it in the same cycle.
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["BankedMemory"]


def _port(shape, addr_bits: int, write: bool) -> wiring.Signature:
    members = {"addr": In(addr_bits), "req": In(1), "grant": Out(1)}
    members["data"] = In(shape) if write else Out(shape)
    return wiring.Signature(members)


class BankedMemory(wiring.Component):
    """``depth`` rows of ``shape`` in ``banks`` banks; ``readers`` read and ``writers`` write
    ports, index 0 first in priority (see the module docstring)."""

    def __init__(self, shape, depth: int, *, banks: int, readers: int, writers: int):
        try:
            if not isinstance(banks, int) or banks < 1 or banks & (banks - 1):
                raise ValueError(f"banks must be a power of two, not {banks!r}")
            if not isinstance(depth, int) or depth < 1:
                raise ValueError(f"depth must be a positive integer, not {depth!r}")
        except ValueError:
            self._MustUse__silence = True  # rejected, so never elaborated: nothing to warn about
            raise
        self._shape, self._depth, self._banks = shape, depth, banks
        addr_bits = max(1, (depth - 1).bit_length())
        super().__init__(
            {
                "read": Out(_port(shape, addr_bits, write=False)).array(readers),
                "write": Out(_port(shape, addr_bits, write=True)).array(writers),
            }
        )

    def elaborate(self, platform):
        m = Module()
        banks = self._banks
        bank_bits = banks.bit_length() - 1
        rows = -(-self._depth // banks)
        read_grants = [[] for _ in self.read]
        write_grants = [[] for _ in self.write]
        outputs = []
        for b in range(banks):
            mem = Memory(shape=self._shape, depth=rows, init=[])
            m.submodules[f"bank{b}"] = mem
            rp, wp = mem.read_port(), mem.write_port()
            outputs.append(rp.data)
            taken = 0
            for i, r in enumerate(self.read):
                mine = r.req & (r.addr[:bank_bits] == b) if bank_bits else r.req
                grant = Signal(name=f"bank{b}_read{i}")
                m.d.comb += grant.eq(mine & ~taken)
                with m.If(grant):
                    m.d.comb += rp.addr.eq(r.addr >> bank_bits)
                read_grants[i].append(grant)
                taken = taken | mine
            taken = 0
            for i, w in enumerate(self.write):
                mine = w.req & (w.addr[:bank_bits] == b) if bank_bits else w.req
                grant = Signal(name=f"bank{b}_write{i}")
                m.d.comb += grant.eq(mine & ~taken)
                with m.If(grant):
                    m.d.comb += [wp.addr.eq(w.addr >> bank_bits), wp.data.eq(w.data), wp.en.eq(1)]
                write_grants[i].append(grant)
                taken = taken | mine
        data = Array(o.as_value() if hasattr(o, "as_value") else o for o in outputs)
        for i, r in enumerate(self.read):
            sel = Signal(range(banks), name=f"read{i}_bank")
            m.d.sync += sel.eq(r.addr[:bank_bits] if bank_bits else 0)
            m.d.comb += [r.grant.eq(_any(read_grants[i])), r.data.eq(data[sel])]
        for i, w in enumerate(self.write):
            m.d.comb += w.grant.eq(_any(write_grants[i]))
        return m


def _any(signals):
    total = 0
    for s in signals:
        total = total | s
    return total
