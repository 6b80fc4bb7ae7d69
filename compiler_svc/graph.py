"""Small graph utilities shared by the compiler's passes.

``GraphIndex`` is built once after a rewrite and answers the lookups every pass needs
(who makes a tensor, who reads it, its type and shape) in constant time, so no pass scans
the node list per tensor: a YOLO-sized graph has thousands of tensors.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from npusim.services.errors import InvalidModel

__all__ = ["GraphIndex", "attr", "dims", "perm", "toposort"]


def attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    """An attribute's value, or ``default`` when the node does not set it."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def perm(node: onnx.NodeProto) -> list[int] | None:
    """A Transpose's ``perm`` (None: the default, reversing the axes)."""
    p = attr(node, "perm")
    return [int(k) for k in p] if p is not None else None  # type: ignore[union-attr]


def dims(vi: onnx.ValueInfoProto) -> tuple[int, ...]:
    """A value's static shape (0 where a dim is symbolic)."""
    return tuple(int(d.dim_value) for d in vi.type.tensor_type.shape.dim)


def toposort(graph: onnx.GraphProto, available: Iterable[str] = ()) -> None:
    """Reorder ``graph.node`` so every node follows its producers (onnxruntime's quantiser
    appends Q/DQ nodes at the end; the ONNX checker and readers want topological order).
    Stable: nodes already in order keep it. ``available``: tensors made outside the graph
    (by host operators at its boundary)."""
    have = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""} | set(available)
    nodes = list(graph.node)
    made_by: dict[str, int] = {}
    for k, n in enumerate(nodes):
        for o in n.output:
            made_by.setdefault(o, k)
    waiting = [0] * len(nodes)
    readers: list[list[int]] = [[] for _ in nodes]
    missing: set[str] = set()
    for k, n in enumerate(nodes):
        for t in set(n.input):
            if t in have:
                continue
            p = made_by.get(t)
            if p is None:
                missing.add(t)
                continue
            waiting[k] += 1
            readers[p].append(k)
    if missing:
        raise InvalidModel(f"the graph reads tensors nothing makes: {sorted(missing)[:5]}")
    ready = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for r in readers[k]:
            waiting[r] -= 1
            if waiting[r] == 0:
                heapq.heappush(ready, r)
    if len(order) != len(nodes):
        stuck = sorted({nodes[k].name or nodes[k].op_type for k, w in enumerate(waiting) if w})[:5]
        raise InvalidModel(f"the graph has a cycle through {stuck}")
    del graph.node[:]
    graph.node.extend(nodes[k] for k in order)


@dataclass
class GraphIndex:
    """Lookups over one state of a graph; rebuild it after changing the graph."""

    producers: dict[str, onnx.NodeProto]
    consumers: dict[str, list[onnx.NodeProto]]
    infos: dict[str, onnx.ValueInfoProto]
    consts: dict[str, np.ndarray]
    zero_points: dict[str, int]

    @classmethod
    def of(cls, m: onnx.ModelProto) -> GraphIndex:
        g = m.graph
        consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        zps: dict[str, int] = {}
        for n in g.node:  # a tensor's zero point: from the Q that makes it, else a DQ that reads it
            if n.op_type == "DequantizeLinear" and len(n.input) > 2 and n.input[2] in consts:
                zps.setdefault(n.input[0], int(np.ravel(consts[n.input[2]])[0]))
        for n in g.node:
            if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in consts:
                zps[n.output[0]] = int(np.ravel(consts[n.input[2]])[0])
        idx = cls({}, {}, {}, consts, zps)
        idx.refresh(m)
        return idx

    def refresh(self, m: onnx.ModelProto) -> None:
        """Re-read the structure (nodes, value infos) after a rewrite that kept the
        initialisers; zero points are kept, so they survive cutting the boundary Q/DQ nodes."""
        g = m.graph
        self.producers = {o: n for n in g.node for o in n.output if o}
        self.consumers = {}
        for n in g.node:
            for t in dict.fromkeys(n.input):
                if t:
                    self.consumers.setdefault(t, []).append(n)
        self.infos = {vi.name: vi for vi in list(g.value_info) + list(g.input) + list(g.output)}

    def readers(self, tensor: str) -> list[onnx.NodeProto]:
        return self.consumers.get(tensor, [])

    def shape(self, tensor: str) -> tuple[int, ...]:
        if tensor in self.consts:
            return tuple(self.consts[tensor].shape)
        vi = self.infos.get(tensor)
        if vi is None:
            raise KeyError(f"no type/shape for tensor {tensor!r}")
        return dims(vi)

    def elem_type(self, tensor: str) -> int:
        if tensor in self.consts:
            return int(helper.np_dtype_to_tensor_dtype(self.consts[tensor].dtype))
        vi = self.infos.get(tensor)
        return int(vi.type.tensor_type.elem_type) if vi is not None else 0

    def dtype(self, tensor: str) -> str:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type(tensor))).name

    def zero_point(self, tensor: str) -> int:
        return self.zero_points.get(tensor, 0)
