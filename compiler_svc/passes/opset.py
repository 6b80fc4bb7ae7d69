"""Bring the model to the target opset (exporters write anything from opset 11 to 21).

Older models go up with onnx's version converter. onnx has almost no adapters *down*, so a
newer model (torch's classic exporter at 14–17, its default exporter at 18–21) comes down by
this pass's own table:

- an operator whose newer versions only widened its types, or added an attribute or input it
  leaves at the default, is relabelled (``_RELABEL``);
- Reduce operators whose ``axes`` moved from attribute to input in opset 18 get their
  constant axes back as the attribute (``ReduceSum`` already took an input at 13); with no or
  empty axes they reduce everything, or under ``noop_with_empty_axes=1`` become their
  element-wise part (Identity for most);
- HardSwish, Gelu and Mish, newer than 13, are rewritten exactly with opset-13 operators. Their
  constants become initialisers, not ``Constant`` nodes: onnxruntime turned every Constant into
  an initialiser before this pass, and the stages after it (quantiser, partitioner) only know those.

A model that uses anything else newer than the target keeps its own opset — everything
downstream handles it — and the pass notes why.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import onnx
from onnx import defs, helper, numpy_helper, version_converter

from npusim.compiler_svc.graph import attr
from npusim.compiler_svc.loader import opset_of
from npusim.compiler_svc.passes._context import PassContext
from npusim.services.errors import InvalidModel

log = logging.getLogger("npusim.compiler")

_ABSENT = object()

# op -> {attribute: the value (or _ABSENT) that keeps the opset-13 meaning}
_RELABEL: dict[str, dict[str, object]] = {
    **{op: {} for op in ("Add", "Sub", "Mul", "Div", "Relu", "Identity", "CumSum", "Pow", "Where", "LessOrEqual",
                         "GreaterOrEqual", "LeakyRelu", "PRelu", "Constant", "Equal", "Size", "ConstantOfShape",
                         "IsInf", "IsNaN", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "ReduceSum")},
    "Reshape": {"allowzero": 0},
    "Shape": {"start": _ABSENT, "end": _ABSENT},
    "BatchNormalization": {"training_mode": 0},
    "GRU": {"layout": 0}, "LSTM": {"layout": 0}, "RNN": {"layout": 0},
    "ScatterND": {"reduction": b"none"}, "ScatterElements": {"reduction": b"none"},
    "Cast": {"saturate": _ABSENT},
    "AveragePool": {"dilations": _ABSENT},
    "Resize": {"antialias": 0, "axes": _ABSENT, "keep_aspect_ratio_policy": b"stretch"},
    "Pad": {},
    "Split": {"num_outputs": _ABSENT},
}
_AXES_TO_ATTRIBUTE = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
                      "ReduceLogSumExp", "ReduceSumSquare"}

_NO_AXES = {"ReduceL1": "Abs", "ReduceL2": "Abs", "ReduceLogSum": "Log", "ReduceSumSquare": "Mul"}
"""A Reduce over no axes is its element-wise part (Mul: x·x); the others are the identity."""


def convert_opset(m: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    have, want = opset_of(m), ctx.opset_version
    if have == want:
        return m
    if have < want:
        try:
            return version_converter.convert_version(m, want)
        except Exception as e:  # noqa: BLE001 - the converter raises bare RuntimeErrors
            raise InvalidModel(f"cannot convert the model from opset {have} to {want}: {e}") from None
    consts = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    blockers = {f"{n.op_type}-{since}" for n, since in _newer(m, have, want) if not _convertible(n, since, consts)}
    if blockers:
        ctx.notes.append(f"kept opset {have}: {', '.join(sorted(blockers))} have no opset-{want} form")
        log.info("keeping opset %d (%s have no opset-%d form)", have, ", ".join(sorted(blockers)), want)
        return m
    newer = {n.name or n.output[0] for n, _ in _newer(m, have, want)}  # protobuf wrappers have no stable id()
    nodes: list[onnx.NodeProto] = []
    for n in m.graph.node:
        if n.op_type in _EXPAND:
            new_nodes, new_inits = _EXPAND[n.op_type](n)
            nodes.extend(new_nodes)
            m.graph.initializer.extend(new_inits)
        elif n.op_type in _AXES_TO_ATTRIBUTE:
            nodes.append(_axes_attribute(n, consts))
        else:
            if (n.name or n.output[0]) in newer:
                _strip_new_attributes(n, want)
            nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    for imp in m.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = want
    return m


def _newer(m: onnx.ModelProto, have: int, want: int) -> list[tuple[onnx.NodeProto, int]]:
    out = []
    for n in m.graph.node:
        if n.domain not in ("", "ai.onnx"):
            continue
        try:
            since = defs.get_schema(n.op_type, have).since_version
        except Exception:  # noqa: BLE001 - an unknown operator: onnxruntime will name it
            continue
        if since > want:
            out.append((n, since))
    return out


def _convertible(n: onnx.NodeProto, since: int, consts: dict[str, np.ndarray]) -> bool:
    if n.op_type in _EXPAND:
        return n.op_type != "Gelu" or attr(n, "approximate", b"none") in (b"none", b"tanh")
    if n.op_type in _AXES_TO_ATTRIBUTE:
        return len(n.input) < 2 or not n.input[1] or n.input[1] in consts
    if n.op_type not in _RELABEL:
        return False
    for name, required in _RELABEL[n.op_type].items():
        actual = attr(n, name, _ABSENT)
        if actual is _ABSENT or actual == required:
            continue  # absent means ONNX's default, which is the opset-13 meaning
        if name == "allowzero" and n.input[1] in consts and 0 not in consts[n.input[1]]:
            continue  # allowzero only matters for zeros in the shape, and this constant shape has none
        if name == "dilations" and all(int(d) == 1 for d in actual):  # type: ignore[union-attr]
            continue
        if name == "saturate":
            continue  # only float8 casts saturate, and opset 13 has no float8
        return False
    if n.op_type == "BatchNormalization" and len(n.output) > 1:
        return False
    if n.op_type == "Pad" and (len(n.input) > 3 and n.input[3] or attr(n, "mode", b"constant") == b"wrap"):
        return False
    if n.op_type == "Resize" and attr(n, "coordinate_transformation_mode", b"") == b"half_pixel_symmetric":
        return False
    return True


def _strip_new_attributes(n: onnx.NodeProto, want: int) -> None:
    """Drop attributes the target opset's schema lacks (they are at their defaults here)."""
    known = set(defs.get_schema(n.op_type, want).attributes)
    keep = [a for a in n.attribute if a.name in known]
    del n.attribute[:]
    n.attribute.extend(keep)


