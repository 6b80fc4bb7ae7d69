"""Split the graph into NPU stages and CPU steps.

Every node is placed on the NPU or the host: the chip's rules (:mod:`npusim.compiler_svc.support`)
decide for compute nodes, and the NPU takes only int8 work — a node whose float inputs do
not come from a DequantizeLinear, or whose float outputs do not all go to a
QuantizeLinear, runs on the host. A DequantizeLinear goes with its consumers (it is copied
when they sit on both sides) and a QuantizeLinear with its producer, so every tensor that
crosses between the NPU and the host is int8.

Nodes are then scheduled into as few stages as possible: list scheduling in topological
order that keeps taking ready nodes of the current kind before switching.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import onnx
from onnx import helper

from npusim.compiler_svc.graph import GraphIndex
from npusim.compiler_svc.support import GraphInfo, npu_reason

__all__ = ["Stage", "connect", "constant_nodes", "place", "schedule", "subgraph"]

_Q, _DQ = "QuantizeLinear", "DequantizeLinear"
_INT = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}


@dataclass
class Stage:
    kind: str  # "npu" | "cpu"
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


def place(m: onnx.ModelProto, idx: GraphIndex) -> dict[str, str | None]:
    """node name → None (NPU) or the reason it runs on the host. Rewrites shared DQs in ``m``
    and refreshes ``idx``."""
    info = GraphInfo.from_index(idx)
    reason: dict[str, str | None] = {}
    for n in m.graph.node:
        if n.op_type in (_Q, _DQ):
            continue
        why = npu_reason(n, info)
        if why is None:
            for t in n.input:
                if not t or t in idx.consts:
                    continue
                p = idx.producers.get(t)
                if idx.elem_type(t) not in _INT and (p is None or p.op_type != _DQ):
                    why = f"its input {t!r} is not quantised, so this is not int8 work"
                    break
        if why is None:
            for t in n.output:
                uses = idx.readers(t)
                if idx.elem_type(t) not in _INT and (not uses or any(u.op_type != _Q for u in uses)):
                    why = f"its output {t!r} is not quantised, so this is not int8 work"
                    break
        reason[n.name] = why
    if _split_shared_dequantize(m, idx, reason):
        idx.refresh(m)
    for n in m.graph.node:
        if n.op_type == _DQ:
            uses = idx.readers(n.output[0])
            reason[n.name] = reason.get(uses[0].name) if uses else "nothing on the NPU reads it"
        elif n.op_type == _Q:
            p = idx.producers.get(n.input[0])
            reason[n.name] = reason.get(p.name) if p is not None else "it quantises a program input"
    return reason


def _split_shared_dequantize(m: onnx.ModelProto, idx: GraphIndex, reason: dict[str, str | None]) -> bool:
    """Give host consumers of a DequantizeLinear that also feeds the NPU their own copy."""
    g = m.graph
    changed = False
    for dq in [n for n in g.node if n.op_type == _DQ]:
        uses = idx.readers(dq.output[0])
        host = [u for u in uses if reason.get(u.name) is not None]
        if not host or len(host) == len(uses):
            continue
        copy = helper.make_node(_DQ, list(dq.input), [f"{dq.output[0]}_host"], name=f"{dq.name}_host",
                                **{a.name: helper.get_attribute_value(a) for a in dq.attribute})
        g.node.append(copy)
        info = idx.infos.get(dq.output[0])
        if info is not None:
            twin = g.value_info.add()
            twin.CopyFrom(info)
            twin.name = copy.output[0]
        for u in host:
            for i, t in enumerate(u.input):
                if t == dq.output[0]:
                    u.input[i] = copy.output[0]
        changed = True
    return changed


def constant_nodes(m: onnx.ModelProto, consts: set[str]) -> dict[str, onnx.NodeProto]:
    """Nodes computed from constants only (a weight's DequantizeLinear, a Constant), by output
    name: each stage that reads one gets its own copy, so weights never cross between stages."""
    out: dict[str, onnx.NodeProto] = {}
    for n in m.graph.node:
        if (n.input or n.op_type == "Constant") and all(not i or i in consts or i in out for i in n.input):
            for o in n.output:
                out[o] = n
    return out


def schedule(m: onnx.ModelProto, reason: dict[str, str | None], const_nodes: dict[str, onnx.NodeProto]) -> list[Stage]:
    """Group nodes into alternating NPU/CPU stages, as few as the dependencies allow."""
    folded = {n.output[0] for n in const_nodes.values()}  # keyed by output: protobuf wrappers have no stable id
    order = {n.output[0]: k for k, n in enumerate(m.graph.node)}
    nodes = [n for n in m.graph.node if n.output[0] not in folded]
    made_by = {o: i for i, n in enumerate(nodes) for o in n.output}
    preds = [{made_by[t] for t in n.input if t in made_by} for n in nodes]
    succs: list[set[int]] = [set() for _ in nodes]
    for i, ps in enumerate(preds):
        for p in ps:
            succs[p].add(i)
    waiting = [len(p) for p in preds]
    kind_of = ["cpu" if reason.get(n.name) else "npu" for n in nodes]
    ready = {"npu": [i for i, w in enumerate(waiting) if w == 0 and kind_of[i] == "npu"],
             "cpu": [i for i, w in enumerate(waiting) if w == 0 and kind_of[i] == "cpu"]}
    for heap in ready.values():
        heapq.heapify(heap)
    stages: list[Stage] = []
    while ready["npu"] or ready["cpu"]:
        if stages and ready[stages[-1].kind]:
            kind = stages[-1].kind
        else:
            kind = min((k for k in ready if ready[k]), key=lambda k: ready[k][0])
            stages.append(Stage(kind))
        i = heapq.heappop(ready[kind])
        stages[-1].nodes.append(nodes[i])
        for s in succs[i]:
            waiting[s] -= 1
            if waiting[s] == 0:
                heapq.heappush(ready[kind_of[s]], s)
    for s in stages:  # prepend the constant nodes each stage reads
        needed: set[str] = set()
        todo = [t for n in s.nodes for t in n.input if t in const_nodes]
        while todo:
            c = const_nodes[todo.pop()]
            if c.output[0] not in needed:
                needed.add(c.output[0])
                todo.extend(t for t in c.input if t in const_nodes)
        s.nodes[:0] = sorted((const_nodes[o] for o in needed), key=lambda n: order[n.output[0]])
    return stages


def connect(stages: list[Stage], consts: set[str], needed: set[str]) -> None:
    """Fill each stage's inputs (made elsewhere) and outputs (used elsewhere or ``needed``).

    ``consts``: initialisers and constant-node outputs, which every stage has itself."""
    where: dict[str, int] = {}
    for k, s in enumerate(stages):
        for n in s.nodes:
            for o in n.output:
                if o not in consts:
                    where[o] = k
    read_by: dict[str, set[int]] = {}
    for k, s in enumerate(stages):
        seen: set[str] = set()
        for n in s.nodes:
            for t in n.input:
                if t and t not in consts and where.get(t) != k and t not in seen:
                    seen.add(t)
                    s.inputs.append(t)
                    read_by.setdefault(t, set()).add(k)
    for k, s in enumerate(stages):
        for n in s.nodes:
            for o in n.output:
                if o not in consts and (read_by.get(o, set()) - {k} or o in needed):
                    s.outputs.append(o)


def subgraph(m: onnx.ModelProto, idx: GraphIndex, s: Stage, name: str,
             rename: dict[str, str] | None = None) -> onnx.ModelProto:
    """A stand-alone ONNX model of one stage's nodes. ``rename``: stage inputs the host holds
    under another name (an aliased device tensor), so the graph reads them by that name."""
    rename = rename or {}
    used = {t for n in s.nodes for t in n.input}
    inits = [i for i in m.graph.initializer if i.name in used]

    def vi(t: str, as_name: str | None = None) -> onnx.ValueInfoProto:
        if t not in idx.infos:
            raise KeyError(f"no type/shape for tensor {t!r}")
        out = onnx.ValueInfoProto()
        out.CopyFrom(idx.infos[t])
        if as_name:
            out.name = as_name
        return out

    nodes = list(s.nodes)
    if rename:
        nodes = []
        for n in s.nodes:
            c = onnx.NodeProto()
            c.CopyFrom(n)
            for i, t in enumerate(c.input):
                c.input[i] = rename.get(t, t)
            nodes.append(c)
    graph = helper.make_graph(nodes, name, [vi(t, rename.get(t)) for t in s.inputs], [vi(t) for t in s.outputs],
                              inits)
    sub = helper.make_model(graph, opset_imports=list(m.opset_import), producer_name="npusim.compiler")
    sub.ir_version = m.ir_version
    sub = onnx.shape_inference.infer_shapes(sub)
    onnx.checker.check_model(sub)
    return sub
