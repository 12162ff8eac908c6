"""The post-processing unit's contract: accumulator rows in, 8-bit output codes out.

For one accumulator row of N lanes (lane j is output channel j), every integer exact:

    x_j = acc_j + bias_j                      acc: signed acc_width bits, bias: signed 32 bits
    if residual: x_j += r_j << res_shift      r_j: an 8-bit code read as int8 if out_signed,
                                              else as uint8; res_shift in 0..15
    y_j = round_shift(x_j * b_j, c_j) + zero_point
                                              b: unsigned 31 bits, c in 0..63, zero_point
                                              signed 9 bits; round_shift rounds half to even
    out_j = clamp(y_j, lo, hi)                out_min <= lo <= hi <= out_max, where the output
                                              range is -128..127 if out_signed, else 0..255
    code_j = out_j & 0xFF
    saturated_j = y_j < out_min or y_j > out_max
    invalid_j = the accumulator's invalid flag, passed through

``saturated`` is format saturation, which the accelerator counts: clamping into a narrower
[lo, hi] is what the program asked for and is not a saturation.

How the compiler uses it:

- requantization, per channel: b_j / 2**c_j is channel j's real multiplier
  (``qaccel.formats.dyadic``); per tensor, every lane gets the same b and c;
- ReLU: lo = zero_point (the code of real 0), hi = out_max; no activation: lo, hi = out_min,
  out_max;
- residual add of a tensor R with zero point zr, scaled by 2**res_shift relative to the
  accumulator: the hardware adds the raw codes r << res_shift, so the compiler folds
  -(zr << res_shift) into the bias, giving (r - zr) << res_shift in total.

Timing (``hw.post.PostProcessor``): a row accepted in cycle t leaves in cycle t + LATENCY; a
row may enter every cycle. The parameters hold while an instruction's rows are inside: the next
instruction's parameters, and its first row, may apply from the cycle the last row leaves.
"""

from __future__ import annotations

import numpy as np

from qaccel.formats import DYADIC_B_BITS, round_shift

__all__ = [
    "BIAS_BITS",
    "B_BITS",
    "CODE_BITS",
    "C_BITS",
    "LATENCY",
    "RES_SHIFT_BITS",
    "ZP_BITS",
    "out_range",
    "postprocess",
]

BIAS_BITS = 32  # signed
B_BITS = DYADIC_B_BITS  # unsigned: every b that qaccel.formats.dyadic returns
C_BITS = 6  # unsigned: shifts 0..63
ZP_BITS = 9  # signed: zero point, lo and hi
RES_SHIFT_BITS = 4  # unsigned: residual shifts 0..15
CODE_BITS = 8  # output and residual codes
LATENCY = 4  # cycles from an accepted row to its output row


def out_range(out_signed: bool) -> tuple[int, int]:
    """(out_min, out_max) of the 8-bit output format."""
    return (-128, 127) if out_signed else (0, 255)


def _is_int(v) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def _int_array(name: str, value) -> np.ndarray:
    """``value`` as an integer array: int64, or object (Python ints) if it may not fit."""
    arr = np.asarray(value)
    if arr.dtype == object:
        if not all(_is_int(v) for v in arr.flat):
            raise TypeError(f"{name} must hold integers")
        return np.vectorize(int, otypes=[object])(arr) if arr.size else arr
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 8:
        return arr.astype(object)  # above 2**63 int64 would wrap
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, not {arr.dtype}")
    return arr.astype(np.int64)


def _check_range(name: str, arr: np.ndarray, lo: int, hi: int, text: str) -> None:
    bad = (arr < lo) | (arr > hi)
    if bad.any():
        raise ValueError(f"{name} must be in {text}, not {int(arr[bad].flat[0])}")


def _lanes(name: str, value, n: int, lo: int, hi: int, text: str) -> np.ndarray:
    """A per-lane parameter: one value for every lane or one per lane."""
    arr = _int_array(name, value)
    if arr.shape not in ((), (n,)):
        raise ValueError(f"{name} must be one value or {n} (one per lane), not shape {arr.shape}")
    _check_range(name, arr, lo, hi, text)
    return np.broadcast_to(arr, (n,))


