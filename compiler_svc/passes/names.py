"""Every node gets a unique name: reports, traces and the cost table refer to nodes by name."""

from __future__ import annotations

import onnx

from npusim.compiler_svc.passes._context import PassContext


def name_nodes(m: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    used: set[str] = set()
    for i, n in enumerate(m.graph.node):
        name = n.name or f"{n.op_type.lower()}_{i}"
        while name in used:
            name = f"{name}_{i}"
        n.name = name
        used.add(name)
    return m
