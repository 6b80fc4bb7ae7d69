"""``permute_input``: the program takes input i in the order ``perm`` (torch.permute style).

A Transpose back to the model's own order is inserted right after the input. When the model
itself starts by transposing that input the same way — an NHWC model converting to NCHW —
the two transposes cancel and the NPU receives the permuted tensor directly: no host Lower.
The reverse (``[0, 2, 3, 1]`` on an NCHW model, to feed ``cv2.imread`` output as is) leaves
a leading NHWC→NCHW transpose, which the host's Lower absorbs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

__all__ = ["apply_permute"]

# Per-tensor quantisation commutes with a transpose, so these may sit between two that cancel.
_COMMUTE = ("QuantizeLinear", "DequantizeLinear")


def _perm(node: onnx.NodeProto) -> list[int] | None:
    for a in node.attribute:
        if a.name == "perm":
            return list(a.ints)
    return None


def apply_permute(m: onnx.ModelProto, perms: list[list[int]], inputs: list[str]) -> onnx.ModelProto:
    if not perms:
        return m
    g = m.graph
    for name, perm in zip(inputs, perms):
        if perm == sorted(perm):
            continue
        vi = next(v for v in g.input if v.name == name)
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        for d, k in zip(vi.type.tensor_type.shape.dim, perm):
            d.dim_value = dims[k]
        moved = f"{name}_unpermuted"
        for n in g.node:
            for i, t in enumerate(n.input):
                if t == name:
                    n.input[i] = moved
        inv = [int(i) for i in np.argsort(perm)]
        g.node.insert(0, helper.make_node("Transpose", [name], [moved], perm=inv, name=f"{name}_unpermute"))
    _cancel_transposes(g)
    del g.value_info[:]
    return onnx.shape_inference.infer_shapes(m)


def _cancel_transposes(g: onnx.GraphProto) -> None:
    """Remove T1 → [per-tensor Q/DQ →] T2 where T2 ∘ T1 is the identity."""
    changed = True
    while changed:
        changed = False
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        outputs = {o.name for o in g.output}
        for t1 in [n for n in g.node if n.op_type == "Transpose"]:
            p1 = _perm(t1)
            after = consumers.get(t1.output[0], [])
            if p1 is None or len(after) != 1 or t1.output[0] in outputs:
                continue
            mids: list[onnx.NodeProto] = []
            node = after[0]
            while node.op_type in _COMMUTE and len(node.input) > 1:
                nxt = consumers.get(node.output[0], [])
                if len(nxt) != 1 or node.output[0] in outputs:
                    break
                mids.append(node)
                node = nxt[0]
            t2 = node
            if t2.op_type != "Transpose" or (p2 := _perm(t2)) is None or t2.output[0] in outputs:
                continue
            if [p1[k] for k in p2] != list(range(len(p1))):
                continue
            if mids:  # the Q/DQ chain now reads T1's input and feeds T2's consumers
                mids[0].input[0] = t1.input[0]
                replacement = mids[-1].output[0]
            else:
                replacement = t1.input[0]
            for n in g.node:
                for i, t in enumerate(n.input):
                    if t == t2.output[0]:
                        n.input[i] = replacement
            g.node.remove(t1)
            g.node.remove(t2)
            changed = True
            break
