"""The PE and the systolic array in amaranth.sim against ``sim.array_model.reference``."""

from __future__ import annotations

import re
import zlib
from fractions import Fraction

import numpy as np
import pytest

from hw.array import SystolicArray, array_modes
from hw.pe import Datapath
from hw.simulate import simulate_array, simulate_jobs
from qaccel import config, formats
from qaccel.isa import Geometry
from qaccel.modes import BusWidths, mode_spec
from sim.array_model import (
    check_run,
    os_beats,
    os_latency,
    random_scales,
    random_tile,
    reference,
    ws_beats,
    ws_copy_cycles,
    ws_latency,
)

TINY = config.load_config("configs/tiny.toml")
PAIRS = [(p.weight, p.activation) for p in TINY.array.modes]
SEED = 20261122


def rng_for(*key) -> np.random.Generator:
    seed = zlib.crc32(repr((SEED, *key)).encode())
    print(f"seed {seed} for {key}")
    return np.random.default_rng(seed)


def edge_codes(fmt) -> list[int]:
    """Largest, most negative, zero, smallest magnitudes either side, and the specials."""
    codes = fmt.finite_codes()
    values = fmt.decode(codes)
    picks = [codes[np.argmax(values)], codes[np.argmin(values)]]
    if (values == 0).any():
        picks.append(codes[values == 0][0])
    pos, neg = values > 0, values < 0
    if pos.any():
        picks.append(codes[pos][np.argmin(values[pos])])
    if neg.any():
        picks.append(codes[neg][np.argmax(values[neg])])
    picks += fmt.nan_codes[:1] + fmt.inf_codes[:1] + fmt.inf_codes[-1:]
    return sorted({int(c) for c in picks})


def make_array(rows, cols, pairs=PAIRS, dataflow="both", acc_bits=32, pipelined=False):
    modes = [mode_spec(w, a, rows=rows, acc_bits=acc_bits) for w, a in pairs]
    return SystolicArray(rows, cols, modes, dataflow, pipelined=pipelined)


def run_and_check(array, beats):
    run = simulate_array(array, beats)
    check_run(beats, run.a_cycles, run.outputs)
    return run


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}*{p[1]}")
def test_pe_edge_values(pair):
    """Every pair of edge operands (±max, zero, smallest, NaN/inf/NaR) through one PE, both
    dataflows; specials must raise the invalid flag and leave the finite sum."""
    array = make_array(1, 1, [pair])
    spec, bus = array.modes[0], array.datapath.bus
    w_edge, a_edge = edge_codes(spec.weight), edge_codes(spec.activation)
    pairs = [(w, a) for w in w_edge for a in a_edge]
    pairs += [pairs[0]] * (-len(pairs) % spec.lanes)
    w_col = np.array([w for w, _ in pairs]).reshape(-1, spec.lanes)
    a_row = np.array([a for _, a in pairs]).reshape(-1, spec.lanes)
    beats = None
    for w_lanes, a_lanes in zip(w_col, a_row, strict=True):  # weight-stationary, one by one
        one = ws_beats(bus, 1, 1, 0, spec, w_lanes[:, None], a_lanes[None, :])
        beats = one if beats is None else beats.extend(one)
    run_and_check(array, beats)
    # output-stationary: the same products summed in one dot product
    k = len(pairs)
    w = np.array([w for w, _ in pairs])[:, None]
    a = np.array([a for _, a in pairs])[None, :]
    run_and_check(array, os_beats(bus, 1, 1, 0, spec, w, a))
    if spec.weight.nan_codes or spec.activation.nan_codes:
        _, invalid = reference(spec, w, a)
        assert invalid.all() and k > 1


