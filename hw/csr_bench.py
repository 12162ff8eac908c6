"""The control registers' Verilog driven as a host would: cocotbext-axi's ``AxiLiteMaster`` on
``s_axil``, offsets and fields from ``qaccel.csr`` only, and a small model of the controller on
the other side (``ControllerModel``: runs, faults, counters).

``run_csr_bench`` writes the Verilog, builds it with Icarus or Verilator in its own directory
(cocotb's runner) and runs the cocotb tests of this module there:

- ``host_driver``: every register, a good and a faulting run, CLEAR, SLVERR on unmapped and
  read-only offsets; once with the bus at full speed, then again after a reset with random pauses
  on all five channels, which must give the same transcript;
- ``stalled_response_times_out``: a response the master never takes ends in a timeout, not a
  hang (every wait in this bench is bounded the same way).

Note on cocotbext-axi 0.1.28: ``read``/``write`` return a response object whose ``resp`` holds
the slave's answer; they do not raise on SLVERR, and ``read_dword``/``write_dword`` drop it
altogether. A driver that cares about errors must use ``read``/``write`` (``host_driver``
checks this).
"""

from __future__ import annotations

import os
import random
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge, SimTimeoutError, with_timeout
from cocotbext.axi import AxiLiteBus, AxiLiteMaster, AxiResp

from hw.rtl_bench import SIMULATORS, run_cocotb
from qaccel import csr

__all__ = ["ControllerModel", "run_csr_bench"]

# cocotbext-axi 0.1.28 still calls cocotb 1.x APIs (setimmediatevalue, Edge) that cocotb 2
# deprecates: not ours to fix, and it must not fail a run under PYTHONWARNINGS=error, which the
# simulator inherits. Our own code keeps failing on deprecations.
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"cocotbext\.axi\.")

TOP = "control_registers"
TESTS = ("host_driver", "stalled_response_times_out")
_SEED_ENV = "QACCEL_CSR_SEED"
BUS_TIMEOUT_US = 20  # one register access, pauses included, takes well under 1 us
RUN_BASE = 300  # cycles of a run besides PROG_LEN
FAULT_LEN = 64  # the model faults (NO_HALT) on runs with PROG_LEN above this
NO_HALT = 7  # qaccel.isa.ErrorCode.NO_HALT; the model only needs a nonzero code


def run_csr_bench(
    simulator: str, build_dir: Path, *, seed: int = 1, addr_width: int = 12, waves: bool = False
) -> None:
    """Build ``ControlRegisters`` for ``simulator`` in ``build_dir`` and run this module's cocotb
    tests on it; raise AssertionError naming the failed tests and their first error."""
    from hw.csr import ControlRegisters
    from hw.generate import to_verilog

    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {', '.join(SIMULATORS)}, not {simulator!r}")
    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    verilog = build_dir / f"{TOP}.v"
    verilog.write_text(to_verilog(ControlRegisters(addr_width), TOP))
    results = build_dir / "results.xml"
    results.unlink(missing_ok=True)
    run_cocotb(
        verilog,
        TOP,
        "hw.csr_bench",
        simulator=simulator,
        build_dir=build_dir,
        extra_env={_SEED_ENV: str(seed)},
        waves=waves,
        why=lambda _: _failures(results),
        testcase=list(TESTS),
        results_xml=str(results),
    )
    failed = _failures(results)
    if failed is None or failed:
        raise AssertionError(
            f"the {simulator} run failed: {failed or 'no results'} (logs in {build_dir})"
        )


def _failures(results: Path) -> str | None:
    """The failed tests and their messages from cocotb's results file; None without one."""
    if not results.is_file():
        return None
    failed = []
    for case in ET.parse(results).iter("testcase"):
        for failure in case.iter("failure"):
            failed.append(f"{case.get('name')}: {failure.get('message', '')}".strip())
    ran = {case.get("name") for case in ET.parse(results).iter("testcase")}
    failed += [f"{name}: did not run" for name in TESTS if name not in ran]
    return "; ".join(failed)


# ---- the controller's side ---------------------------------------------------------------------


