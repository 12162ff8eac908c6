"""ONNX -> the compiler's graph IR, one IR op per ONNX node, shapes made concrete.

Reads float models, onnxruntime's QDQ and QOperator models (int8, uint8 and float8 codes), the
quantizer's posit Quantize / Dequantize (``compiler.format_ops``), and QONNX models (``Quant``,
``BipolarQuant``, ``Trunc``). Symbolic dimensions (a batch ``N``) take ``batch``; shapes come
from ONNX shape inference and, where it has none (custom-domain ops), from running the graph
on zeros.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.format_ops import DOMAIN, format_of, mx_format_of
from compiler.graph import CompileError, Tensor, add_op, new_graph
from compiler.host_ops import HOST_OPS, QLINEAR_OPS

__all__ = ["FLOAT8_TYPES", "KNOWN_OPS", "load_onnx"]

# ONNX float8 element types -> the formats of their codes (qaccel.formats); the FNUZ variants
# and the 4-bit types have no reader here
FLOAT8_TYPES = {
    onnx.TensorProto.FLOAT8E4M3FN: "fp8_e4m3",
    onnx.TensorProto.FLOAT8E5M2: "fp8_e5m2",
}
_CODE_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT32}

KNOWN_OPS = (
    set(HOST_OPS)
    | set(QLINEAR_OPS)
    | {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm"}
    | {"MatMulInteger", "ConvInteger", "Quant", "BipolarQuant", "Trunc", "MXQuantize"}
)


def _attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, list):
            v = [x.decode() if isinstance(x, bytes) else x for x in v]
        out[a.name] = v
    return out


def _dims(vi, batch: int) -> tuple[int, ...] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        else:
            dims.append(batch if not dims else None)
    return None if None in dims else tuple(dims)


def load_onnx(model, *, batch: int = 1):
    """The IR graph of ``model`` (an ``onnx.ModelProto`` or a path). A malformed model is a
    CompileError."""
    if isinstance(model, str | Path):
        try:
            model = onnx.load(str(model))
        except Exception as e:  # onnx raises protobuf's DecodeError and friends
            raise CompileError(f"{model}: not an ONNX model ({e})") from None
    if not isinstance(batch, int) or batch < 1:
        raise CompileError(f"batch must be a positive integer, not {batch!r}")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise CompileError(f"the model is not valid ONNX: {str(e).splitlines()[0]}") from None
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    init_names = {i.name for i in graph.initializer}
    real_inputs = [vi for vi in graph.input if vi.name not in init_names]
    for vi in real_inputs:  # symbolic leading dimensions become the batch
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            if not d.HasField("dim_value"):
                if i:
                    raise CompileError(f"input {vi.name!r}: dimension {i} has no size")
                d.dim_value = batch
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as e:  # inference errors are model errors
        raise CompileError(f"shape inference failed: {e}") from None
    graph = model.graph

    g = new_graph(graph.name or "model")
    from compiler.ptq import METADATA_PREFIX

    g.graph["weight_formats"] = {
        p.key[len(METADATA_PREFIX) :]: p.value
        for p in model.metadata_props
        if p.key.startswith(METADATA_PREFIX)
    }
    consts = g.graph["constants"]
    shapes, types = {}, g.graph.setdefault("elem_types", {})
    elem = {}  # every tensor's ONNX element type, where known
    for init in graph.initializer:
        elem[init.name] = init.data_type
        value = numpy_helper.to_array(init)
        if init.data_type in FLOAT8_TYPES:  # held as their 8-bit codes
            value = np.asarray(value).view(np.uint8).copy()
            types[init.name] = FLOAT8_TYPES[init.data_type]
        consts[init.name] = value
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        t = vi.type.tensor_type.elem_type
        elem[vi.name] = t
        if t in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
            types[vi.name] = "int8" if t == onnx.TensorProto.INT8 else "uint8"
        elif t in FLOAT8_TYPES:
            types[vi.name] = FLOAT8_TYPES[t]
        s = _dims(vi, batch)
        if s is not None:
            shapes[vi.name] = s
    for vi in real_inputs:
        g.graph["inputs"].append(vi.name)
        g.graph["tensors"][vi.name] = Tensor(shapes[vi.name])
    used = set()
    for i, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in used:
            name += "_"
        used.add(name)
        if node.op_type == "Constant":
            a = _attrs(node)
            if "value" not in a:
                raise CompileError(f"node {name}: Constant without a tensor value")
            consts[node.output[0]] = np.asarray(a["value"])
            continue
        op = node.op_type
        attrs = _attrs(node)
        if node.domain == DOMAIN and format_of(op):  # posit Quantize / Dequantize
            op, attrs["dtype"] = format_of(op)
        elif node.domain == DOMAIN and mx_format_of(op):  # MX rounding along an axis
            op, (attrs["format"], attrs["axis"]) = "MXQuantize", mx_format_of(op)
        elif (
            node.domain not in ("", "ai.onnx", "com.microsoft")
            and not node.domain.startswith("qonnx")
            and not node.domain.startswith("finn")
        ):
            raise CompileError(f"node {name}: op {op} of domain {node.domain!r} is not supported")
        if op not in KNOWN_OPS:
            raise CompileError(
                f"node {name}: op {op} is not supported (neither the accelerator nor the host "
                "runs it)"
            )
        if op in ("QuantizeLinear", "DequantizeLinear") and node.domain != DOMAIN:
            _code_type(name, node, attrs, elem)
        elif any(elem.get(t) in FLOAT8_TYPES for t in node.input):
            raise CompileError(
                f"node {name}: op {op} reads float8 values directly; only QuantizeLinear and "
                "DequantizeLinear may"
            )
        add_op(g, name, op, list(node.input), list(node.output), attrs=attrs)
    g.graph["outputs"] = [vi.name for vi in graph.output]
    _fill_shapes(g, shapes)
    _check_mx_blocks(g)
    return g


def _check_mx_blocks(g) -> None:
    """The MX rounding function blocks the flattened tensor, the compiler each row along the
    axis: they agree only when the axis holds whole blocks."""
    from qaccel import formats

    for n in g.graph["order"]:
        node = g.nodes[n]
        if node["op"] != "MXQuantize":
            continue
        shape = g.graph["tensors"][node["inputs"][0]].shape
        length, block = (
            shape[node["attrs"]["axis"]],
            formats.get_mx_format(node["attrs"]["format"]).block,
        )
        if length % block:
            raise CompileError(
                f"node {n}: {length} values along the MX axis, not a multiple of {block} "
                "(the block)"
            )


def _code_type(name: str, node, attrs: dict, elem: dict) -> None:
    """A Quantize/DequantizeLinear's codes: float8 ones named in ``attrs["dtype"]``, other
    types that are not int8, uint8 or int32 refused."""
    codes = node.output[0] if node.op_type == "QuantizeLinear" else node.input[0]
    t = elem.get(codes)
    if t is None or t in _CODE_TYPES:
        return
    if t not in FLOAT8_TYPES:
        raise CompileError(
            f"node {name}: {node.op_type} with {onnx.TensorProto.DataType.Name(t)} codes is not "
            "supported (int8, uint8, int32, FLOAT8E4M3FN and FLOAT8E5M2 are)"
        )
    if node.op_type == "QuantizeLinear" and attrs.get("saturate", 1) == 0:
        raise CompileError(f"node {name}: float8 QuantizeLinear needs saturate=1")
    attrs["dtype"] = FLOAT8_TYPES[t]


def _fill_shapes(g, shapes: dict) -> None:
    """Every op output's shape: from ONNX inference, else from a run on zeros."""
    from compiler.runtime import execute

    missing = [t for n in g.graph["order"] for t in g.nodes[n]["outputs"] if t not in shapes]
    if missing:
        zeros = {t: np.zeros(g.graph["tensors"][t].shape, np.float32) for t in g.graph["inputs"]}
        values = execute(g, zeros, keep_all=True)
        for t, v in values.items():
            shapes.setdefault(t, tuple(np.shape(v)))
    for n in g.graph["order"]:
        for t in g.nodes[n]["outputs"]:
            g.graph["tensors"][t] = Tensor(tuple(shapes[t]))
