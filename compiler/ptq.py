"""The compiler's own post-training quantization: a float ONNX model and calibration inputs
-> a QDQ model the frontend reads like onnxruntime's.

- Every Conv, MatMul and Gemm with constant weights gets QuantizeLinear -> DequantizeLinear
  on its input and its output (after a Relu / Clip that is its only reader): per-tensor int8
  activations, asymmetric, from the calibration ranges (``clip`` "minmax", "percentile" at
  99.99 %, or "mse": the range with the least squared error on the calibration values).
- Weights: per output channel, symmetric, in the layer's weight format (``precision``):
  integer formats int2..int8 (scale from the largest magnitude, or by least squared error for
  4 bits and fewer), ternary (threshold 0.7 mean |w|, scale the mean kept magnitude) and
  binary (sign, scale the mean magnitude), stored as codes in int8 containers so onnxruntime
  can run the result; float and posit formats (FP8, FP6, FP4, 8-bit posits) rounded to the
  format times a power of two per channel (the largest magnitude fits; up to eight powers of
  two smaller where that rounds with less squared error), stored as their exact float
  values. The true format of each layer is kept in the model's metadata
  (``qaccel.weight_format.<node>``), which the frontend reads.
- Bias: int32 at scale s_x * s_w.
- Narrower integer activations (int2..int7, e.g. W4A4 ``*=int4*int4``): symmetric, the
  clipping by least squared error on the calibration values; the input gets the ``qaccel``
  domain's integer Quantize / Dequantize (codes in int8 containers).
- Float and posit activations (FP8 E4M3 / E5M2, FP6, FP4, posit8 with es 0..2; a float
  bias written rounded to the accumulator's unit, which is coarse for FP4 x FP4, so
  onnxruntime adds what the post-processing unit adds): the layer's input gets
  quantize -> dequantize to that format, after the int8 requantization of the layer before
  it, as the hardware passes it on: ONNX's QuantizeLinear / DequantizeLinear with float8
  codes, or the ``qaccel`` domain's functions (``compiler.format_ops``); the model is
  converted to opset 19 when older. The scale maps the calibration values' largest magnitude
  to a power of two, chosen by least squared error, among those where the layer's bias in the
  accumulator's fixed point fits the post-processing unit's 32 bits.
- MX block formats (MXFP8, MXFP6, MXFP4, MXINT8; MatMul and Gemm layers whose K is a
  multiple of the block, Conv layers without groups whose channels are): the weights
  rounded to MX blocks along K per output column (a Conv's channels of each tap), stored as
  their exact float values (metadata as above); the layer's input goes through the
  ``qaccel`` domain's MX rounding of its last axis, or its channels (``compiler.format_ops``),
  after the int8 requantization of the layer before it.
- Residual adds: a layer (int2..int8 weights, int8 activations) whose output, after its
  bias, feeds only an Add of an already computed tensor of its shape gets one weight scale
  for all channels, s_r / (s_x * 2**k) (s_r the residual's int8 scale; k the largest that
  does not clip the weights, at most 15, none below 0), and its output is not requantized
  before the add: the post-processing unit adds the residual's codes shifted by k to the
  accumulator, exactly what the float Add of the model computes. Otherwise the add stays on
  the host.
- The host ops between layers (other adds, pools, softmax) run on the dequantized values.

``precision``: comma-separated ``PATTERN=WEIGHT*ACTIVATION``, patterns matched against node
names with ``fnmatch`` (the first that matches wins), e.g. ``conv1=int8*int8,fc*=int2*int8``
or ``fc2=fp8_e4m3*fp8_e4m3``, ``*=posit8_0*posit8_0``, ``fc*=mxfp4*mxfp8_e4m3``. Layers no
pattern names are int8*int8. A pair that no unit of the configuration has compiles to the
host, and the report says why.
"""

from __future__ import annotations

