"""Runs an IR graph op by op: host ops in numpy, accelerator GEMMs on the simulator's
functional executor (``sim.executor``) or, for the integer reference, on the exact integer
model of the same GEMM (``compiler.quant.gemm_reference``). The two must agree bit for bit.
"""

from __future__ import annotations

import numpy as np

from compiler.graph import CompileError, QParams, ops_in_order
from compiler.host_ops import HOST_OPS, QLINEAR_OPS
from compiler.quant import (
    FLOAT_ACTIVATIONS,
    dequantize,
    fold_rows,
    gemm_reference,
    gemm_rows,
    mx_epilogue,
    mx_rows,
    qlinear_reference,
    quantize,
    residual_rows,
)


def gemm_inputs(ins: list, form) -> dict:
    """A qgemm op's operands as its Program's input tensors."""
    second = "x_scales" if form.mx else "residual"
    return {"x": ins[0]} | ({second: ins[1]} if len(ins) > 1 else {})


__all__ = ["execute", "gemm_inputs", "qparams_of"]

_DTYPES = {np.dtype(np.int8): "int8", np.dtype(np.uint8): "uint8", np.dtype(np.int32): "int32"}


def qparams_of(scale, zero_point, axis: int | None = 1, dtype: str | None = None) -> QParams:
    """QParams from a Quantize/DequantizeLinear's scale and zero point (the zero point's
    element type is the codes', unless ``dtype`` names it; none means uint8). Float codes
    (``dtype`` in FLOAT_ACTIVATIONS, the frontend's name for an ONNX float8 type) have zero
    point 0."""
    scale = np.asarray(scale, dtype=np.float32).reshape(-1)
    if zero_point is None:
        zp, dt = np.zeros(1, np.int64), dtype or "uint8"
    else:
        zp_arr = np.asarray(zero_point)
        dt = dtype or _DTYPES.get(zp_arr.dtype)
        if dt is None:
            raise CompileError(f"zero points of type {zp_arr.dtype} are not supported")
        zp = zp_arr.astype(np.int64).reshape(-1)
    if dt in FLOAT_ACTIVATIONS and zp.any():
        raise CompileError(f"a {dt} zero point must be 0 (the code of +0.0)")
    per = scale.size > 1 or zp.size > 1
    return QParams(scale, zp, dt, axis if per else None)


def _opt(ins, i):
    return ins[i] if len(ins) > i and ins[i] is not None else None


def _qlinear_host_matmul(a, aq: QParams, b, bq: QParams, yq: QParams | None):
    """onnxruntime's integer MatMul: the exact int32 product of centered codes, then (with an
    output) the float32 multiplier and round half to even."""
    za = aq.zero_point.reshape(-1)[0]
    zb = bq.zero_point.reshape(-1)[0] if bq.axis is None else bq.zero_point.reshape(1, -1)
    acc = (a.astype(np.int64) - za) @ (b.astype(np.int64) - zb)
    if yq is None:
        return acc
    m = (np.float32(aq.scale.reshape(-1)[0]) * bq.scale.astype(np.float32)) / np.float32(
        yq.scale.reshape(-1)[0]
    )
    y = np.rint(acc.astype(np.float32) * m.reshape(-1)) + yq.zero_point.reshape(-1)[0]
    lo, hi = yq.code_range
    return np.clip(y, lo, hi).astype(np.int64)


