"""QONNX models (Brevitas and FINN exports: ``Quant``, ``BipolarQuant``, ``Trunc``) -> the QDQ
form the frontend reads.

- ``Quant`` of a constant (weights) becomes a DequantizeLinear of its codes in an int8
  container, the format named in the model's metadata for the layer that reads it: a signed
  b-bit quantizer is int<b>; a narrow signed 2-bit one (codes -1, 0, 1) is ternary.
  ``BipolarQuant`` of a constant is binary (codes -1, +1).
- ``Quant`` of an activation becomes QuantizeLinear -> DequantizeLinear: 8 bits, signed
  (int8) or not (uint8), rounding ROUND (half to even, as ONNX's QuantizeLinear), one scale.
- ``Trunc`` and anything else stays for the host (``run_qonnx_op``).

QONNX's definitions (qonnx.custom_op.general): Quant(x) = (clip(round(x / s + z), qmin, qmax)
- z) * s, with qmin, qmax from the bit width, ``signed`` and ``narrow``; BipolarQuant(x) =
(+1 if x >= 0 else -1) * s.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.graph import CompileError
from compiler.ptq import METADATA_PREFIX

__all__ = ["from_qonnx", "is_qonnx", "quant_range", "run_qonnx_op"]

QONNX_OPS = ("Quant", "BipolarQuant", "Trunc")
_ROUND = {
    "ROUND": np.rint,
    "CEIL": np.ceil,
    "FLOOR": np.floor,
    "ROUND_TO_ZERO": np.trunc,
}


def is_qonnx(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("Quant", "BipolarQuant") for n in model.graph.node)


def quant_range(bits: int, signed: bool, narrow: bool) -> tuple[int, int]:
    if signed:
        return -(1 << (bits - 1)) + int(narrow), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1 - int(narrow)


def _attrs(node) -> dict:
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in a.items()}


def _quant_codes(x, scale, zp, bits, a: dict) -> np.ndarray:
    mode = a.get("rounding_mode", "ROUND")
    if mode not in _ROUND:
        raise CompileError(f"Quant rounding_mode {mode!r} is not supported")
    lo, hi = quant_range(int(bits), bool(a.get("signed", 1)), bool(a.get("narrow", 0)))
    return np.clip(_ROUND[mode](x / scale + zp), lo, hi)


def run_qonnx_op(op: str, ins: list, a: dict) -> list:
    """A QONNX op on the host, by QONNX's definition (float in, float out)."""
    x = np.asarray(ins[0], dtype=np.float64)
    if op == "BipolarQuant":
        return [(np.where(x >= 0, 1.0, -1.0) * ins[1]).astype(np.float32)]
    scale, zp = np.asarray(ins[1], np.float64), np.asarray(ins[2], np.float64)
    if op == "Quant":
        codes = _quant_codes(x, scale, zp, float(np.asarray(ins[3])), a)
        return [((codes - zp) * scale).astype(np.float32)]
    # Trunc: the integer value's low bits dropped (v1: in_bitwidth - out_bitwidth of them;
    # v2: log2(out_scale / scale)), clamped to the output width, then rounded
    if len(ins) >= 6:  # v2: x, scale, zeropt, in_bitwidth, out_scale, out_bitwidth
        out_scale, out_bits = np.asarray(ins[4], np.float64), float(np.asarray(ins[5]))
        step = 2.0 ** np.round(np.log2(out_scale / scale))
    else:
        out_bits = float(np.asarray(ins[4]))
        step = 2.0 ** (float(np.asarray(ins[3])) - out_bits)
        out_scale = scale * step
    mode = str(a.get("rounding_mode", "FLOOR")).upper()
    if mode not in _ROUND:
        raise CompileError(f"Trunc rounding_mode {mode!r} is not supported")
    lo, hi = quant_range(int(out_bits), bool(a.get("signed", 1)), bool(a.get("narrow", 0)))
    y = np.clip(np.rint(x / scale + zp) / step, lo, hi)
    return [((_ROUND[mode](y) - zp / step) * out_scale).astype(np.float32)]


def _weight_format(op: str, bits: int, a: dict, source: str) -> str:
    if op == "BipolarQuant":
        return "binary"
    signed, narrow = bool(a.get("signed", 1)), bool(a.get("narrow", 0))
    if not signed:
        raise CompileError(f"node {source}: unsigned weight quantizers are not supported")
    if bits == 2 and narrow:
        return "ternary"
    if not 2 <= bits <= 8 or bits != int(bits):
        raise CompileError(f"node {source}: weights of {bits} bits are not supported (2..8)")
    return f"int{int(bits)}"


