"""The ops the host runs (numpy), with ONNX semantics: everything the accelerator does not,
and the glue around what it does (im2col, layouts). ``HOST_OPS`` maps an op type to a
function ``(inputs, attrs) -> outputs``; ``QLINEAR_OPS`` are onnxruntime's quantized
elementwise and pooling ops (com.microsoft), run as dequantize -> float op -> quantize.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import helper

from compiler.quant import conv_out_size

__all__ = ["HOST_OPS", "QLINEAR_OPS"]

F32 = np.float32


def _axis(axis: int, ndim: int) -> int:
    return axis + ndim if axis < 0 else axis


def _pool_windows(x, kernel, strides, pads, pad_value, dilations=None):
    """(N, C, OH, OW, KH*KW) windows of a 2-D pool."""
    n, c, h, w = x.shape
    kh, kw = kernel
    sh, sw = strides
    dh, dw = dilations or (1, 1)
    pt, pl, pb, pr = pads
    oh, ow = conv_out_size(h, kh, sh, pt, pb, dh), conv_out_size(w, kw, sw, pl, pr, dw)
    padded = np.full((n, c, h + pt + pb, w + pl + pr), pad_value, dtype=x.dtype)
    padded[:, :, pt : pt + h, pl : pl + w] = x
    out = np.empty((n, c, oh, ow, kh * kw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            out[..., i * kw + j] = padded[
                :,
                :,
                i * dh : i * dh + sh * (oh - 1) + 1 : sh,
                j * dw : j * dw + sw * (ow - 1) + 1 : sw,
            ]
    return out


def _pool_attrs(a: dict, x) -> tuple:
    kernel = a["kernel_shape"]
    if len(kernel) != 2 or x.ndim != 4:
        raise ValueError("only 2-D pooling is supported")
    if a.get("ceil_mode", 0):
        raise ValueError("ceil_mode is not supported")
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        raise ValueError("auto_pad is not supported; give explicit pads")
    return kernel, a.get("strides", [1, 1]), a.get("pads", [0, 0, 0, 0]), a.get("dilations")


def max_pool(ins, a):
    x = ins[0]
    kernel, strides, pads, dil = _pool_attrs(a, x)
    low = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min  # integer codes too
    return [_pool_windows(x, kernel, strides, pads, low, dil).max(axis=-1).astype(x.dtype)]


def average_pool(ins, a):
    x = ins[0].astype(F32)
    kernel, strides, pads, _ = _pool_attrs(a, x)
    win = _pool_windows(x, kernel, strides, pads, 0.0)
    if a.get("count_include_pad", 0) or not any(pads):
        return [win.mean(axis=-1, dtype=F32).astype(F32)]
    ones = _pool_windows(np.ones_like(x), kernel, strides, pads, 0.0)
    return [(win.sum(axis=-1, dtype=F32) / ones.sum(axis=-1)).astype(F32)]


def conv(ins, a):
    """Float Conv (for layers left unquantized), through the same im2col as the accelerator."""
    from compiler.quant import im2col

    x, w = ins[0].astype(np.float64), ins[1].astype(np.float64)
    oc, cg, kh, kw = w.shape
    group = a.get("group", 1)
    attrs = {
        "kernel": (kh, kw),
        "strides": tuple(a.get("strides", [1, 1])),
        "dilations": tuple(a.get("dilations", [1, 1])),
        "pads": tuple(a.get("pads", [0, 0, 0, 0])),
    }
    n, _c, h, wd = x.shape
    outs = []
    og = oc // group
    for gi in range(group):
        xs = x[:, gi * cg : (gi + 1) * cg]
        cols = im2col(xs, attrs, 0.0)
        outs.append(cols @ w[gi * og : (gi + 1) * og].reshape(og, -1).T)
    y = np.concatenate(outs, axis=1)
    if len(ins) > 2 and ins[2] is not None:
        y = y + ins[2]
    pt, pl, pb, pr = attrs["pads"]
    oh = conv_out_size(h, kh, attrs["strides"][0], pt, pb, attrs["dilations"][0])
    ow = conv_out_size(wd, kw, attrs["strides"][1], pl, pr, attrs["dilations"][1])
    return [y.reshape(n, oh, ow, oc).transpose(0, 3, 1, 2).astype(F32)]


def gemm(ins, a):
    x, w = ins[0], ins[1]
    if a.get("transA", 0):
        x = x.T
    if a.get("transB", 0):
        w = w.T
    y = a.get("alpha", 1.0) * (x.astype(F32) @ w.astype(F32))
    if len(ins) > 2 and ins[2] is not None:
        y = y + a.get("beta", 1.0) * ins[2]
    return [y.astype(F32)]


def softmax(ins, a):
    x = ins[0].astype(F32)
    ax = a.get("axis", -1)
    e = np.exp(x - x.max(axis=ax, keepdims=True))
    return [(e / e.sum(axis=ax, keepdims=True)).astype(F32)]


def layer_norm(ins, a):
    x = ins[0].astype(F32)
    ax = _axis(a.get("axis", -1), x.ndim)
    axes = tuple(range(ax, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + F32(a.get("epsilon", 1e-5)))
    y = y * ins[1]
    if len(ins) > 2 and ins[2] is not None:
        y = y + ins[2]
    return [y.astype(F32)]


def batch_norm(ins, a):
    x, scale, bias, mean, var = ins[:5]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = scale / np.sqrt(var + a.get("epsilon", 1e-5))
    return [((x - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)).astype(F32)]


def reshape(ins, a):
    x, shape = ins[0], [int(s) for s in ins[1]]
    shape = [x.shape[i] if s == 0 and not a.get("allowzero", 0) else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


def flatten(ins, a):
    x = ins[0]
    ax = _axis(a.get("axis", 1), x.ndim)
    return [x.reshape(math.prod(x.shape[:ax]), -1)]


def concat(ins, a):
    return [np.concatenate(ins, axis=a["axis"])]


def squeeze(ins, a):
    axes = ins[1] if len(ins) > 1 else a.get("axes")
    return [np.squeeze(ins[0], axis=None if axes is None else tuple(int(i) for i in axes))]


def unsqueeze(ins, a):
    axes = ins[1] if len(ins) > 1 else a["axes"]
    x = ins[0]
    for ax in sorted(_axis(int(i), x.ndim + len(axes)) for i in axes):
        x = np.expand_dims(x, ax)
    return [x]


def clip(ins, a):
    lo = ins[1] if len(ins) > 1 and ins[1] is not None else a.get("min", -np.inf)
    hi = ins[2] if len(ins) > 2 and ins[2] is not None else a.get("max", np.inf)
    return [np.clip(ins[0], lo, hi).astype(ins[0].dtype)]


def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _unary(fn):
    return lambda ins, a: [np.asarray(fn(ins[0].astype(F32))).astype(F32)]


def _binary(fn):
    return lambda ins, a: [np.asarray(fn(ins[0], ins[1])).astype(np.result_type(ins[0], ins[1]))]


def _reduce(fn):
    def run(ins, a):
        axes = ins[1] if len(ins) > 1 else a.get("axes")
        axes = None if axes is None else tuple(int(i) for i in np.atleast_1d(axes))
        return [fn(ins[0], axis=axes, keepdims=bool(a.get("keepdims", 1))).astype(ins[0].dtype)]

    return run


def gather(ins, a):
    return [np.take(ins[0], np.asarray(ins[1]).astype(np.int64), axis=a.get("axis", 0))]


def slice_(ins, a):
    x = ins[0]
    starts, ends = (np.asarray(v, dtype=np.int64) for v in ins[1:3])
    axes = np.asarray(ins[3], dtype=np.int64) if len(ins) > 3 and ins[3] is not None else None
    steps = np.asarray(ins[4], dtype=np.int64) if len(ins) > 4 and ins[4] is not None else None
    axes = range(len(starts)) if axes is None else axes
    index = [slice(None)] * x.ndim
    for i, ax in enumerate(axes):
        step = 1 if steps is None else int(steps[i])
        index[_axis(int(ax), x.ndim)] = slice(int(starts[i]), int(ends[i]), step)
    return [x[tuple(index)]]


def pad(ins, a):
    x, pads = ins[0], np.asarray(ins[1], dtype=np.int64)
    if a.get("mode", "constant") != "constant":
        raise ValueError(f"Pad mode {a.get('mode')!r} is not supported")
    value = ins[2] if len(ins) > 2 and ins[2] is not None else 0
    half = len(pads) // 2
    return [np.pad(x, list(zip(pads[:half], pads[half:], strict=True)), constant_values=value)]


def split(ins, a):
    x, ax = ins[0], a.get("axis", 0)
    sizes = ins[1] if len(ins) > 1 and ins[1] is not None else a.get("split")
    if sizes is None:
        n = a.get("num_outputs")
        if n is None:
            raise ValueError("Split needs split sizes or num_outputs")
        return list(np.array_split(x, n, axis=ax))
    return list(np.split(x, np.cumsum(np.asarray(sizes))[:-1], axis=ax))


HOST_OPS = {
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _binary(np.divide),
    "Pow": _binary(np.power),
    "MatMul": lambda ins, a: [(ins[0].astype(F32) @ ins[1].astype(F32)).astype(F32)],
    "Gemm": gemm,
    "Conv": conv,
    "Relu": lambda ins, a: [np.maximum(ins[0], 0).astype(ins[0].dtype)],
    "LeakyRelu": lambda ins, a: [
        np.where(ins[0] >= 0, ins[0], ins[0] * F32(a.get("alpha", 0.01))).astype(F32)
    ],
    "Clip": clip,
    "Sigmoid": _unary(lambda x: 1 / (1 + np.exp(-x))),
    "Tanh": _unary(np.tanh),
    "Exp": _unary(np.exp),
    "Sqrt": _unary(np.sqrt),
    "Erf": _unary(_erf),
    "Neg": lambda ins, a: [-ins[0]],
    "Cast": lambda ins, a: [np.asarray(ins[0]).astype(helper.tensor_dtype_to_np_dtype(a["to"]))],
    "Identity": lambda ins, a: [ins[0]],
    "Softmax": softmax,
    "LayerNormalization": layer_norm,
    "BatchNormalization": batch_norm,
    "MaxPool": max_pool,
    "AveragePool": average_pool,
    "GlobalAveragePool": lambda ins, a: [ins[0].astype(F32).mean(axis=(2, 3), keepdims=True)],
    "GlobalMaxPool": lambda ins, a: [ins[0].max(axis=(2, 3), keepdims=True)],
    "ReduceMean": _reduce(np.mean),
    "ReduceSum": _reduce(np.sum),
    "ReduceMax": _reduce(np.max),
    "Reshape": reshape,
    "Flatten": flatten,
    "Transpose": lambda ins, a: [np.transpose(ins[0], a.get("perm"))],
    "Concat": concat,
    "Gather": gather,
    "Slice": slice_,
    "Pad": pad,
    "Split": split,
    "Expand": lambda ins, a: [ins[0] * np.ones(np.asarray(ins[1], dtype=np.int64), ins[0].dtype)],
    "ConstantOfShape": lambda ins, a: [
        np.full(np.asarray(ins[0], dtype=np.int64), a.get("value", np.zeros(1, F32)).reshape(-1)[0])
    ],
    "Shape": lambda ins, a: [np.array(np.shape(ins[0]), dtype=np.int64)],
    "Min": lambda ins, a: [np.minimum.reduce(ins)],
    "Max": lambda ins, a: [np.maximum.reduce(ins)],
    "Abs": lambda ins, a: [np.abs(ins[0])],
    "Floor": lambda ins, a: [np.floor(ins[0])],
    "Ceil": lambda ins, a: [np.ceil(ins[0])],
    "Reciprocal": _unary(lambda x: 1 / x),
    "Log": _unary(np.log),
    "HardSigmoid": lambda ins, a: [
        np.clip(F32(a.get("alpha", 0.2)) * ins[0] + F32(a.get("beta", 0.5)), 0, 1).astype(F32)
    ],
    "HardSwish": _unary(lambda x: x * np.clip(x / 6 + 0.5, 0, 1)),
    "Gelu": _unary(lambda x: 0.5 * x * (1 + _erf(x / np.sqrt(2)))),
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
}

# onnxruntime's QOperator ops that are not GEMMs -> the float op they quantize; their inputs
# are (x, x_scale, x_zp) triples, then (y_scale, y_zp) (QLinearConcat: y first)
QLINEAR_OPS = {
    "QLinearAdd": "Add",
    "QLinearMul": "Mul",
    "QLinearSigmoid": "Sigmoid",
    "QLinearLeakyRelu": "LeakyRelu",
    "QLinearSoftmax": "Softmax",
    "QLinearGlobalAveragePool": "GlobalAveragePool",
    "QLinearAveragePool": "AveragePool",
    "QLinearConcat": "Concat",
}
