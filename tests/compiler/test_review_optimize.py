"""Regressions from the review of the optimiser, quantiser and calibration.

Each test names the finding it pins down: operator expansions that emitted ``Constant`` nodes,
opset-18 Reduce operators with no or empty axes, graph outputs that are graph inputs (or listed
twice), unchecked ``input_shapes``, and random calibration samples of the wrong dtype. Models
are built here with ``onnx.helper``; where a rewrite could change the numbers, onnxruntime on
the original model is the reference.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from npusim.compiler_svc import (
    CalibrationMethod,
    Calibrator,
    compile,
    optimize_model,
    quantize,
)
from npusim.compiler_svc.calibrate import random_samples
from npusim.compiler_svc.pipeline import CompileOptions, compile_model
from npusim.services.errors import CalibrationError, CompileError, InvalidModel
from npusim.services.program import CpuStep
from tests.programs import run_program

pytestmark = pytest.mark.timeout(60)

FLOAT = TensorProto.FLOAT
SHAPE = [1, 4, 8, 32]


# -- helpers -----------------------------------------------------------------------------
def _model(nodes: list[onnx.NodeProto], inputs: list[tuple[str, list[int | str] | None, int]],
           outputs: list[tuple[str, list[int | str] | None, int]], inits: list[onnx.TensorProto] = (),
           opset: int = 13) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, s, t in inputs],
                          [helper.make_tensor_value_info(n, t, s) for n, s, t in outputs], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _weight(name: str, seed: int = 0) -> onnx.TensorProto:
    return numpy_helper.from_array((np.random.default_rng(seed).standard_normal((4, 4, 3, 3)) * 0.5)
                                   .astype(np.float32), name)


def _conv(x: str, w: str, y: str) -> onnx.NodeProto:
    return helper.make_node("Conv", [x, w], [y], pads=[1, 1, 1, 1])


def _x(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def _run(model: onnx.ModelProto | bytes, feeds: dict[str, np.ndarray], *, exact: bool = False) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if exact:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _quantize(m: onnx.ModelProto, **kw: object) -> bytes:
    cal = Calibrator(m, CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data([[_x(s)] for s in range(2)], progress=False)
    return quantize(m, cal.compute_range(), **kw)  # type: ignore[arg-type]


# -- 1: expansions emit initialisers, not Constant nodes -----------------------------------
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


# -- 2: opset-18 Reduce with no or empty axes ----------------------------------------------
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


# -- 9: outputs that are inputs, outputs listed twice, checker failures --------------------
def _passthrough_model(output_shape: list[int] | None) -> onnx.ModelProto:
    return _model([_conv("x", "w1", "out")], [("x", SHAPE, FLOAT)],
                  [("out", output_shape, FLOAT), ("x", output_shape, FLOAT)], [_weight("w1")])


@pytest.mark.parametrize("output_shape", [None, SHAPE], ids=["bare_outputs", "typed_outputs"])
def test_an_output_that_is_an_input_survives_optimize_and_quantize(output_shape: list[int] | None) -> None:
    out = optimize_model(_passthrough_model(output_shape))
    assert [o.name for o in out.graph.output] == ["out", "x"]
    assert out.graph.output[1].type == out.graph.input[0].type
    q = _quantize(out)
    qm = onnx.load_from_string(q)
    assert [o.name for o in qm.graph.output] == ["out", "x"]
    assert qm.graph.output[1].type == qm.graph.input[0].type
    x = _x(0)  # a calibration sample: nothing clips
    res = _run(q, {"x": x}, exact=True)
    np.testing.assert_array_equal(res[1], x)
    np.testing.assert_allclose(res[0], _run(out, {"x": x})[0], atol=0.3)


def test_an_output_that_is_a_uint8_input_is_uint8_too() -> None:
    q = onnx.load_from_string(_quantize(optimize_model(_passthrough_model(None)), with_quantize=False))
    assert q.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert q.graph.output[1].name == "x" and q.graph.output[1].type == q.graph.input[0].type
    u = np.random.default_rng(0).integers(0, 256, SHAPE).astype(np.uint8)
    np.testing.assert_array_equal(_run(q, {"x": u}, exact=True)[1], u)


def test_quantize_keeps_an_output_that_is_an_input_without_optimize_model() -> None:
    m = onnx.shape_inference.infer_shapes(_passthrough_model(SHAPE))
    m.graph.node[0].name = "conv"
    qm = onnx.load_from_string(_quantize(m))
    assert [o.name for o in qm.graph.output] == ["out", "x"]


def test_an_output_listed_twice_survives_optimize_and_quantize() -> None:
    m = _model([_conv("x", "w1", "y")], [("x", SHAPE, FLOAT)], [("y", None, FLOAT), ("y", None, FLOAT)],
               [_weight("w1")])
    out = optimize_model(m)
    assert [o.name for o in out.graph.output] == ["y", "y"]
    assert out.graph.output[0].type == out.graph.output[1].type
    assert [d.dim_value for d in out.graph.output[1].type.tensor_type.shape.dim] == SHAPE
    qm = onnx.load_from_string(_quantize(out))
    assert [o.name for o in qm.graph.output] == ["y", "y"]
    a, b = _run(qm, {"x": _x()}, exact=True)
    np.testing.assert_array_equal(a, b)


def _invalid(*args: object, **kwargs: object) -> None:
    raise onnx.checker.ValidationError("Field 'shape' of 'type' is required but missing.")


def test_a_checker_failure_in_optimize_model_is_invalid_model(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _model([_conv("x", "w1", "y")], [("x", SHAPE, FLOAT)], [("y", None, FLOAT)], [_weight("w1")])
    monkeypatch.setattr(onnx.checker, "check_model", _invalid)
    with pytest.raises(InvalidModel, match="not valid ONNX: Field 'shape'"):
        optimize_model(m)


def test_a_checker_failure_in_quantize_is_invalid_model(monkeypatch: pytest.MonkeyPatch) -> None:
    m = optimize_model(_model([_conv("x", "w1", "y")], [("x", SHAPE, FLOAT)], [("y", None, FLOAT)],
                              [_weight("w1")]))
    monkeypatch.setattr(onnx.checker, "check_model", _invalid)
    with pytest.raises(InvalidModel, match="quantised model is not valid ONNX: Field 'shape'"):
        _quantize(m)


# -- 12: input_shapes are checked ------------------------------------------------------------
def _dynamic_model() -> onnx.ModelProto:
    return _model([_conv("x", "w1", "y")], [("x", ["N", 4, "H", 32], FLOAT)], [("y", None, FLOAT)], [_weight("w1")])


@pytest.mark.parametrize("bad", ["a", -8, 0, 8.5, 8.0, True, None], ids=repr)
def test_input_shapes_dims_must_be_positive_integers(bad: object) -> None:
    with pytest.raises(InvalidModel, match=r"input_shapes\['x'\] dim 2 is .*positive integer"):
        optimize_model(_dynamic_model(), input_shapes={"x": [1, 4, bad, 32]})  # type: ignore[list-item]


@pytest.mark.parametrize("bad", [8, "1,4,8,32", {"x": 1}], ids=repr)
def test_input_shapes_must_map_names_to_lists(bad: object) -> None:
    with pytest.raises(InvalidModel, match="input_shapes"):
        optimize_model(_dynamic_model(), input_shapes={"x": bad})  # type: ignore[dict-item]
    with pytest.raises(InvalidModel, match="must map input names"):
        optimize_model(_dynamic_model(), input_shapes=[("x", [1, 4, 8, 32])])  # type: ignore[arg-type]


def test_input_shapes_may_not_change_a_static_dim() -> None:
    with pytest.raises(InvalidModel, match=r"input_shapes\['x'\] sets dim 1 to 5, but the model fixes it at 4"):
        optimize_model(_dynamic_model(), input_shapes={"x": [1, 5, 8, 32]})


def test_input_shapes_may_repeat_static_dims_and_use_numpy_ints() -> None:
    out = optimize_model(_dynamic_model(), input_shapes={"x": [np.int64(1), 4, np.int32(8), 32]})
    assert [d.dim_value for d in out.graph.input[0].type.tensor_type.shape.dim] == [1, 4, 8, 32]
    out = optimize_model(_dynamic_model(), input_shapes={"x": np.array([1, 4, 16, 32])})
    assert [d.dim_value for d in out.graph.input[0].type.tensor_type.shape.dim] == [1, 4, 16, 32]


def test_input_shapes_naming_an_unknown_input_lists_the_real_ones() -> None:
    with pytest.raises(InvalidModel, match=r"unknown inputs: image; the model's inputs are \['x'\]"):
        optimize_model(_dynamic_model(), input_shapes={"image": [1, 4, 8, 32]})


def test_pipeline_input_shapes_are_checked_before_calibration() -> None:
    data = _dynamic_model().SerializeToString()
    # CompileError: the pipeline may check the option itself (InvalidCompilerConfig) before optimize_model does
    with pytest.raises(CompileError, match=r"input_shapes.*8\.5"):
        compile_model(data, CompileOptions(input_shapes={"x": [1, 4, 8.5, 32]}, calibration_samples=1))
    with pytest.raises(InvalidModel, match="dim 1"):
        compile_model(data, CompileOptions(input_shapes={"x": [1, 5, 8, 32]}, calibration_samples=1))


# -- 13: random calibration samples of each input's dtype ------------------------------------
DTYPES = [(TensorProto.FLOAT, np.float32), (TensorProto.FLOAT16, np.float16), (TensorProto.UINT8, np.uint8),
          (TensorProto.INT8, np.int8), (TensorProto.INT32, np.int32), (TensorProto.INT64, np.int64),
          (TensorProto.BOOL, np.bool_)]


def _typed_inputs_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Cast", [f"i{k}"], [f"f{k}"], to=FLOAT) for k in range(len(DTYPES))]
    nodes.append(helper.make_node("Sum", [f"f{k}" for k in range(len(DTYPES))], ["y"]))
    return _model(nodes, [(f"i{k}", [2, 3, 5], t) for k, (t, _) in enumerate(DTYPES)], [("y", None, FLOAT)])


def test_random_samples_have_each_inputs_dtype_and_run_the_calibrator() -> None:
    m = optimize_model(_typed_inputs_model())
    samples = random_samples(m, 3, seed=1)
    assert len(samples) == 3
    for sample in samples:
        assert [a.dtype for a in sample] == [np.dtype(d) for _, d in DTYPES]
        assert all(a.shape == (2, 3, 5) for a in sample)
    u8 = np.concatenate([s[2].ravel() for s in samples])
    i64 = np.concatenate([s[5].ravel() for s in samples])
    assert u8.min() >= 0 and u8.max() > 127  # the pixel range, not N(0, 1) cast to uint8
    assert i64.min() >= 0 and i64.max() < 8
    assert all(np.array_equal(a, b) for a, b in zip(samples[0], random_samples(m, 1, seed=1)[0]))
    cal = Calibrator(m, CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data(samples, progress=False)
    lo, hi = cal.compute_range()["y"]
    assert lo < 0 < hi


@pytest.mark.parametrize("elem", [TensorProto.STRING, TensorProto.COMPLEX64, TensorProto.BFLOAT16])
def test_random_samples_refuse_a_dtype_they_cannot_sample(elem: int) -> None:
    m = _model([helper.make_node("Identity", ["s"], ["y"])], [("s", [2], elem)], [("y", [2], elem)])
    with pytest.raises(CalibrationError, match=r"input 's' is .*pass real calibration data"):
        random_samples(m, 1)


def test_random_samples_refuse_a_dynamic_shape() -> None:
    with pytest.raises(CalibrationError, match=r"input 'x' has no static shape.*optimize_model"):
        random_samples(_dynamic_model(), 1)


def _integer_input_model(elem: int) -> onnx.ModelProto:
    return _model([helper.make_node("Cast", ["i"], ["f"], to=FLOAT), _conv("f", "w1", "y")], [("i", SHAPE, elem)],
                  [("y", None, FLOAT)], [_weight("w1")])


@pytest.mark.parametrize("elem", [TensorProto.UINT8, TensorProto.INT64])
def test_random_samples_let_the_pipeline_calibrate_integer_inputs(elem: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the pipeline's 'random' mode does once it takes its samples from here."""
    from npusim.compiler_svc import pipeline
    monkeypatch.setattr(pipeline, "random_samples", random_samples)
    program, _ = compile_model(_integer_input_model(elem).SerializeToString(),
                               CompileOptions(target_npu="warboy", calibration_samples=2))
    assert program.inputs[0].dtype == np.dtype(helper.tensor_dtype_to_np_dtype(elem)).name


def test_pipeline_random_calibration_of_a_uint8_input() -> None:
    compile_model(_integer_input_model(TensorProto.UINT8).SerializeToString(),
                  CompileOptions(target_npu="warboy", calibration_samples=2))
