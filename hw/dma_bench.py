"""cocotb bench of the DMA (``hw.dma.Dma``) on its generated Verilog, against cocotbext-axi.

``run_dma_bench`` builds the Verilog with Icarus or Verilator in its own directory and runs
``dma_bench`` in the simulator with a spec (a dict, passed as JSON):

- ``data_bytes``, ``addr_width``, ``read_clients``, ``read_bursts`` (optional, 1 if absent):
  the DMA's parameters;
- ``memory``: ``"ram"`` for an ``AxiRam`` of ``mem_size`` bytes (it wraps addresses modulo its
  size and never answers with an error), or ``"mapped"`` for an ``AxiSlave`` over an
  ``AddressSpace`` with only ``[0, mem_size)`` mapped: every beat outside it is answered SLVERR
  (reads with zero data; writes are dropped);
- ``pause``: the probability of a pause cycle on every AXI channel of the slave (cocotbext-axi
  pause generators) and of an idle cycle of the bench's data consumers and producer;
- ``tamper`` (optional, ``"ram"`` only): a byte address whose memory byte the bench flips
  behind the model's back after reset, to show that the checks can fail;
- ``sequential``: jobs run one at a time; ``lanes``: lists of jobs, the lists run at once (read
  ports and the write port in parallel). A job is ``{"op": "read", "port": p, "addr", "beats"}``
  (optionally with ``extra_rows`` and ``stride``: a two-dimensional read) or ``{"op": "write",
  "addr", "beats"}``.

Read data is checked bit-exact against a shadow copy of the memory, and written data against
the memory after ``done``; a job without ``done`` within its cycle budget fails the run. The
results, per sequential job, are the cycles of its command's acceptance and of ``done``, its
``error`` and its bursts (address handshakes: byte address and beats), to check the timing
contract and the splitting in pytest.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ReadOnly, RisingEdge
from cocotbext.axi import AddressSpace, AxiBus, AxiRam, AxiSlave, MemoryRegion

from hw.rtl_bench import SIMULATORS, read_results, run_cocotb

__all__ = ["run_dma_bench"]

_SPEC_ENV, _RESULTS_ENV = "QACCEL_DMA_SPEC", "QACCEL_DMA_RESULTS"
PERIOD_NS = 10


def run_dma_bench(
    verilog: Path, top: str, spec: dict, *, simulator: str, build_dir: Path, waves: bool = False
) -> dict:
    """Run ``spec`` (see the module docstring) on ``top``; return what it measured. Raises
    AssertionError with the bench's message if a check fails."""
    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {', '.join(SIMULATORS)}, not {simulator!r}")
    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    spec_file, results_file = build_dir / "spec.json", build_dir / "results.json"
    spec_file.write_text(json.dumps(spec))
    results_file.unlink(missing_ok=True)
    env = {_SPEC_ENV: str(spec_file), _RESULTS_ENV: str(results_file)}
    run_cocotb(
        verilog,
        top,
        "hw.dma_bench",
        simulator=simulator,
        build_dir=build_dir,
        extra_env=env,
        waves=waves,
    )
    return read_results(results_file, simulator, build_dir)


def _now() -> int:
    return int(get_sim_time(unit="ns")) // PERIOD_NS


class _Port:
    """The Verilog signals of one DMA port (prefix ``read__0``, ``write``, ...) as attributes
    ``cmd_valid``, ``cmd_ready``, ``cmd_payload``, ``data_valid``, ..., ``done``, ``error``."""

    def __init__(self, dut, prefix):
        for name in ("cmd__valid", "cmd__ready", "cmd__payload", "done", "error"):
            setattr(self, name.replace("__", "_"), getattr(dut, f"{prefix}__{name}"))
        for name in ("valid", "ready", "payload"):
            setattr(self, f"data_{name}", getattr(dut, f"{prefix}__data__{name}"))


