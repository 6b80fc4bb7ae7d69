"""Drop what the earlier passes left behind: unused initialisers and foreign opset imports."""

from __future__ import annotations

import onnx

from npusim.compiler_svc.passes._context import PassContext


def cleanup(m: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    g = m.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    inits = {i.name for i in keep}
    inputs = [i for i in g.input if i.name not in inits or i.name in used]
    del g.input[:]
    g.input.extend(inputs)
    domains = {n.domain for n in g.node} | {""}
    imports = [o for o in m.opset_import if o.domain in domains or (o.domain == "ai.onnx" and "" in domains)]
    del m.opset_import[:]
    m.opset_import.extend(imports)
    return m
