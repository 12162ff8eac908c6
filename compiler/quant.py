"""Quantized arithmetic the compiler targets, stated once: ONNX's QuantizeLinear and
DequantizeLinear, and how a quantized Conv / MatMul / Gemm (a ``qlinear`` op) becomes one
integer GEMM with a post-processing epilogue.

A ``qlinear`` op computes, for activation codes x (zero point zx, scale sx), weight codes w
(zero points zw_n, scales sw_n per output channel n) and int32 bias codes b_n (scale sx*sw_n):

    acc_n = sum_k (x_k - zx) * (w_kn - zw_n) + b_n
    y_n   = clamp(round(acc_n * sx * sw_n / sy) + zy, lo, hi)

On the accelerator the activation codes are int8: uint8 codes and their zero point move down
by 128 (exact). Float and posit activations (ONNX's FLOAT8E4M3FN and FLOAT8E5M2, 8-bit
posits; zero point 0) keep their codes; the compiler's integer view of such a code is its
value * 2**units(format), the fixed point the array accumulates exactly, and the scale
carries 2**-units. The weights become w - zw (they must fit the weight format), the
zero-point term folds into the bias, ``-zx * sum_k (w_kn - zw_n)``, and the real multiplier
becomes the dyadic b / 2**c of ``qaccel.formats.dyadic``. Convolutions are GEMMs over im2col
patches; the padding is the activation's zero point, so it reads as real 0. A grouped
convolution is one GEMM with block-diagonal weights.

**MX.** An MX layer's rows are rounded to MX blocks on the host (element codes and an E8M0
scale per block of 32 along K; a Conv's K runs kh, kw, c, so a block is 32 channels of one
tap, as the model rounds its input); the array sums each block exactly and adds it shifted by its
two scales into a fixed-point window (``sim.array_model``); a block outside the window is an
error, never a dropped sum. The accumulator's unit (2**-58 for MXFP8 with the default window)
is finer than a 32-bit bias can follow, so the host adds the bias and requantizes the exact
accumulators the array stores.

**Rounding.** onnxruntime multiplies the int32 accumulator by the float32 multiplier and
rounds half to even; the accelerator multiplies by the dyadic b / 2**c (31-bit b) and rounds
half to even. The two agree except where acc * M lies within float32 rounding of a half-way
point, so the accelerator's codes are within 1 LSB of onnxruntime's everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compiler.format_ops import NARROW_INTS, POSITS, SMALL_FLOATS
from compiler.graph import CompileError, QParams
from sim.post_model import postprocess

__all__ = [
    "FLOAT_ACTIVATIONS",
    "GemmForm",
    "coarsen_for_bias",
    "dequantize",
    "gemm_form",
    "im2col",
    "qlinear_reference",
    "quantize",
    "units",
]

UINT8_SHIFT = 128
# activation formats whose codes stand for values: ONNX's float8 element types, 8-bit posits,
# FP6 and FP4 (``compiler.format_ops``), as the array's float and posit modes take them
FLOAT_ACTIVATIONS = ("fp8_e4m3", "fp8_e5m2", *POSITS, *SMALL_FLOATS)


def units(fmt: str) -> int:
    """Fraction bits of the integers the compiler holds for values of ``fmt``: value *
    2**units is an integer for every finite value (0 for integer formats). A product of two
    such integers is the array's accumulator in the mode's fixed point."""
    from qaccel import formats

    f = formats.get_format(fmt)
    return 0 if f.kind in ("int", "binary", "ternary") else -f.lsb_exponent


def float_ints(codes: np.ndarray, fmt: str) -> np.ndarray:
    """Codes of a float format -> the compiler's integers, value * 2**units (exact)."""
    from qaccel import formats

    f = formats.get_format(fmt)
    values = f.decode(np.asarray(codes, dtype=np.int64))
    if not np.isfinite(values).all():
        raise CompileError(f"{fmt} codes hold a NaN or an infinity")
    return np.rint(values * 2.0 ** units(fmt)).astype(np.int64)


