"""Random small networks through the compiler (hypothesis): convolutions of every shape the
lowering takes (kernel, stride, padding, groups), dense layers, pooling, residual adds and
host-only ops, quantized by onnxruntime (QDQ or QOperator, int8 or uint8, per tensor or per
channel) or by the compiler's PTQ with random per-layer precisions (float8, posit, int4 and
MX included), compiled for a random preset or an odd configuration. Each one compiles and
the simulator matches the integer reference bit for bit and, op by op on the same inputs,
onnxruntime within 1 LSB, or it fails with a CompileError; nothing else may happen.

``make test`` runs 100 graphs; ``make test-all`` adds 4 x 250.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from compiler import zoo
from compiler.graph import CompileError
from compiler.network import compile_model
from compiler.ptq import quantize_model
from qaccel import config

logging.getLogger("root").setLevel(logging.ERROR)

_MEMORY = {"scratchpad_kib": 4, "scratchpad_banks": 2, "accumulator_kib": 2, "accumulator_banks": 2}
CONFIGS = [config.load_config(f"configs/{n}.toml") for n in ("tiny", "edge", "lut")] + [
    config.config_from_dict(  # an odd array, one dataflow, uint8 activations only
        {
            "name": "odd53",
            "array": {
                "rows": 5,
                "cols": 3,
                "dataflow": "os",
                "modes": [
                    {"weight": "int8", "activation": "uint8"},
                    {"weight": "int4", "activation": "uint8"},
                ],
            },
            "memory": _MEMORY,
            "dram": {"bytes_per_cycle": 8, "latency_cycles": 5},
        }
    ),
    config.config_from_dict(  # MX modes beside int8
        {
            "name": "mx33",
            "array": {
                "rows": 3,
                "cols": 3,
                "dataflow": "os",
                "max_k": 64,
                "modes": [
                    {"weight": "int8", "activation": "int8"},
                    {"weight": "mxfp8_e4m3", "activation": "mxfp8_e4m3"},
                    {"weight": "mxint8", "activation": "mxint8"},
                ],
            },
            "memory": _MEMORY,
            "dram": {"bytes_per_cycle": 8, "latency_cycles": 5},
        }
    ),
    config.config_from_dict(  # a LUT core alone
        {
            "name": "lut_alone",
            "lut": {"group": 4, "tile_m": 2, "tile_n": 8, "weight_bits": [1, 2, 3, 4]},
            "memory": _MEMORY,
            "dram": {"bytes_per_cycle": 8, "latency_cycles": 5},
        }
    ),
]


class _Net:
    def __init__(self, rng):
        self.rng, self.nodes, self.inits, self.n = rng, [], [], 0

    def name(self, base):
        self.n += 1
        return f"{base}{self.n}"

    def const(self, value, dtype=np.float32):
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(self, op, inputs, **attrs):
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


@st.composite
def networks(draw):
    """(float model, input shape)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    net = _Net(rng)
    batch = draw(st.integers(1, 3))
    if draw(st.booleans()):  # an image
        c, h, w = draw(st.integers(1, 4)), draw(st.integers(3, 9)), draw(st.integers(3, 9))
        shape, x = [batch, c, h, w], "x"
        for _ in range(draw(st.integers(1, 3))):
            kind = draw(st.sampled_from(["conv", "conv", "depthwise", "pool", "residual", "relu"]))
            if kind in ("conv", "depthwise", "residual"):
                k = draw(st.integers(1, min(3, h, w)))
                if kind == "residual":  # same-size output: an odd kernel, half of it padded
                    k = 1 if k < 3 else 3
                stride = 1 if kind == "residual" else draw(st.integers(1, 2))
                pad = (k - 1) // 2 if kind == "residual" else draw(st.integers(0, k - 1))
                group = c if kind == "depthwise" else 1
                cout = c if kind in ("residual", "depthwise") else draw(st.integers(1, 8))
                wt = rng.normal(0, 1 / np.sqrt(k * k * c / group), (cout, c // group, k, k))
                y = net.node(
                    "Conv",
                    [x, net.const(wt), net.const(rng.normal(0, 0.1, cout))],
                    kernel_shape=[k, k],
                    strides=[stride, stride],
                    pads=[pad] * 4,
                    group=group,
                )
                if kind == "residual":  # as ResNet: the ReLU, if any, after the add
                    y = net.node("Add", [x, y])
                x = net.node("Relu", [y]) if draw(st.booleans()) else y
                h, w = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
                c = cout
            elif kind == "pool" and min(h, w) >= 2:
                op = draw(st.sampled_from(["MaxPool", "AveragePool"]))
                x = net.node(op, [x], kernel_shape=[2, 2], strides=[2, 2])
                h, w = h // 2, w // 2
            else:
                x = net.node("Relu", [x])
        if draw(st.booleans()):
            x = net.node("GlobalAveragePool", [x])
            h = w = 1
        x = net.node("Flatten", [x], axis=1)
        k = c * h * w
    else:
        k = draw(st.one_of(st.integers(1, 40), st.sampled_from([32, 64])))  # MX: whole blocks
        shape, x = [batch, k], "x"
    for _ in range(draw(st.integers(1, 2))):  # dense layers
        n = draw(st.one_of(st.integers(1, 24), st.just(32)))
        wt = rng.normal(0, 1 / np.sqrt(k), (k, n))
        if draw(st.booleans()):
            x = net.node("Gemm", [x, net.const(wt.T), net.const(rng.normal(0, 0.1, n))], transB=1)
        else:
            x = net.node(
                "Add", [net.node("MatMul", [x, net.const(wt)]), net.const(rng.normal(0, 0.1, n))]
            )
        if draw(st.booleans()):  # (onnxruntime's QLinearSoftmax of one value is not 1)
            x = net.node(draw(st.sampled_from(["Relu", "Sigmoid", "Softmax"][: 2 + (n > 1)])), [x])
        k = n
    graph = helper.make_graph(
        net.nodes,
        "fuzz",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, k])],
        net.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    return model, shape


