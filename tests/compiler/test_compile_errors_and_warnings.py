"""What the compiler refuses, and what it warns about, before doing any work:

- option elements are type-checked, in process and over the wire, with an error naming the
  option;
- an already compiled program handed to the compiler (``compile``, the service, ``npusim
  compile``) says so;
- option mistakes surface before calibration, with errors that say what to do;
- options an already quantised model makes moot, and operators that fall back to the CPU, are
  reported as warnings in the program and the compile info.

Service tests run an in-process CompilerService on a thread (ipc socket in a short private
directory under /tmp).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from npusim.compiler_svc import (
    CalibrationMethod,
    Calibrator,
    compile,
    optimize_model,
    pipeline,
    quantize,
)
from npusim.compiler_svc.cache import ProgramCache
from npusim.compiler_svc.pipeline import CompileOptions, compile_model
from npusim.compiler_svc.server import CompilerService
from npusim.services.errors import (
    InvalidCompilerConfig,
    InvalidModel,
    NpusimError,
)
from npusim.services.program import CpuStep, Program
from npusim.services.protocol import Kind, Message
from npusim.services.rpc import Peer
from tests.compiler.compile_cli import compile_cli as _cli
from tests.helpers import serving, short_dir

pytestmark = pytest.mark.timeout(60)


# -- models -----------------------------------------------------------------------------------
def _w(name: str, shape: tuple[int, ...], seed: int = 0) -> onnx.TensorProto:
    return numpy_helper.from_array((np.random.default_rng(seed).standard_normal(shape) * 0.5).astype(np.float32), name)


def _model(nodes: list[onnx.NodeProto], outputs: list[str], inits: list[onnx.TensorProto],
           name: str = "g") -> onnx.ModelProto:
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 32])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _conv(seed: int = 0) -> onnx.ModelProto:
    return _model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")], ["y"],
                  [_w("w", (4, 4, 3, 3), seed)])


def _two_outputs() -> onnx.ModelProto:
    return _model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv"),
                   helper.make_node("Relu", ["y"], ["z"], name="relu")], ["y", "z"], [_w("w", (4, 4, 3, 3))])


def _with_fallback() -> onnx.ModelProto:
    """conv → Exp (no NPU kernel: a CPU step) → conv."""
    return _model([helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
                   helper.make_node("Exp", ["a"], ["b"], name="exp"),
                   helper.make_node("Conv", ["b", "w2"], ["y"], pads=[1, 1, 1, 1], name="conv2")],
                  ["y"], [_w("w1", (4, 4, 3, 3)), _w("w2", (4, 4, 3, 3), 1)])


def _quantised(m: onnx.ModelProto) -> bytes:
    m = optimize_model(m)
    cal = Calibrator(m, CalibrationMethod.MIN_MAX_ASYM)
    rng = np.random.default_rng(0)
    cal.collect_data([[rng.standard_normal((1, 4, 8, 32)).astype(np.float32)] for _ in range(2)], progress=False)
    return quantize(m, cal.compute_range())


CONV = _conv().SerializeToString()


@pytest.fixture(scope="module")
def conv_q() -> bytes:
    return _quantised(_conv())


@pytest.fixture
def no_calibration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a compile reaches calibration."""
    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("calibration ran: the mistake should have been reported before it")

    monkeypatch.setattr(pipeline.Calibrator, "collect_data", refuse)


# -- the service ------------------------------------------------------------------------------
@contextlib.contextmanager
def _service(workers: int = 1) -> Iterator[CompilerService]:
    with short_dir() as d:
        svc = CompilerService("compiler", f"ipc://{d}/c.sock", cache=ProgramCache(d / "cache", max_bytes=1 << 30),
                              workers=workers)
        with serving(svc):
            yield svc


@pytest.fixture(scope="module")
def service() -> Iterator[CompilerService]:
    with _service() as svc:
        yield svc