def unit_scale(q: QParams) -> float:
    """The real value of one unit of the compiler's integer view of ``q``'s per-tensor codes:
    the scale, divided by 2**units for float formats."""
    s = float(q.scale.reshape(-1)[0])
    return s * 2.0 ** -units(q.dtype) if q.dtype in FLOAT_ACTIVATIONS else s


def _along(v: np.ndarray, q: QParams, ndim: int) -> np.ndarray:
    if q.axis is None or v.size == 1:
        return v.reshape(())
    shape = [1] * ndim
    shape[q.axis % ndim] = v.size
    return v.reshape(shape)


def quantize(x: np.ndarray, q: QParams) -> np.ndarray:
    """ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point), in float32;
    float and posit codes: x / scale rounded as the format rounds (``qaccel.formats``: to
    nearest, ties to even, saturating)."""
    x = np.asarray(x, dtype=np.float32)
    scale = _along(q.scale.astype(np.float32), q, x.ndim)
    if q.dtype in NARROW_INTS:  # codes are the values: symmetric, zero point 0
        lo, hi = q.code_range
        v = x / scale
        if np.isnan(v).any():
            raise CompileError(f"a NaN cannot be quantized to {q.dtype} codes here")
        return np.clip(np.rint(v), lo, hi).astype(np.int64)
    if q.dtype in FLOAT_ACTIVATIONS:
        from qaccel import formats

        f = formats.get_format(q.dtype)
        v = (x / scale).astype(np.float64)
        if np.isnan(v).any():
            raise CompileError(f"a NaN cannot be quantized to {q.dtype} codes here")
        # saturate=1 (ONNX's default, the only one the frontend takes): infinities too
        v = np.clip(v, -f.max_magnitude, f.max_magnitude)
        codes = f.encode(v).astype(np.int64)
        if q.dtype in SMALL_FLOATS:  # one zero, as the qaccel domain's table has it
            codes[f.decode(codes) == 0] = 0
        return codes
    zp = _along(q.zero_point.astype(np.int64), q, x.ndim)
    lo, hi = q.code_range
    if np.isnan(x).any():
        raise CompileError(f"a NaN cannot be quantized to {q.dtype} codes here")
    return np.clip(np.rint(x / scale) + zp, lo, hi).astype(np.int64)  # saturating, inf too


def dequantize(codes: np.ndarray, q: QParams) -> np.ndarray:
    """ONNX DequantizeLinear: (code - zero_point) * scale, in float32."""
    codes = np.asarray(codes, dtype=np.int64)
    scale = _along(q.scale.astype(np.float32), q, codes.ndim)
    if q.dtype in FLOAT_ACTIVATIONS:
        from qaccel import formats

        values = formats.get_format(q.dtype).decode(codes).astype(np.float32)
        return (values * scale).astype(np.float32)
    zp = _along(q.zero_point.astype(np.int64), q, codes.ndim)
    return ((codes - zp).astype(np.float32) * scale).astype(np.float32)


def conv_out_size(size: int, k: int, stride: int, pad0: int, pad1: int, dilation: int) -> int:
    return (size + pad0 + pad1 - dilation * (k - 1) - 1) // stride + 1


