"""qaccel.formats against third parties (ml_dtypes, numpy) and independent decoders."""

from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

from qaccel import formats as qf

ML_DTYPES = {
    "fp8_e4m3": ml_dtypes.float8_e4m3fn,
    "fp8_e5m2": ml_dtypes.float8_e5m2,
    "fp6_e2m3": ml_dtypes.float6_e2m3fn,
    "fp6_e3m2": ml_dtypes.float6_e3m2fn,
    "fp4_e2m1": ml_dtypes.float4_e2m1fn,
    "bf16": ml_dtypes.bfloat16,
    "fp16": np.float16,
    "e8m0": ml_dtypes.float8_e8m0fnu,
    "int2": ml_dtypes.int2,
    "uint2": ml_dtypes.uint2,
    "int4": ml_dtypes.int4,
    "uint4": ml_dtypes.uint4,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
}
FLOATS = [n for n, f in qf.FORMATS.items() if f.kind == "float"]
POSITS = [n for n, f in qf.FORMATS.items() if f.kind == "posit"]
INTS = [n for n, f in qf.FORMATS.items() if f.kind == "int"]


def all_codes(fmt):
    return np.arange(1 << fmt.bits, dtype=np.int64)


def third_party_decode(name):
    """Decode every code of ``name`` with ml_dtypes / numpy."""
    fmt = qf.get_format(name)
    store = np.uint8 if fmt.bits <= 8 else np.uint16
    with np.errstate(invalid="ignore"):  # casting signalling NaNs warns
        return all_codes(fmt).astype(store).view(ML_DTYPES[name]).astype(np.float64)


# --- independent decoders, written from the specifications' formulas ------------------------


def posit_by_formula(code: int, n: int, es: int) -> Fraction | None:
    """The posit standard's closed form on the raw bits, no two's-complement negation:
    ((1 - 3s) + f) * 2**((1 - 2s) * (2**es * r + e + s)). None for NaR."""
    if code == 0:
        return Fraction(0)
    if code == 1 << (n - 1):
        return None
    bits = format(code, f"0{n}b")
    s, rest = int(bits[0]), bits[1:]
    run = len(rest) - len(rest.lstrip(rest[0]))
    r = run - 1 if rest[0] == "1" else -run
    after = rest[run + 1 :]
    e = int(after[:es].ljust(es, "0"), 2) if es else 0
    fbits = after[es:]
    f = Fraction(int(fbits, 2), 1 << len(fbits)) if fbits else Fraction(0)
    return ((1 - 3 * s) + f) * Fraction(2) ** ((1 - 2 * s) * ((r << es) + e + s))


def int_by_formula(code: int, bits: int, signed: bool) -> int:
    return code - (1 << bits) if signed and code >= 1 << (bits - 1) else code


# --- decoding -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ML_DTYPES))
def test_decode_matches_ml_dtypes_on_every_code(name):
    fmt = qf.get_format(name)
    ours, theirs = fmt.decode(all_codes(fmt)), third_party_decode(name)
    np.testing.assert_array_equal(ours, theirs)  # NaN == NaN here
    np.testing.assert_array_equal(np.signbit(ours), np.signbit(theirs))  # -0 and -inf too


@pytest.mark.parametrize("name", INTS)
def test_integer_decode_matches_formula(name):
    fmt = qf.get_format(name)
    expected = [int_by_formula(c, fmt.bits, fmt.signed) for c in range(1 << fmt.bits)]
    np.testing.assert_array_equal(fmt.decode(all_codes(fmt)), expected)


