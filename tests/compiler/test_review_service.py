"""Regression tests for the review findings on the compiler service, its cache, CLI and pipeline.

- 7: the cache key covers the program format version and the compiler's own source; an
  entry that no longer parses is deleted and the program compiled again (service and CLI);
- 8: option elements are type-checked with an error naming the option, and every COMPILE
  request ends in exactly one reply, an unexpected exception included;
- 14: an already compiled program handed to the compiler says so;
- 16: option mistakes surface before calibration, with errors that say what to do, and
  options an already quantised model makes moot are reported as warnings.

Service tests run an in-process CompilerService on a thread (ipc socket in a short private
directory under /tmp).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import struct
import threading
import time
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
    server,
)
from npusim.compiler_svc.cache import ProgramCache, compiler_digest
from npusim.compiler_svc.cli import compile_cmd
from npusim.compiler_svc.pipeline import CompileOptions, cache_key, compile_model
from npusim.compiler_svc.server import CompilerService
from npusim.services.errors import (
    InvalidCompilerConfig,
    InvalidModel,
    NpusimError,
    ServiceError,
)
from npusim.services.program import FORMAT_VERSION, CpuStep, Program
from npusim.services.protocol import Kind, Message
from npusim.services.rpc import Peer
from tests.helpers import serving, short_dir

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


# -- models -----------------------------------------------------------------------------------
def _w(name: str, shape: tuple[int, ...], seed: int = 0) -> onnx.TensorProto:
    return numpy_helper.from_array((np.random.default_rng(seed).standard_normal(shape) * 0.5).astype(np.float32), name)


def _model(nodes: list[onnx.NodeProto], outputs: list[str], inits: list[onnx.TensorProto],
           name: str = "review") -> onnx.ModelProto:
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


# -- 7: the cache key and unreadable entries --------------------------------------------------
def test_the_cache_key_covers_the_program_format_version(monkeypatch: pytest.MonkeyPatch) -> None:
    before = cache_key(CONV, CompileOptions())
    monkeypatch.setattr(pipeline, "FORMAT_VERSION", FORMAT_VERSION + 1)
    assert cache_key(CONV, CompileOptions()) != before


def test_the_cache_key_covers_the_compiler_source(monkeypatch: pytest.MonkeyPatch) -> None:
    before = cache_key(CONV, CompileOptions())
    monkeypatch.setattr(pipeline, "compiler_digest", lambda: "0" * 64)
    assert cache_key(CONV, CompileOptions()) != before


def test_the_compiler_digest_hashes_the_compiler_the_cost_model_and_what_a_program_holds() -> None:
    services = ROOT / "services"
    files = (sorted((ROOT / "compiler_svc").rglob("*.py")) + sorted((services / "cost").rglob("*.py"))
             + [services / n for n in ("program.py", "layout.py", "hw.py", "timing.py")])
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    assert compiler_digest() == h.hexdigest()
    assert any(f.parent.name == "partition" for f in files)  # subpackages too
    assert any(f.name == "array.py" for f in files)  # a change to the cost model is a new key
    compiler_digest()
    assert compiler_digest.cache_info().currsize == 1  # computed once per process


def _corrupt(entry: Path, how: str) -> None:
    blob = bytearray(entry.read_bytes())
    if how == "old_format":  # what an entry written by a v1-era npusim looks like
        blob[8:10] = struct.pack("<H", FORMAT_VERSION - 1)
        entry.write_bytes(bytes(blob))
    else:
        entry.write_bytes(bytes(blob[: len(blob) // 2]))


def test_cache_load_deletes_an_entry_that_does_not_parse(tmp_path: Path) -> None:
    cache = ProgramCache(tmp_path / "c", max_bytes=1 << 20)
    cache.put("bad", b"NPUSIMEF but not a program")
    assert cache.load("bad") is None
    assert not (tmp_path / "c" / "bad.enf").exists()
    assert (cache.hits, cache.misses) == (0, 1)
    program, _ = compile_model(CONV, CompileOptions(calibration_samples=1))
    cache.put("good", program.to_bytes())
    hit = cache.load("good")
    assert hit is not None and hit[0] == program.to_bytes() and isinstance(hit[1], Program)
    assert (cache.hits, cache.misses) == (1, 1)


@pytest.mark.parametrize("how", ["old_format", "truncated"])
def test_the_service_recompiles_over_an_unreadable_cache_entry(service: CompilerService, how: str) -> None:
    model = _conv(seed={"old_format": 11, "truncated": 12}[how]).SerializeToString()
    first = _request(service.endpoint, model, {"calibration_samples": 1})
    entry = Path(service.cache.directory) / f"{first.body['info']['key']}.enf"
    _corrupt(entry, how)
    second = _request(service.endpoint, model, {"calibration_samples": 1})
    assert second.kind == Kind.COMPILED and second.body["cached"] is False
    Program.from_bytes(entry.read_bytes())  # the entry was replaced by a good one
    third = _request(service.endpoint, model, {"calibration_samples": 1})
    assert third.body["cached"] is True


def _cli(model: Path, out: Path, **kw: Any) -> Path:
    args: dict[str, Any] = {"model": model, "output": out, "target_npu": "warboy", "batch_size": 1,
                            "compiler_config": None, "calibration_method": "MIN_MAX_ASYM", "calibration_data": "random",
                            "calibration_samples": 1, "with_quantize": True, "normalized_pixel_outputs": [],
                            "no_cache": False}
    args.update(kw)
    return compile_cmd(**args)


@pytest.mark.parametrize("how", ["old_format", "truncated"])
def test_the_cli_recompiles_over_an_unreadable_cache_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           how: str) -> None:
    monkeypatch.setenv("NPUSIM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NPUSIM_CACHE_MAX_BYTES", str(1 << 30))
    src = tmp_path / "m.onnx"
    onnx.save(_conv(), src)
    first = _cli(src, tmp_path / "a.enf")
    (entry,) = (tmp_path / "cache").glob("*.enf")
    _corrupt(entry, how)
    second = _cli(src, tmp_path / "b.enf")  # compiles again instead of failing on the entry
    assert Program.from_bytes(second.read_bytes()).target == Program.from_bytes(first.read_bytes()).target
    Program.from_bytes(entry.read_bytes())  # the entry was replaced by a good one


# -- 8: option types, and one reply per request ------------------------------------------------
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


class _Counting:
    """Wraps a service's ``reply``: how many replies each request got."""

    def __init__(self, svc: CompilerService, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: dict[int, int] = {}
        self._lock = threading.Lock()
        original = svc.reply

        def reply(req: Any, msg: Message) -> None:
            with self._lock:
                self.counts[id(req)] = self.counts.get(id(req), 0) + 1
            original(req, msg)

        monkeypatch.setattr(svc, "reply", reply)


def test_an_unexpected_exception_in_a_compile_is_an_internal_error_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    started = threading.Event()
    calls = []

    def broken(*_: Any, **__: Any) -> None:
        calls.append(1)
        started.set()
        time.sleep(0.5)  # long enough for the second request to join the first
        raise RuntimeError("boom in a pass")

    monkeypatch.setattr(server, "compile_model", broken)
    with _service(workers=2) as svc:
        counting = _Counting(svc, monkeypatch)
        with cf.ThreadPoolExecutor(2) as pool:
            first = pool.submit(_request, svc.endpoint, CONV, {})
            assert started.wait(10)
            second = pool.submit(_request, svc.endpoint, CONV, {})
            for fut in (first, second):
                with pytest.raises(ServiceError, match="internal error: RuntimeError: boom in a pass"):
                    fut.result(timeout=30)
        time.sleep(0.1)
        assert sorted(counting.counts.values()) == [1, 1]
        assert len(calls) == 1  # the second request waited for the first's result
        monkeypatch.undo()  # the service still compiles
        assert _request(svc.endpoint, CONV, {"calibration_samples": 1}).kind == Kind.COMPILED


@pytest.mark.parametrize("where", ["cache_key", "cache.load", "program_info", "cache.put"])
def test_an_exception_anywhere_in_the_worker_still_gets_one_reply(monkeypatch: pytest.MonkeyPatch,
                                                                  where: str) -> None:
    def broken(*_: Any, **__: Any) -> None:
        raise TypeError(f"broken {where}")

    with _service() as svc:
        model = _conv(seed=21).SerializeToString()
        if where == "program_info":  # the cache hit path: compile once first
            _request(svc.endpoint, model, {"calibration_samples": 1})
        counting = _Counting(svc, monkeypatch)
        if where.startswith("cache."):
            monkeypatch.setattr(svc.cache, where.split(".")[1], broken)
        else:
            monkeypatch.setattr(server, where, broken)
        if where == "cache.put":  # a cache fault costs the cache, not the compile
            assert _request(svc.endpoint, model, {"calibration_samples": 1}).kind == Kind.COMPILED
        else:
            with pytest.raises(ServiceError, match=f"internal error: TypeError: broken {where}"):
                _request(svc.endpoint, model, {"calibration_samples": 1})
        time.sleep(0.1)
        assert list(counting.counts.values()) == [1]


def test_options_the_validation_missed_still_get_one_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reviewer's repro: options built without validation (bytes inside) reach the worker."""
    with _service() as svc:
        counting = _Counting(svc, monkeypatch)
        monkeypatch.setattr(server.CompileOptions, "from_dict",
                            classmethod(lambda cls, d: cls(**d)))  # skip validate()
        with pytest.raises(ServiceError, match="internal error: TypeError"):
            _request(svc.endpoint, CONV, {"input_shapes": {"x": b"\x01"}})
        time.sleep(0.1)
        assert list(counting.counts.values()) == [1]


# -- 14: a compiled program handed to the compiler ---------------------------------------------
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


# -- 16: earlier and clearer errors, and warnings for ignored options --------------------------
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
