"""The partitioner's rules, one test each, on tiny models built here.

Every model goes the documented way — onnx.helper → optimize_model → Calibrator(MIN_MAX_ASYM)
on a few random samples → quantize → compile — and every program is run with
``run_program(exact=True)`` against the quantised model under onnxruntime with
optimisations off: the partition may move work between host and NPU, never change a bit.

Rules (research/hardware.md, the seed's Lower/Unlower, Pad/Slice and permute_input sections):
host Quantize/Dequantize at the edges; Lower/Unlower on the NPU only for a last-axis width
that is a multiple of 32, host Pad/Slice for other widths, host Lower/Unlower when the last
axis is not the width; the chip's operator limits send work to CPU steps.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from npusim.client.ops import load_op
from npusim.compiler_svc import CalibrationMethod, Calibrator, compile, optimize_model, quantize
from npusim.compiler_svc.config import ACCEPTED
from npusim.services import zoo
from npusim.services.errors import InvalidCompilerConfig
from npusim.services.program import CpuStep, NpuStep, OpStep, Program
from tests.programs import run_program

pytestmark = pytest.mark.timeout(60)

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64
ZOO_FAST = [name for name in zoo.MODELS if name not in zoo.HEAVY]


# -- building and quantising -----------------------------------------------------------
def _w(name: str, shape: tuple[int, ...], seed: int, scale: float = 0.5) -> onnx.TensorProto:
    return numpy_helper.from_array((np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32),
                                   name)


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _model(nodes: list[onnx.NodeProto], inputs: list[tuple[str, list[int]]],
           outputs: list[tuple[str, list[int] | None] | tuple[str, list[int] | None, int]],
           inits: list[onnx.TensorProto] = (), name: str = "g") -> onnx.ModelProto:
    outs = [helper.make_tensor_value_info(o[0], o[2] if len(o) > 2 else FLOAT, o[1]) for o in outputs]
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info(n, FLOAT, s) for n, s in inputs], outs,
                          list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _random_samples(m: onnx.ModelProto, n: int, seed: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    shapes = [[d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in m.graph.input]
    return [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(n)]


def _quantise(model: onnx.ModelProto, *, samples: int = 3, seed: int = 0, **options: Any) -> bytes:
    m = optimize_model(model)
    cal = Calibrator(m, CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data(_random_samples(m, samples, seed), progress=False)
    return quantize(m, cal.compute_range(), **options)


def _input_shapes(q: bytes) -> list[tuple[int, ...]]:
    m = onnx.load_from_string(q)
    inits = {i.name for i in m.graph.initializer}
    return [tuple(d.dim_value for d in vi.type.tensor_type.shape.dim) for vi in m.graph.input if vi.name not in inits]


def _inputs(q: bytes, seed: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in _input_shapes(q)]


def _reference(q: bytes, inputs: list[np.ndarray], names: list[str] | None = None) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(q, so, providers=["CPUExecutionProvider"])
    return sess.run(names, {i.name: x for i, x in zip(sess.get_inputs(), inputs)})


def _assert_reproduces(program: Program, q: bytes, inputs: list[np.ndarray],
                       program_inputs: list[np.ndarray] | None = None) -> None:
    """The program on ``program_inputs`` (default ``inputs``) == the quantised model on ``inputs``."""
    ref = _reference(q, inputs, [o.name for o in program.outputs])
    got = run_program(program, inputs if program_inputs is None else program_inputs, exact=True)
    assert len(got) == len(ref)
    for spec, r, g in zip(program.outputs, ref, got):
        assert g.dtype == r.dtype and g.shape == r.shape == tuple(spec.shape), spec
        np.testing.assert_array_equal(g, r, err_msg=spec.name)


def _host_ops(program: Program) -> list[str]:
    return [s.op for s in program.steps if isinstance(s, OpStep)]


def _cpu_ops(program: Program) -> list[dict[str, str]]:
    return [op for s in program.steps if isinstance(s, CpuStep) for op in s.ops]


def _npu_steps(program: Program) -> list[NpuStep]:
    return [s for s in program.steps if isinstance(s, NpuStep)]


def _run_host_ops(steps: list[OpStep], env: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for st in steps:
        env[st.output] = load_op(st.op, st.attrs).run(env[st.input])
    return env


# -- the small models of the layout rules -------------------------------------------------------
def _conv(*, shape: tuple[int, int, int, int] = (1, 3, 4, 32), nhwc_in: bool = False, nhwc_out: bool = False,
          head: bool = False) -> onnx.ModelProto:
    """Conv(3→4, 3x3, same) on [N,C,H,W] (or an NHWC input and a leading Transpose), then
    optionally an NHWC output Transpose, or GAP → Flatten → Gemm to [N, 10] logits."""
    n, c, h, w = shape
    x = "x"
    nodes = []
    if nhwc_in:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2], name="to_nchw"))
        x = "x_nchw"
    nodes.append(helper.make_node("Conv", [x, "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"))
    inits = [_w("w", (4, c, 3, 3), 1), _w("b", (4,), 2)]
    if head:
        nodes += [helper.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
                  helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
                  helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], transB=1, name="gemm")]
        inits += [_w("wg", (10, 4), 3), _w("bg", (10,), 4)]
        out = [n, 10]
    elif nhwc_out:
        nodes.append(helper.make_node("Transpose", ["c"], ["y"], perm=[0, 2, 3, 1], name="to_nhwc"))
        out = [n, h, w, 4]
    else:
        nodes[-1].output[0] = "y"
        out = [n, 4, h, w]
    in_shape = [n, h, w, c] if nhwc_in else [n, c, h, w]
    return _model(nodes, [("x", in_shape)], [("y", out)], inits, name="conv")


MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "nchw_w32": lambda: _conv(),
    "nchw_w20": lambda: _conv(shape=(1, 3, 4, 20)),
    "nhwc_w32": lambda: _conv(nhwc_in=True),
    "nhwc_w20": lambda: _conv(shape=(1, 3, 4, 20), nhwc_in=True),
    "head_2d": lambda: _conv(head=True),
    "nhwc_out": lambda: _conv(nhwc_out=True),
}


@functools.lru_cache(maxsize=None)
def _q(name: str, **options: Any) -> bytes:
    return _quantise(MODELS[name](), **options)


@functools.lru_cache(maxsize=None)
def _program(name: str, **compile_options: Any) -> Program:
    return compile(_q(name), **compile_options)


def _program_with(name: str, config: dict[str, Any]) -> Program:
    return compile(_q(name), compiler_config=config)


# -- host Quantize before, Dequantize after ---------------------------------------------------
def test_host_quantize_before_and_dequantize_after() -> None:
    q = _q("nchw_w32")
    program = _program("nchw_w32")
    first, npu, last = program.steps
    assert isinstance(first, OpStep) and first.op == "Quantize" and first.input == "x"
    assert isinstance(npu, NpuStep) and npu.inputs == [first.output]
    assert isinstance(last, OpStep) and last.op == "Dequantize" and last.output == "y"
    assert npu.outputs == [last.input]
    assert [(s.name, s.dtype) for s in program.inputs] == [("x", "float32")]
    assert [(s.name, s.dtype) for s in program.outputs] == [("y", "float32")]
    # The host operators carry the quantised model's scale and zero point.
    m = onnx.load_from_string(q)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    qx = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    dy = next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == "y")
    assert first.attrs == {"scale": pytest.approx(float(inits[qx.input[1]])), "zero_point": int(inits[qx.input[2]])}
    assert last.attrs == {"scale": pytest.approx(float(inits[dy.input[1]])), "zero_point": int(inits[dy.input[2]])}
    # The NPU stage computes on int8 only.
    stage = program.stages[0]
    assert {s.dtype for s in stage.device_inputs + stage.device_outputs} == {"int8"}
    graph = onnx.load_from_string(stage.graph)
    assert {vi.type.tensor_type.elem_type for vi in list(graph.graph.input) + list(graph.graph.output)} == \
        {TensorProto.INT8}
    _assert_reproduces(program, q, _inputs(q))


@pytest.mark.parametrize("option, gone, instead", [
    ({"quantize": {"with_quantize": False}}, "Quantize", "QuantizeUint8"),
    ({"quantize": {"normalized_pixel_outputs": [0]}}, "Dequantize", None),
    ({"config": {"remove_lower": True}}, "Quantize", None),
    ({"config": {"remove_unlower": True}}, "Dequantize", None),
], ids=["with_quantize_false", "normalized_pixel_outputs", "remove_lower", "remove_unlower"])
def test_quantize_and_dequantize_are_removed_by_the_options(option: dict[str, dict[str, Any]], gone: str,
                                                            instead: str | None) -> None:
    q = _quantise(MODELS["nchw_w32"](), **option["quantize"]) if "quantize" in option else _q("nchw_w32")
    program = compile(q, compiler_config=option.get("config", {}))
    ops = _host_ops(program)
    assert gone not in ops
    if instead:
        assert ops[0] == instead
    if gone == "Quantize" and not instead:
        assert program.inputs[0].dtype == "int8"
    if gone == "Dequantize":
        assert program.outputs[0].dtype in ("int8", "uint8")


# -- Lower / Unlower / Pad / Slice placement ------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("nchw_w32", ["Quantize", "Dequantize"]),
    ("nchw_w20", ["Quantize", "Pad", "Slice", "Dequantize"]),
    ("nhwc_w32", ["Quantize", "Lower", "Dequantize"]),
    ("nhwc_w20", ["Quantize", "Lower", "Slice", "Dequantize"]),
    ("head_2d", ["Quantize", "Unlower", "Dequantize"]),
    ("nhwc_out", ["Quantize", "Unlower", "Dequantize"]),
])
def test_layout_host_operators(name: str, expected: list[str]) -> None:
    program = _program(name)
    assert _host_ops(program) == expected
    _assert_reproduces(program, _q(name), _inputs(_q(name)))


def test_nchw_width_multiple_of_32_needs_no_host_layout_work() -> None:
    program = _program("nchw_w32")
    stage = program.stages[0]
    (dev_in,), (dev_out,) = stage.device_inputs, stage.device_outputs
    assert (dev_in.layout, dev_in.shape, dev_in.axes) == ("logical", (1, 3, 4, 32), "NCHW")
    assert (dev_out.layout, dev_out.shape, dev_out.axes) == ("logical", (1, 4, 4, 32), "NCHW")
    assert not {"Lower", "Pad", "Unlower", "Slice"} & set(_host_ops(program))
    # The NPU lowers and unlowers itself: that work is in the stage's cost.
    assert {o["op_type"] for o in stage.ops} >= {"Lower", "Unlower"}


def test_nchw_other_width_is_padded_with_the_zero_point() -> None:
    program = _program("nchw_w20")
    quant, pad = program.steps[0], program.steps[1]
    assert isinstance(pad, OpStep) and pad.op == "Pad" and pad.input == quant.output
    zp = quant.attrs["zero_point"]
    assert pad.attrs == {"multiple": 32, "value": zp}
    dev = program.stages[0].device_inputs[0]
    assert (dev.layout, dev.shape, dev.pad, dev.name) == ("padded", (1, 3, 4, 32), zp, pad.output)
    x = _inputs(_q("nchw_w20"))[0]
    env = _run_host_ops([quant, pad], {"x": x})
    padded = env[pad.output]
    assert padded.dtype == np.int8 and padded.shape == (1, 3, 4, 32)
    np.testing.assert_array_equal(padded[..., :20], env[quant.output])
    assert (padded[..., 20:] == zp).all()


def test_nchw_other_width_output_is_sliced() -> None:
    program = _program("nchw_w20")
    slc = program.steps[-2]
    assert isinstance(slc, OpStep) and slc.op == "Slice" and slc.attrs == {"length": 20}
    dev = program.stages[0].device_outputs[0]
    assert (dev.layout, dev.shape, dev.name) == ("padded", (1, 4, 4, 32), slc.input)
    assert program.outputs[0].shape == (1, 4, 4, 20)


def test_nhwc_input_is_lowered_on_the_host() -> None:
    program = _program("nhwc_w32")
    quant, lower = program.steps[0], program.steps[1]
    assert lower.op == "Lower" and lower.attrs == {"axes": "NHWC", "value": quant.attrs["zero_point"]}
    assert program.inputs[0].shape == (1, 4, 32, 3) and program.inputs[0].axes == "NHWC"
    dev = program.stages[0].device_inputs[0]
    assert (dev.layout, dev.shape, dev.axes) == ("lowered", (1, 4, 3, 32), "NCHW")  # N, H, C, Wp
    # The model's NHWC→NCHW Transpose was absorbed by the host Lower: the NPU does not transpose.
    graph = onnx.load_from_string(program.stages[0].graph)
    assert "Transpose" not in [n.op_type for n in graph.graph.node]


def test_2d_output_is_unlowered_on_the_host() -> None:
    program = _program("head_2d")
    unlower = next(s for s in program.steps if isinstance(s, OpStep) and s.op == "Unlower")
    assert unlower.attrs == {"axes": "NC", "shape": [1, 10]}
    dev = program.stages[0].device_outputs[0]
    assert (dev.layout, dev.shape, dev.axes) == ("lowered", (1, 1, 10, 32), "NC")
    assert (program.outputs[0].shape, program.outputs[0].axes) == ((1, 10), "NC")


# -- permute_input -------------------------------------------------------------------------------
def test_permute_input_to_nchw_removes_the_host_lower() -> None:
    q = _q("nhwc_w32")
    program = _program_with("nhwc_w32", {"permute_input": [[0, 3, 1, 2]]})
    assert _host_ops(program) == ["Quantize", "Dequantize"]
    spec = program.inputs[0]
    assert (spec.shape, spec.axes) == ((1, 3, 4, 32), "NCHW")
    dev = program.stages[0].device_inputs[0]
    assert dev.layout == "logical" and dev.shape == (1, 3, 4, 32)
    graph = onnx.load_from_string(program.stages[0].graph)
    assert "Transpose" not in [n.op_type for n in graph.graph.node]
    x = _inputs(q)[0]  # NHWC, as the original model takes it
    _assert_reproduces(program, q, [x], [np.ascontiguousarray(x.transpose(0, 3, 1, 2))])


def test_permute_input_to_nhwc_makes_the_host_lower() -> None:
    q = _q("nchw_w32")
    program = _program_with("nchw_w32", {"permute_input": [[0, 2, 3, 1]]})
    spec = program.inputs[0]
    assert (spec.shape, spec.axes) == ((1, 4, 32, 3), "NHWC")
    assert _host_ops(program) == ["Quantize", "Lower", "Dequantize"]
    lower = program.steps[1]
    assert lower.attrs["axes"] == "NHWC"
    x = _inputs(q)[0]  # NCHW
    _assert_reproduces(program, q, [x], [np.ascontiguousarray(x.transpose(0, 2, 3, 1))])


def test_identity_permutation_changes_nothing() -> None:
    a = _program("nchw_w32")
    b = _program_with("nchw_w32", {"permute_input": [[0, 1, 2, 3]]})
    assert a.inputs == b.inputs and a.outputs == b.outputs
    assert _host_ops(a) == _host_ops(b)


def test_permute_input_with_uint8_input_and_batch() -> None:
    q = _quantise(MODELS["nhwc_w32"](), with_quantize=False)
    program = compile(q, compiler_config={"permute_input": [[0, 3, 1, 2]]}, batch_size=2)
    assert _host_ops(program) == ["QuantizeUint8", "Dequantize"]
    assert program.inputs[0].shape == (2, 3, 4, 32) and program.inputs[0].dtype == "uint8"
    x = np.random.default_rng(3).integers(0, 256, (2, 4, 32, 3), dtype=np.uint8)
    got = run_program(program, [np.ascontiguousarray(x.transpose(0, 3, 1, 2))], exact=True)[0]
    ref = np.concatenate([_reference(q, [x[i:i + 1]])[0] for i in range(2)])
    np.testing.assert_array_equal(got, ref)


# -- remove_lower / remove_unlower ---------------------------------------------------------------
@pytest.mark.parametrize("name, layout, shape", [
    ("nchw_w32", "logical", (1, 3, 4, 32)),
    ("nchw_w20", "padded", (1, 3, 4, 32)),
    ("nhwc_w32", "lowered", (1, 4, 3, 32)),
])
def test_remove_lower_takes_the_device_tensor(name: str, layout: str, shape: tuple[int, ...]) -> None:
    full = _program(name)
    program = _program_with(name, {"remove_lower": True})
    spec = program.inputs[0]
    dev = full.stages[0].device_inputs[0]
    assert (spec.name, spec.dtype, spec.shape, spec.layout) == ("x", "int8", shape, layout)
    assert (spec.axes, spec.pad) == (dev.axes, dev.pad)
    assert program.stages[0].device_inputs[0] == spec
    assert not {"Quantize", "QuantizeUint8", "Lower", "Pad"} & set(_host_ops(program))
    assert isinstance(program.steps[0], NpuStep) and program.steps[0].inputs == ["x"]
    assert any("remove_lower" in note for note in program.meta["notes"])
    # Fed what the full program's host operators make, it computes the same outputs.
    x = _inputs(_q(name))[0]
    head = [s for s in full.steps[:full.steps.index(_npu_steps(full)[0])]]
    device = _run_host_ops(head, {"x": x})[_npu_steps(full)[0].inputs[0]]
    assert device.shape == shape and device.dtype == np.int8
    for a, b in zip(run_program(program, [device], exact=True), run_program(full, [x], exact=True)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name, layout, shape", [
    ("nchw_w32", "logical", (1, 4, 4, 32)),
    ("nchw_w20", "padded", (1, 4, 4, 32)),
    ("head_2d", "lowered", (1, 1, 10, 32)),
])
def test_remove_unlower_returns_the_device_tensor(name: str, layout: str, shape: tuple[int, ...]) -> None:
    full = _program(name)
    program = _program_with(name, {"remove_unlower": True})
    spec = program.outputs[0]
    assert (spec.name, spec.dtype, spec.shape, spec.layout) == ("y", "int8", shape, layout)
    assert program.stages[0].device_outputs[0] == spec
    assert not {"Dequantize", "Unlower", "Slice"} & set(_host_ops(program))
    assert isinstance(program.steps[-1], NpuStep) and program.steps[-1].outputs == ["y"]
    assert any("remove_unlower" in note for note in program.meta["notes"])
    x = _inputs(_q(name))[0]
    device = run_program(program, [x], exact=True)[0]
    last = _npu_steps(full)[-1]
    tail = full.steps[full.steps.index(last) + 1:]
    y = _run_host_ops(tail, {last.outputs[0]: device})["y"]
    np.testing.assert_array_equal(y, run_program(full, [x], exact=True)[0])


def test_remove_lower_and_unlower_together() -> None:
    program = _program_with("nchw_w20", {"remove_lower": True, "remove_unlower": True})
    assert _host_ops(program) == []
    assert [s.kind for s in program.steps] == ["npu"]
    assert (program.inputs[0].dtype, program.outputs[0].dtype) == ("int8", "int8")


# -- compiler_config validation ----------------------------------------------------------------
@pytest.mark.parametrize("config, key", [
    ({"remove_lowr": True}, "remove_lowr"),
    ({"remove_lower": 1}, "remove_lower"),
    ({"remove_unlower": "yes"}, "remove_unlower"),
    ({"permute_input": [[0, 1]]}, "permute_input"),
    ({"permute_input": [[0, 1, 1, 2]]}, "permute_input"),
    ({"permute_input": [[1, 2, 3, 4]]}, "permute_input"),
    ({"permute_input": [0, 3, 1, 2]}, "permute_input"),
    ({"permute_input": [[0, 3, 1, 2], [0, 1, 2, 3]]}, "permute_input"),
    ({"permute_input": "0,3,1,2"}, "permute_input"),
    ({"permute_input": [[0.0, 3, 1, 2]]}, "permute_input"),
    ({"split_unit": True}, "split_unit"),
    ({"allow_precision_error": "true"}, "allow_precision_error"),
], ids=["unknown", "bool_as_int", "bool_as_str", "rank", "repeat", "not_from_0", "flat", "count", "str",
        "float_axis", "int_as_bool", "str_bool"])
def test_bad_compiler_config_is_named(config: dict[str, Any], key: str) -> None:
    with pytest.raises(InvalidCompilerConfig) as ei:
        compile(_q("nchw_w32"), compiler_config=config)
    assert repr(key) in str(ei.value)
    assert ei.value.details.get("key") == key


def test_accepted_compiler_config_keys() -> None:
    program = compile(_q("nchw_w32"), compiler_config={"allow_precision_error": True})
    assert _host_ops(program) == ["Quantize", "Dequantize"]
    values = {bool: True, int: 2}
    compile(_q("nchw_w32"), compiler_config={k: values[t] for k, t in ACCEPTED.items()})


@pytest.mark.parametrize("config", [["remove_lower"], "remove_lower", [["remove_lower", True]]],
                         ids=["list", "str", "pairs"])
def test_a_compiler_config_that_is_not_a_mapping_is_refused(config: object) -> None:
    with pytest.raises(InvalidCompilerConfig):
        compile(_q("nchw_w32"), compiler_config=config)  # type: ignore[arg-type]


# -- operators the chip does not run --------------------------------------------------------
def _erf() -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Erf", ["c"], ["e"], name="erf"),
             helper.make_node("Conv", ["e", "w2", "b2"], ["y"], pads=[1, 1, 1, 1], name="conv2")]
    return _model(nodes, [("x", [1, 2, 4, 32])], [("y", [1, 4, 4, 32])],
                  [_w("w1", (4, 2, 3, 3), 1), _w("b1", (4,), 2), _w("w2", (4, 4, 3, 3), 3), _w("b2", (4,), 4)])


def _lstm() -> onnx.ModelProto:
    hidden = 4
    nodes = [helper.make_node("LSTM", ["x", "lw", "lr", "lb"], ["seq", "h"], hidden_size=hidden, name="lstm"),
             helper.make_node("Squeeze", ["h", "axes"], ["hs"], name="squeeze"),
             helper.make_node("Gemm", ["hs", "gw", "gb"], ["y"], transB=1, name="gemm")]
    return _model(nodes, [("x", [3, 1, 5])], [("y", [1, 6])],
                  [_w("lw", (1, 4 * hidden, 5), 1), _w("lr", (1, 4 * hidden, hidden), 2), _w("lb", (1, 8 * hidden), 3),
                   _ints("axes", [0]), _w("gw", (6, hidden), 4), _w("gb", (6,), 5)])


def _topk() -> onnx.ModelProto:
    nodes = [helper.make_node("Gemm", ["x", "gw", "gb"], ["g"], transB=1, name="gemm"),
             helper.make_node("TopK", ["g", "k"], ["y", "indices"], axis=-1, name="topk")]
    return _model(nodes, [("x", [1, 8])], [("y", [1, 3])], [_w("gw", (10, 8), 1), _w("gb", (10,), 2),
                                                          _ints("k", [3])])


def _argmax() -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("ArgMax", ["c"], ["a"], axis=1, keepdims=1, name="argmax"),
             helper.make_node("Cast", ["a"], ["y"], to=FLOAT, name="cast")]
    return _model(nodes, [("x", [1, 2, 4, 32])], [("y", [1, 1, 4, 32])], [_w("w", (4, 2, 3, 3), 1),
                                                                        _w("b", (4,), 2)])


def _grouped(group: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["a"], name="pointwise"),
             helper.make_node("Conv", ["a", "w", "b"], ["y"], pads=[1, 1, 1, 1], group=group, name="depthwise")]
    return _model(nodes, [("x", [1, 2, 2, 32])], [("y", [1, group, 2, 32])],
                  [_w("w0", (group, 2, 1, 1), 1), _w("b0", (group,), 2), _w("w", (group, 1, 3, 3), 3),
                   _w("b", (group,), 4)])


def _dilated(dilation: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["a"], name="pointwise"),
             helper.make_node("Conv", ["a", "w", "b"], ["y"], pads=[dilation] * 4, dilations=[dilation] * 2,
                              name="dilated")]
    return _model(nodes, [("x", [1, 2, 4, 32])], [("y", [1, 2, 4, 32])],
                  [_w("w0", (2, 2, 1, 1), 1), _w("b0", (2,), 2), _w("w", (2, 2, 3, 3), 3), _w("b", (2,), 4)])


def _concat(axis: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Conv", ["x", "w2", "b2"], ["b"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Concat", ["a", "b"], ["y"], axis=axis, name="concat")]
    out = {1: [1, 4, 4, 32], 2: [1, 2, 8, 32], 3: [1, 2, 4, 64]}[axis]
    return _model(nodes, [("x", [1, 2, 4, 32])], [("y", out)],
                  [_w("w1", (2, 2, 3, 3), 1), _w("b1", (2,), 2), _w("w2", (2, 2, 3, 3), 3), _w("b2", (2,), 4)])


def _softmax(batch: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Gemm", ["x", "gw", "gb"], ["g"], transB=1, name="gemm"),
             helper.make_node("Softmax", ["g"], ["y"], axis=-1, name="softmax")]
    return _model(nodes, [("x", [batch, 8])], [("y", [batch, 10])], [_w("gw", (10, 8), 1), _w("gb", (10,), 2)])


def _space_to_depth() -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("SpaceToDepth", ["c"], ["y"], blocksize=2, name="space_to_depth")]
    return _model(nodes, [("x", [1, 2, 4, 64])], [("y", [1, 8, 2, 32])], [_w("w", (2, 2, 3, 3), 1),
                                                                        _w("b", (2,), 2)])


def _tail(op: str, **attrs: Any) -> onnx.ModelProto:
    """Conv → ``op``: an operator in the NPU's list after an int8 Conv."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node(op, ["c"], ["y"], name=op.lower(), **attrs)]
    out = [1, 1, 8, 64] if op == "DepthToSpace" else [1, 4, 4, 32]
    return _model(nodes, [("x", [1, 2, 4, 32])], [("y", out)], [_w("w", (4, 2, 3, 3), 1), _w("b", (4,), 2)])