@pytest.mark.parametrize(
    "n, es",
    [(4, 1), (5, 1), (8, 0), (8, 1), (8, 2), (9, 0), (9, 2), (16, 1), (16, 2), (17, 1), (17, 2)],
)
def test_posit_decode_matches_standard_formula(n, es):
    fmt = qf.PositFormat(f"posit{n}_{es}", n, es=es)
    ours = fmt.decode(all_codes(fmt))
    expected = [posit_by_formula(c, n, es) for c in range(1 << n)]
    assert np.isnan(ours[1 << (n - 1)]) and expected[1 << (n - 1)] is None
    for code, value in enumerate(expected):
        if value is not None and Fraction(ours[code]) != value:
            raise AssertionError(f"posit({n},{es}) code {code:#x}: {ours[code]} != {value}")


def test_posit_known_values():
    p8, p16 = qf.get_format("posit8_0"), qf.get_format("posit16_1")
    assert p8.decode([0x40, 0x01, 0x7F]).tolist() == [1.0, 2.0**-6, 64.0]
    assert p16.decode([0x4000, 0x0001, 0x7FFF]).tolist() == [1.0, 2.0**-28, 2.0**28]
    assert np.isnan(p8.decode(0x80)) and np.isnan(p16.decode(0x8000))
    assert p8.encode([1.0, 2.0**-6, 64.0, np.nan]).tolist() == [0x40, 0x01, 0x7F, 0x80]
    assert p16.encode([1.0, 2.0**-28, 2.0**28, np.inf]).tolist() == [0x4000, 1, 0x7FFF, 0x8000]
    assert p8.smallest_positive == 2.0**-6 and p8.max_value == 64.0


@pytest.mark.parametrize("name", POSITS)
def test_posit_negation_is_twos_complement(name):
    fmt = qf.get_format(name)
    codes = all_codes(fmt)
    neg = (-codes) & ((1 << fmt.bits) - 1)
    ok = codes != fmt.nar
    np.testing.assert_array_equal(fmt.decode(neg[ok]), -fmt.decode(codes[ok]))


def test_binary_and_ternary_values():
    assert qf.get_format("binary").decode([0, 1]).tolist() == [-1.0, 1.0]
    tern = qf.get_format("ternary")
    assert tern.decode([0, 1, 3]).tolist() == [0.0, 1.0, -1.0]
    with pytest.raises(ValueError, match="ternary code 0b10 is not a value"):
        tern.decode([2])
    assert qf.get_format("binary").encode([-3.0, -0.0, 0.0, 0.2]).tolist() == [0, 1, 1, 1]
    assert tern.encode([-7.0, -0.5, 0.5, 0.51, 1.5]).tolist() == [3, 0, 0, 1, 1]


# --- encoding -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(qf.FORMATS))
def test_encode_inverts_decode_on_every_non_nan_code(name):
    fmt = qf.get_format(name)
    codes = fmt.finite_codes()
    codes = np.union1d(codes, fmt.inf_codes).astype(np.int64)
    np.testing.assert_array_equal(fmt.encode(fmt.decode(codes)), codes)


def adjacent_pairs(fmt):
    """(lower code, upper code, lower value, upper value) of neighbouring positive values."""
    codes = fmt.finite_codes()
    values = fmt.decode(codes)
    pos = values > 0
    if fmt.kind != "scale":
        pos |= (values == 0) & ~np.signbit(values)
    order = np.argsort(values[pos], kind="stable")
    c, v = codes[pos][order], values[pos][order]
    return c[:-1], c[1:], v[:-1], v[1:]


# Posits round on the bit string (next test); binary has no midpoint: it encodes the sign.
@pytest.mark.parametrize(
    "name", [n for n, f in qf.FORMATS.items() if f.kind not in ("posit", "binary")]
)
def test_ties_go_to_even_at_every_midpoint(name):
    fmt = qf.get_format(name)
    lo_c, hi_c, lo_v, hi_v = adjacent_pairs(fmt)
    mid = (lo_v + hi_v) / 2  # exact in float64 for every format here
    even = np.where(lo_c % 2 == 0, lo_c, hi_c)
    np.testing.assert_array_equal(fmt.encode(mid), even)
    np.testing.assert_array_equal(fmt.encode(np.nextafter(mid, -np.inf)), lo_c)
    np.testing.assert_array_equal(fmt.encode(np.nextafter(mid, np.inf)), hi_c)
    if fmt.min_value < 0:  # the mirror image, where the format has negative values
        neg = fmt.encode(-mid)
        np.testing.assert_array_equal(fmt.decode(neg), -fmt.decode(even))


