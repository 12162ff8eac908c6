"""A whole network compiled for one accelerator configuration: ``compile_model`` (ONNX in,
``CompiledModel`` out), its per-layer report, ``save`` / ``load_compiled`` (a folder), and
``run`` on the simulator.

A compiled model is the IR graph after the pipeline: each accelerator layer holds its own
Program (its tiles, double buffering and tokens inside), run one after another; the host
runs the ops between them (quantize, im2col, pooling, softmax, ...). A layer's cycles are the
fast engine's prediction for its Program; the model's cycles are their sum (the host's time
is not counted: it depends on the host).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compiler.graph import CompileError, QParams, Tensor, new_graph, ops_in_order
from compiler.quant import GemmForm
from compiler.runtime import gemm_inputs
from qaccel import config as qconfig

__all__ = ["CompiledModel", "LayerRow", "compile_model", "load_compiled"]

FORMAT = "qaccel-model"
VERSION = 1


@dataclass
class LayerRow:
    """One line of the compile report."""

    name: str
    op: str
    shape: str
    formats: str
    unit: str
    tiles: str
    cycles: int
    utilization: float
    energy_uj: float
    note: str = ""


@dataclass
class CompiledModel:
    graph: object
    config: qconfig.AcceleratorConfig
    compile_s: float = 0.0

    @property
    def layers(self) -> list[dict]:
        """The accelerator and host GEMM ops, in order."""
        return [
            self.graph.nodes[n]
            for n in ops_in_order(self.graph)
            if self.graph.nodes[n]["op"] == "qgemm"
        ]

    @property
    def cycles(self) -> int:
        return sum(
            n["attrs"]["timing"].counters["CYCLES"] for n in self.layers if n["unit"] != "host"
        )

    def output_scale(self, name: str) -> float | None:
        """The scale of the quantized tensor a float model output is dequantized from (one
        LSB of that output), or None when the output is not a DequantizeLinear's."""
        from compiler.graph import producer_map

        node = self.graph.nodes[producer_map(self.graph)[name]]
        if node["op"] != "DequantizeLinear":
            return None
        scale = self.graph.graph["constants"].get(node["inputs"][1])
        return None if scale is None else float(np.asarray(scale).reshape(-1)[0])

    def host_ops(self) -> list[tuple[str, str]]:
        """(node, op) of every op the host runs, glue (im2col, layouts) excluded."""
        glue = {"im2col", "fold_rows", "residual_rows", "mx_rows", "qgemm"}
        glue |= {"QuantizeLinear", "DequantizeLinear"}
        out = []
        for n in ops_in_order(self.graph):
            node = self.graph.nodes[n]
            if node["op"] not in glue:
                out.append((node["source"], node["op"]))
            elif node["op"] == "qgemm" and node["unit"] == "host":
                out.append((node["source"], f"qgemm ({node['attrs'].get('why_host')})"))
            elif node["op"] == "qgemm" and node["attrs"]["form"].mx:
                out.append((node["source"], "MX bias and requantization"))
        return out

    def report(self) -> list[LayerRow]:
        from compiler.simulate import energy_uj, ideal_cycles
        from qaccel.isa import Geometry

        geo = Geometry.of(self.config)
        rows = []
        for node in self.layers:
            a = node["attrs"]
            m, k, n = a["m"], a["k"], a["n"]
            shape = f"{m}x{k}x{n}"
            if node["unit"] == "host":
                rows.append(
                    LayerRow(
                        node["source"],
                        a["kind"],
                        shape,
                        a["mode"],
                        "host",
                        "-",
                        0,
                        0.0,
                        0.0,
                        a.get("why_host", ""),
                    )
                )
                continue
            t = a["timing"]
            cycles = t.counters["CYCLES"]
            plan = a["program"].notes["gemm"]
            ideal = ideal_cycles(geo, node["unit"], a["mode"], m * k * n)
            rows.append(
                LayerRow(
                    node["source"],
                    a["kind"],
                    shape,
                    a["mode"]
                    + ("" if a["form"].out_dtype == "int32" else f"->{a['form'].out_dtype}"),
                    node["unit"],
                    f"{plan['tiles']}x{plan['chunks'] // max(plan['tiles'], 1)}",
                    cycles,
                    ideal / cycles if cycles else 0.0,
                    energy_uj(self.config, geo, node["unit"], a["mode"], m, k, n, t),
                )
            )
        return rows

    def format_report(self) -> str:
        from qaccel.cli import _table

        rows = [
            [
                r.name,
                r.op,
                r.shape,
                r.formats,
                r.unit,
                r.tiles,
                f"{r.cycles:,}" if r.unit != "host" else "-",
                f"{r.utilization:.1%}" if r.unit != "host" else "-",
            ]
            for r in self.report()
        ]
        text = _table(["layer", "op", "MxKxN", "formats", "unit", "tiles", "cycles", "util"], rows)
        host = self.host_ops()
        text += f"\n\n{len(rows)} GEMM layers, {self.cycles:,} accelerator cycles"
        text += f" ({self.cycles / self.config.clock_mhz:,.1f} µs at {self.config.clock_mhz:g} MHz)"
        if host:
            text += f"\nhost fallbacks ({len(host)}): " + ", ".join(f"{s} ({o})" for s, o in host)
        return text

    # --- running ------------------------------------------------------------------------

    def run(
        self, inputs: dict, *, programs: str = "sim", keep_all: bool = False, hook=None
    ) -> dict:
        """The model's outputs for ``inputs`` (name -> array, as the ONNX model takes them):
        accelerator layers on the simulator's executor (``programs="sim"``) or on the integer
        reference (``"reference"``)."""
        from compiler.runtime import execute

        return execute(self.graph, inputs, programs=programs, keep_all=keep_all, hook=hook)

    def accelerator_jobs(self, inputs: dict) -> list[tuple[str, object, dict, object]]:
        """(layer, Program, its inputs, its predicted timing) of every accelerator layer on
        ``inputs``: what ``hw.accel_bench.verify_model`` runs on the RTL."""
        jobs = []

        def capture(name, ins, outs):
            node = self.graph.nodes[name]
            if node["op"] == "qgemm" and node["unit"] != "host":
                a = node["attrs"]
                inputs = gemm_inputs(ins, a["form"])
                jobs.append((node["source"], a["program"], inputs, a["timing"]))

        self.run(inputs, hook=capture)
        return jobs

    # --- saving -------------------------------------------------------------------------

    def save(self, directory) -> Path:
        """``model.json`` (the graph), ``constants.npz``, ``config.toml`` and one Program
        folder per accelerator layer under ``layers/``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays = dict(self.graph.graph["constants"])
        ops = []
        for i, n in enumerate(ops_in_order(self.graph)):
            node = self.graph.nodes[n]
            attrs = {}
            for key, v in node["attrs"].items():
                if key == "program":
                    path = f"layers/{i:03d}"
                    v.save(d / path)
                    attrs[key] = {"$program": path}
                elif key == "timing":  # the figures the report needs, not each instruction's
                    attrs[key] = {
                        "$timing": {
                            "counters": v.counters,
                            "sram": v.sram,
                            "dram_read_bytes": v.dram_read_bytes,
                            "dram_write_bytes": v.dram_write_bytes,
                            "causes": v.causes,
                        }
                    }
                else:
                    attrs[key] = _encode(v, f"{i}.{key}", arrays)
            ops.append(
                {k: node[k] for k in ("op", "inputs", "outputs", "unit", "source")}
                | {"name": n, "attrs": attrs}
            )
        tensors = {
            t: {"shape": list(v.shape), "kind": v.kind, "q": _encode(v.q, f"t.{t}", arrays)}
            for t, v in self.graph.graph["tensors"].items()
        }
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "name": self.graph.graph.get("name", "model"),
            "inputs": self.graph.graph["inputs"],
            "outputs": self.graph.graph["outputs"],
            "constants": sorted(self.graph.graph["constants"]),
            "tensors": tensors,
            "ops": ops,
            "cycles": self.cycles,
            "compile_s": self.compile_s,
        }
        np.savez(
            d / "constants.npz",
            **{f"a{i}": v for i, v in enumerate(arrays.values())},
            _keys=np.array(list(arrays), dtype=object),
        )
        (d / "model.json").write_text(json.dumps(meta, indent=1) + "\n")
        (d / "config.toml").write_text(qconfig.dump_toml(self.config))
        (d / "report.txt").write_text(self.format_report() + "\n")
        return d


def _encode(v, key: str, arrays: dict):
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        arrays[key] = v
        return {"$array": key}
    if isinstance(v, QParams):
        return {
            "$q": {
                "scale": _encode(v.scale, key + ".s", arrays),
                "zero_point": _encode(v.zero_point, key + ".z", arrays),
                "dtype": v.dtype,
                "axis": v.axis,
            }
        }
    if isinstance(v, GemmForm):
        return {
            "$form": {
                f: _encode(getattr(v, f), f"{key}.{f}", arrays)
                for f in GemmForm.__dataclass_fields__
            }
        }
    if isinstance(v, list | tuple):
        return {"$tuple": [_encode(x, f"{key}.{i}", arrays) for i, x in enumerate(v)]}
    if isinstance(v, dict):
        return {"$dict": {k: _encode(x, f"{key}.{k}", arrays) for k, x in v.items()}}
    raise TypeError(f"cannot save {type(v).__name__} ({key})")


def _decode(v, arrays: dict, d: Path, config):
    if not isinstance(v, dict):
        return v
    ((tag, body),) = v.items()
    if tag == "$array":
        return arrays[body]
    if tag == "$q":
        return QParams(
            _decode(body["scale"], arrays, d, config),
            _decode(body["zero_point"], arrays, d, config),
            body["dtype"],
            body["axis"],
        )
    if tag == "$form":
        return GemmForm(**{k: _decode(x, arrays, d, config) for k, x in body.items()})
    if tag == "$tuple":
        return tuple(_decode(x, arrays, d, config) for x in body)
    if tag == "$dict":
        return {k: _decode(x, arrays, d, config) for k, x in body.items()}
    if tag == "$program":
        from qaccel.program import load_program

        return load_program(d / body, config)
    if tag == "$timing":
        from sim.cycle import Timing

        return Timing(insns=[], **body)
    raise ValueError(f"unknown tag {tag!r} in model.json")


def load_compiled(directory) -> CompiledModel:
    """The CompiledModel saved in ``directory``."""
    d = Path(directory)
    if not (d / "model.json").exists():
        raise ValueError(f"{d} holds no compiled model (no model.json)")
    meta = json.loads((d / "model.json").read_text())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{d / 'model.json'} is not a {FORMAT} version {VERSION} file")
    config = qconfig.load_config(d / "config.toml")
    with np.load(d / "constants.npz", allow_pickle=True) as z:
        keys = list(z["_keys"])
        arrays = {k: z[f"a{i}"] for i, k in enumerate(keys)}
    g = new_graph(meta["name"])
    g.graph["inputs"], g.graph["outputs"] = meta["inputs"], meta["outputs"]
    g.graph["constants"] = {k: arrays[k] for k in meta["constants"]}
    for t, v in meta["tensors"].items():
        g.graph["tensors"][t] = Tensor(
            tuple(v["shape"]), v["kind"], _decode(v["q"], arrays, d, config)
        )
    from compiler.graph import add_op

    for op in meta["ops"]:
        attrs = {k: _decode(x, arrays, d, config) for k, x in op["attrs"].items()}
        add_op(
            g,
            op["name"],
            op["op"],
            op["inputs"],
            op["outputs"],
            attrs=attrs,
            unit=op["unit"],
            source=op["source"],
        )
    return CompiledModel(g, config, meta["compile_s"])


QUANTIZED_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "Quant",
    "BipolarQuant",
}


def is_quantized(model) -> bool:
    """Whether an ONNX model carries its own quantization (QDQ, QOperator or QONNX)."""
    return any(n.op_type in QUANTIZED_OPS for n in model.graph.node)


def compile_model(
    model,
    config: qconfig.AcceleratorConfig,
    *,
    batch: int = 1,
    calibration: list | None = None,
    precision: str | None = None,
    clip: str = "minmax",
    status=None,
) -> CompiledModel:
    """Compile ``model`` (an ONNX model, or its path) for ``config``. A quantized model
    (onnxruntime QDQ or QOperator, QONNX) is taken as it is; a float model is first quantized
    by ``compiler.ptq`` on ``calibration`` (a list of input batches) with the per-layer
    ``precision`` and ``clip``. Then the frontend and ``compiler.passes.PIPELINE``. A model
    it cannot take raises CompileError."""
    import onnx

    from compiler.onnx_frontend import load_onnx
    from compiler.passes import run_pipeline
    from compiler.qonnx import from_qonnx, is_qonnx

    start = time.perf_counter()
    if isinstance(model, str | Path):
        try:
            model = onnx.load(str(model))
        except Exception as e:  # protobuf's DecodeError and friends
            raise CompileError(f"{model}: not an ONNX model ({e})") from None
    if is_qonnx(model):
        model = from_qonnx(model)
    if not is_quantized(model):
        from compiler.ptq import quantize_model

        if calibration is None:
            raise CompileError(
                "the model is not quantized: give a calibration set (--calib) for the "
                "compiler's post-training quantization"
            )
        model = quantize_model(model, calibration, precision=precision, clip=clip)
    elif precision:
        raise CompileError("--precision applies to float models; this model is quantized")
    g = load_onnx(model, batch=batch)
    g = run_pipeline(g, config, status=status)
    if not any(g.nodes[n]["op"] == "qgemm" for n in g):
        raise CompileError(
            "the model has no quantized Conv, MatMul or Gemm with constant weights to map"
        )
    return CompiledModel(g, config, time.perf_counter() - start)
