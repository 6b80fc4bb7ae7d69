"""``npusim serve`` with a real third-party client: Triton's ``tritonclient`` (HTTP) against the
server process on loopback, next to ``session.run`` on the same program."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

tritonhttp = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from npusim.client import session  # noqa: E402
from npusim.compiler_svc.estimate import compile_programs  # noqa: E402
from npusim.services.zoo import small_cnn  # noqa: E402
from tests.helpers import RunningStack, start_stack  # noqa: E402

pytestmark = pytest.mark.timeout(240)

_candidate = Path(sys.executable).with_name("npusim")
NPUSIM = str(_candidate) if _candidate.exists() else (shutil.which("npusim") or "npusim")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    (p,), _ = compile_programs(small_cnn().SerializeToString(), ["warboy-2pe"], [1])
    path = tmp_path_factory.mktemp("serve") / "cnn.enf"
    path.write_bytes(p.to_bytes())
    return path


X = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)


@contextmanager
def serving(config: Path, grpc: list[str] | None = None) -> Iterator[str]:
    """``npusim serve --model-config config`` on free loopback ports, until it is ready; its REST
    address (its gRPC address is appended to ``grpc``). Stopped (SIGTERM: uvicorn's graceful
    shutdown, which closes the sessions) on the way out."""
    port, grpc_port = _free_port(), _free_port()
    if grpc is not None:
        grpc.append(f"127.0.0.1:{grpc_port}")
    proc = subprocess.Popen([NPUSIM, "serve", "--model-config", str(config), "--http-port", str(port),
                             "--grpc-port", str(grpc_port)],
                            env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"127.0.0.1:{port}"
    try:
        client = tritonhttp.InferenceServerClient(url, network_timeout=30)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if client.is_server_ready():
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.2)
        else:
            pytest.fail("npusim serve did not become ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


X = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)


@pytest.fixture
def server(use_stack: RunningStack, program: Path, tmp_path: Path) -> Iterator[tuple[str, np.ndarray, str]]:
    """The server on loopback, serving the program as 'cnn' and 'spare' (which hold both devices' fused
    PEs), and what ``session.run`` answers for ``X`` on the same program, taken before it starts."""
    with session.create(program.read_bytes()) as sess:
        want = sess.run(X)[0].numpy()
    config = tmp_path / "models.yaml"
    config.write_text(f"model_config_list:\n  - name: cnn\n    model: {program}\n    version: '2'\n    worker_num: 2\n"
                      f"  - name: spare\n    model: {program}\n    npu_device: npu1pe0-1\n")
    grpc: list[str] = []
    with serving(config, grpc) as url:
        yield url, want, grpc[0]


def _input(x: np.ndarray, binary: bool) -> tritonhttp.InferInput:
    i = tritonhttp.InferInput("input", list(x.shape), "FP32")
    i.set_data_from_numpy(x, binary_data=binary)
    return i


def test_tritonclient_gets_what_session_run_gives(server: tuple[str, np.ndarray, str]) -> None:
    url, want, _ = server
    client = tritonhttp.InferenceServerClient(url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("cnn") and client.is_model_ready("cnn", "2")
    meta = client.get_model_metadata("cnn")
    assert meta["name"] == "cnn" and meta["versions"] == ["2"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [1, 3, 64, 64]}]
    out_name = meta["outputs"][0]["name"]
    for binary in (True, False):
        r = client.infer("cnn", [_input(X, binary)], model_version="2", request_id="r1",
                         outputs=[tritonhttp.InferRequestedOutput(out_name, binary_data=binary)])
        np.testing.assert_array_equal(r.as_numpy(out_name), want)
        assert r.get_response()["id"] == "r1"
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data", "model_repository"]
    with urllib.request.urlopen(f"http://{url}/metrics", timeout=30) as r:
        text = r.read().decode()
    assert 'npusim_serve_requests_total{model="cnn",outcome="ok"} 2.0' in text
    assert 'npusim_serve_request_duration_seconds_count{model="cnn"} 2.0' in text
    util = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line.startswith("furiosa_npu_core_utilization{")}
    # both cores of the two devices the models hold (a small CNN's microseconds round to ~0 %)
    assert set(util) == {f'furiosa_npu_core_utilization{{core="{c}",device="npu{d}"}}' for c in "01" for d in "01"}
    assert all(0 <= v <= 100 for v in util.values())


@pytest.mark.parametrize(("mutate", "says"), [
    (lambda x: x[:, :, :32], "shape"), (lambda x: x.astype(np.float64), "FP32"), (None, "no model")])
def test_wrong_requests_get_400_naming_the_fix(server: tuple[str, np.ndarray, str], mutate, says: str) -> None:
    client = tritonhttp.InferenceServerClient(server[0])
    x = np.zeros((1, 3, 64, 64), np.float32)
    if mutate is None:
        model, inp = "nope", _input(x, True)
    else:
        y = mutate(x)
        model = "cnn"
        inp = tritonhttp.InferInput("input", list(y.shape), "FP64" if y.dtype == np.float64 else "FP32")
        inp.set_data_from_numpy(y)
    with pytest.raises(InferenceServerException) as e:
        client.infer(model, [inp])
    assert e.value.status() == "400" and says in e.value.message()


def test_models_load_and_unload_while_clients_run(server: tuple[str, np.ndarray, str]) -> None:
    url, _, _ = server
    x = np.zeros((1, 3, 64, 64), np.float32)
    errors: list[str] = []
    done = [0]
    stop = threading.Event()

    def client_loop() -> None:
        c = tritonhttp.InferenceServerClient(url)
        while not stop.is_set():
            try:
                c.infer("cnn", [_input(x, True)])
                done[0] += 1
            except InferenceServerException as e:  # any failure here is a defect: cnn stays loaded
                errors.append(f"{e.status()} {e.message()}")

    threads = [threading.Thread(target=client_loop) for _ in range(16)]
    for t in threads:
        t.start()
    admin = tritonhttp.InferenceServerClient(url)
    try:
        for _ in range(2):
            admin.unload_model("spare")
            assert not admin.is_model_ready("spare") and not admin.is_server_ready()
            with pytest.raises(InferenceServerException, match="not ready"):
                admin.infer("spare", [_input(x, True)])
            admin.load_model("spare")
            assert admin.is_model_ready("spare")
            assert admin.infer("spare", [_input(x, True)]).as_numpy(admin.get_model_metadata("spare")["outputs"][0]
                                                                    ["name"]).shape
        index = {m["name"]: m["state"] for m in admin.get_model_repository_index()}
        assert index == {"cnn": "READY", "spare": "READY"}
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors and done[0] > 16


def test_the_callers_traceparent_continues_down_to_the_pe(program: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """One HTTP request with a W3C traceparent is one trace: the server's span under the caller's,
    then the session's, the worker's and the daemon's, exported over OTLP to a receiver here."""
    from tests.integration.test_tracing import OTEL_ENV, OTEL_UNSET, OtlpReceiver

    receiver = OtlpReceiver()
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    try:
        for var in OTEL_UNSET:
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        for k, v in OTEL_ENV.items():
            monkeypatch.setenv(k, v)
        config = tmp_path / "models.yaml"
        config.write_text(f"model_config_list:\n  - name: cnn\n    model: {program}\n")
        with start_stack(devices=1) as stack:
            for k, v in stack.env().items():
                monkeypatch.setenv(k, v)
            with serving(config) as url:
                tritonhttp.InferenceServerClient(url).infer(
                    "cnn", [_input(X, True)], headers={"traceparent": f"00-{trace_id}-{parent}-01"})

        def complete(spans: list) -> bool:
            return {"npusim-serve", "npusim-worker", "npusim-daemon"} <= {s.service for s in spans
                                                                          if s.trace_id == trace_id}

        spans = [s for s in receiver.wait_for(complete, timeout_s=15.0) if s.trace_id == trace_id]
    finally:
        receiver.close()
    assert complete(spans), sorted((s.service, s.name) for s in spans)
    (http,) = [s for s in spans if s.name == "POST /v2/models/cnn/infer"]
    assert http.parent_id == parent and http.service == "npusim-serve"
    ids = {s.span_id for s in spans} | {parent}
    assert all(s.parent_id in ids for s in spans)  # one tree under the caller's span
    assert {"Inference", "worker.job", "npu.exec"} <= {s.name for s in spans}


