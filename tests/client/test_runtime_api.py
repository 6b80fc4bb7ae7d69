"""The client APIs users write against: legacy sessions and queues, asyncio runners and queues,
their sync twins, NuxModel, device selection and the error contract."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from npusim.client import create_queue, create_runner, session, sync
from npusim.client.serving import NuxModel, NuxModelConfig
from npusim.services.errors import (
    ConfigError,
    QueueWaitTimeout,
    SessionClosed,
    SessionTerminated,
)
from npusim.services.protocol import Kind
from npusim.services.rpc import Peer
from npusim.services.zoo import small_cnn
from tests.helpers import RunningStack

SHAPE = (1, 3, 64, 64)


@pytest.fixture(scope="module")
def model() -> bytes:
    return small_cnn().SerializeToString()


@pytest.fixture(scope="module")
def inputs() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(12)]


@pytest.fixture(scope="module")
def reference(stack: RunningStack, model: bytes, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """What a plain session computes for each input (the emulation is deterministic)."""
    mp = pytest.MonkeyPatch()
    for k, v in stack.env().items():
        mp.setenv(k, v)
    try:
        with session.create(model) as sess:
            return [sess.run(x)[0].numpy() for x in inputs]
    finally:
        mp.undo()


def test_legacy_outputs_have_numpy_like_the_sdk(use_stack: RunningStack, model: bytes,
                                                inputs: list[np.ndarray], reference: list[np.ndarray]) -> None:
    with session.create(model) as sess:
        outputs = sess.run(inputs[0])
        assert isinstance(outputs[0].numpy(), np.ndarray) and type(outputs[0].numpy()) is np.ndarray
        np.testing.assert_array_equal(outputs[0].numpy(), reference[0])
        assert sess.summary().startswith("Inputs:\n{0: TensorDesc(name=\"input\", shape=(1, 3, 64, 64), dtype=FLOAT32")
        assert [a.shape for a in sess.allocate_inputs()] == [SHAPE]


def test_create_async_returns_every_result_once_with_its_context(use_stack: RunningStack, model: bytes,
                                                                 inputs: list[np.ndarray],
                                                                 reference: list[np.ndarray]) -> None:
    submitter, queue = session.create_async(model, worker_num=2, input_queue_size=100, output_queue_size=100)
    try:
        with pytest.raises(QueueWaitTimeout):
            queue.recv(0)
        with pytest.raises(ValueError):
            queue.recv(-1)
        for i, x in enumerate(inputs):
            submitter.submit(x, context=i)
        seen = {}
        for _ in inputs:
            context, outputs = queue.recv(10_000)
            seen[context] = outputs[0].numpy()
        assert sorted(seen) == list(range(len(inputs)))
        for i, y in seen.items():
            np.testing.assert_array_equal(y, reference[i])
        submitter.submit(inputs[0], context="last")
        submitter.close()
        assert [c for c, _ in queue] == ["last"]  # iteration ends when the session is done
        with pytest.raises(SessionTerminated):
            queue.recv(100)
        with pytest.raises(SessionTerminated):
            queue.recv()
        with pytest.raises(SessionClosed):
            submitter.submit(inputs[0])
    finally:
        queue.close()
        submitter.close()
    with pytest.raises(SessionClosed):
        queue.recv(0)


def test_submit_blocks_while_the_queues_are_full(use_stack: RunningStack, model: bytes,
                                                 inputs: list[np.ndarray]) -> None:
    submitter, queue = session.create_async(model, worker_num=1, input_queue_size=1, output_queue_size=1)
    try:
        submitter.submit(inputs[0], context=0)  # runs, then waits in the output queue
        submitter.submit(inputs[1], context=1)  # waits in the input queue: the output queue is full
        third = threading.Thread(target=submitter.submit, args=(inputs[2],), kwargs={"context": 2}, daemon=True)
        third.start()
        third.join(1.0)
        assert third.is_alive(), "submit returned although both queues were full"
        got = [queue.recv(10_000)[0]]
        third.join(10.0)
        assert not third.is_alive()
        got += [queue.recv(10_000)[0], queue.recv(10_000)[0]]
        assert got == [0, 1, 2]
    finally:
        submitter.close()
        queue.close()


def test_bad_options_are_value_errors(use_stack: RunningStack, model: bytes) -> None:
    for kwargs in ({"worker_num": 0}, {"worker_num": "2"}, {"batch_size": 0}, {"compiler_config": "fast"},
                   {"device": "warboy(3)*1"}, {"device": "npu0pe0,npu0pe0-1"}, {"device": "warboy(2)*1,npu1pe0"}):
        with pytest.raises(ValueError):
            session.create(model, **kwargs)
    for kwargs in ({"input_queue_size": 0}, {"output_queue_size": 2**31}):
        with pytest.raises(ConfigError):
            session.create_async(model, **kwargs)


def _session_jobs(stack: RunningStack) -> dict[str, int]:
    """Jobs per open PE, from each daemon's STATS."""
    out = {}
    for name, ep in stack.daemons.items():
        with Peer(ep, name=name, timeout_s=10.0) as peer:
            stats = peer.request(Kind.STATS, {}).body["stats"]
        for s in stats["sessions"].values():
            out[f"{name}{s['pe']}"] = s["jobs"]
    return out


