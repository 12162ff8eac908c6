"""``qaccel selftest``: prove a configuration on its RTL.

``selftest_cases`` builds, for any valid configuration, a suite of programs: every array mode
(each dataflow the array has) on a GEMM larger than the array, so that it is tiled in M, N and
K; every LUT weight format; raw accumulators out as INT32 (saturating); a requantization with
ReLU; a residual add; a chain of back-to-back
dependent instructions (one-step chunks accumulating into the same rows); and bad programs the
accelerator must stop on with the checker's error code and instruction index (an illegal
opcode, DRAM out of range, a scratchpad overflow, PROG_LEN without HALT, a token deadlock).
``run_selftest`` runs them on the functional executor and, in one simulation, on the RTL, and
compares outputs bit for bit and the timing-free counters exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compiler.gemm import Epilogue, lower_gemm
from qaccel import config as qconfig
from qaccel import formats
from qaccel.isa import ErrorCode, Geometry
from qaccel.program import Program, ProgramBuilder, ProgramError, check_program

__all__ = ["Case", "CaseResult", "run_selftest", "selftest_cases"]


@dataclass
class Case:
    name: str
    program: Program
    inputs: dict
    error: tuple[int, int] | None = None  # the (code, instruction) the run must stop with
    prog_len: int | None = None  # PROG_LEN, when not the program's length


@dataclass
class CaseResult:
    name: str
    ok: bool
    detail: str
    cycles: int = 0


def _inputs(rng, fmt, shape):
    codes = rng.choice(fmt.finite_codes(), shape)
    return fmt.decode(codes).astype(np.int64) if fmt.kind == "int" else codes


def _array_case(cfg, g: Geometry, rng, index: int, dataflow: str, **kw) -> Case:
    spec = g.array_modes[index]
    pair = str(cfg.array.modes[index])
    m, n = g.rows + 1, g.cols + 1
    if spec.block:
        k = spec.block + 5  # two blocks, the second partial
    elif dataflow == "ws":
        k = 2 * g.rows * spec.lanes + 1  # three weight tiles, the last partial
    else:
        k = min(2 * g.max_steps(index), 3 * g.rows) * spec.lanes + 1
    w = rng.choice(spec.weight.finite_codes(), (k, n))
    inputs, options = {}, {}
    if spec.block:
        lo, hi = spec.scale_range
        blocks = -(-k // spec.block)
        options["w_scales"] = rng.integers(-(-lo // 2), hi // 2 + 1, (blocks, n)) + 127
        inputs["x_scales"] = rng.integers(-(-lo // 2), hi // 2 + 1, (m, blocks)) + 127
        inputs["x"] = rng.choice(spec.activation.finite_codes(), (m, k))
    else:
        inputs["x"] = _inputs(rng, spec.activation, (m, k))
    program = lower_gemm(cfg, w, m=m, mode=pair, dataflow=dataflow, **options, **kw)
    return Case(f"{pair} {dataflow} {m}x{k}x{n}", program, inputs)


def _lut_case(cfg, g: Geometry, rng, weight: str, **kw) -> Case:
    fmt = formats.get_format(weight)
    m, k, n = g.lut_tile_m + 1, 2 * g.lut_group + 1, g.lut_tile_n + 1
    w = rng.choice(fmt.finite_codes(), (k, n))
    act = formats.get_format(g.lut_activation)
    x = rng.integers(act.int_min, act.int_max + 1, (m, k))
    program = lower_gemm(cfg, w, m=m, mode=f"{weight}*{g.lut_activation}", unit="lut", **kw)
    return Case(f"LUT {weight}*{g.lut_activation} {m}x{k}x{n}", program, {"x": x})


def _integer_unit(cfg, g: Geometry):
    """A (mode, unit) with integer weights and activations for the epilogue cases, or None."""
    if g.has_array:
        for i, spec in enumerate(g.array_modes):
            if spec.integer:
                return str(cfg.array.modes[i]), "array", spec.weight
    if g.has_lut:
        return f"{g.lut_modes[0]}*{g.lut_activation}", "lut", formats.get_format(g.lut_modes[0])
    return None


def selftest_cases(cfg: qconfig.AcceleratorConfig, seed: int = 1) -> list[Case]:
    """The suite for ``cfg`` (see the module docstring)."""
    g = Geometry.of(cfg)
    rng = np.random.default_rng(seed)
    cases: list[Case] = []
    if g.has_array:
        for index, spec in enumerate(g.array_modes):
            for dataflow in ("os", "ws"):
                if g.dataflow not in ("both", dataflow) or (spec.block and dataflow == "ws"):
                    continue
                cases.append(_array_case(cfg, g, rng, index, dataflow))
    if g.has_lut:
        for weight in g.lut_modes:
            cases.append(_lut_case(cfg, g, rng, weight))
    if g.has_array:  # accumulators out as INT32: the widest mode's saturate, counted
        index = max(range(len(g.array_modes)), key=lambda i: g.array_modes[i].acc_width)
        dataflow = "ws" if g.dataflow == "ws" else "os"
        case = _array_case(cfg, g, rng, index, dataflow, acc_out="int32")
        cases.append(dataclasses.replace(case, name=case.name + " int32 out"))
    found = _integer_unit(cfg, g)
    if found is not None:
        mode, unit, wfmt = found
        afmt = formats.get_format(mode.split("*")[1])
        width = (g.cols if unit == "array" else g.lut_tile_n) + 1
        m, k = 5, 9
        x = rng.integers(afmt.int_min, afmt.int_max + 1, (m, k))
        w = rng.choice(wfmt.finite_codes(), (k, width))
        bias = rng.integers(-300, 300, width)
        relu = Epilogue.requant(np.linspace(0.02, 0.2, width), relu=True, zero_point=-5, bias=bias)
        cases.append(
            Case(
                f"requant+ReLU {mode}",
                lower_gemm(cfg, w, m=m, mode=mode, unit=unit, epilogue=relu),
                {"x": x},
            )
        )
        res = Epilogue.requant(0.05, residual=True, res_shift=3, out_signed=False, zero_point=7)
        r = rng.integers(0, 256, (m, width))
        cases.append(
            Case(
                f"residual add {mode}",
                lower_gemm(cfg, w, m=m, mode=mode, unit=unit, epilogue=res),
                {"x": x, "residual": r},
            )
        )
        chain = lower_gemm(
            cfg, np.resize(w, (3 * k, width)), m=m, mode=mode, unit=unit, epilogue=relu, max_chunk=1
        )
        x3 = rng.integers(afmt.int_min, afmt.int_max + 1, (m, 3 * k))
        cases.append(Case(f"dependent chain {mode}", chain, {"x": x3}))
    cases += _bad_cases(cfg, g, cases[0])
    return cases


def _verdict(program: Program) -> tuple[int, int]:
    try:
        check_program(program)
    except ProgramError as e:
        return int(e.code), int(e.index if e.index is not None else 0)
    raise AssertionError("a bad program passed the checker")


def _bad_cases(cfg, g: Geometry, good: Case) -> list[Case]:
    """Programs the accelerator must stop on, each followed in the suite by a good one."""
    bad = []
    base = good.program
    insns = base.instructions
    # an illegal opcode in the middle of a good program
    i = len(insns) // 2
    word_at = base.prog_addr + i * g.insn_bytes
    segments = []
    for addr, blob in base.segments:
        if addr <= word_at < addr + len(blob):
            blob = bytearray(blob)
            blob[word_at - addr] = 0x0F  # opcode 15
            blob = bytes(blob)
        segments.append((addr, blob))
    illegal = dataclasses.replace(base, segments=segments)
    bad.append(Case("bad: illegal opcode", illegal, good.inputs, (ErrorCode.ILLEGAL_OPCODE, i)))

    def single(name, **load):
        b = ProgramBuilder(cfg)
        ok = dict(mem=0, sram_addr=0, dram_addr=b.alloc(g.sp_row_bytes), dram_stride=0)
        b.load(**ok, y_size=1, x_size=1)
        b.load(**(ok | load))
        program = b.build(check=False)
        return Case(name, program, {}, _verdict(program))

    bad.append(
        single("bad: DRAM out of range", dram_addr=g.dram_bytes - g.data_bytes, y_size=1, x_size=2)
    )
    bad.append(single("bad: scratchpad overflow", sram_addr=g.sp_rows - 1, y_size=1, x_size=2))
    # PROG_LEN ends before HALT
    cut = len(insns) - 3
    bad.append(
        Case(
            "bad: no HALT within PROG_LEN",
            base,
            good.inputs,
            (ErrorCode.NO_HALT, cut),
            prog_len=cut,
        )
    )
    # a compute instruction that waits for a token no one pushes
    b = ProgramBuilder(cfg)
    b.load(mem=0, sram_addr=0, dram_addr=b.alloc(g.sp_row_bytes), dram_stride=0, y_size=1, x_size=1)
    b.post(
        acc_addr=0, out_addr=1, param_addr=1, rows=1, out_signed=1, lo=-128, hi=127, pop_prev=True
    )
    deadlock = b.build(check=False)
    bad.append(Case("bad: token deadlock", deadlock, {}, _verdict(deadlock)))
    return bad


def run_selftest(
    cfg: qconfig.AcceleratorConfig,
    *,
    simulator: str = "icarus",
    seed: int = 1,
    build_dir: Path,
    pause: float = 0.0,
    status=None,
) -> list[CaseResult]:
    """Run the suite on the executor and the RTL; one CaseResult per case. ``status``: an
    optional callable that receives a line of progress."""
    from hw.accel_bench import compare, predict_timing, run_on_rtl
    from sim.executor import run_program

    say = status or (lambda text: None)
    say(f"building the programs for {cfg.name}")
    cases = selftest_cases(cfg, seed)
    # each bad case is followed by a good one: the accelerator must be idle and usable again
    order, good = [], [c for c in cases if c.error is None]
    for case in cases:
        order.append(case)
        if case.error is not None:
            order.append(good[len(order) % len(good)])
    say(f"running {len(order)} programs on the executor")
    expected = [run_program(c.program, c.inputs) if c.error is None else None for c in order]
    # with back-pressure the outputs must still match; the cycle counts may differ
    timings = [predict_timing(c.program) if c.error is None and not pause else None for c in order]
    jobs = []
    for c in order:
        options = {"pause": pause, "seed": seed}
        if c.prog_len is not None:
            options["prog_len"] = c.prog_len
        jobs.append((c.program, c.inputs, options))
    say(f"building the Verilog and running {len(order)} programs on {simulator}")
    runs = run_on_rtl(cfg, jobs, simulator=simulator, build_dir=build_dir)
    results = []
    for case, want, timing, got in zip(order, expected, timings, runs, strict=True):
        cycles = got.counters["CYCLES"]
        if case.error is not None:
            code, index = case.error
            ok = (got.error_code, got.error_insn) == (int(code), index)
            detail = (
                f"stopped with {ErrorCode(got.error_code).name} at instruction {got.error_insn}"
                + ("" if ok else f", expected {ErrorCode(code).name} at {index}")
            )
            results.append(CaseResult(case.name, ok, detail, cycles))
            continue
        try:
            compare(want, got, timing)
            what = "outputs and counters" + (", cycles included," if timing else "")
            results.append(CaseResult(case.name, True, f"{what} equal", cycles))
        except AssertionError as e:
            results.append(CaseResult(case.name, False, str(e), cycles))
    return results
