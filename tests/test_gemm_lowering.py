"""The GEMM lowering run on the functional executor, against exact arithmetic computed here
independently (decoded values, Python integers): every mode of the presets, both dataflows,
the LUT core, K, M, N not multiples of the array, chunked K, MX, epilogues with residual."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from compiler.gemm import Epilogue, lower_gemm
from qaccel import config, formats
from qaccel.isa import Geometry
from qaccel.program import ProgramError
from sim.executor import run_program

TINY = config.load_config("configs/tiny.toml")
LUT = config.load_config("configs/lut.toml")
SEED = 20261130


def _cfg(**array):
    """A small configuration with one array section (for odd shapes and single modes)."""
    base = {
        "name": "odd",
        "array": {"rows": 3, "cols": 5, "dataflow": "os", "modes": [], **array},
        "memory": {
            "scratchpad_kib": 4,
            "scratchpad_banks": 2,
            "accumulator_kib": 4,
            "accumulator_banks": 2,
        },
        "dram": {"bytes_per_cycle": 4, "latency_cycles": 10},
    }
    return config.config_from_dict(base)


def exact_units(x_values, w_values, frac_bits: int) -> np.ndarray:
    """sum_k x * w in units of 2**-frac_bits, exactly (Fractions)."""
    m, k = x_values.shape
    n = w_values.shape[1]
    out = np.zeros((m, n), dtype=object)
    scale = Fraction(2) ** frac_bits
    xs = [[Fraction(float(v)) for v in row] for row in x_values]
    ws = [[Fraction(float(v)) for v in row] for row in w_values]
    for i in range(m):
        for j in range(n):
            total = sum(xs[i][t] * ws[t][j] for t in range(k)) * scale
            assert total.denominator == 1
            out[i, j] = int(total)
    return out


def input_codes(fmt, codes):
    """What the executor takes: signed values for integer formats, codes otherwise."""
    return fmt.decode(codes).astype(np.int64) if fmt.kind == "int" else codes


def check_mode(cfg, mode_index, dataflow, m, k, n, rng):
    g = Geometry.of(cfg)
    spec = g.array_modes[mode_index]
    pair = str(cfg.array.modes[mode_index])
    w = rng.choice(spec.weight.finite_codes(), (k, n))
    x = rng.choice(spec.activation.finite_codes(), (m, k))
    program = lower_gemm(cfg, w, m=m, mode=pair, dataflow=dataflow)
    result = run_program(program, {"x": input_codes(spec.activation, x)})
    want = exact_units(spec.activation.decode(x), spec.weight.decode(w), spec.frac_bits)
    got = result.outputs["y"].astype(object)
    assert np.array_equal(got, want), f"{pair} {dataflow}: {got} != {want}"
    return program


@pytest.mark.parametrize("dataflow", ["os", "ws"])
@pytest.mark.parametrize("mode", range(len(TINY.array.modes)))
def test_every_tiny_mode_raw(mode, dataflow):
    rng = np.random.default_rng(SEED + mode)
    # M, K, N not multiples of 4; K long enough for several weight tiles or chunks
    check_mode(TINY, mode, dataflow, 7, 11, 9, rng)


def test_float_k_beyond_max_k_is_chunked():
    rng = np.random.default_rng(SEED)
    program = check_mode(TINY, 6, "os", 4, 13, 4, rng)  # fp8_e4m3: 4 steps a chunk
    assert program.notes["gemm"]["chunk_steps"] == 4
    assert program.notes["gemm"]["chunks"] == 4


@pytest.mark.parametrize(
    "pair",
    [("int8", "int8"), ("int2", "int8"), ("fp8_e4m3", "fp8_e4m3"), ("ternary", "int8")],
)
def test_odd_array_one_mode_one_dataflow(pair):
    cfg = _cfg(modes=[{"weight": pair[0], "activation": pair[1]}])
    check_mode(cfg, 0, "os", 5, 17, 12, np.random.default_rng(SEED))


def test_weight_stationary_only_array():
    cfg = _cfg(dataflow="ws", modes=[{"weight": "int4", "activation": "int8"}])
    check_mode(cfg, 0, "ws", 10, 9, 7, np.random.default_rng(SEED))
    with pytest.raises(ProgramError, match=r"the array runs ws, not 'os'"):
        lower_gemm(cfg, np.zeros((4, 4), int), m=2, mode="int4*int8", dataflow="os")


@pytest.mark.parametrize("pair", ["mxint8*mxint8", "mxfp8_e4m3*mxfp8_e4m3", "mxfp4*mxfp8_e4m3"])
def test_mx_modes(pair):
    w_name, a_name = pair.split("*")
    cfg = _cfg(rows=2, cols=3, modes=[{"weight": w_name, "activation": a_name}], max_k=64)
    g = Geometry.of(cfg)
    spec = g.array_modes[0]
    rng = np.random.default_rng(SEED)
    m, k, n = 3, 70, 4  # three blocks, the last one partial
    blocks = -(-k // spec.block)
    w = rng.choice(spec.weight.finite_codes(), (k, n))
    x = rng.choice(spec.activation.finite_codes(), (m, k))
    lo, hi = spec.scale_range
    w_scales = rng.integers(-(-lo // 2), hi // 2 + 1, (blocks, n)) + 127
    x_scales = rng.integers(-(-lo // 2), hi // 2 + 1, (m, blocks)) + 127
    program = lower_gemm(cfg, w, m=m, mode=pair, w_scales=w_scales)
    result = run_program(program, {"x": x, "x_scales": x_scales})
    wv = spec.weight.decode(w) * 2.0 ** (w_scales[np.arange(k) // spec.block] - 127)
    xv = spec.activation.decode(x) * 2.0 ** (x_scales[:, np.arange(k) // spec.block] - 127)
    want = exact_units(xv, wv, spec.frac_bits)
    assert np.array_equal(result.outputs["y"].astype(object), want)
    assert result.counters["INVALID"] == 0


@pytest.mark.parametrize("weight", ["binary", "int2", "uint2", "int3", "ternary", "uint4"])
def test_lut_core(weight):
    rng = np.random.default_rng(SEED)
    fmt = formats.get_format(weight)
    w = rng.choice(fmt.finite_codes(), (37, 70))  # K not a multiple of the group, two n tiles
    x = rng.integers(-128, 128, (5, 37))
    program = lower_gemm(LUT, w, m=5, mode=f"{weight}*int8")
    assert program.notes["gemm"]["unit"] == "lut"
    result = run_program(program, {"x": x})
    assert np.array_equal(result.outputs["y"], x @ fmt.decode(w).astype(np.int64))


@pytest.mark.parametrize("dataflow", ["os", "ws"])
def test_epilogue_requant_bias_relu_residual(dataflow):
    rng = np.random.default_rng(SEED)
    m, k, n = 9, 20, 10
    w = rng.integers(-128, 128, (k, n))
    x = rng.integers(-128, 128, (m, k))
    residual = rng.integers(-128, 128, (m, n))
    bias = rng.integers(-5000, 5000, n)
    multipliers = np.linspace(0.0005, 0.004, n)
    ep = Epilogue.requant(
        multipliers, relu=True, zero_point=-3, bias=bias, residual=True, res_shift=6
    )
    program = lower_gemm(TINY, w, m=m, mode="int8*int8", dataflow=dataflow, epilogue=ep)
    result = run_program(program, {"x": x, "residual": residual})
    # Independently: exact rational requantization, round half to even, clamp.
    want = np.zeros((m, n), dtype=np.int64)
    for i in range(m):
        for j in range(n):
            acc = int(x[i] @ w[:, j]) + int(bias[j]) + (int(residual[i, j]) << 6)
            y = round(Fraction(acc * int(ep.b[j]), 2 ** int(ep.c[j]))) - 3
            want[i, j] = min(max(y, -3), 127)
    assert np.array_equal(result.outputs["y"], want)
    saturated = sum(
        1
        for i in range(m)
        for j in range(n)
        if not -128
        <= round(
            Fraction(
                (int(x[i] @ w[:, j]) + int(bias[j]) + (int(residual[i, j]) << 6)) * int(ep.b[j]),
                2 ** int(ep.c[j]),
            )
        )
        - 3
        <= 127
    )
    assert result.counters["SATURATIONS"] == saturated


def test_uint8_output():
    rng = np.random.default_rng(SEED)
    w = rng.integers(-128, 128, (8, 4))
    x = rng.integers(-128, 128, (4, 8))
    ep = Epilogue.requant(0.01, out_signed=False, zero_point=128)
    result = run_program(lower_gemm(TINY, w, m=4, mode="int8*int8", epilogue=ep), {"x": x})
    want = [
        [
            min(max(round(Fraction(int(v) * int(ep.b[0]), 2 ** int(ep.c[0]))) + 128, 0), 255)
            for v in row
        ]
        for row in x @ w
    ]
    assert np.array_equal(result.outputs["y"], want)


def test_counters_count_dram_traffic():
    w = np.ones((4, 4), dtype=np.int64)
    program = lower_gemm(TINY, w, m=4, mode="int8*int8", dataflow="os")
    result = run_program(program, {"x": np.ones((4, 4), dtype=np.int64)})
    g = program.geometry
    assert result.counters["DRAM_READ_BYTES"] == 2 * 4 * g.sp_row_bytes  # 4 steps of A and W
    assert result.counters["DRAM_WRITE_BYTES"] == 4 * g.acc_row_bytes
    assert result.counters["INSNS"] == len(program.instructions) - 1
    assert np.array_equal(result.outputs["y"], np.full((4, 4), 4))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(mode="int3*int8"), "has no unit for int3\\*int8"),
        (dict(mode="int8*int8", unit="gpu"), "unit must be 'array' or 'lut'"),
        (dict(mode="int8*int8", m=0), "m must be a positive integer"),
        (dict(mode="int8*int8", epilogue=Epilogue(b=[1, 2])), "epilogue b has 2 values"),
    ],
)
def test_lowering_errors(kwargs, message):
    kwargs = {"m": 2, **kwargs}
    with pytest.raises(ProgramError, match=message):
        lower_gemm(TINY, np.zeros((4, 3), dtype=np.int64), **kwargs)


def test_input_errors():
    program = lower_gemm(TINY, np.zeros((4, 4), dtype=np.int64), m=2, mode="int8*int8")
    with pytest.raises(ValueError, match=r"input 'x' must have shape \(2, 4\)"):
        run_program(program, {"x": np.zeros((3, 4), dtype=np.int64)})
    with pytest.raises(ValueError, match=r"input 'x' is missing"):
        run_program(program, {})
    with pytest.raises(ValueError, match=r"has values outside int8"):
        run_program(program, {"x": np.full((2, 4), 200)})
    with pytest.raises(ValueError, match=r"no input 'z'"):
        run_program(program, {"x": np.zeros((2, 4), dtype=np.int64), "z": 1})


@pytest.mark.parametrize(("mode", "dataflow"), [("binary*int8", "os"), ("binary*int8", "ws")])
def test_padding_comes_from_the_image_not_from_clean_dram(mode, dataflow):
    """A host loads the image, then writes the inputs: DRAM it never wrote may hold anything.
    K padding must read as zero (a binary weight code 0 is -1), so it is part of the image."""
    from qaccel.program import token_order
    from sim.executor import Machine, dram_size, place_inputs, read_outputs

    rng = np.random.default_rng(SEED)
    w = rng.integers(0, 2, (9, 5))  # K = 9: padded to whole 4-lane words and tiles
    x = rng.integers(-128, 128, (3, 9))
    program = lower_gemm(TINY, w, m=3, mode=mode, dataflow=dataflow)
    machine = Machine(program.geometry, dram_size(program))
    machine.dram[:] = bytes([0xA5]) * len(machine.dram)
    place_inputs(machine, program, {"x": x})
    for index in token_order(program.body):
        machine.execute(program.instructions[index])
    want = x @ formats.get_format("binary").decode(w).astype(np.int64)
    assert np.array_equal(read_outputs(machine, program)["y"], want)


def test_int32_accumulator_outputs_saturate_and_count():
    """acc_out="int32": integer results exact; fp8_e5m2 results (units of 2**-32) beyond
    int32 clamp, and each clamp is counted."""
    rng = np.random.default_rng(SEED)
    w = rng.integers(-128, 128, (9, 6))
    x = rng.integers(-128, 128, (5, 9))
    result = run_program(lower_gemm(TINY, w, m=5, mode="int8*int8", acc_out="int32"), {"x": x})
    assert np.array_equal(result.outputs["y"], x @ w)
    assert result.counters["SATURATIONS"] == 0
    g = Geometry.of(TINY)
    spec = g.array_modes[7]  # fp8_e5m2 x fp8_e5m2
    w = rng.choice(spec.weight.finite_codes(), (4, 6))
    x = rng.choice(spec.activation.finite_codes(), (5, 4))
    program = lower_gemm(TINY, w, m=5, mode="fp8_e5m2*fp8_e5m2", acc_out="int32")
    result = run_program(program, {"x": x})
    exact = exact_units(spec.activation.decode(x), spec.weight.decode(w), spec.frac_bits)
    clamped = np.clip(exact, -(1 << 31), (1 << 31) - 1)
    assert np.array_equal(result.outputs["y"].astype(object), clamped)
    assert result.counters["SATURATIONS"] == int((clamped != exact).sum()) > 0
    with pytest.raises(ProgramError, match="acc_out must be 'native' or 'int32', not 'int16'"):
        lower_gemm(TINY, w, m=5, mode="fp8_e5m2*fp8_e5m2", acc_out="int16")


def test_weight_codes_must_be_values():
    with pytest.raises(ProgramError, match="weights: ternary code 0b10 is not a value"):
        lower_gemm(TINY, np.array([[0, 1], [2, 3]]), m=1, mode="ternary*int8")
    with pytest.raises(ProgramError, match=r"weights: int4 takes values -8\.\.15"):
        lower_gemm(TINY, np.array([[16]]), m=1, mode="int4*int8")


def test_a_gemm_that_cannot_be_blocked_is_refused():
    """A 32-row weight-stationary array whose 1 KiB scratchpad holds 32 rows of 32 bytes: two
    weight tiles of 32 rows cannot fit, so the lowering says why instead of overrunning."""
    cfg = config.config_from_dict(
        {
            "name": "cramped",
            "array": {
                "rows": 32,
                "cols": 4,
                "dataflow": "ws",
                "modes": [{"weight": "int8", "activation": "int8"}],
            },
            "memory": {
                "scratchpad_kib": 1,
                "scratchpad_banks": 2,
                "accumulator_kib": 4,
                "accumulator_banks": 2,
            },
            "dram": {"bytes_per_cycle": 4, "latency_cycles": 10},
        }
    )
    with pytest.raises(ProgramError, match=r"cannot hold two chunks of int8\*int8"):
        lower_gemm(cfg, np.ones((64, 4), dtype=np.int64), m=8, mode="int8*int8")


def test_blocking_reuses_a_rows_across_n_tiles():
    """Several n tiles per m block: the rows of A are loaded once per block and chunk, not
    once per n tile (the DRAM reads count it), and the results stay exact."""
    rng = np.random.default_rng(SEED)
    m, k, n = 32, 64, 64
    w, x = rng.integers(-128, 128, (k, n)), rng.integers(-128, 128, (m, k))
    edge = config.load_config("configs/edge.toml")
    program = lower_gemm(edge, w, m=m, mode="int8*int8", dataflow="ws")
    assert np.array_equal(run_program(program, {"x": x}).outputs["y"], x @ w)
    g = Geometry.of(edge)
    x_spec = next(t for t in program.inputs if t.name == "x")
    x_end = x_spec.address + -(-k // g.rows) * m * g.sp_row_bytes
    a_rows = sum(
        i.fields["y_size"] * i.fields["x_size"]
        for i in program.body
        if i.opcode.name == "LOAD" and x_spec.address <= i.fields["dram_addr"] < x_end
    )
    assert a_rows == -(-k // g.rows) * m  # every row of A once, for all four n tiles


@pytest.mark.parametrize("mode", ["int4*int8", "int2*int8", "int8*int8"])
@pytest.mark.parametrize("dataflow", ["os", "ws"])
def test_signed_weight_values_equal_their_codes(mode, dataflow):
    """Integer weights given as signed values (-8..7 for int4) compute what their two's
    complement codes compute: the lowering keeps only the format's bits."""
    rng = np.random.default_rng(SEED)
    bits = formats.get_format(mode.partition("*")[0]).bits
    w = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), (24, 6))
    x = rng.integers(-128, 128, (5, 24))
    y = run_program(
        lower_gemm(TINY, w, m=5, mode=mode, dataflow=dataflow, acc_out="int32"), {"x": x}
    ).outputs["y"]
    assert np.array_equal(y, x @ w)
