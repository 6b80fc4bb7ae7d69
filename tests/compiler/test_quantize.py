"""``quantize()``: per-channel int8 weights and int8 activations as QDQ; the uint8 input and
uint8/int8 output options (keyword and ModelEditor forms) and what they leave in a compiled
program; the errors for inputs it cannot quantise (and for a result the checker refuses).

The float models are small (a 2-input conv net with an image output and a logits output),
optimised and calibrated once per module.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from npusim.client.ops import load_op
from npusim.compiler_svc import (
    CalibrationMethod,
    Calibrator,
    ModelEditor,
    TensorType,
    compile,
    optimize_model,
    quantize,
)
from npusim.services.errors import CalibrationError, InvalidModel
from npusim.services.program import CpuStep, NpuStep, OpStep, Program
from tests.programs import run_program

pytestmark = pytest.mark.timeout(30)

FLOAT = TensorProto.FLOAT
X_SHAPE = (1, 3, 4, 32)


# -- models ---------------------------------------------------------------------------------
def _init(name: str, shape: tuple[int, ...], seed: int, scale: float = 0.5) -> onnx.TensorProto:
    return numpy_helper.from_array((np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32),
                                   name)


def _two_input_model() -> onnx.ModelProto:
    """x, x2 [1,3,4,32] → s = conv(x) + conv(x2) → sigmoid → ``image`` [1,4,4,32]
    and s → GAP → Flatten → Gemm → ``logits`` [1,5]."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Conv", ["x2", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["c1", "c2"], ["s"], name="add"),
        helper.make_node("Sigmoid", ["s"], ["image"], name="sigmoid"),
        helper.make_node("GlobalAveragePool", ["s"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["logits"], transB=1, name="gemm"),
    ]
    # Output channels of very different magnitude: per-channel scales must differ.
    w1 = np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)
    w1 *= np.array([0.05, 0.3, 1.0, 3.0], np.float32)[:, None, None, None]
    inits = [numpy_helper.from_array(w1, "w1"), _init("b1", (4,), 2), _init("w2", (4, 3, 3, 3), 3),
             _init("b2", (4,), 4), _init("wg", (5, 4), 5), _init("bg", (5,), 6)]
    g = helper.make_graph(nodes, "two_inputs",
                          [helper.make_tensor_value_info("x", FLOAT, list(X_SHAPE)),
                           helper.make_tensor_value_info("x2", FLOAT, list(X_SHAPE))],
                          [helper.make_tensor_value_info("image", FLOAT, [1, 4, 4, 32]),
                           helper.make_tensor_value_info("logits", FLOAT, [1, 5])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _samples(n: int, seed: int = 0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(X_SHAPE).astype(np.float32), rng.standard_normal(X_SHAPE).astype(np.float32)]
            for _ in range(n)]


@pytest.fixture(scope="module")
def float_model() -> onnx.ModelProto:
    return optimize_model(_two_input_model())


@pytest.fixture(scope="module")
def ranges(float_model: onnx.ModelProto) -> dict[str, tuple[float, float]]:
    cal = Calibrator(float_model, CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data(_samples(4), progress=False)
    return cal.compute_range()


@pytest.fixture(scope="module")
def qbytes(float_model: onnx.ModelProto, ranges: dict[str, tuple[float, float]]) -> bytes:
    return quantize(float_model, ranges)


@pytest.fixture(scope="module")
def qmodel(qbytes: bytes) -> onnx.ModelProto:
    return onnx.load_from_string(qbytes)


def _copy(m: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    return out


# -- helpers ----------------------------------------------------------------------------
def _inits(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}


def _producer(m: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    return next((n for n in m.graph.node if tensor in n.output), None)


def _elem(vis: list[onnx.ValueInfoProto]) -> dict[str, int]:
    return {vi.name: vi.type.tensor_type.elem_type for vi in vis}


def _exact(q: bytes) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(q, so, providers=["CPUExecutionProvider"])


def _assert_program_reproduces(program: Program, q: bytes, inputs: list[np.ndarray]) -> None:
    sess = _exact(q)
    ref = sess.run([o.name for o in program.outputs], dict(zip([i.name for i in sess.get_inputs()], inputs)))
    got = run_program(program, inputs, exact=True)
    for spec, r, g in zip(program.outputs, ref, got):
        assert g.dtype == np.dtype(spec.dtype) == r.dtype, spec
        np.testing.assert_array_equal(g, r, err_msg=spec.name)


def _op_steps(program: Program) -> list[OpStep]:
    return [s for s in program.steps if isinstance(s, OpStep)]


def _writes(program: Program, tensor: str) -> list[OpStep | CpuStep | NpuStep]:
    out = []
    for s in program.steps:
        outs = [s.output] if isinstance(s, OpStep) else list(s.outputs)
        if tensor in outs:
            out.append(s)
    return out


def _uint8_images(seed: int = 0) -> list[np.ndarray]:
    """Two uint8 inputs that between them hold every value 0..255."""
    rng = np.random.default_rng(seed)
    a = (np.arange(np.prod(X_SHAPE)) % 256).astype(np.uint8).reshape(X_SHAPE)
    return [a, rng.integers(0, 256, X_SHAPE, dtype=np.uint8)]


# -- the quantised graph -----------------------------------------------------------------
def test_weights_are_per_channel_symmetric_int8(float_model: onnx.ModelProto, qmodel: onnx.ModelProto) -> None:
    float_w = _inits(float_model)
    inits = _inits(qmodel)
    checked = 0
    for node in qmodel.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        dq = _producer(qmodel, node.input[1])
        assert dq is not None and dq.op_type == "DequantizeLinear", node.name
        q, scale, zp = (inits[i] for i in dq.input)
        cout = q.shape[0]
        assert q.dtype == np.int8
        assert scale.shape == (cout,), f"{node.name}: one scale per output channel"
        assert zp.dtype == np.int8 and not zp.any(), "symmetric: zero points are 0"
        assert next(a.i for a in dq.attribute if a.name == "axis") == 0
        # The weights dequantise to the float weights within half a step of their channel.
        original = float_w[dq.input[0].removesuffix("_quantized")]
        step = scale.reshape((-1,) + (1,) * (q.ndim - 1))
        assert np.all(np.abs(q.astype(np.float32) * step - original) <= step / 2 + 1e-7)
        checked += 1
    assert checked == 3
    w1_scale = inits[_producer(qmodel, next(n for n in qmodel.graph.node if n.name == "conv1").input[1]).input[1]]
    assert w1_scale.max() / w1_scale.min() > 10, "channels of different magnitude get different scales"


def test_activations_are_per_tensor_int8(qmodel: onnx.ModelProto) -> None:
    inits = _inits(qmodel)
    qs = [n for n in qmodel.graph.node if n.op_type == "QuantizeLinear"]
    assert qs
    for n in qs:
        assert inits[n.input[1]].shape == () and inits[n.input[2]].shape == ()
        assert inits[n.input[2]].dtype == np.int8, n.name
    # Every float tensor a compute node reads comes out of a DequantizeLinear.
    for n in qmodel.graph.node:
        if n.op_type in ("Conv", "Gemm", "Add", "Sigmoid", "GlobalAveragePool", "Flatten"):
            p = _producer(qmodel, n.input[0])
            assert p is not None and p.op_type == "DequantizeLinear", n.name


def test_inputs_and_outputs_stay_float_by_default(qmodel: onnx.ModelProto) -> None:
    assert set(_elem(list(qmodel.graph.input)).values()) == {FLOAT}
    assert set(_elem(list(qmodel.graph.output)).values()) == {FLOAT}


def test_result_passes_the_checker_and_compiles(qbytes: bytes) -> None:
    assert isinstance(qbytes, bytes)
    onnx.checker.check_model(onnx.load_from_string(qbytes), full_check=True)
    program = compile(qbytes)
    assert [s.name for s in program.inputs] == ["x", "x2"]
    assert [s.name for s in program.outputs] == ["image", "logits"]
    _assert_program_reproduces(program, qbytes, _samples(1, seed=9)[0])


def test_accepts_model_bytes(float_model: onnx.ModelProto, ranges: dict[str, tuple[float, float]],
                             qbytes: bytes) -> None:
    assert quantize(float_model.SerializeToString(), ranges) == qbytes


def test_quantised_model_is_close_to_the_float_model(float_model: onnx.ModelProto, qbytes: bytes) -> None:
    xs = _samples(1, seed=3)[0]
    feeds = {"x": xs[0], "x2": xs[1]}
    ref = ort.InferenceSession(float_model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = _exact(qbytes).run(None, feeds)
    for r, g in zip(ref, got):  # int8 noise, not a different function
        assert np.corrcoef(r.ravel(), g.ravel())[0, 1] > 0.98
        assert np.linalg.norm(g - r) < 0.2 * np.linalg.norm(r)


# -- with_quantize=False: uint8 inputs ---------------------------------------------------
@pytest.fixture(scope="module")
def uint8_q(float_model: onnx.ModelProto, ranges: dict[str, tuple[float, float]]) -> bytes:
    return quantize(float_model, ranges, with_quantize=False)


def test_with_quantize_false_makes_every_input_uint8(uint8_q: bytes) -> None:
    m = onnx.load_from_string(uint8_q)
    assert _elem(list(m.graph.input)) == {"x": TensorProto.UINT8, "x2": TensorProto.UINT8}
    assert set(_elem(list(m.graph.output)).values()) == {FLOAT}
    onnx.checker.check_model(m, full_check=True)


def test_uint8_input_maps_exactly_onto_int8(uint8_q: bytes) -> None:
    """input(uint8) → DQ(s, zp + 128) → Q(s, zp): the same scale, zero points 128 apart."""
    m = onnx.load_from_string(uint8_q)
    inits = _inits(m)
    for name in ("x", "x2"):
        dq = next(n for n in m.graph.node if name in n.input)
        assert dq.op_type == "DequantizeLinear"
        q = next(n for n in m.graph.node if dq.output[0] in n.input)
        assert q.op_type == "QuantizeLinear"
        assert inits[dq.input[2]].dtype == np.uint8 and inits[q.input[2]].dtype == np.int8
        assert int(inits[dq.input[2]]) - int(inits[q.input[2]]) == 128
        assert inits[dq.input[1]] == inits[q.input[1]]


def test_uint8_program_starts_with_quantize_uint8(uint8_q: bytes) -> None:
    program = compile(uint8_q)
    assert [(s.name, s.dtype) for s in program.inputs] == [("x", "uint8"), ("x2", "uint8")]
    first_npu = next(i for i, s in enumerate(program.steps) if isinstance(s, NpuStep))
    head = program.steps[:first_npu]
    assert [s.op for s in head] == ["QuantizeUint8", "QuantizeUint8"]
    assert [s.input for s in head] == ["x", "x2"]
    assert not any(s.op == "Quantize" for s in _op_steps(program))
    _assert_program_reproduces(program, uint8_q, _uint8_images())


def test_quantize_uint8_is_a_shift_by_128() -> None:
    u8 = np.arange(256, dtype=np.uint8).reshape(1, 1, 8, 32)
    i8 = load_op("QuantizeUint8", {}).run(u8)
    assert i8.dtype == np.int8 and i8.shape == u8.shape
    np.testing.assert_array_equal(u8.astype(np.int16), i8.astype(np.int16) + 128)


def test_uint8_program_and_quantised_model_agree_on_every_pixel_value(uint8_q: bytes) -> None:
    program = compile(uint8_q)
    step = program.steps[0]
    assert isinstance(step, OpStep) and step.op == "QuantizeUint8"
    u8 = _uint8_images()[0]
    # What the quantised model computes for the input: Q(DQ(u)) with its own initialisers.
    m = onnx.load_from_string(uint8_q)
    inits = _inits(m)
    dq = next(n for n in m.graph.node if "x" in n.input)
    q = next(n for n in m.graph.node if dq.output[0] in n.input)
    s, zu, zi = inits[dq.input[1]], int(inits[dq.input[2]]), int(inits[q.input[2]])
    as_float = (u8.astype(np.float32) - np.float32(zu)) * s
    requant = np.clip(np.rint(as_float / s) + zi, -128, 127).astype(np.int8)
    np.testing.assert_array_equal(load_op(step.op, step.attrs).run(u8), requant)


# -- normalized_pixel_outputs ----------------------------------------------------------
def test_normalized_pixel_outputs_makes_that_output_uint8(float_model: onnx.ModelProto,
                                                          ranges: dict[str, tuple[float, float]]) -> None:
    q = quantize(float_model, ranges, normalized_pixel_outputs=[0])
    m = onnx.load_from_string(q)
    assert _elem(list(m.graph.output)) == {"image": TensorProto.UINT8, "logits": FLOAT}
    onnx.checker.check_model(m, full_check=True)
    program = compile(q)
    assert [(s.name, s.dtype) for s in program.outputs] == [("image", "uint8"), ("logits", "float32")]
    dequantized = [s.output for s in _op_steps(program) if s.op == "Dequantize"]
    assert dequantized == ["logits"]
    assert all(isinstance(s, NpuStep) for s in _writes(program, "image"))
    _assert_program_reproduces(program, q, _samples(1, seed=5)[0])


def test_normalized_pixel_outputs_spreads_0_1_over_0_255(float_model: onnx.ModelProto,
                                                         ranges: dict[str, tuple[float, float]]) -> None:
    m = onnx.load_from_string(quantize(float_model, ranges, normalized_pixel_outputs=[0]))
    qn = _producer(m, "image")
    assert qn is not None and qn.op_type == "QuantizeLinear"
    inits = _inits(m)
    assert float(inits[qn.input[1]]) == pytest.approx(1 / 255)
    assert int(inits[qn.input[2]]) == 0 and inits[qn.input[2]].dtype == np.uint8


def test_normalized_pixel_output_that_other_nodes_read(ranges: dict[str, tuple[float, float]]) -> None:
    m = _two_input_model()
    gap = next(n for n in m.graph.node if n.op_type == "GlobalAveragePool")
    gap.input[0] = "image"  # the output is also an intermediate tensor
    m = optimize_model(m)
    cal = Calibrator(m, CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data(_samples(2), progress=False)
    q = quantize(m, cal.compute_range(), normalized_pixel_outputs=[0])
    onnx.checker.check_model(onnx.load_from_string(q), full_check=True)
    program = compile(q)
    assert program.outputs[0].dtype == "uint8"
    _assert_program_reproduces(program, q, _samples(1, seed=2)[0])


def test_both_options_together(float_model: onnx.ModelProto, ranges: dict[str, tuple[float, float]]) -> None:
    q = quantize(float_model, ranges, with_quantize=False, normalized_pixel_outputs=[1, 0])
    program = compile(q)
    assert [s.dtype for s in program.inputs] == ["uint8", "uint8"]
    assert [s.dtype for s in program.outputs] == ["uint8", "uint8"]
    ops = [s.op for s in _op_steps(program)]
    assert "Quantize" not in ops and "Dequantize" not in ops
    _assert_program_reproduces(program, q, _uint8_images(1))


# -- ModelEditor forms ------------------------------------------------------------------
def _edited(float_model: onnx.ModelProto, edit: Callable[[ModelEditor], None]) -> onnx.ModelProto:
    m = _copy(float_model)
    edit(ModelEditor(m))
    return m


def test_editor_uint8_input_equals_with_quantize_false_for_that_input(
        float_model: onnx.ModelProto, ranges: dict[str, tuple[float, float]]) -> None:
    m = _edited(float_model, lambda e: e.convert_input_type("x", TensorType.UINT8))
    q = quantize(m, ranges)
    qm = onnx.load_from_string(q)
    assert _elem(list(qm.graph.input)) == {"x": TensorProto.UINT8, "x2": FLOAT}
    program = compile(q)
    assert [s.op for s in program.steps[:2]] == ["QuantizeUint8", "Quantize"]
    inputs = [_uint8_images()[0], _samples(1)[0][1]]
    _assert_program_reproduces(program, q, inputs)
    # Both inputs converted by the editor == with_quantize=False.
    both = _edited(float_model, lambda e: (e.convert_input_type("x", TensorType.UINT8),
                                           e.convert_input_type("x2", TensorType.UINT8)))
    a = onnx.load_from_string(quantize(both, ranges))
    b = onnx.load_from_string(quantize(float_model, ranges, with_quantize=False))
    assert a.graph.SerializeToString() == b.graph.SerializeToString()


def test_editor_uint8_output_equals_normalized_pixel_outputs(float_model: onnx.ModelProto,
                                                             ranges: dict[str, tuple[float, float]]) -> None:
    m = _edited(float_model, lambda e: e.convert_output_type("image", TensorType.UINT8))
    a = onnx.load_from_string(quantize(m, ranges))
    b = onnx.load_from_string(quantize(float_model, ranges, normalized_pixel_outputs=[0]))
    assert a.graph.SerializeToString() == b.graph.SerializeToString()
    program = compile(a)
    assert program.outputs[0].dtype == "uint8"
    assert [s.output for s in _op_steps(program) if s.op == "Dequantize"] == ["logits"]


@pytest.mark.parametrize("tensor_range", [None, (-4.0, 4.0)], ids=["raw", "with_range"])
def test_editor_int8_output_has_no_dequantize(float_model: onnx.ModelProto, ranges: dict[str, tuple[float, float]],
                                              tensor_range: tuple[float, float] | None) -> None:
    m = _edited(float_model, lambda e: e.convert_output_type("logits", TensorType.INT8, tensor_range=tensor_range))
    q = quantize(m, ranges)
    qm = onnx.load_from_string(q)
    assert _elem(list(qm.graph.output)) == {"image": FLOAT, "logits": TensorProto.INT8}
    onnx.checker.check_model(qm, full_check=True)
    program = compile(q)
    assert [(s.name, s.dtype) for s in program.outputs] == [("image", "float32"), ("logits", "int8")]
    assert [s.output for s in _op_steps(program) if s.op == "Dequantize"] == ["image"]
    _assert_program_reproduces(program, q, _samples(1, seed=6)[0])
    if tensor_range is not None:  # the int8 values cover [-4, 4]
        qn = _producer(qm, "logits")
        inits = _inits(qm)
        scale, zp = float(inits[qn.input[1]]), int(inits[qn.input[2]])
        assert scale == pytest.approx(8 / 255)
        assert (-128 - zp) * scale == pytest.approx(-4.0, abs=scale)
        assert (127 - zp) * scale == pytest.approx(4.0, abs=scale)


def test_editor_int8_output_adds_no_cpu_step(float_model: onnx.ModelProto,
                                             ranges: dict[str, tuple[float, float]]) -> None:
    m = _edited(float_model, lambda e: e.convert_output_type("logits", TensorType.INT8))
    program = compile(quantize(m, ranges))
    assert not [s for s in program.steps if isinstance(s, CpuStep)]


def test_editor_keeps_its_wish_in_the_model_metadata_not_in_the_result(
        float_model: onnx.ModelProto, ranges: dict[str, tuple[float, float]]) -> None:
    m = _edited(float_model, lambda e: e.convert_input_type("x", TensorType.UINT8))
    assert any(p.key == "npusim.editor" for p in m.metadata_props)
    qm = onnx.load_from_string(quantize(m, ranges))
    assert not any(p.key == "npusim.editor" for p in qm.metadata_props)


# -- errors ----------------------------------------------------------------------------------
def test_an_already_quantised_model_is_refused(qbytes: bytes, ranges: dict[str, tuple[float, float]]) -> None:
    with pytest.raises(InvalidModel, match="already quantised"):
        quantize(qbytes, ranges)


@pytest.mark.parametrize("missing", ["x", "x2", "image", "logits"])
def test_ranges_missing_an_input_or_output_are_refused(float_model: onnx.ModelProto,
                                                       ranges: dict[str, tuple[float, float]], missing: str) -> None:
    partial = {k: v for k, v in ranges.items() if k != missing}
    with pytest.raises(CalibrationError, match=f"'{missing}'"):
        quantize(float_model, partial)


@pytest.mark.parametrize("bad", [(float("nan"), 1.0), (-1.0, float("inf")), (float("-inf"), 0.0), (2.0, 1.0),
                                 (1.0,), "range", None], ids=["nan", "inf", "-inf", "lo>hi", "one", "str", "none"])
def test_a_non_finite_or_malformed_range_is_refused(float_model: onnx.ModelProto,
                                                    ranges: dict[str, tuple[float, float]], bad: object) -> None:
    with pytest.raises(CalibrationError, match="'c1'"):
        quantize(float_model, dict(ranges, c1=bad))


@pytest.mark.parametrize("index", [2, -1, "0", 0.0])
def test_a_bad_output_index_is_refused(float_model: onnx.ModelProto, ranges: dict[str, tuple[float, float]],
                                       index: object) -> None:
    with pytest.raises(InvalidModel, match="not an output index"):
        quantize(float_model, ranges, normalized_pixel_outputs=[index])


def test_unnamed_nodes_are_refused(ranges: dict[str, tuple[float, float]]) -> None:
    m = _two_input_model()
    for n in m.graph.node:
        n.name = ""
    with pytest.raises(InvalidModel, match="optimize_model"):
        quantize(m, ranges)


@pytest.mark.parametrize("call", [
    lambda e: e.convert_input_type("nope", TensorType.UINT8),
    lambda e: e.convert_input_type("w1", TensorType.UINT8),  # an initialiser is not an input
    lambda e: e.convert_input_type("image", TensorType.UINT8),  # an output is not an input
    lambda e: e.convert_output_type("nope", TensorType.UINT8),
    lambda e: e.convert_output_type("x", TensorType.INT8),
], ids=["input_nope", "input_initialiser", "input_is_output", "output_nope", "output_is_input"])
def test_editor_refuses_unknown_tensor_names(float_model: onnx.ModelProto, call: Callable[[ModelEditor], None]) -> None:
    m = _copy(float_model)
    with pytest.raises(ValueError, match="is not an (input|output) of the model"):
        call(ModelEditor(m))
    assert not m.metadata_props


@pytest.mark.parametrize("call", [
    lambda e: e.convert_input_type("x", TensorType.INT8),
    lambda e: e.convert_input_type("x", 7),
    lambda e: e.convert_output_type("image", 0),
    lambda e: e.convert_output_type("image", TensorType.UINT8, tensor_range=(1.0, 0.0)),
    lambda e: e.convert_output_type("image", TensorType.UINT8, tensor_range=(1.0, 1.0)),
], ids=["input_int8", "input_7", "output_0", "range_reversed", "range_empty"])
def test_editor_refuses_unsupported_types_and_ranges(float_model: onnx.ModelProto,
                                                     call: Callable[[ModelEditor], None]) -> None:
    m = _copy(float_model)
    with pytest.raises(ValueError):
        call(ModelEditor(m))
    assert not m.metadata_props


def test_editor_wants_a_model_proto(float_model: onnx.ModelProto) -> None:
    with pytest.raises(TypeError, match="ModelProto"):
        ModelEditor(float_model.SerializeToString())  # type: ignore[arg-type]


def test_a_model_with_an_integer_output_quantises() -> None:
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("ArgMax", ["c"], ["classes"], axis=1, keepdims=1, name="argmax")]
    g = helper.make_graph(nodes, "argmax", [helper.make_tensor_value_info("x", FLOAT, [1, 3, 4, 32])],
                          [helper.make_tensor_value_info("classes", TensorProto.INT64, [1, 1, 4, 32])],
                          [_init("w", (4, 3, 3, 3), 1), _init("b", (4,), 2)])
    m = optimize_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    cal = Calibrator(m, CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data([[np.random.default_rng(0).standard_normal((1, 3, 4, 32)).astype(np.float32)]], progress=False)
    q = quantize(m, cal.compute_range())
    program = compile(q)
    assert program.outputs[0].dtype == "int64"


def _invalid(*args: object, **kwargs: object) -> None:
    raise onnx.checker.ValidationError("Field 'shape' of 'type' is required but missing.")


def test_a_checker_failure_in_quantize_is_invalid_model(monkeypatch: pytest.MonkeyPatch) -> None:
    g = helper.make_graph([helper.make_node("Conv", ["x", "w1"], ["y"], pads=[1, 1, 1, 1])], "g",
                          [helper.make_tensor_value_info("x", FLOAT, [1, 4, 8, 32])],
                          [helper.make_tensor_value_info("y", FLOAT, None)], [_init("w1", (4, 4, 3, 3), 0)])
    m = optimize_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    monkeypatch.setattr(onnx.checker, "check_model", _invalid)
    with pytest.raises(InvalidModel, match="quantised model is not valid ONNX: Field 'shape'"):
        cal = Calibrator(m, CalibrationMethod.MIN_MAX_ASYM)
        cal.collect_data([[np.random.default_rng(s).standard_normal((1, 4, 8, 32)).astype(np.float32)]
                          for s in range(2)], progress=False)
        quantize(m, cal.compute_range())
