"""The LUT tensor core: its numpy algorithm against plain A @ W, and the Amaranth core against
the algorithm in amaranth.sim (bit-exact, on the latency formula's cycle)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from hw.lut_core import LutCore, _entries, lut_modes
from hw.simulate import simulate_lut
from qaccel import config, formats
from sim.lut_model import (
    LUT_WEIGHT_FORMATS,
    check_lut_run,
    lookup,
    lut_beats,
    lut_weight,
    reference,
    tables,
)

SEED = 20261123
ACTIVATIONS = ("int8", "uint8")


def rng_for(*key) -> np.random.Generator:
    seed = zlib.crc32(repr((SEED, *key)).encode())
    print(f"seed {seed} for {key}")
    return np.random.default_rng(seed)


def plain(weight: str, activation: str, w, a) -> np.ndarray:
    """A @ W of the decoded codes, by the formats' own decoders."""
    w_values = formats.get_format(weight).decode(np.asarray(w)).astype(np.int64)
    a_values = formats.get_format(activation).decode(np.asarray(a)).astype(np.int64)
    return a_values @ w_values


def extreme_codes(fmt) -> np.ndarray:
    """The codes of the largest and the most negative value (and zero where there is one)."""
    codes = fmt.finite_codes()
    values = fmt.decode(codes)
    picks = {codes[np.argmax(values)], codes[np.argmin(values)]}
    picks |= set(codes[values == 0][:1])
    return np.array(sorted(int(c) for c in picks))


@pytest.mark.parametrize("weight", LUT_WEIGHT_FORMATS)
def test_plane_reading_is_the_format(weight):
    lw = lut_weight(weight)
    codes = lw.fmt.finite_codes()
    np.testing.assert_array_equal(lw.values(codes), lw.fmt.decode(codes))


def test_symmetrized_table_gives_every_entry():
    """The stored half and the sign flip give T[idx] = sum_j +-a_j for all 2**g indices."""
    rng = rng_for("tables")
    for group in (2, 3, 4, 5):
        a = rng.integers(0, 256, (3, 2 * group))
        half = tables(a, formats.get_format("int8"), group)
        assert half.shape == (3, 2, 1 << (group - 1))
        values = formats.get_format("int8").decode(a).astype(np.int64).reshape(3, 2, group)
        for idx in range(1 << group):
            signs = np.array([1 if (idx >> j) & 1 else -1 for j in range(group)])
            want = (values * signs).sum(axis=-1)
            got = lookup(half, np.full((3, 2, 1), idx), group)[..., 0]
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("weight", LUT_WEIGHT_FORMATS)
def test_algorithm_equals_plain_matmul(weight, activation):
    """Random codes, K not a multiple of the group, and all-extreme operands."""
    lw = lut_weight(weight)
    rng = rng_for("algorithm", weight, activation)
    a_fmt = formats.get_format(activation)
    for group in (2, 3, 4):
        w = rng.choice(lw.fmt.finite_codes(), (23, 5))
        a = rng.integers(0, 256, (4, 23))
        got = reference(lw, w, a, activation=activation, group=group)
        np.testing.assert_array_equal(got, plain(weight, activation, w, a))
    for w_code in extreme_codes(lw.fmt):
        for a_code in extreme_codes(a_fmt):
            w, a = np.full((64, 2), w_code), np.full((2, 64), a_code)
            got = reference(lw, w, a, activation=activation)
            np.testing.assert_array_equal(got, plain(weight, activation, w, a))


def test_algorithm_saturates():
    """uint4 x uint8 at 16 bits: the dot product passes the top; the result sticks there."""
    lw = lut_weight("uint4")
    w, a = np.full((40, 1), 15), np.full((1, 40), 255)
    assert plain("uint4", "uint8", w, a)[0, 0] > (1 << 15)
    assert reference(lw, w, a, activation="uint8", acc_bits=16)[0, 0] == (1 << 15) - 1


def make_core(activation="int8", group=4, tile_m=2, tile_n=3, weights=LUT_WEIGHT_FORMATS, **kw):
    return LutCore(
        [lut_weight(n) for n in weights],
        group=group,
        tile_m=tile_m,
        tile_n=tile_n,
        activation=activation,
        **kw,
    )


