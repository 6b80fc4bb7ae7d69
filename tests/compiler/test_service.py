"""The compiler service: COMPILE served from the content-addressed program cache, the cache's
directory and size limit, what the cache key covers, entries that no longer parse (compiled
again, by the service and by the CLI), a cache that cannot be written (best-effort: the compile
still succeeds), named errors over the wire, and exactly one reply to every COMPILE request,
an unexpected exception included.

Most tests run an in-process CompilerService on a thread (ipc socket in a short private
directory under /tmp); one runs the real service process with ``start_stack(devices=0)``.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import errno
import hashlib
import shutil
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

from npusim.compiler_svc import pipeline, server
from npusim.compiler_svc.cache import ProgramCache, compiler_digest, default_cache_dir
from npusim.compiler_svc.pipeline import CompileOptions, cache_key, compile_model
from npusim.compiler_svc.server import CompilerService
from npusim.services.errors import ConfigError, InvalidCompilerConfig, InvalidModel, NpusimError, ServiceError
from npusim.services.program import FORMAT_VERSION, Program
from npusim.services.protocol import Kind, Message
from npusim.services.rpc import Peer
from npusim.services.zoo import mnist, small_cnn
from tests.compiler.compile_cli import compile_cli as _cli
from tests.helpers import serving, short_dir, start_stack

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


# -- models and service --------------------------------------------------------------------------
def _tiny(seed: int = 0) -> bytes:
    w = numpy_helper.from_array((np.random.default_rng(seed).standard_normal((4, 3, 3, 3)) * 0.5).astype(np.float32),
                                "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 32])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _conv(seed: int = 0) -> onnx.ModelProto:
    """x [1,4,8,32] → a 3×3 Conv with 4 channels in and out → y."""
    w = numpy_helper.from_array((np.random.default_rng(seed).standard_normal((4, 4, 3, 3)) * 0.5).astype(np.float32),
                                "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")]
    g = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


MNIST = mnist().SerializeToString()
CONV = _conv().SerializeToString()


@contextlib.contextmanager
def compiler(cache: ProgramCache | None, d: Path, workers: int = 1) -> Iterator[CompilerService]:
    svc = CompilerService("compiler", f"ipc://{d}/c.sock", cache=cache, workers=workers)
    with serving(svc):
        yield svc


@contextlib.contextmanager
def _fresh_service(workers: int = 1) -> Iterator[CompilerService]:
    """A service of the test's own (with a cache), for tests that patch it."""
    with short_dir() as d, compiler(ProgramCache(d / "cache", max_bytes=1 << 30), d, workers=workers) as svc:
        yield svc


@pytest.fixture(scope="module")
def service() -> Iterator[CompilerService]:
    with short_dir() as d, compiler(ProgramCache(d / "cache", max_bytes=1 << 30), d) as svc:
        yield svc


def _compile(endpoint: str, model: bytes, options: dict[str, Any] | None = None) -> tuple[Message, float]:
    with Peer(endpoint, timeout_s=50.0) as peer:
        t0 = time.perf_counter()
        reply = peer.request(Kind.COMPILE, {"options": options or {}}, [("model", np.frombuffer(model, np.uint8))])
        return reply, time.perf_counter() - t0


def _request(endpoint: str, model: bytes, options: Any) -> Message:
    return _compile(endpoint, model, options)[0]


def _blob(reply: Message) -> bytes:
    return reply.tensor("program").tobytes()


# -- the cache through the service ----------------------------------------------------------
def test_a_repeat_compile_is_served_from_the_cache(service: CompilerService) -> None:
    options = {"target_npu": "warboy", "batch_size": 2}
    first, t_first = _compile(service.endpoint, MNIST, options)
    second, t_second = _compile(service.endpoint, MNIST, options)
    assert first.kind == second.kind == Kind.COMPILED
    assert first.body["cached"] is False
    assert second.body["cached"] is True
    assert _blob(first) == _blob(second)
    program = Program.from_bytes(_blob(second))
    assert (program.target, program.batch_size) == ("warboy", 2)
    key = cache_key(MNIST, CompileOptions(**options))
    assert first.body["info"]["key"] == second.body["info"]["key"] == key
    assert (Path(service.cache.directory) / f"{key}.enf").read_bytes() == _blob(first)
    for field in ("target", "cpu_ops", "npu_stages", "warnings", "npu_ns"):
        assert first.body["info"][field] == second.body["info"][field], field
    assert first.body["info"]["stages"] and second.body["info"]["stages"] == {}
    assert t_second < t_first / 3, (t_first, t_second)


