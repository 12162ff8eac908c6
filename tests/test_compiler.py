"""The network compiler end to end: models built with onnx.helper, quantized by onnxruntime
(QDQ and QOperator, int8 and uint8 activations, per tensor and per channel), by QONNX
quantizers, or by the compiler's own post-training quantization; compiled for the presets;
the simulator's outputs bit for bit equal to the compiler's integer reference and within
1 LSB of onnxruntime on the quantized model."""

from __future__ import annotations

import functools
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from compiler import zoo
from compiler.graph import CompileError
from compiler.network import compile_model, load_compiled
from compiler.onnx_frontend import load_onnx
from compiler.qonnx import from_qonnx
from compiler.runtime import execute
from qaccel import config

logging.getLogger("root").setLevel(logging.ERROR)  # onnxruntime's quantizer is chatty

EDGE = config.load_config("configs/edge.toml")
TINY = config.load_config("configs/tiny.toml")
LUT = config.load_config("configs/lut.toml")
CONFIGS = {"edge": EDGE, "tiny": TINY}
SEED = 20261201

MODELS = {
    "mlp": (zoo.mlp, (4, 64)),
    "cnn": (zoo.cnn, (2, 1, 8, 8)),
    "transformer": (zoo.transformer_block, (2, 8, 32)),
}


def _inputs(shape, seed, n=1):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype(np.float32) for _ in range(n)]


@functools.cache
def _quantized(name: str, fmt: str, activation: str, per_channel: bool) -> onnx.ModelProto:
    build, shape = MODELS[name]
    return zoo.quantize(
        build(), _inputs(shape, SEED, 4), fmt=fmt, activation=activation, per_channel=per_channel
    )


def qonnx_reference(model, x, *, every_tensor: bool = False) -> dict:
    """QONNX's executor (``qonnx.core.onnx_exec``) on ``model``: the model outputs, or every
    tensor. It runs standard nodes through onnxruntime in one-node models it builds with
    onnx's IR version (14), which onnxruntime 1.31 does not read, hence the patch."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    fixed = onnx.ModelProto.FromString(model.SerializeToString())
    dim = fixed.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = x.shape[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx, "IR_VERSION", 10)
        wrapped = ModelWrapper(fixed).transform(InferShapes())
        return execute_onnx(wrapped, {"x": x}, return_full_exec_context=every_tensor)


def ort_outputs(model: onnx.ModelProto, x: np.ndarray, *, optimized: bool = False) -> list:
    """onnxruntime on ``model``: as the model defines it (no graph optimizations), or with
    onnxruntime's fused integer kernels."""
    so = ort.SessionOptions()
    if not optimized:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def check_model(cm, model, x, *, optimized_lsb: float | None = None) -> float:
    """Simulator == reference bit for bit; within 1 LSB of onnxruntime on every element.
    Returns the fraction of elements equal to onnxruntime's."""
    sim = cm.run({"x": x})
    ref = cm.run({"x": x}, programs="reference")
    exact = []
    for (name, got), want in zip(sim.items(), ort_outputs(model, x), strict=True):
        assert np.array_equal(got, ref[name]), f"{name}: simulator and reference differ"
        lsb = cm.output_scale(name)
        diff = np.abs(got.astype(np.float64) - want) / lsb
        assert diff.max() <= 1 + 1e-4, f"{name}: {diff.max():.3f} LSB from onnxruntime"
        exact.append(np.mean(diff < 1e-4))
        if optimized_lsb is not None:
            fused = ort_outputs(model, x, optimized=True)[0]
            assert np.abs(got - fused).max() / lsb <= optimized_lsb + 1e-4
    return float(np.mean(exact))


@pytest.mark.parametrize("cfg", ["edge", "tiny"])
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize(
    ("fmt", "activation", "per_channel"),
    [("qdq", "int8", True), ("qdq", "uint8", False), ("qoperator", "uint8", True)],
)
def test_onnxruntime_models(name, cfg, fmt, activation, per_channel):
    model = _quantized(name, fmt, activation, per_channel)
    shape = MODELS[name][1]
    cm = compile_model(model, CONFIGS[cfg], batch=shape[0])
    units = {n["unit"] for n in cm.layers}
    assert units == {"array"}, units  # every GEMM with constant weights on the accelerator
    assert cm.cycles > 0
    # onnxruntime's fused integer kernels (QLinearAdd, QLinearSoftmax, ...) round on their
    # own: on the transformer they land up to a few LSB from the model's QDQ definition,
    # which the compiler follows; on the MLP and the CNN they agree within 1 LSB
    x = _inputs(shape, SEED + 1)[0]
    exact = check_model(cm, model, x, optimized_lsb=4 if name == "transformer" else 1)
    assert exact == 1.0  # measured: every element equal to onnxruntime's


def test_transformer_softmax_and_layernorm_run_on_the_host():
    cm = compile_model(_quantized("transformer", "qdq", "int8", True), TINY, batch=2)
    host = {op for _, op in cm.host_ops()}
    assert {"LayerNormalization", "Softmax", "QLinearMatMul"} <= host
    assert len(cm.layers) == 6  # q, k, v, o, up, down projections


def test_cnn_layers_are_convolutions_with_stride_padding_and_groups():
    cm = compile_model(_quantized("cnn", "qdq", "int8", True), EDGE, batch=2)
    shapes = [(n["attrs"]["m"], n["attrs"]["k"], n["attrs"]["n"]) for n in cm.layers]
    # conv 3x3 pad 1 (2 images of 8x8), depthwise (block diagonal), pointwise, strided, dense
    assert shapes == [(128, 9, 8), (128, 72, 8), (128, 8, 8), (8, 72, 16), (2, 16, 10)]
    assert {op for _, op in cm.host_ops()} >= {"MaxPool", "Add", "GlobalAveragePool"}


@pytest.mark.parametrize("cfg", ["edge", "tiny", "lut"])
@pytest.mark.parametrize("bits", [(2, 2), (2, 8), (1, 4), (3, 2)])
def test_qonnx_low_bit_mlp(cfg, bits):
    """W2 (ternary), binary, int3 and int4 QONNX layers: the LUT core where the configuration
    has one, Bit Fusion array modes otherwise, the host when neither runs the format."""
    model = zoo.qonnx_mlp(weight_bits=bits)
    cfg_ = {"edge": EDGE, "tiny": TINY, "lut": LUT}[cfg]
    cm = compile_model(model, cfg_, batch=4)
    x = _inputs((4, 64), SEED)[0]
    sim = cm.run({"x": x})
    ref = cm.run({"x": x}, programs="reference")
    name = cm.graph.graph["outputs"][0]
    assert np.array_equal(sim[name], ref[name])
    want = qonnx_reference(model, x)[name]
    assert np.abs(sim[name] - want).max() <= 8 / 127 * (1 + 1e-4)  # the output Quant's LSB
    formats = {"ternary" if b == 2 else "binary" if b == 1 else f"int{b}" for b in bits}
    assert {n["attrs"]["w_format"] for n in cm.layers} == formats
    for n in cm.layers:
        fmt = n["attrs"]["w_format"]
        want = "host" if fmt == "int3" and cfg != "lut" else "array"
        want = "lut" if cfg == "lut" and fmt != "int8" else want
        assert n["unit"] == want


