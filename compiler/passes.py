"""The compiler's passes, each ``(graph, config) -> graph``, and the pipeline that runs them
with ``graph.verify`` after every one.

    fold_constants -> fold_batchnorm -> fuse_qlinear -> fold_constants -> eliminate_dead
    -> lower_gemms -> assign_units -> codegen -> predict_timing

A ``qlinear`` op is a quantized Conv / MatMul / Gemm with constant weights, from either
format: QDQ (DequantizeLinear -> Conv/MatMul/Gemm [-> Add bias] [-> Add residual] [->
Relu/Clip] -> QuantizeLinear; the residual a DequantizeLinear of int8 codes whose scale is
2**k times the accumulator's unit, ``quant.residual_shift``), MX (the ``qaccel`` domain's
MXQuantize -> MatMul/Gemm/Conv with weights the metadata declares MX [-> Add bias] [-> Relu/Clip]
-> QuantizeLinear) or QOperator (QLinearConv, QLinearMatMul, MatMulInteger, ConvInteger).
Lowering turns each into im2col (host) [-> residual_rows | mx_rows (host)] -> qgemm (the
systolic array or the LUT core, or the host when neither has the formats) -> fold_rows
(host). Everything else runs on the host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import networkx as nx
import numpy as np

from compiler.format_ops import NARROW_INTS
from compiler.graph import (
    CompileError,
    QParams,
    Tensor,
    add_op,
    consumers,
    ops_in_order,
    producer_map,
    rebuild_edges,
    verify,
)
from compiler.ptq import FLOAT_WEIGHTS, MX_FORMATS
from compiler.quant import (
    FLOAT_ACTIVATIONS,
    coarsen_for_bias,
    conv_attrs,
    float_ints,
    float_weight_codes,
    gemm_form,
    residual_shift,
    unit_scale,
    units,
)
from compiler.runtime import qparams_of, run_op
from qaccel import config as qconfig
from qaccel import formats
from qaccel.program import ProgramError

__all__ = ["PIPELINE", "run_pipeline"]

Pass = Callable[[nx.DiGraph, qconfig.AcceleratorConfig], nx.DiGraph]


def _remove(g, name: str) -> None:
    g.remove_node(name)
    g.graph["order"].remove(name)


def fold_constants(g, config):
    """Ops whose inputs are all constants run now. DequantizeLinear of integer weights is
    kept: the fusion reads their codes."""
    consts = g.graph["constants"]
    for n in ops_in_order(g):
        node = g.nodes[n]
        if node["op"] in ("qlinear", "im2col", "qgemm", "fold_rows"):
            continue
        if node["op"] == "Shape" and node["inputs"][0] in g.graph["tensors"]:
            # static shapes: a Shape is a constant (PyTorch exports compute reshapes with it)
            shape = np.array(g.graph["tensors"][node["inputs"][0]].shape, dtype=np.int64)
            a = node["attrs"]
            consts[node["outputs"][0]] = shape[a.get("start", 0) : a.get("end")]
            g.graph["tensors"].pop(node["outputs"][0], None)
            _remove(g, n)
            continue
        if not all((not t) or t in consts for t in node["inputs"]):
            continue
        if node["op"] == "DequantizeLinear" and any(
            _fusable_consumer(g, c) for c in consumers(g, node["outputs"][0])
        ):
            continue
        outs = run_op(
            node, [consts[t] if t else None for t in node["inputs"]], programs="reference"
        )
        for t, v in zip(node["outputs"], outs, strict=False):
            consts[t] = np.asarray(v)
            g.graph["tensors"].pop(t, None)
        _remove(g, n)
    rebuild_edges(g)
    return g


def _fusable_consumer(g, n: str) -> bool:
    return g.nodes[n]["op"] in ("Conv", "MatMul", "Gemm")


def fold_batchnorm(g, config):
    """A float Conv followed only by BatchNormalization with constant statistics becomes one
    Conv (float models, before quantization)."""
    consts = g.graph["constants"]
    for n in ops_in_order(g):
        node = g.nodes[n]
        if node["op"] != "BatchNormalization" or n not in g:
            continue
        x = node["inputs"][0]
        prod = producer_map(g).get(x)
        if prod is None or g.nodes[prod]["op"] != "Conv" or len(consumers(g, x)) != 1:
            continue
        conv = g.nodes[prod]
        if conv["inputs"][1] not in consts or not all(t in consts for t in node["inputs"][1:5]):
            continue
        scale, bias, mean, var = (consts[t].astype(np.float64) for t in node["inputs"][1:5])
        inv = scale / np.sqrt(var + node["attrs"].get("epsilon", 1e-5))
        w = consts[conv["inputs"][1]].astype(np.float64)
        b = consts[conv["inputs"][2]] if len(conv["inputs"]) > 2 and conv["inputs"][2] else 0
        wn, bn = f"{prod}.w_bn", f"{prod}.b_bn"
        consts[wn] = (w * inv.reshape(-1, 1, 1, 1)).astype(np.float32)
        consts[bn] = ((b - mean) * inv + bias).astype(np.float32)
        conv["inputs"] = [conv["inputs"][0], wn, bn]
        conv["outputs"] = list(node["outputs"])
        g.graph["tensors"].pop(x, None)
        _remove(g, n)
    rebuild_edges(g)
    return g


# --- fusion ----------------------------------------------------------------------------------


def _dq_source(g, t: str):
    """(codes tensor or constant name, QParams) when ``t`` is a DequantizeLinear's output."""
    prod = producer_map(g).get(t)
    if prod is None or g.nodes[prod]["op"] != "DequantizeLinear":
        return None
    node, consts = g.nodes[prod], g.graph["constants"]
    ins = node["inputs"]
    if ins[1] not in consts or (len(ins) > 2 and ins[2] and ins[2] not in consts):
        return None
    zp = consts[ins[2]] if len(ins) > 2 and ins[2] else None
    dtype = node["attrs"].get("dtype")
    if ins[0] in consts and dtype is None:
        dtype = {np.int8: "int8", np.uint8: "uint8", np.int32: "int32"}.get(
            consts[ins[0]].dtype.type
        )
    if dtype is None and zp is None:  # no zero point: the codes' element type says
        dtype = g.graph.get("elem_types", {}).get(ins[0])
    return ins[0], qparams_of(consts[ins[1]], zp, node["attrs"].get("axis", 1), dtype)