class ControllerModel:
    """What the accelerator's controller does to the register block, cycle by cycle.

    A run starts on the ``start`` pulse (``busy`` from the next cycle) and lasts ``RUN_BASE +
    PROG_LEN`` cycles, long enough for a paused bus to write START again while it runs. It
    retires one instruction every other cycle and reads 8 DRAM bytes with each; with PROG_LEN
    above ``FAULT_LEN`` it ends on a NO_HALT fault at instruction PROG_LEN - 1. ``clear``
    zeroes the counters. Every counter starts with a nonzero upper half, and CYCLES just below
    2**32 so that it carries into its upper half during the first run."""

    def __init__(self, dut):
        self.dut = dut
        self.reset()

    def reset(self):
        self.counters = {
            c.name: (i + 1) << 32 | 0x100 * (i + 1) for i, c in enumerate(csr.COUNTERS)
        }
        self.counters["CYCLES"] = (1 << 32) - 150
        self.left = 0  # cycles left in the run
        self.fault = None
        self.starts = self.clears = 0
        self._drive(busy=0, done=0, code=0, insn=0)

    def _drive(self, *, busy, done, code, insn):
        dut = self.dut
        dut.busy.value, dut.run_done.value = busy, done
        dut.error_code.value, dut.error_insn.value = code, insn
        for c in csr.COUNTERS:
            getattr(dut, c.name.lower()).value = self.counters[c.name]

    async def run(self):
        """Forever: sample the block's outputs after each edge, drive the next cycle's inputs."""
        dut = self.dut
        while True:
            await FallingEdge(dut.clk)
            if int(dut.rst.value):
                continue
            if int(dut.clear.value):
                self.clears += 1
                self.counters = dict.fromkeys(self.counters, 0)
            done = 0
            if self.left:
                self.left -= 1
                self.counters["CYCLES"] += 1
                if self.left % 2:
                    self.counters["INSNS"] += 1
                    self.counters["DRAM_READ_BYTES"] += 8
                done = int(self.left == 0)
            if int(dut.start.value):
                self.starts += 1
                length = int(dut.prog_len.value)
                self.left = RUN_BASE + length
                self.fault = (NO_HALT, length - 1) if length > FAULT_LEN else None
            code, insn = self.fault if done and self.fault else (0, 0)
            self._drive(busy=int(self.left > 0), done=done, code=code, insn=insn)


# ---- the host's side ---------------------------------------------------------------------------


class Host:
    """A driver that knows only ``qaccel.csr``; every access bounded, and logged."""

    def __init__(self, master: AxiLiteMaster):
        self.master = master
        self.log: list[tuple] = []  # (kind, offset, value, resp) of each logged access
        self.logging = True  # off while polling: how often depends on the bus's pauses

    async def read(self, offset: int) -> tuple[int, AxiResp]:
        got = await with_timeout(self.master.read(offset, 4), BUS_TIMEOUT_US, "us")
        value = int.from_bytes(got.data, "little")
        if self.logging:
            self.log.append(("read", offset, value, int(got.resp)))
        return value, got.resp

    async def write(self, offset: int, value: int) -> AxiResp:
        got = await with_timeout(
            self.master.write(offset, value.to_bytes(4, "little")), BUS_TIMEOUT_US, "us"
        )
        if self.logging:
            self.log.append(("write", offset, value, int(got.resp)))
        return got.resp

    async def reg(self, name: str) -> int:
        value, resp = await self.read(csr.OFFSETS[name])
        assert resp == AxiResp.OKAY, f"reading {name}: {resp!r}"
        return value

    async def set(self, name: str, value: int) -> None:
        resp = await self.write(csr.OFFSETS[name], value)
        assert resp == AxiResp.OKAY, f"writing {name}: {resp!r}"

    async def command(self, *fields: str) -> None:
        word = 0
        for name in fields:
            word = csr.insert("CTRL", name, word, 1)
        await self.set("CTRL", word)

    async def counter(self, name: str) -> int:
        lo_offset, hi_offset = csr.counter_offsets(name)
        lo, resp_lo = await self.read(lo_offset)  # LO first: it latches HI
        hi, resp_hi = await self.read(hi_offset)
        assert resp_lo == resp_hi == AxiResp.OKAY, f"reading counter {name}"
        return csr.join64(lo, hi)

    async def wait_done(self, limit: int = 500) -> int:
        self.logging = False
        for _ in range(limit):
            status = await self.reg("STATUS")
            if csr.extract("STATUS", "DONE", status):
                break
        else:
            raise AssertionError(f"STATUS never showed DONE in {limit} reads")
        self.logging = True
        return status


