"""The compute modes of the PE array: what each (weight, activation) pair means in hardware.

One ``ModeSpec`` per configured pair fixes, for the generator, the simulator and the compiler
alike: how many products a PE computes per cycle (``lanes``), how operand codes are packed into
the array's bus words, which datapath computes the product, and the fixed-point format of the
accumulator (``acc_width`` bits, ``frac_bits`` below the binary point).

Integer modes (both operands integers, binary or ternary) are precision-scalable: the 8-bit
weight word holds 1, 2 or 4 lanes (8-, 4- and 2-bit weights; binary and ternary weights take
2-bit lanes), and a PE adds that many products per cycle. They accumulate in ``acc_bits`` (the
configuration) with saturation.

Float modes (an FP, posit or FP4 operand) compute one product per cycle: each operand is decoded
into an integer significand and a shift (``decode_fields``), and the product lands exactly in a
fixed-point accumulator wide enough for ``rows`` products (``formats.accumulator_format``).

MX modes (both operands OCP MX block formats, ``qaccel.formats.MX_FORMATS``) are float modes on
the element formats plus one E8M0 scale per block of ``block`` k values on each side. A block's
products are summed exactly (``block_width`` bits, the element pair's fixed point), then the block
sum is shifted left by ``e - lo``, where e = (scale_w - 127) + (scale_a - 127) is the block's
combined scale exponent and [lo, hi] = ``scale_range`` the window of exponents the accumulator
holds exactly, and added to the mode's accumulator (``acc_width`` bits: the block sum, the
window, ``MX_GUARD_BITS`` for 2**8 full-range blocks; saturating). Exactness over the whole E8M0
range would take a 560-bit accumulator per PE, so the window is a configuration parameter
(``array.mx_scale_range``). A nonzero block sum whose exponent falls outside the window, and a
NaN scale (0xFF), add nothing and set ``invalid``: the result is never silently inexact. All-zero
blocks (scale 2**-127 by the OCP rule) add nothing and need no window.

Bus packing: lane ``l`` of a word holds k index ``lanes * i + l`` in bits
``[l * code_bits, (l + 1) * code_bits)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qaccel import formats

__all__ = [
    "MAX_SLICES",
    "MX_GUARD_BITS",
    "MX_SCALE_RANGE",
    "BusWidths",
    "ModeSpec",
    "decode_fields",
    "mode_spec",
    "pack_lanes",
    "pe_stages",
    "shift_bits",
    "sig_bits",
    "unpack_lanes",
]

INT_KINDS = ("int", "binary", "ternary")
MAX_SLICES = 4  # an 8-bit weight word splits into at most four 2-bit slices
WEIGHT_SIG_BITS = 8  # float-path weight significands, two's complement
ACT_SIG_BITS = 9  # float-path activation significands: int8, uint8, FP8, posit8
# Combined MX scale exponents held exactly by default: typical blocks of weights and activations
# land between -34 (MXFP8 E5M2) and 0 (MXINT8).
MX_SCALE_RANGE = (-40, 7)
MX_GUARD_BITS = 8  # the MX accumulator holds 2**8 blocks at full range before it saturates


def _lane_bits(fmt: formats.NumberFormat) -> int | None:
    """Width of an integer weight lane (a slice multiple), or None if not a lane format."""
    if fmt.kind in ("binary", "ternary"):
        return 2
    if fmt.kind == "int" and fmt.bits in (2, 4, 8) and fmt.frac_bits == 0:
        return fmt.bits
    return None


def sig_bits(fmt: formats.NumberFormat) -> int:
    """Two's-complement bits of the largest significand ``decode_fields`` gives for ``fmt``."""
    sig, _, _ = decode_fields(fmt, fmt.finite_codes())
    return max(int(sig.max()).bit_length(), int(-sig.min() - 1).bit_length()) + 1


def shift_bits(fmt: formats.NumberFormat) -> int:
    """Bits of the largest shift ``decode_fields`` gives for ``fmt`` (0 for integers)."""
    _, shift, _ = decode_fields(fmt, fmt.finite_codes())
    return int(shift.max()).bit_length()