def _conv_attrs(node, w_shape) -> dict:
    return conv_attrs(node["attrs"], w_shape, node["source"])


def _weight_q(codes: np.ndarray, q: QParams, kind: str, source: str) -> tuple:
    """Weights as codes with per-output-channel zero points and scales."""
    axis = 0 if kind == "conv" else codes.ndim - 1
    if q.axis is not None and q.axis % codes.ndim != axis:
        raise CompileError(f"node {source}: weights quantized along axis {q.axis}, not per channel")
    return q.zero_point, q.scale


def _add_qlinear(g, anchor: str, x, y: str, attrs: dict, w, bias, source: str) -> None:
    """Insert a qlinear op computing y from x (a tensor, or [x, residual]) in ``anchor``'s
    place."""
    attrs["form"] = gemm_form(attrs, w, bias, source)
    wname = f"{source}.weights"
    g.graph["constants"][wname] = np.asarray(w)
    attrs["w"] = wname
    order = g.graph["order"]
    name = f"{source}.qlinear"
    add_op(g, name, "qlinear", [x] if isinstance(x, str) else x, [y], attrs=attrs, source=source)
    order.remove(name)
    order.insert(order.index(anchor), name)


def _shape_weights(op: str, w: np.ndarray, a: dict, source: str) -> tuple[str, np.ndarray]:
    if op == "Conv" or op in ("QLinearConv", "ConvInteger"):
        return "conv", w
    if w.ndim != 2:
        raise CompileError(f"node {source}: MatMul weights must be 2-D, not shape {w.shape}")
    if op == "Gemm":
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise CompileError(f"node {source}: Gemm with transA, alpha or beta is not supported")
        if a.get("transB", 0):
            return "matmul", w.T
    return "matmul", w