def test_a_session_on_several_pes_spreads_its_work(use_stack: RunningStack, model: bytes,
                                                   inputs: list[np.ndarray], reference: list[np.ndarray]) -> None:
    submitter, queue = session.create_async(model, device="warboy(1)*2", worker_num=2)
    try:
        pes = submitter.device.split(",")
        assert len(set(pes)) == 2 and all(p.endswith(("pe0", "pe1")) for p in pes)
        for i, x in enumerate(inputs):
            submitter.submit(x, context=i)
        for _ in inputs:
            i, (y,) = queue.recv(10_000)
            np.testing.assert_allclose(y.numpy(), reference[i], rtol=0, atol=0)
        jobs = _session_jobs(use_stack)
        assert all(jobs[p] > 0 for p in pes) and sum(jobs[p] for p in pes) == len(inputs)
    finally:
        submitter.close()
        queue.close()
    with session.create(model, device="npu0pe0,npu:1:1", worker_num=2) as sess:
        assert sess.device == "npu0pe0,npu1pe1"
        np.testing.assert_array_equal(sess.run(inputs[0])[0], reference[0])


def test_device_comes_from_the_argument_then_the_environment(use_stack: RunningStack, model: bytes,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPUSIM_DEVICES", "npu1pe1")
    with session.create(model) as sess:
        assert sess.device == "npu1pe1"
    with session.create(model, device="npu:1:0-1") as sess:
        assert sess.device == "npu1pe0-1"


def test_asyncio_runner_and_queue(use_stack: RunningStack, model: bytes, inputs: list[np.ndarray],
                                  reference: list[np.ndarray]) -> None:
    async def main() -> None:
        async with create_runner(model, worker_num=2) as runner:
            assert runner.model.input(0).shape == SHAPE
            outs = await asyncio.gather(*(runner.run(x) for x in inputs))
            for y, want in zip(outs, reference):
                np.testing.assert_array_equal(y[0], want)
            (y,) = await runner.run_with(["logits"], {"input": inputs[1]})
            np.testing.assert_array_equal(y, reference[1])
            with pytest.raises(TypeError):
                await runner.run(inputs[0].astype(np.float16))
            with pytest.raises(ValueError):
                await runner.run(np.zeros((1, 3, 32, 32), np.float32))
            with pytest.raises(ValueError):
                await runner.run_with(["nope"], {"input": inputs[0]})
            with pytest.raises(TypeError):
                await runner.run_with(None, {"input": inputs[0]})  # type: ignore[arg-type]
        with pytest.raises(SessionClosed):
            await runner.run(inputs[0])

        async with create_queue(model, worker_num=2) as (submitter, receiver):
            for i, x in enumerate(inputs):
                await submitter.submit(x, context=i)
            await submitter.close()
            got = {c: y[0] async for c, y in receiver}
            assert sorted(got) == list(range(len(inputs)))
            np.testing.assert_array_equal(got[5], reference[5])

    asyncio.run(asyncio.wait_for(main(), 120))


def test_sync_twins(use_stack: RunningStack, model: bytes, inputs: list[np.ndarray],
                    reference: list[np.ndarray]) -> None:
    with sync.create_runner(model) as runner:
        np.testing.assert_array_equal(runner.run([inputs[2]])[0], reference[2])
    with sync.create_queue(model, worker_num=2) as (submitter, receiver):
        with pytest.raises(TimeoutError):
            receiver.recv(timeout=0)
        for i, x in enumerate(inputs[:4]):
            submitter.submit(x, context=i)
        got = sorted(receiver.recv(timeout=10)[0] for _ in range(4))
        assert got == [0, 1, 2, 3]
        submitter.close()
        assert list(receiver) == []


def test_nux_model_serves_across_event_loops(use_stack: RunningStack, model: bytes, inputs: list[np.ndarray],
                                             reference: list[np.ndarray]) -> None:
    m = NuxModel(NuxModelConfig(name="cnn", model=model, worker_num=1))

    async def predict(x: np.ndarray) -> np.ndarray:
        return (await m.predict(x))[0]

    asyncio.run(m.load())  # the seed loads in one asyncio.run and predicts in another
    try:
        np.testing.assert_array_equal(asyncio.run(predict(inputs[3])), reference[3])
    finally:
        asyncio.run(m.unload())
    with pytest.raises(SessionClosed, match="load"):
        asyncio.run(predict(inputs[3]))


def test_closing_with_requests_queued_ends_each_in_one_error(use_stack: RunningStack, model: bytes,
                                                             inputs: list[np.ndarray]) -> None:
    submitter, queue = session.create_async(model, worker_num=1)
    for i in range(8):
        submitter.submit(inputs[i], context=i)
    t0 = time.monotonic()
    queue.close()  # drops what has not started; what runs finishes
    assert queue._engine.wait_closed(30) and time.monotonic() - t0 < 30
    submitter.close()
    ended = queue._results.pending()
    assert len(ended) == 8 and all(f.done() for f in ended)
    errors = [f.exception() for f in ended if f.exception() is not None]
    assert errors and all(isinstance(e, SessionClosed) for e in errors)
    assert {e.context for e in errors} <= set(range(8))
    with pytest.raises(SessionClosed):
        queue.recv(0)


_CTRL_C = """
import json, signal, sys, numpy as np
signal.signal(signal.SIGINT, signal.default_int_handler)
from npusim.client import session
from npusim.services.zoo import small_cnn
submitter, queue = session.create_async(small_cnn(), worker_num=2)
print(json.dumps(submitter._engine.pool.pids()), flush=True)
x = np.zeros((1, 3, 64, 64), np.float32)
i = 0
while True:
    submitter.submit(x, context=i)
    queue.recv(10_000)
    i += 1
"""


@pytest.mark.timeout(90)
def test_ctrl_c_leaves_no_worker_behind(use_stack: RunningStack) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _CTRL_C], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ), start_new_session=True)
    pids: list[int] = []
    try:
        assert proc.stdout is not None
        pids = json.loads(proc.stdout.readline())
        time.sleep(1.0)  # requests in flight
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids), "workers outlived a client stopped with Ctrl-C"
        assert "KeyboardInterrupt" in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