CPU_CASES: dict[str, tuple[Callable[[], onnx.ModelProto], str, str]] = {
    "erf": (_erf, "Erf", "Erf is not an NPU operator"),
    "lstm": (_lstm, "LSTM", "LSTM is not an NPU operator"),
    "topk": (_topk, "TopK", "TopK is not an NPU operator"),
    "argmax": (_argmax, "ArgMax", "ArgMax is not an NPU operator"),
    "dilation_13": (lambda: _dilated(13), "Conv", "dilation 13"),
    "concat_width": (lambda: _concat(3), "Concat", "Concat along axis 3"),
    "softmax_batch_3": (lambda: _softmax(3), "Softmax", "batch 3"),
    "depth_to_space_dcr": (lambda: _tail("DepthToSpace", blocksize=2, mode="DCR"), "DepthToSpace", "CRD"),
}


@pytest.mark.parametrize("case", list(CPU_CASES))
def test_operators_the_chip_does_not_run_become_cpu_steps(case: str) -> None:
    build, op_type, why = CPU_CASES[case]
    q = _quantise(build())
    program = compile(q)
    ops = [o for o in _cpu_ops(program) if o["op_type"] == op_type]
    assert ops, f"no CPU step runs {op_type}: {[s.kind for s in program.steps]}"
    assert all(o["reason"] for o in _cpu_ops(program)), "every CPU operator says why"
    assert why in ops[0]["reason"]
    assert any(op_type in w and "runs on the CPU" in w for w in program.meta["warnings"])
    # The rest still runs on the NPU, on int8 only.
    assert program.stages
    for stage in program.stages:
        assert {s.dtype for s in stage.device_inputs + stage.device_outputs} <= {"int8", "uint8"}
    _assert_reproduces(program, q, _inputs(q))


