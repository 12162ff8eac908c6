"""The post-processing unit: ``sim.post_model`` against exact rationals and ``requant``, and
``hw.post.PostProcessor`` in amaranth.sim against the model, bit for bit and cycle for cycle."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import pytest
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from hw.post import PostProcessor
from qaccel import formats
from sim import post_model
from sim.post_model import LATENCY, out_range, postprocess

SEED = 20261207
B_MAX = (1 << 31) - 1


def rng_for(*key) -> np.random.Generator:
    seed = zlib.crc32(repr((SEED, *key)).encode())
    print(f"seed {seed} for {key}")
    return np.random.default_rng(seed)


def exact(acc, invalid, *, bias, b, c, zero_point, lo, hi, out_signed, residual=None, res_shift=0):
    """The model's semantics element by element, in Python integers and Fractions."""
    m, n = np.shape(acc)
    per_lane = [np.broadcast_to(np.asarray(v, dtype=object), (n,)) for v in (bias, b, c)]
    out_min, out_max = (-128, 127) if out_signed else (0, 255)
    codes, saturated = np.zeros((m, n), np.uint8), np.zeros((m, n), bool)
    for i in range(m):
        for j in range(n):
            bias_j, b_j, c_j = (int(v[j]) for v in per_lane)
            x = int(acc[i][j]) + bias_j
            if residual is not None:
                r = int(residual[i][j])
                x += (r - 256 if out_signed and r >= 128 else r) * 2**res_shift
            y = round(Fraction(x * b_j, 2**c_j)) + zero_point  # Fraction rounds half to even
            codes[i, j] = min(max(y, lo), hi) % 256
            saturated[i, j] = not out_min <= y <= out_max
    return codes, saturated, np.asarray(invalid, dtype=bool)


def assert_same(got, want):
    for name, g, w in zip(("codes", "saturated", "invalid"), got, want, strict=True):
        np.testing.assert_array_equal(g, w, err_msg=name)


# --- the model ------------------------------------------------------------------------------


@st.composite
def cases(draw):
    """Rows and parameters anywhere in the fields' ranges, biased toward unsaturated results."""
    n = draw(st.integers(1, 5))
    m = draw(st.integers(0, 4))
    acc_width = draw(st.integers(8, 160))
    top = 1 << (acc_width - 1)
    acc = [[draw(st.integers(-top, top - 1)) for _ in range(n)] for _ in range(m)]
    out_signed = draw(st.booleans())
    out_min, out_max = out_range(out_signed)
    lo = draw(st.integers(out_min, out_max))
    hi = draw(st.integers(lo, out_max))
    scale = draw(st.integers(0, acc_width + 31))  # c near log2(x * b) keeps y small
    kwargs = {
        "bias": [draw(st.integers(-(2**31), 2**31 - 1)) for _ in range(n)],
        "b": draw(
            st.one_of(
                st.integers(0, B_MAX), st.lists(st.integers(0, B_MAX), min_size=n, max_size=n)
            )
        ),
        "c": [draw(st.integers(min(max(scale - 12, 0), 63), min(scale, 63))) for _ in range(n)],
        "zero_point": draw(st.integers(-256, 255)),
        "lo": lo,
        "hi": hi,
        "out_signed": out_signed,
        "res_shift": draw(st.integers(0, 15)),
    }
    if draw(st.booleans()):
        codes = [[draw(st.integers(0, 255)) for _ in range(n)] for _ in range(m)]
        kwargs["residual"] = np.array(codes, dtype=np.int64).reshape(m, n)
    invalid = [[draw(st.booleans()) for _ in range(n)] for _ in range(m)]
    acc = np.array(acc, dtype=object).reshape(m, n)
    return acc, np.array(invalid, dtype=bool).reshape(m, n), kwargs