def _request(endpoint: str, model: bytes, options: Any) -> Message:
    with Peer(endpoint, timeout_s=50.0) as peer:
        return peer.request(Kind.COMPILE, {"options": options}, [("model", np.frombuffer(model, np.uint8))])


# -- option types ------------------------------------------------------------------------------
@pytest.mark.parametrize("options, option", [
    ({"input_shapes": {"x": [1, "a", 8, 32]}}, "input_shapes"),
    ({"input_shapes": {"x": "1,4,8,32"}}, "input_shapes"),
    ({"input_shapes": {"x": b"\x01"}}, "input_shapes"),
    ({"input_shapes": {"x": [1, 0, 8, 32]}}, "input_shapes"),
    ({"input_shapes": {"x": []}}, "input_shapes"),
    ({"normalized_pixel_outputs": ["y"]}, "normalized_pixel_outputs"),
    ({"normalized_pixel_outputs": [b"x"]}, "normalized_pixel_outputs"),
    ({"normalized_pixel_outputs": [-1]}, "normalized_pixel_outputs"),
    ({"normalized_pixel_outputs": [True]}, "normalized_pixel_outputs"),
    ({"normalized_pixel_outputs": 0}, "normalized_pixel_outputs"),
    ({"input_shapes": [["x", [1, 4, 8, 32]]]}, "input_shapes"),
], ids=["dim_str", "shape_str", "shape_bytes", "dim_0", "no_dims", "index_str", "index_bytes", "index_negative",
        "index_bool", "not_a_list", "not_a_dict"])
def test_badly_typed_option_elements_are_named_errors(service: CompilerService, options: dict[str, Any],
                                                      option: str) -> None:
    with pytest.raises(InvalidCompilerConfig) as local:
        CompileOptions.from_dict(options)
    assert option in local.value.message and local.value.details.get("option") == option
    with pytest.raises(InvalidCompilerConfig) as remote:
        _request(service.endpoint, CONV, options)
    assert remote.value.message == local.value.message


def test_options_that_are_not_a_mapping_are_a_named_error(service: CompilerService) -> None:
    with pytest.raises(InvalidCompilerConfig, match="compile options must be a mapping"):
        CompileOptions.from_dict([["batch_size", 2]])  # type: ignore[arg-type]
    with pytest.raises(NpusimError, match="'options' must be dict"):  # the protocol checks it first
        _request(service.endpoint, CONV, [["batch_size", 2]])


# -- a compiled program handed to the compiler ------------------------------------------------
@pytest.fixture(scope="module")
def enf(conv_q: bytes) -> bytes:
    return compile(conv_q, target_npu="warboy").to_bytes()


def test_compile_of_a_compiled_program_says_so(enf: bytes) -> None:
    with pytest.raises(InvalidModel, match=r"already compiled .*\(\.enf\).*session\.create / npusim explain"):
        compile(enf)
    with pytest.raises(InvalidModel, match="already compiled"):
        compile_model(enf, CompileOptions())


def test_the_service_says_a_compiled_program_is_already_compiled(service: CompilerService, enf: bytes) -> None:
    with pytest.raises(InvalidModel, match="already compiled"):
        _request(service.endpoint, enf, {})


@pytest.mark.parametrize("calibration_data", ["random", None])
def test_npusim_compile_of_an_enf_file_says_so(tmp_path: Path, enf: bytes, calibration_data: str | None) -> None:
    path = tmp_path / "model.enf"
    path.write_bytes(enf)
    with pytest.raises(InvalidModel, match=r"model\.enf is already compiled .*npusim explain"):
        _cli(path, tmp_path / "out.enf", calibration_data=calibration_data, no_cache=True)
    assert not (tmp_path / "out.enf").exists()