@pytest.mark.parametrize("build", [lambda: _grouped(128), lambda: _grouped(130), lambda: _dilated(12),
                                   lambda: _concat(2), lambda: _concat(1)],
                         ids=["group_128", "group_130", "dilation_12", "concat_height", "concat_channels"])
def test_operators_within_the_limits_stay_on_the_npu(build: Callable[[], onnx.ModelProto]) -> None:
    q = _quantise(build())
    program = compile(q)
    assert not _cpu_ops(program)
    assert [s.kind for s in program.steps].count("npu") == 1
    _assert_reproduces(program, q, _inputs(q))


@pytest.mark.parametrize("group, pieces", [(128, 1), (129, 2), (256, 2), (1024, 8)])
def test_a_conv_beyond_128_groups_runs_as_pieces_of_at_most_128_and_says_so(group: int, pieces: int) -> None:
    program = compile(_quantise(_grouped(group)))
    (op,) = [o for o in program.stages[0].ops if o["name"] == "depthwise"]
    assert op["pieces"] == pieces
    assert ("split into" in op.get("note", "")) is (pieces > 1)
    if pieces > 1:
        assert f"split into {pieces} NPU convolutions of at most 128 groups ({group} groups)" == op["note"]


@pytest.mark.parametrize("build", [
    pytest.param(lambda: _softmax(2), id="softmax_batch_2"),
    pytest.param(lambda: _tail("Tanh"), id="tanh"),
    pytest.param(lambda: _tail("DepthToSpace", blocksize=2, mode="CRD"), id="depth_to_space_crd"),
    pytest.param(_space_to_depth, id="space_to_depth"),
    pytest.param(lambda: _tail("LpNormalization", axis=1, p=2), id="lp_normalization"),
    pytest.param(lambda: _tail("Sigmoid"), id="sigmoid"),
])
def test_npu_operators_compile_and_run(build: Callable[[], onnx.ModelProto]) -> None:
    q = _quantise(build())
    program = compile(q)
    assert not _cpu_ops(program)
    _assert_reproduces(program, q, _inputs(q))


