"""A session's lifetime on the daemon: a program whose load outlasts the heartbeat limit is
opened, not released as silent, and runs; RUNs still queued when the session closes are
answered with SessionClosed (the job already running may finish). The daemon runs in-process
on a thread, spoken to over an ipc socket in a short private temp dir; its executor is slowed
down on purpose.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import npusim.npu_daemon.server as daemon_server
from npusim.compiler_svc.pipeline import CompileOptions, compile_model
from npusim.npu_daemon.execute import Executor
from npusim.services.errors import SessionClosed, from_wire
from npusim.services.program import Program
from npusim.services.protocol import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS, Kind, Message, decode
from npusim.services.rpc import Peer
from npusim.services.zoo import small_cnn
from tests.helpers import serving

RELEASE_AFTER_S = HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS  # a daemon releases a silent session after this


# -- helpers -----------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _program(target: str) -> bytes:
    program, _ = compile_model(small_cnn().SerializeToString(), CompileOptions(target_npu=target))
    return program.to_bytes()


def _open(peer: Peer, target: str = "warboy", pe: str = "pe0", name: str = "t") -> tuple[str, Program]:
    blob = _program(target)
    reply = peer.request(Kind.OPEN, {"pe": pe, "session": name}, [("program", np.frombuffer(blob, np.uint8))])
    assert reply.kind == Kind.OPENED
    return reply.body["handle"], Program.from_bytes(blob)


def _device_input(program: Program) -> list[tuple[str, np.ndarray]]:
    return [(s.name, np.zeros(s.shape, np.dtype(s.dtype))) for s in program.stages[0].device_inputs]


# -- a program load longer than the heartbeat limit ------------------------------------------
SLOW_LOAD_S = RELEASE_AFTER_S + 1.0


class _SlowLoadExecutor(Executor):
    """Stands in for a big model: onnxruntime session creation takes longer than 3 s."""

    def __init__(self, *a: Any, **k: Any) -> None:
        time.sleep(SLOW_LOAD_S)
        super().__init__(*a, **k)


@pytest.mark.timeout(30)
def test_slow_program_load_is_opened_not_released(ipc_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon_server, "Executor", _SlowLoadExecutor)
    svc = daemon_server.DaemonService("npu0", f"ipc://{ipc_dir}/npu0.sock")
    with serving(svc), Peer(svc.endpoint, timeout_s=SLOW_LOAD_S + 10) as peer:
        t0 = time.monotonic()
        handle, program = _open(peer, name="slow")
        assert time.monotonic() - t0 >= SLOW_LOAD_S - 0.1  # the load really outlasted the heartbeat limit
        stats = peer.request(Kind.STATS).body["stats"]
        assert handle in stats["sessions"]
        assert stats["released"] == []
        result = peer.request(Kind.RUN, {"handle": handle}, _device_input(program))
        assert result.kind == Kind.RESULT
        assert len(result.tensors) == len(program.stages[0].device_outputs)
        peer.request(Kind.CLOSE, {"handle": handle})


# -- jobs queued when the session closes ------------------------------------------------------
class _SlowComputeExecutor(Executor):
    """Each job takes 0.3 s, so later RUNs are still queued when the CLOSE arrives."""

    def timed(self, stage: int, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
        time.sleep(0.3)
        return super().timed(stage, inputs)


@pytest.mark.timeout(20)
def test_runs_queued_at_close_get_session_closed(ipc_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon_server, "Executor", _SlowComputeExecutor)
    svc = daemon_server.DaemonService("npu0", f"ipc://{ipc_dir}/npu0.sock")
    with serving(svc), Peer(svc.endpoint, timeout_s=10.0) as peer:
        handle, program = _open(peer)
        runs = [peer.send(Kind.RUN, {"handle": handle}, _device_input(program)) for _ in range(4)]
        close = peer.send(Kind.CLOSE, {"handle": handle})
        replies: dict[int, Message] = {}
        deadline = time.monotonic() + 10.0
        while len(replies) < 5:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"only {sorted(replies)} of {runs + [close]} were answered"
            if peer.sock.poll(int(remaining * 1000)):
                msg = decode(peer.sock.recv_multipart(copy=False))
                replies[msg.id] = msg
        assert replies[close].kind == Kind.CLOSED
        for rid in runs:
            msg = replies[rid]
            if rid == runs[0] and msg.kind == Kind.RESULT:
                continue  # the job already running may finish
            assert msg.kind == Kind.ERROR, msg
            err = from_wire(msg.body)
            assert isinstance(err, SessionClosed), (type(err).__name__, err.message)
            assert err.message
