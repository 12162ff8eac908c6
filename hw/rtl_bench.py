"""Run stream beats on the generated Verilog with cocotb: the systolic array's
(``sim.array_model.Beats``) or the LUT core's (``sim.lut_model.LutBeats``).

``run_rtl`` builds the Verilog with Icarus or Verilator in its own directory (cocotb's runner)
and runs ``stream_bench`` in the simulator, which drives every job's beats as fast as the block
accepts them, checks each against its contract (``check_run`` / ``check_lut_run``: values
bit-exact, every result on the latency formula's cycle) and writes what it measured to a JSON
file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from qaccel.toolchain import tool_env
from sim.array_model import Beats, check_run, unpack_output
from sim.lut_model import LutBeats, check_lut_run

__all__ = ["SIMULATORS", "VERILATOR_ARGS", "read_results", "run_cocotb", "run_rtl"]

SIMULATORS = ("icarus", "verilator")
# Amaranth's Verilog trips these lint warnings by design (widths, incomplete cases, [0:0]
# ranges); --no-timing: the one delay in it (the #0 time-zero wake, hw.generate) is for
# event-driven simulators, Verilator evaluates everything at time zero anyway.
VERILATOR_ARGS = [
    "--no-timing",
    "-Wno-WIDTH",
    "-Wno-STMTDLY",
    "-Wno-CASEINCOMPLETE",
    "-Wno-ASCRANGE",
]
_JOBS_ENV, _RESULTS_ENV = "QACCEL_RTL_JOBS", "QACCEL_RTL_RESULTS"


def run_cocotb(
    verilog: Path,
    top: str,
    test_module: str,
    *,
    simulator: str,
    build_dir: Path,
    extra_env: dict[str, str],
    waves: bool = False,
    why=None,
    **test_options,
) -> None:
    """Build ``verilog`` for ``simulator`` in ``build_dir`` (cocotb's runner, the flags each
    simulator needs) and run ``test_module``'s cocotb tests on ``top``. A failed step raises
    AssertionError with the reason ``why(build_dir)`` finds (default: the log's last
    assertion)."""
    from cocotb_tools.runner import get_runner

    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {', '.join(SIMULATORS)}, not {simulator!r}")
    why = why or _why
    saved = dict(os.environ)
    os.environ.update(tool_env())  # Verilator's binary and its make flags
    try:
        runner = get_runner(simulator)
        runner.build(
            sources=[Path(verilog).resolve()],
            hdl_toplevel=top,
            build_dir=build_dir,
            build_args=VERILATOR_ARGS if simulator == "verilator" else [],
            waves=waves,
            timescale=("1ns", "1ps"),
            log_file=build_dir / "build.log",
        )
        runner.test(
            test_module=test_module,
            hdl_toplevel=top,
            build_dir=build_dir,
            test_dir=build_dir,
            log_file=build_dir / "sim.log",
            waves=waves,
            extra_env=extra_env,
            **test_options,
        )
    except (RuntimeError, SystemExit) as e:  # the runner's ways of saying a step failed
        raise AssertionError(
            f"the {simulator} run failed: {why(build_dir) or e} (logs in {build_dir})"
        ) from None
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_rtl(
    verilog: Path,
    top: str,
    jobs: list[Beats] | list[LutBeats],
    *,
    simulator: str,
    build_dir: Path,
    widths: dict,
    waves: bool = False,
) -> list[dict]:
    """Run ``jobs`` one after the other on ``top``; return, per job, the cycle each ``a`` beat
    was accepted, the outputs and the cycle count. Raises if any job breaks the contract.
    ``widths``: the block's output ``cols`` and their ``acc_width``, to decode its outputs."""
    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    jobs_file, results_file = build_dir / "jobs.json", build_dir / "results.json"
    kind = "lut" if jobs and isinstance(jobs[0], LutBeats) else "array"
    jobs_file.write_text(
        json.dumps({"kind": kind, "widths": widths, "jobs": [dataclasses.asdict(j) for j in jobs]})
    )
    results_file.unlink(missing_ok=True)
    env = {_JOBS_ENV: str(jobs_file), _RESULTS_ENV: str(results_file)}
    run_cocotb(
        verilog,
        top,
        "hw.rtl_bench",
        simulator=simulator,
        build_dir=build_dir,
        extra_env=env,
        waves=waves,
    )
    return read_results(results_file, simulator, build_dir)