@pytest.mark.parametrize("name", POSITS)
def test_posit_rounds_on_the_bit_string(name):
    """The tie between posit(n, es) codes c and c+1 is posit(n+1, es) code 2c+1: where
    exponent bits are cut off by the regime it is their geometric, not arithmetic, mean."""
    fmt = qf.get_format(name)
    longer = qf.PositFormat("longer", fmt.bits + 1, es=fmt.es)
    lo = np.arange(1, (1 << (fmt.bits - 1)) - 1, dtype=np.int64)
    tie = longer.decode(2 * lo + 1)
    even = np.where(lo % 2 == 0, lo, lo + 1)
    np.testing.assert_array_equal(fmt.encode(tie), even)
    np.testing.assert_array_equal(fmt.encode(np.nextafter(tie, 0)), lo)
    np.testing.assert_array_equal(fmt.encode(np.nextafter(tie, np.inf)), lo + 1)
    mask = (1 << fmt.bits) - 1
    np.testing.assert_array_equal(fmt.encode(-tie), (-even) & mask)


@pytest.mark.parametrize("name", POSITS)
def test_posit_never_rounds_to_zero_or_nar(name):
    fmt = qf.get_format(name)
    tiny, huge = fmt.smallest_positive / 1e6, fmt.max_value * 1e6
    mask = (1 << fmt.bits) - 1
    assert fmt.encode([tiny, -tiny, 0.0, -0.0]).tolist() == [1, mask, 0, 0]
    assert fmt.encode([huge, -huge]).tolist() == [fmt.nar - 1, fmt.nar + 1]


@pytest.mark.parametrize("name", [n for n in qf.FORMATS if qf.FORMATS[n].kind != "scale"])
def test_saturation_at_plus_minus_max(name):
    fmt = qf.get_format(name)
    big = np.array([fmt.max_value * 1.5, fmt.max_value * 1e30, 1e308])
    max_code = fmt.encode(fmt.max_value)
    assert (fmt.encode(big) == max_code).all()
    if fmt.min_value < 0:
        assert (fmt.encode(-big) == fmt.encode(fmt.min_value)).all()
    inf_code = fmt.encode(np.inf)
    if fmt.inf_codes:
        assert fmt.decode(inf_code) == np.inf and fmt.decode(fmt.encode(-np.inf)) == -np.inf
    elif fmt.kind == "posit":
        assert inf_code == fmt.nar
    else:
        assert inf_code == max_code


@pytest.mark.parametrize("name", FLOATS)
def test_encode_matches_ml_dtypes_cast_in_range(name):
    """ml_dtypes' casts round to nearest even but do not saturate: compare in range."""
    fmt = qf.get_format(name)
    rng = np.random.default_rng(7)
    mags = np.exp(rng.uniform(np.log(fmt.smallest_positive / 4), np.log(fmt.max_value), 20000))
    x = (mags * rng.choice([-1, 1], mags.size)).astype(np.float32)
    theirs = x.astype(ML_DTYPES[name]).astype(np.float64)
    np.testing.assert_array_equal(fmt.decode(fmt.encode(x)), theirs)


@pytest.mark.parametrize(
    "name, nan_code",
    [
        ("fp8_e4m3", 0x7F),
        ("fp8_e5m2", 0x7E),
        ("fp16", 0x7E00),
        ("bf16", 0x7FC0),
        ("e8m0", 0xFF),
        ("posit8_0", 0x80),
        ("posit16_2", 0x8000),
    ],
)
def test_nan_encodes_to_the_documented_code(name, nan_code):
    assert qf.get_format(name).encode([np.nan, -np.nan]).tolist() == [nan_code, nan_code]


