"""Programs on the accelerator's Verilog under cocotb, driven as a host would, and compared with
the functional executor (``qaccel verify``, ``qaccel selftest``).

The bench puts a DRAM on ``m_axi`` and an ``AxiLiteMaster`` on ``s_axil``; for each job it
loads the DRAM image, writes PROG_ADDR and PROG_LEN, sets CTRL.START, polls STATUS until DONE
(a cycle bound turns a hang into a failure), reads ERROR_CODE, ERROR_INSN and every counter,
and dumps DRAM. The DRAM is ``hw.dram_slave.TimedDram``, which answers with the timing of
``sim.dram`` so that the cycle counters can be compared with the simulator's exactly; with
random pauses (``pause``) it is cocotbext-axi's ``AxiRam`` with pause generators on all five
channels, and then only the outputs and the timing-free counters must match.

``run_on_rtl`` builds the Verilog once per configuration and runs a list of jobs in one
simulation; ``verify_program`` compares outputs (bit for bit) and the timing-free counters
with ``sim.executor``, and the timed counters (CYCLES, busy and stall per unit) with
``sim.cycle``.
"""

from __future__ import annotations

import json
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from hw.dram_slave import TimedDram
from hw.rtl_bench import SIMULATORS, read_results, run_cocotb
from qaccel import csr
from sim.dram import DramTiming

__all__ = [
    "LayerCheck",
    "RtlRun",
    "compare",
    "predict_timing",
    "run_on_rtl",
    "verify_model",
    "verify_models",
    "verify_program",
]

# cocotbext-axi 0.1.28 still calls cocotb 1.x APIs that cocotb 2 deprecates (see hw.csr_bench).
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"cocotbext\.axi\.")

TOP = "accel"
_JOBS_ENV, _RESULTS_ENV = "QACCEL_ACCEL_JOBS", "QACCEL_ACCEL_RESULTS"
COUNTER_NAMES = tuple(c.name for c in csr.COUNTERS)
TIMING_FREE = ("INSNS", "DRAM_READ_BYTES", "DRAM_WRITE_BYTES", "SATURATIONS", "INVALID")


@dataclass
class RtlRun:
    """What one job did on the RTL."""

    error_code: int
    error_insn: int
    counters: dict[str, int]
    dram: bytes
    polls: int = 0
    outputs: dict = field(default_factory=dict)
    seconds: float = 0.0  # wall time the RTL simulator took from START to DONE