import fnmatch

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.format_ops import (
    DOMAIN,
    FUNCTION_FORMATS,
    NARROW_INTS,
    POSITS,
    dequantize_function,
    mx_quantize_function,
    quantize_function,
)
from compiler.graph import CompileError
from compiler.quant import FLOAT_ACTIVATIONS, coarsen_for_bias, float_weight_codes, units

__all__ = ["METADATA_PREFIX", "WEIGHT_FORMATS", "parse_precision", "quantize_model"]

METADATA_PREFIX = "qaccel.weight_format."
INT_WEIGHTS = ("int8", "int7", "int6", "int5", "int4", "int3", "int2", "ternary", "binary")
# float weights with a power-of-two scale per channel; stored as their exact float values
FLOAT_WEIGHTS = ("fp8_e4m3", "fp8_e5m2", "fp6_e2m3", "fp6_e3m2", "fp4_e2m1", *POSITS)
SAMPLE = 1 << 16  # calibration values kept per tensor for the float activations' scale
MX_FORMATS = ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4", "mxint8")
WEIGHT_FORMATS = INT_WEIGHTS + FLOAT_WEIGHTS + MX_FORMATS
CLIPS = ("minmax", "percentile", "mse")
ACTIVATIONS = ("int8", *NARROW_INTS, *FLOAT_ACTIVATIONS, *MX_FORMATS)
VALUE_CODES_OPSET = 19  # QuantizeLinear / DequantizeLinear with float8 codes


def parse_precision(spec: str | None) -> list[tuple[str, str, str]]:
    """``"conv1=int8*int8,fc*=int2*int8"`` -> [(pattern, weight format, activation format)]."""
    if not spec:
        return []
    rules = []
    for item in spec.split(","):
        pattern, sep, pair = item.strip().partition("=")
        w, star, a = pair.partition("*")
        if not sep or not pattern or not star:
            raise CompileError(f"precision rule {item!r} is not PATTERN=WEIGHT*ACTIVATION")
        if w not in WEIGHT_FORMATS:
            raise CompileError(
                f"precision rule {item!r}: weight format {w!r} is not one the compiler's "
                f"quantizer makes ({', '.join(WEIGHT_FORMATS)})"
            )
        if a not in ACTIVATIONS:
            raise CompileError(
                f"precision rule {item!r}: activations are int8 (the requantized 8-bit codes "
                f"every layer passes on), a narrower integer, a float or posit format or an MX "
                f"format ({', '.join(ACTIVATIONS[1:])}), not {a!r}"
            )
        if (w in MX_FORMATS) != (a in MX_FORMATS):
            raise CompileError(
                f"precision rule {item!r}: MX formats pair only with MX formats (both carry "
                "block scales)"
            )
        rules.append((pattern, w, a))
    return rules


def _levels(fmt: str) -> tuple[int, int]:
    if fmt == "ternary":
        return -1, 1
    if fmt == "binary":
        return -1, 1
    bits = int(fmt[3:])
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def float_weights(w: np.ndarray, axis: int, fmt: str) -> np.ndarray:
    """Weights rounded to ``fmt`` with a power-of-two scale per channel: the largest
    magnitude at most the format's largest value, or up to eight powers of two smaller where
    that rounds with less squared error (posits are most precise near 1). float32 values,
    exact."""
    from qaccel import formats

    f = formats.get_format(fmt)
    wc = np.moveaxis(np.asarray(w, dtype=np.float64), axis, 0)
    out = np.empty_like(wc)
    for c in range(wc.shape[0]):
        top = np.abs(wc[c]).max()
        first = int(np.ceil(np.log2(top / f.max_magnitude))) if top > 0 else 0
        best = None
        for e in range(first, first + 9):
            q = f.decode(f.encode(wc[c] / 2.0**e)) * 2.0**e
            err = np.sum((q - wc[c]) ** 2)
            if best is None or err < best[0]:
                best = (err, q)
        out[c] = best[1]
    return np.moveaxis(out, 0, axis).astype(np.float32)