def fuse_qlinear(g, config):
    """QDQ and QOperator quantized Conv / MatMul / Gemm with constant weights -> qlinear."""
    consts = g.graph["constants"]
    tensors = g.graph["tensors"]
    for n in ops_in_order(g):
        if n not in g:
            continue
        node = g.nodes[n]
        op, ins, src = node["op"], node["inputs"], node["source"]
        if op in ("Conv", "MatMul", "Gemm"):
            fused = _fuse_qdq(g, n, config)
            if fused:
                continue
        elif op in ("QLinearConv", "QLinearMatMul"):
            w_t = ins[3]
            if w_t not in consts:
                continue
            xq = qparams_of(consts[ins[1]], consts[ins[2]])
            wq = qparams_of(consts[ins[4]], consts[ins[5]], 0 if op == "QLinearConv" else 1)
            yq = qparams_of(consts[ins[6]], consts[ins[7]])
            bias = consts[ins[8]] if op == "QLinearConv" and len(ins) > 8 and ins[8] else None
            kind, w = _shape_weights(op, consts[w_t], node["attrs"], src)
            attrs = _conv_attrs(node, w.shape) if kind == "conv" else {"kind": "matmul"}
            attrs.update(x_q=xq, y_q=yq, w_dtype=wq.dtype)
            attrs["w_zp"], attrs["w_scale"] = _weight_q(w, wq, kind, src)
            _add_qlinear(g, n, ins[0], node["outputs"][0], attrs, w, bias, src)
            tensors[node["outputs"][0]] = replace(tensors[node["outputs"][0]], kind="quant", q=yq)
            _remove(g, n)
        elif op == "QGemm":  # com.microsoft: A, a_s, a_zp, B, b_s, b_zp, [C, y_s, y_zp]
            a = node["attrs"]
            if (
                ins[3] not in consts
                or len(ins) < 9
                or not ins[7]
                or a.get("transA", 0)
                or a.get("alpha", 1.0) != 1.0
            ):
                continue
            trans_b = bool(a.get("transB", 0))
            xq = qparams_of(consts[ins[1]], consts[ins[2]])
            wq = qparams_of(consts[ins[4]], consts[ins[5]], 1)
            yq = qparams_of(consts[ins[7]], consts[ins[8]])
            w = consts[ins[3]].T if trans_b else consts[ins[3]]
            bias = consts[ins[6]].reshape(-1) if ins[6] else None
            attrs = {"kind": "matmul", "x_q": xq, "y_q": yq, "w_dtype": wq.dtype}
            attrs["w_zp"], attrs["w_scale"] = wq.zero_point, wq.scale
            _add_qlinear(g, n, ins[0], node["outputs"][0], attrs, w, bias, src)
            tensors[node["outputs"][0]] = replace(tensors[node["outputs"][0]], kind="quant", q=yq)
            _remove(g, n)
        elif op in ("MatMulInteger", "ConvInteger"):
            if ins[1] not in consts:
                continue
            w = consts[ins[1]]
            dt = {np.int8: "int8", np.uint8: "uint8"}[w.dtype.type]
            xz = consts[ins[2]] if len(ins) > 2 and ins[2] else None
            if xz is None:  # the zero point 0 of the input's own type
                xdt = g.graph.get("elem_types", {}).get(ins[0], "uint8")
                xq = qparams_of(1.0, np.zeros(1, {"int8": np.int8}.get(xdt, np.uint8)))
            else:
                xq = qparams_of(1.0, xz)
            wz = consts[ins[3]] if len(ins) > 3 and ins[3] else np.zeros(1, w.dtype)
            wq = qparams_of(1.0, wz, 0 if op == "ConvInteger" else 1)
            kind, w = _shape_weights(op, w, node["attrs"], src)
            attrs = _conv_attrs(node, w.shape) if kind == "conv" else {"kind": "matmul"}
            attrs.update(x_q=xq, y_q=None, w_dtype=dt)
            attrs["w_zp"], attrs["w_scale"] = wq.zero_point, wq.scale
            _add_qlinear(g, n, ins[0], node["outputs"][0], attrs, w, None, src)
            _remove(g, n)
    rebuild_edges(g)
    return g