def _job(program, inputs, *, pause: float = 0.0, seed: int = 1, max_cycles: int | None = None):
    from sim.executor import Machine, dram_size, place_inputs

    size = -(-dram_size(program) // 4096) * 4096
    machine = Machine(program.geometry, size)
    place_inputs(machine, program, inputs)
    bound = max_cycles or 20_000 + 200 * len(program.instructions) + 2 * size
    return {
        "image": bytes(machine.dram).hex(),
        "prog_addr": program.prog_addr,
        "prog_len": len(program.instructions),
        "pause": pause,
        "seed": seed,
        "max_cycles": bound,
    }


def run_on_rtl(
    config,
    jobs: list[tuple],
    *,
    simulator: str = "icarus",
    build_dir: Path,
    waves: bool = False,
) -> list[RtlRun]:
    """Run ``jobs`` (each ``(program, inputs)`` or ``(program, inputs, options)`` with options
    pause, seed, max_cycles, prog_len) one after the other on the accelerator of ``config``."""
    from hw.accel import Accelerator
    from hw.generate import to_verilog
    from sim.executor import Machine, read_outputs

    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {', '.join(SIMULATORS)}, not {simulator!r}")
    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    verilog = build_dir / f"{TOP}.v"
    text = to_verilog(Accelerator(config), TOP)
    if not verilog.exists() or verilog.read_text() != text:
        verilog.write_text(text)
    specs = []
    for job in jobs:
        program, inputs, *rest = job
        options = dict(rest[0]) if rest else {}
        prog_len = options.pop("prog_len", None)
        spec = _job(program, inputs, **options)
        if prog_len is not None:
            spec["prog_len"] = prog_len
        specs.append(spec)
    jobs_file, results_file = build_dir / "jobs.json", build_dir / "results.json"
    dram = {"data_bytes": config.dram.bytes_per_cycle, "latency": config.dram.latency_cycles}
    jobs_file.write_text(json.dumps({"dram": dram, "jobs": specs}))
    results_file.unlink(missing_ok=True)
    env = {_JOBS_ENV: str(jobs_file), _RESULTS_ENV: str(results_file)}
    run_cocotb(
        verilog,
        TOP,
        "hw.accel_bench",
        simulator=simulator,
        build_dir=build_dir,
        extra_env=env,
        waves=waves,
    )
    raws = read_results(results_file, simulator, build_dir)
    runs = []
    for job, raw in zip(jobs, raws, strict=True):
        if "failure" in raw:
            raise AssertionError(f"the {simulator} run failed: {raw['failure']}")
        run = RtlRun(
            raw["error_code"], raw["error_insn"], raw["counters"], bytes.fromhex(raw["dram"])
        )
        run.polls = raw["polls"]
        run.seconds = raw.get("seconds", 0.0)
        if run.error_code == 0:
            program = job[0]
            machine = Machine(program.geometry, len(run.dram))
            machine.dram[:] = run.dram
            run.outputs = read_outputs(machine, program)
        runs.append(run)
    return runs


def verify_program(program, inputs, *, simulator: str = "icarus", build_dir: Path, **options):
    """Run ``program`` on the executor, the simulator's timing and the RTL; return (executor
    result, RTL run) or raise AssertionError naming the first output element or counter that
    differs. Without back-pressure (``pause``) the timed counters must be equal too."""
    from sim.executor import run_program

    want = run_program(program, inputs)
    timing = None if options.get("pause") else predict_timing(program)
    (got,) = run_on_rtl(
        program.config, [(program, inputs, options)], simulator=simulator, build_dir=build_dir
    )
    compare(want, got, timing)
    return want, got


@dataclass
class LayerCheck:
    """One accelerator layer of a model on the RTL: its cycles there and as predicted."""

    layer: str
    rtl_cycles: int
    sim_cycles: int
    error: str | None  # None: outputs bit for bit and every counter equal


def verify_model(model, inputs: dict, *, simulator: str = "icarus", build_dir: Path):
    """Run every accelerator layer of a compiled model (``compiler.network.CompiledModel``)
    on ``inputs`` through the RTL, each layer fed what the simulator fed it; compare outputs
    with the executor and the counters with the fast engine's prediction. Returns a
    LayerCheck per layer."""
    return verify_models([(model, inputs)], simulator=simulator, build_dir=build_dir)


def verify_models(jobs: list, *, simulator: str = "icarus", build_dir: Path):
    """``verify_model`` for several (model, inputs) pairs on one configuration, in one RTL
    simulation; the LayerChecks of all of them, in order."""
    from sim.executor import run_program

    layers = [job for model, inputs in jobs for job in model.accelerator_jobs(inputs)]
    configs = {id(model.config): model.config for model, _ in jobs}
    if len({repr(c) for c in configs.values()}) != 1:
        raise ValueError("verify_models takes models compiled for one configuration")
    runs = run_on_rtl(
        jobs[0][0].config,
        [(p, x) for _, p, x, _ in layers],
        simulator=simulator,
        build_dir=build_dir,
    )
    checks = []
    for (name, program, x, timing), got in zip(layers, runs, strict=True):
        want = run_program(program, x)
        try:
            compare(want, got, timing.counters)
            error = None
        except AssertionError as e:
            error = str(e)
        checks.append(LayerCheck(name, got.counters["CYCLES"], timing.counters["CYCLES"], error))
    return checks


def predict_timing(program):
    """The simulator's timed counters for ``program`` (``sim.cycle``)."""
    from sim.cycle import run_cycles

    return run_cycles(program).counters


def compare(want, got: RtlRun, timing: dict | None = None) -> None:
    """Raise AssertionError unless the RTL run matches the executor's result and, when given,
    the simulator's ``timing`` (its timed counters: CYCLES, busy and stall per unit)."""
    if got.error_code:
        raise AssertionError(
            f"the RTL stopped with error {got.error_code} at instruction {got.error_insn}"
        )
    for name, values in want.outputs.items():
        rtl = np.asarray(got.outputs[name])
        if not np.array_equal(rtl, values):
            where = np.argwhere(rtl != values)[0]
            raise AssertionError(
                f"output {name}{tuple(int(i) for i in where)}: RTL {rtl[tuple(where)]}, "
                f"executor {values[tuple(where)]}"
            )
    for name in TIMING_FREE:
        if got.counters[name] != want.counters[name]:
            raise AssertionError(
                f"counter {name}: RTL {got.counters[name]}, executor {want.counters[name]}"
            )
    for name, value in (timing or {}).items():
        if got.counters[name] != value:
            raise AssertionError(f"counter {name}: RTL {got.counters[name]}, simulator {value}")


# --- the cocotb side ------------------------------------------------------------------------


def _pauses(rng: random.Random, busy: float):
    while True:
        yield rng.random() < busy


async def _reset(dut):
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


async def _read(master, name: str) -> int:
    resp = await master.read(csr.offset(name), 4)
    return int.from_bytes(resp.data, "little")


async def _write(master, name: str, value: int) -> None:
    await master.write(csr.offset(name), int(value).to_bytes(4, "little"))


@cocotb.test()
async def run_jobs(dut):
    from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam

    spec = json.loads(Path(os.environ[_JOBS_ENV]).read_text())
    jobs = spec["jobs"]
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    size = max(len(j["image"]) // 2 for j in jobs)
    paused = any(j["pause"] for j in jobs)
    if paused:  # back-pressure: AxiRam's pause generators; cycle counts may then differ
        ram = AxiRam(AxiBus.from_prefix(dut, "m_axi_"), dut.clk, dut.rst, size=size)
    else:  # the simulator's DRAM timing, so that cycle counters compare exactly
        timing = DramTiming(spec["dram"]["data_bytes"], spec["dram"]["latency"])
        ram = TimedDram(dut, "m_axi_", dut.clk, dut.rst, timing, size)
    master = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil_"), dut.clk, dut.rst)
    await _reset(dut)
    assert await _read(master, "ID") == csr.ID_VALUE
    results = []
    for job in jobs:
        image = bytes.fromhex(job["image"])
        ram.write(0, bytes(size))
        ram.write(0, image)
        rng = random.Random(job["seed"])
        busy = job["pause"]
        channels = (
            ()
            if not paused
            else (
                ram.write_if.aw_channel,
                ram.write_if.w_channel,
                ram.write_if.b_channel,
                ram.read_if.ar_channel,
                ram.read_if.r_channel,
            )
        )
        for channel in channels:
            if busy:
                gen_rng = random.Random(rng.getrandbits(32))
                channel.set_pause_generator(_pauses(gen_rng, busy))
            else:
                channel.clear_pause_generator()
        await _write(master, "CTRL", csr.insert("CTRL", "CLEAR", 0, 1))
        await _write(master, "PROG_ADDR", job["prog_addr"])
        await _write(master, "PROG_LEN", job["prog_len"])
        await _write(master, "CTRL", csr.insert("CTRL", "START", 0, 1))
        started = time.perf_counter()
        polls, status = 0, 0
        for _ in range(job["max_cycles"] // 16):
            for _ in range(16):
                await RisingEdge(dut.clk)
            status = await _read(master, "STATUS")
            polls += 1
            if csr.extract("STATUS", "DONE", status):
                break
        else:
            results.append({"failure": f"no DONE within {job['max_cycles']} cycles (a hang)"})
            continue
        counters = {}
        for name in COUNTER_NAMES:
            lo, hi = csr.counter_offsets(name)
            low = int.from_bytes((await master.read(lo, 4)).data, "little")
            high = int.from_bytes((await master.read(hi, 4)).data, "little")
            counters[name] = csr.join64(low, high)
        results.append(
            {
                "error_code": csr.extract("STATUS", "ERROR_CODE", status),
                "error_insn": await _read(master, "ERROR_INSN"),
                "counters": counters,
                "dram": ram.read(0, len(image)).hex(),
                "polls": polls,
                "seconds": time.perf_counter() - started,  # the simulator's wall time for the run
            }
        )
    Path(os.environ[_RESULTS_ENV]).write_text(json.dumps(results))