def float_weight_codes(
    w: np.ndarray, fmt: str, axis: int, *, coarsest: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Float weights that are exact values of ``fmt`` times a power of two per channel (as
    ``compiler.ptq`` writes them) -> (integers value * 2**units, per-channel scales). Of the
    powers of two that keep every value exact, the smallest: the finest accumulator unit, so
    a float bias rounds to it with the least error (``coarsest``: the largest, the smallest
    integers). Raises CompileError when there is none."""
    from qaccel import formats

    f = formats.get_format(fmt)
    one = 2.0 ** units(fmt)
    span = int(np.ceil(np.log2(f.max_magnitude / f.smallest_positive))) + 1
    wc = np.moveaxis(np.asarray(w, dtype=np.float64), axis, 0)
    ints = np.zeros(wc.shape, dtype=np.int64)
    scales = np.ones(wc.shape[0])
    for c in range(wc.shape[0]):
        top = np.abs(wc[c]).max()
        if top == 0:
            continue
        first = int(np.ceil(np.log2(top / f.max_magnitude)))  # the largest value fits
        exact = [
            e
            for e in range(first, first + span + 1)
            if np.array_equal(f.decode(f.encode(wc[c] / 2.0**e)), wc[c] / 2.0**e)
        ]
        e = (max(exact) if coarsest else min(exact)) if exact else None
        if e is None:
            raise CompileError(f"weights declared {fmt} are not {fmt} values times a power of two")
        ints[c], scales[c] = np.rint(wc[c] / 2.0**e * one), 2.0**e / one
    return np.moveaxis(ints, 0, axis), scales


def coarsen_for_bias(wc: np.ndarray, scale: np.ndarray, fmt: str, bias: np.ndarray):
    """Float weights' integers (value * 2**units, channels first) made coarser by 2**j in a
    channel whose bias, in the accumulator's unit, exceeds the post-processing unit's 32
    bits, where the channel's integers stay exact (multiples of 2**j, and values of the
    format): the unit grows, the bias shrinks. Returns (integers, per-channel scales)."""
    from qaccel import formats

    f = formats.get_format(fmt)
    wc, scale = np.array(wc, np.int64), np.array(scale, np.float64)
    for c in range(wc.shape[0]):
        over = abs(int(bias[c])) / (2**31 - 1)
        j = int(np.ceil(np.log2(over))) if over > 1 else 0
        values = (wc[c] >> j) * 2.0 ** -units(fmt)
        exact = np.array_equal(f.decode(f.encode(values)), values)  # posits taper: check
        if j > 0 and not np.any(wc[c] % (1 << j)) and exact:
            wc[c] >>= j
            scale[c] *= 2.0**j
    return wc, scale


def conv_attrs(a: dict, w_shape, source: str) -> dict:
    """A Conv's geometry from its ONNX attributes and weight shape (2-D only)."""
    if len(w_shape) != 4:
        raise CompileError(f"node {source}: only 2-D convolutions are supported")
    if a.get("auto_pad", "NOTSET") != "NOTSET":
        raise CompileError(f"node {source}: auto_pad is not supported; give pads")
    return {
        "kind": "conv",
        "kernel": tuple(w_shape[2:]),
        "strides": tuple(a.get("strides", [1, 1])),
        "dilations": tuple(a.get("dilations", [1, 1])),
        "pads": tuple(a.get("pads", [0, 0, 0, 0])),
        "group": int(a.get("group", 1)),
    }