def test_options_spelled_out_as_their_defaults_hit_the_same_entry(service: CompilerService) -> None:
    first, _ = _compile(service.endpoint, _tiny(1), {})
    spelled, _ = _compile(service.endpoint, _tiny(1), {"target_npu": "warboy-2pe", "batch_size": 1,
                                                      "compiler_config": {}, "with_quantize": True})
    assert first.body["cached"] is False and spelled.body["cached"] is True


@pytest.mark.parametrize("change", [
    {"target_npu": "warboy"},
    {"batch_size": 2},
    {"compiler_config": {"remove_lower": True}},
    {"compiler_config": {"allow_precision_error": True}},
    {"with_quantize": False},
    {"normalized_pixel_outputs": [0]},
    {"calibration_samples": 4},
    {"calibration_method": "MIN_MAX_SYM"},
], ids=["target_npu", "batch_size", "remove_lower", "allow_precision_error", "with_quantize",
        "normalized_pixel_outputs", "calibration_samples", "calibration_method"])
def test_different_options_miss(service: CompilerService, change: dict[str, Any]) -> None:
    model = _tiny(2)
    base, _ = _compile(service.endpoint, model, {})
    other, _ = _compile(service.endpoint, model, change)
    assert other.body["cached"] is False
    assert other.body["info"]["key"] != base.body["info"]["key"]
    again, _ = _compile(service.endpoint, model, change)
    assert again.body["cached"] is True


def test_a_different_model_misses(service: CompilerService) -> None:
    a, _ = _compile(service.endpoint, _tiny(3), {})
    b, _ = _compile(service.endpoint, _tiny(4), {})
    assert b.body["cached"] is False and a.body["info"]["key"] != b.body["info"]["key"]


def test_health_reports_the_cache(service: CompilerService) -> None:
    with Peer(service.endpoint, timeout_s=5.0) as peer:
        body = peer.request(Kind.HEALTH).body
    assert body["cache"]["dir"] == str(service.cache.directory)
    assert body["cache"]["max_bytes"] == 1 << 30


def test_a_disabled_cache_compiles_every_time() -> None:
    with short_dir() as d, compiler(ProgramCache(d / "cache", max_bytes=0), d) as svc:
        first, _ = _compile(svc.endpoint, _tiny(5), {})
        second, _ = _compile(svc.endpoint, _tiny(5), {})
        assert first.body["cached"] is False and second.body["cached"] is False
        assert svc.compiled == 2
        assert not (d / "cache").exists()


# -- ProgramCache ----------------------------------------------------------------------------
TICK_S = 0.03  # file mtimes move in kernel ticks: space out the operations whose order matters


def test_cache_round_trip_and_miss(tmp_path: Path) -> None:
    cache = ProgramCache(tmp_path / "c", max_bytes=1 << 20)
    assert cache.get("k") is None
    cache.put("k", b"program")
    assert cache.get("k") == b"program"
    assert (cache.hits, cache.misses) == (1, 1)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["k.enf"]  # no temporary files left


def test_cache_evicts_least_recently_used_entries(tmp_path: Path) -> None:
    cache = ProgramCache(tmp_path / "c", max_bytes=250)
    for key in ("a", "b"):
        cache.put(key, key.encode() * 100)
        time.sleep(TICK_S)
    assert cache.get("a") is not None  # a is now more recent than b
    time.sleep(TICK_S)
    cache.put("c", b"c" * 100)  # 300 bytes > 250: the least recently used goes
    assert cache.get("b") is None
    assert cache.get("c") == b"c" * 100
    time.sleep(TICK_S)
    assert cache.get("a") == b"a" * 100  # a read last: c is now the least recently used
    time.sleep(TICK_S)
    cache.put("d", b"d" * 100)
    assert cache.get("c") is None
    assert {p.stem for p in (tmp_path / "c").glob("*.enf")} == {"a", "d"}


def test_cache_keeps_within_its_limit(tmp_path: Path) -> None:
    cache = ProgramCache(tmp_path / "c", max_bytes=1000)
    for i in range(12):
        cache.put(f"k{i:02d}", bytes(150))
        time.sleep(0.005)
    assert sum(p.stat().st_size for p in (tmp_path / "c").glob("*.enf")) <= 1000
    assert cache.get("k11") == bytes(150)  # the newest survives