@dataclass(frozen=True)
class ModeSpec:
    """One compute mode of an array with ``rows`` rows and ``acc_bits`` integer accumulators."""

    weight: formats.NumberFormat
    activation: formats.NumberFormat
    integer: bool
    lanes: int
    acc_width: int
    frac_bits: int
    # MX modes only (block > 0): the MX format names, k values per scale, the combined scale
    # exponents [lo, hi] held exactly, and the width of one block's exact sum.
    mx: tuple[str, str] | None = None
    block: int = 0
    scale_range: tuple[int, int] = (0, 0)
    block_width: int = 0

    @property
    def name(self) -> str:
        if self.mx:
            return f"{self.mx[0]}*{self.mx[1]}"
        return f"{self.weight.name}*{self.activation.name}"

    @property
    def block_range(self) -> tuple[int, int]:
        """Bounds of one MX block's exact sum (never reached: it cannot overflow)."""
        return -(1 << (self.block_width - 1)), (1 << (self.block_width - 1)) - 1

    @property
    def w_code_bits(self) -> int:
        return self.weight.bits

    @property
    def a_code_bits(self) -> int:
        return self.activation.bits

    @property
    def w_word_bits(self) -> int:
        return self.lanes * self.weight.bits

    @property
    def a_word_bits(self) -> int:
        return self.lanes * self.activation.bits

    @property
    def w_lane_bits(self) -> int:
        """Width of one weight lane inside the PE's 8-bit weight word."""
        return 8 // self.lanes

    @property
    def acc_range(self) -> tuple[int, int]:
        return -(1 << (self.acc_width - 1)), (1 << (self.acc_width - 1)) - 1


@dataclass(frozen=True)
class BusWidths:
    """The widths of an array's edge streams, shared by every mode it supports."""

    w_word_bits: int  # one column's weight word
    a_word_bits: int  # one row's activation word
    acc_width: int  # one column's result
    mode_bits: int
    scale_bits: int = 0  # one E8M0 scale per row and per column, if any mode is MX

    @classmethod
    def of(cls, modes) -> BusWidths:
        modes = tuple(modes)
        if not modes:
            raise ValueError("an array needs at least one mode")
        return cls(
            w_word_bits=max(m.w_word_bits for m in modes),
            a_word_bits=max(m.a_word_bits for m in modes),
            acc_width=max(m.acc_width for m in modes),
            mode_bits=max(1, (len(modes) - 1).bit_length()),
            scale_bits=8 if any(m.block for m in modes) else 0,
        )


def pe_stages(modes, pipelined: bool) -> int:
    """Cycles the PEs' pipeline registers add to an array's latency. Pipelined PEs register the
    product before the accumulating adder; where a float mode shifts its product into
    accumulator LSBs, the shifted product is registered too, so that the shifter (six levels of
    multiplexers for the widest float accumulators) has neither the multiplier nor the adder on
    its path."""
    if not pipelined:
        return 0
    return 1 + any(not m.integer for m in modes)