def quantize_weights(w: np.ndarray, axis: int, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes as values of ``fmt``, per-channel scales) for weights ``w``, channels along
    ``axis``."""
    wc = np.moveaxis(np.asarray(w, dtype=np.float64), axis, 0).reshape(w.shape[axis], -1)
    lo, hi = _levels(fmt)
    codes = np.zeros_like(wc, dtype=np.int64)
    scales = np.zeros(wc.shape[0])
    for c, row in enumerate(wc):
        mag = np.abs(row)
        if not mag.any():
            scales[c] = 1.0
            continue
        if fmt == "binary":
            s, q = mag.mean(), np.where(row >= 0, 1, -1)
        elif fmt == "ternary":
            keep = mag > 0.7 * mag.mean()
            s = mag[keep].mean() if keep.any() else mag.max()
            q = np.where(keep, np.sign(row), 0).astype(np.int64)
        else:
            best = None
            top = mag.max() / max(hi, 1)
            grid = [1.0] if hi >= 15 else np.linspace(0.3, 1.0, 36)
            for f in grid:
                s_ = top * f
                q_ = np.clip(np.rint(row / s_), lo, hi)
                err = np.sum((q_ * s_ - row) ** 2)
                if best is None or err < best[0]:
                    best = (err, s_, q_)
            _, s, q = best
        codes[c], scales[c] = q, s
    shape = [w.shape[axis]] + [d for i, d in enumerate(w.shape) if i != axis]
    codes = np.moveaxis(codes.reshape(shape), 0, axis)
    return codes, scales


def _activation_range(values: np.ndarray, clip: str) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
    if clip == "percentile":
        lo = min(float(np.percentile(v, 0.01)), 0.0)
        hi = max(float(np.percentile(v, 99.99)), 0.0)
    elif clip == "mse":
        best = None
        for f in np.linspace(0.5, 1.0, 11):
            a, b = lo * f, hi * f
            s = max(b - a, 1e-12) / 255
            zp = np.round(-128 - a / s)
            q = (np.clip(np.rint(v / s) + zp, -128, 127) - zp) * s
            err = np.sum((q - v) ** 2)
            if best is None or err < best[0]:
                best = (err, a, b)
        _, lo, hi = best
    return lo, hi


def _act_qparams(lo: float, hi: float) -> tuple[np.float32, np.int8]:
    scale = max(hi - lo, 1e-8) / 255
    zp = int(np.clip(np.round(-128 - lo / scale), -128, 127))
    return np.float32(scale), np.int8(zp)


def quantize_model(
    model: onnx.ModelProto, calibration: list, *, precision: str | None = None, clip: str = "minmax"
) -> onnx.ModelProto:
    """A QDQ model quantized from float ``model`` on the ``calibration`` input batches (module
    docstring)."""
    from compiler.onnx_frontend import load_onnx
    from compiler.runtime import execute

    if clip not in CLIPS:
        raise CompileError(f"clip must be one of {', '.join(CLIPS)}, not {clip!r}")
    if not calibration:
        raise CompileError("a float model needs a calibration set (--calib) to be quantized")
    rules = parse_precision(precision)
    if any(a != "int8" for _, _, a in rules):
        model = _at_least_opset(model, VALUE_CODES_OPSET)
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    input_names = [vi.name for vi in graph.input if vi.name not in inits]
    if len(input_names) != 1:
        raise CompileError(f"the quantizer takes models with one input, not {len(input_names)}")
    batches = [np.asarray(c, dtype=np.float32) for c in calibration]
    ir = load_onnx(model, batch=batches[0].shape[0])
    seen: dict[str, list] = {}
    shape_of: dict[str, tuple] = {}
    for batch in batches:
        ir_b = (
            ir if batch.shape[0] == batches[0].shape[0] else load_onnx(model, batch=batch.shape[0])
        )
        values = execute(ir_b, {input_names[0]: batch}, keep_all=True)
        for t, v in values.items():
            if isinstance(v, np.ndarray) and v.dtype.kind == "f":
                seen.setdefault(t, []).append(v.reshape(-1))
                shape_of.setdefault(t, v.shape)
    ranges = {t: _activation_range(np.concatenate(v), clip) for t, v in seen.items()}
    samples = {t: _sample(np.concatenate(v)) for t, v in seen.items()}
    del seen

    readers: dict[str, list] = {}
    for node in graph.node:
        for t in node.input:
            readers.setdefault(t, []).append(node)
    nodes, new_inits, meta = [], [], {}
    qdq_of: dict[str, str] = {}  # float tensor -> its fake-quantized copy

    def qdq(t: str, out: str | None = None) -> str:
        if t in qdq_of:
            return qdq_of[t]
        if t not in ranges:
            raise CompileError(f"tensor {t!r} never took a value during calibration")
        s, z = _act_qparams(*ranges[t])
        base = t.replace("/", "_")
        new_inits.append(numpy_helper.from_array(np.array(s, np.float32), f"{base}_scale"))
        new_inits.append(numpy_helper.from_array(np.array(z, np.int8), f"{base}_zp"))
        q, d = f"{base}_q", out or f"{base}_dq"
        nodes.append(helper.make_node("QuantizeLinear", [t, f"{base}_scale", f"{base}_zp"], [q]))
        nodes.append(helper.make_node("DequantizeLinear", [q, f"{base}_scale", f"{base}_zp"], [d]))
        qdq_of[t] = d
        return d

    outputs = {o.name for o in graph.output}

    functions: dict[str, onnx.FunctionProto] = {}

    def value_qdq(t: str, fmt: str, scale: float) -> str:
        """``t`` through quantize -> dequantize to ``fmt``: ONNX's QuantizeLinear and
        DequantizeLinear for float8, the ``qaccel`` domain's functions for posits."""
        key = (t, fmt, float(scale))
        if key in qdq_of:
            return qdq_of[key]
        base = f"{t.replace('/', '_')}_{fmt}"
        new_inits.append(numpy_helper.from_array(np.array(scale, np.float32), f"{base}_scale"))
        q, d = f"{base}_q", f"{base}_dq"
        if fmt in FUNCTION_FORMATS:
            opset = _default_opset(model)
            for make in (quantize_function, dequantize_function):
                fn = make(fmt, opset)
                functions[fn.name] = fn
            nodes.append(
                helper.make_node(f"Quantize_{fmt}", [t, f"{base}_scale"], [q], domain=DOMAIN)
            )
            nodes.append(
                helper.make_node(f"Dequantize_{fmt}", [q, f"{base}_scale"], [d], domain=DOMAIN)
            )
        else:
            elem = {
                "fp8_e4m3": onnx.TensorProto.FLOAT8E4M3FN,
                "fp8_e5m2": onnx.TensorProto.FLOAT8E5M2,
            }[fmt]
            new_inits.append(helper.make_tensor(f"{base}_zp", elem, [], [0.0]))
            names = [f"{base}_scale", f"{base}_zp"]
            nodes.append(helper.make_node("QuantizeLinear", [t, *names], [q]))
            nodes.append(helper.make_node("DequantizeLinear", [q, *names], [d]))
        qdq_of[key] = d
        return d

    def mx_round(t: str, fmt: str, channels: bool) -> str:
        """``t`` rounded to MX blocks along its last axis, or its channels
        (``compiler.format_ops``)."""
        key = (t, fmt, "mx", channels)
        if key not in qdq_of:
            fn = mx_quantize_function(fmt, _default_opset(model), channels=channels)
            functions[fn.name] = fn
            out = f"{t.replace('/', '_')}_{fmt}{'_channels' if channels else ''}"
            nodes.append(helper.make_node(fn.name, [t], [out], domain=DOMAIN))
            qdq_of[key] = out
        return qdq_of[key]

    def requantize(t: str) -> None:
        """Readers of the layer output ``t`` read its fake-quantized copy; a model output
        keeps its name on the copy."""
        if t not in outputs:
            rename[t] = qdq(t)
            return
        raw = f"{t}_float"
        for n in nodes:
            for i, x in enumerate(n.output):
                if x == t:
                    n.output[i] = raw
        ranges[raw] = ranges[t]
        qdq(raw, out=t)

    def finish(node, channels: int, bias_dq, residual=None) -> None:
        """The layer ends after a bias Add (MatMul; its bias made int32 by ``bias_dq`` when
        given), the ``residual`` Add (its node) when given, and a Relu / Clip it alone feeds:
        that output is requantized."""
        out = end = node.output[0]
        after = readers.get(end, [])
        if node.op_type == "MatMul" and len(after) == 1 and after[0].op_type == "Add":
            other = [t for t in after[0].input if t != end]
            if (
                end not in outputs
                and len(other) == 1
                and other[0] in inits
                and inits[other[0]].size == channels
            ):
                if bias_dq is not None:
                    bias_inputs[after[0].output[0]] = (other[0], bias_dq(other[0]))
                end = after[0].output[0]
                after = readers.get(end, [])
        if residual is not None:
            end = residual.output[0]
            after = readers.get(end, [])
        if len(after) == 1 and after[0].op_type in ("Relu", "Clip") and end not in outputs:
            end = after[0].output[0]
        if end == out:
            requantize(out)
        else:
            pending[end] = out

    rename: dict[str, str] = {}
    claimed: set[str] = set()  # residual Adds a layer fuses
    pending: dict[str, str] = {}  # output tensor to fake-quantize once its writer is placed
    bias_inputs: dict[str, tuple[str, str]] = {}  # Add output -> (float bias, int32 bias)
    residual_inputs: dict[str, tuple[str, str]] = {}  # Add output -> (residual, its int8 copy)
    emitted = set(input_names) | set(inits)  # tensors written by the nodes placed so far
    for node in graph.node:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        for i, t in enumerate(node.input):
            if t in rename:
                node.input[i] = rename[t]
        quantizable = (
            node.op_type in ("Conv", "MatMul", "Gemm")
            and len(node.input) > 1
            and node.input[1] in inits
            and inits[node.input[1]].ndim in (2, 4)
        )
        if node.op_type == "Gemm" and quantizable:
            a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
            quantizable = not a.get("transA", 0) and a.get("alpha", 1.0) == 1.0
        if not quantizable:
            for t in node.output:
                # a MatMul's bias Add reads the int32 bias; a fused residual Add, the residual's
                # int8 copy
                for swap in (bias_inputs.get(t), residual_inputs.get(t)):
                    if swap is not None:
                        node.input[:] = [swap[1] if x == swap[0] else x for x in node.input]
            nodes.append(node)
            emitted.update(node.output)
            for t in node.output:
                if t in pending:
                    pending.pop(t)
                    requantize(t)
            continue
        name = node.name = node.name or node.output[0]
        fmt, act = next(
            ((w, a) for p, w, a in rules if fnmatch.fnmatchcase(name, p)), ("int8", "int8")
        )
        if node.input[0] not in qdq_of.values():
            node.input[0] = qdq(node.input[0])
        w = inits[node.input[1]]
        trans_b = node.op_type == "Gemm" and any(x.name == "transB" and x.i for x in node.attribute)
        axis = 0 if node.op_type == "Conv" or trans_b else 1
        if fmt in MX_FORMATS:
            weights = _mx_weights(name, node, w, fmt, axis)
            node.input[0] = mx_round(node.input[0], act, node.op_type == "Conv")
            new_inits.append(numpy_helper.from_array(weights, f"{name}_wmx"))
            node.input[1] = f"{name}_wmx"
            meta[name] = fmt
            nodes.append(node)
            emitted.update(node.output)
            finish(node, w.shape[axis], None)
            continue
        if fmt in FLOAT_WEIGHTS:
            wf = float_weights(w, axis, fmt)
            # the frontend's coarsest reading of them: what a float bias can fit in 32 bits at
            w_scales = float_weight_codes(wf, fmt, axis, coarsest=True)[1]
        else:
            codes, scales = quantize_weights(w, axis, fmt)
            w_scales = scales.astype(np.float32).astype(np.float64)
        sx = _act_qparams(*ranges[_source_of(qdq_of, node.input[0])])[0]
        residual = None
        if act == "int8" and fmt in INT_WEIGHTS[:7]:  # int2..int8: a fused residual Add?
            found = _residual_of(node, inits, readers, outputs, shape_of, emitted, claimed)
            if found is not None:
                add, skip = found
                s_r = _act_qparams(*ranges[skip])[0]
                lo, hi = _levels(fmt)
                top = max(float(np.abs(w).max()), 1e-12)
                k = int(np.floor(np.log2(np.float64(s_r) * hi / (np.float64(sx) * top))))
                k = min(k, 15)  # the unit's largest residual shift: coarser weights still fit
                if k >= 0:
                    # one weight scale for every channel, so the residual's scale is the
                    # accumulator's times 2**k: the unit adds it exactly
                    s_w = np.float32(np.float64(s_r) / (np.float64(sx) * 2.0**k))
                    codes = np.clip(np.rint(w / np.float64(s_w)), lo, hi).astype(np.int64)
                    scales = np.full(w.shape[axis], s_w, dtype=np.float64)
                    residual_inputs[add.output[0]] = (skip, qdq(skip))
                    claimed.add(add.output[0])
                    residual = add
        if act in FLOAT_ACTIVATIONS:
            bias = _layer_bias(node, inits, readers, outputs, w_scales.size)
            seen_x = samples[_source_of(qdq_of, node.input[0])]
            sx = _float_scale(name, act, seen_x, bias, w_scales)
            node.input[0] = value_qdq(node.input[0], act, sx)
            sx = np.float32(sx * 2.0 ** -units(act))  # one unit of the input's integers
        elif act in NARROW_INTS:  # symmetric, the clipping by least squared error
            sx = np.float32(_int_scale(samples[_source_of(qdq_of, node.input[0])], act))
            node.input[0] = value_qdq(node.input[0], act, float(sx))
        if fmt in FLOAT_WEIGHTS:  # exact float values; the frontend recovers the codes
            wn = f"{name}_wf"
            new_inits.append(numpy_helper.from_array(wf, wn))
            node.input[1] = wn
            meta[name] = fmt

            def round_bias(bias_name: str, wf=wf, fmt=fmt, axis=axis, sx=sx, name=name) -> str:
                """The float bias rounded to the accumulator's unit the frontend will add it
                in, so onnxruntime adds the same value (the unit can be coarse: FP4 x FP4)."""
                ints, scales = float_weight_codes(wf, fmt, axis)
                unit = np.float64(sx) * scales
                b = inits[bias_name].astype(np.float64).reshape(-1)
                per_channel = np.moveaxis(ints, axis, 0).reshape(len(scales), -1)
                _, scales = coarsen_for_bias(per_channel, scales, fmt, np.rint(b / unit))
                unit = np.float64(sx) * scales
                rounded = (np.rint(b / unit) * unit).astype(np.float32)
                new_inits.append(numpy_helper.from_array(rounded, f"{name}_bf"))
                return f"{name}_bf"

            if len(node.input) > 2 and node.input[2] in inits:
                node.input[2] = round_bias(node.input[2])
            nodes.append(node)
            emitted.update(node.output)
            finish(node, w.shape[0 if axis == 0 else -1], round_bias)
            continue
        wn = f"{name}_wq"
        new_inits.append(numpy_helper.from_array(codes.astype(np.int8), wn))
        new_inits.append(numpy_helper.from_array(scales.astype(np.float32), f"{wn}_scale"))
        new_inits.append(numpy_helper.from_array(np.zeros(len(scales), np.int8), f"{wn}_zp"))
        nodes.append(
            helper.make_node(
                "DequantizeLinear", [wn, f"{wn}_scale", f"{wn}_zp"], [f"{wn}_dq"], axis=axis
            )
        )
        node.input[1] = f"{wn}_dq"

        def bias_dq(bias_name: str, sx=sx, scales=scales, name=name) -> str:
            """The float bias as int32 codes at scale s_x * s_w."""
            bs = (np.float64(sx) * scales.astype(np.float32)).astype(np.float32)
            b = np.rint(inits[bias_name].astype(np.float64).reshape(-1) / bs)
            if np.any(np.abs(b) > 2**31 - 1):
                raise CompileError(
                    f"node {name}: its bias does not fit int32 at the scale s_x * s_w "
                    f"({float(sx):.3g} x weights): the input's calibration range is too narrow"
                )
            b = b.astype(np.int32)
            bn = f"{name}_bq"
            new_inits.append(numpy_helper.from_array(b, bn))
            new_inits.append(numpy_helper.from_array(bs, f"{bn}_scale"))
            new_inits.append(numpy_helper.from_array(np.zeros(len(bs), np.int32), f"{bn}_zp"))
            nodes.append(
                helper.make_node(
                    "DequantizeLinear", [bn, f"{bn}_scale", f"{bn}_zp"], [f"{bn}_dq"], axis=0
                )
            )
            return f"{bn}_dq"

        if len(node.input) > 2 and node.input[2] in inits:
            node.input[2] = bias_dq(node.input[2])
        meta[name] = fmt
        nodes.append(node)
        emitted.update(node.output)
        finish(node, scales.size, bias_dq, residual)
    used = {t for n in nodes for t in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    g = helper.make_graph(nodes, graph.name, graph.input, graph.output, keep + new_inits)
    opsets = list(model.opset_import)
    if functions:
        opsets.append(helper.make_opsetid(DOMAIN, 1))
    out_model = helper.make_model(
        g, opset_imports=opsets, ir_version=model.ir_version, functions=list(functions.values())
    )
    for name, fmt in meta.items():
        out_model.metadata_props.append(
            onnx.StringStringEntryProto(key=METADATA_PREFIX + name, value=fmt)
        )
    return out_model


def _source_of(qdq_of: dict, dq: str) -> str:
    """The float tensor a fake-quantized copy was made from."""
    t = next(t for t, d in qdq_of.items() if d == dq)
    return _source_of(qdq_of, t[0]) if isinstance(t, tuple) else t


def _at_least_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    if current >= version:
        return model
    from onnx import version_converter

    try:
        model = version_converter.convert_version(model, version)
    except Exception as e:  # the converter raises whatever its adapters do
        raise CompileError(
            f"float and posit activations need opset {version}; converting the model from opset "
            f"{current} failed: {e}"
        ) from None
    model.ir_version = max(model.ir_version, 9)
    return model


def _layer_bias(node, inits: dict, readers: dict, outputs: set, channels: int):
    """A layer's float bias: its third input, or the Add after a MatMul (None if none)."""
    if len(node.input) > 2 and node.input[2] in inits:
        return inits[node.input[2]].astype(np.float64).reshape(-1)
    after = readers.get(node.output[0], [])
    if node.op_type == "MatMul" and len(after) == 1 and after[0].op_type == "Add":
        other = [t for t in after[0].input if t != node.output[0]]
        if len(other) == 1 and other[0] in inits and inits[other[0]].size == channels:
            return inits[other[0]].astype(np.float64).reshape(-1)
    return None


def _residual_of(node, inits, readers, outputs, shape_of, emitted, claimed):
    """(the Add, the residual tensor) when the layer's output (after a MatMul's bias Add) is
    the only input of an Add of another tensor of its shape that is already computed and
    that no other layer fuses; else None."""
    end = node.output[0]
    after = readers.get(end, [])
    if node.op_type == "MatMul" and len(after) == 1 and after[0].op_type == "Add":
        other = [t for t in after[0].input if t != end]
        if len(other) == 1 and other[0] in inits:
            end = after[0].output[0]
            after = readers.get(end, [])
    if len(after) != 1 or after[0].op_type != "Add" or end in outputs:
        return None
    add = after[0]
    other = [t for t in add.input if t != end]
    if (
        len(other) != 1
        or other[0] in inits
        or other[0] not in emitted
        or add.output[0] in claimed
        or shape_of.get(other[0]) != shape_of.get(end)
    ):
        return None
    return add, other[0]


def _mx_weights(name: str, node, w: np.ndarray, fmt: str, axis: int) -> np.ndarray:
    """Weights rounded to MX blocks along K per output column: a MatMul / Gemm's K, a Conv's
    channels of each tap (the compiler's K order for MX is kh, kw, c). Exact float values.
    The blocks must be whole: K (a Conv's channels) a multiple of the block; a Conv not
    grouped."""
    from qaccel import formats

    f = formats.get_mx_format(fmt)
    w = np.asarray(w, np.float64)
    if node.op_type == "Conv":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group != 1:
            raise CompileError(f"node {name}: MX formats take convolutions without groups")
        k = w.shape[1]  # (OC, C, KH, KW): blocks along C, channels last
        per_column = w.transpose(0, 2, 3, 1)
    else:
        per_column = np.moveaxis(w, axis, 0)  # N x K
        k = per_column.shape[1]
    if k % f.block:
        what = "C" if node.op_type == "Conv" else "K"
        raise CompileError(
            f"node {name}: {what} = {k} is not a multiple of the {fmt} block ({f.block})"
        )
    rounded = f.quantize(per_column).dequantize()
    if node.op_type == "Conv":
        return rounded.transpose(0, 3, 1, 2).astype(np.float32)
    return np.moveaxis(rounded, 0, axis).astype(np.float32)


def _int_scale(values: np.ndarray, fmt: str) -> float:
    """A symmetric scale for ``fmt`` codes: the calibration values' largest magnitude over
    the largest code, times the factor in [0.3, 1] with the least squared error."""
    _, hi = _levels(fmt)
    top = max(float(np.abs(values).max(initial=0.0)), 1e-12) / hi
    v = values.astype(np.float64)
    errors = [
        (np.sum((np.clip(np.rint(v / (top * f)), -hi - 1, hi) * top * f - v) ** 2), top * f)
        for f in np.linspace(0.3, 1.0, 36)
    ]
    return min(errors)[1]


def _sample(values: np.ndarray) -> np.ndarray:
    """At most SAMPLE of ``values``, evenly spaced."""
    if values.size <= SAMPLE:
        return values
    return values[np.linspace(0, values.size - 1, SAMPLE).astype(np.int64)]


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _float_scale(name: str, fmt: str, values: np.ndarray, bias, w_scales) -> float:
    """The input scale for float / posit codes: the calibration values' largest magnitude
    maps to a power of two T, chosen by least squared error of the rounded values among
    the format's maximum and up to sixteen powers of two below it, where the layer's bias, in
    the accumulator's fixed point (2**-units(fmt) of the scale, times the weights'), fits in
    2**30 (the post-processing unit adds a 32-bit bias)."""
    from qaccel import formats

    f = formats.get_format(fmt)
    top = max(float(np.abs(values).max(initial=0.0)), 1e-12)
    v = values.astype(np.float32)
    best = None
    for k in range(17):
        t = 2.0 ** (np.floor(np.log2(f.max_magnitude)) - k)
        if t < 8 * f.smallest_positive:
            break
        sx = np.float32(top / t)
        if bias is not None:
            unit = np.float64(sx) * 2.0 ** -units(fmt) * np.asarray(w_scales)
            if np.abs(bias / unit).max() >= 2**30:
                continue
        err = np.sum((f.decode(f.encode((v / sx).astype(np.float64))) * sx - v) ** 2)
        if best is None or err < best[0]:
            best = (err, float(sx))
    if best is None:
        raise CompileError(
            f"node {name}: its bias does not fit the post-processing unit's 32 bits in the "
            f"{fmt} accumulator's fixed point at any input scale the quantizer tries"
        )
    return best[1]
