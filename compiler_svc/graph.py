"""Small graph utilities shared by the compiler's passes."""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from services.errors import InvalidModel

__all__ = ["toposort"]


def toposort(graph: onnx.GraphProto, available: Iterable[str] = ()) -> None:
    """Reorder ``graph.node`` so every node follows its producers (onnxruntime's quantiser
    appends Q/DQ nodes at the end; the ONNX checker and readers want topological order).
    ``available``: tensors made outside the graph (by host operators at its boundary)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""} | set(available)
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in n.input):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            missing = sorted({i for n in rest for i in n.input if i not in available})[:5]
            raise InvalidModel(f"the graph has a cycle or dangling inputs: {missing}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
