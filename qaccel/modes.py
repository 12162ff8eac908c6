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

Bus packing: lane ``l`` of a word holds k index ``lanes * i + l`` in bits
``[l * code_bits, (l + 1) * code_bits)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qaccel import formats

__all__ = [
    "MAX_SLICES",
    "BusWidths",
    "ModeSpec",
    "decode_fields",
    "mode_spec",
    "pack_lanes",
    "shift_bits",
    "sig_bits",
    "unpack_lanes",
]

INT_KINDS = ("int", "binary", "ternary")
MAX_SLICES = 4  # an 8-bit weight word splits into at most four 2-bit slices
WEIGHT_SIG_BITS = 8  # float-path weight significands, two's complement
ACT_SIG_BITS = 9  # float-path activation significands: int8, uint8, FP8, posit8


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

    @property
    def name(self) -> str:
        return f"{self.weight.name}*{self.activation.name}"

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
        )


def mode_spec(weight: str, activation: str, *, rows: int, acc_bits: int) -> ModeSpec:
    """The mode for a (weight, activation) pair, or a ValueError saying why the PE cannot."""
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
    acc = formats.accumulator_format(w, a, rows)
    return ModeSpec(w, a, False, 1, acc.width, acc.frac_bits)


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