@pytest.mark.parametrize("name", ["int8", "uint4", "binary", "ternary", "fp6_e2m3", "fp4_e2m1"])
def test_nan_is_rejected_where_the_format_has_none(name):
    with pytest.raises(ValueError, match=f"{name} has no NaN"):
        qf.get_format(name).encode([1.0, np.nan])


def test_e8m0_scale_encoding():
    e8 = qf.get_format("e8m0")
    assert e8.encode([1.0, 2.0**-127, 2.0**127, 2.0**-200, 2.0**200]).tolist() == [
        127,
        0,
        254,
        0,
        254,
    ]
    assert e8.encode([1.5, 3.0, 1.4, 1.6]).tolist() == [128, 128, 127, 128]  # ties to even code
    with pytest.raises(ValueError, match="no zero or negative"):
        e8.encode([0.0])


def test_integer_fraction_bits_scale_values():
    q6 = qf.IntFormat("q", 8, signed=True, frac_bits=6)
    assert q6.decode([64, 127, 128]).tolist() == [1.0, 127 / 64, -2.0]
    assert q6.encode([1.0, 5.0, 1 / 128, 3 / 128]).tolist() == [64, 127, 0, 2]


# --- MX block formats -----------------------------------------------------------------------


def mx_reference(fmt: qf.MXFormat, x: np.ndarray):
    """Per block in plain Python: X = floor(log2(amax)) - emax by exact integer search."""
    scales, codes = [], []
    for start in range(0, x.size, fmt.block):
        block = x[start : start + fmt.block]
        amax = Fraction(float(np.max(np.abs(block))))
        if amax == 0:
            shared = -127
        else:
            e = 0
            while Fraction(2) ** (e + 1) <= amax:
                e += 1
            while Fraction(2) ** e > amax:
                e -= 1
            shared = max(-127, min(127, e - fmt.element_emax))
        scales.append(shared + 127)
        codes += list(fmt.element.encode(block / 2.0**shared))
    return scales, codes


@pytest.mark.parametrize("name", list(qf.MX_FORMATS))
def test_mx_quantize_matches_blockwise_reference(name):
    fmt = qf.get_mx_format(name)
    rng = np.random.default_rng(3)
    x = rng.normal(size=200) * np.exp(rng.uniform(-20, 20, 200))
    x[64:96] = 0.0  # an all-zero block
    t = fmt.quantize(x)
    scales, codes = mx_reference(fmt, x)
    assert t.scales.tolist() == scales and t.elements.tolist() == codes
    expected = fmt.element.decode(t.elements) * np.repeat(2.0 ** (t.scales - 127.0), 32)[:200]
    np.testing.assert_array_equal(t.dequantize(), expected)


def test_mx_known_block_and_special_cases():
    mxfp4, mxint8 = qf.get_mx_format("mxfp4"), qf.get_mx_format("mxint8")
    assert mxfp4.element_emax == 2 and mxint8.element_emax == 0
    assert qf.get_mx_format("mxfp8_e4m3").element_emax == 8
    block = np.zeros(32)
    block[:3] = [6.0, -3.0, 0.25]  # amax 6: floor(log2 6) = 2 = emax(fp4) -> X = 0
    t = mxfp4.quantize(block)
    assert t.scales.tolist() == [127]
    assert t.dequantize()[:3].tolist() == [6.0, -3.0, 0.0]  # 0.25 ties down to 0 (even code)
    block[5] = np.nan
    t = mxfp4.quantize(np.stack([block, np.ones(32)]))
    assert t.scales.tolist() == [[0xFF], [125]]  # amax 1: X = 0 - 2
    assert np.isnan(t.dequantize()[0]).all() and (t.dequantize()[1] == 1.0).all()
    assert (t.elements[1] == mxfp4.element.encode(4.0)).all()
    assert mxint8.quantize(np.full(32, 1.0)).dequantize().tolist() == [1.0] * 32