@settings(max_examples=300, deadline=None, database=None)
@given(cases())
def test_model_equals_exact_rationals(case):
    acc, invalid, kwargs = case
    assert_same(postprocess(acc, invalid, **kwargs), exact(acc, invalid, **kwargs))
    if acc.size and max(abs(int(v)) for v in acc.flat) < 1 << 60:  # the int64 path too
        assert_same(
            postprocess(acc.astype(np.int64), invalid, **kwargs), exact(acc, invalid, **kwargs)
        )


def no_flags(acc) -> np.ndarray:
    return np.zeros(np.shape(acc), bool)


def test_model_equals_requant_without_residual():
    """No residual: requant of acc + bias, to the code's byte."""
    rng = rng_for("requant")
    for out_signed in (False, True):
        acc = rng.integers(-(2**38), 2**38, (50, 6))
        bias = rng.integers(-(2**31), 2**31, 6)
        b = rng.integers(0, 2**31, 6)
        c = rng.integers(58, 64, 6)
        zp = int(rng.integers(-256, 256))
        lo, hi = out_range(out_signed)
        params = {"zero_point": zp, "lo": lo, "hi": hi, "out_signed": out_signed}
        codes, saturated, _ = postprocess(acc, no_flags(acc), bias=bias, b=b, c=c, **params)
        want = formats.requant(acc + bias, b, c, zp, lo, hi)
        np.testing.assert_array_equal(codes, want & 0xFF)
        unclamped = formats.requant(acc + bias, b, c, zp, -(2**80), 2**80)
        np.testing.assert_array_equal(saturated, unclamped != want)
        assert 0 < saturated.sum() < saturated.size  # both kinds of result occurred


def test_model_relu_clamps_without_saturating():
    """ReLU is lo = zero_point: negative results become zero_point and are not saturations."""
    acc = np.array([[-1000, -1, 0, 1, 1000]])
    params = {"bias": 0, "b": 1, "c": 0, "zero_point": -5, "lo": -5, "hi": 127}
    codes, saturated, _ = postprocess(acc, no_flags(acc), out_signed=True, **params)
    assert codes.view(np.int8).tolist() == [[-5, -5, -5, -4, 127]]
    assert saturated.tolist() == [[True, False, False, False, True]]


def test_model_residual_zero_point_folds_into_bias():
    """The compiler's residual add: codes r with zero point zr, bias - (zr << s) == adding
    (r - zr) << s to the accumulator."""
    rng = rng_for("fold")
    for out_signed, zr in ((False, 37), (True, -20)):
        r = rng.integers(0, 256, (20, 3))
        r_value = r.astype(np.int64) - 256 * (r >= 128) if out_signed else r
        acc = rng.integers(-(2**20), 2**20, (20, 3))
        bias = rng.integers(-(2**20), 2**20, 3)
        lo, hi = out_range(out_signed)
        common = {"b": 1 << 20, "c": 27, "zero_point": 3, "lo": lo, "hi": hi}
        common["out_signed"] = out_signed
        for s in (0, 15):
            folded = postprocess(
                acc, no_flags(acc), bias=bias - (zr << s), residual=r, res_shift=s, **common
            )
            direct = postprocess(acc + ((r_value - zr) << s), no_flags(acc), bias=bias, **common)
            assert_same(folded, direct)


def test_model_wide_accumulators():
    """160-bit accumulators as Python integers, and int64 ones at their ends."""
    acc = np.array([[2**159 - 1, -(2**159), 3 * 2**100, -(3 * 2**100)]], dtype=object)
    params = {"bias": 0, "b": 1, "c": 63, "zero_point": 0, "lo": -128, "hi": 127}
    got = postprocess(acc, no_flags(acc), out_signed=True, **params)
    assert_same(got, exact(acc, no_flags(acc), out_signed=True, **params))
    assert got[1].tolist() == [[True, True, True, True]]
    acc = np.array([[-(2**63), 2**63 - 1, 2**61, -(2**61)]])  # int64 at its ends
    params = {"bias": -(2**31), "b": B_MAX, "c": [63, 63, 62, 60], "zero_point": 0}
    params |= {"lo": 0, "hi": 255}
    got = postprocess(acc, no_flags(acc), out_signed=False, **params)
    assert_same(got, exact(acc, no_flags(acc), out_signed=False, **params))


