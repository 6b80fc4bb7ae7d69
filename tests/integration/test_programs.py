"""Compiled programs of every shape through the real stack: the worker and the daemon must
give exactly what the program gives in-process (same onnxruntime kernels)."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest

from npusim.client import session
from npusim.compiler_svc import CalibrationMethod, Calibrator, compile, optimize_model, quantize
from npusim.services import zoo
from npusim.services.program import CpuStep, OpStep, Program
from tests.helpers import RunningStack
from tests.programs import run_program

pytestmark = pytest.mark.timeout(120)


def _gelu_net() -> onnx.ModelProto:
    """conv → GELU (x·Φ(x) through Erf, which the chip cannot compute) → conv: two NPU stages."""
    g = zoo.GraphBuilder(5)
    x = g.conv_bn("input", 3, 8, 3, act=None)
    erf = g.node("Erf", [g.node("Div", [x, g.const(np.sqrt(2.0))])])
    x = g.node("Mul", [g.node("Mul", [x, g.node("Add", [erf, g.const(1.0)])]), g.const(0.5)])
    y = g.conv_bn(x, 8, 4, 3, act=None)
    return g.finish("gelu_net", {"input": [1, 3, 16, 32]}, [y], n_calib=4)


@functools.lru_cache(maxsize=None)
def _calibrated(name: str) -> tuple[onnx.ModelProto, dict[str, tuple[float, float]]]:
    model = optimize_model(_gelu_net() if name == "gelu_net" else zoo.build(name))
    cal = Calibrator(model, CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data(zoo.sample_inputs(model, 4), progress=False)
    return model, cal.compute_range()


def _program(name: str, *, target: str = "warboy-2pe", batch: int = 1, **quant: object) -> Program:
    model, ranges = _calibrated(name)
    return compile(quantize(model, ranges, **quant), target_npu=target, batch_size=batch)  # type: ignore[arg-type]


def _inputs(program: Program, seed: int = 9) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for spec in program.inputs:
        if spec.dtype == "uint8":
            out.append(rng.integers(0, 256, spec.shape, dtype=np.uint8))
        elif spec.dtype == "int8":
            out.append(rng.integers(-128, 128, spec.shape).astype(np.int8))
        else:
            out.append(rng.standard_normal(spec.shape).astype(np.float32))
    return out


def _check(program: Program, *, device: str | None = None, workers: int = 1) -> None:
    x = _inputs(program)
    want = run_program(program, x)
    with session.create(bytes(program), device=device, worker_num=workers) as sess:
        for _ in range(2):
            got = sess.run(x)
            assert len(got) == len(want)
            for g, w, spec in zip(got, want, program.outputs):
                assert g.dtype == np.dtype(spec.dtype) and g.shape == spec.shape
                np.testing.assert_array_equal(g, w)
        assert sess.last_timing["emulated_ns"] > 0


def test_program_with_cpu_fallback_stages(use_stack: RunningStack) -> None:
    program = _program("gelu_net")
    assert len(program.stages) >= 2 and any(isinstance(s, CpuStep) for s in program.steps)
    _check(program)


def test_uint8_input_and_output(use_stack: RunningStack) -> None:
    program = _program("denoiser", with_quantize=False, normalized_pixel_outputs=[0])
    assert program.inputs[0].dtype == "uint8" and program.outputs[0].dtype == "uint8"
    ops = [s.op for s in program.steps if isinstance(s, OpStep)]
    assert "QuantizeUint8" in ops and "Dequantize" not in ops
    _check(program)


def test_program_for_one_pe_on_the_second_pe(use_stack: RunningStack) -> None:
    program = _program("ops_gallery_w32", target="warboy")
    _check(program, device="npu1pe1")


def test_batched_program_with_two_workers(use_stack: RunningStack) -> None:
    program = _program("mnist", batch=8)
    assert program.inputs[0].shape[0] == 8
    _check(program, workers=2)


def test_quantized_graph_through_the_compiler_service_with_permute_input(use_stack: RunningStack) -> None:
    """The seed's example: an NHWC model quantised with with_quantize=False, compiled by
    session.create with permute_input, takes NCHW uint8 images without a host Lower."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "nhwc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 64, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    model = optimize_model(model)
    cal = Calibrator(model, CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data([[rng.uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)] for _ in range(4)], progress=False)
    graph_bytes = quantize(model, cal.compute_range(), with_quantize=False)
    image = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    with session.create(graph_bytes) as plain:
        assert plain.inputs()[0].shape == (1, 64, 64, 3) and plain.inputs()[0].format == "NHWC"
        assert "Lower" in plain.compile_info["cpu_ops"]
        want = plain.run(image)[0]
    with session.create(graph_bytes, compiler_config={"permute_input": [[0, 3, 1, 2]]}) as permuted:
        assert permuted.inputs()[0].shape == (1, 3, 64, 64) and permuted.inputs()[0].format == "NCHW"
        assert "Lower" not in permuted.compile_info["cpu_ops"]
        got = permuted.run(np.ascontiguousarray(image.transpose(0, 3, 1, 2)))[0]
    np.testing.assert_array_equal(got, want)