def mode_spec(
    weight: str,
    activation: str,
    *,
    rows: int,
    acc_bits: int,
    mx_scale_range: tuple[int, int] = MX_SCALE_RANGE,
) -> ModeSpec:
    """The mode for a (weight, activation) pair of format names (``formats.FORMATS``, or two
    ``formats.MX_FORMATS``), or a ValueError saying why the PE cannot."""
    if weight in formats.MX_FORMATS or activation in formats.MX_FORMATS:
        return _mx_mode_spec(weight, activation, mx_scale_range)
    w, a = formats.get_format(weight), formats.get_format(activation)
    if w.kind in INT_KINDS and a.kind in INT_KINDS:
        lane = _lane_bits(w)
        if lane is None:
            raise ValueError(
                f"{w.name} weights are not supported: integer weights must be "
                "2, 4 or 8 bits, binary or ternary"
            )
        if a.kind != "int" or a.bits > 8:
            raise ValueError(
                f"{a.name} activations are not supported in integer modes: "
                "activations must be integers of at most 8 bits"
            )
        return ModeSpec(w, a, True, 8 // lane, acc_bits, 0)
    _check_float_operands(w, a)
    acc = formats.accumulator_format(w, a, rows)
    return ModeSpec(w, a, False, 1, acc.width, acc.frac_bits)


def _check_float_operands(w: formats.NumberFormat, a: formats.NumberFormat) -> None:
    for role, fmt, limit in (("a weight", w, WEIGHT_SIG_BITS), ("an activation", a, ACT_SIG_BITS)):
        if fmt.kind in ("binary", "ternary", "scale") or fmt.bits > 8:
            raise ValueError(
                f"{fmt.name} is not supported as {role} in float modes: "
                "operands must be 8-bit or narrower FP, posit or integer formats"
            )
        if sig_bits(fmt) > limit:
            raise ValueError(
                f"{fmt.name} significands need {sig_bits(fmt)} bits as {role}, "
                f"more than the PE's {limit}"
            )


def _mx_mode_spec(weight: str, activation: str, scale_range) -> ModeSpec:
    for name, other in ((weight, activation), (activation, weight)):
        if name not in formats.MX_FORMATS:
            formats.get_format(name)  # an unknown name says so
            raise ValueError(
                f"MX formats pair only with MX formats: {other} carries block scales, "
                f"{name} does not"
            )
    mw, ma = formats.MX_FORMATS[weight], formats.MX_FORMATS[activation]
    if mw.block != ma.block:
        raise ValueError(f"{weight} and {activation} have different block sizes")
    lo, hi = scale_range
    if not (isinstance(lo, int) and isinstance(hi, int) and -254 <= lo <= hi <= 254):
        raise ValueError(
            f"the MX scale range must be integers -254 <= lo <= hi <= 254, not {scale_range}"
        )
    w, a = mw.element, ma.element
    _check_float_operands(w, a)
    block = formats.accumulator_format(w, a, mw.block)
    return ModeSpec(
        w,
        a,
        False,
        1,
        acc_width=block.width + (hi - lo) + MX_GUARD_BITS,
        frac_bits=block.frac_bits - lo,
        mx=(weight, activation),
        block=mw.block,
        scale_range=(lo, hi),
        block_width=block.width,
    )


def decode_fields(fmt: formats.NumberFormat, codes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the hardware's operand decoder computes: (sig, shift, special) per code, with
    value == sig * 2**(shift + fmt.lsb_exponent) for finite codes; special codes (NaN, inf,
    NaR) give sig 0, shift 0, special 1."""
    codes = np.asarray(codes, dtype=np.int64)
    special = np.isin(codes, fmt.nan_codes + fmt.inf_codes)
    finite = np.where(special, 0, codes)
    sig, exp = fmt.decompose(finite)
    shift = np.where(sig == 0, 0, exp - fmt.lsb_exponent)
    return np.where(special, 0, sig), np.where(special, 0, shift), special


def pack_lanes(codes, lanes: int, code_bits: int) -> np.ndarray:
    """Pack codes along the last axis, ``lanes`` to a word (last axis length / lanes words)."""
    codes = np.asarray(codes, dtype=np.int64)
    if codes.shape[-1] % lanes:
        raise ValueError(f"the last axis ({codes.shape[-1]}) is not a multiple of {lanes} lanes")
    grouped = codes.reshape(*codes.shape[:-1], -1, lanes)
    weights = np.left_shift(1, code_bits * np.arange(lanes, dtype=np.int64))
    return (grouped * weights).sum(axis=-1)


def unpack_lanes(words, lanes: int, code_bits: int) -> np.ndarray:
    """The inverse of ``pack_lanes``."""
    words = np.asarray(words, dtype=np.int64)
    shifts = code_bits * np.arange(lanes, dtype=np.int64)
    lanes_ = (words[..., None] >> shifts) & ((1 << code_bits) - 1)
    return lanes_.reshape(*words.shape[:-1], -1)