def test_an_entry_larger_than_the_limit_is_not_stored(tmp_path: Path) -> None:
    cache = ProgramCache(tmp_path / "c", max_bytes=100)
    cache.put("small", bytes(50))
    cache.put("big", bytes(101))
    assert cache.get("big") is None
    assert cache.get("small") == bytes(50)


def test_max_bytes_0_disables_the_cache(tmp_path: Path) -> None:
    cache = ProgramCache(tmp_path / "c", max_bytes=0)
    assert not cache.enabled
    cache.put("k", b"x")
    assert cache.get("k") is None
    assert not (tmp_path / "c").exists()


def test_cache_directory_and_limit_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPUSIM_CACHE_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("NPUSIM_CACHE_MAX_BYTES", "12345")
    assert default_cache_dir() == tmp_path / "from-env"
    cache = ProgramCache()
    assert cache.directory == tmp_path / "from-env" and cache.max_bytes == 12345
    assert (tmp_path / "from-env").is_dir()
    monkeypatch.setenv("NPUSIM_CACHE_MAX_BYTES", "0")
    assert not ProgramCache().enabled
    # Arguments win over the environment.
    explicit = ProgramCache(tmp_path / "explicit", max_bytes=7)
    assert explicit.directory == tmp_path / "explicit" and explicit.max_bytes == 7


def test_default_cache_dir_without_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NPUSIM_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "npusim" / "programs"


