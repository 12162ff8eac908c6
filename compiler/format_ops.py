"""Quantize and dequantize for number formats ONNX has no element type for (posits, integers
narrower than 8 bits, FP6 and FP4, MX block formats), as functions of the model's own
``qaccel`` domain, so onnxruntime runs them and the frontend reads them as the quantization
they stand for.

- ``qaccel.Quantize_<format>(x, scale) -> codes`` (uint8; int8 values for the narrow
  integers): x / scale in float32, rounded as ``qaccel.formats`` encodes it (the format's
  own rounding, saturating). The body counts the
  rounding boundaries below the value: a boundary is the largest float32 that still rounds
  down, found from the encoder itself, so the two agree on every float32.
- ``qaccel.Dequantize_<format>(codes, scale) -> x``: the code's value times the scale.

Per-tensor scales only; no zero point (the code of 0 is 0).

- ``qaccel.MXQuantize_<mx format>(x) -> x'``: x rounded to the MX format along its last axis
  (a multiple of the block; ``MXQuantizeChannels_``: along axis 1 of N x C x H x W): each
  block's shared exponent floor(log2(amax)) - emax (the floor counted against a table of
  powers of two, exact), its elements rounded as above, then the values. The frontend reads
  it as the activation quantization of the GEMM that reads x';
  ``qaccel.formats.MXFormat.quantize`` is the reference.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "DOMAIN",
    "FUNCTION_FORMATS",
    "NARROW_INTS",
    "POSITS",
    "SMALL_FLOATS",
    "dequantize_function",
    "format_of",
    "mx_format_of",
    "mx_quantize_function",
    "quantize_function",
]

DOMAIN = "qaccel"
# 8-bit posits: one zero, one NaR, every other code a value
POSITS = ("posit8_0", "posit8_1", "posit8_2")
# integers narrower than ONNX's int8 (the array's W4A4 and friends): their codes are their
# values, held in int8 containers
NARROW_INTS = ("int7", "int6", "int5", "int4", "int3", "int2")
# OCP's FP6 and FP4 (no infinities, no NaN; -0 reads as 0)
SMALL_FLOATS = ("fp6_e2m3", "fp6_e3m2", "fp4_e2m1")
FUNCTION_FORMATS = POSITS + NARROW_INTS + SMALL_FLOATS


def format_of(op_type: str) -> tuple[str, str] | None:
    """("QuantizeLinear" or "DequantizeLinear", format) for one of this domain's ops."""
    kind, _, fmt = op_type.partition("_")
    if fmt in FUNCTION_FORMATS and kind in ("Quantize", "Dequantize"):
        return f"{kind}Linear", fmt
    return None


def mx_format_of(op_type: str) -> tuple[str, int] | None:
    """(MX format, axis) of one of this domain's ``MXQuantize_<format>`` (the last axis) or
    ``MXQuantizeChannels_<format>`` (axis 1 of an N x C x H x W tensor) ops."""
    from qaccel import formats

    kind, _, fmt = op_type.partition("_")
    axis = {"MXQuantize": -1, "MXQuantizeChannels": 1}.get(kind)
    return (fmt, axis) if axis is not None and fmt in formats.MX_FORMATS else None


def _order_key(x) -> np.ndarray:
    """float32 values -> integers in the same order (so bisection walks every float32)."""
    b = np.asarray(x, np.float32).view(np.int32).astype(np.int64)
    return np.where(b < 0, -(b & 0x7FFFFFFF), b)


def _from_key(k) -> np.ndarray:
    k = np.asarray(k, np.int64)
    return np.where(k < 0, (-k) | 0x80000000, k).astype(np.uint32).view(np.float32)


