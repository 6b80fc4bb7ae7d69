"""BatchNormalization that does not follow a Conv becomes Mul+Add.

The chip runs BatchNormalization only fused into the Conv before it; anything else is an
affine per-channel map, which Mul and Add express exactly.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from npusim.compiler_svc.passes._context import PassContext


def lone_batchnorm_to_mul_add(m: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    g = m.graph
    if not any(n.op_type == "BatchNormalization" for n in g.node):
        return m
    inits = {i.name: i for i in g.initializer}
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim)
             for vi in onnx.shape_inference.infer_shapes(m).graph.value_info}
    ranks.update({vi.name: len(vi.type.tensor_type.shape.dim) for vi in g.input})
    out_nodes = []
    for n in g.node:
        if n.op_type != "BatchNormalization" or len(n.output) != 1 or not all(i in inits for i in n.input[1:5]):
            out_nodes.append(n)
            continue
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5)
        scale, bias, mean, var = (numpy_helper.to_array(inits[i]).astype(np.float64) for i in n.input[1:5])
        mul = scale / np.sqrt(var + eps)
        add = bias - mean * mul
        shape = [-1] + [1] * max(0, ranks.get(n.input[0], 4) - 2)  # (C, 1, ..): broadcasts over N, C, spatial
        mname, aname = f"{n.name or n.output[0]}_mul", f"{n.name or n.output[0]}_add"
        g.initializer.extend([numpy_helper.from_array(mul.astype(np.float32).reshape(shape), mname + "_c"),
                              numpy_helper.from_array(add.astype(np.float32).reshape(shape), aname + "_c")])
        out_nodes.append(helper.make_node("Mul", [n.input[0], mname + "_c"], [mname + "_o"], name=mname))
        out_nodes.append(helper.make_node("Add", [mname + "_o", aname + "_c"], [n.output[0]], name=aname))
    del g.node[:]
    g.node.extend(out_nodes)
    return m
