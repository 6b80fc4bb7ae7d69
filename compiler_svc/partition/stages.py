"""Split the graph into NPU stages and CPU steps.

Every node is placed on the NPU or the host: the chip's rules (:mod:`compiler_svc.support`)
decide for compute nodes, and the NPU takes only int8 work — a node whose float inputs do
not come from a DequantizeLinear, or whose float outputs do not all go to a
QuantizeLinear, runs on the host. A DequantizeLinear goes with its consumers (it is copied
when they sit on both sides) and a QuantizeLinear with its producer, so every tensor that
crosses between the NPU and the host is int8.

Nodes are then scheduled into as few stages as possible: list scheduling in topological
order that keeps taking ready nodes of the current kind before switching.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import helper

from compiler_svc.support import GraphInfo, npu_reason

__all__ = ["Stage", "constant_nodes", "connect", "place", "schedule", "subgraph"]

_Q, _DQ = "QuantizeLinear", "DequantizeLinear"
_INT = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}


@dataclass
class Stage:
    kind: str  # "npu" | "cpu"
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


def _elem_types(m: onnx.ModelProto) -> dict[str, int]:
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output)}
    types.update({i.name: i.data_type for i in m.graph.initializer})
    return types


def place(m: onnx.ModelProto, g: GraphInfo) -> dict[str, str | None]:
    """node name → None (NPU) or the reason it runs on the host. Rewrites shared DQs in ``m``."""
    nodes = list(m.graph.node)
    types = _elem_types(m)
    producers = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    reason: dict[str, str | None] = {}
    for n in nodes:
        if n.op_type in (_Q, _DQ):
            continue
        why = npu_reason(n, g)
        if why is None:
            for t in n.input:
                if not t or t in g.consts:
                    continue
                p = producers.get(t)
                if types.get(t) not in _INT and (p is None or p.op_type != _DQ):
                    why = f"its input {t!r} is not quantised, so this is not int8 work"
                    break
        if why is None:
            for t in n.output:
                uses = consumers.get(t, [])
                if types.get(t) not in _INT and (not uses or any(u.op_type != _Q for u in uses)):
                    why = f"its output {t!r} is not quantised, so this is not int8 work"
                    break
        reason[n.name] = why
    _split_shared_dequantize(m, reason)
    nodes = list(m.graph.node)
    producers = {o: n for n in nodes for o in n.output}
    consumers = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for n in nodes:
        if n.op_type == _DQ:
            uses = consumers.get(n.output[0], [])
            reason[n.name] = reason.get(uses[0].name) if uses else "nothing on the NPU reads it"
        elif n.op_type == _Q:
            p = producers.get(n.input[0])
            reason[n.name] = reason.get(p.name) if p is not None else "it quantises a program input"
    return reason


def _split_shared_dequantize(m: onnx.ModelProto, reason: dict[str, str | None]) -> None:
    """Give host consumers of a DequantizeLinear that also feeds the NPU their own copy."""
    g = m.graph
    for dq in [n for n in g.node if n.op_type == _DQ]:
        uses = [n for n in g.node if dq.output[0] in n.input]
        host = [u for u in uses if reason.get(u.name) is not None]
        if not host or len(host) == len(uses):
            continue
        copy = helper.make_node(_DQ, list(dq.input), [f"{dq.output[0]}_host"], name=f"{dq.name}_host",
                                **{a.name: helper.get_attribute_value(a) for a in dq.attribute})
        g.node.append(copy)
        info = next((v for v in g.value_info if v.name == dq.output[0]), None)
        if info is not None:
            twin = g.value_info.add()
            twin.CopyFrom(info)
            twin.name = copy.output[0]
        for u in host:
            for i, t in enumerate(u.input):
                if t == dq.output[0]:
                    u.input[i] = copy.output[0]


def constant_nodes(m: onnx.ModelProto, consts: set[str]) -> dict[str, onnx.NodeProto]:
    """Nodes computed from constants only (a weight's DequantizeLinear), by output name: each
    stage that reads one gets its own copy, so weights never cross between stages."""
    out: dict[str, onnx.NodeProto] = {}
    for n in m.graph.node:
        if n.input and all(not i or i in consts or i in out for i in n.input):
            for o in n.output:
                out[o] = n
    return out


def schedule(m: onnx.ModelProto, reason: dict[str, str | None], const_nodes: dict[str, onnx.NodeProto]) -> list[Stage]:
    """Group nodes into alternating NPU/CPU stages, as few as the dependencies allow."""
    folded = {n.output[0] for n in const_nodes.values()}  # keyed by output: protobuf wrappers have no stable id
    nodes = [n for n in m.graph.node if n.output[0] not in folded]
    made_by = {o: i for i, n in enumerate(nodes) for o in n.output}
    preds = [{made_by[t] for t in n.input if t in made_by} for n in nodes]
    succs: list[set[int]] = [set() for _ in nodes]
    for i, ps in enumerate(preds):
        for p in ps:
            succs[p].add(i)
    waiting = [len(p) for p in preds]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    kind_of = ["cpu" if reason.get(n.name) else "npu" for n in nodes]
    stages: list[Stage] = []
    while ready:
        ready.sort()
        kind = kind_of[ready[0]] if not stages else stages[-1].kind
        pick = [i for i in ready if kind_of[i] == kind]
        if not pick or not stages:
            kind = kind_of[ready[0]] if not pick else kind
            stages.append(Stage(kind))
            pick = [i for i in ready if kind_of[i] == kind]
        i = pick[0]
        ready.remove(i)
        stages[-1].nodes.append(nodes[i])
        for s in succs[i]:
            waiting[s] -= 1
            if waiting[s] == 0:
                ready.append(s)
    for s in stages:  # prepend the constant nodes each stage reads
        needed: set[str] = set()
        todo = [t for n in s.nodes for t in n.input if t in const_nodes]
        while todo:
            c = const_nodes[todo.pop()]
            if c.output[0] not in needed:
                needed.add(c.output[0])
                todo.extend(t for t in c.input if t in const_nodes)
        s.nodes[:0] = [n for n in m.graph.node if n.output[0] in needed]
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
    for k, s in enumerate(stages):
        seen: set[str] = set()
        for n in s.nodes:
            for t in n.input:
                if t and t not in consts and where.get(t) != k and t not in seen:
                    seen.add(t)
                    s.inputs.append(t)
    for k, s in enumerate(stages):
        used_later = {t for j, other in enumerate(stages) if j != k for t in other.inputs}
        for n in s.nodes:
            for o in n.output:
                if o not in consts and (o in used_later or o in needed):
                    s.outputs.append(o)


def subgraph(m: onnx.ModelProto, s: Stage, name: str) -> onnx.ModelProto:
    """A stand-alone ONNX model of one stage's nodes."""
    infos = {vi.name: vi for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output)}
    used = {t for n in s.nodes for t in n.input}
    inits = [i for i in m.graph.initializer if i.name in used]

    def vi(t: str) -> onnx.ValueInfoProto:
        if t not in infos:
            raise KeyError(f"no type/shape for tensor {t!r}")
        out = onnx.ValueInfoProto()
        out.CopyFrom(infos[t])
        return out

    graph = helper.make_graph(list(s.nodes), name, [vi(t) for t in s.inputs], [vi(t) for t in s.outputs], inits)
    sub = helper.make_model(graph, opset_imports=list(m.opset_import), producer_name="npusim.compiler")
    sub.ir_version = m.ir_version
    sub = onnx.shape_inference.infer_shapes(sub)
    onnx.checker.check_model(sub)
    return sub
