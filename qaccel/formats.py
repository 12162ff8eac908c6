"""Every number format qaccel computes in, bit-exact: the single source of numeric truth.

A *code* is a format's bit pattern held as an unsigned integer in ``[0, 2**bits)``. Every format
offers vectorized ``decode`` (code -> float64, exact: every value of every format here is a
float64) and ``encode`` (float -> code), plus ``decompose`` (code -> integer significand and
power-of-two exponent) on which the exact arithmetic helpers are built.

Rounding, stated once for the whole project: **round to nearest, ties to even**. For encoding
"even" means the candidate code whose least significant bit is 0 (for integers that is the even
integer, for floats and posits the even significand); for requantization (``requant``) it is the
even integer.

Encoding saturates: a finite value beyond the largest magnitude becomes ±max. The policy for
non-finite inputs, per kind of format:

- integers, binary, ternary, FP6, FP4 (no NaN, no inf): ±inf saturates to ±max; NaN raises
  ``ValueError`` rather than inventing a number;
- FP8 E4M3 ("fn": no inf): ±inf saturates to ±448; NaN -> 0x7F;
- E5M2, FP16, BF16 (IEEE-style): ±inf -> ±inf; NaN -> the canonical quiet NaN (positive);
- E8M0 (a scale: unsigned, no zero): NaN -> 0xFF; zero or negative raises ``ValueError``;
- posits: ±inf and NaN -> NaR; a nonzero value never rounds to zero (it becomes ±minpos), and
  rounding follows the posit standard, on the bit string (so the tie between two codes is the
  value of the longer posit that lies between them, not always their arithmetic mean).

MX block formats (OCP Microscaling v1.0) quantize a tensor in blocks of 32 along its last axis
with one E8M0 scale per block; the shared exponent is computed in integers as
``floor(log2(amax)) - emax(element)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property

import numpy as np

__all__ = [
    "FORMATS",
    "MX_FORMATS",
    "ROUNDING",
    "BinaryFormat",
    "E8M0Format",
    "FixedPoint",
    "FloatFormat",
    "IntFormat",
    "MXFormat",
    "MXTensor",
    "NumberFormat",
    "PositFormat",
    "TernaryFormat",
    "accumulator_format",
    "dyadic",
    "exact_product",
    "get_format",
    "get_mx_format",
    "requant",
    "round_shift",
]

ROUNDING = "round to nearest, ties to even"


# --- input checking -------------------------------------------------------------------------


def _as_codes(fmt: NumberFormat, codes) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{fmt.name} codes must be integers, not {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= 1 << fmt.bits):
        bad = arr[(arr < 0) | (arr >= 1 << fmt.bits)].flat[0]
        raise ValueError(f"{fmt.name} code {bad} is outside [0, {1 << fmt.bits})")
    return arr


def _as_values(fmt: NumberFormat, values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "fiub" or arr.dtype.itemsize > 8:
        raise TypeError(f"{fmt.name} encodes real numbers up to float64, not {arr.dtype}")
    return arr.astype(np.float64)


def _reject_nan(fmt: NumberFormat, x: np.ndarray) -> None:
    if np.isnan(x).any():
        raise ValueError(f"{fmt.name} has no NaN: cannot encode NaN")


def _code_dtype(bits: int) -> type:
    return np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32


# --- the common interface -------------------------------------------------------------------


@dataclass(frozen=True)
class NumberFormat:
    """A scalar number format: ``bits`` wide, codes in ``[0, 2**bits)``."""

    name: str
    bits: int
    kind: str = field(init=False, default="")

    def decode(self, codes) -> np.ndarray:
        """Exact float64 value of each code (NaN, ±inf where the format has them)."""
        c = _as_codes(self, codes)
        sig, exp = self._fields(c)
        out = np.array(np.ldexp(sig.astype(np.float64), exp), dtype=np.float64)
        out[np.isin(c, self.nan_codes)] = np.nan
        out[np.isin(c, self.inf_codes)] = np.inf
        negative = self._sign_bit(c)
        return out if negative is None else np.copysign(out, np.where(negative, -1.0, 1.0))

    def encode(self, values) -> np.ndarray:
        """Nearest code to each value, ties to even, saturating (see the module docstring)."""
        x = _as_values(self, values)
        return self._encode(x).astype(_code_dtype(self.bits))

    def decompose(self, codes) -> tuple[np.ndarray, np.ndarray]:
        """Integer significand and exponent of each code: value == sig * 2**exp exactly."""
        c = _as_codes(self, codes)
        special = np.isin(c, self.nan_codes + self.inf_codes)
        if special.any():
            bad = int(c[special].flat[0])
            raise ValueError(f"{self.name} code {bad:#x} is not a finite number")
        return self._fields(c)

    # Facts used by the table, the tests and the accumulator sizing.
    @property
    def nan_codes(self) -> tuple[int, ...]:
        return ()

    @property
    def inf_codes(self) -> tuple[int, ...]:
        """(+inf, -inf) where the format has infinities."""
        return ()

    def finite_codes(self) -> np.ndarray:
        codes = np.arange(1 << self.bits, dtype=np.int64)
        return codes[~np.isin(codes, self.nan_codes + self.inf_codes + self._invalid_codes())]

    @cached_property
    def max_value(self) -> float:
        return float(self.decode(self.finite_codes()).max())

    @cached_property
    def min_value(self) -> float:
        return float(self.decode(self.finite_codes()).min())

    @cached_property
    def max_magnitude(self) -> float:
        return max(self.max_value, -self.min_value)

    @cached_property
    def smallest_positive(self) -> float:
        v = self.decode(self.finite_codes())
        return float(v[v > 0].min())

    @cached_property
    def lsb_exponent(self) -> int:
        """Every finite value is an integer multiple of ``2**lsb_exponent``."""
        sig, exp = self._fields(self.finite_codes())
        return int(exp[sig != 0].min())

    def specials(self) -> str:
        """One line on zeros, infinities and NaNs, for tables."""
        return "none"

    # Per-format hooks.
    def _fields(self, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _sign_bit(self, c: np.ndarray) -> np.ndarray | None:
        """Where the format has a sign bit (signed zeros, NaNs and infinities): its value."""
        return None

    def _encode(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _invalid_codes(self) -> tuple[int, ...]:
        return ()


# --- integers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntFormat(NumberFormat):
    """Two's-complement (``signed``) or plain binary integer, optionally with ``frac_bits``
    fraction bits (value = integer * 2**-frac_bits; MXINT8 elements use 6)."""

    signed: bool = True
    frac_bits: int = 0

    def __post_init__(self):
        object.__setattr__(self, "kind", "int")
        if not 2 <= self.bits <= 16:
            raise ValueError(f"integer width must be 2..16 bits, not {self.bits}")

    @property
    def int_min(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def int_max(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    def _fields(self, c):
        if self.signed:
            c = np.where(c >= 1 << (self.bits - 1), c - (1 << self.bits), c)
        return c, np.full(c.shape, -self.frac_bits, dtype=np.int64)

    def _encode(self, x):
        _reject_nan(self, x)
        q = np.clip(np.rint(np.ldexp(x, self.frac_bits)), self.int_min, self.int_max)
        return q.astype(np.int64) & ((1 << self.bits) - 1)


@dataclass(frozen=True)
class BinaryFormat(NumberFormat):
    """One bit read as ±1: code 0 is -1, code 1 is +1 (offset binary). Zero encodes as +1."""

    def __post_init__(self):
        object.__setattr__(self, "kind", "binary")

    def _fields(self, c):
        return 2 * c - 1, np.zeros(c.shape, dtype=np.int64)

    def _encode(self, x):
        _reject_nan(self, x)
        return (x >= 0).astype(np.int64)


@dataclass(frozen=True)
class TernaryFormat(NumberFormat):
    """{-1, 0, +1} in two bits, two's complement: 0b00 = 0, 0b01 = +1, 0b11 = -1;
    0b10 is not a value."""

    def __post_init__(self):
        object.__setattr__(self, "kind", "ternary")

    def _invalid_codes(self):
        return (0b10,)

    def _fields(self, c):
        if (c == 0b10).any():
            raise ValueError("ternary code 0b10 is not a value")
        return np.where(c == 0b11, -1, c), np.zeros(c.shape, dtype=np.int64)

    def _encode(self, x):
        _reject_nan(self, x)
        return np.clip(np.rint(x), -1, 1).astype(np.int64) & 0b11

    def specials(self):
        return "code 0b10 unused"


# --- floating point -------------------------------------------------------------------------


@dataclass(frozen=True)
class FloatFormat(NumberFormat):
    """Sign, ``exp_bits`` exponent, ``man_bits`` mantissa, with subnormals.

    ``ieee``: the all-ones exponent holds ±inf (mantissa 0) and NaNs (E5M2, FP16, BF16).
    ``nan_all_ones``: only S.1...1.1...1 is NaN and the top exponent is otherwise normal (E4M3 fn).
    Neither: every code is a finite number (FP6, FP4).
    """

    exp_bits: int = 4
    man_bits: int = 3
    bias: int = 7
    ieee: bool = False
    nan_all_ones: bool = False

    def __post_init__(self):
        object.__setattr__(self, "kind", "float")
        if self.bits != 1 + self.exp_bits + self.man_bits:
            raise ValueError(f"{self.name}: 1 + exp_bits + man_bits must equal bits")

    @property
    def _mag_mask(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def _top_exponent_codes(self) -> np.ndarray:
        return np.arange(((1 << self.exp_bits) - 1) << self.man_bits, 1 << (self.bits - 1))

    @cached_property
    def nan_codes(self):
        sign = 1 << (self.bits - 1)
        if self.ieee:
            mags = [int(m) for m in self._top_exponent_codes[1:]]
        elif self.nan_all_ones:
            mags = [self._mag_mask]
        else:
            return ()
        return tuple(mags + [m | sign for m in mags])

    @property
    def inf_codes(self):
        if not self.ieee:
            return ()
        inf = int(self._top_exponent_codes[0])
        return (inf, inf | 1 << (self.bits - 1))

    @property
    def _max_mag_code(self) -> int:
        if self.ieee:
            return int(self._top_exponent_codes[0]) - 1
        return self._mag_mask - 1 if self.nan_all_ones else self._mag_mask

    @property
    def _canonical_nan(self) -> int:
        if self.ieee:  # quiet NaN: top exponent, mantissa MSB set
            return int(self._top_exponent_codes[0]) | 1 << (self.man_bits - 1)
        return self._mag_mask

    def _sign_bit(self, c):
        return (c >> (self.bits - 1) & 1) == 1

    def _fields(self, c):
        m = c & ((1 << self.man_bits) - 1)
        e = (c >> self.man_bits) & ((1 << self.exp_bits) - 1)
        sig = np.where(e > 0, m + (1 << self.man_bits), m)
        exp = np.maximum(e, 1) - self.bias - self.man_bits
        return np.where(c >> (self.bits - 1) & 1, -sig, sig), exp

    def _encode(self, x):
        if not (self.ieee or self.nan_all_ones):
            _reject_nan(self, x)
        a = np.abs(x)
        finite = np.isfinite(a)
        a_f = np.where(finite, a, 0.0)
        # Quantize at the exponent of a (clamped to the subnormal exponent), in units of the
        # mantissa LSB there: rint is the tie-to-even rounding. The code is then linear in
        # (exponent, units), so a rounding carry into the next binade needs no special case.
        e_min = 1 - self.bias
        exponent = np.where(a_f == 0, e_min, np.maximum(np.frexp(a_f)[1] - 1, e_min))
        units = np.rint(np.ldexp(a_f, self.man_bits - exponent)).astype(np.int64)
        mag = ((exponent + self.bias - 1).astype(np.int64) << self.man_bits) + units
        mag = np.minimum(mag, self._max_mag_code)
        if self.ieee:
            mag = np.where(np.isinf(a), self.inf_codes[0], mag)
        else:
            mag = np.where(np.isinf(a), self._max_mag_code, mag)
        code = mag | (np.signbit(x).astype(np.int64) << (self.bits - 1))
        return np.where(np.isnan(x), self._canonical_nan, code)

    def specials(self):
        parts = ["±0"]
        if self.ieee:
            parts += [f"±inf {self.inf_codes[0]:#x}/{self.inf_codes[1]:#x}", "NaN: top exponent"]
        elif self.nan_all_ones:
            parts += ["no inf", f"NaN {self.nan_codes[0]:#x}/{self.nan_codes[1]:#x}"]
        else:
            parts += ["no inf", "no NaN"]
        return ", ".join(parts)


@dataclass(frozen=True)
class E8M0Format(NumberFormat):
    """The MX shared scale: 8 exponent bits, no sign, no mantissa; 2**(code - 127), 0xFF NaN."""

    def __post_init__(self):
        object.__setattr__(self, "kind", "scale")

    @property
    def nan_codes(self):
        return (0xFF,)

    def _fields(self, c):
        return np.ones(c.shape, dtype=np.int64), c - 127

    def _encode(self, x):
        if (x[~np.isnan(x)] <= 0).any():
            raise ValueError("e8m0 has no zero or negative values")
        a = np.where(np.isnan(x), 1.0, x)
        mant, exp = np.frexp(np.clip(a, 2.0**-127, 2.0**127))
        exponent = exp - 1
        frac = 2 * mant - 1  # in [0, 1): rounds to 0 or 1 mantissa-less step
        up = (frac > 0.5) | ((frac == 0.5) & ((exponent + 127) % 2 == 1))
        code = np.clip(exponent + up + 127, 0, 254)
        return np.where(np.isnan(x), 0xFF, code)

    def specials(self):
        return "no sign, no zero, no inf, NaN 0xff"


# --- posits ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PositFormat(NumberFormat):
    """posit(n, es): sign, regime, up to ``es`` exponent bits, fraction; NaR = 1 << (n-1).

    Negative posits are the two's complement of the positive code; there is one zero.
    """

    es: int = 0

    def __post_init__(self):
        object.__setattr__(self, "kind", "posit")
        if not 3 <= self.bits <= 20 or not 0 <= self.es <= 4:
            raise ValueError(f"posit({self.bits}, {self.es}) is not supported")

    @property
    def nar(self) -> int:
        return 1 << (self.bits - 1)

    @property
    def nan_codes(self):
        return (self.nar,)

    @property
    def maxpos_exponent(self) -> int:
        return (self.bits - 2) << self.es

    def _fields(self, c):
        n, es = self.bits, self.es
        neg = (c >> (n - 1)) & 1
        mag = np.where(neg == 1, (-c) & ((1 << n) - 1), c)
        body = mag & ((1 << (n - 1)) - 1)
        first = (body >> (n - 2)) & 1
        run = np.zeros(c.shape, dtype=np.int64)
        same = np.ones(c.shape, dtype=bool)
        for i in range(n - 2, -1, -1):
            same &= ((body >> i) & 1) == first
            run += same
        k = np.where(first == 1, run - 1, -run)
        rest = np.maximum(n - 2 - run, 0)  # bits after the regime's terminating bit
        tail = body & ((1 << rest) - 1)
        e_bits = np.minimum(es, rest)
        f_bits = rest - e_bits
        e = (tail >> f_bits) << (es - e_bits)  # exponent bits cut off by the regime read as 0
        f = tail & ((1 << f_bits) - 1)
        sig = np.where(neg == 1, -((1 << f_bits) + f), (1 << f_bits) + f)
        exp = (k << es) + e - f_bits
        zero = (c == 0) | (c == self.nar)
        return np.where(zero, 0, sig), np.where(zero, 0, exp)

    def _encode(self, x):
        n, es = self.bits, self.es
        special = ~np.isfinite(x)
        a = np.abs(np.where(special, 1.0, x))
        zero = a == 0
        a = np.clip(np.where(zero, 1.0, a), 2.0**-self.maxpos_exponent, 2.0**self.maxpos_exponent)
        mant, exp = np.frexp(a)
        scale = exp.astype(np.int64) - 1
        frac = (np.ldexp(mant, 53) - 2.0**52).astype(np.int64)  # 52 fraction bits, exact
        # Build the bit string (regime, es exponent bits, fraction) and round it to n-1 bits.
        # The fraction is cut to frac_bits plus a sticky bit so the string fits in int64.
        frac_bits = min(52, 62 - (n - 1) - es)
        sticky = (frac & ((1 << (52 - frac_bits)) - 1)) != 0
        frac >>= 52 - frac_bits
        k = scale >> es
        e = scale - (k << es)
        regime_len = np.where(k >= 0, k + 2, 1 - k)
        regime = np.where(k >= 0, ((1 << (k + 1)) - 1) << 1, 1)
        length = regime_len + es + frac_bits
        body = (((regime << es) | e) << frac_bits) | frac
        shift = length - (n - 1)
        code = body >> shift
        rem = body & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        up = (rem > half) | ((rem == half) & (sticky | (code & 1 == 1)))
        code = code + up
        code = np.where(np.signbit(x), (-code) & ((1 << n) - 1), code)
        code = np.where(zero, 0, code)
        return np.where(special, self.nar, code)

    def specials(self):
        return f"one 0, NaR {self.nar:#x}"


# --- the registry ---------------------------------------------------------------------------


def _build_registry() -> dict[str, NumberFormat]:
    fmts: list[NumberFormat] = []
    for bits in range(2, 17):
        fmts.append(IntFormat(f"int{bits}", bits, signed=True))
        fmts.append(IntFormat(f"uint{bits}", bits, signed=False))
    fmts += [
        BinaryFormat("binary", 1),
        TernaryFormat("ternary", 2),
        FloatFormat("fp8_e4m3", 8, exp_bits=4, man_bits=3, bias=7, nan_all_ones=True),
        FloatFormat("fp8_e5m2", 8, exp_bits=5, man_bits=2, bias=15, ieee=True),
        FloatFormat("fp6_e2m3", 6, exp_bits=2, man_bits=3, bias=1),
        FloatFormat("fp6_e3m2", 6, exp_bits=3, man_bits=2, bias=3),
        FloatFormat("fp4_e2m1", 4, exp_bits=2, man_bits=1, bias=1),
        FloatFormat("bf16", 16, exp_bits=8, man_bits=7, bias=127, ieee=True),
        FloatFormat("fp16", 16, exp_bits=5, man_bits=10, bias=15, ieee=True),
        E8M0Format("e8m0", 8),
    ]
    for n, es in ((4, 1), (8, 0), (8, 1), (8, 2), (16, 1), (16, 2)):
        fmts.append(PositFormat(f"posit{n}_{es}", n, es=es))
    return {f.name: f for f in fmts}


FORMATS: dict[str, NumberFormat] = _build_registry()


def get_format(name: str) -> NumberFormat:
    """The scalar format called ``name`` (see ``FORMATS``)."""
    if not isinstance(name, str):
        raise TypeError(f"a format name must be a string, not {type(name).__name__}")
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown number format {name!r}; known: {', '.join(FORMATS)}") from None


# --- MX block formats -----------------------------------------------------------------------


@dataclass(frozen=True)
class MXTensor:
    """A tensor in an MX format: one E8M0 scale code per block of the last axis."""

    fmt: MXFormat
    scales: np.ndarray  # uint8 E8M0 codes, shape (..., ceil(K / block))
    elements: np.ndarray  # element codes, shape (..., K)

    def dequantize(self) -> np.ndarray:
        return self.fmt.dequantize(self.scales, self.elements)


@dataclass(frozen=True)
class MXFormat:
    """An OCP MX format: elements of ``element`` sharing one E8M0 scale per ``block``."""

    name: str
    element: NumberFormat
    block: int = 32

    @property
    def element_emax(self) -> int:
        """Exponent of the largest power of two the element format can hold."""
        return math.floor(math.log2(self.element.max_value))

    @property
    def bits_per_element(self) -> float:
        return self.element.bits + 8 / self.block

    def shared_exponents(self, x: np.ndarray) -> np.ndarray:
        """floor(log2(amax)) - emax(element) per block, as an integer in [-127, 127].

        An all-zero block gets -127; a block holding NaN or inf gets no exponent (NaN scale)."""
        blocks = self._blocks(x)
        amax = np.max(np.abs(np.where(np.isfinite(blocks), blocks, 0.0)), axis=-1)
        # frexp is exact: amax = m * 2**e with m in [0.5, 1), so floor(log2(amax)) = e - 1.
        e = np.frexp(amax)[1] - 1 - self.element_emax
        return np.where(amax == 0, -127, np.clip(e, -127, 127)).astype(np.int64)

    def quantize(self, values) -> MXTensor:
        x = _as_values(self.element, values)
        if x.ndim == 0:
            raise ValueError(f"{self.name} quantizes arrays along their last axis, not a scalar")
        nonfinite = ~np.isfinite(self._blocks(x)).all(axis=-1)
        shared = self.shared_exponents(x)
        scale_codes = np.where(nonfinite, 0xFF, shared + 127).astype(np.uint8)
        scaled = self._blocks(x) / np.ldexp(1.0, shared)[..., None]
        scaled = np.where(nonfinite[..., None], 0.0, scaled)
        codes = self.element.encode(scaled).reshape(*x.shape[:-1], -1)[..., : x.shape[-1]]
        return MXTensor(self, scale_codes, codes)

    def dequantize(self, scales, elements) -> np.ndarray:
        elements = np.asarray(elements)
        values = self._blocks(self.element.decode(elements))
        scale = get_format("e8m0").decode(scales)[..., None]
        out = (values * scale).reshape(*elements.shape[:-1], -1)
        return out[..., : elements.shape[-1]]

    def _blocks(self, x: np.ndarray) -> np.ndarray:
        """x with its last axis padded with zeros to whole blocks and split into them."""
        k = x.shape[-1]
        pad = -k % self.block
        if pad:
            x = np.concatenate([x, np.zeros((*x.shape[:-1], pad), dtype=x.dtype)], axis=-1)
        return x.reshape(*x.shape[:-1], -1, self.block)


MX_FORMATS: dict[str, MXFormat] = {
    f.name: f
    for f in (
        MXFormat("mxfp8_e4m3", FORMATS["fp8_e4m3"]),
        MXFormat("mxfp8_e5m2", FORMATS["fp8_e5m2"]),
        MXFormat("mxfp6_e2m3", FORMATS["fp6_e2m3"]),
        MXFormat("mxfp6_e3m2", FORMATS["fp6_e3m2"]),
        MXFormat("mxfp4", FORMATS["fp4_e2m1"]),
        # MXINT8 elements are int8 with an implicit scale of 2**-6 (1.6 fixed point).
        MXFormat("mxint8", IntFormat("int8_q6", 8, signed=True, frac_bits=6)),
    )
}


def get_mx_format(name: str) -> MXFormat:
    """The MX block format called ``name`` (see ``MX_FORMATS``)."""
    try:
        return MX_FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown MX format {name!r}; known: {', '.join(MX_FORMATS)}") from None


# --- exact products and accumulation --------------------------------------------------------


def exact_product(fmt_a: NumberFormat, a, fmt_b: NumberFormat, b):
    """The exact products of codes ``a`` (format ``fmt_a``) and ``b``: (sig, exp) int64 arrays
    with product == sig * 2**exp. Non-finite codes raise ``ValueError``."""
    sig_a, exp_a = fmt_a.decompose(a)
    sig_b, exp_b = fmt_b.decompose(b)
    return sig_a * sig_b, exp_a + exp_b


@dataclass(frozen=True)
class FixedPoint:
    """A signed two's-complement fixed-point number: ``width`` bits, ``frac_bits`` of them
    below the binary point (negative ``frac_bits``: the LSB weighs more than 1)."""

    width: int
    frac_bits: int

    @property
    def int_bits(self) -> int:
        """Bits above the binary point, sign excluded."""
        return self.width - 1 - self.frac_bits

    def to_int(self, sig, exp) -> np.ndarray:
        """Exact values sig * 2**exp as integers in units of the LSB; raises if one does not
        fit (a bit below the LSB, or beyond the width)."""
        sig, shift = np.broadcast_arrays(
            np.asarray(sig, dtype=np.int64), np.asarray(exp, dtype=np.int64) + self.frac_bits
        )
        below = shift < 0
        if below.any() and (sig[below] % (np.int64(1) << -shift[below]) != 0).any():
            raise ValueError(f"a value has bits below 2**{-self.frac_bits}")
        sig_bits = int(np.abs(sig).max()).bit_length() if sig.size else 0
        if self.width <= 62 and sig_bits + int(shift.max(initial=0)) <= 62:
            out = np.where(below, sig >> np.maximum(-shift, 0), sig << np.maximum(shift, 0))
        else:  # wider than int64: Python integers
            vals = [
                int(s) << int(h) if h >= 0 else int(s) >> -int(h)
                for s, h in zip(sig.flat, shift.flat, strict=True)
            ]
            out = np.array(vals, dtype=object).reshape(sig.shape)
        lo, hi = -(1 << (self.width - 1)), (1 << (self.width - 1)) - 1
        if out.size and (out.min() < lo or out.max() > hi):
            raise ValueError(f"a value does not fit {self.width} signed bits")
        return out


def accumulator_format(fmt_a: NumberFormat, fmt_b: NumberFormat, terms: int) -> FixedPoint:
    """The narrowest fixed point that holds every sum of ``terms`` exact products of finite
    values of ``fmt_a`` and ``fmt_b``: no rounding, no overflow."""
    if not isinstance(terms, int) or terms < 1:
        raise ValueError(f"terms must be a positive integer, not {terms!r}")
    lsb = fmt_a.lsb_exponent + fmt_b.lsb_exponent
    largest = Fraction(fmt_a.max_magnitude) * Fraction(fmt_b.max_magnitude) * terms
    units = largest / Fraction(2) ** lsb  # an integer: every product is a multiple of 2**lsb
    assert units.denominator == 1
    return FixedPoint(width=int(units).bit_length() + 1, frac_bits=-lsb)


# --- dyadic requantization (HAWQ-V3) --------------------------------------------------------


def round_shift(x, c):
    """round(x / 2**c) for integers x and shifts c >= 0, ties to even, exactly.

    This is the project's one rounding rule for integer rescaling: the reference, the simulator
    and the hardware all compute it. In hardware: q = x >>> c; r = the c dropped bits;
    q += (r > half) | (r == half & q[0]), with half = 1 << (c - 1) (nothing to add when c = 0).

    int64 arrays need |x| < 2**62 and c <= 62; object arrays of Python integers have no limit.
    """
    x = np.asarray(x)
    c = np.asarray(c)
    if x.dtype.kind not in "iuO" or c.dtype.kind not in "iuO":
        raise TypeError("round_shift works on integers")
    if (c < 0).any():
        raise ValueError("shift amounts must be non-negative")
    if x.dtype == object:
        c = c.astype(object)  # so every shift below is a Python-integer shift
    q = x >> c
    r = x - (q << c)
    # Compare 2r with 2**c rather than r with 2**(c-1): then c == 0 needs no special case.
    full = np.left_shift(np.ones_like(x), c)
    up = ((r << 1) > full) | (((r << 1) == full) & (q & 1 == 1))
    return q + up.astype(np.int64)


DYADIC_B_BITS = 31
DYADIC_MAX_SHIFT = 127  # a 7-bit shift field: beyond it every 64-bit accumulator rounds to 0


def dyadic(multiplier: float) -> tuple[int, int]:
    """A real multiplier M as b / 2**c: integers 2**30 <= b < 2**31 and 0 <= c <= 127, b the
    nearest (ties to even) to M * 2**c, so the relative error is at most 2**-31."""
    m = float(multiplier)
    if not math.isfinite(m) or m <= 0:
        raise ValueError(f"a requantization multiplier must be positive and finite, not {m!r}")
    e = math.frexp(m)[1]  # m = f * 2**e, f in [0.5, 1)
    c = DYADIC_B_BITS - e
    b = round(math.ldexp(m, c))  # Python's round: ties to even
    if b == 1 << DYADIC_B_BITS:
        b, c = b >> 1, c - 1
    if c < 0:
        raise ValueError(f"multiplier {m!r} is too large for b < 2**{DYADIC_B_BITS}, c >= 0")
    if c > DYADIC_MAX_SHIFT:
        raise ValueError(f"multiplier {m!r} is too small for a shift of at most {DYADIC_MAX_SHIFT}")
    return b, c


def requant(acc, b, c, zero_point, lo: int, hi: int) -> np.ndarray:
    """clamp(round(acc * b / 2**c) + zero_point, lo, hi), rounding by ``round_shift``.

    ``b``, ``c`` and ``zero_point`` broadcast against ``acc`` (per-channel requantization).
    Exact for any integer ``acc``: products that could leave int64 are computed in Python
    integers. ``acc`` may be an object array of Python integers (accumulators wider than 64
    bits, as ``FixedPoint.to_int`` returns them)."""
    acc = np.asarray(acc)
    b, c, zp = (np.asarray(v) for v in (b, c, zero_point))
    for name, v in (("acc", acc), ("b", b), ("c", c), ("zero_point", zp)):
        python_ints = v.dtype == object and all(type(x) is int for x in v.flat)
        if v.dtype.kind not in "iu" and not python_ints:
            raise TypeError(f"requant: {name} must be integers, not {v.dtype}")
    if (b < 0).any() or (b >= 1 << DYADIC_B_BITS).any():
        raise ValueError(f"requant: b must be in [0, 2**{DYADIC_B_BITS})")
    if (c < 0).any() or (c > DYADIC_MAX_SHIFT).any():
        raise ValueError(f"requant: c must be in [0, {DYADIC_MAX_SHIFT}]")
    if lo > hi:
        raise ValueError(f"requant: empty clamp range [{lo}, {hi}]")
    acc_max = int(np.abs(acc.astype(object)).max()) if acc.size else 0
    if acc_max * int(b.max(initial=0)) < 1 << 62 and int(c.max(initial=0)) <= 62:
        product = acc.astype(np.int64) * b.astype(np.int64)
    else:
        product = acc.astype(object) * b.astype(object)
    out = round_shift(product, c.astype(product.dtype)) + zp
    return np.clip(out, lo, hi).astype(np.int64)