GOOD = {"bias": 0, "b": 1, "c": 0, "zero_point": 0, "lo": 0, "hi": 255, "out_signed": False}


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"bias": [1, 2, 3]}, ValueError,
         "bias must be one value or 2 (one per lane), not shape (3,)"),
        ({"bias": 2**31}, ValueError, "bias must be in [-2**31, 2**31), not 2147483648"),
        ({"b": [1, -1]}, ValueError, "b must be in [0, 2**31), not -1"),
        ({"c": 64}, ValueError, "c must be in [0, 63], not 64"),
        ({"zero_point": 256}, ValueError, "zero_point must be in [-256, 255], not 256"),
        ({"zero_point": 1.0}, TypeError, "zero_point must be an integer, not 1.0"),
        ({"res_shift": 16}, ValueError, "res_shift must be in [0, 15], not 16"),
        ({"out_signed": 2}, TypeError, "out_signed must be a bool, not 2"),
        ({"lo": -1}, ValueError,
         "lo and hi must satisfy 0 <= lo <= hi <= 255 for unsigned outputs, not lo=-1, hi=255"),
        ({"lo": 5, "hi": 4}, ValueError,
         "lo and hi must satisfy 0 <= lo <= hi <= 255 for unsigned outputs, not lo=5, hi=4"),
        ({"out_signed": True}, ValueError,
         "lo and hi must satisfy -128 <= lo <= hi <= 127 for signed outputs, not lo=0, hi=255"),
        ({"residual": [[256, 0]]}, ValueError,
         "residual must be in [0, 255] (8-bit codes), not 256"),
        ({"residual": [[1]]}, ValueError, "residual must have acc's shape (1, 2), not (1, 1)"),
        ({"residual": [[1.0, 2.0]]}, TypeError, "residual must be integers, not float64"),
    ],
)  # fmt: skip
def test_model_rejects_bad_parameters(change, error, message):
    acc = np.array([[1, 2]])
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        postprocess(acc, no_flags(acc), **(GOOD | change))