def from_qonnx(model: onnx.ModelProto) -> onnx.ModelProto:
    """The QDQ form of a QONNX model (module docstring)."""
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(_attrs(n)["value"])
    readers: dict[str, list] = {}
    for n in graph.node:
        for t in n.input:
            readers.setdefault(t, []).append(n)
    nodes, inits, meta = [], [], {}
    for i, n in enumerate(graph.node):
        if n.op_type not in ("Quant", "BipolarQuant"):
            nodes.append(n)
            continue
        src = n.name or f"{n.op_type}_{i}"
        a = _attrs(n)
        for t in n.input[1:]:
            if t not in consts:
                raise CompileError(f"node {src}: {n.op_type} parameters must be constants")
        x, out = n.input[0], n.output[0]
        scale = consts[n.input[1]].astype(np.float64)
        if x in consts:  # weights
            bits = 1 if n.op_type == "BipolarQuant" else float(consts[n.input[3]])
            fmt = _weight_format(n.op_type, bits, a, src)
            zp = 0 if n.op_type == "BipolarQuant" else consts[n.input[2]]
            if np.any(np.asarray(zp) != 0):
                raise CompileError(f"node {src}: weight zero points must be 0")
            w = consts[x].astype(np.float64)
            if n.op_type == "BipolarQuant":
                codes = np.where(w >= 0, 1, -1)
            else:
                codes = _quant_codes(w, scale, 0.0, bits, a)
            per = np.broadcast_to(scale, w.shape)
            axis = next(
                (ax for ax in range(w.ndim) if scale.ndim == w.ndim and scale.shape[ax] > 1), None
            )
            if scale.size > 1 and axis is None:
                raise CompileError(f"node {src}: weight scales must be per tensor or per channel")
            if axis is None:
                s_vec = np.array(per.reshape(-1)[0], np.float32)
                zp_vec = np.array(0, np.int8)
                attrs = {}
            else:
                s_vec = scale.reshape(-1).astype(np.float32)
                zp_vec = np.zeros(s_vec.size, np.int8)
                attrs = {"axis": axis}
            names = (f"{src}_codes", f"{src}_scale", f"{src}_zp")
            inits += [
                numpy_helper.from_array(codes.astype(np.int8), names[0]),
                numpy_helper.from_array(s_vec, names[1]),
                numpy_helper.from_array(zp_vec, names[2]),
            ]
            nodes.append(
                helper.make_node("DequantizeLinear", list(names), [out], name=src, **attrs)
            )
            for r in readers.get(out, []):
                meta[r.name] = fmt
            continue
        if n.op_type == "BipolarQuant":
            raise CompileError(f"node {src}: bipolar activations are not supported")
        bits = float(consts[n.input[3]])
        signed, narrow = bool(a.get("signed", 1)), bool(a.get("narrow", 0))
        if bits != 8 or narrow:
            raise CompileError(
                f"node {src}: activations of {bits:g} bits{' (narrow)' if narrow else ''}: "
                "the accelerator passes 8-bit activations between layers"
            )
        if a.get("rounding_mode", "ROUND") != "ROUND" or scale.size != 1:
            raise CompileError(f"node {src}: activation quantizers round half to even, per tensor")
        zp = consts[n.input[2]]
        dt = np.int8 if signed else np.uint8
        names = (f"{src}_scale", f"{src}_zp")
        inits += [
            numpy_helper.from_array(np.array(scale.reshape(-1)[0], np.float32), names[0]),
            numpy_helper.from_array(np.array(np.asarray(zp).reshape(-1)[0], dt), names[1]),
        ]
        nodes.append(helper.make_node("QuantizeLinear", [x, *names], [f"{src}_q"], name=f"{src}_q"))
        nodes.append(helper.make_node("DequantizeLinear", [f"{src}_q", *names], [out], name=src))
    used = {t for n in nodes for t in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    g = helper.make_graph(nodes, graph.name, graph.input, graph.output, keep + inits)
    version = max([o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] or [17])
    out_model = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid("", max(version, 13))],  # DequantizeLinear's axis
        ir_version=min(model.ir_version or 10, 10),
    )
    for name, fmt in meta.items():
        out_model.metadata_props.append(
            onnx.StringStringEntryProto(key=METADATA_PREFIX + name, value=fmt)
        )
    return out_model
