"""``optimize_model``: opset conversion, static shapes (and the checks on ``input_shapes``),
constant folding, BatchNormalization fusion and lowering, Identity/Dropout removal, node naming,
invalid models — each checked on a small model built here with ``onnx.helper`` and against
onnxruntime (the optimised model must compute the same outputs as the original), then on every
model of the zoo. Operators of newer opsets are in ``test_optimize_newer_opsets.py``.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from npusim.compiler_svc import optimize_model
from npusim.compiler_svc.pipeline import CompileOptions, compile_model
from npusim.services import zoo
from npusim.services.errors import CompileError, InvalidModel

pytestmark = pytest.mark.timeout(60)

FLOAT = TensorProto.FLOAT
ZOO_FAST = [name for name in zoo.MODELS if name not in zoo.HEAVY]


# -- helpers -----------------------------------------------------------------------------
def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _init(name: str, shape: tuple[int, ...], *, seed: int = 0, positive: bool = False) -> onnx.TensorProto:
    a = _rng(seed).standard_normal(shape).astype(np.float32)
    if positive:
        a = np.abs(a) + np.float32(0.5)
    return numpy_helper.from_array(a, name)


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _model(nodes: list[onnx.NodeProto], inputs: list[tuple[str, list[int | str]]],
           outputs: list[tuple[str, list[int | str] | None]], inits: list[onnx.TensorProto] = (),
           opset: int = 13) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, FLOAT, s) for n, s in inputs],
                          [helper.make_tensor_value_info(n, FLOAT, s) for n, s in outputs], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, feeds: dict[str, np.ndarray],
                         atol: float = 1e-5) -> None:
    ra, rb = _run(a, feeds), _run(b, feeds)
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb):
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=atol)


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def _bn(x: str, y: str, c: int, prefix: str, seed: int) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    node = helper.make_node("BatchNormalization", [x, f"{prefix}_s", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"],
                            [y], name=f"{prefix}_bn", epsilon=1e-3)
    inits = [_init(f"{prefix}_s", (c,), seed=seed), _init(f"{prefix}_b", (c,), seed=seed + 1),
             _init(f"{prefix}_m", (c,), seed=seed + 2), _init(f"{prefix}_v", (c,), seed=seed + 3, positive=True)]
    return node, inits


# -- opset conversion ---------------------------------------------------------------------
def _exporter_model(opset: int) -> onnx.ModelProto:
    """Conv+BN+Relu, a residual Add, Clip (min/max as inputs since opset 11), Squeeze/Unsqueeze
    and ReduceSum (axes attribute before opset 13, input from 13), Identity, Dropout, Reshape to
    [1, -1] and a 4-D Softmax (whose axis meaning changed at opset 13)."""
    nodes = [helper.make_node("Conv", ["x", "w", "wb"], ["c"], pads=[1, 1, 1, 1], name="conv")]
    bn, inits = _bn("c", "bn", 4, "bn", 10)
    nodes.append(bn)
    inits += [_init("w", (4, 3, 3, 3), seed=1), _init("wb", (4,), seed=2),
              numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
              numpy_helper.from_array(np.array(6.0, np.float32), "hi"), _ints("shape", [1, -1])]
    nodes += [
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "c"], ["a"], name="add"),
        helper.make_node("Clip", ["a", "lo", "hi"], ["cl"], name="clip"),
        helper.make_node("Identity", ["cl"], ["id"], name="identity"),
    ]
    if opset < 13:
        nodes += [helper.make_node("Dropout", ["id"], ["dr"], name="dropout", **({"ratio": 0.5} if opset < 12 else {})),
                  helper.make_node("Squeeze", ["dr"], ["sq"], axes=[0], name="squeeze"),
                  helper.make_node("Unsqueeze", ["sq"], ["us"], axes=[0], name="unsqueeze"),
                  helper.make_node("ReduceSum", ["us"], ["rs"], axes=[3], keepdims=1, name="reducesum")]
    else:
        inits += [_ints("ax0", [0]), _ints("ax3", [3])]
        nodes += [helper.make_node("Dropout", ["id"], ["dr"], name="dropout"),
                  helper.make_node("Squeeze", ["dr", "ax0"], ["sq"], name="squeeze"),
                  helper.make_node("Unsqueeze", ["sq", "ax0"], ["us"], name="unsqueeze"),
                  helper.make_node("ReduceSum", ["us", "ax3"], ["rs"], keepdims=1, name="reducesum")]
    nodes += [helper.make_node("Softmax", ["rs"], ["sm"], axis=1, name="softmax"),
              helper.make_node("Reshape", ["sm", "shape"], ["y"], name="reshape")]
    m = _model(nodes, [("x", ["N", 3, 5, 6])], [("y", ["N", 20])], inits, opset=opset)
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.mark.parametrize("opset", [11, 12, 14, 15, 16, 17])
def test_converts_to_opset_13_with_the_same_outputs(opset: int) -> None:
    m = _exporter_model(opset)
    out = optimize_model(m)
    assert [(o.domain, o.version) for o in out.opset_import if o.domain in ("", "ai.onnx")] == [("", 13)]
    onnx.checker.check_model(out, full_check=True)
    x = _rng(opset).standard_normal((1, 3, 5, 6)).astype(np.float32)
    _assert_same_outputs(m, out, {"x": x})


def test_other_opset_versions_can_be_requested() -> None:
    m = _exporter_model(11)
    out = optimize_model(m, opset_version=12)
    assert [o.version for o in out.opset_import if o.domain in ("", "ai.onnx")] == [12]
    _assert_same_outputs(m, out, {"x": _rng(3).standard_normal((1, 3, 5, 6)).astype(np.float32)})


def test_accepts_model_bytes_and_leaves_the_argument_unchanged() -> None:
    m = _exporter_model(13)
    before = m.SerializeToString()
    out = optimize_model(before)
    assert m.SerializeToString() == before
    out2 = optimize_model(m)
    assert m.SerializeToString() == before
    assert out.SerializeToString() == out2.SerializeToString()


# -- static shapes -------------------------------------------------------------------------
def _conv(inputs: list[tuple[str, list[int | str]]], out_shape: list[int | str] | None) -> onnx.ModelProto:
    name = inputs[0][0]
    return _model([helper.make_node("Conv", [name, "w"], ["y"], pads=[1, 1, 1, 1], name="conv")], inputs,
                  [("y", out_shape)], [_init("w", (2, 3, 3, 3))])


def test_dynamic_batch_becomes_1() -> None:
    m = _conv([("x", ["batch", 3, 4, 5])], ["batch", 2, 4, 5])
    out = optimize_model(m)
    assert _dims(out.graph.input[0]) == [1, 3, 4, 5]
    assert _dims(out.graph.output[0]) == [1, 2, 4, 5]
    _assert_same_outputs(m, out, {"x": _rng().standard_normal((1, 3, 4, 5)).astype(np.float32)})


def test_unnamed_dynamic_batch_becomes_1() -> None:
    m = _conv([("x", [None, 3, 4, 5])], None)
    out = optimize_model(m)
    assert _dims(out.graph.input[0]) == [1, 3, 4, 5]
    assert _dims(out.graph.output[0]) == [1, 2, 4, 5]


def test_other_dynamic_dims_come_from_input_shapes() -> None:
    m = _conv([("x", ["N", 3, "H", "W"])], ["N", 2, "H", "W"])
    out = optimize_model(m, input_shapes={"x": [1, 3, 8, 40]})
    assert _dims(out.graph.input[0]) == [1, 3, 8, 40]
    assert _dims(out.graph.output[0]) == [1, 2, 8, 40]
    vis = {vi.name for vi in out.graph.value_info} | {vi.name for vi in out.graph.output}
    assert "y" in vis
    _assert_same_outputs(m, out, {"x": _rng().standard_normal((1, 3, 8, 40)).astype(np.float32)})


def test_input_shapes_may_override_a_static_batch() -> None:
    m = _conv([("x", [1, 3, 4, 5])], [1, 2, 4, 5])
    out = optimize_model(m, input_shapes={"x": [2, 3, 4, 5]})
    assert _dims(out.graph.input[0]) == [2, 3, 4, 5]
    assert _dims(out.graph.output[0]) == [2, 2, 4, 5]


def test_an_unfixable_dynamic_dim_names_the_input() -> None:
    m = _conv([("image", ["N", 3, "height", 5])], None)
    with pytest.raises(InvalidModel) as ei:
        optimize_model(m)
    msg = str(ei.value)
    assert "'image'" in msg and "height" in msg and "input_shapes" in msg


def test_input_shapes_for_an_unknown_input_is_refused() -> None:
    m = _conv([("x", [1, 3, 4, 5])], None)
    with pytest.raises(InvalidModel, match="unknown inputs: nope"):
        optimize_model(m, input_shapes={"nope": [1, 3, 4, 5]})


def test_input_shapes_of_the_wrong_rank_is_refused() -> None:
    m = _conv([("x", ["N", 3, "H", "W"])], None)
    with pytest.raises(InvalidModel, match=r"input_shapes\['x'\] has 3 dims but the input has 4"):
        optimize_model(m, input_shapes={"x": [3, 8, 8]})


def _conv4(x_shape: list[int | str]) -> onnx.ModelProto:
    """Conv x → y, 4 channels in and out, with the 3×3 weight ``w1``."""
    w1 = numpy_helper.from_array((_rng(0).standard_normal((4, 4, 3, 3)) * 0.5).astype(np.float32), "w1")
    return _model([helper.make_node("Conv", ["x", "w1"], ["y"], pads=[1, 1, 1, 1])], [("x", x_shape)],
                  [("y", None)], [w1])


def _dynamic_model() -> onnx.ModelProto:
    return _conv4(["N", 4, "H", 32])


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


# -- constant folding -------------------------------------------------------------------
def test_constant_nodes_holding_weights_become_initializers() -> None:
    w = _rng(1).standard_normal((2, 3, 3, 3)).astype(np.float32)
    b = _rng(2).standard_normal(2).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w), name="const_w"),
             helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(b), name="const_b"),
             helper.make_node("Constant", [], ["offset"], value_float=0.5, name="const_offset"),
             helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "offset"], ["y"], name="add")]
    m = _model(nodes, [("x", [1, 3, 4, 5])], [("y", [1, 2, 4, 5])])
    out = optimize_model(m)
    assert "Constant" not in _ops(out)
    assert _ops(out) == ["Conv", "Relu", "Add"]
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    conv, _, add = out.graph.node
    assert np.array_equal(inits[conv.input[1]], w) and np.array_equal(inits[conv.input[2]], b)
    assert float(inits[add.input[1]]) == 0.5
    _assert_same_outputs(m, out, {"x": _rng(3).standard_normal((1, 3, 4, 5)).astype(np.float32)})


def test_shape_gather_unsqueeze_concat_reshape_chain_is_folded() -> None:
    """What torch emits for ``x.view(x.size(0), -1)``."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Shape", ["c"], ["s"], name="shape"),
        helper.make_node("Constant", [], ["i0"], value=numpy_helper.from_array(np.array(0, np.int64)), name="c0"),
        helper.make_node("Gather", ["s", "i0"], ["n"], axis=0, name="gather"),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="unsqueeze"),
        helper.make_node("Constant", [], ["m1"], value=numpy_helper.from_array(np.array([-1], np.int64)), name="c1"),
        helper.make_node("Concat", ["n1", "m1"], ["target"], axis=0, name="concat"),
        helper.make_node("Reshape", ["c", "target"], ["y"], name="reshape"),
    ]
    m = _model(nodes, [("x", ["N", 3, 4, 5])], [("y", ["N", None])], [_init("w", (2, 3, 3, 3)), _ints("axes", [0])])
    out = optimize_model(m)
    assert _ops(out) == ["Conv", "Reshape"]
    reshape = out.graph.node[1]
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    assert reshape.input[1] in inits
    assert _dims(out.graph.output[0]) == [1, 40]
    _assert_same_outputs(m, out, {"x": _rng(4).standard_normal((1, 3, 4, 5)).astype(np.float32)})