def run_and_check(core, beats):
    run = simulate_lut(core, beats)
    check_lut_run(beats, run.w_cycles, run.outputs)
    return run


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("group", [2, 4])
def test_core_every_weight_format(activation, group):
    """Every weight format, two tiles each (K = 9 and K = 2 groups), then all-extreme tiles,
    back to back: bit-exact, on the latency formula, one plane per cycle after the first table
    (every tile has at least tile_m planes, so none waits for the previous results)."""
    core = make_core(activation, group)
    rng = rng_for("core", activation, group)
    beats = None
    for index, lw in enumerate(core.modes):
        tiles = [
            (rng.choice(lw.fmt.finite_codes(), (k, 3)), rng.integers(0, 256, (2, k)))
            for k in (9, 2 * group)
        ]
        for w_code in extreme_codes(lw.fmt):
            for a_code in extreme_codes(core.activation):
                tiles.append((np.full((8, 3), w_code), np.full((2, 8), a_code)))
        for w, a in tiles:
            tile = lut_beats(core, index, w, a)
            np.testing.assert_array_equal(tile.expected, plain(lw.fmt.name, activation, w, a))
            beats = tile if beats is None else beats.extend(tile)
    run = run_and_check(core, beats)
    assert run.w_cycles == list(range(1, len(beats.w) + 1))  # no bubble after the first table


def test_core_tall_tile_waits_for_its_rows():
    """tile_m = 4 rows drain in 4 cycles; one-plane one-group tiles stall until they have."""
    core = make_core(tile_m=4, tile_n=2, weights=("binary", "int4"))
    rng = rng_for("tall")
    beats = lut_beats(core, 0, rng.integers(0, 2, (4, 2)), rng.integers(0, 256, (4, 4)))
    beats.extend(lut_beats(core, 0, rng.integers(0, 2, (3, 2)), rng.integers(0, 256, (4, 3))))
    beats.extend(lut_beats(core, 1, rng.integers(0, 16, (5, 2)), rng.integers(0, 256, (4, 5))))
    run = run_and_check(core, beats)
    # the first tile's rows leave in cycles 2..5; the second tile's only plane waits until 5
    assert run.w_cycles[:2] == [1, 5]


def test_core_saturates():
    core = make_core("uint8", tile_m=1, tile_n=1, weights=("uint4",), acc_bits=16)
    beats = lut_beats(core, 0, np.full((40, 1), 15), np.full((1, 40), 255))
    assert beats.expected == [[(1 << 15) - 1]]
    run_and_check(core, beats)


def test_core_from_config():
    cfg = config.load_config("configs/lut.toml")
    core = LutCore.from_config(cfg)
    core._MustUse__silence = True  # built to be inspected
    names = [m.fmt.name for m in core.modes]
    assert names == ["binary", "int2", "uint2", "int3", "uint3", "int4", "uint4", "ternary"]
    assert [m.fmt.name for m in lut_modes(cfg.lut)] == names
    assert (core.tile_m, core.tile_n, core.group) == (2, 64, 4)
    assert core.entry_bits == 11  # 8 + log2(4) + 1
    assert core.mode_index("uint3") == 4
    with pytest.raises(ValueError, match="no int8 weights"):
        core.mode_index("int8")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weights": ()}, "at least one weight format"),
        ({"group": 1}, "group must be an integer in 2..8, not 1"),
        ({"tile_n": 0}, "tile_n must be an integer in 1..1024"),
        ({"activation": "fp8_e4m3"}, "int8 or uint8 activations"),
    ],
)
def test_core_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_core(**kwargs)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="takes binary, ternary, int2"):
        lut_weight("int8")
    core = make_core()
    core._MustUse__silence = True
    with pytest.raises(ValueError, match="takes A 2xK and W Kx3"):
        lut_beats(core, 0, np.zeros((4, 2)), np.zeros((2, 4)))


@pytest.mark.parametrize("group", range(2, 9))
def test_table_entries_from_half_tables(group):
    """The table unit's entries (two shared half tables, one add each) are the symmetrized
    table's stored half: the top activation negative, the others signed by the index bits."""
    acts = [int(a) for a in rng_for("entries", group).integers(-128, 128, group)]
    want = [
        sum(acts[j] if (e >> j) & 1 else -acts[j] for j in range(group))
        for e in range(1 << (group - 1))
    ]
    assert _entries(acts) == want