# --- exact products and accumulators --------------------------------------------------------

PRODUCT_PAIRS = [
    ("int8", "int8"),
    ("int4", "int8"),
    ("fp8_e4m3", "fp8_e4m3"),
    ("fp8_e5m2", "fp8_e5m2"),
    ("fp4_e2m1", "int8"),
    ("fp4_e2m1", "fp8_e4m3"),
    ("posit8_0", "posit8_0"),
    ("bf16", "fp16"),
    ("posit16_2", "ternary"),
]


@pytest.mark.parametrize("fa, fb", PRODUCT_PAIRS)
def test_exact_product_equals_rational_product(fa, fb):
    fmt_a, fmt_b = qf.get_format(fa), qf.get_format(fb)
    rng = np.random.default_rng(5)
    a = rng.choice(fmt_a.finite_codes(), 3000)
    b = rng.choice(fmt_b.finite_codes(), 3000)
    sig, exp = qf.exact_product(fmt_a, a, fmt_b, b)
    for i in range(a.size):
        exact = Fraction(float(fmt_a.decode(a[i]))) * Fraction(float(fmt_b.decode(b[i])))
        assert Fraction(int(sig[i])) * Fraction(2) ** int(exp[i]) == exact


@pytest.mark.parametrize("fa, fb", PRODUCT_PAIRS)
@pytest.mark.parametrize("terms", [1, 16, 1000])
def test_accumulator_holds_every_sum_and_is_the_narrowest(fa, fb, terms):
    fmt_a, fmt_b = qf.get_format(fa), qf.get_format(fb)
    acc = qf.accumulator_format(fmt_a, fmt_b, terms)
    lsb = Fraction(2) ** -acc.frac_bits
    # The smallest nonzero product is a multiple of the LSB...
    small = Fraction(fmt_a.smallest_positive) * Fraction(fmt_b.smallest_positive)
    assert (small / lsb).denominator == 1
    assert lsb == Fraction(2) ** (fmt_a.lsb_exponent + fmt_b.lsb_exponent)
    # ...and the largest sum fills the width exactly: one bit less would overflow.
    largest = Fraction(fmt_a.max_magnitude) * Fraction(fmt_b.max_magnitude) * terms / lsb
    assert largest < 2 ** (acc.width - 1) and largest >= 2 ** (acc.width - 2)


def test_fixed_point_conversion_is_exact_or_raises():
    acc = qf.accumulator_format(qf.get_format("fp8_e4m3"), qf.get_format("fp8_e4m3"), 4)
    sig, exp = qf.exact_product(
        qf.get_format("fp8_e4m3"), [0x7E, 0x01], qf.get_format("fp8_e4m3"), [0xFE, 0x01]
    )
    assert acc.to_int(sig, exp).tolist() == [-448 * 448 * 2**18, 1]
    with pytest.raises(ValueError, match="below"):
        acc.to_int([1], [-19])
    with pytest.raises(ValueError, match="does not fit"):
        acc.to_int([1], [acc.width])
    wide = qf.accumulator_format(qf.get_format("bf16"), qf.get_format("bf16"), 1)
    assert wide.width > 63 and wide.to_int([1], [0]).tolist() == [1 << wide.frac_bits]


# --- dyadic requantization ------------------------------------------------------------------


def requant_reference(acc, b, c, zp, lo, hi):
    return max(lo, min(hi, round(Fraction(acc * b, 1 << c)) + zp))  # Fraction rounds half-even


def test_requant_equals_exact_rational_result():
    rng = np.random.default_rng(11)
    acc = np.concatenate([rng.integers(-(2**31), 2**31, 4000), [0, 1, -1, 2**31 - 1, -(2**31)]])
    b = rng.integers(0, 2**31, acc.size)
    c = rng.integers(0, 128, acc.size)
    zp = rng.integers(-128, 128, acc.size)
    got = qf.requant(acc, b, c, zp, -128, 127)
    want = [requant_reference(*map(int, t), -128, 127) for t in zip(acc, b, c, zp, strict=True)]
    np.testing.assert_array_equal(got, want)