_PLAIN = """
import numpy as np
from npusim.client import session
from npusim.services.zoo import small_cnn
with session.create(small_cnn()) as sess:
    for _ in range(3):
        sess.run(np.zeros((1, 3, 64, 64), np.float32))
"""


@pytest.mark.timeout(90)
def test_profiler_output_path_profiles_a_program_without_changing_it(use_stack: RunningStack,
                                                                     tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "trace-{pid}.json"
    env = dict(os.environ, NPUSIM_PROFILER_OUTPUT_PATH=str(out))
    proc = subprocess.run([sys.executable, "-c", _PLAIN], env=env, capture_output=True, text=True, timeout=80)
    assert proc.returncode == 0, proc.stderr
    (written,) = tmp_path.glob("trace-*.json")
    trace = json.loads(written.read_text())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    names = [e.get("name") for e in events]
    assert names.count("Inference") == 3 and "npu.exec" in names and "session.create" in names


# -- found in review: cancellation, event loops, dropped objects ---------------------------
def _pe_free_again(model: bytes) -> str:
    """Open (and close) a session on the default device: fails with DeviceBusy while a leaked one holds it."""
    with session.create(model) as s:
        return s.device


def test_a_cancelled_run_leaves_the_runner_working(use_stack: RunningStack, model: bytes,
                                                  inputs: list[np.ndarray], reference: list[np.ndarray]) -> None:
    async def main() -> None:
        async with create_runner(model, worker_num=1) as runner:
            for _ in range(5):  # cancel at different moments of the job's life
                task = asyncio.ensure_future(runner.run(inputs[0]))
                await asyncio.sleep(0)
                task.cancel()
            (y,) = await asyncio.wait_for(runner.run(inputs[1]), 30)
            np.testing.assert_array_equal(y, reference[1])

    asyncio.run(main())


def test_an_async_receiver_serves_one_event_loop_after_another(use_stack: RunningStack, model: bytes,
                                                               inputs: list[np.ndarray]) -> None:
    pair = asyncio.run(create_queue(model, worker_num=2))
    submitter, receiver = pair

    async def submit() -> None:
        for i in range(4):
            await submitter.submit(inputs[i], context=i)

    async def receive(n: int) -> list[int]:
        return [(await asyncio.wait_for(receiver.recv(), 30))[0] for _ in range(n)]

    try:
        asyncio.run(submit())
        got = asyncio.run(receive(2)) + asyncio.run(receive(2))
        assert sorted(got) == [0, 1, 2, 3]
        asyncio.run(submitter.close())
        with pytest.raises(SessionTerminated):
            asyncio.run(asyncio.wait_for(receiver.recv(), 30))
    finally:
        asyncio.run(receiver.close())


def test_a_dropped_runner_gives_its_pe_back(use_stack: RunningStack, model: bytes) -> None:
    import gc

    runner = sync.create_runner(model)
    device = runner.device
    del runner
    gc.collect()
    deadline = time.monotonic() + 15
    while True:
        try:
            assert _pe_free_again(model) == device
            break
        except Exception:  # noqa: BLE001 - DeviceBusy until the dropped runner's engine has closed
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_cancelled_create_gives_its_pe_back(use_stack: RunningStack, model: bytes) -> None:
    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(create_runner(model), 0.01)

    asyncio.run(main())
    deadline = time.monotonic() + 30
    while True:
        try:
            _pe_free_again(model)
            break
        except Exception:  # noqa: BLE001 - busy until the abandoned engine is closed
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_negative_legacy_timeout_is_a_runtime_error_like_the_sdk(use_stack: RunningStack, model: bytes) -> None:
    submitter, queue = session.create_async(model)
    try:
        with pytest.raises(RuntimeError):
            queue.recv(-1)
    finally:
        submitter.close()
        queue.close()


def test_pes_beat_as_soon_as_each_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    from npusim.client import _open
    from npusim.services.discovery import Stack
    from npusim.services.errors import DeviceBusy

    events: list[str] = []

    def fake_open(stack, spec, blob, session_name, timeout_s, taken):  # type: ignore[no-untyped-def]
        if len(taken) == 2:
            raise DeviceBusy("third one busy")
        events.append(f"open{len(taken)}")
        return _open.Opened(f"npu{len(taken)}", "pe0", "ipc:///nowhere", f"h{len(taken)}")

    monkeypatch.setattr(_open, "_open_one", fake_open)
    monkeypatch.setattr(_open, "close_pe", lambda o, timeout_s=2.0: events.append(f"close-{o.handle}"))
    with pytest.raises(DeviceBusy):
        _open.open_pes(Stack(None, {"npu0": "ipc:///a"}, "env"), _open_specs("warboy(1)*3"), b"", "s", 1.0,
                       on_open=lambda o, up: events.append(("beat-" if up else "stop-") + o.handle))
    assert events == ["open0", "beat-h0", "open1", "beat-h1", "stop-h0", "close-h0", "stop-h1", "close-h1"]


def _open_specs(text: str) -> list:  # type: ignore[type-arg]
    from npusim.services.devices import parse_devices

    return parse_devices(text)
