"""``optimize_model`` on operators of newer opsets, rewritten for opset 13: the expansions of
Gelu (erf and tanh), HardSwish and Mish emit initialisers, not ``Constant`` nodes (and a
compiled tanh-Gelu program has no Constant CPU step), and opset-18 Reduce operators with no or
empty axes reduce nothing (``noop_with_empty_axes``) or everything, as the ONNX spec says.
Models are built here with ``onnx.helper``; onnxruntime on the original model is the reference.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from npusim.compiler_svc import compile, optimize_model
from npusim.services.program import CpuStep
from tests.compiler.graphs import FLOAT, SHAPE
from tests.compiler.graphs import conv as _conv
from tests.compiler.graphs import minmax_quantize as _quantize
from tests.compiler.graphs import model as _model
from tests.compiler.graphs import run as _run
from tests.compiler.graphs import sample as _x
from tests.compiler.graphs import weight as _weight
from tests.programs import run_program

pytestmark = pytest.mark.timeout(60)



# -- expansions emit initialisers, not Constant nodes --------------------------------------
EXPANSIONS = {
    "gelu_erf": (helper.make_node("Gelu", ["a"], ["g"]), 20),
    "gelu_tanh": (helper.make_node("Gelu", ["a"], ["g"], approximate="tanh"), 20),
    "hardswish": (helper.make_node("HardSwish", ["a"], ["g"]), 14),
    "mish": (helper.make_node("Mish", ["a"], ["g"]), 18),
}


def _expansion_model(kind: str) -> onnx.ModelProto:
    node, opset = EXPANSIONS[kind]
    return _model([_conv("x", "w1", "a"), node, _conv("g", "w2", "y")], [("x", SHAPE, FLOAT)], [("y", None, FLOAT)],
                  [_weight("w1"), _weight("w2", 1)], opset=opset)


@pytest.mark.parametrize("kind", sorted(EXPANSIONS))
def test_expanded_operators_use_initialisers_not_constant_nodes(kind: str) -> None:
    m = _expansion_model(kind)
    out = optimize_model(m)
    assert out.opset_import[0].version == 13
    assert [n.op_type for n in out.graph.node if n.op_type in ("Constant", "Gelu", "HardSwish", "Mish")] == []
    np.testing.assert_allclose(_run(out, {"x": _x()})[0], _run(m, {"x": _x()})[0], rtol=1e-5, atol=1e-5)


def test_tanh_gelu_program_has_no_constant_cpu_steps_and_reproduces_its_model() -> None:
    q = _quantize(optimize_model(_expansion_model("gelu_tanh")))
    assert not any(n.op_type == "Constant" for n in onnx.load_from_string(q).graph.node)
    program = compile(q, target_npu="warboy")
    cpu_ops = [o["op_type"] for s in program.steps if isinstance(s, CpuStep) for o in s.ops]
    assert "Constant" not in cpu_ops
    x = _x(7)
    np.testing.assert_array_equal(run_program(program, [x], exact=True)[0], _run(q, {"x": x}, exact=True)[0])


# -- opset-18 Reduce with no or empty axes -------------------------------------------------
def _reduce_model(op: str, noop: int, axes: list[int] | None) -> onnx.ModelProto:
    inputs = ["x"] if axes is None else ["x", "ax"]
    inits = [] if axes is None else [numpy_helper.from_array(np.array(axes, np.int64), "ax")]
    return _model([helper.make_node(op, inputs, ["r"], noop_with_empty_axes=noop, keepdims=1),
                   helper.make_node("Relu", ["r"], ["y"])], [("x", SHAPE, FLOAT)], [("y", None, FLOAT)], inits,
                  opset=18)


def _reduce_node(m: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in m.graph.node if n.output[0] == "r")


NO_AXES = {"ReduceMean": "Identity", "ReduceMax": "Identity", "ReduceMin": "Identity", "ReduceProd": "Identity",
           "ReduceLogSumExp": "Identity", "ReduceL1": "Abs", "ReduceL2": "Abs", "ReduceLogSum": "Log",
           "ReduceSumSquare": "Mul"}


@pytest.mark.parametrize("op", sorted(NO_AXES))
@pytest.mark.parametrize("axes", [None, []], ids=["no_axes_input", "empty_constant_axes"])
def test_reduce_with_noop_and_no_axes_reduces_nothing(op: str, axes: list[int] | None) -> None:
    """A reduction over no axes: the identity, or the operator's element-wise part (ONNX spec)."""
    m = _reduce_model(op, 1, axes)
    out = optimize_model(m)
    assert out.opset_import[0].version == 13
    assert _reduce_node(out).op_type == NO_AXES[op]
    got, want = _run(out, {"x": _x()})[0], _run(m, {"x": _x()})[0]
    assert got.shape == want.shape == tuple(SHAPE)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax"])
@pytest.mark.parametrize("axes", [None, []], ids=["no_axes_input", "empty_constant_axes"])
def test_reduce_with_no_axes_reduces_everything_without_an_axes_attribute(op: str, axes: list[int] | None) -> None:
    m = _reduce_model(op, 0, axes)
    out = optimize_model(m)
    node = _reduce_node(out)
    assert out.opset_import[0].version == 13
    assert node.op_type == op and len(node.input) == 1
    assert "axes" not in {a.name for a in node.attribute}
    got, want = _run(out, {"x": _x()})[0], _run(m, {"x": _x()})[0]
    assert got.shape == want.shape == (1, 1, 1, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_reduce_with_constant_axes_keeps_them_as_the_attribute() -> None:
    m = _reduce_model("ReduceMax", 1, [1])
    out = optimize_model(m)
    node = _reduce_node(out)
    assert node.op_type == "ReduceMax" and list(helper.get_attribute_value(
        next(a for a in node.attribute if a.name == "axes"))) == [1]
    np.testing.assert_allclose(_run(out, {"x": _x()})[0], _run(m, {"x": _x()})[0], rtol=1e-6)