def _fuse_qdq(g, n: str, config) -> bool:
    node = g.nodes[n]
    consts, ins, src = g.graph["constants"], node["inputs"], node["source"]
    xs, ws = _dq_source(g, ins[0]), _dq_source(g, ins[1])
    declared = g.graph.get("weight_formats", {}).get(src)
    mx = declared in MX_FORMATS and ins[1] in consts and _mx_source(g, ins[0]) is not None
    if mx:  # real values: the input rounded to MX blocks, the weights MX values
        x_t, x_fmt, mx_axis = _mx_source(g, ins[0])
        one, zero = np.ones(1), np.zeros(1, np.int64)
        xs, ws = (x_t, QParams(one, zero, x_fmt)), (ins[1], QParams(one, zero, declared))
    if ws is not None and ws[1].dtype in FLOAT_ACTIVATIONS and ws[0] in consts:
        fmt = ws[1].dtype  # float8 weight codes -> the compiler's integers
        name = f"{src}.float8_weights"
        consts[name] = float_ints(consts[ws[0]], fmt)
        ws = (name, replace(ws[1], scale=ws[1].scale.astype(np.float64) * 2.0 ** -units(fmt)))
    if ws is None and declared in FLOAT_WEIGHTS and ins[1] in consts:
        ws = _float_weights(g, node, declared)
    if xs is None or ws is None or xs[0] in consts:
        return False
    if ws[0] not in consts:
        if xs[1].dtype in FLOAT_ACTIVATIONS or ws[1].dtype in FLOAT_ACTIVATIONS:
            return False  # the host runs it in float
        return _fuse_dynamic_matmul(g, n, xs, ws)

    if not xs[1].per_tensor:
        return False
    out = node["outputs"][0]
    clamp_ops, t, bias_add, res_add = [], out, None, None
    # [Add bias] [Add residual] [Relu | Clip]* then QuantizeLinear, each the only reader
    while True:
        cons = consumers(g, t)
        if len(cons) != 1 or t in g.graph["outputs"]:
            return False
        c = g.nodes[cons[0]]
        if c["op"] == "Add" and res_add is None and not clamp_ops:
            other = [i for i in c["inputs"] if i != t]
            n_out = consts[ws[0]].shape[-1]
            if (
                bias_add is None
                and node["op"] == "MatMul"
                and len(other) == 1
                and other[0] in consts
                and consts[other[0]].size == n_out
            ):
                bias_add = (cons[0], other[0])
                t = c["outputs"][0]
                continue
            rs = _dq_source(g, other[0]) if len(other) == 1 else None
            shapes = g.graph["tensors"]
            if (
                rs is not None
                and rs[0] not in consts
                and other[0] in shapes
                and shapes[other[0]].shape == shapes[t].shape
            ):
                res_add = (cons[0], rs)  # a residual: fused when its scale allows (below)
                t = c["outputs"][0]
                continue
        if c["op"] in ("Relu", "Clip") and all(not i or i in consts for i in c["inputs"][1:]):
            clamp_ops.append(cons[0])
            t = c["outputs"][0]
            continue
        if c["op"] != "QuantizeLinear" or not all(not i or i in consts for i in c["inputs"][1:]):
            return False
        q_node = cons[0]
        break
    qn = g.nodes[q_node]
    zp = consts[qn["inputs"][2]] if len(qn["inputs"]) > 2 and qn["inputs"][2] else None
    yq = qparams_of(consts[qn["inputs"][1]], zp)
    if not yq.per_tensor or yq.dtype not in ("int8", "uint8"):
        return False
    codes, wq = consts[ws[0]], ws[1]
    kind, w = _shape_weights(node["op"], codes, node["attrs"], src)
    if mx:
        # MX blocks run along a MatMul's K, or a Conv's channels (each tap's, channels last);
        # anything else (a grouped Conv, blocks along another axis, a residual): the host
        conv_ok = kind == "conv" and mx_axis == 1 and node["attrs"].get("group", 1) == 1
        if res_add is not None or not (conv_ok or (kind == "matmul" and mx_axis == -1)):
            return False
        return _fuse_mx(g, n, config, xs, w, yq, bias_add, clamp_ops, q_node)
    if (
        kind == "matmul"
        and node["op"] == "Gemm"
        and node["attrs"].get("transB", 0)
        and wq.axis is not None
    ):
        wq = replace(wq, axis=1)
    attrs = _conv_attrs(node, w.shape) if kind == "conv" else {"kind": "matmul"}
    if kind == "matmul" and len(g.graph["tensors"][ins[0]].shape) < 2:
        return False
    bias = None
    bias_t = ins[2] if len(ins) > 2 and ins[2] else (bias_add[1] if bias_add else None)
    if bias_t:
        bias = _bias_codes(g, bias_t, xs[1], wq, src)
        if bias is None:
            return False
        if wq.dtype in FLOAT_WEIGHTS or wq.dtype in FLOAT_ACTIVATIONS:
            w, wq = _coarsen_for_bias(w, wq, kind, bias.reshape(-1))
            bias = _bias_codes(g, bias_t, xs[1], wq, src)
        bias = bias.reshape(-1)
    declared = g.graph.get("weight_formats", {}).get(src, wq.dtype)
    attrs.update(x_q=xs[1], y_q=yq, w_dtype=declared)
    attrs["w_zp"], attrs["w_scale"] = _weight_q(w, wq, kind, src)
    attrs["clamp"] = _clamp(g, clamp_ops, yq)
    inputs = [xs[0]]
    if res_add is not None:
        # the post-processing unit adds the residual's codes shifted by a power of two of the
        # accumulator's unit: only a residual at such a scale adds exactly
        k = residual_shift(res_add[1][1], xs[1], attrs["w_scale"])
        if k is None:
            return False
        attrs.update(res_q=res_add[1][1], res_shift=k)
        inputs.append(res_add[1][0])
    # in the Add's place when there is a residual: its codes may be computed after the layer
    anchor = res_add[0] if res_add is not None else n
    _add_qlinear(g, anchor, inputs, qn["outputs"][0], attrs, w, bias, src)
    g.graph["tensors"][qn["outputs"][0]] = replace(
        g.graph["tensors"][qn["outputs"][0]], kind="quant", q=yq
    )
    adds = [a[0] for a in (bias_add, res_add) if a]
    for m in [n, *adds, *clamp_ops, q_node]:
        for t in g.nodes[m]["outputs"]:
            if t != qn["outputs"][0]:
                g.graph["tensors"].pop(t, None)
        _remove(g, m)
    return True


def _mx_source(g, t: str):
    """(tensor, MX format, axis) when ``t`` is an MXQuantize's output
    (``compiler.format_ops``)."""
    prod = producer_map(g).get(t)
    if prod is None or g.nodes[prod]["op"] != "MXQuantize":
        return None
    a = g.nodes[prod]["attrs"]
    return g.nodes[prod]["inputs"][0], a["format"], a.get("axis", -1)