def test_unused_initializers_are_dropped() -> None:
    m = _conv([("x", [1, 3, 4, 5])], None)
    m.graph.initializer.append(_init("unused", (100,)))
    out = optimize_model(m)
    assert "unused" not in {i.name for i in out.graph.initializer}


# -- BatchNormalization --------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False], ids=["conv_bias", "no_bias"])
def test_batchnorm_after_conv_is_fused(bias: bool) -> None:
    conv_in = ["x", "w", "wb"] if bias else ["x", "w"]
    bn, inits = _bn("c", "b", 4, "bn", 20)
    nodes = [helper.make_node("Conv", conv_in, ["c"], pads=[1, 1, 1, 1], name="conv"), bn,
             helper.make_node("Relu", ["b"], ["y"], name="relu")]
    inits += [_init("w", (4, 3, 3, 3), seed=5)] + ([_init("wb", (4,), seed=6)] if bias else [])
    m = _model(nodes, [("x", [1, 3, 6, 7])], [("y", [1, 4, 6, 7])], inits)
    out = optimize_model(m)
    assert _ops(out) == ["Conv", "Relu"]
    _assert_same_outputs(m, out, {"x": _rng(7).standard_normal((1, 3, 6, 7)).astype(np.float32)}, atol=1e-4)


@pytest.mark.parametrize("shape", [[1, 4, 3, 5], [2, 4], [1, 4, 6]], ids=["4d", "2d", "3d"])
def test_a_lone_batchnorm_becomes_mul_add(shape: list[int]) -> None:
    bn, inits = _bn("a", "y", 4, "bn", 30)
    nodes = [helper.make_node("Add", ["x", "x2"], ["a"], name="add"), bn]
    m = _model(nodes, [("x", shape), ("x2", shape)], [("y", shape)], inits)
    out = optimize_model(m)
    assert "BatchNormalization" not in _ops(out)
    assert _ops(out) == ["Add", "Mul", "Add"]
    feeds = {"x": _rng(8).standard_normal(shape).astype(np.float32),
             "x2": _rng(9).standard_normal(shape).astype(np.float32)}
    _assert_same_outputs(m, out, feeds, atol=1e-5)
    onnx.checker.check_model(out, full_check=True)


