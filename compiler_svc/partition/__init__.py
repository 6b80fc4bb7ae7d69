"""From a quantised graph to a Program: boundaries, stages, layouts, costs.

1. ``batch_size`` and ``permute_input`` rewrite the graph (``batch.py``, ``permute.py``).
2. The program's edges become host operators: Quantize / QuantizeUint8 in, Dequantize out
   (``boundary.py``).
3. The rest is placed on the NPU or the host and scheduled into stages (``stages.py``).
4. Steps are emitted in stage order. A tensor can exist on the host in two forms, *logical*
   (the model's shape) and *device* (what an NPU stage reads or writes, ``layout.py``); each
   form is made once, on first need: an NPU stage's output goes straight into the next
   stage, and Unlower/Slice run only when a CPU step or the program's caller reads it.
5. Each NPU stage is costed with the target's cost model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import onnx
from onnx import helper

from npusim.compiler_svc.config import CompilerConfig
from npusim.services.cost import estimate, program_weights, recost_stage
from npusim.compiler_svc.graph import GraphIndex, toposort
from npusim.compiler_svc.partition.batch import apply_batch
from npusim.compiler_svc.partition.boundary import Edge, convert_inputs, convert_outputs
from npusim.compiler_svc.partition.layout import axes_of, device_form, place_input, to_logical
from npusim.compiler_svc.partition.permute import apply_permute
from npusim.compiler_svc.partition.stages import (
    Stage,
    connect,
    constant_nodes,
    place,
    schedule,
    subgraph,
)
from npusim.compiler_svc.passes._context import PassContext
from npusim.compiler_svc.passes.names import name_nodes
from npusim.services.errors import InvalidCompilerConfig
from npusim.services.hw import Target
from npusim.services.program import (
    CpuStep,
    NpuStage,
    NpuStep,
    OpStep,
    Program,
    Step,
    TensorSpec,
)

__all__ = ["build_program"]

_LOGICAL, _DEVICE = "logical", "device"


@dataclass
class _Builder:
    m: onnx.ModelProto
    idx: GraphIndex
    config: CompilerConfig
    const_nodes: dict[str, onnx.NodeProto]
    steps: list[Step] = field(default_factory=list)
    forms: dict[tuple[str, str], TensorSpec] = field(default_factory=dict)  # (tensor, form) → env tensor
    sources: dict[str, TensorSpec] = field(default_factory=dict)  # tensor → its NHWC copy on the host
    names: set[str] = field(default_factory=set)  # env tensor names in use
    notes: list[str] = field(default_factory=list)
    _specs: dict[str, TensorSpec] = field(default_factory=dict)

    def spec(self, t: str) -> TensorSpec:
        """The logical int8 tensor ``t`` as the graph computes on it (its axes take a graph walk: once)."""
        if t not in self._specs:
            shape = self.idx.shape(t)
            self._specs[t] = TensorSpec(t, self.idx.dtype(t), shape, axes_of(self.idx, t, len(shape)), "logical",
                                        self.idx.zero_point(t))
        return self._specs[t]

    def have(self, t: str, form: str, spec: TensorSpec) -> None:
        self.forms[(t, form)] = spec
        self.names.add(spec.name)

    def fresh(self, name: str) -> str:
        return name if name not in self.names else f"{name}:logical"

    def logical(self, t: str) -> TensorSpec:
        """The env tensor holding ``t`` in the model's layout; emits the host ops it takes."""
        if (t, _LOGICAL) in self.forms:
            return self.forms[(t, _LOGICAL)]
        want = self.spec(t)
        if t in self.sources:  # an NHWC input read in NCHW order: Lower from NHWC, Unlower to NCHW
            dev = self.device(t)
            out = replace(want, name=self.fresh(t))
            self.steps.append(OpStep("Unlower", {"axes": want.axes, "shape": list(want.shape)}, dev.name, out.name,
                                     "a CPU operator reads this NHWC input in the model's NCHW order"))
        elif (t, _DEVICE) in self.forms:
            dev = self.forms[(t, _DEVICE)]
            if dev.layout == "logical":
                out = dev
            else:
                out = replace(want, name=self.fresh(t))
                self.steps.extend(to_logical(dev, want, out.name))
        elif t in self.idx.consts or t in self.const_nodes:
            out = replace(want, name=t)
            self.steps.append(self._constant_step(t))
        else:
            raise AssertionError(f"nothing makes tensor {t!r} before it is read")
        self.have(t, _LOGICAL, out)
        return out

    def device(self, t: str) -> TensorSpec:
        """The env tensor holding ``t`` as an NPU stage reads it; emits the host ops it takes."""
        if (t, _DEVICE) in self.forms:
            return self.forms[(t, _DEVICE)]
        if t in self.sources:
            placed = place_input(self.spec(t), "", self.sources[t])
        else:
            placed = place_input(self.spec(t), self.logical(t).name)
        self.steps.extend(placed.ops)
        self.have(t, _DEVICE, placed.device)
        return placed.device

    def _constant_step(self, t: str) -> CpuStep:
        """A host step making a constant the program returns: it has no producer at run time."""
        nodes, todo, seen = [], [t], set()
        while todo:
            c = todo.pop()
            n = self.const_nodes.get(c)
            if n is not None and n.output[0] not in seen:
                seen.add(n.output[0])
                nodes.append(n)
                todo.extend(i for i in n.input if i)
        order = {n.output[0]: k for k, n in enumerate(self.m.graph.node)}
        nodes.sort(key=lambda n: order[n.output[0]])
        if t in self.idx.consts:  # an initialiser cannot also be a graph output: copy it out
            init = next(i for i in self.m.graph.initializer if i.name == t)
            const = onnx.TensorProto()
            const.CopyFrom(init)
            const.name = f"{t}:const"
            nodes = [helper.make_node("Identity", [const.name], [t], name=f"{t}_const")]
            graph = helper.make_graph(nodes, "const", [], [helper.make_tensor_value_info(t, const.data_type,
                                                                                        list(const.dims))], [const])
            sub = helper.make_model(graph, opset_imports=list(self.m.opset_import), producer_name="npusim.compiler")
            sub.ir_version = self.m.ir_version
            onnx.checker.check_model(sub)
        else:
            sub = subgraph(self.m, self.idx, Stage("cpu", nodes, [], [t]), f"const_{len(self.steps)}")
        return CpuStep(sub.SerializeToString(), [], [t],
                       [{"name": n.name, "op_type": n.op_type, "reason": "the output is a constant"} for n in nodes])