def test_requant_extreme_and_tie_inputs():
    acc = np.array([2**47 - 1, -(2**47), 3, -3, 5, -5, 7, 2**40 + 2**9], dtype=np.int64)
    b = np.array([2**31 - 1, 2**31 - 1, 1, 1, 1, 1, 1, 1], dtype=np.int64)
    c = np.array([63, 63, 1, 1, 1, 1, 0, 10], dtype=np.int64)
    got = qf.requant(acc, b, c, 3, -(2**40), 2**40)
    want = [
        requant_reference(int(a), int(bb), int(cc), 3, -(2**40), 2**40)
        for a, bb, cc in zip(acc, b, c, strict=True)
    ]
    assert got.tolist() == want
    assert qf.requant([1, 3, 5, -1, -3], 1, 1, 0, -9, 9).tolist() == [0, 2, 2, 0, -2]
    wide = np.array([2**70 + 2**69, -(2**70) - 2**69], dtype=object)  # 1.5 * 2**70: a tie
    assert qf.requant(wide, 1, 71, 0, -9, 9).tolist() == [1, -1]
    assert qf.requant(wide, 1, 70, 0, -9, 9).tolist() == [2, -2]


@pytest.mark.parametrize(
    "m", [1.0, 0.5, 2.0**-30, 0.1, 0.0123456, 3.7, 1000.25, 2.0**30 * 1.99, 2.0**-33, 1 / 3]
)
def test_dyadic_multiplier_is_nearest(m):
    b, c = qf.dyadic(m)
    assert 2**30 <= b < 2**31 and 0 <= c <= 127
    err = abs(Fraction(b, 1 << c) - Fraction(m))
    assert err <= Fraction(1, 1 << (c + 1))  # b is the nearest integer to m * 2**c
    assert err / Fraction(m) <= Fraction(1, 2**31)


@pytest.mark.parametrize(
    "m, match",
    [
        (0.0, "positive"),
        (-1.0, "positive"),
        (float("nan"), "positive"),
        (2.0**31, "too large"),
        (2.0**-100, "too small"),
    ],
)
def test_dyadic_rejects_unrepresentable_multipliers(m, match):
    with pytest.raises(ValueError, match=match):
        qf.dyadic(m)


# --- bad inputs -----------------------------------------------------------------------------


def test_unknown_format_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown number format 'int99'; known: int2"):
        qf.get_format("int99")
    with pytest.raises(ValueError, match="unknown MX format 'mxfp3'"):
        qf.get_mx_format("mxfp3")
    with pytest.raises(TypeError, match="must be a string"):
        qf.get_format(8)


def test_wrong_dtypes_and_out_of_range_codes_are_clear_errors():
    fp8 = qf.get_format("fp8_e4m3")
    with pytest.raises(TypeError, match="codes must be integers, not float64"):
        fp8.decode(np.array([1.0]))
    with pytest.raises(ValueError, match="code 256 is outside"):
        fp8.decode([256])
    with pytest.raises(TypeError, match="encodes real numbers"):
        fp8.encode(np.array(["1.0"]))
    with pytest.raises(TypeError, match="encodes real numbers"):
        fp8.encode(np.array([1j]))
    with pytest.raises(ValueError, match="not a finite number"):
        fp8.decompose([0x7F])
    with pytest.raises(TypeError, match="acc must be integers"):
        qf.requant(np.array([1.5]), 1, 0, 0, -1, 1)
    with pytest.raises(ValueError, match="b must be in"):
        qf.requant([1], 2**31, 0, 0, -1, 1)
    with pytest.raises(ValueError, match="terms must be a positive integer"):
        qf.accumulator_format(fp8, fp8, 0)