@pytest.mark.parametrize("bits", [(4, 2), (1, 3)])
def test_qonnx_conversion_computes_what_qonnx_does(bits):
    """The QDQ form of a QONNX model, every tensor of it, against QONNX's own executor."""
    model = zoo.qonnx_mlp(weight_bits=bits, batch=2)
    x = _inputs((2, 64), SEED)[0]
    ours = execute(load_onnx(from_qonnx(model), batch=2), {"x": x}, keep_all=True)
    theirs = qonnx_reference(model, x, every_tensor=True)
    quants = [n.output[0] for n in model.graph.node if n.op_type in ("Quant", "BipolarQuant")]
    for t in [*quants, model.graph.output[0].name]:
        np.testing.assert_allclose(ours[t], theirs[t], rtol=1e-6, atol=1e-6, err_msg=t)


@pytest.mark.parametrize(
    "precision", [None, "conv*=int4*int8,fc*=int2*int8", "*=ternary*int8", "dw*=binary*int8"]
)
@pytest.mark.parametrize("cfg", ["tiny", "lut"])
def test_float_model_with_calibration(precision, cfg):
    """The compiler's PTQ: the layers take the formats asked for, and the result equals
    onnxruntime running the quantized model the quantizer wrote."""
    from compiler.ptq import quantize_model

    model = zoo.cnn()
    calib = _inputs((8, 1, 8, 8), SEED, 2)
    cfg_ = {"tiny": TINY, "lut": LUT}[cfg]
    cm = compile_model(model, cfg_, batch=2, calibration=calib, precision=precision)
    q = quantize_model(model, calib, precision=precision)
    check_model(cm, q, _inputs((2, 1, 8, 8), SEED + 3)[0])
    got = {n["source"]: n["attrs"]["w_format"] for n in cm.layers}
    for source, fmt in got.items():
        if precision == "*=ternary*int8":
            assert fmt == "ternary"
        elif precision == "dw*=binary*int8":
            assert fmt == ("binary" if source.startswith("dw") else "int8")


def test_ptq_is_close_to_the_float_model():
    """int8 PTQ of the CNN stays within a few percent of the float model."""
    model = zoo.cnn()
    calib = _inputs((16, 1, 8, 8), SEED, 2)
    cm = compile_model(model, TINY, batch=4, calibration=calib)
    x = _inputs((4, 1, 8, 8), SEED + 5)[0]
    got = cm.run({"x": x})[cm.graph.graph["outputs"][0]]
    want = ort_outputs(model, x, optimized=True)[0]
    assert np.abs(got - want).max() < 0.06 * np.abs(want).max()


@pytest.mark.parametrize("clip", ["percentile", "mse"])
def test_ptq_clipping_options(clip):
    from compiler.ptq import quantize_model

    q = quantize_model(zoo.mlp(), _inputs((8, 64), SEED, 2), clip=clip)
    cm = compile_model(q, TINY, batch=4)
    check_model(cm, q, _inputs((4, 64), SEED + 1)[0])


def test_save_load_and_run_from_disk(tmp_path):
    model = _quantized("cnn", "qdq", "uint8", False)
    cm = compile_model(model, TINY, batch=2)
    cm.save(tmp_path / "prog")
    loaded = load_compiled(tmp_path / "prog")
    x = _inputs((2, 1, 8, 8), SEED)[0]
    a, b = cm.run({"x": x}), loaded.run({"x": x})
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert loaded.cycles == cm.cycles
    assert "accelerator cycles" in (tmp_path / "prog" / "report.txt").read_text()


# --- errors -----------------------------------------------------------------------------------