def build_program(qmodel: onnx.ModelProto, *, target: Target, batch_size: int, config: CompilerConfig,
                  meta: dict[str, Any]) -> Program:
    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    m = apply_batch(m, batch_size)
    inputs = [i.name for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}]
    m = apply_permute(m, config.permute_input, inputs)
    toposort(m.graph)
    name_nodes(m, PassContext())
    m = onnx.shape_inference.infer_shapes(m)
    idx = GraphIndex.of(m)
    ins, outs = convert_inputs(m, idx), convert_outputs(m, idx)
    idx.refresh(m)
    reason = place(m, idx)
    toposort(m.graph, available={e.inner for e in ins})
    const_nodes = constant_nodes(m, set(idx.consts))
    stages = schedule(m, reason, const_nodes)
    connect(stages, set(idx.consts) | set(const_nodes), {e.inner for e in outs})
    b = _Builder(m, idx, config, const_nodes)
    user_inputs = [_program_input(b, e) for e in ins]
    npu_stages: list[NpuStage] = []
    remove_unlower = {e.inner: e for e in outs if config.remove_unlower}
    for k, s in enumerate(stages):
        if s.kind == "npu":
            name = f"{meta.get('model', 'model')}_npu{k}"
            npu_stages.append(_npu_stage(b, s, len(npu_stages), target, name, remove_unlower, batch_size))
        else:
            feeds = [b.logical(t) for t in s.inputs]
            rename = {t: f.name for t, f in zip(s.inputs, feeds) if f.name != t}
            sub = subgraph(m, idx, s, f"cpu{k}", rename=rename)
            ops = [{"name": n.name, "op_type": n.op_type, "reason": reason.get(n.name) or ""}
                   for n in s.nodes if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
            b.steps.append(CpuStep(sub.SerializeToString(), [f.name for f in feeds], list(s.outputs), ops))
            for t in s.outputs:
                b.have(t, _LOGICAL, b.spec(t))
    together = program_weights(npu_stages)
    if together is not None:  # several NPU stages: a resident plan keeps all their weights on chip
        for st in npu_stages:
            st.ops, st.estimate = recost_stage(st, target.name, target.hw, batch=batch_size, program_weights=together)
    user_outputs = [_program_output(b, e) for e in outs]
    program = Program(target=target.name, batch_size=batch_size, inputs=user_inputs, outputs=user_outputs,
                      steps=b.steps, stages=npu_stages, meta=dict(meta, notes=b.notes))
    program.validate()
    return program


def _program_input(b: _Builder, e: Edge) -> TensorSpec:
    """Register what the host holds for input ``e`` once the program's first ops ran."""
    if e.op is None:
        shape = b.idx.shape(e.name)
        spec = TensorSpec(e.name, e.dtype, e.shape, axes_of(b.idx, e.name, len(shape)))
        b.have(e.name, _LOGICAL, spec)
        return spec
    inner = b.spec(e.inner)
    source = replace(inner, name=e.op.output, shape=e.shape, axes="NHWC") if e.source_axes else None
    if b.config.remove_lower:
        placed = place_input(inner, e.name, source)
        device = replace(placed.device, name=e.name)
        b.have(e.inner, _DEVICE, device)
        if device.layout == "logical":
            b.have(e.inner, _LOGICAL, device)
        b.notes.append(f"remove_lower: input {e.name!r} is taken as the device tensor "
                       f"{device.dtype}{device.shape} ({device.layout})")
        b.names.add(e.name)
        return device
    b.steps.append(e.op)
    b.have(e.name, _LOGICAL, TensorSpec(e.name, e.dtype, e.shape, e.source_axes or inner.axes))
    b.names.add(e.op.output)
    if source is not None:
        b.sources[e.inner] = source
    else:
        b.have(e.inner, _LOGICAL, inner)
    return TensorSpec(e.name, e.dtype, e.shape, e.source_axes or inner.axes)


def _program_output(b: _Builder, e: Edge) -> TensorSpec:
    if (e.inner, _DEVICE) in b.forms and b.forms[(e.inner, _DEVICE)].name == e.name and b.config.remove_unlower:
        return b.forms[(e.inner, _DEVICE)]  # remove_unlower: the caller gets the device tensor
    if b.config.remove_lower and e.inner in b.names and (e.inner, _LOGICAL) not in b.forms:
        raise InvalidCompilerConfig(f"output {e.name!r} returns input {e.inner!r}, which remove_lower takes as a "
                                    "device tensor: drop remove_lower, or do not return the input")
    held = b.logical(e.inner)
    spec = b.spec(e.inner)
    if e.op is not None:
        b.steps.append(replace(e.op, input=held.name))
        return TensorSpec(e.name, e.dtype, e.shape, spec.axes)
    if held.name != e.name:
        raise InvalidCompilerConfig(f"output {e.name!r} is also an input taken as a device tensor: drop "
                                    "remove_lower, or do not return the input")
    return TensorSpec(e.name, e.dtype, e.shape, spec.axes)


def _npu_stage(b: _Builder, s: Stage, index: int, target: Target, name: str,
               remove_unlower: dict[str, Edge], batch_size: int) -> NpuStage:
    sub = subgraph(b.m, b.idx, s, name)
    graph_in = [b.spec(t) for t in s.inputs]
    graph_out = [b.spec(t) for t in s.outputs]
    layout_costs: list[dict[str, Any]] = []
    dev_in = [b.device(t.name) for t in graph_in]
    for t, d in zip(graph_in, dev_in):
        if d.layout != "lowered" and t.shape:
            layout_costs.append({"name": f"Lower({t.name})", "op_type": "Lower", "bytes": d.size})
    dev_out = []
    for t in graph_out:
        dev, npu_bytes, _ = device_form(t)
        if npu_bytes:
            layout_costs.append({"name": f"Unlower({t.name})", "op_type": "Unlower", "bytes": npu_bytes})
        edge = remove_unlower.get(t.name)
        if edge is not None and (edge.op is not None or dev.layout != "logical"):
            dev = replace(dev, name=edge.name)
            b.notes.append(f"remove_unlower: output {edge.name!r} is returned as the device tensor "
                           f"{dev.dtype}{dev.shape} ({dev.layout})")
        b.have(t.name, _DEVICE, dev)
        if dev.layout == "logical" and dev.name == t.name:
            b.have(t.name, _LOGICAL, dev)
        dev_out.append(dev)
    b.steps.append(NpuStep(index, [d.name for d in dev_in], [d.name for d in dev_out]))
    ops, est = estimate(sub, target, extra=layout_costs, batch=batch_size)
    return NpuStage(sub.SerializeToString(), dev_in, dev_out, graph_in, graph_out, ops, est)