def im2col(x: np.ndarray, attrs: dict, pad_value: int) -> np.ndarray:
    """N x C x H x W values (codes or floats) -> (N * OH * OW) x (C * KH * KW) patches, padded
    with ``pad_value``; columns ordered (c, kh, kw), the order of an ONNX weight's trailing
    axes, or with ``attrs["channels_last"]`` (kh, kw, c): an MX block of channels of one
    tap."""
    n, c, h, w = x.shape
    kh, kw = attrs["kernel"]
    sh, sw = attrs["strides"]
    dh, dw = attrs["dilations"]
    pt, pl, pb, pr = attrs["pads"]
    oh = conv_out_size(h, kh, sh, pt, pb, dh)
    ow = conv_out_size(w, kw, sw, pl, pr, dw)
    dtype = np.float64 if x.dtype.kind == "f" else np.int64
    padded = np.full((n, c, h + pt + pb, w + pl + pr), pad_value, dtype=dtype)
    padded[:, :, pt : pt + h, pl : pl + w] = x
    cols = np.empty((n, oh, ow, c, kh, kw), dtype=dtype)
    for i in range(kh):
        for j in range(kw):
            patch = padded[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh]
            patch = patch[:, :, :, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
            cols[:, :, :, :, i, j] = patch.transpose(0, 2, 3, 1)
    if attrs.get("channels_last"):
        cols = cols.transpose(0, 1, 2, 4, 5, 3)
    return cols.reshape(n * oh * ow, c * kh * kw)


@dataclass(frozen=True)
class GemmForm:
    """A qlinear op as the accelerator runs it: y = epilogue((x + x_shift) @ weights)."""

    weights: np.ndarray  # K x N, w - zw: values of the weight format
    x_shift: int  # added to the input codes: -128 for uint8 activations, else 0
    bias: np.ndarray  # N int32: b - zx * colsum(w - zw)
    multiplier: np.ndarray  # N reals: sx * sw_n / sy (empty when the output is the int32 acc)
    zero_point: int
    lo: int
    hi: int
    out_signed: bool
    out_dtype: str  # "int8", "uint8" or "int32"
    x_format: str = "int8"  # the input codes' format: int8, or a float format (FLOAT_ACTIVATIONS)
    # a residual input added before requantization: its codes + res_codes_shift (to the
    # output's signedness) << res_shift; its zero point is folded into the bias
    res_shift: int | None = None
    res_codes_shift: int = 0
    # MX modes (x_format an MX format): the weights are element codes with E8M0 scales per
    # block of K (blocks x N); the accumulator's unit is 2**-mx_frac; the bias (in that unit,
    # wider than the post-processing unit's 32 bits) and the requantization run on the host
    w_mx: str = ""  # the weights' MX format
    w_scales: np.ndarray | None = None
    mx_window: tuple = (0, 0)  # the array's block-scale window (lo, hi)
    mx_frac: int = 0

    @property
    def mx(self) -> bool:
        return bool(self.w_mx)

    def x_ints(self, codes: np.ndarray) -> np.ndarray:
        """Input codes (already shifted) as the integers the accumulator multiplies."""
        if self.x_format in FLOAT_ACTIVATIONS:
            return float_ints(codes, self.x_format)
        return np.asarray(codes, dtype=np.int64)


def _weight_matrix(w: np.ndarray, zw: np.ndarray, attrs: dict) -> np.ndarray:
    """K x N matrix of w - zw: a MatMul's weights as they are; a Conv's (OC, C/g, KH, KW)
    placed block-diagonally for its groups, rows in im2col order."""
    w = np.asarray(w, dtype=np.int64)
    if attrs["kind"] == "matmul":
        return w - zw.reshape(1, -1)
    oc, cg, kh, kw = w.shape
    group = attrs["group"]
    per = kh * kw
    centered = (w - zw.reshape(-1, 1, 1, 1)).reshape(oc, cg * per)
    out = np.zeros((cg * group * per, oc), dtype=np.int64)
    og = oc // group
    for gi in range(group):
        out[gi * cg * per : (gi + 1) * cg * per, gi * og : (gi + 1) * og] = centered[
            gi * og : (gi + 1) * og
        ].T
    return out


def _mx_form(attrs: dict, w: np.ndarray, bias: np.ndarray | None) -> GemmForm:
    """An MX qlinear: element codes and block scales of the weights in ``attrs``; real
    values (tensor scales 1); the bias in units of 2**-mx_frac, as Python integers."""
    from qaccel import formats

    yq: QParams = attrs["y_q"]
    lo, _ = window = tuple(attrs["mx_window"])
    elements = (formats.get_mx_format(attrs["w_dtype"]), formats.get_mx_format(attrs["x_q"].dtype))
    frac = formats.accumulator_format(elements[0].element, elements[1].element, 32).frac_bits - lo
    n = w.shape[1]
    b = np.zeros(n, dtype=object)
    if bias is not None:
        b = np.array([int(v) for v in np.rint(np.asarray(bias, np.float64) * 2.0**frac)], object)
    lo, hi = attrs.get("clamp") or yq.code_range
    return GemmForm(
        weights=np.asarray(w, np.int64),
        x_shift=0,
        bias=b,
        multiplier=np.full(n, 2.0**-frac / float(yq.scale.reshape(-1)[0])),
        zero_point=int(yq.zero_point.reshape(-1)[0]),
        lo=lo,
        hi=hi,
        out_signed=yq.dtype == "int8",
        out_dtype=yq.dtype,
        x_format=attrs["x_q"].dtype,
        w_mx=attrs["w_dtype"],
        w_scales=np.asarray(attrs["w_mx_scales"], np.int64),
        mx_window=window,
        mx_frac=frac,
    )


def mx_rows(rows: np.ndarray, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """Real M x K rows -> (element codes, E8M0 scale codes per block of K)."""
    from qaccel import formats

    t = formats.get_mx_format(fmt).quantize(np.asarray(rows, np.float64))
    return t.elements.astype(np.int64), t.scales.astype(np.int64)


def mx_spec(form: GemmForm):
    """The array's ModeSpec for an MX form."""
    from qaccel import modes

    return modes.mode_spec(
        form.w_mx, form.x_format, rows=1, acc_bits=32, mx_scale_range=tuple(form.mx_window)
    )


def mx_epilogue(acc, form: GemmForm) -> np.ndarray:
    """The host's epilogue of an MX layer: (acc + bias) * 2**-mx_frac / y_scale, rounded half
    to even (the dyadic multiplier, exact integers), + zero point, clamped."""
    from qaccel.formats import dyadic, round_shift

    b, c = dyadic(float(form.multiplier[0]))
    x = np.asarray(acc, dtype=object) + form.bias.astype(object)
    y = round_shift(x * b, np.full(x.shape, c, dtype=object)) + form.zero_point
    return np.clip(y.astype(np.int64), form.lo, form.hi)


def gemm_form(attrs: dict, w: np.ndarray, bias: np.ndarray | None, source: str) -> GemmForm:
    """The integer GEMM and epilogue of a qlinear op (module docstring)."""
    if attrs.get("w_mx_scales") is not None:
        return _mx_form(attrs, w, bias)
    xq: QParams = attrs["x_q"]
    yq: QParams | None = attrs["y_q"]
    n = w.shape[0] if attrs["kind"] == "conv" else w.shape[1]
    zw = np.broadcast_to(np.asarray(attrs["w_zp"], dtype=np.int64).reshape(-1), (n,))
    sw = np.broadcast_to(np.asarray(attrs["w_scale"], dtype=np.float64).reshape(-1), (n,))
    weights = _weight_matrix(w, zw, attrs)
    x_format = xq.dtype if xq.dtype in FLOAT_ACTIVATIONS else "int8"
    x_shift = -UINT8_SHIFT if xq.dtype == "uint8" else 0
    zx = int(xq.zero_point.reshape(-1)[0]) + x_shift
    b = np.zeros(n, dtype=np.int64) if bias is None else np.asarray(bias, dtype=np.int64)
    folded = b - zx * weights.sum(axis=0)
    if folded.size and (folded.min() < -(2**31) or folded.max() >= 2**31):
        if x_format != "int8":
            raise CompileError(
                f"{source}: the bias in the accumulator's units (2**-{units(x_format)} of the "
                f"{x_format} input's scale times the weights') does not fit the post-processing "
                "unit's 32 bits; quantize the input to smaller values (a larger scale)"
            )
        raise CompileError(
            f"{source}: the bias with the activation zero point folded in does not fit 32 bits"
        )
    if yq is None:
        return GemmForm(weights, x_shift, folded, np.zeros(0), 0, 0, 0, True, "int32", x_format)
    multiplier = unit_scale(xq) * sw / float(yq.scale.reshape(-1)[0])
    zy = int(yq.zero_point.reshape(-1)[0])
    lo, hi = attrs.get("clamp") or yq.code_range
    out_signed = yq.dtype == "int8"
    res_shift, res_codes_shift = None, 0
    if attrs.get("res_q") is not None:
        res_shift, res_codes_shift = attrs["res_shift"], _codes_shift(attrs["res_q"], out_signed)
        zr = int(attrs["res_q"].zero_point.reshape(-1)[0]) + res_codes_shift
        folded = folded - (zr << res_shift)
        if folded.min() < -(2**31) or folded.max() >= 2**31:
            raise CompileError(
                f"{source}: the bias with the residual's zero point folded in does not fit 32 bits"
            )
    return GemmForm(
        weights,
        x_shift,
        folded,
        multiplier,
        zy,
        lo,
        hi,
        out_signed,
        yq.dtype,
        x_format,
        res_shift,
        res_codes_shift,
    )


def _codes_shift(q: QParams, out_signed: bool) -> int:
    """What moves a residual's codes to the output's signedness (the unit reads them so)."""
    return {("uint8", True): -UINT8_SHIFT, ("int8", False): UINT8_SHIFT}.get(
        (q.dtype, out_signed), 0
    )


def residual_shift(res_q: QParams, xq: QParams, w_scale: np.ndarray) -> int | None:
    """k with res_scale == 2**k * (one unit of the accumulator: sx * sw_n) for every channel n
    (to float32 precision), 0 <= k < 16: a residual the post-processing unit adds to the
    accumulator exactly; None when there is none."""
    from sim.post_model import RES_SHIFT_BITS

    if (
        not res_q.per_tensor
        or res_q.dtype not in ("int8", "uint8")
        or xq.dtype
        not in (
            "int8",
            "uint8",
        )
    ):
        return None
    ratio = float(res_q.scale.reshape(-1)[0]) / (unit_scale(xq) * np.asarray(w_scale, float))
    k = int(np.rint(np.log2(ratio.reshape(-1)[0]))) if np.all(ratio > 0) else -1
    if not 0 <= k < 1 << RES_SHIFT_BITS or not np.allclose(ratio, 2.0**k, rtol=1e-5, atol=0):
        return None
    return k


def gemm_rows(x: np.ndarray, attrs: dict) -> tuple[np.ndarray, tuple]:
    """The GEMM's input rows (M x K codes, not yet shifted) and how to fold its M x N result
    back: ("conv", n, oh, ow) or ("matmul", leading shape)."""
    xq: QParams = attrs["x_q"]
    if attrs["kind"] == "conv":
        zx = int(xq.zero_point.reshape(-1)[0])
        cols = im2col(x, attrs, zx)
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (dh, dw) = attrs["kernel"], attrs["strides"], attrs["dilations"]
        pt, pl, pb, pr = attrs["pads"]
        oh, ow = conv_out_size(h, kh, sh, pt, pb, dh), conv_out_size(w, kw, sw, pl, pr, dw)
        return cols, ("conv", n, oh, ow)
    return x.reshape(-1, x.shape[-1]), ("matmul", x.shape[:-1])


def fold_rows(y: np.ndarray, how: tuple) -> np.ndarray:
    """The GEMM's M x N result in the op's output layout (NCHW for a Conv)."""
    if how[0] == "conv":
        _, n, oh, ow = how
        return y.reshape(n, oh, ow, -1).transpose(0, 3, 1, 2)
    return y.reshape(*how[1], y.shape[-1])


def epilogue_of(form: GemmForm):
    """The ``compiler.gemm.Epilogue`` of a GemmForm (None for an int32 output, and for MX
    forms, whose epilogue the host runs)."""
    from dataclasses import replace

    from compiler.gemm import Epilogue

    if form.out_dtype == "int32" or form.mx:
        return None
    ep = Epilogue.requant(form.multiplier, zero_point=form.zero_point, out_signed=form.out_signed)
    ep = replace(ep, bias=form.bias, lo=form.lo, hi=form.hi)
    if form.res_shift is not None:
        ep = replace(ep, residual=True, res_shift=form.res_shift)
    return ep


def residual_rows(r: np.ndarray, how: tuple, codes_shift: int) -> np.ndarray:
    """A residual tensor (the op's output layout) as the GEMM's M x N rows of codes, moved by
    ``codes_shift`` to the output's signedness (int8 or uint8 values, as the output's)."""
    r = np.asarray(r, np.int64)
    rows = r.transpose(0, 2, 3, 1).reshape(-1, r.shape[1]) if how[0] == "conv" else r
    return rows.reshape(-1, rows.shape[-1]) + codes_shift


def _mx_on_the_host(codes, x_scales, form: GemmForm) -> np.ndarray:
    """An MX layer the host runs: the dequantized blocks multiplied in float64 (no scale
    window to leave), the bias added, requantized with round half to even."""
    from qaccel import formats

    xv = formats.get_mx_format(form.x_format).dequantize(x_scales, codes)
    wv = formats.get_mx_format(form.w_mx).dequantize(form.w_scales.T, form.weights.T).T
    y_scale = 2.0**-form.mx_frac / float(form.multiplier[0])
    bias = np.array([float(b) for b in form.bias]) * 2.0**-form.mx_frac
    y = np.rint((xv @ wv + bias) / y_scale) + form.zero_point
    return np.clip(y, form.lo, form.hi).astype(np.int64)


def gemm_reference(
    a: np.ndarray, form: GemmForm, residual=None, x_scales=None, *, host: bool = False
) -> np.ndarray:
    """The accelerator's result for input rows ``a`` (shifted codes): the exact integer
    product, then the post-processing unit's contract (``sim.post_model``); ``residual``:
    its M x N codes (``residual_rows``) when the form has one. MX forms take the rows' E8M0
    ``x_scales``: the array model's exact block sums, then the host's epilogue; a block
    whose scales fall outside the array's window is an error, not a dropped sum (``host``:
    the layer runs on the host, which has no window)."""
    if form.mx and host:
        return _mx_on_the_host(a, x_scales, form)
    if form.mx:
        from sim.array_model import reference

        acc, invalid = reference(mx_spec(form), form.weights, a, form.w_scales, x_scales)
        if invalid.any():
            raise CompileError(
                "an MX block's scales fall outside the array's scale window: its sum would be "
                "dropped"
            )
        return mx_epilogue(acc, form)
    x = form.x_ints(a)
    top = int(np.abs(x).max(initial=0)) * int(np.abs(form.weights).max(initial=0)) * x.shape[-1]
    wide = top >= 1 << 62  # float modes' fixed point can outgrow int64: Python integers
    acc = x.astype(object) @ form.weights.astype(object) if wide else x @ form.weights
    ep = epilogue_of(form)
    if ep is None:
        return acc + form.bias
    codes, _, _ = postprocess(
        acc,
        np.zeros(acc.shape, dtype=bool),
        bias=ep.bias,
        b=ep.b,
        c=ep.c,
        zero_point=ep.zero_point,
        lo=ep.lo,
        hi=ep.hi,
        out_signed=ep.out_signed,
        residual=np.asarray(residual) & 0xFF if form.res_shift is not None else None,
        res_shift=form.res_shift or 0,
    )
    codes = codes.astype(np.int64)
    return np.where(codes >= 128, codes - 256, codes) if ep.out_signed else codes


def qlinear_reference(x: np.ndarray, attrs: dict, form: GemmForm, residual=None) -> np.ndarray:
    """A qlinear op on the host, exactly as the accelerator computes it."""
    rows, how = gemm_rows(x, attrs)
    if form.mx:
        codes, scales = mx_rows(rows, form.x_format)
        return fold_rows(gemm_reference(codes, form, x_scales=scales), how)
    res = residual_rows(residual, how, form.res_codes_shift) if residual is not None else None
    return fold_rows(gemm_reference(rows + form.x_shift, form, res), how)