# -- earlier and clearer errors, and warnings for ignored options -----------------------------
def test_an_output_index_out_of_range_is_a_config_error_before_calibration(no_calibration: None) -> None:
    data = _two_outputs().SerializeToString()
    with pytest.raises(InvalidCompilerConfig, match=r"normalized_pixel_outputs: 2 .* 2 output\(s\) .*use 0–1") as ei:
        compile_model(data, CompileOptions(normalized_pixel_outputs=[0, 2]))
    assert ei.value.details == {"option": "normalized_pixel_outputs"}


def test_an_output_index_out_of_range_over_the_wire(service: CompilerService) -> None:
    with pytest.raises(InvalidCompilerConfig, match="normalized_pixel_outputs: 3 .*use 0"):
        _request(service.endpoint, CONV, {"normalized_pixel_outputs": [3]})


def test_a_permute_input_of_the_wrong_rank_is_refused_before_calibration(no_calibration: None) -> None:
    with pytest.raises(InvalidCompilerConfig, match=r"\[0, 2, 1\] does not fit input 'x' of rank 4"):
        compile_model(CONV, CompileOptions(compiler_config={"permute_input": [[0, 2, 1]]}))


def test_a_permute_input_of_the_wrong_rank_on_a_quantised_model(conv_q: bytes) -> None:
    with pytest.raises(InvalidCompilerConfig, match="rank 4"):
        compile(conv_q, compiler_config={"permute_input": [[0, 2, 1]]})


def test_a_float_model_with_with_quantize_false_points_at_convert_input_type() -> None:
    with pytest.raises(InvalidModel) as ei:
        compile_model(CONV, CompileOptions(with_quantize=False, auto_quantize=False))
    assert "ModelEditor(model).convert_input_type(name, TensorType.UINT8)" in ei.value.message
    assert "quantize(model, ranges, with_quantize=False)" in ei.value.message
    with pytest.raises(InvalidModel, match=r"quantize\(model, ranges\) first"):  # the default advice stays
        compile(CONV)


def test_compile_still_refuses_a_compiler_config_that_is_not_a_mapping(conv_q: bytes) -> None:
    with pytest.raises(InvalidCompilerConfig, match="compiler_config must be a mapping.*got list"):
        compile(conv_q, compiler_config=["remove_lower"])  # type: ignore[arg-type]


def test_quantisation_options_on_a_quantised_model_are_warned_about(conv_q: bytes) -> None:
    opts = CompileOptions(with_quantize=False, normalized_pixel_outputs=[0], calibration_method="MIN_MAX_SYM",
                          input_shapes={"x": [1, 4, 8, 32]})
    program, info = compile_model(conv_q, opts)
    (warning,) = [w for w in info["warnings"] if "already quantised" in w]
    for option in ("with_quantize=False", "normalized_pixel_outputs=[0]", "calibration_method='MIN_MAX_SYM'",
                   "input_shapes="):
        assert option in warning
    assert "calibration_samples" not in warning  # left at its default
    assert program.inputs[0].dtype == "float32"  # indeed ignored
    assert warning in program.meta["warnings"]
    _, plain = compile_model(conv_q, CompileOptions())
    assert not any("already quantised" in w for w in plain["warnings"])
    _, with_data = compile_model(conv_q, CompileOptions(), calibration_data=[[np.zeros((1, 4, 8, 32), np.float32)]])
    assert any("calibration data had no effect" in w for w in with_data["warnings"])


def test_fallback_warnings_are_in_the_program_and_the_info() -> None:
    program, info = compile_model(_with_fallback().SerializeToString(), CompileOptions(calibration_samples=1))
    assert any(isinstance(s, CpuStep) for s in program.steps)
    fallback = [w for w in info["warnings"] if "runs on the CPU" in w]
    assert fallback and any("'exp'" in w for w in fallback)
    assert info["warnings"] == program.meta["warnings"]
    assert any("random samples" in w for w in program.meta["warnings"])
    assert Program.from_bytes(program.to_bytes()).meta["warnings"] == info["warnings"]