async def _session(dut, model: ControllerModel, host: Host) -> None:
    """Everything a driver does, with the model's answers as the expectation."""
    assert await host.reg("ID") == csr.ID_VALUE
    assert await host.reg("VERSION") == csr.ISA_VERSION
    assert await host.reg("STATUS") == 0
    assert await host.reg("CTRL") == 0

    # RW registers: whole words, one byte lane, and what the hardware sees
    await host.set("PROG_ADDR", 0x8000_1000)
    await host.set("PROG_LEN", 10)
    got = await with_timeout(
        host.master.write(csr.OFFSETS["PROG_ADDR"] + 2, b"\x5a"), BUS_TIMEOUT_US, "us"
    )
    assert got.resp == AxiResp.OKAY
    assert await host.reg("PROG_ADDR") == 0x805A_1000
    assert int(dut.prog_addr.value) == 0x805A_1000
    assert await host.reg("PROG_LEN") == 10

    # the counters before any run: consistent 64-bit values
    for c in csr.COUNTERS:
        assert await host.counter(c.name) == model.counters[c.name], c.name

    # a good run; START again while busy is ignored; CYCLES read as it carries
    first = model.counters["CYCLES"]
    await host.command("START")
    status = await host.reg("STATUS")
    assert csr.extract("STATUS", "BUSY", status), f"STATUS {status:#x} right after START"
    await host.command("START")
    await host.command("CLEAR")
    host.logging, seen = False, []
    for _ in range(RUN_BASE):
        if not csr.extract("STATUS", "BUSY", await host.reg("STATUS")):
            break
        seen.append(await host.counter("CYCLES"))
    else:
        raise AssertionError(f"still BUSY after {RUN_BASE} reads")
    host.logging = True
    last = first + RUN_BASE + 10
    assert seen == sorted(seen) and first <= seen[0] and seen[-1] <= last, f"torn: {seen}"
    assert seen[0] < 1 << 32 < seen[-1], f"no read either side of the carry: {seen}"
    status = await host.wait_done()
    assert status == csr.insert("STATUS", "DONE", 0, 1), f"STATUS {status:#x} after a good run"
    assert (model.starts, model.clears) == (1, 0), "START/CLEAR while busy were not ignored"
    assert await host.reg("ERROR_INSN") == 0
    for c in csr.COUNTERS:
        assert await host.counter(c.name) == model.counters[c.name], c.name
    assert await host.counter("CYCLES") == last

    # a faulting run: DONE, ERROR and the code stay until CLEAR
    await host.set("PROG_LEN", FAULT_LEN + 6)
    await host.command("START")
    status = await host.wait_done()
    assert csr.extract("STATUS", "ERROR", status) == 1
    assert csr.extract("STATUS", "ERROR_CODE", status) == NO_HALT
    assert csr.extract("STATUS", "BUSY", status) == 0
    assert await host.reg("ERROR_INSN") == FAULT_LEN + 5
    assert await host.reg("STATUS") == status, "DONE/ERROR must be sticky"
    await host.command("CLEAR")
    assert await host.reg("STATUS") == 0
    assert await host.reg("ERROR_INSN") == 0
    assert model.clears == 1
    for c in csr.COUNTERS:
        assert await host.counter(c.name) == 0, c.name

    # errors: unmapped reads and writes, writes to read-only registers
    for offset in (0x1C, csr.MAP.span, (1 << len(dut.s_axil__awaddr)) - 4):
        value, resp = await host.read(offset)
        assert (value, resp) == (0, AxiResp.SLVERR), f"read of {offset:#x}: {value:#x}, {resp!r}"
        assert await host.write(offset, 0xFFFF_FFFF) == AxiResp.SLVERR, f"write of {offset:#x}"
    for name in ("ID", "STATUS", "ERROR_INSN", "CYCLES_LO", "CYCLES_HI"):
        before = await host.reg(name)
        assert await host.write(csr.OFFSETS[name], 0x1234_5678) == AxiResp.SLVERR, name
        assert await host.reg(name) == before, f"{name} changed by a refused write"
    # cocotbext-axi reports SLVERR only in the response object: read_dword drops it
    value = await with_timeout(host.master.read_dword(0x1C), BUS_TIMEOUT_US, "us")
    assert value == 0
    assert await host.reg("ID") == csr.ID_VALUE, "the bus still works after the errors"


def _pauses(rng: random.Random, busy: float):
    while True:
        yield rng.random() < busy


async def _reset(dut, cycles: int = 3) -> None:
    dut.rst.value = 1
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


def _start(dut) -> tuple[ControllerModel, AxiLiteMaster]:
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    model = ControllerModel(dut)
    cocotb.start_soon(model.run())
    master = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil_"), dut.clk, dut.rst)
    return model, master


@cocotb.test(timeout_time=2, timeout_unit="ms")
async def host_driver(dut):
    """The session at full speed, then with random pauses on every channel: same transcript."""
    seed = int(os.environ.get(_SEED_ENV, "1"))
    dut._log.info(f"seed {seed}")
    model, master = _start(dut)
    await _reset(dut)
    plain = Host(master)
    await _session(dut, model, plain)

    await _reset(dut)
    model.reset()
    rng = random.Random(seed)
    write, read = master.write_if, master.read_if
    for channel in (write.aw_channel, write.w_channel, write.b_channel):
        channel.set_pause_generator(_pauses(rng, 0.5))
    for channel in (read.ar_channel, read.r_channel):
        channel.set_pause_generator(_pauses(rng, 0.5))
    paused = Host(master)
    await _session(dut, model, paused)
    assert paused.log == plain.log, "pauses changed the results"
    assert len(plain.log) > 100, f"only {len(plain.log)} accesses logged"


@cocotb.test(timeout_time=200, timeout_unit="us")
async def stalled_response_times_out(dut):
    """A read whose R beat is never taken ends in SimTimeoutError after BUS_TIMEOUT_US."""
    _, master = _start(dut)
    await _reset(dut)
    master.read_if.r_channel.set_pause_generator(_pauses(random.Random(0), 1.0))
    try:
        await Host(master).reg("ID")
    except SimTimeoutError:
        pass
    else:
        raise AssertionError("a read with rready held low completed")
    assert int(dut.s_axil__rvalid.value) == 1, "the slave must hold R until it is taken"