@pytest.mark.parametrize(
    ("acc", "invalid", "error", "message"),
    [
        ([1, 2], [1, 2], ValueError, "acc must be an M x N array (rows x lanes), not shape (2,)"),
        (np.zeros((2, 0), int), np.zeros((2, 0)), ValueError, "acc must have at least one lane"),
        ([[1.5]], [[0]], TypeError, "acc must be integers, not float64"),
        (np.array([[1, "a"]], dtype=object), [[0, 0]], TypeError, "acc must hold integers"),
        ([[1]], [[True, False]], ValueError, "invalid must have acc's shape (1, 1), not (1, 2)"),
        ([[1]], [[2]], ValueError, "invalid must be in {0, 1}, not 2"),
    ],
)  # fmt: skip
def test_model_rejects_bad_rows(acc, invalid, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        postprocess(acc, invalid, **GOOD)


# --- the RTL ----------------------------------------------------------------------------------


@dataclass
class Job:
    """Rows under one parameter set: ``gaps[k]`` idle cycles come before row k."""

    params: dict
    acc: np.ndarray
    invalid: np.ndarray
    residual: np.ndarray | None = None
    gaps: list[int] = field(default_factory=list)

    def expected(self):
        return postprocess(self.acc, self.invalid, residual=self.residual, **self.params)

    def params_value(self, n: int) -> dict:
        p = self.params
        return {
            "bias": [int(v) for v in np.broadcast_to(p["bias"], (n,))],
            "b": [int(v) for v in np.broadcast_to(p["b"], (n,))],
            "c": [int(v) for v in np.broadcast_to(p["c"], (n,))],
            "zero_point": p["zero_point"],
            "lo": p["lo"],
            "hi": p["hi"],
            "out_signed": int(p["out_signed"]),
            "residual": int(self.residual is not None),
            "res_shift": p.get("res_shift", 0),
        }


def simulate(dut: PostProcessor, jobs: list[Job]) -> tuple[list[int], list[tuple]]:
    """Drive the jobs one after the other, each row in the cycle its gaps allow, and record
    every output beat: (accept cycles, [(cycle, codes, saturated, invalid)]). The next job's
    parameters apply from the cycle the previous job's last row leaves."""
    n, accepted, outputs = dut.lanes, [], []

    async def testbench(ctx):
        cycle = 0

        async def step():
            nonlocal cycle
            *_, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if valid:
                beat = (list(payload.data), list(payload.saturated), list(payload.invalid))
                outputs.append((cycle, *beat))
            cycle += 1

        for k, job in enumerate(jobs):
            ctx.set(dut.params, job.params_value(n))
            for row in range(len(job.acc)):
                ctx.set(dut.i.valid, 0)
                for _ in range(job.gaps[row] if job.gaps else 0):
                    await step()
                ctx.set(dut.i.valid, 1)
                if job.residual is None:  # codes the disabled residual add must ignore
                    residual = [(97 * (row + j) + 13) % 256 for j in range(n)]
                else:
                    residual = job.residual[row]
                ctx.set(
                    dut.i.payload,
                    {
                        "acc": [int(v) for v in job.acc[row]],
                        "invalid": [int(v) for v in job.invalid[row]],
                        "residual": [int(v) for v in residual],
                    },
                )
                accepted.append(cycle)
                await step()
            ctx.set(dut.i.valid, 0)
            for _ in range(LATENCY - 1 if k < len(jobs) - 1 else LATENCY):
                await step()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return accepted, outputs


def run_and_check(dut: PostProcessor, jobs: list[Job]) -> list[int]:
    top = 1 << (dut.acc_width - 1)
    for job in jobs:  # ctx.set would wrap a value silently
        assert all(-top <= v < top for v in job.acc.flat), "an accumulator does not fit"
    accepted, outputs = simulate(dut, jobs)
    want = [np.concatenate(parts) for parts in zip(*(job.expected() for job in jobs), strict=True)]
    assert len(outputs) == len(accepted) == len(want[0])
    assert [cycle for cycle, *_ in outputs] == [t + LATENCY for t in accepted]
    got = [np.array([beat[k] for beat in outputs]) for k in (1, 2, 3)]
    assert_same((got[0].astype(np.uint8), got[1].astype(bool), got[2].astype(bool)), want)
    return accepted


def rand_int(rng: np.random.Generator, lo: int, hi: int) -> int:
    """A random Python integer in [lo, hi], however wide."""
    return lo + int.from_bytes(rng.bytes(24)) % (hi - lo + 1)


def random_job(rng: np.random.Generator, n: int, acc_width: int, rows: int, gaps: bool) -> Job:
    """Random rows and parameters; each lane's c follows its magnitudes, so most results land
    inside the output range and some on either side of it."""
    top = 1 << (acc_width - 1)
    acc_bits = rng.integers(0, acc_width, n)  # each lane's typical magnitude
    bias = rng.integers(-(2**31), 2**31, n) >> rng.integers(0, 32, n)
    acc = np.array(
        [[rand_int(rng, -(1 << int(k)), (1 << int(k)) - 1) for k in acc_bits] for _ in range(rows)],
        dtype=object,
    )
    if rng.random() < 0.3:  # one row anywhere in the accumulator's range
        acc[0] = [rand_int(rng, -top, top - 1) for _ in range(n)]
    residual = rng.integers(0, 256, (rows, n)) if rng.random() < 0.5 else None
    res_shift = int(rng.integers(0, 16))
    b = rng.integers(0, 1 << 31, n) >> rng.integers(0, 31, n)
    x_bits = np.maximum(acc_bits, [int(v).bit_length() for v in bias])
    if residual is not None:
        x_bits = np.maximum(x_bits, 8 + res_shift)
    b_bits = np.array([int(v).bit_length() for v in b])
    c = np.clip(x_bits + b_bits - 9 + rng.integers(-2, 3, n), 0, 63)
    out_signed = bool(rng.integers(2))
    out_min, out_max = out_range(out_signed)
    lo, hi = sorted(int(v) for v in rng.integers(out_min, out_max + 1, 2))
    if rng.random() < 0.5:
        lo, hi = out_min, out_max
    params = {
        "bias": bias,
        "b": b,
        "c": c,
        "zero_point": int(rng.integers(-256, 256)),
        "lo": lo,
        "hi": hi,
        "out_signed": out_signed,
        "res_shift": res_shift,
    }
    invalid = rng.random((rows, n)) < 0.2
    gap_list = [int(g) for g in rng.integers(0, 3, rows)] if gaps else []
    return Job(params, acc, invalid, residual, gap_list)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("acc_width", [32, 48])
@pytest.mark.parametrize("n", [1, 3, 4, 8])
def test_rtl_random_rows(n, acc_width, seed):
    """Several random parameter sets in one run, rows back to back and with gaps, the next
    parameters applied in the cycle the last row leaves: bit-exact and on cycle t + L."""
    dut = PostProcessor(n, acc_width)
    rng = rng_for(n, acc_width, seed)
    jobs = [random_job(rng, n, acc_width, 16, gaps=k % 2 == 1) for k in range(6)]
    accepted = run_and_check(dut, jobs)
    assert accepted[:16] == list(range(16))  # the first job's rows back to back
    saturated = np.concatenate([job.expected()[1] for job in jobs])
    assert 0 < saturated.sum() < saturated.size


def edge_jobs(acc_width: int) -> list[Job]:
    """Four lanes of hand-made cases (see the comments)."""
    top = 1 << (acc_width - 1)
    flat = {"zero_point": 0, "res_shift": 0}

    def job(acc, residual=None, invalid=None, **params):
        acc = np.array(acc, dtype=object)
        invalid = np.zeros(acc.shape, bool) if invalid is None else np.array(invalid)
        residual = None if residual is None else np.array(residual)
        return Job(flat | params, acc, invalid, residual)

    signed = {"lo": -128, "hi": 127, "out_signed": True}
    unsigned = {"lo": 0, "hi": 255, "out_signed": False}
    return [
        # c = 0, b = 1: the sum itself, clamped and saturated at both ends
        job([[-129, -128, 127, 128], [-3, 0, 5, -1]], bias=0, b=1, c=0, **signed),
        job([[-1, 0, 255, 256], [3, -7, 100, 300]], bias=[0, 0, 0, -44], b=1, c=0, **unsigned),
        # ties at .5, both parities, both signs; c = 1, 2, 47 and 63 (q = 0 and q = -1)
        job(
            [[1, 3, -2, -6], [-1, -3, 2, 6], [5, 7, -10, -14]],
            bias=0,
            b=1,
            c=[1, 1, 2, 2],
            **signed,
        ),
        job([[2**29, 3 * 2**29, -(2**29), -3 * 2**29]], bias=0, b=1 << 17, c=47, **signed),
        job(
            [[2**31 - 1, -(2**31), 2**31 - 1, -(2**31)]],
            residual=[[2, 0, 3, 255]],
            bias=[2**31 - 1, -(2**31), 2**31 - 1, -(2**31)],
            b=1 << 30,
            c=63,
            **signed,
        ),
        # extremes of every field: the widest sums and products
        job(
            [[top - 1, -top, top - 1, -top]],
            residual=[[255, 128, 127, 0]],
            bias=[2**31 - 1, -(2**31), 2**31 - 1, -(2**31)],
            b=B_MAX,
            c=63,
            res_shift=15,
            **signed,
        ),
        job(
            [[top - 1, -top, top - 1, -top]],
            residual=[[255, 0, 255, 0]],
            bias=[2**31 - 1, -(2**31), 2**31 - 1, -(2**31)],
            b=B_MAX,
            c=[63, 63, 0, 0],
            res_shift=15,
            **unsigned,
        ),
        # b = 0: only the zero point is left (and it may itself saturate)
        job([[top - 1, -top, 5, 0]], bias=0, b=0, c=[0, 63, 7, 0], zero_point=-256, **unsigned),
        job([[top - 1, -top, 5, 0]], bias=0, b=0, c=3, zero_point=255, **signed),
        # lo = hi, and ReLU (lo = zero_point): clamping is not saturation
        job([[-500, -1, 0, 500]], bias=0, b=1, c=0, zero_point=10, lo=10, hi=10, out_signed=True),
        job(
            [[-500, -40, -1, 40]], bias=0, b=3, c=2, zero_point=-20, lo=-20, hi=127, out_signed=True
        ),
        # residual codes read as int8 or uint8, res_shift 0 and 15
        job(
            [[0, 0, 0, 0], [1, -1, 2, -2]],
            residual=[[0, 127, 128, 255], [255, 128, 127, 1]],
            bias=0,
            b=1,
            c=15,
            res_shift=15,
            **signed,
        ),
        job(
            [[0, 0, 0, 0], [1, -1, 2, -2]],
            residual=[[0, 127, 128, 255], [255, 128, 127, 1]],
            bias=0,
            b=1,
            c=15,
            res_shift=15,
            **unsigned,
        ),
        job(
            [[10, -10, 0, -300]],
            residual=[[0, 127, 128, 255]],
            bias=[0, 0, 0, 300],
            b=1,
            c=0,
            **signed,
        ),
        job(
            [[10, -10, 0, -300]],
            residual=[[0, 127, 128, 255]],
            bias=[0, 0, 0, 300],
            b=1,
            c=0,
            **unsigned,
        ),
        # the shifted product's narrowing (hw.post): q = 1023 and 1024 with the lowest zero
        # point, q = -1024 and -1025 with the highest, and the first q that do not saturate
        job([[1023, 1024, 511, 512]], bias=0, b=1, c=0, zero_point=-256, **unsigned),
        job([[-1024, -1025, -383, -384]], bias=0, b=1, c=0, zero_point=255, **signed),
        # invalid flags pass through whatever the value
        job([[1, 2, 3, 4]], invalid=[[True, False, True, True]], bias=0, b=1, c=0, **unsigned),
    ]


@pytest.mark.parametrize("acc_width", [32, 48])
def test_rtl_edge_cases(acc_width):
    run_and_check(PostProcessor(4, acc_width), edge_jobs(acc_width))


def test_rtl_wide_accumulator():
    """The widest accumulator (160 bits) with the widest products."""
    jobs = edge_jobs(160)[:7]
    rng = rng_for("wide")
    jobs.append(random_job(rng, 4, 160, 6, gaps=True))
    run_and_check(PostProcessor(4, 160), jobs)


def test_latency_matches_the_model():
    dut = PostProcessor(2, 32)
    dut._MustUse__silence = True  # built to be inspected, not elaborated
    assert dut.latency == post_model.LATENCY == 4
    assert (dut.lanes, dut.acc_width) == (2, 32)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 32), "lanes must be a positive integer, not 0"),
        (("4", 32), "lanes must be a positive integer, not '4'"),
        ((4, 7), "acc_width must be an integer from 8 to 160, not 7"),
        ((4, 161), "acc_width must be an integer from 8 to 160, not 161"),
        ((4, 32.0), "acc_width must be an integer from 8 to 160, not 32.0"),
    ],
)
def test_post_processor_rejects_bad_parameters(args, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        PostProcessor(*args)
