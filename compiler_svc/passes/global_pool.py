"""ReduceMean over height and width (keepdims) is GlobalAveragePool: an NPU operator.

Exporters write ``nn.AdaptiveAvgPool2d(1)`` and ``x.mean((2, 3), keepdim=True)`` either way;
the chip has the pooling form.
"""

from __future__ import annotations

import onnx
from onnx import helper

from npusim.compiler_svc.passes._context import PassContext


def reduce_mean_to_global_pool(m: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    g = m.graph
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim)
             for vi in list(onnx.shape_inference.infer_shapes(m).graph.value_info) + list(g.input)}
    out = []
    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        rank = ranks.get(n.input[0], 0) if n.input else 0
        axes = sorted(a + rank if a < 0 else a for a in attrs.get("axes", []))
        if n.op_type == "ReduceMean" and rank == 4 and len(n.input) == 1 and axes == [2, 3] \
                and attrs.get("keepdims", 1) == 1:
            out.append(helper.make_node("GlobalAveragePool", [n.input[0]], list(n.output), name=n.name))
        else:
            out.append(n)
    del g.node[:]
    g.node.extend(out)
    return m
