"""Small float ONNX models with random weights, and onnxruntime's static quantization of them:
the networks the tests, the demo and the benchmarks compile. Built with ``onnx.helper`` so that
nothing is downloaded.

Every builder returns a float ``onnx.ModelProto`` (IR version 10, opset 17: what onnxruntime
reads) with one input ``x``; ``quantize`` turns it into a QDQ or QOperator model calibrated on
the arrays it is given.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["cnn", "mlp", "qonnx_mlp", "quantize", "resnet18", "transformer_block"]

OPSET = 17
IR_VERSION = 10  # onnxruntime 1.31 reads IR versions up to 13; onnx 1.23 writes 14


class _Builder:
    """Nodes and initializers with unique names, and He-initialized random weights."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def const(self, base: str, value) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], base: str | None = None, **attrs) -> str:
        out = self.name(base or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x, cin, cout, k, *, stride=1, pad=0, group=1, relu=True, base="conv"):
        fan_in = cin // group * k * k
        w = self.rng.normal(0, np.sqrt(2 / fan_in), (cout, cin // group, k, k))
        b = self.rng.normal(0, 0.1, cout)
        y = self.node(
            "Conv",
            [x, self.const(f"{base}_w", w), self.const(f"{base}_b", b)],
            base,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad] * 4,
            group=group,
        )
        return self.node("Relu", [y]) if relu else y

    def dense(self, x, k, n, *, relu=True, base="fc"):
        w = self.rng.normal(0, np.sqrt(2 / k), (k, n))
        y = self.node("MatMul", [x, self.const(f"{base}_w", w)], f"{base}_mm")
        y = self.node("Add", [y, self.const(f"{base}_b", self.rng.normal(0, 0.1, n))], base)
        return self.node("Relu", [y]) if relu else y

    def model(self, x_shape, out: str, out_shape, name: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)],
            self.inits,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
        )
        onnx.checker.check_model(model)
        return model


def mlp(sizes=(64, 32, 10), *, batch: int | str = "N", seed: int = 0) -> onnx.ModelProto:
    """Dense layers (MatMul + Add + Relu; the last without Relu)."""
    b = _Builder(seed)
    x = "x"
    for i, (k, n) in enumerate(itertools.pairwise(sizes)):
        x = b.dense(x, k, n, relu=i < len(sizes) - 2)
    return b.model([batch, sizes[0]], x, [batch, sizes[-1]], "mlp")


def cnn(
    *, channels: int = 1, size: int = 8, classes: int = 10, batch: int | str = "N", seed: int = 0
) -> onnx.ModelProto:
    """A small CNN with padding, stride, a depthwise conv, a residual add and pooling: conv3x3
    -> depthwise 3x3 -> pointwise, added back -> max pool -> strided conv -> global average
    pool -> flatten -> dense."""
    b = _Builder(seed)
    c = 8
    x = b.conv("x", channels, c, 3, pad=1)
    y = b.conv(x, c, c, 3, pad=1, group=c, base="dw")
    y = b.conv(y, c, c, 1, relu=False, base="pw")
    x = b.node("Relu", [b.node("Add", [x, y], "res")])
    x = b.node("MaxPool", [x], "pool", kernel_shape=[2, 2], strides=[2, 2])
    x = b.conv(x, c, 2 * c, 3, stride=2, pad=1)
    x = b.node("GlobalAveragePool", [x], "gap")
    x = b.node("Flatten", [x], "flat", axis=1)
    x = b.dense(x, 2 * c, classes, relu=False)
    return b.model([batch, channels, size, size], x, [batch, classes], "cnn")


def transformer_block(
    *, seq: int = 8, dim: int = 32, heads: int = 2, batch: int | str = "N", seed: int = 0
) -> onnx.ModelProto:
    """One pre-norm encoder block: LayerNorm -> Q, K, V projections -> per-head softmax
    attention -> output projection + residual -> LayerNorm -> MLP (4x, ReLU) + residual."""
    b = _Builder(seed)
    hd = dim // heads

    def norm(x):
        scale = b.const("ln_g", 1 + b.rng.normal(0, 0.1, dim))
        return b.node("LayerNormalization", [x, scale, b.const("ln_b", np.zeros(dim))], axis=-1)

    def split_heads(x):  # (N, S, D) -> (N, H, S, hd)
        shape = b.name("shape")
        b.inits.append(numpy_helper.from_array(np.array([0, seq, heads, hd], np.int64), shape))
        x = b.node("Reshape", [x, shape])
        return b.node("Transpose", [x], perm=[0, 2, 1, 3])

    h = norm("x")
    q, k, v = (split_heads(b.dense(h, dim, dim, relu=False, base=n)) for n in "qkv")
    kt = b.node("Transpose", [k], perm=[0, 1, 3, 2])
    scores = b.node("MatMul", [q, kt], "scores")
    scores = b.node("Mul", [scores, b.const("inv_sqrt", 1 / np.sqrt(hd))])
    att = b.node("MatMul", [b.node("Softmax", [scores], axis=-1), v], "att")
    att = b.node("Transpose", [att], perm=[0, 2, 1, 3])
    b.inits.append(numpy_helper.from_array(np.array([0, seq, dim], np.int64), "merge_shape"))
    att = b.node("Reshape", [att, "merge_shape"])
    x = b.node("Add", ["x", b.dense(att, dim, dim, relu=False, base="o")], "res1")
    h = b.dense(norm(x), dim, 4 * dim, base="up")
    y = b.node("Add", [x, b.dense(h, 4 * dim, dim, relu=False, base="down")], "res2")
    return b.model([batch, seq, dim], y, [batch, seq, dim], "transformer_block")


