"""``TimedDram``: a cocotb AXI4 slave that answers with exactly the timing of ``sim.dram``, so
that the RTL's cycle counters can be compared with the simulator's, cycle for cycle.

cocotbext-axi's ``AxiRam`` answers as fast as its coroutines allow (``hw.dma`` measures it:
L = 2), with no configurable latency; this slave keeps cocotbext-axi's ``Memory`` for the bytes
and drives the channels itself, one decision per clock edge. It implements INCR bursts of
``data_bytes`` beats with every ``wstrb`` set, which is all ``hw.dma`` issues. Random
back-pressure stays with ``AxiRam`` and its pause generators.
"""

from __future__ import annotations

from collections import deque

import cocotb
from cocotb.triggers import RisingEdge
from cocotbext.axi.memory import Memory

from sim.dram import DramTiming

__all__ = ["TimedDram"]


class TimedDram(Memory):
    """DRAM of ``size`` bytes on the AXI4 port ``<prefix>_<channel><signal>`` of ``dut``."""

    def __init__(self, dut, prefix: str, clock, reset, timing: DramTiming, size: int):
        super().__init__(size=size)
        self._dut, self._prefix = dut, prefix
        self._clock, self._reset, self._timing = clock, reset, timing
        self._task = cocotb.start_soon(self._run())

    def _sig(self, name: str):
        return getattr(self._dut, f"{self._prefix}_{name}")

    async def _run(self):
        s = self._sig
        d, delay = self._timing.data_bytes, self._timing.first_beat_delay
        for name in ("arready", "awready", "wready"):
            s(name).value = 1
        for name in ("rvalid", "bvalid", "rlast", "rresp", "bresp", "rid", "bid"):
            s(name).value = 0
        reads: deque[list[int]] = deque()  # [address, beats left, first cycle it may go]
        writes: deque[list[int]] = deque()  # [address, beats left]
        responses: deque[int] = deque()  # the cycle each B response becomes valid
        t = 0  # the cycle that just ended at this edge
        while True:
            await RisingEdge(self._clock)
            t += 1
            if int(self._reset.value):
                reads.clear(), writes.clear(), responses.clear()
                s("rvalid").value = 0
                s("bvalid").value = 0
                continue
            # what happened in cycle t
            if int(s("arvalid").value):
                beats = int(s("arlen").value) + 1
                reads.append([int(s("araddr").value), beats, t + delay])
            if reads and int(s("rvalid").value) and int(s("rready").value):
                burst = reads[0]
                burst[0] += d
                burst[1] -= 1
                if burst[1] == 0:
                    reads.popleft()
                    if reads:
                        reads[0][2] = max(reads[0][2], t + 1)
                else:
                    burst[2] = t + 1
            if int(s("awvalid").value):
                writes.append([int(s("awaddr").value), int(s("awlen").value) + 1])
            if int(s("wvalid").value):
                burst = writes[0]
                data = int(s("wdata").value).to_bytes(d, "little")
                self.write(burst[0], data)
                burst[0] += d
                burst[1] -= 1
                if burst[1] == 0:
                    writes.popleft()
                    responses.append(t + delay)
            if responses and int(s("bvalid").value):  # bready is always high
                responses.popleft()
            # what the slave offers in cycle t + 1
            now = t + 1
            if reads and reads[0][2] <= now:
                burst = reads[0]
                s("rdata").value = int.from_bytes(self.read(burst[0], d), "little")
                s("rlast").value = int(burst[1] == 1)
                s("rvalid").value = 1
            else:
                s("rvalid").value = 0
                s("rlast").value = 0
            s("bvalid").value = int(bool(responses) and responses[0] <= now)
