"""The PE and the systolic array in amaranth.sim against ``sim.array_model.reference``."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from hw.array import SystolicArray, array_modes
from hw.simulate import simulate_array, simulate_jobs
from qaccel import config
from qaccel.modes import BusWidths, mode_spec
from sim.array_model import (
    check_run,
    os_beats,
    os_latency,
    random_tile,
    reference,
    ws_beats,
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


def make_array(rows, cols, pairs=PAIRS, dataflow="both", acc_bits=32):
    modes = [mode_spec(w, a, rows=rows, acc_bits=acc_bits) for w, a in pairs]
    return SystolicArray(rows, cols, modes, dataflow)


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


SHAPES = [(1, 4), (4, 1), (2, 5), (3, 3), (5, 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dataflow", ["ws", "os", "both"])
def test_array_back_to_back(shape, dataflow):
    """Random products in every mode, two tiles back to back: bit-exact, on the latency
    formula's cycle, and with no bubble between the tiles."""
    rows, cols = shape
    array = make_array(rows, cols, dataflow=dataflow)
    bus = array.datapath.bus
    rng = rng_for(shape, dataflow)
    for index, spec in enumerate(array.modes):
        k = spec.lanes * rows
        if dataflow != "os":
            m = rows  # the shortest tile that hides the next bank's load (rows beats)
            beats = ws_beats(bus, rows, cols, index, spec, *random_tile(spec, rng, m, k, cols))
            beats.extend(
                ws_beats(bus, rows, cols, index, spec, *random_tile(spec, rng, m + 2, k, cols))
            )
            run = run_and_check(array, beats)
            assert run.a_cycles == list(range(rows, rows + len(beats.a))), spec.name
        if dataflow != "ws":  # k = lanes * rows steps: the shortest tile that never stalls
            beats = os_beats(bus, rows, cols, index, spec, *random_tile(spec, rng, rows, k, cols))
            k += spec.lanes
            beats.extend(
                os_beats(bus, rows, cols, index, spec, *random_tile(spec, rng, rows, k, cols))
            )
            run = run_and_check(array, beats)
            assert run.a_cycles == list(range(len(beats.a))), spec.name


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