class _Bench:
    def __init__(self, dut, spec):
        self.dut, self.spec = dut, spec
        self.db, self.aw = spec["data_bytes"], spec["addr_width"]
        self.rng = random.Random(spec["seed"])
        self.pause = spec["pause"]
        self.reads = [_Port(dut, f"read__{p}") for p in range(spec["read_clients"])]
        self.write_port = _Port(dut, "write")
        size = spec["mem_size"]
        self.shadow = bytearray(self.rng.randbytes(size))
        bus = AxiBus.from_prefix(dut, "m_axi_")
        if spec["memory"] == "ram":
            self.ram = AxiRam(bus, dut.clk, dut.rst, size=size)
            self.ram.write(0, bytes(self.shadow))
            self.region = None
            slave = self.ram
        else:
            self.region = MemoryRegion(size)
            self.region.mem[:] = bytes(self.shadow)
            space = AddressSpace(2**self.aw)
            space.register_region(self.region, 0)
            slave = AxiSlave(bus, dut.clk, dut.rst, target=space)
        self.mapped = size
        if self.pause:
            w, r = slave.write_if, slave.read_if
            for channel in (w.aw_channel, w.w_channel, w.b_channel, r.ar_channel, r.r_channel):
                channel.set_pause_generator(self._pauses())
        self.bursts = {"ar": [], "aw": []}
        self.competing = 0  # beats of the other lanes' jobs
        logging.getLogger(f"cocotb.{dut._name}").setLevel(logging.WARNING)  # a line per burst

    def _pauses(self):
        rng = random.Random(self.rng.getrandbits(32))
        while True:
            yield rng.random() < self.pause

    def _go(self) -> bool:
        return self.rng.random() >= self.pause

    def _budget(self, beats) -> int:
        """Cycles a job may take: its own beats, and those of the jobs it competes with."""
        beats += self.competing
        return 200 + 20 * beats if self.pause else 100 + 4 * beats

    async def reset(self):
        dut = self.dut
        cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
        for port in [*self.reads, self.write_port]:
            port.cmd_valid.value = 0
        for port in self.reads:
            port.data_ready.value = 0
        self.write_port.data_valid.value = 0
        dut.rst.value = 1
        for _ in range(3):
            await RisingEdge(dut.clk)
        dut.rst.value = 0
        cocotb.start_soon(self._monitor())

    async def _monitor(self):
        """Every address handshake, for the splitting check."""
        dut = self.dut
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            for ch in ("ar", "aw"):
                if int(getattr(dut, f"m_axi__{ch}valid").value) and int(
                    getattr(dut, f"m_axi__{ch}ready").value
                ):
                    addr = int(getattr(dut, f"m_axi__{ch}addr").value)
                    beats = int(getattr(dut, f"m_axi__{ch}len").value) + 1
                    self.bursts[ch].append((_now(), addr, beats))

    def _expected(self, addr, beats, rows=1, stride=0) -> tuple[list[int], bool]:
        """The words a read returns and whether it must report an error."""
        db, words, error = self.db, [], False
        for j in range(beats * rows):
            a = addr + j // beats * stride + j % beats * db
            if self.region is None:
                a %= len(self.shadow)
            if a + db > self.mapped:
                words.append(0)
                error = True
            else:
                words.append(int.from_bytes(self.shadow[a : a + db], "little"))
        return words, error

    async def run_job(self, job) -> dict:
        if job["op"] == "read":
            rows, stride = job.get("extra_rows", 0), job.get("stride", 0)
            return await self.read(job["port"], job["addr"], job["beats"], rows, stride)
        return await self.write(job["addr"], job["beats"])

    async def read(self, p: int, addr: int, beats: int, extra_rows=0, stride=0) -> dict:
        port, dut = self.reads[p], self.dut
        expected, expect_error = self._expected(addr, beats, extra_rows + 1, stride)
        aw = self.aw
        payload = addr | beats << aw | extra_rows << (aw + 16) | stride << (aw + 32)
        beats *= extra_rows + 1
        words, accepted, done, start = [], None, None, _now()
        while done is None:
            await RisingEdge(dut.clk)
            port.cmd_valid.value = int(accepted is None)
            port.cmd_payload.value = payload
            port.data_ready.value = int(self._go())
            await ReadOnly()
            cycle = _now()
            if accepted is None and int(port.cmd_ready.value):
                accepted = cycle
            if int(port.data_valid.value) and int(port.data_ready.value):
                words.append(int(port.data_payload.value))
            if accepted is not None and int(port.done.value):
                done, error = cycle, int(port.error.value)
            if cycle - start > self._budget(beats):
                raise AssertionError(
                    f"read port {p} at {addr:#x}, {beats} beats: no done after "
                    f"{cycle - start} cycles ({len(words)} beats came)"
                )
        await RisingEdge(dut.clk)
        port.cmd_valid.value = 0
        port.data_ready.value = 0
        for j, (got, want) in enumerate(zip(words, expected, strict=False)):
            if got != want:
                raise AssertionError(
                    f"read port {p} at {addr:#x}: beat {j} is {got:#x}, expected {want:#x}"
                )
        if len(words) != beats:
            raise AssertionError(f"read port {p} at {addr:#x}: {len(words)} of {beats} beats")
        if error != expect_error:
            raise AssertionError(
                f"read port {p} at {addr:#x}: error {error}, not {int(expect_error)}"
            )
        return {"accepted": accepted, "done": done, "error": error}

    async def write(self, addr: int, beats: int) -> dict:
        port, dut, db = self.write_port, self.dut, self.db
        payloads = [self.rng.getrandbits(8 * db) for _ in range(beats)]
        sent, offered, accepted, done, start = 0, False, None, None, _now()
        while done is None:
            await RisingEdge(dut.clk)
            port.cmd_valid.value = int(accepted is None)
            port.cmd_payload.value = addr | beats << self.aw
            offered = sent < beats and (offered or self._go())  # valid stays up until taken
            port.data_valid.value = int(offered)
            if offered:
                port.data_payload.value = payloads[sent]
            await ReadOnly()
            cycle = _now()
            if accepted is None and int(port.cmd_ready.value):
                accepted = cycle
            if offered and int(port.data_ready.value):
                sent, offered = sent + 1, False
            if accepted is not None and int(port.done.value):
                done, error = cycle, int(port.error.value)
            if cycle - start > self._budget(beats):
                raise AssertionError(
                    f"write at {addr:#x}, {beats} beats: no done after {cycle - start} cycles "
                    f"({sent} beats taken)"
                )
        await RisingEdge(dut.clk)
        port.cmd_valid.value = 0
        port.data_valid.value = 0
        if sent != beats:
            raise AssertionError(f"write at {addr:#x}: done after {sent} of {beats} beats")
        expect_error = False
        for j, value in enumerate(payloads):
            a = addr + j * db
            if self.region is None:
                a %= len(self.shadow)
            if a + db > self.mapped:
                expect_error = True
            else:
                self.shadow[a : a + db] = value.to_bytes(db, "little")
        if error != expect_error:
            raise AssertionError(f"write at {addr:#x}: error {error}, not {int(expect_error)}")
        self.check_memory(f"after the write at {addr:#x}, {beats} beats")
        return {"accepted": accepted, "done": done, "error": error}

    def check_memory(self, when: str):
        """The whole memory against the shadow: written where it should be, nowhere else."""
        mem = bytes(self.region.mem) if self.region is not None else self.ram.read(0, self.mapped)
        if mem != bytes(self.shadow):
            first = next(i for i, (a, b) in enumerate(zip(mem, self.shadow, strict=True)) if a != b)
            raise AssertionError(
                f"{when}: memory differs from the model first at byte {first:#x} "
                f"({mem[first]:#04x}, expected {self.shadow[first]:#04x})"
            )