def test_a_model_with_no_npu_operator_still_compiles() -> None:
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[13, 13, 13, 13], dilations=[13, 13],
                              name="dilated")]
    q = _quantise(_model(nodes, [("x", [1, 2, 4, 32])], [("y", [1, 2, 4, 32])],
                         [_w("w", (2, 2, 3, 3), 1), _w("b", (2,), 2)]))
    program = compile(q)
    assert [o["op_type"] for o in _cpu_ops(program)] == ["Conv"]
    _assert_reproduces(program, q, _inputs(q))


def test_an_output_that_later_operators_read_leaves_the_npu_as_int8() -> None:
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["y"], ["z"], name="relu")]
    q = _quantise(_model(nodes, [("x", [1, 3, 4, 32])], [("y", [1, 4, 4, 32]), ("z", [1, 4, 4, 32])],
                         [_w("w", (4, 3, 3, 3), 1), _w("b", (4,), 2)]))
    program = compile(q)
    _assert_reproduces(program, q, _inputs(q))  # it computes the right values...
    for stage in program.stages:  # ...but on the NPU in float
        assert {s.dtype for s in stage.device_outputs} == {"int8"}
    assert sorted(s.output for s in program.steps if isinstance(s, OpStep) and s.op == "Dequantize") == ["y", "z"]


