"""The DRAM as the accelerator's AXI4 master sees it: the burst rule and the timing model.

One model serves the simulator's engines and the RTL benches (``hw.dram_slave`` implements it
as a cocotb AXI4 slave), so that simulated and RTL cycle counts can be compared exactly. It has
one beat of ``dram.bytes_per_cycle`` bytes per cycle (the bus width) and ``L`` =
``dram.latency_cycles``:

- **Reads.** ``arready`` is always high. The first R beat of a burst whose AR handshake is in
  cycle a is valid from cycle a + 1 + L; after each R handshake the burst's next beat is valid
  in the next cycle (``rvalid`` holds while ``rready`` is low). Bursts are answered in order.
- **Writes.** ``awready`` and ``wready`` are always high. A burst's B response is valid in cycle
  w + 1 + L, w the cycle of its last W handshake (``wlast``); responses come in order.
- Responses are OKAY.

A real memory controller varies; a bench that wants it uses random back-pressure instead (then
outputs still match and cycle counts may differ).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_BURST", "PAGE_BYTES", "DramTiming", "split_bursts"]

PAGE_BYTES = 4096  # no AXI burst may cross a 4 KiB boundary
MAX_BURST = 256  # AXI4 INCR bursts: at most 256 beats


def split_bursts(
    addr: int, beats: int, data_bytes: int, max_burst: int = MAX_BURST
) -> list[tuple[int, int]]:
    """The bursts a transfer of ``beats`` beats from byte ``addr`` is issued as, in order:
    (byte address, beats) each; the low address bits below a beat are taken as zero."""
    addr -= addr % data_bytes
    bursts = []
    while beats:
        to_page = (PAGE_BYTES - addr % PAGE_BYTES) // data_bytes
        length = min(beats, max_burst, to_page)
        bursts.append((addr, length))
        addr += length * data_bytes
        beats -= length
    return bursts


@dataclass(frozen=True)
class DramTiming:
    """The timing model of the module docstring for one configuration."""

    data_bytes: int  # bytes per beat, one beat per cycle
    latency: int  # L: cycles between an AR handshake (or a last W beat) and its answer

    @classmethod
    def of(cls, cfg) -> DramTiming:
        return cls(cfg.dram.bytes_per_cycle, cfg.dram.latency_cycles)

    @property
    def first_beat_delay(self) -> int:
        """Cycles from an AR handshake to its first R beat."""
        return 1 + self.latency

    @property
    def response_delay(self) -> int:
        """Cycles from a burst's last W beat to its B response."""
        return 1 + self.latency