@pytest.mark.parametrize(
    "pair",
    [("int8", "int8"), ("int2", "int8"), ("fp8_e4m3", "fp8_e4m3"), ("posit8_0", "posit8_0")],
    ids=lambda p: f"{p[0]}*{p[1]}",
)
def test_accumulator_saturates(pair):
    """Sums past the accumulator's range stick at its bounds, in both directions."""
    array = make_array(1, 1, [pair], acc_bits=16)
    spec, bus = array.modes[0], array.datapath.bus
    codes = spec.weight.finite_codes()
    w_max = codes[np.argmax(spec.weight.decode(codes))]
    a_codes = spec.activation.finite_codes()
    a_max = a_codes[np.argmax(spec.activation.decode(a_codes))]
    a_min = a_codes[np.argmin(spec.activation.decode(a_codes))]
    low, high = spec.acc_range
    top = spec.weight.max_value * spec.activation.max_value * 2.0**spec.frac_bits
    steps = spec.lanes * (int(high // top) + 2)  # enough to pass the top
    w = np.full((3 * steps, 1), w_max)
    a = np.array([[a_max] * steps + [a_min] * (2 * steps)])
    values, _ = reference(spec, w, a)
    assert values[0, 0] == low  # went through high first, then all the way down
    assert reference(spec, w[:steps], a[:, :steps])[0][0, 0] == high  # the top, first
    run_and_check(array, os_beats(bus, 1, 1, 0, spec, w, a))


@pytest.mark.parametrize("pipelined", [False, True], ids=["plain", "pipelined"])
def test_weight_stationary_column_saturates(pipelined):
    """A weight-stationary column whose partial sum can pass acc_bits saturates at every PE,
    in k order (up to the top, then down from it); where no sum can, the PEs add exactly,
    as wide as the sum needs (hw.pe.Datapath.ws_sum_bits)."""
    array = make_array(4, 2, [("int8", "int8")], dataflow="ws", acc_bits=16, pipelined=pipelined)
    dp, spec, bus = array.datapath, array.modes[0], array.datapath.bus
    assert [dp.ws_sum_bits(r) for r in range(4)] == [16, None, None, None]
    wide = Datapath((mode_spec("int8", "int8", rows=4, acc_bits=32),), ws=True, os=False)
    assert wide.ws_sum_bits(3) == 18
    w = np.array([[0x7F, 0x80]] * 3 + [[0x80, 0x7F]])  # column 0: 127 x3, -128
    a = np.array([[0x7F] * 4, [0x80] * 4])  # rows of A: 127 x4; -128 x4
    values, _ = reference(spec, w, a)
    assert values[0].tolist() == [(1 << 15) - 1 - 127 * 128, -(1 << 15) + 127 * 127]
    run_and_check(array, ws_beats(bus, 4, 2, 0, spec, w, a, stages=dp.stages))


SHAPES = [(1, 4), (4, 1), (2, 5), (3, 3), (5, 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dataflow", ["ws", "os", "both"])
@pytest.mark.parametrize("pipelined", [False, True], ids=["plain", "pipelined"])
def test_array_back_to_back(shape, dataflow, pipelined):
    """Random products in every mode, two tiles back to back: bit-exact, on the latency
    formula's cycle, and with no bubble between the tiles."""
    rows, cols = shape
    array = make_array(rows, cols, dataflow=dataflow, pipelined=pipelined)
    rng = rng_for(shape, dataflow) if not pipelined else rng_for(shape, dataflow, "pipelined")
    # tiny's modes include float ones: their shifted products take a second register
    _back_to_back(array, rows, cols, dataflow, 2 * pipelined, rng)


@pytest.mark.parametrize(
    ("pair", "stages"), [(("int8", "int8"), 1), (("fp8_e4m3", "fp8_e4m3"), 2)], ids=str
)
@pytest.mark.parametrize("dataflow", ["ws", "os", "both"])
def test_one_mode_pipelined_array_back_to_back(pair, stages, dataflow):
    """A 3x5 array of one mode (no mode logic; a float-only PE has a constant float flag),
    pipelined: bit-exact and on the latency formula's cycles, as with every mode. A float
    product is registered once more after its shift."""
    array = make_array(3, 5, [pair], dataflow=dataflow, pipelined=True)
    _back_to_back(array, 3, 5, dataflow, stages, rng_for("one mode", pair, dataflow))


@pytest.mark.parametrize(
    ("pairs", "pipelined", "stages"),
    [
        ([("int8", "int8")], False, 0),
        ([("int8", "int8"), ("int2", "int8")], True, 1),
        ([("fp8_e4m3", "fp8_e4m3")], False, 0),
        ([("int8", "int8"), ("fp4_e2m1", "int8")], True, 2),
        ([("mxfp8_e4m3", "mxfp8_e4m3")], True, 2),
    ],
)
def test_pipeline_stages_follow_the_modes(pairs, pipelined, stages):
    """The latency the array's datapath has is the one the ISA geometry (the simulator's and
    the compiler's timing) derives from the configuration."""
    modes = tuple(mode_spec(w, a, rows=2, acc_bits=32) for w, a in pairs)
    assert Datapath(modes, ws=False, os=True, pipelined=pipelined).stages == stages
    cfg = config.config_from_dict(
        {
            "name": "stages",
            "array": {
                "rows": 2,
                "cols": 3,
                "dataflow": "os",
                "pipelined": pipelined,
                "modes": [{"weight": w, "activation": a} for w, a in pairs],
            },
        }
    )
    assert Geometry.of(cfg).pe_stages == stages


def _back_to_back(array, rows, cols, dataflow, stages, rng):
    """Two random tiles per mode back to back, checked against the reference."""
    bus = array.datapath.bus
    for index, spec in enumerate(array.modes):
        k = spec.lanes * rows
        if dataflow != "os":
            m = rows  # the shortest tile that hides the next bank's load (rows beats)
            tiles = [random_tile(spec, rng, n, k, cols) for n in (m, m + 2)]
            beats = ws_beats(bus, rows, cols, index, spec, *tiles[0], stages=stages)
            beats.extend(ws_beats(bus, rows, cols, index, spec, *tiles[1], stages=stages))
            run = run_and_check(array, beats)
            assert run.a_cycles == list(range(rows, rows + len(beats.a))), spec.name
        if dataflow != "ws":  # k = lanes * rows steps: the shortest tile that never stalls
            tiles = [random_tile(spec, rng, rows, n, cols) for n in (k, k + spec.lanes)]
            beats = os_beats(bus, rows, cols, index, spec, *tiles[0], stages=stages)
            beats.extend(os_beats(bus, rows, cols, index, spec, *tiles[1], stages=stages))
            run = run_and_check(array, beats)
            assert run.a_cycles == list(range(len(beats.a))), spec.name


@pytest.mark.parametrize("rows", [1, 2, 3, 5])
@pytest.mark.parametrize("dataflow", ["ws", "both"])
@pytest.mark.parametrize("pipelined", [False, True], ids=["plain", "pipelined"])
def test_weights_wait_for_the_tile_before_to_start(rows, dataflow, pipelined):
    """Three short tiles, the second's activations late: the third tile's last w beat
    (which overwrites the PEs' shadow weights) waits until the second tile has started, by
    ``ws_copy_cycles``; every result stays right."""
    cols = 2
    array = make_array(rows, cols, [("int8", "int8")], dataflow=dataflow, pipelined=pipelined)
    spec, bus = array.modes[0], array.datapath.bus
    rng = rng_for("late tile", rows, dataflow, pipelined)
    beats = None
    for _ in range(3):
        tile = ws_beats(bus, rows, cols, 0, spec, *random_tile(spec, rng, 2, rows, cols),
                        stages=int(pipelined))  # fmt: skip
        beats = tile if beats is None else beats.extend(tile)
    late = 6 * rows + 10  # tile 1's first a beat: long after tile 2's weights are in the chain
    run = simulate_array(array, beats, a_not_before={2: late})
    check_run(beats, run.a_cycles, run.outputs)
    assert run.a_cycles[2] == late
    offered = run.w_cycles[2 * rows - 1] + rows  # tile 2's last w beat, had nothing stopped it
    copy = max(rows - 2, 0)  # the documented contract (hw.array), written out independently
    assert ws_copy_cycles(rows) == copy
    assert run.w_cycles[3 * rows - 1] == max(offered, late + copy)
    assert run.w_cycles[3 * rows - 1] > offered  # it did wait


def test_short_output_stationary_tiles_stall():
    """A tile shorter than ``rows`` steps waits, and its results are still right."""
    array = make_array(4, 2, [("int8", "int8")], dataflow="os")
    spec, bus = array.modes[0], array.datapath.bus
    rng = rng_for("short")
    beats = os_beats(bus, 4, 2, 0, spec, rng.integers(0, 256, (1, 2)), rng.integers(0, 256, (4, 1)))
    beats.extend(
        os_beats(bus, 4, 2, 0, spec, rng.integers(0, 256, (2, 2)), rng.integers(0, 256, (4, 2)))
    )
    run = run_and_check(array, beats)
    assert run.a_cycles == [0, 1, 4]  # the second tile's last step waits for rows=4 cycles


@pytest.mark.parametrize(
    ("pairs", "dataflow", "marked"),
    [
        ([("int8", "int8")], "ws", {"a_valid", "a_bank"}),
        ([("int8", "int8")], "os", {"a_valid", "a_first", "a_last"}),
        ([("int8", "int8")], "both", {"a_valid", "a_bank", "a_first", "a_last", "a_os"}),
        ([("int8", "int8"), ("int4", "int8")], "ws", {"a_valid", "a_bank", "a_mode"}),
        (
            [("int8", "int8"), ("int4", "int8")],
            "both",
            {"a_valid", "a_bank", "a_first", "a_last", "a_mode", "a_os"},
        ),
        ([("mxfp8_e4m3", "mxfp8_e4m3")], "os", {"a_valid", "a_first", "a_last", "a_block_end"}),
    ],
)
def test_steering_tags_have_a_register_per_pe(pairs, dataflow, marked):
    """The control tags a PE reads are its own registers, marked so that synthesis does not
    merge them along the array's anti-diagonals (fpga.synth); no others are marked."""
    from hw.generate import to_verilog
    from qaccel.toolchain import DONT_MERGE

    text = to_verilog(make_array(2, 3, pairs, dataflow), "array")
    modules = re.split(r"^module ", text, flags=re.M)[1:]
    pes = [m for m in modules if re.match(r"array__pe_\d+\(", m)]
    assert pes
    for module in [*pes, *(m for m in modules if m not in pes)]:
        found = set(re.findall(rf"\(\* {DONT_MERGE} = \S+ \*\)\n\s+reg (\w+)", module))
        assert found == (marked if module in pes else set())


def test_latency_formulas():
    """The documented contract, in numbers: 3x5 array."""
    assert ws_latency(3, 5) == 8
    assert [os_latency(3, 5, r) for r in range(3)] == [9, 10, 11]
    array = make_array(3, 5, [("int8", "int8")])
    spec, bus = array.modes[0], array.datapath.bus
    rng = rng_for("latency")
    beats = ws_beats(bus, 3, 5, 0, spec, rng.integers(0, 256, (3, 5)), rng.integers(0, 256, (2, 3)))
    run = run_and_check(array, beats)
    assert run.a_cycles == [3, 4] and [c for c, *_ in run.outputs] == [11, 12]


def test_array_from_config_has_every_mode():
    array = SystolicArray.from_config(TINY)
    array._MustUse__silence = True  # built to be inspected, not elaborated
    assert [m.name for m in array.modes] == [m.name for m in array_modes(TINY.array)]
    assert array.mode_index("int4", "int8") == 1
    with pytest.raises(ValueError, match="no mode int8\\*fp8_e4m3"):
        array.mode_index("int8", "fp8_e4m3")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 4), "rows must be a positive integer, not 0"),
        ((4, "4"), "cols must be a positive integer, not '4'"),
        ((4, 4, "xs"), "dataflow must be one of ws, os, both, not 'xs'"),
    ],
)
def test_array_rejects_bad_parameters(args, message):
    modes = [mode_spec("int8", "int8", rows=4, acc_bits=32)]
    rows, cols, *flow = args
    with pytest.raises(ValueError, match=message):
        SystolicArray(rows, cols, modes, *flow)