def _tiny_model(op: str, domain: str = "", **attrs) -> onnx.ModelProto:
    node = helper.make_node(op, ["x"], ["y"], name="odd_node", domain=domain, **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def test_an_unknown_op_names_the_op_and_the_node():
    with pytest.raises(CompileError, match="node odd_node: op Hardmax is not supported"):
        load_onnx(_tiny_model("Hardmax"))
    with pytest.raises(CompileError, match="odd_node: op Frobnicate of domain 'acme'"):
        load_onnx(_tiny_model("Frobnicate", "acme"))


def test_a_float_model_needs_calibration():
    with pytest.raises(CompileError, match="not quantized: give a calibration set"):
        compile_model(zoo.mlp(), TINY)


def test_precision_errors():
    with pytest.raises(CompileError, match="applies to float models"):
        compile_model(_quantized("mlp", "qdq", "int8", True), TINY, precision="*=int4*int8")
    calib = _inputs((4, 64), SEED)
    for spec, message in [
        ("fc", "not PATTERN=WEIGHT"),
        ("fc*=int9*int8", "weight format 'int9'"),
        ("fc*=int4*int16", "activations are int8"),
    ]:
        with pytest.raises(CompileError, match=message):
            compile_model(zoo.mlp(), TINY, calibration=calib, precision=spec)


def test_a_layer_that_cannot_be_tiled_is_an_error_with_the_reason():
    small = config.config_from_dict(
        {
            "name": "crumb",
            "array": {
                "rows": 16,
                "cols": 16,
                "dataflow": "os",
                "modes": [{"weight": "int8", "activation": "int8"}],
            },
            "memory": {
                "scratchpad_kib": 1,
                "scratchpad_banks": 2,
                "accumulator_kib": 1,
                "accumulator_banks": 2,
            },
            "dram": {"bytes_per_cycle": 4, "latency_cycles": 10},
        }
    )
    model = _quantized("mlp", "qdq", "int8", True)
    with pytest.raises(CompileError, match=r"fc_mm.*cannot be mapped onto crumb: the scratchpad"):
        compile_model(model, small, batch=4)


def test_a_malformed_model_is_an_error(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"not a protobuf at all")
    with pytest.raises(CompileError, match="not an ONNX model"):
        compile_model(str(path), TINY)
    model = zoo.mlp()
    model.graph.node[0].input[1] = "missing_weights"
    with pytest.raises(CompileError, match="not valid ONNX"):
        compile_model(model, TINY, calibration=_inputs((4, 64), SEED))


def test_wrong_input_shape_is_an_error():
    cm = compile_model(_quantized("mlp", "qdq", "int8", True), TINY, batch=4)
    with pytest.raises(ValueError, match="must have shape"):
        cm.run({"x": np.zeros((3, 64), np.float32)})


# --- the command line and the RTL ------------------------------------------------------------


def test_cli_compile_run(tmp_path, capsys):
    from qaccel.cli import main

    model = _quantized("cnn", "qoperator", "uint8", True)
    onnx.save(model, tmp_path / "cnn.onnx")
    x = _inputs((2, 1, 8, 8), SEED)[0]
    np.save(tmp_path / "x.npy", x)
    prog, out = tmp_path / "prog", tmp_path / "out"
    args = ["compile", str(tmp_path / "cnn.onnx"), "--config", "configs/tiny.toml"]
    assert main([*args, "-o", str(prog), "--batch", "2"]) == 0
    text = capsys.readouterr().out
    assert "unit" in text and "host fallbacks" in text and "MaxPool" in text
    assert main(["run", str(prog), "--input", f"x={tmp_path / 'x.npy'}", "--out", str(out)]) == 0
    got = np.load(out / "fc24.npy")
    assert np.array_equal(got, compile_model(model, TINY, batch=2).run({"x": x})["fc24"])
    assert np.abs(got - ort_outputs(model, x)[0]).max() <= 1.0001 * (got.max() - got.min())


def test_cli_compile_float_model_with_calibration(tmp_path, capsys):
    from qaccel.cli import main

    onnx.save(zoo.mlp(), tmp_path / "mlp.onnx")
    np.savez(tmp_path / "calib.npz", a=_inputs((8, 64), SEED)[0], b=_inputs((8, 64), SEED + 1)[0])
    args = ["compile", str(tmp_path / "mlp.onnx"), "--config", "configs/lut.toml"]
    args += ["-o", str(tmp_path / "p"), "--calib", str(tmp_path / "calib.npz")]
    assert main([*args, "--precision", "fc*=int2*int8"]) == 0
    assert "int2*int8->int8  lut" in capsys.readouterr().out
    assert main([*args[:-2], "--precision", "fc*=int2*int8"]) == 1
    assert "calibration set" in capsys.readouterr().err


def test_model_on_icarus_equals_the_simulator(tmp_path, capsys):
    """`qaccel verify` of a compiled model: each accelerator layer (array and LUT core) on
    the RTL, outputs bit for bit and every counter equal to the simulator's."""
    from qaccel.cli import main

    model = zoo.qonnx_mlp((16, 12, 4), weight_bits=(2, 8))
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", _inputs((2, 16), SEED)[0])
    prog = str(tmp_path / "prog")
    assert (
        main(
            [
                "compile",
                str(tmp_path / "m.onnx"),
                "--config",
                "configs/lut.toml",
                "-o",
                prog,
                "--batch",
                "2",
            ]
        )
        == 0
    )
    capsys.readouterr()
    code = main(
        ["verify", prog, "--input", f"x={tmp_path / 'x.npy'}", "--build", str(tmp_path / "b")]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    rows = [line for line in text.splitlines() if line.startswith("fc")]
    assert len(rows) == 2 and all(r.endswith("equal") for r in rows), text
    assert "2 layers, outputs bit for bit and every counter equal" in text


@pytest.mark.parametrize("version", [1, 2])
def test_qonnx_trunc_on_the_host(version):
    """Trunc drops low bits of the integer value (v1: in - out bit widths; v2: from the
    output scale), clamps to the output width and rounds as asked."""
    from compiler.qonnx import run_qonnx_op

    x = np.array([-37.0, -5.0, 0.0, 3.0, 17.0, 100.0, 600.0], np.float32) * 0.5
    ins = [x, np.float32(0.5), np.float32(0.0)]
    if version == 1:  # in_bitwidth 7, out_bitwidth 4: 3 bits dropped
        ins += [np.float32(7), np.float32(4)]
    else:  # in_bitwidth, out_scale (8x the input's), out_bitwidth
        ins += [np.float32(10), np.float32(0.5 * 8), np.float32(4)]
    (y,) = run_qonnx_op("Trunc", ins, {"rounding_mode": "FLOOR", "signed": 1})
    # integers -37, -5, 0, 3, 17, 100, 600 over 8, clamped to [-8, 7], floored, times 4
    assert y.tolist() == [-20.0, -4.0, 0.0, 0.0, 8.0, 28.0, 28.0]


def test_matmul_integer_runs_on_the_array():
    """MatMulInteger (int32 out, zero points folded into the host's bias add) on the array,
    equal to onnxruntime exactly."""
    rng = np.random.default_rng(SEED)
    w = rng.integers(-128, 128, (20, 6)).astype(np.int8)
    inits = [
        onnx.numpy_helper.from_array(w, "w"),
        onnx.numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        onnx.numpy_helper.from_array(np.array(131, np.uint8), "zx"),
        onnx.numpy_helper.from_array(np.array(3, np.int8), "zw"),
        onnx.numpy_helper.from_array(np.array(0.01, np.float32), "out_scale"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zx"], ["xq"], name="q"),
        helper.make_node("MatMulInteger", ["xq", "w", "zx", "zw"], ["acc"], name="mmi"),
        helper.make_node("Cast", ["acc"], ["accf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["accf", "out_scale"], ["y"], name="scale"),
    ]
    graph = helper.make_graph(
        nodes,
        "mmi",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 6])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    cm = compile_model(model, TINY, batch=3)
    assert [n["unit"] for n in cm.layers] == ["array"]
    x = _inputs((3, 20), SEED)[0] * 3
    got = cm.run({"x": x})["y"]
    assert np.array_equal(got, cm.run({"x": x}, programs="reference")["y"])
    assert np.array_equal(got, ort_outputs(model, x, optimized=True)[0])


def test_pytorch_style_flatten_with_shape_ops():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape (how PyTorch exports a flatten) is
    folded from the static shapes; Pad, Slice and HardSwish run on the host."""
    rng = np.random.default_rng(SEED)

    def c(name, value, dtype=np.float32):
        return onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name)

    inits = [
        c("w1", rng.normal(0, 0.3, (4, 2, 3, 3))),
        c("b1", rng.normal(0, 0.1, 4)),
        c("pads", [0, 0, 1, 1, 0, 0, 1, 1], np.int64),
        c("zero", [0], np.int64),
        c("minus1", [-1], np.int64),
        c("s0", [0], np.int64),
        c("s1", [2], np.int64),
        c("ax", [1], np.int64),
        c("w2", rng.normal(0, 0.2, (64, 5))),
    ]
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["xp"], name="pad"),
        helper.make_node("Slice", ["xp", "s0", "s1", "ax"], ["xs"], name="slice"),
        helper.make_node("Conv", ["xs", "w1", "b1"], ["y1"], name="conv", kernel_shape=[3, 3]),
        helper.make_node("HardSwish", ["y1"], ["h"], name="hswish"),
        helper.make_node("Shape", ["h"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "zero"], ["n"], name="gather", axis=0),
        helper.make_node("Concat", ["n", "minus1"], ["flat_shape"], name="cat", axis=0),
        helper.make_node("Reshape", ["h", "flat_shape"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "w2"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "torchish",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    q = zoo.quantize(model, _inputs((2, 3, 4, 4), SEED, 3))
    cm = compile_model(q, TINY, batch=2)
    assert [n["unit"] for n in cm.layers] == ["array", "array"]
    assert "Shape" not in {op for _, op in cm.host_ops()}
    check_model(cm, q, _inputs((2, 3, 4, 4), SEED + 7)[0])


def _odd_config(name: str, array: dict | None = None, lut: dict | None = None):
    cfg = {
        "name": name,
        "memory": {
            "scratchpad_kib": 8,
            "scratchpad_banks": 2,
            "accumulator_kib": 4,
            "accumulator_banks": 2,
        },
        "dram": {"bytes_per_cycle": 4, "latency_cycles": 7},
    }
    if array:
        cfg["array"] = array
    if lut:
        cfg["lut"] = lut
    return config.config_from_dict(cfg)


ODD_CONFIGS = {
    "3x5 ws int8": _odd_config(
        "ws35",
        {
            "rows": 3,
            "cols": 5,
            "dataflow": "ws",
            "modes": [{"weight": "int8", "activation": "int8"}],
        },
    ),
    "2x7 os int8*uint8": _odd_config(
        "os27",
        {
            "rows": 2,
            "cols": 7,
            "dataflow": "os",
            "modes": [{"weight": "int8", "activation": "uint8"}],
        },
    ),
    "LUT core alone, uint8": _odd_config(
        "lut_u8",
        lut={
            "group": 2,
            "tile_m": 3,
            "tile_n": 5,
            "weight_bits": [2, 4],
            "ternary": True,
            "activation": "uint8",
        },
    ),
}


@pytest.mark.parametrize("name", list(ODD_CONFIGS))
@pytest.mark.parametrize("activation", ["int8", "uint8"])
def test_configurations_nobody_wrote(name, activation):
    """Odd arrays, one dataflow, one mode, uint8-only units, a LUT core alone: the models
    map onto whatever unit has their weight format (activations moved between int8 and uint8
    exactly), else to the host, and still match."""
    cfg = ODD_CONFIGS[name]
    cnn = _quantized("cnn", "qdq", activation, True)
    cm = compile_model(cnn, cfg, batch=2)
    units = {n["unit"] for n in cm.layers}
    assert units == ({"host"} if cfg.array is None else {"array"})
    check_model(cm, cnn, _inputs((2, 1, 8, 8), SEED + 2)[0])
    q = zoo.qonnx_mlp((24, 16, 6), weight_bits=(2, 4))
    cm = compile_model(q, cfg, batch=3)
    x = _inputs((3, 24), SEED)[0]
    name_out = cm.graph.graph["outputs"][0]
    assert np.array_equal(
        cm.run({"x": x})[name_out], cm.run({"x": x}, programs="reference")[name_out]
    )
    if cfg.lut is not None:
        assert [n["attrs"]["mode"] for n in cm.layers] == ["ternary*uint8", "int4*uint8"]


@pytest.mark.parametrize("cfg", ["tiny", "edge"])
def test_float_weight_formats_from_the_quantizer(cfg):
    """FP4 (and other float) weights with int8 activations: the quantizer rounds each channel
    to the format times a power of two, the frontend recovers the codes, the array's
    fp4_e2m1*int8 mode runs them; a float format no unit has (fp8_e4m3*int8) falls back to the
    host. Equal to the reference, within 1 LSB of onnxruntime on the quantized model."""
    from compiler.ptq import quantize_model

    model = zoo.cnn()
    calib = _inputs((8, 1, 8, 8), SEED, 2)
    precision = "conv*=fp4_e2m1*int8,pw*=fp4_e2m1*int8,fc*=fp8_e4m3*int8"
    q = quantize_model(model, calib, precision=precision)
    cm = compile_model(q, CONFIGS[cfg], batch=2)
    got = {(n["source"][:2], n["unit"], n["attrs"]["mode"]) for n in cm.layers}
    assert got == {
        ("co", "array", "fp4_e2m1*int8"),
        ("dw", "array", "int8*int8"),
        ("pw", "array", "fp4_e2m1*int8"),
        ("fc", "host", "fp8_e4m3*int8"),
    }
    check_model(cm, q, _inputs((2, 1, 8, 8), SEED + 4)[0])


def test_float_weights_that_are_not_format_values_are_refused():
    from compiler.ptq import quantize_model

    q = quantize_model(zoo.mlp(), _inputs((4, 64), SEED), precision="*=fp4_e2m1*int8")
    init = next(i for i in q.graph.initializer if i.name.endswith("_wf"))
    w = onnx.numpy_helper.to_array(init).copy()
    w[0, 0] = 0.123456  # not an FP4 value times the channel's power of two
    init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    with pytest.raises(CompileError, match="not fp4_e2m1 values times a power of two"):
        compile_model(q, TINY, batch=4)


# --- float and posit activations --------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
def test_float8_quantize_and_dequantize_equal_onnxruntime(fmt):
    """The host's QuantizeLinear / DequantizeLinear with float8 codes: bit for bit what
    onnxruntime computes, ties, saturation, subnormals and signed zeros included."""
    from compiler.quant import dequantize, quantize
    from compiler.runtime import qparams_of
    from qaccel import formats

    f = formats.get_format(fmt)
    grid = f.decode(f.finite_codes())
    mids = (np.sort(grid)[1:] + np.sort(grid)[:-1]) / 2  # every tie
    rng = np.random.default_rng(SEED)
    scale = np.float32(0.375)
    v = np.concatenate([grid, mids, [f.max_magnitude * 4, -f.max_magnitude * 4, -0.0]])
    v = np.concatenate([v, [np.inf, -np.inf]])  # saturate=1: the largest finite value
    x = np.concatenate([v * scale, rng.normal(size=2000) * f.max_magnitude * scale / 8])
    x = x.astype(np.float32)
    elem = {"fp8_e4m3": TensorProto.FLOAT8E4M3FN, "fp8_e5m2": TensorProto.FLOAT8E5M2}[fmt]
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
        ],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.size])],
        [onnx.numpy_helper.from_array(scale, "s"), helper.make_tensor("z", elem, [], [0.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=10)
    (want,) = ort_outputs(model, x)
    q = qparams_of(scale, np.zeros(1, np.uint8), dtype=fmt)
    got = dequantize(quantize(x, q), q)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))  # -0.0 too


@pytest.mark.parametrize(
    "fmt", ["posit8_0", "posit8_1", "posit8_2", "int4", "int3", "fp4_e2m1", "fp6_e3m2"]
)
def test_posit_quantize_functions_equal_the_formats_rounding(fmt):
    """The quantizer's posit and narrow-integer Quantize / Dequantize (``compiler.format_ops``,
    run by onnxruntime from their function bodies) and the host's quantize / dequantize agree
    on every value, on both sides of every rounding boundary, and saturate alike."""
    from compiler.format_ops import DOMAIN, dequantize_function, quantize_function, rounding_table
    from compiler.quant import dequantize, quantize
    from compiler.runtime import qparams_of
    from qaccel import formats

    f = formats.get_format(fmt)
    bounds, _, values = rounding_table(fmt)
    scale = np.float32(0.75)
    up = np.nextafter(bounds, np.float32(np.inf))
    far = np.array([f.max_magnitude * 8, -f.max_magnitude * 8, 0.0, 1e-30, -1e-30, np.inf, -np.inf])
    noise = np.random.default_rng(SEED).normal(size=4000) * f.max_magnitude / 4
    v = np.concatenate([bounds, up, values, far, noise]).astype(np.float32)
    x = (v * scale).astype(np.float32)
    x = x[(x / scale).astype(np.float32) == v]  # inputs whose x / scale is v exactly
    graph = helper.make_graph(
        [
            helper.make_node(f"Quantize_{fmt}", ["x", "s"], ["q"], domain=DOMAIN),
            helper.make_node(f"Dequantize_{fmt}", ["q", "s"], ["y"], domain=DOMAIN),
        ],
        "posit_qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.size])],
        [onnx.numpy_helper.from_array(scale, "s")],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 19), helper.make_opsetid(DOMAIN, 1)],
        ir_version=10,
        functions=[quantize_function(fmt, 19), dequantize_function(fmt, 19)],
    )
    (want,) = ort_outputs(model, x)
    q = qparams_of(scale, None, dtype=fmt)
    assert np.array_equal(dequantize(quantize(x, q), q), want)
    assert x.size > 2 * bounds.size  # the boundaries survived the scaling


def test_an_unknown_qaccel_domain_op_is_an_error():
    with pytest.raises(CompileError, match="op Quantize_posit16_1 of domain 'qaccel'"):
        load_onnx(_tiny_model("Quantize_posit16_1", "qaccel"))


SMALL_FLOATS = _odd_config(
    "fp64",
    {
        "rows": 4,
        "cols": 4,
        "dataflow": "os",
        "modes": [
            {"weight": "int8", "activation": "int8"},
            {"weight": "fp4_e2m1", "activation": "fp4_e2m1"},
            {"weight": "fp6_e2m3", "activation": "fp6_e2m3"},
        ],
    },
)


@pytest.mark.parametrize("pair", ["fp4_e2m1*fp4_e2m1", "fp6_e2m3*fp6_e2m3"])
@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_fp4_and_fp6_activations_from_the_quantizer(pair, name):
    """FP4 and FP6 activations with weights of the same format: the accumulator's unit is
    coarse (about an output LSB), so the quantizer writes the bias already rounded to it and
    onnxruntime adds what the post-processing unit adds."""
    from compiler.ptq import quantize_model

    build, shape = MODELS[name]
    q = quantize_model(build(), _inputs((8, *shape[1:]), SEED, 2), precision=f"*={pair}")
    cm = compile_model(q, SMALL_FLOATS, batch=shape[0])
    assert {(n["unit"], n["attrs"]["mode"]) for n in cm.layers} == {("array", pair)}
    assert check_model(cm, q, _inputs(shape, SEED + 14)[0]) == 1.0  # measured


@pytest.mark.parametrize("name", ["cnn", "mlp"])
@pytest.mark.parametrize("cfg", ["tiny", "edge"])
def test_w4a4_from_the_quantizer(name, cfg):
    """4-bit activations (symmetric, clipped by least squared error; the ``qaccel`` domain's
    int4 Quantize / Dequantize) with 4-bit weights: the array's int4*int4 mode."""
    from compiler.ptq import quantize_model

    build, shape = MODELS[name]
    q = quantize_model(build(), _inputs((8, *shape[1:]), SEED, 2), precision="*=int4*int4")
    cm = compile_model(q, CONFIGS[cfg], batch=shape[0])
    assert {(n["unit"], n["attrs"]["mode"]) for n in cm.layers} == {("array", "int4*int4")}
    assert check_model(cm, q, _inputs(shape, SEED + 13)[0]) == 1.0  # measured


def _float8_matmul_model(fmt: str, bias_scale: float = 0.1) -> onnx.ModelProto:
    """A hand-written QDQ MatMul with float8 weights (per-channel scales, any value) and
    float8 activations, a float bias Add, Relu and an int8 output: as another tool writes."""
    rng = np.random.default_rng(SEED)
    elem = {"fp8_e4m3": TensorProto.FLOAT8E4M3FN, "fp8_e5m2": TensorProto.FLOAT8E5M2}[fmt]
    f = __import__("qaccel.formats", fromlist=["get_format"]).get_format(fmt)
    w_codes = rng.choice(f.finite_codes(), size=(24, 12)).astype(np.uint8)
    w_scale = rng.uniform(0.001, 0.01, size=12).astype(np.float32)
    inits = [
        helper.make_tensor("w", elem, [24, 12], w_codes.tobytes(), raw=True),
        onnx.numpy_helper.from_array(w_scale, "w_s"),
        onnx.numpy_helper.from_array(np.float32(0.02), "x_s"),
        helper.make_tensor("x_z", elem, [], [0.0]),
        onnx.numpy_helper.from_array(rng.normal(size=12).astype(np.float32) * bias_scale, "b"),
        onnx.numpy_helper.from_array(np.float32(0.05), "y_s"),
        onnx.numpy_helper.from_array(np.int8(-3), "y_z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xf"]),
        helper.make_node("DequantizeLinear", ["w", "w_s"], ["wf"], axis=1),
        helper.make_node("MatMul", ["xf", "wf"], ["mm"], name="fc"),
        helper.make_node("Add", ["mm", "b"], ["biased"]),
        helper.make_node("Relu", ["biased"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "y_s", "y_z"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "y_s", "y_z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fp8_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 24])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 24 // 2])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=10)


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
def test_float8_qdq_model_runs_on_the_array(fmt, tmp_path):
    """Float8 weights and activations as ONNX writes them: the array's float mode, exact
    against the reference, within 1 LSB of onnxruntime; saved and loaded unchanged."""
    # E5M2 products have 32 fraction bits: a bias fits the post-processing unit's 32 bits
    # only when it is small against the scales
    model = _float8_matmul_model(fmt, bias_scale=0.1 if fmt == "fp8_e4m3" else 1e-6)
    cm = compile_model(model, TINY, batch=3)
    ((unit, mode),) = {(n["unit"], n["attrs"]["mode"]) for n in cm.layers}
    assert (unit, mode) == ("array", f"{fmt}*{fmt}")
    x = _inputs((3, 24), SEED + 7)[0] * 4
    assert check_model(cm, model, x) == 1.0  # measured: every element equal
    cm.save(tmp_path / "prog")
    assert np.array_equal(
        load_compiled(tmp_path / "prog").run({"x": x})["y"], cm.run({"x": x})["y"]
    )


@pytest.mark.parametrize(
    "precision",
    [
        "*=fp8_e4m3*fp8_e4m3",
        "*=fp8_e5m2*fp8_e5m2",
        "conv*=fp4_e2m1*fp8_e4m3,pw*=fp4_e2m1*fp8_e4m3,fc*=fp8_e4m3*fp8_e4m3,dw*=int8*int8",
        "*=posit8_0*posit8_0",
    ],
)
@pytest.mark.parametrize("name", ["cnn", "mlp"])
@pytest.mark.parametrize("cfg", ["tiny", "edge"])
def test_float8_activations_from_the_quantizer(precision, name, cfg):
    """The compiler's PTQ with float8 activations: each layer's input quantized to float8
    after the int8 requantization before it (as the hardware passes it), the array's float
    modes; simulator == reference, within 1 LSB of onnxruntime on the quantized model."""
    from compiler.ptq import quantize_model

    build, shape = MODELS[name]
    model = build()
    calib = _inputs((8, *shape[1:]), SEED, 2)
    q = quantize_model(model, calib, precision=precision)
    cm = compile_model(q, CONFIGS[cfg], batch=shape[0])
    modes = {n["attrs"]["mode"] for n in cm.layers}
    assert {n["unit"] for n in cm.layers} == {"array"}
    assert any("*fp8_" in m or "*posit" in m for m in modes), modes
    exact = check_model(cm, q, _inputs(shape, SEED + 6)[0])
    assert exact >= 0.9, exact  # measured: 1.0, posits 0.99 on the digits CNN (README)


@pytest.mark.slow
def test_float8_posit_mx_and_residual_layers_on_icarus_equal_the_simulator(tmp_path):
    """Compiled float8 and posit layers (tiny.toml's FP8 and posit modes), a fused residual
    add and an MXINT8 layer on the RTL: outputs bit for bit and every counter equal to the
    simulator's."""
    from compiler.ptq import quantize_model
    from hw.accel_bench import verify_models

    fp8 = compile_model(_float8_matmul_model("fp8_e4m3"), TINY, batch=3)
    mlp = zoo.mlp((8, 6, 4))
    q = quantize_model(mlp, _inputs((8, 8), SEED, 2), precision="*=posit8_0*posit8_0")
    posit = compile_model(q, TINY, batch=2)
    assert {n["attrs"]["mode"] for n in posit.layers} == {"posit8_0*posit8_0"}
    residual = compile_model(_residual_qdq_model(0.05 * 2.0**-7 * 2.0**9), TINY, batch=2)
    jobs = [
        (fp8, {"x": _inputs((3, 24), SEED + 1)[0] * 4}),
        (posit, {"x": _inputs((2, 8), SEED + 2)[0]}),
        (residual, {"x": _inputs((2, 4, 3, 3), SEED + 3)[0]}),
    ]
    checks = verify_models(jobs, simulator="icarus", build_dir=tmp_path)
    assert len(checks) == 4
    from compiler.ptq import quantize_model

    q = quantize_model(zoo.mlp((32, 8)), _inputs((8, 32), SEED), precision="*=mxint8*mxint8")
    mx = compile_model(q, MX, batch=2)
    checks += verify_models(
        [(mx, {"x": _inputs((2, 32), SEED + 4)[0]})], simulator="icarus", build_dir=tmp_path / "mx"
    )
    assert len(checks) == 5
    assert all(c.error is None and c.rtl_cycles == c.sim_cycles for c in checks), checks


# --- MX block formats -----------------------------------------------------------------------------

MX = _odd_config(
    "mx44",
    {
        "rows": 4,
        "cols": 4,
        "dataflow": "os",
        "max_k": 64,
        "modes": [
            {"weight": "int8", "activation": "int8"},
            {"weight": "mxfp8_e4m3", "activation": "mxfp8_e4m3"},
            {"weight": "mxint8", "activation": "mxint8"},
            {"weight": "mxfp4", "activation": "mxfp8_e4m3"},
        ],
    },
)


@pytest.mark.parametrize(
    "precision",
    ["*=mxfp8_e4m3*mxfp8_e4m3", "*=mxint8*mxint8", "fc_mm2=mxfp4*mxfp8_e4m3,fc_mm7=int8*int8"],
)
def test_mx_formats_from_the_quantizer(precision, tmp_path):
    """MX weights and activations (blocks of 32 along K): the quantizer rounds the weights and
    puts the ``qaccel`` domain's MX rounding on each layer's input (onnxruntime runs it);
    the array's MX modes sum the blocks exactly, the host adds the bias and requantizes.
    Simulator == reference, within 1 LSB of onnxruntime; saved and loaded unchanged."""
    from compiler.ptq import quantize_model

    q = quantize_model(zoo.mlp(), _inputs((8, 64), SEED, 2), precision=precision)
    cm = compile_model(q, MX, batch=4)
    modes = [n["attrs"]["mode"] for n in cm.layers]
    assert all(n["unit"] == "array" for n in cm.layers)
    mx_layers = [n["source"] for n in cm.layers if n["attrs"]["form"].mx]
    assert [s for s, op in cm.host_ops() if op == "MX bias and requantization"] == mx_layers
    assert modes[0].startswith(precision.split("=")[1].split(",")[0].split("*")[0])
    x = _inputs((4, 64), SEED + 10)[0]
    assert check_model(cm, q, x) == 1.0  # measured
    cm.save(tmp_path / "prog")
    name = cm.graph.graph["outputs"][0]
    assert np.array_equal(
        load_compiled(tmp_path / "prog").run({"x": x})[name], cm.run({"x": x})[name]
    )


def test_mx_gemm_with_transposed_weights():
    rng = np.random.default_rng(SEED)
    w = rng.normal(0, 0.1, (16, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 16])],
        [
            onnx.numpy_helper.from_array(w, "w"),
            onnx.numpy_helper.from_array(rng.normal(0, 0.1, 16).astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    from compiler.ptq import quantize_model

    q = quantize_model(model, _inputs((3, 64), SEED, 2), precision="*=mxfp4*mxfp8_e4m3")
    cm = compile_model(q, MX, batch=3)
    assert cm.layers[0]["attrs"]["mode"] == "mxfp4*mxfp8_e4m3"
    assert check_model(cm, q, _inputs((3, 64), SEED + 12)[0]) == 1.0  # measured


@pytest.mark.parametrize("pair", ["mxfp8_e4m3*mxfp8_e4m3", "mxint8*mxint8"])
def test_mx_convolutions(pair):
    """An MX Conv (stride, padding): blocks of 32 channels of each tap (the K order kh, kw, c;
    the input's rounding ``MXQuantizeChannels``), then a 1x1 Conv, on the array's MX modes."""
    rng = np.random.default_rng(SEED)
    nodes = [
        helper.make_node(
            "Conv",
            ["x", "w1", "b1"],
            ["c1"],
            name="conv1",
            kernel_shape=[3, 3],
            pads=[1] * 4,
            strides=[2, 2],
        ),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2", kernel_shape=[1, 1]),
    ]
    inits = {
        "w1": rng.normal(0, 0.06, (32, 32, 3, 3)),
        "b1": rng.normal(0, 0.1, 32),
        "w2": rng.normal(0, 0.2, (8, 32, 1, 1)),
    }
    graph = helper.make_graph(
        nodes,
        "mx_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 3, 3])],
        [onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    from compiler.ptq import quantize_model

    q = quantize_model(model, _inputs((2, 32, 6, 6), SEED, 2), precision=f"*={pair}")
    cm = compile_model(q, MX, batch=2)
    assert [(n["attrs"]["kind"], n["unit"], n["attrs"]["mode"]) for n in cm.layers] == [
        ("conv", "array", pair)
    ] * 2
    assert check_model(cm, q, _inputs((2, 32, 6, 6), SEED + 15)[0]) == 1.0  # measured


def _mx_matmul_model(k: int, scale: float = 1.0) -> onnx.ModelProto:
    """x (4 x K) -> the qaccel domain's MX rounding -> MatMul with MXINT8 weights (declared
    in the metadata) -> int8: a model another tool could write."""
    from compiler.format_ops import DOMAIN, mx_quantize_function
    from compiler.ptq import METADATA_PREFIX
    from qaccel import formats

    rng = np.random.default_rng(SEED)
    f = formats.get_mx_format("mxint8")
    w = f.quantize(rng.normal(0, scale, (8, k))).dequantize().T.astype(np.float32)
    nodes = [
        helper.make_node("MXQuantize_mxint8", ["x"], ["xm"], domain=DOMAIN),
        helper.make_node("MatMul", ["xm", "w"], ["mm"], name="fc"),
        helper.make_node("QuantizeLinear", ["mm", "ys", "yz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    inits = [
        onnx.numpy_helper.from_array(w, "w"),
        onnx.numpy_helper.from_array(np.float32(0.5 * scale * scale), "ys"),
        onnx.numpy_helper.from_array(np.int8(0), "yz"),
    ]
    graph = helper.make_graph(
        nodes,
        "mx",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 19), helper.make_opsetid(DOMAIN, 1)],
        ir_version=10,
        functions=[mx_quantize_function("mxint8", 19)],
    )
    model.metadata_props.append(
        onnx.StringStringEntryProto(key=METADATA_PREFIX + "fc", value="mxint8")
    )
    return model


def test_mx_blocks_must_be_whole():
    """The MX rounding function blocks the flattened tensor, the compiler each row: a K that
    is not a multiple of the block is refused, not computed differently."""
    with pytest.raises(CompileError, match="40 values along the MX axis, not a multiple of 32"):
        compile_model(_mx_matmul_model(40), MX, batch=4)
    cm = compile_model(_mx_matmul_model(64), MX, batch=4)
    assert check_model(cm, _mx_matmul_model(64), _inputs((4, 64), SEED + 16)[0]) == 1.0


def test_mx_layers_on_the_host_have_no_scale_window():
    """Large values put an MXINT8 block's scales outside the array's window: on the array an
    error, on the host (a configuration without MX modes) the exact result."""
    model = _mx_matmul_model(64, scale=30.0)
    x = _inputs((4, 64), SEED + 17)[0] * 30
    with pytest.raises(CompileError, match="outside the array's scale window"):
        compile_model(model, MX, batch=4).run({"x": x})
    on_host = compile_model(model, TINY, batch=4)
    assert [n["unit"] for n in on_host.layers] == ["host"]
    assert check_model(on_host, model, x) == 1.0


def test_a_nan_input_is_an_error():
    cm = compile_model(_quantized("mlp", "qdq", "int8", True), TINY, batch=4)
    x = _inputs((4, 64), SEED)[0]
    x[0, 0] = np.nan
    for programs in ("sim", "reference"):
        with pytest.raises(CompileError, match="a NaN cannot be quantized"):
            cm.run({"x": x}, programs=programs)


def test_narrow_integer_activations_take_an_int8_mode_when_theirs_is_missing():
    from compiler.ptq import quantize_model

    q = quantize_model(zoo.mlp(), _inputs((8, 64), SEED, 2), precision="*=int8*int6")
    cm = compile_model(q, TINY, batch=4)  # no int8*int6 mode: int6 codes are int8 codes
    assert {(n["unit"], n["attrs"]["mode"]) for n in cm.layers} == {("array", "int8*int8")}
    assert check_model(cm, q, _inputs((4, 64), SEED + 18)[0]) == 1.0


def test_mx_in_a_transformer_block_and_on_the_host():
    """Every projection of the transformer block in MXFP8 (3-D inputs, bias adds); the same
    layers on a configuration without MX modes run on the host, equal."""
    from compiler.ptq import quantize_model

    q = quantize_model(
        zoo.transformer_block(),
        _inputs((8, 8, 32), SEED, 2),
        precision="*_mm*=mxfp8_e4m3*mxfp8_e4m3",
    )
    x = _inputs((2, 8, 32), SEED + 11)[0]
    on_array = compile_model(q, MX, batch=2)
    on_host = compile_model(q, TINY, batch=2)
    assert [n["unit"] for n in on_array.layers] == ["array"] * 6
    assert [n["unit"] for n in on_host.layers] == ["host"] * 6
    a, h = on_array.run({"x": x}), on_host.run({"x": x})
    (name,) = a
    assert np.array_equal(a[name], on_array.run({"x": x}, programs="reference")[name])
    assert np.array_equal(a[name], h[name])
    np.testing.assert_allclose(a[name], ort_outputs(q, x)[0], atol=1e-5)  # measured: equal


def test_mx_errors():
    from compiler.ptq import quantize_model

    calib = _inputs((8, 1, 8, 8), SEED)
    with pytest.raises(CompileError, match="C = 1 is not a multiple of the mxfp8_e4m3 block"):
        quantize_model(zoo.cnn(), calib, precision="conv*=mxfp8_e4m3*mxfp8_e4m3")
    with pytest.raises(CompileError, match="MX formats take convolutions without groups"):
        quantize_model(zoo.cnn(), calib, precision="dw*=mxfp8_e4m3*mxfp8_e4m3")
    with pytest.raises(CompileError, match="K = 40 is not a multiple of the mxint8 block"):
        quantize_model(zoo.mlp((40, 8)), _inputs((4, 40), SEED), precision="*=mxint8*mxint8")
    with pytest.raises(CompileError, match="MX formats pair only with MX formats"):
        quantize_model(zoo.mlp(), _inputs((4, 64), SEED), precision="*=mxfp4*int8")
    # blocks whose scales fall outside the array's window would be dropped: an error
    import dataclasses

    narrow = dataclasses.replace(MX, array=dataclasses.replace(MX.array, mx_scale_range=(-2, 2)))
    q = quantize_model(zoo.mlp(), _inputs((8, 64), SEED), precision="*=mxfp8_e4m3*mxfp8_e4m3")
    cm = compile_model(q, narrow, batch=4)
    for programs in ("sim", "reference"):
        with pytest.raises(CompileError, match="outside the array's scale window"):
            cm.run({"x": _inputs((4, 64), SEED)[0]}, programs=programs)


# --- residual adds in the post-processing unit ---------------------------------------------------


@pytest.mark.parametrize("name", ["cnn", "transformer"])
@pytest.mark.parametrize("cfg", ["tiny", "edge"])
def test_residual_adds_are_fused_into_the_post_processing_unit(name, cfg):
    """The quantizer gives a layer that feeds a residual add one weight scale that makes the
    residual's scale a power of two of the accumulator's unit; the add then runs in the
    post-processing unit (no Add left on the host), equal to the reference and within 1 LSB
    of onnxruntime adding in float."""
    from compiler.ptq import quantize_model

    build, shape = MODELS[name]
    q = quantize_model(build(), _inputs((8, *shape[1:]), SEED, 2))
    cm = compile_model(q, CONFIGS[cfg], batch=shape[0])
    fused = {n["source"]: n["attrs"]["form"].res_shift for n in cm.layers}
    fused = {k: v for k, v in fused.items() if v is not None}
    want = {"cnn": {"pw"}, "transformer": {"o_mm", "down_mm"}}[name]
    assert {k.rstrip("0123456789") for k in fused} == want
    assert all(0 <= v < 16 for v in fused.values())
    assert "Add" not in {op for _, op in cm.host_ops()}
    assert check_model(cm, q, _inputs(shape, SEED + 8)[0]) == 1.0  # measured


def _residual_qdq_model(res_scale: float, *, late: bool = False, no_zp: bool = False):
    """x -> conv 1x1 (per-tensor int8 weights, scale 2**-7) + residual x -> Relu -> int8, as
    a QDQ model another tool writes: the residual's scale is x's, 2**-7 * x_scale * 2**k
    only for the right ``res_scale``. ``late``: the residual's Q/DQ listed after the Conv (a
    valid order); ``no_zp``: its DequantizeLinear without a zero point (int8 codes, zero 0)."""
    rng = np.random.default_rng(SEED)
    w = rng.integers(-100, 100, size=(4, 4, 1, 1)).astype(np.int8)
    inits = [
        onnx.numpy_helper.from_array(np.float32(0.05), "xs"),
        onnx.numpy_helper.from_array(np.int8(3), "xz"),
        onnx.numpy_helper.from_array(np.float32(res_scale), "rs"),
        onnx.numpy_helper.from_array(np.int8(-5), "rz"),
        onnx.numpy_helper.from_array(w, "w"),
        onnx.numpy_helper.from_array(np.float32(2.0**-7), "ws"),
        onnx.numpy_helper.from_array(np.float32(0.1), "ys"),
        onnx.numpy_helper.from_array(np.int8(-20), "yz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xf"]),
        helper.make_node("DequantizeLinear", ["w", "ws"], ["wf"]),
        helper.make_node("Conv", ["xf", "wf"], ["c"], name="conv"),
        helper.make_node("Add", ["c", "rf"], ["sum"]),
        helper.make_node("Relu", ["sum"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "ys", "yz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    residual = [
        helper.make_node("QuantizeLinear", ["x", "rs", "rz0" if no_zp else "rz"], ["rq"]),
        helper.make_node("DequantizeLinear", ["rq", "rs"] + ([] if no_zp else ["rz"]), ["rf"]),
    ]
    if no_zp:
        inits.append(onnx.numpy_helper.from_array(np.int8(0), "rz0"))
    at = 4 if late else 2
    nodes[at:at] = residual
    graph = helper.make_graph(
        nodes,
        "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 3, 3])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_a_residual_at_a_power_of_two_of_the_accumulator_scale_is_fused(tmp_path):
    """A hand-written QDQ model: fused where residual scale / (x scale * w scale) is 2**k
    (here 2**9), and otherwise left to the host with the layer in float, both equal to
    onnxruntime; the fused layer saves and loads."""
    x = _inputs((2, 4, 3, 3), SEED + 9)[0] * 2
    fusable = _residual_qdq_model(0.05 * 2.0**-7 * 2.0**9)
    cm = compile_model(fusable, TINY, batch=2)
    (layer,) = cm.layers
    assert layer["attrs"]["form"].res_shift == 9 and layer["unit"] == "array"
    assert check_model(cm, fusable, x) == 1.0
    cm.save(tmp_path / "prog")
    again = load_compiled(tmp_path / "prog").run({"x": x})["y"]
    assert np.array_equal(again, cm.run({"x": x})["y"])
    for variant in ({"late": True}, {"no_zp": True}):
        model = _residual_qdq_model(0.05 * 2.0**-7 * 2.0**9, **variant)
        cm = compile_model(model, TINY, batch=2)
        assert cm.layers[0]["attrs"]["form"].res_shift == 9, variant
        assert check_model(cm, model, x) == 1.0, variant
    other = _residual_qdq_model(0.03)
    with pytest.raises(CompileError, match="no quantized Conv, MatMul or Gemm"):
        compile_model(other, TINY, batch=2)  # the conv is left in float: nothing to map
    got = execute(load_onnx(other, batch=2), {"x": x})["y"]
    np.testing.assert_allclose(got, ort_outputs(other, x)[0], atol=1e-6)


@pytest.mark.parametrize(
    "pair",
    ["int8*int8", "fp8_e4m3*fp8_e4m3", "int4*int4", "posit8_0*posit8_0", "fp4_e2m1*fp4_e2m1"],
)
def test_each_format_pair_alone_on_a_3x5_weight_stationary_array(pair):
    """A configuration that is not a preset: one mode, one dataflow, an odd array; the CNN's
    layers (and its residual add, fused for int8) on it."""
    w, a = pair.split("*")
    cfg = _odd_config(
        "ws35", {"rows": 3, "cols": 5, "dataflow": "ws", "modes": [{"weight": w, "activation": a}]}
    )
    from compiler.ptq import quantize_model

    q = quantize_model(zoo.cnn(), _inputs((8, 1, 8, 8), SEED, 2), precision=f"*={pair}")
    cm = compile_model(q, cfg, batch=2)
    assert {(n["unit"], n["attrs"]["mode"]) for n in cm.layers} == {("array", pair)}
    fused = [n["attrs"]["form"].res_shift is not None for n in cm.layers]
    assert any(fused) == (pair == "int8*int8")
    assert check_model(cm, q, _inputs((2, 1, 8, 8), SEED + 20)[0]) == 1.0  # measured


def test_mx_rounding_function_equals_the_mx_quantizer():
    """``MXQuantize_<format>`` run by onnxruntime against ``MXFormat.quantize`` on blocks of
    zeros, of subnormal float32 values beside large ones, of huge and tiny magnitudes."""
    from compiler.format_ops import DOMAIN, mx_quantize_function
    from qaccel import formats

    rng = np.random.default_rng(SEED)
    x = (rng.normal(size=(6, 64)) * np.exp(rng.normal(size=(6, 64)) * 3)).astype(np.float32)
    x[0, :32] = 0
    x[1, :5] = np.float32(2.0**-130)
    x[2, 3] = 1e38
    x[3, 7] = -(2.0**20)
    for mx in formats.MX_FORMATS:
        graph = helper.make_graph(
            [helper.make_node(f"MXQuantize_{mx}", ["x"], ["y"], domain=DOMAIN)],
            "mx",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 64])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 64])],
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", 19), helper.make_opsetid(DOMAIN, 1)],
            ir_version=10,
            functions=[mx_quantize_function(mx, 19)],
        )
        (got,) = ort_outputs(model, x)
        want = formats.get_mx_format(mx).quantize(x.astype(np.float64)).dequantize()
        assert np.array_equal(got, want.astype(np.float32)), mx


def test_float8_layers_no_unit_has_run_on_the_host():
    """lut.toml has no float mode: the layers fall back to the host, named with the reason,
    and still compute the model."""
    from compiler.ptq import quantize_model

    model = zoo.mlp()
    calib = _inputs((8, 64), SEED, 2)
    q = quantize_model(model, calib, precision="*=fp8_e4m3*fp8_e4m3")
    cm = compile_model(q, LUT, batch=4)
    assert {n["unit"] for n in cm.layers} == {"host"}
    reasons = {op for _, op in cm.host_ops()}
    assert "qgemm (no unit runs fp8_e4m3 weights with fp8_e4m3 activations)" in reasons
    check_model(cm, q, _inputs((4, 64), SEED + 2)[0])


def test_float8_model_errors():
    model = _float8_matmul_model("fp8_e4m3")
    bad = onnx.ModelProto.FromString(model.SerializeToString())
    zp = next(i for i in bad.graph.initializer if i.name == "x_z")
    zp.CopyFrom(helper.make_tensor("x_z", TensorProto.FLOAT8E4M3FN, [], [1.0]))
    with pytest.raises(CompileError, match="fp8_e4m3 zero point must be 0"):
        compile_model(bad, TINY, batch=3)
    fnuz = onnx.ModelProto.FromString(model.SerializeToString())
    zp = next(i for i in fnuz.graph.initializer if i.name == "x_z")
    zp.CopyFrom(helper.make_tensor("x_z", TensorProto.FLOAT8E4M3FNUZ, [], [0.0]))
    with pytest.raises(CompileError, match="FLOAT8E4M3FNUZ codes is not supported"):
        compile_model(fnuz, TINY, batch=3)
    unsat = onnx.ModelProto.FromString(model.SerializeToString())
    unsat.graph.node[0].attribute.append(helper.make_attribute("saturate", 0))
    with pytest.raises(CompileError, match="needs saturate=1"):
        compile_model(unsat, TINY, batch=3)
    # a large bias does not fit the post-processing unit's 32 bits in the fixed point of
    # E5M2 products (2**-32 of the scales)
    with pytest.raises(CompileError, match=r"fc: the bias in the accumulator's units"):
        compile_model(_float8_matmul_model("fp8_e5m2", bias_scale=1e6), TINY, batch=3)


def test_a_tensor_larger_than_dram_is_an_error():
    import dataclasses

    small = _odd_config(
        "onemib",
        {
            "rows": 4,
            "cols": 4,
            "dataflow": "os",
            "modes": [{"weight": "int8", "activation": "int8"}],
        },
    )
    small = dataclasses.replace(small, dram=dataclasses.replace(small.dram, size_mib=1))
    model = _quantized("mlp", "qdq", "int8", True)
    with pytest.raises(CompileError, match=r"cannot be mapped onto onemib: .*1048576-byte DRAM"):
        compile_model(model, small, batch=20000)