def resnet18(
    *, size: int = 224, classes: int = 1000, batch: int | str = 1, seed: int = 0
) -> onnx.ModelProto:
    """ResNet-18 (He et al. 2016) with random weights and BatchNorm folded into the convs."""
    b = _Builder(seed)
    x = b.conv("x", 3, 64, 7, stride=2, pad=3)
    x = b.node("MaxPool", [x], "pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            y = b.conv(x, cin, cout, 3, stride=stride, pad=1)
            y = b.conv(y, cout, cout, 3, pad=1, relu=False)
            if stride != 1 or cin != cout:
                x = b.conv(x, cin, cout, 1, stride=stride, relu=False, base="down")
            x = b.node("Relu", [b.node("Add", [x, y], "res")])
            cin = cout
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x], "gap")], "flat", axis=1)
    w = b.rng.normal(0, np.sqrt(1 / 512), (classes, 512))
    x = b.node(
        "Gemm",
        [x, b.const("fc_w", w), b.const("fc_b", np.zeros(classes))],
        "fc",
        transB=1,
    )
    return b.model([batch, 3, size, size], x, [batch, classes], "resnet18")


class _Reader:
    """onnxruntime's calibration data reader over a list of input arrays."""

    def __init__(self, arrays):
        self.items = iter([{"x": np.asarray(a, dtype=np.float32)} for a in arrays])

    def get_next(self):
        return next(self.items, None)


def quantize(
    model: onnx.ModelProto,
    calibration,
    *,
    fmt: str = "qdq",
    per_channel: bool = False,
    activation: str = "int8",
    weight: str = "int8",
) -> onnx.ModelProto:
    """onnxruntime's ``quantize_static`` of ``model``, calibrated (min/max) on the arrays of
    ``calibration`` (each one input batch): ``fmt`` "qdq" or "qoperator", activations and
    weights "int8" or "uint8"."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    formats = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "quant.onnx"
        onnx.save(model, src)
        quantize_static(
            str(src),
            str(dst),
            _Reader(calibration),
            quant_format=formats[fmt],
            per_channel=per_channel,
            activation_type=types[activation],
            weight_type=types[weight],
        )
        return onnx.load(dst)


def qonnx_mlp(
    sizes=(64, 32, 10), *, weight_bits=(2, 2), batch: int | str = "N", seed: int = 0
) -> onnx.ModelProto:
    """A QONNX MLP as Brevitas exports one: 8-bit signed ``Quant`` on the input and on every
    hidden activation, per-channel ``Quant`` weights of ``weight_bits`` per layer (2 with
    narrow range: ternary; 1: ``BipolarQuant``), MatMul + Add + Relu."""
    b = _Builder(seed)
    domain = "qonnx.custom_op.general"

    def quant(x, scale, bits, *, narrow=0, zp=0.0):
        ins = [x, b.const("s", scale), b.const("z", zp), b.const("bw", float(bits))]
        out = b.name("quant")
        b.nodes.append(
            helper.make_node(
                "Quant",
                ins,
                [out],
                name=out,
                domain=domain,
                signed=1,
                narrow=narrow,
                rounding_mode="ROUND",
            )
        )
        return out

    x = quant("x", 4.0 / 127, 8)
    for i, (k, n) in enumerate(itertools.pairwise(sizes)):
        bits = weight_bits[i]
        w = b.rng.normal(0, np.sqrt(2 / k), (k, n))
        if bits == 1:
            out = b.name("bipolar")
            scale = np.abs(w).mean(axis=0, keepdims=True)
            b.nodes.append(
                helper.make_node(
                    "BipolarQuant",
                    [b.const("w", w), b.const("s", scale)],
                    [out],
                    name=out,
                    domain=domain,
                )
            )
            wq = out
        else:
            narrow = 1 if bits == 2 else 0
            top = (1 << (bits - 1)) - 1 or 1
            scale = np.abs(w).max(axis=0, keepdims=True) / top
            wq = quant(b.const("w", w), scale, bits, narrow=narrow)
        y = b.node("MatMul", [x, wq], f"fc{i}_mm")
        y = b.node("Add", [y, b.const("fc_b", b.rng.normal(0, 0.1, n))], f"fc{i}")
        x = quant(b.node("Relu", [y]) if i < len(sizes) - 2 else y, 8.0 / 127, 8)
    graph = helper.make_graph(
        b.nodes,
        "qonnx_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, sizes[0]])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, sizes[-1]])],
        b.inits,
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(domain, 1)],
        ir_version=IR_VERSION,
    )
