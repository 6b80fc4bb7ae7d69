"""A RUN ends in exactly one RESULT or one error, and a failed job gives its queue slot back.

The daemon runs here in-process on a thread, spoken to over an ipc socket; its executor is made
to fail on purpose. Before the fix a job that failed during inline execution kept its slot: after
``queue_limit`` such failures every RUN got QueueFull and the session could never be released.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zmq

from npusim.npu_daemon.server import DaemonOptions, DaemonService
from npusim.services.errors import DeviceError
from npusim.services.program import NpuStage, NpuStep, Program, TensorSpec
from npusim.services.protocol import Kind
from npusim.services.rpc import Peer
from npusim.services.zoo import identity
from tests.helpers import serving, short_dir

pytestmark = pytest.mark.timeout(60)

SHAPE = (1, 64)
LIMIT = 4


def _program() -> np.ndarray:
    spec = TensorSpec("input", "uint8", SHAPE, "NC")
    out = TensorSpec("output", "uint8", SHAPE, "NC")
    stage = NpuStage(identity(list(SHAPE)).SerializeToString(), [spec], [out], [spec], [out],
                     estimate={"npu_ns": 0.0, "job_overhead_ns": 0.0})
    p = Program(target="warboy", batch_size=1, inputs=[spec], outputs=[out], steps=[NpuStep(0, ["input"], ["output"])],
                stages=[stage], meta={"model": "tiny"})
    return np.frombuffer(p.to_bytes(), np.uint8)


@pytest.fixture(params=["timing_only", "functional"])
def daemon(request: pytest.FixtureRequest) -> Iterator[tuple[DaemonService, Peer, str]]:
    with short_dir() as d:
        endpoint = f"ipc://{d}/npu9.sock"
        svc = DaemonService("npu9", endpoint, options=DaemonOptions(timing_only=request.param == "timing_only",
                                                                    queue_limit=LIMIT))
        with serving(svc):
            ctx = zmq.Context()
            peer = Peer(endpoint, name="npu9", ctx=ctx, timeout_s=10)
            try:
                handle = peer.request(Kind.OPEN, {"pe": "pe0", "session": "s", "client_pid": None},
                                      [("program", _program())]).body["handle"]
                yield svc, peer, str(handle)
            finally:
                peer.close()
                ctx.term()


def _run(peer: Peer, handle: str) -> Any:
    return peer.request(Kind.RUN, {"handle": handle, "stage": 0}, [("input", np.zeros(SHAPE, np.uint8))])


@pytest.mark.parametrize("where", ["timed", "submit"])
def test_a_failed_execution_answers_with_an_error_and_frees_its_slot(
        daemon: tuple[DaemonService, Peer, str], monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    svc, peer, handle = daemon
    ex = svc.sessions[handle].executor
    assert ex is not None

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("onnxruntime fell over")

    monkeypatch.setattr(ex, where, boom)
    monkeypatch.setattr(type(ex), "cheap", property(lambda self: where == "timed"))
    for _ in range(3 * LIMIT):  # more failures than the queue has slots
        with pytest.raises(DeviceError, match="onnxruntime fell over"):
            _run(peer, handle)
    assert svc.sessions[handle].outstanding == 0
    monkeypatch.undo()
    assert _run(peer, handle).kind == Kind.RESULT  # the session still works, and still can be released
    assert peer.request(Kind.CLOSE, {"handle": handle}).kind == Kind.CLOSED
    assert handle not in svc.sessions