@pytest.mark.parametrize("value", ["-1", "lots"])
def test_a_bad_cache_limit_in_the_environment_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                value: str) -> None:
    monkeypatch.setenv("NPUSIM_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("NPUSIM_CACHE_MAX_BYTES", value)
    with pytest.raises(ConfigError, match="NPUSIM_CACHE_MAX_BYTES"):
        ProgramCache()


def test_a_service_with_the_default_cache_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with short_dir() as d:
        monkeypatch.setenv("NPUSIM_CACHE_DIR", str(d / "env-cache"))
        monkeypatch.setenv("NPUSIM_CACHE_MAX_BYTES", str(1 << 20))
        with compiler(None, d) as svc:
            first, _ = _compile(svc.endpoint, _tiny(6), {})
            second, _ = _compile(svc.endpoint, _tiny(6), {})
            with Peer(svc.endpoint, timeout_s=5.0) as peer:
                info = peer.request(Kind.HEALTH).body["cache"]
        assert info["dir"] == str(d / "env-cache") and info["max_bytes"] == 1 << 20
        assert second.body["cached"] is True
        assert (d / "env-cache" / f"{first.body['info']['key']}.enf").is_file()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("failure", ["enospc", "not-a-directory"])
def test_cache_write_failure_does_not_fail_compile(ipc_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                   failure: str) -> None:
    cache_dir = ipc_dir / "cache"
    cache = ProgramCache(cache_dir, max_bytes=1 << 30)
    if failure == "enospc":
        def full(key: str, data: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(cache, "put", full)
    else:  # the directory vanished and a file took its place: every real write fails
        shutil.rmtree(cache_dir)
        cache_dir.write_bytes(b"")
    svc = CompilerService("compiler", f"ipc://{ipc_dir}/c.sock", cache=cache)
    model = np.frombuffer(small_cnn().SerializeToString(), np.uint8)
    with serving(svc), Peer(svc.endpoint, timeout_s=30.0) as peer:
        for _ in range(2):
            reply = peer.request(Kind.COMPILE, {"options": {"target_npu": "warboy"}}, [("model", model)])
            assert reply.kind == Kind.COMPILED
            assert Program.from_bytes(reply.tensor("program").tobytes()).target == "warboy"
        assert peer.request(Kind.HEALTH).kind == Kind.HEALTH_OK


@pytest.mark.timeout(10)
@pytest.mark.parametrize("via", ["argument", "env"])
def test_uncreatable_cache_dir_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, via: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    where = blocker / "cache"
    if via == "env":
        monkeypatch.setenv("NPUSIM_CACHE_DIR", str(where))
    with pytest.raises(ConfigError, match="NPUSIM_CACHE_DIR") as ei:
        ProgramCache(where if via == "argument" else None, max_bytes=1 << 20)
    assert str(where) in str(ei.value)


# -- the cache key, and entries that no longer parse -------------------------------------------
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


# -- errors over the wire are the in-process errors -------------------------------------------
def _in_process_error(model: bytes, options: dict[str, Any]) -> NpusimError:
    with pytest.raises(NpusimError) as ei:
        compile_model(model, CompileOptions.from_dict(options))
    return ei.value


@pytest.mark.parametrize("model, options, cls, key", [
    (b"this is not an onnx model", {}, InvalidModel, None),
    (_tiny()[: len(_tiny()) // 2], {}, InvalidModel, None),
    (_tiny(), {"compiler_config": {"remove_lowr": True}}, InvalidCompilerConfig, "remove_lowr"),
    (_tiny(), {"compiler_config": {"remove_lower": 1}}, InvalidCompilerConfig, "remove_lower"),
    (_tiny(), {"compiler_config": {"permute_input": [[0, 1]]}}, InvalidCompilerConfig, "permute_input"),
    (_tiny(), {"batch_size": 0}, InvalidCompilerConfig, None),
    (_tiny(), {"target_npu": "warboy-3pe"}, InvalidCompilerConfig, None),
    (_tiny(), {"no_such_option": 1}, InvalidCompilerConfig, None),
    (_tiny(), {"normalized_pixel_outputs": [3]}, InvalidCompilerConfig, None),
], ids=["garbage", "truncated", "unknown_key", "wrong_type", "bad_permutation", "batch_0", "target", "option",
        "output_index"])
def test_bad_input_gives_the_same_named_error_as_in_process(service: CompilerService, model: bytes,
                                                            options: dict[str, Any], cls: type[NpusimError],
                                                            key: str | None) -> None:
    if "no_such_option" in options:  # from_dict itself is what refuses it in-process
        with pytest.raises(cls) as local:
            CompileOptions.from_dict(options)
        expected = local.value
    else:
        expected = _in_process_error(model, options)
    assert type(expected) is cls
    with pytest.raises(NpusimError) as ei:
        _compile(service.endpoint, model, options)
    assert type(ei.value) is cls
    assert ei.value.message == expected.message
    if key is not None:
        assert repr(key) in ei.value.message and ei.value.details.get("key") == key
    # The service is still there and serves good requests.
    ok, _ = _compile(service.endpoint, _tiny(7), {})
    assert ok.kind == Kind.COMPILED


def test_an_empty_model_is_invalid(service: CompilerService) -> None:
    with pytest.raises(InvalidModel, match="empty"):
        _compile(service.endpoint, b"", {})


def test_a_failed_compile_is_not_cached(service: CompilerService) -> None:
    options = {"compiler_config": {"permute_input": [[0, 2, 3, 1, 4]]}}
    for _ in range(2):
        with pytest.raises(InvalidCompilerConfig, match="permute_input"):
            _compile(service.endpoint, _tiny(8), options)
    key = cache_key(_tiny(8), CompileOptions.from_dict(options))
    assert not (Path(service.cache.directory) / f"{key}.enf").exists()


def test_a_compiler_config_that_is_not_a_mapping_is_a_named_error(service: CompilerService) -> None:
    with pytest.raises(InvalidCompilerConfig):
        _compile(service.endpoint, _tiny(), {"compiler_config": ["remove_lower"]})


# -- one reply to every COMPILE request ---------------------------------------------------------
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
    with _fresh_service(workers=2) as svc:
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

    with _fresh_service() as svc:
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
    """Options built without validation (bytes inside) reach the worker: still one reply."""
    with _fresh_service() as svc:
        counting = _Counting(svc, monkeypatch)
        monkeypatch.setattr(server.CompileOptions, "from_dict",
                            classmethod(lambda cls, d: cls(**d)))  # skip validate()
        with pytest.raises(ServiceError, match="internal error: TypeError"):
            _request(svc.endpoint, CONV, {"input_shapes": {"x": b"\x01"}})
        time.sleep(0.1)
        assert list(counting.counts.values()) == [1]


# -- the real service process ------------------------------------------------------------------
def test_the_compiler_process_serves_repeats_from_its_cache_directory() -> None:
    with start_stack(devices=0) as stack:
        first, t_first = _compile(stack.compiler, MNIST, {"target_npu": "warboy"})
        second, t_second = _compile(stack.compiler, MNIST, {"target_npu": "warboy"})
        assert (first.body["cached"], second.body["cached"]) == (False, True)
        assert _blob(first) == _blob(second)
        assert t_second < t_first
        entry = stack.run_dir / "cache" / f"{first.body['info']['key']}.enf"
        assert entry.read_bytes() == _blob(first)
        with pytest.raises(InvalidCompilerConfig, match="'remove_lowr'"):
            _compile(stack.compiler, MNIST, {"compiler_config": {"remove_lowr": True}})
        with pytest.raises(InvalidModel, match="cannot parse"):
            _compile(stack.compiler, b"garbage bytes", {})