def _scalar(name: str, value, lo: int, hi: int) -> int:
    if not _is_int(value):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], not {value!r}")
    return int(value)


def postprocess(
    acc,
    invalid,
    *,
    bias,
    b,
    c,
    zero_point: int,
    lo: int,
    hi: int,
    out_signed: bool,
    residual=None,
    res_shift: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Post-process M accumulator rows (see the module docstring): (codes, saturated, invalid).

    ``acc`` is M x N integers (an object array of Python ints for accumulators wider than 64
    bits) and ``invalid`` M x N flags; ``bias``, ``b`` and ``c`` are one value per lane (N) or
    one for all; ``residual`` is None (no residual add) or M x N 8-bit codes (0..255, as an
    earlier layer's output codes lie in memory). Returns ``codes`` (uint8, M x N),
    ``saturated`` and ``invalid`` (bool, M x N). A value outside its hardware field raises
    ``ValueError``, a non-integer ``TypeError``.
    """
    acc = _int_array("acc", acc)
    if acc.ndim != 2:
        raise ValueError(f"acc must be an M x N array (rows x lanes), not shape {acc.shape}")
    n = acc.shape[1]
    if n < 1:
        raise ValueError("acc must have at least one lane")
    flags = np.asarray(invalid)
    if flags.shape != acc.shape:
        raise ValueError(f"invalid must have acc's shape {acc.shape}, not {flags.shape}")
    if flags.dtype != bool:
        _check_range("invalid", _int_array("invalid", flags), 0, 1, "{0, 1}")
    flags = flags.astype(bool)

    top = 1 << (BIAS_BITS - 1)
    bias = _lanes("bias", bias, n, -top, top - 1, f"[-2**{BIAS_BITS - 1}, 2**{BIAS_BITS - 1})")
    b = _lanes("b", b, n, 0, (1 << B_BITS) - 1, f"[0, 2**{B_BITS})")
    c = _lanes("c", c, n, 0, (1 << C_BITS) - 1, f"[0, {(1 << C_BITS) - 1}]")
    zp_top = 1 << (ZP_BITS - 1)
    zero_point = _scalar("zero_point", zero_point, -zp_top, zp_top - 1)
    res_shift = _scalar("res_shift", res_shift, 0, (1 << RES_SHIFT_BITS) - 1)
    if out_signed not in (False, True):
        raise TypeError(f"out_signed must be a bool, not {out_signed!r}")
    out_min, out_max = out_range(bool(out_signed))
    if not (_is_int(lo) and _is_int(hi) and out_min <= lo <= hi <= out_max):
        kind = "signed" if out_signed else "unsigned"
        raise ValueError(
            f"lo and hi must satisfy {out_min} <= lo <= hi <= {out_max} for {kind} outputs, "
            f"not lo={lo!r}, hi={hi!r}"
        )

    # int64 while the sums and products provably fit, Python integers beyond
    span = (int(acc.min()), int(acc.max())) if acc.size else (0, 0)
    wide = acc.dtype == object or not -(1 << 61) < span[0] <= span[1] < 1 << 61
    x = acc.astype(object) if wide else acc
    x = x + bias.astype(x.dtype)
    if residual is not None:
        r = _int_array("residual", residual)
        if r.shape != acc.shape:
            raise ValueError(f"residual must have acc's shape {acc.shape}, not {r.shape}")
        _check_range("residual", r, 0, 255, "[0, 255] (8-bit codes)")
        if out_signed:
            r = r - ((r & 0x80) << 1)  # the code as int8
        x = x + (r.astype(x.dtype) << res_shift)
    x_max = int(np.abs(x).max()) if x.size else 0
    if x.dtype == object or x_max * int(b.max()) >= 1 << 62 or int(c.max()) > 62:
        product = x.astype(object) * b.astype(object)
        shift = c.astype(object)
    else:
        product, shift = x * b, c
    y = round_shift(product, shift) + zero_point
    saturated = (y < out_min) | (y > out_max)
    out = np.minimum(np.maximum(y, lo), hi).astype(np.int64)
    return (out & 0xFF).astype(np.uint8), np.asarray(saturated, dtype=bool), flags.copy()