def test_beats_reject_wrong_shapes():
    spec = mode_spec("int4", "int8", rows=2, acc_bits=32)
    bus = BusWidths.of([spec])
    with pytest.raises(ValueError, match="weight-stationary needs W 4x2"):
        ws_beats(bus, 2, 2, 0, spec, np.zeros((2, 2)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="multiple of 2"):
        os_beats(bus, 2, 2, 0, spec, np.zeros((3, 2)), np.zeros((2, 3)))


def test_reference_matches_plain_matmul():
    """Without saturation the reference is A @ W of the decoded values."""
    rng = rng_for("reference")
    for w_name, a_name in PAIRS:
        spec = mode_spec(w_name, a_name, rows=4, acc_bits=32)
        w, a = random_tile(spec, rng, 5, 4 * spec.lanes, 3)
        values, invalid = reference(spec, w, a)
        exact = spec.activation.decode(a) @ spec.weight.decode(w)
        got = np.array([[float(v) for v in row] for row in values]) * 2.0**-spec.frac_bits
        np.testing.assert_array_equal(got, exact)
        assert not invalid.any()


def test_dataflow_switches_between_jobs():
    """WS, OS, WS, OS in one run: each dataflow's bookkeeping survives the other's traffic."""
    array = make_array(3, 2, [("int8", "int8"), ("int4", "int8")])
    bus = array.datapath.bus
    rng = rng_for("switch")
    jobs = []
    for index, spec in enumerate(array.modes * 2):
        index %= 2
        k = 3 * spec.lanes
        jobs.append(ws_beats(bus, 3, 2, index, spec, *random_tile(spec, rng, 4, k, 2)))
        k += spec.lanes  # an output-stationary tile of rows + 1 steps
        jobs.append(os_beats(bus, 3, 2, index, spec, *random_tile(spec, rng, 3, k, 2)))
    for beats, run in zip(jobs, simulate_jobs(array, jobs, timeout=1000), strict=True):
        check_run(beats, run.a_cycles, run.outputs)


# --- MX block scales ------------------------------------------------------------------------

MX_PAIRS = [(f, f) for f in formats.MX_FORMATS] + [
    ("mxfp4", "mxfp8_e4m3"),
    ("mxint8", "mxfp8_e5m2"),
]


def mx_values(spec, w, a, w_scales, a_scales):
    """C in units of 2**-frac_bits from the MX formats' own dequantizers, exactly (Fractions)."""
    mw, ma = (formats.MX_FORMATS[name] for name in spec.mx)
    w_values = mw.dequantize(np.asarray(w_scales).T, np.asarray(w).T).T  # K x N
    a_values = ma.dequantize(a_scales, a)  # M x K
    out = np.zeros((a_values.shape[0], w_values.shape[1]), dtype=object)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            pairs = zip(a_values[i], w_values[:, j], strict=True)
            total = sum(Fraction(x) * Fraction(y) for x, y in pairs)
            out[i, j] = total * 2**spec.frac_bits
    return out


@pytest.mark.parametrize("pair", MX_PAIRS, ids="*".join)
def test_mx_reference_matches_dequantized_products(pair):
    """Quantize random reals with ``formats.MXFormat.quantize``: the reference (block sums
    shifted into the window) equals the exact dot products of the dequantized values."""
    spec = mode_spec(*pair, rows=4, acc_bits=32)
    mw, ma = (formats.MX_FORMATS[name] for name in pair)
    rng = rng_for("mx-reference", pair)
    k = 2 * spec.block + 7  # two whole blocks and a partial one
    w_mx = mw.quantize(rng.normal(0, 0.05, (3, k)))  # quantized along K: W transposed
    a_mx = ma.quantize(rng.normal(0, 2.0, (4, k)))
    w, w_scales = w_mx.elements.T, w_mx.scales.T
    values, invalid = reference(spec, w, a_mx.elements, w_scales, a_mx.scales)
    assert not invalid.any()
    assert (values == mx_values(spec, w, a_mx.elements, w_scales, a_mx.scales)).all()
    assert (values != 0).all()


@pytest.mark.parametrize("pair", MX_PAIRS, ids="*".join)
def test_mx_pe_edge_elements(pair):
    """Every pair of edge elements (±max, zero, smallest, NaN) in one PE's dot product, blocks
    at random scales in the window; without the NaN elements, the same sum is valid."""
    array = make_array(1, 1, [pair], "os")
    spec, bus = array.modes[0], array.datapath.bus
    rng = rng_for("mx-edges", pair)
    pairs = [(w, a) for w in edge_codes(spec.weight) for a in edge_codes(spec.activation)]
    w = np.array([w for w, _ in pairs])[:, None]
    a = np.array([a for _, a in pairs])[None, :]
    w_special = set(spec.weight.nan_codes + spec.weight.inf_codes)
    a_special = set(spec.activation.nan_codes + spec.activation.inf_codes)
    special = w_special | a_special
    finite = np.array([w_ not in w_special and a_ not in a_special for w_, a_ in pairs])
    beats = None
    for w_k, a_k in ((w, a), (w[finite], a[:, finite])):
        scales = random_scales(spec, rng, 1, len(w_k), 1)
        tile = os_beats(bus, 1, 1, 0, spec, w_k, a_k, *scales)
        beats = tile if beats is None else beats.extend(tile)
    assert [invalid for _, invalid in beats.expected] == [[int(bool(special))], [0]]
    run_and_check(array, beats)


@pytest.mark.parametrize("dataflow", ["os", "both"])
def test_mx_array_back_to_back(dataflow):
    """Every MX pair (and an integer mode between them) on a 3x2 array: tiles of 2.2 blocks
    and of one block back to back, bit-exact, on the output-stationary latency formula."""
    pairs = [("int8", "int8"), *MX_PAIRS]
    array = make_array(3, 2, pairs, dataflow)
    bus = array.datapath.bus
    rng = rng_for("mx-array", dataflow)
    for index, spec in enumerate(array.modes):
        beats = None
        for k in (70, 32) if spec.block else (3, 5):
            w, a = random_tile(spec, rng, 3, k, 2)
            scales = random_scales(spec, rng, 3, k, 2) if spec.block else (None, None)
            tile = os_beats(bus, 3, 2, index, spec, w, a, *scales)
            beats = tile if beats is None else beats.extend(tile)
        run = run_and_check(array, beats)
        assert run.a_cycles == list(range(len(beats.a))), spec.name


def test_mx_scale_window_edges():
    """One PE, mxfp8_e4m3, four-block tiles: blocks at both ends of the window join exactly;
    a zero block needs no window; a nonzero block outside it, a NaN scale or a NaN element
    makes the sum invalid (and adds nothing)."""
    array = make_array(1, 1, [("mxfp8_e4m3", "mxfp8_e4m3")], "os")
    spec, bus = array.modes[0], array.datapath.bus
    lo, hi = spec.scale_range
    one = 0x38  # E4M3 1.0
    ones = np.full(spec.block, one)

    def tile(scale_exponents, elements):
        """Blocks with W scale 2**e_w and A scale 2**e_a, elements A = 1 and W per block."""
        w = np.concatenate([ones if e is None else e for e in elements])[:, None]
        a = np.full((1, len(w)), one)
        w_scales = np.array([[ew + 127 if ew != "nan" else 0xFF] for ew, _ in scale_exponents])
        a_scales = np.array([[ea + 127 for _, ea in scale_exponents]])
        return os_beats(bus, 1, 1, 0, spec, w, a, w_scales, a_scales)

    zero = np.zeros(spec.block, dtype=np.int64)
    nan = np.array([0x7F] + [one] * (spec.block - 1))
    cases = [
        # (scales per block, W elements per block (None: ones)), expected (value, invalid)
        ([(lo, 0), (0, hi), (0, 0)], [None] * 3, (32 + (32 << (hi - lo)) + (32 << -lo), 0)),
        ([(lo, 0), (-127, -127)], [None, zero], (32, 0)),
        ([(lo - 1, 0), (0, 0)], [None] * 2, (32 << -lo, 1)),
        ([(hi, 1), (0, 0)], [None] * 2, (32 << -lo, 1)),
        ([("nan", 0), (0, 0)], [zero, None], (32 << -lo, 1)),
        ([(0, 0), (0, 0)], [nan, None], ((31 + 32) << -lo, 1)),
    ]
    beats = None
    for scales, elements, (value, invalid) in cases:
        one_tile = tile(scales, elements)
        elem_units = 2 ** (spec.frac_bits + lo)  # 1.0 * 1.0 in block-sum units
        assert one_tile.expected == [([value * elem_units], [invalid])], scales
        beats = one_tile if beats is None else beats.extend(one_tile)
    run_and_check(array, beats)


def test_mx_accumulator_saturates():
    """470 full-range mxfp4 blocks at the top of the window overflow the 8 guard bits: the sum
    saturates at the accumulator's maximum."""
    array = make_array(1, 1, [("mxfp4", "mxfp4")], "os")
    spec, bus = array.modes[0], array.datapath.bus
    hi = spec.scale_range[1]
    blocks = 470
    w = np.full((blocks * spec.block, 1), 0b0111)  # FP4 6.0
    a = np.full((1, blocks * spec.block), 0b0111)
    beats = os_beats(
        bus, 1, 1, 0, spec, w, a, np.full((blocks, 1), 127 + hi), np.full((1, blocks), 127)
    )
    assert beats.expected == [([spec.acc_range[1]], [0])]
    run_and_check(array, beats)


def test_mx_mode_in_weight_stationary_is_invalid():
    """An MX mode has no weight-stationary form: the hardware flags every result invalid."""
    array = make_array(2, 2, [("int8", "int8"), ("mxfp4", "mxfp4")])
    int8, mx = array.modes
    with pytest.raises(ValueError, match="output-stationary only"):
        ws_beats(array.datapath.bus, 2, 2, 1, mx, np.zeros((2, 2)), np.zeros((1, 2)))
    beats = ws_beats(array.datapath.bus, 2, 2, 0, int8, np.ones((2, 2)), np.ones((3, 2)))
    beats.w = [w | 1 << (2 * array.datapath.bus.w_word_bits) for w in beats.w]  # mode 1
    run = simulate_array(array, beats)
    assert [invalid for *_, invalid in run.outputs] == [[1, 1]] * 3


def test_mx_beats_and_datapath_reject_misuse():
    spec = mode_spec("mxfp4", "mxfp4", rows=2, acc_bits=32)
    bus = BusWidths.of([spec])
    w, a = np.zeros((40, 2), dtype=np.int64), np.zeros((2, 40), dtype=np.int64)
    with pytest.raises(ValueError, match="needs the block scales"):
        os_beats(bus, 2, 2, 0, spec, w, a)
    with pytest.raises(ValueError, match="W scales must be 2x2 and A scales 2x2"):
        os_beats(bus, 2, 2, 0, spec, w, a, np.zeros((1, 2)), np.zeros((2, 1)))
    int8 = mode_spec("int8", "int8", rows=2, acc_bits=32)
    with pytest.raises(ValueError, match="has no block scales"):
        reference(int8, np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((1, 2)), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="need the output-stationary dataflow"):
        SystolicArray(2, 2, [spec], "ws")


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        (("mxfp4", "int8"), "MX formats pair only with MX formats"),
        (("mxfp4", "mxfp9"), "unknown number format 'mxfp9'"),
    ],
)
def test_mx_mode_spec_rejects(pair, message):
    with pytest.raises(ValueError, match=message):
        mode_spec(*pair, rows=2, acc_bits=32)
    with pytest.raises(ValueError, match="lo <= hi"):
        mode_spec("mxfp4", "mxfp4", rows=2, acc_bits=32, mx_scale_range=(3, 1))


