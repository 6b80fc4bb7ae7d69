"""Layer fusion: element-wise operators that run in the vector stage of the operator before them.

A MAC operator's outputs leave the array through the slice's vector lanes on their way to
SRAM; an activation (Relu, Clip, Sigmoid, HardSwish), a residual Add or a gating Mul applied
there costs no pass of its own. An element-wise operator is fused into the pass that makes its
latest input — a MAC operator's, or one it is already fused into — when nothing else has run
since that pass: SiLU's Sigmoid and Mul both ride on the convolution before them, and a
residual Add on the block's last convolution (its other input, the block's input, is read
from SRAM). Everything else runs as its own pass.
"""

from __future__ import annotations

import onnx

from npusim.services.cost.work import QDQ, Work

__all__ = ["passes"]


def passes(model: onnx.ModelProto, works: list[tuple[onnx.NodeProto, Work]]) -> list[int]:
    """For each operator of ``works``, the index of the operator whose pass runs it: itself, or
    the MAC operator it is fused into."""
    maker: dict[str, int] = {}
    for k, (node, _) in enumerate(works):
        for o in node.output:
            maker[o] = k
    through = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type in QDQ}

    def source(t: str) -> int | None:
        for _ in range(64):
            if t in maker:
                return maker[t]
            if t not in through:
                return None
            t = through[t]
        return None

    host = list(range(len(works)))
    last_pass = -1  # the pass that ran last: the only one an operator can still join
    for k, (node, w) in enumerate(works):
        if w.kind == "free":
            continue
        latest = max((s for s in (source(t) for t in node.input if t) if s is not None), default=None)
        if (w.elementwise and latest is not None and host[latest] == last_pass
                and works[last_pass][1].kind == "mac"):
            host[k] = last_pass
        else:
            last_pass = k
    return host
