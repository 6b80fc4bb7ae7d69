"""Layer fusion: element-wise operators that run in the vector stage of the operator before them.

A MAC operator's outputs leave the array through the slice's vector lanes on their way to
SRAM; an activation (Relu, Clip, Sigmoid, HardSwish), a residual Add or a gating Mul applied
there costs no pass of its own. An element-wise operator is fused when one of its inputs is
made by a MAC operator or by an element-wise operator fused into one, so SiLU's Sigmoid and
Mul both ride on the convolution before them. Everything else runs as its own pass.
"""

from __future__ import annotations

import onnx

from services.cost.work import Work

__all__ = ["fused_into"]

_QDQ = ("QuantizeLinear", "DequantizeLinear")


def fused_into(model: onnx.ModelProto, works: list[tuple[onnx.NodeProto, Work]]) -> dict[str, str]:
    """Fused operator name → the name of the MAC operator whose pass computes it."""
    maker: dict[str, onnx.NodeProto] = {o: n for n in model.graph.node for o in n.output}
    work = {n.name: w for n, w in works}
    host: dict[str, str] = {}  # node name → MAC operator it is (or is fused into)

    def source(t: str) -> onnx.NodeProto | None:
        n = maker.get(t)
        while n is not None and n.op_type in _QDQ:
            n = maker.get(n.input[0])
        return n

    for node, w in works:
        if w.kind == "mac":
            host[node.name] = node.name
        elif w.elementwise:
            for t in node.input:
                p = source(t) if t else None
                if p is not None and p.name in host and work.get(p.name) is not None:
                    host[node.name] = host[p.name]
                    break
    return {name: mac for name, mac in host.items() if name != mac}