@pytest.mark.parametrize(
    ("pairs", "registered"),
    [([("fp8_e4m3", "fp8_e4m3")], False), ([("int8", "int8"), ("fp8_e4m3", "fp8_e4m3")], True)],
)
def test_float_only_pes_register_no_constant(pairs, registered):
    """A pipelined PE registers whether its product is a float's only where that varies with
    the mode: a register of a constant would be one register per array after Yosys merged
    them, fanning out to every PE (the critical path of the 8x8 FP8 array)."""
    from hw.generate import to_verilog

    text = to_verilog(make_array(2, 2, pairs, pipelined=True), "array")
    assert bool(re.search(r"reg .*\bis_float_reg\b", text)) == registered


@pytest.mark.parametrize("slices", [2, 4])
def test_booth_slice_product_is_exact(slices):
    """A narrow slice's Booth product, for every slice weight (two's complement, sign bit
    included) against activations from the 9-bit extremes and random ones."""
    from amaranth.hdl import Module, Signal, signed
    from amaranth.sim import Simulator

    from hw.pe import _slice_product

    n = 8 // slices + 1
    w, a = Signal(signed(n)), Signal(signed(9))
    p = Signal(signed(n + 9))
    m = Module()
    m.d.comb += p.eq(_slice_product(w, a, slices))
    rng = rng_for("booth", slices)
    acts = [-256, -255, -129, -1, 0, 1, 2, 127, 254, 255, *rng.integers(-256, 256, 24).tolist()]
    wrong = []

    async def testbench(ctx):
        for wv in range(-(1 << (n - 1)), 1 << (n - 1)):
            for av in acts:
                ctx.set(w, wv)
                ctx.set(a, av)
                if ctx.get(p) != wv * av:
                    wrong.append((wv, av, ctx.get(p)))

    sim = Simulator(m)
    sim.add_testbench(testbench)
    sim.run()
    assert not wrong