def _axes_attribute(n: onnx.NodeProto, consts: dict[str, np.ndarray]) -> onnx.NodeProto:
    """The opset-13 form of an opset-18 Reduce: constant axes as the attribute.

    No axes (absent, or an empty tensor) means "all axes" — or, under ``noop_with_empty_axes=1``,
    a reduction over no axes, which opset 13 cannot say: that is the operator's element-wise part
    alone (``_NO_AXES``: the identity for most, |x| for ReduceL1/L2, log for ReduceLogSum, x² for
    ReduceSumSquare — as the ONNX spec and onnxruntime have it). An empty ``axes`` attribute is
    not "all axes" in every reader, so "all axes" leaves the attribute out.
    """
    attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    noop = int(attrs.pop("noop_with_empty_axes", 0))
    axes = [int(a) for a in np.ravel(consts[n.input[1]])] if len(n.input) > 1 and n.input[1] else []
    if not axes and noop:
        op = _NO_AXES.get(n.op_type, "Identity")
        x = [n.input[0]] * (2 if op == "Mul" else 1)
        return helper.make_node(op, x, list(n.output), name=n.name)
    attrs.pop("axes", None)
    if axes:
        attrs["axes"] = axes
    return helper.make_node(n.op_type, [n.input[0]], list(n.output), name=n.name, **attrs)


_Expansion = tuple[list[onnx.NodeProto], list[onnx.TensorProto]]


def _hardswish(n: onnx.NodeProto) -> _Expansion:
    gate = f"{n.output[0]}_hardsigmoid"
    return [helper.make_node("HardSigmoid", [n.input[0]], [gate], alpha=1.0 / 6, beta=0.5, name=f"{n.name}_gate"),
            helper.make_node("Mul", [n.input[0], gate], list(n.output), name=n.name or f"{n.output[0]}_mul")], []


def _gelu(n: onnx.NodeProto) -> _Expansion:
    """0.5·x·(1 + erf(x/√2)), or the tanh approximation when the node asks for it."""
    x, y, p = n.input[0], n.output[0], n.name or n.output[0]
    if attr(n, "approximate", b"none") == b"tanh":
        values = {"k": math.sqrt(2 / math.pi), "a": 0.044715, "half": 0.5, "one": 1.0}
        nodes = [helper.make_node("Mul", [x, x], [f"{p}_x2"], name=f"{p}_x2"),
                 helper.make_node("Mul", [f"{p}_x2", x], [f"{p}_x3"], name=f"{p}_x3"),
                 helper.make_node("Mul", [f"{p}_x3", f"{p}_a"], [f"{p}_ax3"], name=f"{p}_ax3"),
                 helper.make_node("Add", [x, f"{p}_ax3"], [f"{p}_in"], name=f"{p}_in"),
                 helper.make_node("Mul", [f"{p}_in", f"{p}_k"], [f"{p}_kin"], name=f"{p}_kin"),
                 helper.make_node("Tanh", [f"{p}_kin"], [f"{p}_t"], name=f"{p}_t"),
                 helper.make_node("Add", [f"{p}_t", f"{p}_one"], [f"{p}_1t"], name=f"{p}_1t"),
                 helper.make_node("Mul", [x, f"{p}_1t"], [f"{p}_x1t"], name=f"{p}_x1t"),
                 helper.make_node("Mul", [f"{p}_x1t", f"{p}_half"], [y], name=p)]
    else:
        values = {"r2": 1 / math.sqrt(2), "half": 0.5, "one": 1.0}
        nodes = [helper.make_node("Mul", [x, f"{p}_r2"], [f"{p}_s"], name=f"{p}_s"),
                 helper.make_node("Erf", [f"{p}_s"], [f"{p}_e"], name=f"{p}_e"),
                 helper.make_node("Add", [f"{p}_e", f"{p}_one"], [f"{p}_1e"], name=f"{p}_1e"),
                 helper.make_node("Mul", [x, f"{p}_1e"], [f"{p}_x1e"], name=f"{p}_x1e"),
                 helper.make_node("Mul", [f"{p}_x1e", f"{p}_half"], [y], name=p)]
    return nodes, [numpy_helper.from_array(np.array(v, np.float32), f"{p}_{k}") for k, v in values.items()]


def _mish(n: onnx.NodeProto) -> _Expansion:
    x, p = n.input[0], n.name or n.output[0]
    return [helper.make_node("Softplus", [x], [f"{p}_sp"], name=f"{p}_sp"),
            helper.make_node("Tanh", [f"{p}_sp"], [f"{p}_t"], name=f"{p}_t"),
            helper.make_node("Mul", [x, f"{p}_t"], list(n.output), name=p)], []


_EXPAND: dict[str, Callable[[onnx.NodeProto], _Expansion]] = {
    "HardSwish": _hardswish, "Gelu": _gelu, "Mish": _mish}