# -- batch_size ---------------------------------------------------------------------------------
def _batchable() -> onnx.ModelProto:
    """Two inputs, two outputs, one of them through a Reshape to [1, -1] (as exporters write it)."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Conv", ["x2", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Add", ["c1", "c2"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "flat"], ["flattened"], name="reshape"),
             helper.make_node("GlobalAveragePool", ["s"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["pooled"], name="flatten")]
    return _model(nodes, [("x", [1, 3, 4, 32]), ("x2", [1, 3, 4, 32])], [("flattened", [1, 512]), ("pooled", [1, 4])],
                  [_w("w1", (4, 3, 3, 3), 1), _w("b1", (4,), 2), _w("w2", (4, 3, 3, 3), 3), _w("b2", (4,), 4),
                   _ints("flat", [1, -1])])


@functools.lru_cache(maxsize=None)
def _batch_q() -> bytes:
    return _quantise(_batchable())


def test_batch_size_multiplies_dim_0_of_every_input_and_output() -> None:
    q = _batch_q()
    one = compile(q)
    four = compile(q, batch_size=4)
    assert one.batch_size == 1 and four.batch_size == 4
    assert [s.shape for s in one.inputs] == [(1, 3, 4, 32)] * 2
    assert [s.shape for s in four.inputs] == [(4, 3, 4, 32)] * 2
    assert [s.shape for s in one.outputs] == [(1, 512), (1, 4)]
    assert [s.shape for s in four.outputs] == [(4, 512), (4, 4)]
    for stage in four.stages:
        assert all(s.shape[0] == 4 for s in stage.device_inputs + stage.device_outputs)
    # Each sample of the batch is computed as the batch-1 model computes it.
    rng = np.random.default_rng(11)
    xs = [rng.standard_normal((4, 3, 4, 32)).astype(np.float32) for _ in range(2)]
    got = run_program(four, xs, exact=True)
    for i in range(4):
        ref = _reference(q, [x[i:i + 1] for x in xs])
        for g, r in zip(got, ref):
            np.testing.assert_array_equal(g[i:i + 1], r)


def test_batch_size_survives_serialisation() -> None:
    program = Program.from_bytes(bytes(compile(_batch_q(), batch_size=8)))
    assert program.batch_size == 8
    assert program.inputs[0].shape == (8, 3, 4, 32)


@pytest.mark.parametrize("batch", [0, -1, 1025, 2.0, "2"])
def test_bad_batch_size_is_refused(batch: object) -> None:
    with pytest.raises(InvalidCompilerConfig, match="batch_size"):
        compile(_q("nchw_w32"), batch_size=batch)  # type: ignore[arg-type]


# -- target_npu ----------------------------------------------------------------------------
def test_target_npu_is_recorded() -> None:
    q = _q("nchw_w32")
    assert compile(q).target == "warboy-2pe"
    for target in ("warboy", "warboy-2pe"):
        program = compile(q, target_npu=target)
        assert program.target == target
        assert Program.from_bytes(program.to_bytes()).target == target


def test_unknown_target_is_refused() -> None:
    with pytest.raises(InvalidCompilerConfig, match="warboy-3pe"):
        compile(_q("nchw_w32"), target_npu="warboy-3pe")


def test_fused_pes_are_faster_for_a_compute_bound_model() -> None:
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], name="conv")]
    q = _quantise(_model(nodes, [("x", [1, 64, 32, 32])], [("y", [1, 64, 32, 32])],
                         [_w("w", (64, 64, 3, 3), 1, 0.05), _w("b", (64,), 2)]), samples=2)
    one, fused = compile(q, target_npu="warboy"), compile(q, target_npu="warboy-2pe")
    assert one.estimate["macs"] == fused.estimate["macs"] == 64 * 64 * 9 * 32 * 32
    assert one.estimate["npu_ns"] > fused.estimate["npu_ns"]
    conv_one = next(o for o in one.stages[0].ops if o["name"] == "conv")
    conv_fused = next(o for o in fused.stages[0].ops if o["name"] == "conv")
    assert conv_one["bound"] == conv_fused["bound"] == "compute"
    assert 1.2 < conv_one["cycles"] / conv_fused["cycles"] <= 2.0  # below 2: 128 slices fill less well
    # A tiny model fills a few slices either way and is dominated by fixed costs: fusing gains less.
    tiny_one, tiny_fused = _program("nchw_w32", target_npu="warboy"), _program("nchw_w32", target_npu="warboy-2pe")
    assert tiny_one.stages[0].estimate["sram_bytes"] * 2 == tiny_fused.stages[0].estimate["sram_bytes"]
    assert tiny_one.estimate["npu_ns"] / tiny_fused.estimate["npu_ns"] < \
        one.estimate["npu_ns"] / fused.estimate["npu_ns"]


# -- the zoo -----------------------------------------------------------------------------------
def _check_zoo(name: str) -> None:
    model = zoo.build(name)
    m = optimize_model(model)
    samples = zoo.sample_inputs(model, 2)
    cal = Calibrator(m, CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data(samples[:1], progress=False)
    q = quantize(m, cal.compute_range())
    program = compile(q)
    assert program.stages
    for op in _cpu_ops(program):
        assert op["reason"], op
    _assert_reproduces(program, q, samples[1])


@pytest.mark.parametrize("name", ZOO_FAST)
def test_zoo_model_compiles_and_reproduces_the_quantised_model(name: str) -> None:
    _check_zoo(name)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_resnet50_compiles_and_reproduces_the_quantised_model() -> None:
    _check_zoo("resnet50")