@st.composite
def cases(draw):
    model, shape = draw(networks())
    cfg = draw(st.sampled_from(CONFIGS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    calib = [rng.normal(size=shape).astype(np.float32) for _ in range(2)]
    if draw(st.booleans()):
        quantized = zoo.quantize(
            model,
            calib,
            fmt=draw(st.sampled_from(["qdq", "qoperator"])),
            activation=draw(st.sampled_from(["int8", "uint8"])),
            per_channel=draw(st.booleans()),
        )
    else:
        fmts = ["int8", "int4", "int2", "ternary", "binary", "int3", "fp4_e2m1", "fp8_e4m3"]
        pairs = [f"{w}*int8" for w in fmts] + [
            "fp8_e4m3*fp8_e4m3",
            "fp8_e5m2*fp8_e5m2",
            "fp4_e2m1*fp8_e4m3",
            "posit8_0*posit8_0",
            "int4*int4",
            "mxfp8_e4m3*mxfp8_e4m3",  # MatMul / Gemm with K a multiple of 32; else refused
            "mxint8*mxint8",
            "int8*fp8_e4m3",  # no unit has it: the host
        ]
        conv_pairs = [p for p in pairs if not p.startswith("mx")]  # channels rarely whole blocks
        if cfg.name == "mx33":  # the MX modes, often
            pairs += ["mxfp8_e4m3*mxfp8_e4m3", "mxint8*mxint8"] * 4
        spec = ",".join(
            f"{op}*={draw(st.sampled_from(conv_pairs if op == 'conv' else pairs))}"
            for op in ("conv", "matmul", "gemm")
        )
        try:
            quantized = quantize_model(model, calib, precision=spec)
        except CompileError:  # a clean refusal by the quantizer
            quantized = None
    x = rng.normal(size=shape).astype(np.float32)
    return quantized, shape, x, cfg


def check(case) -> None:
    quantized, shape, x, cfg = case
    if quantized is None:
        return
    try:
        cm = compile_model(quantized, cfg, batch=shape[0])
    except CompileError:
        return  # a clean refusal, naming what and why
    sim = cm.run({"x": x})
    ref = cm.run({"x": x}, programs="reference")
    # Layer by layer: every tensor the ONNX model names, computed by onnxruntime (graph
    # optimizations off: the model's definition), and each op fed onnxruntime's values of its
    # inputs, so a 1-LSB difference is not compounded by the layers after it.
    want = _onnxruntime_tensors(quantized, x)
    name = cm.graph.graph["outputs"][0]

    def compare(op, ins, outs):
        node = cm.graph.nodes[op]
        forced = []
        for t, got in zip(node["outputs"], outs, strict=False):
            if t not in want:
                forced.append(got)
                continue
            ref_value = want[t]
            if ref_value.dtype.kind in "iu":  # codes: within one
                assert np.abs(np.asarray(got, np.int64) - ref_value).max(initial=0) <= 1, t
                forced.append(ref_value.astype(np.int64))
            else:
                np.testing.assert_allclose(got, ref_value, rtol=1e-4, atol=1e-5, err_msg=t)
                forced.append(ref_value)
        return forced

    cm.run({"x": x}, hook=compare)
    assert np.array_equal(sim[name], ref[name])


def _onnxruntime_tensors(model, x) -> dict:
    """Every node output of ``model`` on ``x``, by onnxruntime without graph optimizations."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    known = {o.name for o in probe.graph.output}
    float8 = {TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2}
    zps = {i.name for i in probe.graph.initializer if i.data_type in float8}
    for node in probe.graph.node:
        if node.op_type == "QuantizeLinear" and set(node.input[2:]) & zps:
            continue  # onnxruntime cannot hand float8 E5M2 to numpy; the DequantizeLinear can
        for t in node.output:
            if t and t not in known:
                probe.graph.output.append(helper.make_empty_tensor_value_info(t))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"x": x}), strict=True))


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(cases())
def test_random_networks(case):
    check(case)


@pytest.mark.slow
@pytest.mark.parametrize("shard", range(4))
def test_random_networks_thousand(shard):
    """4 shards x 250 graphs (``make test-all``)."""

    @settings(
        max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(cases())
    def run(case):
        check(case)

    run()