def _fuse_mx(g, n, config, xs, w, yq, bias_add, clamp_ops, q_node) -> bool:
    """An MX MatMul / Gemm -> qlinear: the weights' element codes and block scales, the bias
    in real values; the accelerator sums the blocks, the host adds the bias and requantizes
    (``quant._mx_form``)."""
    from qaccel import modes

    node, consts = g.nodes[n], g.graph["constants"]
    ins, src = node["inputs"], node["source"]
    w_fmt = g.graph["weight_formats"][src]
    w = np.asarray(w, np.float64)
    per_column = w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1) if w.ndim == 4 else w.T
    codes, scales = _mx_codes(per_column, w_fmt, src)  # N x K (a Conv's K: kh, kw, c)
    bias = None
    bias_t = ins[2] if len(ins) > 2 and ins[2] else (bias_add[1] if bias_add else None)
    if bias_t:
        bs = _dq_source(g, bias_t)
        if bias_t in consts:
            bias = consts[bias_t].astype(np.float64).reshape(-1)
        elif bs is not None and bs[0] in consts:
            q = bs[1]
            bias = ((consts[bs[0]] - q.zero_point) * q.scale.astype(np.float64)).reshape(-1)
        else:
            return False
    window = tuple(config.array.mx_scale_range) if config.array else modes.MX_SCALE_RANGE
    qn = g.nodes[q_node]
    attrs = {"kind": "matmul"} if w.ndim == 2 else _conv_attrs(node, w.shape)
    attrs.update(x_q=xs[1], y_q=yq, w_dtype=w_fmt, channels_last=w.ndim == 4)
    attrs.update(w_zp=np.zeros(1, np.int64), w_scale=np.ones(1), clamp=_clamp(g, clamp_ops, yq))
    attrs.update(w_mx_scales=scales.T, mx_window=window)
    _add_qlinear(g, n, [xs[0]], qn["outputs"][0], attrs, codes.T, bias, src)
    g.graph["tensors"][qn["outputs"][0]] = replace(
        g.graph["tensors"][qn["outputs"][0]], kind="quant", q=yq
    )
    for m in [n, *([bias_add[0]] if bias_add else []), *clamp_ops, q_node]:
        for out in g.nodes[m]["outputs"]:
            if out != qn["outputs"][0]:
                g.graph["tensors"].pop(out, None)
        _remove(g, m)
    return True