def _run_qlinear_family(op: str, ins: list, a: dict):
    """QOperator GEMMs left on the host (their weights are not constants)."""
    if op == "QLinearMatMul":
        aq = qparams_of(ins[1], ins[2])
        bq = qparams_of(ins[4], ins[5])
        yq = qparams_of(ins[6], ins[7])
        return [_qlinear_host_matmul(ins[0], aq, ins[3], bq, yq)]
    if op == "MatMulInteger":
        aq = qparams_of(1.0, _opt(ins, 2) if _opt(ins, 2) is not None else np.int8(0))
        bq = qparams_of(1.0, _opt(ins, 3) if _opt(ins, 3) is not None else np.int8(0))
        return [_qlinear_host_matmul(ins[0], aq, ins[1], bq, None).astype(np.int64)]
    if op == "QGemm":  # dequantize, the float Gemm, quantize (or a float output)
        xs = dequantize(ins[0], qparams_of(ins[1], ins[2]))
        ws = dequantize(ins[3], qparams_of(ins[4], ins[5], 0 if a.get("transB", 0) else 1))
        c = _opt(ins, 6)
        if c is not None:
            c = c.astype(np.float32) * np.float32(ins[1]) * np.asarray(ins[4], np.float32)
        fa = {k: v for k, v in a.items() if k in ("transA", "transB", "alpha")}
        (y,) = HOST_OPS["Gemm"]([xs, ws] + ([c] if c is not None else []), fa)
        return [y if _opt(ins, 7) is None else quantize(y, qparams_of(ins[7], _opt(ins, 8)))]
    if op in ("QLinearConv", "ConvInteger"):
        from compiler.quant import conv_attrs, gemm_form, qlinear_reference

        if op == "QLinearConv":
            xq, wq = qparams_of(ins[1], ins[2]), qparams_of(ins[4], ins[5], 0)
            yq, w, bias = qparams_of(ins[6], ins[7]), ins[3], _opt(ins, 8)
        else:
            xq = qparams_of(1.0, _opt(ins, 2) if _opt(ins, 2) is not None else np.uint8(0))
            w = ins[1]
            wq = qparams_of(1.0, _opt(ins, 3) if _opt(ins, 3) is not None else w.dtype.type(0), 0)
            yq, bias = None, None
        attrs = conv_attrs(a, w.shape, op) | {"x_q": xq, "y_q": yq}
        attrs |= {"w_zp": wq.zero_point, "w_scale": wq.scale}
        return [qlinear_reference(ins[0], attrs, gemm_form(attrs, w, bias, op))]
    raise KeyError(op)


def run_op(node: dict, ins: list, *, programs: str) -> list:
    """One op's outputs. ``programs``: "sim" runs accelerator GEMMs on the executor,
    "reference" on the integer model."""
    op, a = node["op"], node["attrs"]
    if op == "QuantizeLinear":
        q = qparams_of(ins[1], _opt(ins, 2), a.get("axis", 1), a.get("dtype"))
        return [quantize(ins[0], q)]
    if op == "DequantizeLinear":
        dtype = a.get("dtype") or _DTYPES.get(np.asarray(ins[0]).dtype)
        return [dequantize(ins[0], qparams_of(ins[1], _opt(ins, 2), a.get("axis", 1), dtype))]
    if op in QLINEAR_OPS:
        return _run_qlinear_elementwise(op, ins, a)
    if op in ("QLinearMatMul", "MatMulInteger", "QLinearConv", "ConvInteger", "QGemm"):
        return _run_qlinear_family(op, ins, a)
    if op == "qlinear":
        return [qlinear_reference(ins[0], a, a["form"], _opt(ins, 1))]
    if op == "im2col":
        rows, _ = gemm_rows(ins[0], a)
        return [rows + a["x_shift"]]
    if op == "residual_rows":
        return [residual_rows(ins[0], a["how"], a["codes_shift"])]
    if op == "mx_rows":
        return list(mx_rows(ins[0], a["format"]))
    if op == "MXQuantize":
        from qaccel import formats

        x = np.moveaxis(np.asarray(ins[0], np.float64), a.get("axis", -1), -1)
        t = formats.get_mx_format(a["format"]).quantize(x)
        return [np.moveaxis(t.dequantize(), -1, a.get("axis", -1)).astype(np.float32)]
    if op == "qgemm":
        form = a["form"]
        if programs == "sim" and node["unit"] != "host":
            from sim.executor import run_program

            result = run_program(a["program"], gemm_inputs(ins, form))
            y = result.outputs["y"]
            if form.mx:
                if result.counters["INVALID"]:
                    raise CompileError(
                        f"node {node['source']}: an MX block's scales fall outside the "
                        "array's scale window: its sum was dropped"
                    )
                return [mx_epilogue(y, form)]
            if form.out_dtype == "int32":
                y = y + form.bias
            return [np.asarray(y, dtype=np.int64)]
        if form.mx:
            return [gemm_reference(ins[0], form, x_scales=ins[1], host=node["unit"] == "host")]
        return [gemm_reference(ins[0], form, _opt(ins, 1))]
    if op == "fold_rows":
        return [fold_rows(ins[0], a["how"])]
    if op in ("Quant", "BipolarQuant", "Trunc"):
        from compiler.qonnx import run_qonnx_op

        return run_qonnx_op(op, ins, a)
    if op not in HOST_OPS:
        raise CompileError(f"op {op} (node {node['source']}) is not supported")
    return HOST_OPS[op](ins, a)