@cocotb.test()
async def dma_bench(dut):
    """The spec's sequential jobs, then its lanes at once; results to $QACCEL_DMA_RESULTS."""
    spec = json.loads(Path(os.environ[_SPEC_ENV]).read_text())
    bench = _Bench(dut, spec)
    await bench.reset()
    if spec.get("tamper") is not None:
        where = spec["tamper"]
        bench.ram.write(where, bytes([bench.ram.read(where, 1)[0] ^ 0xFF]))
    sequential = []
    for job in spec["sequential"]:
        before = {ch: len(b) for ch, b in bench.bursts.items()}
        result = await bench.run_job(job)
        ch = "ar" if job["op"] == "read" else "aw"
        result["bursts"] = [[a, n] for _, a, n in bench.bursts[ch][before[ch] :]]
        sequential.append(result)

    async def lane(jobs):
        return [await bench.run_job(job) for job in jobs]

    bench.competing = sum(
        job["beats"] * (job.get("extra_rows", 0) + 1) for jobs in spec["lanes"] for job in jobs
    )
    tasks = [cocotb.start_soon(lane(jobs)) for jobs in spec["lanes"]]
    lanes = [await task for task in tasks]
    bench.check_memory("at the end")
    Path(os.environ[_RESULTS_ENV]).write_text(
        json.dumps({"sequential": sequential, "lanes": lanes})
    )