def test_batchnorm_after_conv_and_after_add_in_one_graph() -> None:
    bn1, i1 = _bn("c", "b1", 4, "first", 40)
    bn2, i2 = _bn("a", "y", 4, "second", 50)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"), bn1,
             helper.make_node("Add", ["b1", "x2"], ["a"], name="add"), bn2]
    m = _model(nodes, [("x", [1, 3, 4, 5]), ("x2", [1, 4, 4, 5])], [("y", [1, 4, 4, 5])],
               [_init("w", (4, 3, 3, 3), seed=11)] + i1 + i2)
    out = optimize_model(m)
    assert _ops(out) == ["Conv", "Add", "Mul", "Add"]
    feeds = {"x": _rng(12).standard_normal((1, 3, 4, 5)).astype(np.float32),
             "x2": _rng(13).standard_normal((1, 4, 4, 5)).astype(np.float32)}
    _assert_same_outputs(m, out, feeds, atol=1e-4)


# -- Identity / Dropout ----------------------------------------------------------------
def test_identity_and_dropout_are_removed() -> None:
    nodes = [helper.make_node("Identity", ["x"], ["i"], name="id_in"),
             helper.make_node("Relu", ["i"], ["r"], name="relu"),
             helper.make_node("Dropout", ["r"], ["d"], name="dropout"),
             helper.make_node("Sigmoid", ["d"], ["s"], name="sigmoid"),
             helper.make_node("Identity", ["s"], ["y"], name="id_out")]
    m = _model(nodes, [("x", [1, 8])], [("y", [1, 8])])
    out = optimize_model(m)
    assert _ops(out) == ["Relu", "Sigmoid"]
    assert [o.name for o in out.graph.output] == ["y"]
    _assert_same_outputs(m, out, {"x": _rng(14).standard_normal((1, 8)).astype(np.float32)})