def _run_qlinear_elementwise(op: str, ins: list, a: dict):
    """onnxruntime's QLinear elementwise and pooling ops: dequantize, the float op,
    quantize."""
    float_op = QLINEAR_OPS[op]
    if op == "QLinearConcat":  # (y_scale, y_zp, then (x, x_scale, x_zp) triples)
        yq = qparams_of(ins[0], ins[1])
        triples = [ins[i : i + 3] for i in range(2, len(ins), 3)]
    else:
        n_in = {"QLinearAdd": 2, "QLinearMul": 2}.get(op, 1)
        triples = [ins[3 * i : 3 * i + 3] for i in range(n_in)]
        rest = ins[3 * n_in :]
        yq = qparams_of(rest[0], _opt(rest, 1))
    xs = [dequantize(t[0], qparams_of(t[1], _opt(t, 2))) for t in triples]
    float_attrs = dict(a)
    if op == "QLinearAveragePool":
        float_attrs.pop("channels_last", None)
    if op == "QLinearSoftmax":
        float_attrs.pop("opset", None)
    (y,) = HOST_OPS[float_op](xs, float_attrs)
    return [quantize(y, yq)]


def execute(g, inputs: dict, *, programs: str = "reference", keep_all: bool = False, hook=None):
    """Run ``g`` on ``inputs`` (name -> array); return the model outputs (every tensor with
        ``keep_all``). ``hook(op_name, inputs, outputs)`` sees each op's operands and results; what
    it returns, when not None, replaces the results (a test can feed every op a third party's
    values of its inputs)."""
    consts = g.graph["constants"]
    values = dict(inputs)
    for name in g.graph["inputs"]:
        if name not in values:
            raise ValueError(f"input {name!r} is missing (inputs: {g.graph['inputs']})")
        want = g.graph["tensors"][name].shape
        if tuple(np.shape(values[name])) != tuple(want):
            raise ValueError(
                f"input {name!r} must have shape {tuple(want)}, not {np.shape(values[name])}"
            )
    remaining = _last_uses(g) if not keep_all else None
    for i, n in enumerate(ops_in_order(g)):
        node = g.nodes[n]
        ins = [None if not t else (values[t] if t in values else consts[t]) for t in node["inputs"]]
        try:
            outs = run_op(node, ins, programs=programs)
        except CompileError:
            raise
        except (ValueError, IndexError, KeyError, TypeError) as e:
            raise CompileError(f"op {node['op']} (node {node['source']}) failed: {e}") from e
        for t, v in zip(node["outputs"], outs, strict=False):
            values[t] = v
        if hook:
            replaced = hook(n, ins, outs)
            if replaced is not None:
                outs = replaced
                for t, v in zip(node["outputs"], outs, strict=False):
                    values[t] = v
        if remaining is not None:
            for t in remaining.get(i, ()):
                values.pop(t, None)
    return values if keep_all else {t: values[t] for t in g.graph["outputs"]}


def _last_uses(g) -> dict[int, list[str]]:
    """op index -> tensors no later op reads (freed as the graph runs)."""
    last = {}
    order = ops_in_order(g)
    for i, n in enumerate(order):
        for t in g.nodes[n]["inputs"]:
            last[t] = i
    keep = set(g.graph["outputs"]) | set(g.graph["inputs"])
    out: dict[int, list[str]] = {}
    for t, i in last.items():
        if t not in keep and t not in g.graph["constants"]:
            out.setdefault(i, []).append(t)
    return out