def _mx_codes(values: np.ndarray, fmt: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """MX values (rows of blocks) -> (element codes, E8M0 scale codes). A block's scale is
    the one MX quantization gives it, or one less: an element rounded up to the format's
    largest magnitude (MXINT8's -2) moves the block's maximum to the next power of two."""
    from qaccel import formats

    f = formats.get_mx_format(fmt)
    t = f.quantize(values)
    codes, scales = t.elements.astype(np.int64), t.scales.astype(np.int64)
    k = values.shape[1]

    def blocks(v):
        padded = np.pad(v, ((0, 0), (0, -k % f.block)))
        return padded.reshape(v.shape[0], -1, f.block)

    for r, b in np.argwhere((blocks(t.dequantize()) != blocks(values)).any(axis=-1)).tolist():
        if scales[r, b] in (0, 0xFF):
            continue
        block = values[r, b * f.block : (b + 1) * f.block]
        e = int(scales[r, b]) - 128
        c = f.element.encode(block / 2.0**e)
        if np.array_equal(f.element.decode(c) * 2.0**e, block):
            codes[r, b * f.block : (b + 1) * f.block], scales[r, b] = c, e + 127
    if not np.array_equal(f.dequantize(scales, codes), values):
        raise CompileError(f"node {source}: weights declared {fmt} are not {fmt} values")
    return codes, scales


def _float_weights(g, node, fmt: str):
    """Float weights the quantizer rounded to ``fmt`` (``compiler.ptq``): a constant of the
    integers the accumulator sees and their QParams."""
    w = g.graph["constants"][node["inputs"][1]]
    trans_b = node["op"] == "Gemm" and node["attrs"].get("transB", 0)
    axis = 0 if node["op"] == "Conv" or trans_b else w.ndim - 1
    ints, scales = float_weight_codes(w, fmt, axis)
    name = f"{node['source']}.float_weights"
    g.graph["constants"][name] = ints
    return name, QParams(scales.astype(np.float64), np.zeros(1, np.int64), fmt, axis)


def _coarsen_for_bias(w: np.ndarray, wq: QParams, kind: str, bias: np.ndarray):
    """``quant.coarsen_for_bias`` on a layer's weights (channels along its output axis)."""
    axis = 0 if kind == "conv" else w.ndim - 1
    wc = np.moveaxis(np.asarray(w, np.int64), axis, 0)
    scale = np.broadcast_to(wq.scale.astype(np.float64).reshape(-1), (wc.shape[0],))
    wc, scale = coarsen_for_bias(wc, scale, wq.dtype, bias)
    return np.moveaxis(wc, 0, axis), replace(wq, scale=scale, axis=axis)


def _quant_output(g, t: str):
    """The QuantizeLinear that is the only reader of ``t``: (its op, QParams) or None."""
    cons = consumers(g, t)
    if len(cons) != 1 or t in g.graph["outputs"] or g.nodes[cons[0]]["op"] != "QuantizeLinear":
        return None
    qn, consts = g.nodes[cons[0]], g.graph["constants"]
    if not all(not i or i in consts for i in qn["inputs"][1:]):
        return None
    zp = consts[qn["inputs"][2]] if len(qn["inputs"]) > 2 and qn["inputs"][2] else None
    return cons[0], qparams_of(consts[qn["inputs"][1]], zp)


def _fuse_dynamic_matmul(g, n: str, xs, ws) -> bool:
    """DequantizeLinear x2 -> MatMul -> QuantizeLinear of two activations -> the host's
    integer QLinearMatMul (onnxruntime runs the same fusion)."""
    node = g.nodes[n]
    found = _quant_output(g, node["outputs"][0])
    if node["op"] != "MatMul" or found is None:
        return False
    q_node, yq = found
    if not (xs[1].per_tensor and ws[1].per_tensor and yq.per_tensor):
        return False
    consts, src = g.graph["constants"], node["source"]
    names = []
    for tag, q in (("a", xs[1]), ("b", ws[1]), ("y", yq)):
        dt = {"int8": np.int8, "uint8": np.uint8}[q.dtype]
        consts[f"{src}.{tag}_scale"] = q.scale.astype(np.float32).reshape(())
        consts[f"{src}.{tag}_zp"] = q.zero_point.astype(dt).reshape(())
        names.append((f"{src}.{tag}_scale", f"{src}.{tag}_zp"))
    y = g.nodes[q_node]["outputs"][0]
    inputs = [xs[0], *names[0], ws[0], *names[1], *names[2]]
    order = g.graph["order"]
    name = f"{src}.qmatmul"
    add_op(g, name, "QLinearMatMul", inputs, [y], source=src)
    order.remove(name)
    order.insert(order.index(n), name)
    g.graph["tensors"][y] = replace(g.graph["tensors"][y], kind="quant", q=yq)
    g.graph["tensors"].pop(node["outputs"][0], None)
    _remove(g, n)
    _remove(g, q_node)
    return True


def _bias_codes(g, t: str, xq: QParams, wq: QParams, source: str):
    """Int32 bias codes at scale sx * sw (sx of one unit of the input's integers,
    ``unit_scale``): a DequantizeLinear of int32 codes at that scale, or a float constant
    quantized to it."""
    consts = g.graph["constants"]
    src = _dq_source(g, t)
    target = unit_scale(xq) * wq.scale.astype(np.float64)
    if src is not None and src[0] in consts and src[1].dtype == "int32":
        codes, q = consts[src[0]].astype(np.int64), src[1]
        if np.allclose(q.scale.astype(np.float64) * np.ones_like(target), target, rtol=1e-5):
            return codes
        real = (codes - q.zero_point.astype(np.int64)) * q.scale.astype(np.float64)
        return np.rint(real / target).astype(np.int64)
    if t in consts:  # too large for int64 is too large for 32 bits: gemm_form says so
        codes = np.rint(consts[t].astype(np.float64) / target)
        return np.clip(codes, -(2**62), 2**62).astype(np.int64)
    return None


def _clamp(g, clamp_ops: list[str], yq: QParams):
    """The Relu/Clip between a GEMM and its QuantizeLinear as a clamp of the output codes
    (exact: quantization is monotone)."""
    lo, hi = yq.code_range
    zp, _s = int(yq.zero_point.reshape(-1)[0]), float(yq.scale.reshape(-1)[0])
    consts = g.graph["constants"]
    for c in clamp_ops:
        node = g.nodes[c]
        if node["op"] == "Relu":
            lo = max(lo, zp)
            continue
        ins, a = node["inputs"], node["attrs"]
        cmin = consts[ins[1]] if len(ins) > 1 and ins[1] else a.get("min")
        cmax = consts[ins[2]] if len(ins) > 2 and ins[2] else a.get("max")
        from compiler.quant import quantize

        if cmin is not None:
            lo = max(lo, int(quantize(np.float32(cmin), yq)))
        if cmax is not None:
            hi = min(hi, int(quantize(np.float32(cmax), yq)))
    return (lo, hi)


def eliminate_dead(g, config):
    """Ops whose results nothing reads, and constants no op reads."""
    live = set(g.graph["outputs"])
    for n in reversed(ops_in_order(g)):
        node = g.nodes[n]
        if not any(t in live for t in node["outputs"]):
            for t in node["outputs"]:
                g.graph["tensors"].pop(t, None)
            _remove(g, n)
            continue
        live.update(t for t in node["inputs"] if t)
    g.graph["constants"] = {k: v for k, v in g.graph["constants"].items() if k in live}
    rebuild_edges(g)
    return g


# --- lowering --------------------------------------------------------------------------------


def lower_gemms(g, config):
    """qlinear -> im2col (host) [-> residual_rows (host)] -> qgemm -> fold_rows (host)."""
    tensors = g.graph["tensors"]
    for n in ops_in_order(g):
        node = g.nodes[n]
        if node["op"] != "qlinear":
            continue
        from compiler.quant import gemm_rows

        a, src = node["attrs"], node["source"]
        x, y = node["inputs"][0], node["outputs"][0]
        x_shape = tensors[x].shape if x in tensors else None
        if x_shape is None:
            raise CompileError(f"node {src}: the input's shape is unknown")
        if a["kind"] == "conv" and len(x_shape) != 4:
            raise CompileError(f"node {src}: a Conv input must be N x C x H x W, not {x_shape}")
        dummy = np.zeros(x_shape, dtype=np.int64)
        rows, how = gemm_rows(dummy, a)
        form = a["form"]
        if rows.shape[1] != form.weights.shape[0]:
            raise CompileError(
                f"node {src}: the input has {rows.shape[1]} values per row, the weights "
                f"{form.weights.shape[0]}"
            )
        m, k, nn = rows.shape[0], form.weights.shape[0], form.weights.shape[1]
        order = g.graph["order"]
        at = order.index(n)
        _remove(g, n)
        r_t, o_t = f"{src}.rows", f"{src}.gemm_out"
        tensors[r_t] = Tensor((m, k), "quant")
        tensors[o_t] = Tensor((m, nn), "quant")
        geometry = ("kind", "kernel", "strides", "dilations", "pads", "group", "channels_last")
        base = {k: a[k] for k in geometry if k in a}
        base.update(x_q=a["x_q"], x_shift=form.x_shift)
        names = [f"{src}.im2col", f"{src}.gemm", f"{src}.fold"]
        add_op(g, names[0], "im2col", [x], [r_t], attrs=base, source=src)
        gemm_ins = [r_t]
        if form.mx:  # real rows -> MX element codes and block scales
            codes_t, scales_t = f"{src}.mx_codes", f"{src}.mx_scales"
            tensors[codes_t] = Tensor((m, k), "quant")
            block = formats.get_mx_format(form.x_format).block
            tensors[scales_t] = Tensor((m, -(-k // block)), "quant")
            names.insert(1, f"{src}.mx_rows")
            add_op(
                g,
                names[1],
                "mx_rows",
                [r_t],
                [codes_t, scales_t],
                attrs={"format": form.x_format},
                source=src,
            )
            gemm_ins = [codes_t, scales_t]
        if len(node["inputs"]) > 1:  # a fused residual, as M x N rows of codes
            res_t = f"{src}.residual_rows"
            tensors[res_t] = Tensor((m, nn), "quant")
            names.insert(1, res_t)
            add_op(
                g,
                res_t,
                "residual_rows",
                [node["inputs"][1]],
                [res_t],
                attrs={"how": how, "codes_shift": form.res_codes_shift},
                source=src,
            )
            gemm_ins.append(res_t)
        add_op(
            g,
            f"{src}.gemm",
            "qgemm",
            gemm_ins,
            [o_t],
            attrs={
                "form": form,
                "m": m,
                "k": k,
                "n": nn,
                "w_dtype": a["w_dtype"],
                "kind": a["kind"],
                "x_dtype": a["x_q"].dtype,
            },
            source=src,
        )
        add_op(g, names[-1], "fold_rows", [o_t], [y], attrs={"how": how}, source=src)
        for i, name in enumerate(names):
            order.remove(name)
            order.insert(at + i, name)
    rebuild_edges(g)
    return g


def weight_format(w: np.ndarray, declared: str) -> str:
    """The format of centered weights: the declared integer format, or a narrower one when
    the source said so (QONNX bit widths)."""
    if declared in ("int8", "uint8"):
        if w.size and (w.min() < -128 or w.max() > 127):
            return "int9"
        return "int8"
    return declared


def assign_units(g, config):
    """Each qgemm to a unit by its weight format: the LUT core when it has the format, else an
    array mode ``weight*int8`` or ``weight*uint8``, else the host. Activation codes move
    between int8 and uint8 exactly (by 128, the zero point with them), so a layer takes either
    activation the unit has, its own first; float8 activations take a mode of their own
    format. The choice and the mode go into the op."""
    from qaccel.isa import Geometry

    geo = Geometry.of(config)
    lut = {(w, geo.lut_activation) for w in geo.lut_modes} if config.lut is not None else set()
    array = {(p.weight, p.activation) for p in config.array.modes} if config.array else set()
    for n in ops_in_order(g):
        node = g.nodes[n]
        if node["op"] != "qgemm":
            continue
        a = node["attrs"]
        form = a["form"]
        wf = weight_format(form.weights, a.get("w_dtype", "int8"))
        a["w_format"] = wf
        own = a["x_dtype"]
        as_is = own not in ("int8", "uint8")  # float, posit, MX or narrow integer codes
        acts = [own] if as_is else [own, "int8" if own == "uint8" else "uint8"]
        if own in NARROW_INTS:  # their codes are int8 codes too
            acts.append("int8")
        act_name = own if as_is else "int8"
        choice = next(
            (
                (unit, act)
                for unit, pairs in (("lut", lut), ("array", array))
                for act in acts
                if (wf, act) in pairs
            ),
            None,
        )
        if wf == "binary" and not np.all(np.abs(form.weights) == 1):
            node["unit"], a["mode"] = "host", f"{wf}*int8"
            a["why_host"] = "binary weights cannot hold the zeros of a grouped convolution"
        elif choice is None:
            node["unit"], a["mode"] = "host", f"{wf}*{act_name}"
            what = f"{own}" if as_is else "8-bit"
            a["why_host"] = f"no unit runs {wf} weights with {what} activations"
        else:
            unit, act = choice
            node["unit"], a["mode"] = unit, f"{wf}*{act}"
            _retarget(g, n, act)
    return g


def _retarget(g, name: str, activation: str) -> None:
    """Feed qgemm ``name`` ``activation`` codes: its input shift (in the im2col before it)
    and the zero-point term folded into its bias follow."""
    node = g.nodes[name]
    a = node["attrs"]
    form = a["form"]
    shift = {("uint8", "int8"): -128, ("int8", "uint8"): 128}.get((a["x_dtype"], activation), 0)
    if shift == form.x_shift:
        return
    bias = form.bias - (shift - form.x_shift) * form.weights.sum(axis=0)
    if bias.size and (bias.min() < -(2**31) or bias.max() >= 2**31):
        raise CompileError(
            f"node {node['source']}: the bias with the activation zero point folded in does "
            "not fit 32 bits"
        )
    a["form"] = replace(form, x_shift=shift, bias=bias)
    for pred in g.predecessors(name):
        if g.nodes[pred]["op"] == "im2col":
            g.nodes[pred]["attrs"]["x_shift"] = shift


def _weight_codes(values: np.ndarray, fmt: str) -> np.ndarray:
    """Weight values as the codes the units take (integer formats: the values themselves)."""
    from qaccel import formats

    f = formats.get_format(fmt)
    if f.kind == "int":
        return values
    one = 2.0 ** units(fmt)  # the compiler's integers are value * 2**units
    lookup = {}
    for code in range(1 << f.bits):
        try:
            v = float(f.decode(np.array([code]))[0])
        except ValueError:  # ternary's code 2 is not a value
            continue
        if v == v:
            lookup.setdefault(v * one, code)
    bad = [v for v in np.unique(values).tolist() if v not in lookup]
    if bad:
        raise CompileError(f"weights {bad[:4]} are not values of {fmt}")
    return np.vectorize(lambda v: lookup[v], otypes=[np.int64])(values)


def codegen(g, config):
    """Each accelerator qgemm -> a Program (``compiler.gemm.lower_gemm``: tiling, double
    buffering, tokens, scratchpad and accumulator allocation) and its predicted timing."""
    from compiler.gemm import lower_gemm
    from compiler.quant import epilogue_of

    for n in ops_in_order(g):
        node = g.nodes[n]
        if node["op"] != "qgemm" or node["unit"] == "host":
            continue
        a = node["attrs"]
        form = a["form"]
        try:
            program = lower_gemm(
                config,
                form.weights if form.mx else _weight_codes(form.weights, a["w_format"]),
                m=a["m"],
                mode=a["mode"],
                unit=node["unit"],
                epilogue=epilogue_of(form),
                w_scales=form.w_scales,
                acc_out="native" if form.mx else "int32",  # MX: exact, for the host
                name=node["source"],
            )
        except (ProgramError, ValueError) as e:
            raise CompileError(
                f"node {node['source']}: cannot be mapped onto {config.name}: {e}"
            ) from None
        a["program"] = program
    return g


def predict_timing(g, config):
    """Each accelerator layer's cycles, busy and stall counters: the fast engine on its
    Program (equal to the cycle engine and the RTL)."""
    from sim.fast import run_fast

    for n in ops_in_order(g):
        node = g.nodes[n]
        if node["op"] == "qgemm" and node["unit"] != "host":
            node["attrs"]["timing"] = run_fast(
                node["attrs"]["program"], check=False
            )  # built checked
    return g


PIPELINE: list[tuple[str, Pass]] = [
    ("fold_constants", fold_constants),
    ("fold_batchnorm", fold_batchnorm),
    ("fuse_qlinear", fuse_qlinear),
    ("fold_constants", fold_constants),
    ("eliminate_dead", eliminate_dead),
    ("lower_gemms", lower_gemms),
    ("assign_units", assign_units),
    ("codegen", codegen),
    ("predict_timing", predict_timing),
]


def run_pipeline(g, config, *, until: str | None = None, status=None):
    """Every pass in order, ``verify`` after each; stop after ``until`` if given."""
    import time

    seconds = {}
    for i, (name, fn) in enumerate(PIPELINE):
        if status:
            status(i, len(PIPELINE), name)
        start = time.perf_counter()
        g = fn(g, config)
        verify(g)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
        g.graph["pass_s"] = seconds
        if name == until:
            break
    return g
