"""The compiler's graph IR: a ``networkx.DiGraph`` of operations in program order.

Each node is one operation with attributes ``op`` (an ONNX op type, or one of the compiler's
own: ``qlinear``, ``im2col``, ``qgemm``), ``inputs`` and ``outputs`` (tensor names), ``attrs``
(a dict), ``unit`` ("host", "array" or "lut") and ``source`` (the ONNX node it came from, for
errors and the report). An edge u -> v means v reads a tensor u writes. Graph-level data:

- ``tensors``: name -> ``Tensor`` (shape and element kind) for every value flowing between ops;
- ``constants``: name -> numpy array (weights, shapes, quantization parameters);
- ``inputs`` / ``outputs``: the model's input and output tensor names, in order.

``verify`` checks these invariants; the pipeline runs it after every pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

__all__ = ["CompileError", "QParams", "Tensor", "add_op", "new_graph", "ops_in_order", "verify"]


class CompileError(ValueError):
    """A model the compiler cannot take: the message names the op, the node and the reason."""


@dataclass(frozen=True)
class QParams:
    """A quantized tensor's parameters: real = (code - zero_point) * scale, codes of ``dtype``
    ("int8", "uint8", "int32"); per tensor (``axis`` None) or per channel along ``axis``."""

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: str
    axis: int | None = None

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1 and self.zero_point.size == 1

    @property
    def code_range(self) -> tuple[int, int]:
        if self.dtype.startswith("int") and self.dtype[3:].isdigit():  # int2 .. int32
            bits = int(self.dtype[3:])
            return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        return {"uint8": (0, 255)}[self.dtype]


@dataclass(frozen=True)
class Tensor:
    """A value between ops: ``shape`` (ints) and ``kind`` "float", or "quant" with ``q``."""

    shape: tuple[int, ...]
    kind: str = "float"
    q: QParams | None = None


def new_graph(name: str) -> nx.DiGraph:
    g = nx.DiGraph(name=name)
    g.graph.update(tensors={}, constants={}, inputs=[], outputs=[], order=[])
    return g


def add_op(
    g: nx.DiGraph, name: str, op: str, inputs, outputs, *, attrs=None, unit="host", source=None
):
    """Append an op (program order is insertion order) and the edges from its producers."""
    if name in g:
        raise CompileError(f"two ops are named {name!r}")
    g.add_node(
        name,
        op=op,
        inputs=list(inputs),
        outputs=list(outputs),
        attrs=dict(attrs or {}),
        unit=unit,
        source=source or name,
    )
    g.graph["order"].append(name)
    producers = producer_map(g)
    for t in inputs:
        if t in producers and producers[t] != name:
            g.add_edge(producers[t], name, tensor=t)
    return name


def producer_map(g: nx.DiGraph) -> dict[str, str]:
    return {t: n for n in g.graph["order"] if n in g for t in g.nodes[n]["outputs"]}


def consumers(g: nx.DiGraph, tensor: str) -> list[str]:
    return [n for n in ops_in_order(g) if tensor in g.nodes[n]["inputs"]]


def ops_in_order(g: nx.DiGraph) -> list[str]:
    return [n for n in g.graph["order"] if n in g]


def rebuild_edges(g: nx.DiGraph) -> None:
    """Edges from the ops' inputs and outputs (after a pass rewired them)."""
    g.remove_edges_from(list(g.edges))
    producers = producer_map(g)
    for n in ops_in_order(g):
        for t in g.nodes[n]["inputs"]:
            if t in producers:
                g.add_edge(producers[t], n, tensor=t)


def verify(g: nx.DiGraph) -> None:
    """The IR's invariants: every input is a model input, a constant or an earlier op's
    output; every tensor is written once and described; the graph is acyclic; every model
    output is produced."""
    known = set(g.graph["inputs"]) | set(g.graph["constants"])
    tensors = g.graph["tensors"]
    written = set()
    for n in ops_in_order(g):
        node = g.nodes[n]
        for t in node["inputs"]:
            if t and t not in known:
                raise CompileError(f"op {n} ({node['op']}) reads {t!r} before it is written")
        for t in node["outputs"]:
            if t in written or t in g.graph["inputs"]:
                raise CompileError(f"tensor {t!r} is written twice (op {n})")
            if t not in tensors:
                raise CompileError(f"op {n} ({node['op']}) writes {t!r}, which has no shape")
            written.add(t)
            known.add(t)
    for t in g.graph["outputs"]:
        if t not in known:
            raise CompileError(f"model output {t!r} is never computed")
    if not nx.is_directed_acyclic_graph(g):
        raise CompileError("the graph has a cycle")
    for name, value in g.graph["constants"].items():
        if not isinstance(value, np.ndarray):
            raise CompileError(f"constant {name!r} is not an array")
