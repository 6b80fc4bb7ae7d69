"""Dropout is the identity at inference, mask output or not: take it out of the graph.

onnxruntime's optimiser removes a Dropout only when it has no mask output; exporters often
write one that nothing reads.
"""

from __future__ import annotations

import onnx

from npusim.compiler_svc.passes._context import PassContext


def drop_dropout(m: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    g = m.graph
    outputs = {o.name for o in g.output}
    used = {i for n in g.node for i in n.input}
    for n in [n for n in g.node if n.op_type == "Dropout"]:
        if len(n.output) > 1 and n.output[1] and (n.output[1] in used or n.output[1] in outputs):
            continue  # somebody reads the mask: leave it to onnxruntime
        if n.output[0] in outputs:  # a graph output keeps its name: an Identity carries it
            g.node.insert(list(g.node).index(n), onnx.helper.make_node("Identity", [n.input[0]], [n.output[0]],
                                                                      name=n.name))
            g.node.remove(n)
            continue
        for other in g.node:
            for i, t in enumerate(other.input):
                if t == n.output[0]:
                    other.input[i] = n.input[0]
        g.node.remove(n)
    return m