def test_dropout_with_an_unused_mask_output_is_removed() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Dropout", ["r"], ["y", "mask"], name="dropout")]
    m = _model(nodes, [("x", [1, 8])], [("y", [1, 8])])
    out = optimize_model(m)
    assert "Dropout" not in _ops(out)


# -- node names ---------------------------------------------------------------------------
def test_every_node_gets_a_unique_name() -> None:
    # Unnamed nodes, and a named node that takes the name the naming pass would generate.
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Sigmoid", ["a"], ["b"]),
             helper.make_node("Relu", ["b"], ["c"], name="relu_3"),
             helper.make_node("Relu", ["c"], ["d"]),
             helper.make_node("Tanh", ["d"], ["y"], name="")]
    m = _model(nodes, [("x", [1, 8])], [("y", [1, 8])])
    out = optimize_model(m)
    names = [n.name for n in out.graph.node]
    assert len(names) == 5
    assert all(names) and len(set(names)) == len(names), names
    assert "relu_3" in names
    _assert_same_outputs(m, out, {"x": _rng(15).standard_normal((1, 8)).astype(np.float32)})


def test_duplicate_node_names_are_made_unique() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="same"),
             helper.make_node("Sigmoid", ["a"], ["y"], name="same")]
    m = _model(nodes, [("x", [1, 8])], [("y", [1, 8])])
    onnx.checker.check_model(m, full_check=True)
    out = optimize_model(m)
    names = [n.name for n in out.graph.node]
    assert len(set(names)) == 2