@functools.cache
def rounding_table(fmt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boundaries, codes, values): the format's finite values in increasing order with their
    codes, and between neighbours the largest float32 that rounds to the lower one. ``fmt``:
    a format name or a ``qaccel.formats.NumberFormat``."""
    from qaccel import formats

    f = formats.get_format(fmt) if isinstance(fmt, str) else fmt
    codes = f.finite_codes()
    values = f.decode(codes)
    order = np.argsort(values, kind="stable")
    codes, values = codes[order], values[order].astype(np.float32)
    keep = np.concatenate([[True], np.diff(values) > 0])  # one zero: -0.0 reads as 0
    codes, values = codes[keep], values[keep]
    lo, hi = _order_key(values[:-1]), _order_key(values[1:])
    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        down = f.decode(f.encode(_from_key(mid).astype(np.float64))) == values[:-1]
        lo, hi = np.where(down, mid, lo), np.where(down, hi, mid)
    return _from_key(lo), codes.astype(np.uint8), values


def _const(name: str, value: np.ndarray):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


def quantize_function(fmt: str, opset: int) -> onnx.FunctionProto:
    bounds, codes, values = rounding_table(fmt)
    if fmt in NARROW_INTS:
        codes = values.astype(np.int8)
    nodes = [
        _const("bounds", bounds),
        _const("codes", codes),
        _const("last", np.array([-1], np.int64)),
        helper.make_node("Div", ["x", "scale"], ["v"]),
        helper.make_node("Unsqueeze", ["v", "last"], ["column"]),
        helper.make_node("Greater", ["column", "bounds"], ["above"]),
        helper.make_node("Cast", ["above"], ["ones"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["ones", "last"], ["index"], keepdims=0),
        helper.make_node("Gather", ["codes", "index"], ["y"]),
    ]
    return helper.make_function(
        DOMAIN, f"Quantize_{fmt}", ["x", "scale"], ["y"], nodes, [helper.make_opsetid("", opset)]
    )


def dequantize_function(fmt: str, opset: int) -> onnx.FunctionProto:
    from qaccel import formats

    f = formats.get_format(fmt)
    values = f.decode(np.arange(1 << f.bits)).astype(np.float32)  # NaR: NaN
    if fmt in NARROW_INTS:  # the codes are the values
        nodes = [
            helper.make_node("Cast", ["x"], ["v"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["v", "scale"], ["y"]),
        ]
    else:
        nodes = [
            _const("values", values),
            helper.make_node("Cast", ["x"], ["index"], to=TensorProto.INT64),
            helper.make_node("Gather", ["values", "index"], ["v"]),
            helper.make_node("Mul", ["v", "scale"], ["y"]),
        ]
    return helper.make_function(
        DOMAIN, f"Dequantize_{fmt}", ["x", "scale"], ["y"], nodes, [helper.make_opsetid("", opset)]
    )


def mx_quantize_function(mx: str, opset: int, *, channels: bool = False) -> onnx.FunctionProto:
    """``MXQuantize_<mx>``, or with ``channels`` ``MXQuantizeChannels_<mx>``: the blocks
    along the channels of an N x C x H x W tensor (a convolution's input)."""
    from qaccel import formats

    f = formats.get_mx_format(mx)
    bounds, _, values = rounding_table(f.element)
    # 2**j for j = -127..127: the floor of log2(amax) is how many of them amax reaches, - 128
    powers = np.ldexp(np.float32(1), np.arange(-127, 128)).astype(np.float32)
    nodes = [
        _const("block_shape", np.array([-1, f.block], np.int64)),
        _const("last", np.array([-1], np.int64)),
        _const("powers", powers),
        _const("bounds", bounds),
        _const("values", values),
        _const("offset", np.array(128 + f.element_emax, np.int64)),
        _const("lowest", np.array(-127, np.int64)),
        _const("highest", np.array(127, np.int64)),
        _const("bias", np.array(127, np.int64)),
        helper.make_node("Shape", ["xl"], ["shape"]),
        helper.make_node("Reshape", ["xl", "block_shape"], ["blocks"]),
        helper.make_node("Abs", ["blocks"], ["magnitudes"]),
        helper.make_node("ReduceMax", ["magnitudes", "last"], ["amax"], keepdims=1),
        helper.make_node("GreaterOrEqual", ["amax", "powers"], ["reached"]),
        helper.make_node("Cast", ["reached"], ["reached_ones"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["reached_ones", "last"], ["count"], keepdims=1),
        helper.make_node("Sub", ["count", "offset"], ["unclipped"]),
        helper.make_node("Clip", ["unclipped", "lowest", "highest"], ["shared"]),
        helper.make_node("Add", ["shared", "bias"], ["index"]),
        helper.make_node("Gather", ["powers", "index"], ["scale"]),
        helper.make_node("Div", ["blocks", "scale"], ["scaled"]),
        helper.make_node("Unsqueeze", ["scaled", "last"], ["column"]),
        helper.make_node("Greater", ["column", "bounds"], ["above"]),
        helper.make_node("Cast", ["above"], ["above_ones"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["above_ones", "last"], ["element"], keepdims=0),
        helper.make_node("Gather", ["values", "element"], ["rounded"]),
        helper.make_node("Mul", ["rounded", "scale"], ["dequantized"]),
        helper.make_node("Reshape", ["dequantized", "shape"], ["yl"]),
    ]
    if channels:  # channels last for the blocks, and back
        nodes.insert(0, helper.make_node("Transpose", ["x"], ["xl"], perm=[0, 2, 3, 1]))
        nodes.append(helper.make_node("Transpose", ["yl"], ["y"], perm=[0, 3, 1, 2]))
    else:
        nodes.insert(0, helper.make_node("Identity", ["x"], ["xl"]))
        nodes.append(helper.make_node("Identity", ["yl"], ["y"]))
    name = f"MXQuantize{'Channels' if channels else ''}_{mx}"
    return helper.make_function(DOMAIN, name, ["x"], ["y"], nodes, [helper.make_opsetid("", opset)])
