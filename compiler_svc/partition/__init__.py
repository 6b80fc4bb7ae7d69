"""From a quantised graph to a Program: boundaries, stages, layouts, costs.

1. ``batch_size`` and ``permute_input`` rewrite the graph (``batch.py``, ``permute.py``).
2. The program's edges become host operators: Quantize / QuantizeUint8 in, Dequantize out
   (``boundary.py``).
3. The rest is placed on the NPU or the host and scheduled into stages (``stages.py``).
4. Every tensor entering an NPU stage gets the layout the device wants, and every tensor
   leaving one its logical layout back, with host Lower/Pad/Unlower/Slice where the seed's
   rules put them on the CPU (``layout.py``).
5. Each NPU stage is costed with the target's cost model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx

from compiler_svc.config import CompilerConfig
from compiler_svc.cost import estimate
from compiler_svc.graph import toposort
from compiler_svc.partition.batch import apply_batch
from compiler_svc.partition.boundary import Edge, convert_inputs, convert_outputs, dtype_name, zero_point
from compiler_svc.partition.layout import axes_from_consumers, axes_from_producer, place_input, place_output
from compiler_svc.partition.permute import apply_permute
from compiler_svc.partition.stages import Stage, connect, constant_nodes, place, schedule, subgraph
from compiler_svc.support import GraphInfo
from services.hw import Target
from services.program import CpuStep, NpuStage, NpuStep, OpStep, Program, Step, TensorSpec

__all__ = ["build_program"]

@dataclass
class _Builder:
    m: onnx.ModelProto
    g: GraphInfo
    config: CompilerConfig
    inputs: list[Edge]
    outputs: list[Edge]
    steps: list[Step] = field(default_factory=list)
    made: dict[str, TensorSpec] = field(default_factory=dict)  # device tensors already produced by host ops
    logical: set[str] = field(default_factory=set)  # transposed inputs already made logical for a CPU step
    notes: list[str] = field(default_factory=list)

    def spec(self, tensor: str, axes: str) -> TensorSpec:
        vi = next((v for v in list(self.m.graph.value_info) + list(self.m.graph.input) + list(self.m.graph.output)
                   if v.name == tensor), None)
        if vi is None:
            raise KeyError(tensor)
        dims = tuple(int(d.dim_value) for d in vi.type.tensor_type.shape.dim)
        dtype = dtype_name(vi.type.tensor_type.elem_type)
        return TensorSpec(tensor, dtype, dims, axes, "logical", zero_point(self.g, list(self.m.graph.node), tensor))


def build_program(qmodel: onnx.ModelProto, *, target: Target, batch_size: int, config: CompilerConfig,
                  meta: dict[str, Any]) -> Program:
    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    m = apply_batch(m, batch_size)
    inputs = [i.name for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}]
    m = apply_permute(m, config.permute_input, inputs)
    toposort(m.graph)
    m = onnx.shape_inference.infer_shapes(m)
    g = GraphInfo.of(m)
    ins, outs = convert_inputs(m, g), convert_outputs(m, g)
    b = _Builder(m, g, config, ins, outs)
    reason = place(m, g)
    toposort(m.graph, available={e.inner for e in ins})
    folded = constant_nodes(m, set(g.consts))
    stages = schedule(m, reason, folded)
    connect(stages, set(g.consts) | set(folded), {e.inner for e in outs})
    user_inputs = [_program_input(b, e) for e in ins]
    b.steps.extend(e.op for e in ins if e.op is not None and not _removed_lower(b, e))
    npu_stages: list[NpuStage] = []
    for k, s in enumerate(stages):
        if s.kind == "npu":
            npu_stages.append(_npu_stage(b, s, len(npu_stages), target, f"{meta.get('model', 'model')}_npu{k}"))
        else:
            _logical_inputs(b, s)
            sub = subgraph(m, s, f"cpu{k}")
            ops = [{"name": n.name, "op_type": n.op_type, "reason": reason.get(n.name) or ""}
                   for n in s.nodes if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
            b.steps.append(CpuStep(sub.SerializeToString(), list(s.inputs), list(s.outputs), ops))
    user_outputs = [_program_output(b, e) for e in outs]
    b.steps.extend(e.op for e in outs if e.op is not None and not _removed_unlower(b, e))
    meta = dict(meta, notes=b.notes)
    return Program(target=target.name, batch_size=batch_size, inputs=user_inputs, outputs=user_outputs,
                   steps=b.steps, stages=npu_stages, meta=meta)


def _removed_lower(b: _Builder, e: Edge) -> bool:
    return b.config.remove_lower and e.op is not None and e.inner in b.made


def _removed_unlower(b: _Builder, e: Edge) -> bool:
    return b.config.remove_unlower and e.op is not None and e.inner in b.made and b.made[e.inner].name == e.name


def _source(b: _Builder, e: Edge) -> TensorSpec | None:
    """The tensor the host holds for an input whose graph side is in another axis order."""
    if e.source_axes is None or e.op is None:
        return None
    zp = int(e.op.attrs.get("zero_point", -128 if e.op.op == "QuantizeUint8" else 0))
    return TensorSpec(e.op.output, "int8", e.shape, e.source_axes, "logical", zp)


def _logical_inputs(b: _Builder, s: Stage) -> None:
    """A host fallback step reads logical tensors: an NHWC input it reads first gets
    Lower (from NHWC) + Unlower (to the graph's NCHW) on the host."""
    nodes = list(b.m.graph.node)
    for e in b.inputs:
        source = _source(b, e)
        if source is None or e.inner not in s.inputs or e.inner in b.logical:
            continue
        t = b.spec(e.inner, axes_from_consumers(nodes, e.inner, len(e.shape)))
        placed = place_input(t, source)
        if e.inner not in b.made:
            b.steps.extend(placed.ops)
            b.made[e.inner] = placed.device
        b.steps.append(OpStep("Unlower", {"axes": t.axes, "shape": list(t.shape)}, b.made[e.inner].name, e.inner,
                              "a CPU operator reads this NHWC input in the model's NCHW order"))
        b.logical.add(e.inner)


def _program_input(b: _Builder, e: Edge) -> TensorSpec:
    nodes = list(b.m.graph.node)
    axes = e.source_axes or axes_from_consumers(nodes, e.inner, len(e.shape))
    if b.config.remove_lower and e.op is not None:
        source = _source(b, e)
        inner = b.spec(e.inner, axes_from_consumers(nodes, e.inner, len(e.shape))) if source else \
            TensorSpec(e.inner, "int8", e.shape, axes, "logical", int(e.op.attrs.get("zero_point", 0)))
        placed = place_input(inner, source)
        device = TensorSpec(e.name, placed.device.dtype, placed.device.shape, placed.device.axes,
                            placed.device.layout, placed.device.pad)
        b.made[e.inner] = device  # the NPU stage reads the user's tensor as its device tensor
        b.notes.append(f"remove_lower: input {e.name!r} is taken as the device tensor "
                       f"{device.dtype}{device.shape} ({device.layout})")
        return device
    return TensorSpec(e.name, e.dtype, e.shape, axes)


def _program_output(b: _Builder, e: Edge) -> TensorSpec:
    nodes = list(b.m.graph.node)
    axes = axes_from_producer(nodes, e.inner, len(e.shape))
    if e.inner in b.made and b.made[e.inner].name == e.name:
        return b.made[e.inner]  # remove_unlower: the user gets the device tensor
    return TensorSpec(e.name, e.dtype, e.shape, axes)


def _npu_stage(b: _Builder, s: Stage, index: int, target: Target, name: str) -> NpuStage:
    nodes = list(b.m.graph.node)
    sub = subgraph(b.m, s, name)
    graph_in = [b.spec(t, axes_from_consumers(nodes, t, _rank(b, t))) for t in s.inputs]
    graph_out = [b.spec(t, axes_from_producer(nodes, t, _rank(b, t))) for t in s.outputs]
    dev_in, dev_out, layout_costs = [], [], []
    sources = {e.inner: _source(b, e) for e in b.inputs}
    for t in graph_in:
        if t.name in b.made:
            dev_in.append(b.made[t.name])
            continue
        placed = place_input(t, sources.get(t.name))
        if placed.ops:
            b.steps.extend(placed.ops)
        if placed.npu_bytes:
            layout_costs.append({"name": f"Lower({t.name})", "op_type": "Lower", "bytes": placed.npu_bytes})
        b.made[t.name] = placed.device
        dev_in.append(placed.device)
    after: list[OpStep] = []
    program_outputs = {e.inner: e for e in b.outputs}
    for t in graph_out:
        edge = program_outputs.get(t.name)
        placed = place_output(t)
        if b.config.remove_unlower and edge is not None and edge.op is not None:
            device = TensorSpec(edge.name, placed.device.dtype, placed.device.shape, placed.device.axes,
                                placed.device.layout, placed.device.pad)
            b.made[t.name] = device
            b.notes.append(f"remove_unlower: output {edge.name!r} is returned as the device tensor "
                           f"{device.dtype}{device.shape} ({device.layout})")
            dev_out.append(device)
            continue
        after.extend(placed.ops)
        if placed.npu_bytes:
            layout_costs.append({"name": f"Unlower({t.name})", "op_type": "Unlower", "bytes": placed.npu_bytes})
        dev_out.append(placed.device)
    b.steps.append(NpuStep(index, [d.name for d in dev_in], [d.name for d in dev_out]))
    b.steps.extend(after)
    ops, est = estimate(sub, target, extra=layout_costs)
    return NpuStage(sub.SerializeToString(), dev_in, dev_out, graph_in, graph_out, ops, est)


def _rank(b: _Builder, tensor: str) -> int:
    return len(b.g.shapes.get(tensor, ())) or 4