# -- errors ------------------------------------------------------------------------------
def test_a_model_onnxruntime_cannot_load_is_invalid() -> None:
    nodes = [helper.make_node("NoSuchOperator", ["x"], ["y"], name="mystery")]
    m = _model(nodes, [("x", [1, 8])], [("y", [1, 8])])
    with pytest.raises(InvalidModel, match="NoSuchOperator"):
        optimize_model(m)


def test_garbage_bytes_are_invalid() -> None:
    with pytest.raises(InvalidModel, match="cannot parse the model"):
        optimize_model(b"\x08\x07garbage" * 10)


def _invalid(*args: object, **kwargs: object) -> None:
    raise onnx.checker.ValidationError("Field 'shape' of 'type' is required but missing.")


def test_a_checker_failure_in_optimize_model_is_invalid_model(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _conv4([1, 4, 8, 32])
    monkeypatch.setattr(onnx.checker, "check_model", _invalid)
    with pytest.raises(InvalidModel, match="not valid ONNX: Field 'shape'"):
        optimize_model(m)


# -- the zoo --------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _zoo(name: str) -> onnx.ModelProto:
    return zoo.build(name)


def _check_zoo(name: str) -> None:
    m = _zoo(name)
    out = optimize_model(m)
    onnx.checker.check_model(out)
    assert [o.version for o in out.opset_import if o.domain in ("", "ai.onnx")] == [13]
    ops = _ops(out)
    assert "BatchNormalization" not in ops and "Identity" not in ops and "Dropout" not in ops
    assert "Constant" not in ops
    names = [n.name for n in out.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert [i.name for i in out.graph.input] == [i.name for i in m.graph.input
                                                 if i.name not in {t.name for t in m.graph.initializer}]
    assert [o.name for o in out.graph.output] == [o.name for o in m.graph.output]
    sample = zoo.sample_inputs(m, 1)[0]
    feeds = {vi.name: x for vi, x in zip(out.graph.input, sample)}
    ref, got = _run(m, feeds), _run(out, feeds)
    for r, g in zip(ref, got):
        assert r.shape == g.shape
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(r).max())))


@pytest.mark.parametrize("name", ZOO_FAST)
def test_zoo_model_optimises_to_the_same_outputs(name: str) -> None:
    _check_zoo(name)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resnet50_optimises_to_the_same_outputs() -> None:
    _check_zoo("resnet50")