def test_a_full_queue_answers_503_at_once_and_never_hangs(program: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(f"model_config_list:\n  - name: cnn\n    model: {program}\n    input_queue_size: 1\n")
    with start_stack(devices=1, daemon_args=("--timing-only", "--time-scale", "20000")) as stack:  # ~0.15 s a job
        for k, v in stack.env().items():
            monkeypatch.setenv(k, v)
        with serving(config) as url:
            results: list[str] = []

            def one() -> None:
                c = tritonhttp.InferenceServerClient(url, network_timeout=60)
                try:
                    c.infer("cnn", [_input(X, True)])
                    results.append("200")
                except InferenceServerException as e:
                    results.append(f"{e.status()} {e.message()}")

            t0 = time.monotonic()
            threads = [threading.Thread(target=one) for _ in range(12)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            took = time.monotonic() - t0
    assert len(results) == 12  # every request answered
    busy = [r for r in results if r.startswith("503")]
    assert busy and all("busy" in r and "retry" in r for r in busy), results
    assert "200" in results and set(results) <= {"200", *busy}, results
    assert took < 30


def test_tritonclient_grpc_gets_the_same_and_statuses_name_the_fix(server: tuple[str, np.ndarray, str]) -> None:
    tritongrpc = pytest.importorskip("tritonclient.grpc")
    _, want, address = server
    client = tritongrpc.InferenceServerClient(address)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("cnn", "2")
    meta = client.get_model_metadata("cnn", as_json=True)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["1", "3", "64", "64"]}]
    out_name = meta["outputs"][0]["name"]
    inp = tritongrpc.InferInput("input", [1, 3, 64, 64], "FP32")
    inp.set_data_from_numpy(X)
    r = client.infer("cnn", [inp], request_id="g1")
    np.testing.assert_array_equal(r.as_numpy(out_name), want)
    assert r.get_response().id == "g1"
    assert client.get_server_metadata().extensions == ["binary_tensor_data", "model_repository"]
    bad = tritongrpc.InferInput("input", [1, 3, 32, 64], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 32, 64), np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("cnn", [bad])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "shape" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.infer("nope", [inp])
    assert e.value.status() == "StatusCode.NOT_FOUND" and "no model 'nope'" in e.value.message()