def read_results(results_file: Path, simulator: str, build_dir: Path):
    """The JSON a bench wrote, or AssertionError saying why it wrote none."""
    if not results_file.exists():
        why = _why(build_dir) or "it wrote no results"
        raise AssertionError(f"the {simulator} run failed: {why} (logs in {build_dir})")
    return json.loads(results_file.read_text())


def _why(build_dir: Path) -> str | None:
    """The assertion a failed cocotb run ended with, from its log."""
    log = build_dir / "sim.log"
    text = log.read_text(errors="replace") if log.is_file() else ""
    found = [line.strip() for line in text.splitlines() if "AssertionError:" in line]
    return found[-1].split("AssertionError:", 1)[1].strip() if found else None


@cocotb.test()
async def stream_bench(dut):
    """Every job from $QACCEL_RTL_JOBS, checked against the contract, one after the other."""
    spec = json.loads(Path(os.environ[_JOBS_ENV]).read_text())
    widths = spec["widths"]
    acc_width, cols = widths["acc_width"], widths["cols"]
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.w__valid.value = 0
    dut.a__valid.value = 0
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    results = []
    for i, job in enumerate(spec["jobs"]):
        dut._log.info(f"job {i + 1} of {len(spec['jobs'])}")
        if spec["kind"] == "lut":
            beats = LutBeats(**job)
            beats.timing = [tuple(t) for t in beats.timing]
            results.append(await _run_lut_job(dut, beats, acc_width, cols))
            continue
        beats = Beats(**job)
        beats.timing = [tuple(t) for t in beats.timing]
        beats.expected = [tuple(e) for e in beats.expected]
        results.append(await _run_job(dut, beats, acc_width, cols))
    Path(os.environ[_RESULTS_ENV]).write_text(json.dumps(results))


async def _wait_idle(dut):
    await RisingEdge(dut.clk)
    for _ in range(100_000):
        await ReadOnly()
        if not int(dut.busy.value):
            break
        await RisingEdge(dut.clk)
    else:
        raise AssertionError("the block stays busy")
    await RisingEdge(dut.clk)


async def _drive(dut, beats, acc_width: int, cols: int):
    """Offer every ``w`` and ``a`` beat as fast as the block accepts them until all expected
    outputs came: (cycles of accepted w beats, of accepted a beats, (cycle, values, invalid)
    per output)."""
    w_cycles, a_cycles, outputs = [], [], []
    w_next = a_next = cycle = 0
    while len(outputs) < len(beats.expected):
        w_valid, a_valid = w_next < len(beats.w), a_next < len(beats.a)
        dut.w__valid.value = int(w_valid)
        dut.a__valid.value = int(a_valid)
        if w_valid:
            dut.w__payload.value = beats.w[w_next]
        if a_valid:
            dut.a__payload.value = beats.a[a_next]
        await ReadOnly()  # this cycle's settled handshakes
        if w_valid and int(dut.w__ready.value):
            w_next += 1
            w_cycles.append(cycle)
        if a_valid and int(dut.a__ready.value):
            a_next += 1
            a_cycles.append(cycle)
        if int(dut.o__valid.value):
            payload = dut.o__payload.value.to_unsigned()
            outputs.append((cycle, *unpack_output(payload, acc_width, cols)))
        await RisingEdge(dut.clk)
        cycle += 1
        if cycle > 100_000:
            raise AssertionError(f"{len(outputs)} of {len(beats.expected)} results in time")
    dut.w__valid.value = 0
    dut.a__valid.value = 0
    return w_cycles, a_cycles, outputs


async def _run_lut_job(dut, beats: LutBeats, acc_width: int, cols: int) -> dict:
    await _wait_idle(dut)
    w_cycles, _, outputs = await _drive(dut, beats, acc_width, cols)
    check_lut_run(beats, w_cycles, [(cycle, values) for cycle, values, _ in outputs])
    return {"w_cycles": w_cycles, "cycles": outputs[-1][0] + 1 if outputs else 0}


async def _run_job(dut, beats: Beats, acc_width: int, cols: int) -> dict:
    await _wait_idle(dut)  # the dataflow may change only while the array is idle
    if hasattr(dut, "dataflow"):
        dut.dataflow.value = int(beats.os)
    _, a_cycles, outputs = await _drive(dut, beats, acc_width, cols)
    check_run(beats, a_cycles, outputs)
    # cycles: from the job's first cycle (its first beat offered) to its last output
    cycles = outputs[-1][0] + 1 if outputs else 0
    return {"a_cycles": a_cycles, "cycles": cycles, "outputs": len(outputs)}
