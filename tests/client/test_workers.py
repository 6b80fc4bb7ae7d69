"""A session's worker processes: set-up, one job at a time each, and replacement of workers that
die or hang, whose job then ends in WorkerCrashed.

The program here is a single host operator (Quantize), so the pool runs without any daemon: what
is tested is the pool and its processes, not the NPU path.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest

from npusim.client._shm import SHM_DIR
from npusim.client._workers import Finished, Target, WorkerPool
from npusim.services.errors import WorkerCrashed, from_wire
from npusim.services.program import OpStep, Program, TensorSpec
from npusim.services.protocol import Kind
from tests.helpers import alive

SHAPE = (2, 8)
SCALE, ZERO = 0.05, 3


def _program() -> Program:
    x = TensorSpec("x", "float32", SHAPE, "NC")
    y = TensorSpec("y", "int8", SHAPE, "NC")
    return Program(target="warboy-2pe", batch_size=1, inputs=[x], outputs=[y],
                   steps=[OpStep("Quantize", {"scale": SCALE, "zero_point": ZERO}, "x", "y")], stages=[],
                   meta={"model": "quantize-only"})


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    program = _program()
    p = WorkerPool(2)
    try:
        # no NPU step runs, so no daemon is reached: the endpoint only has to parse
        p.setup(program, program.to_bytes(), [Target("ipc:///nonexistent/npu0.sock", "npu0pe0-1", "h", 1 << 30)],
                timeout_s=1.0)
        yield p
    finally:
        p.close()


def _wait(pool: WorkerPool, *rids: int, timeout_s: float = 30.0) -> dict[int, Finished]:
    """The ends of jobs ``rids`` (several may come back from one poll)."""
    done: dict[int, Finished] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(done) < len(rids):
        done.update((f.rid, f) for f in pool.poll(100) if f.rid in rids)
    assert len(done) == len(rids), f"jobs {sorted(set(rids) - set(done))} did not end within {timeout_s} s"
    return done


def _start(pool: WorkerPool, rid: int, x: np.ndarray, timeout_s: float = 30.0) -> int:
    w = pool.idle()
    assert w is not None
    assert pool.start(w, rid, [("x", x)], traceparent=None, collect=False, timeout_s=timeout_s)
    return w.index


def test_each_worker_runs_the_programs_steps_on_its_job(pool: WorkerPool) -> None:
    x = np.linspace(-3, 3, int(np.prod(SHAPE)), dtype=np.float32).reshape(SHAPE)
    _start(pool, 1, x)
    _start(pool, 2, x * 2)
    assert pool.busy == 2 and pool.idle() is None  # one job at a time per worker
    done = _wait(pool, 1, 2)
    want = np.clip(np.rint(x / np.float32(SCALE)) + ZERO, -128, 127).astype(np.int8)
    assert done[1].msg.kind == Kind.DONE
    np.testing.assert_array_equal(done[1].outputs[0][1], want)
    assert done[1].msg.body["timing"]["worker_received_ns"] <= done[1].msg.body["timing"]["worker_sent_ns"]
    assert pool.busy == 0


def test_a_worker_that_dies_with_a_job_fails_it_and_is_replaced(pool: WorkerPool) -> None:
    x = np.ones(SHAPE, np.float32)
    pids = pool.pids()
    os.kill(pids[0], signal.SIGSTOP)  # hold it mid-job, then kill it
    index = _start(pool, 7, x)
    assert index == 0
    os.kill(pids[0], signal.SIGKILL)
    f = _wait(pool, 7)[7]
    assert f.msg.kind == Kind.ERROR
    err = from_wire(f.msg.body)
    assert isinstance(err, WorkerCrashed) and "died" in str(err)
    assert pool.pids()[0] != pids[0] and pool.pids()[1] == pids[1]
    # the replacement is set up and serves
    deadline = time.monotonic() + 30
    while not all(w.ready for w in pool.workers) and time.monotonic() < deadline:
        pool.poll(100)
    _start(pool, 8, x)
    _start(pool, 9, x)
    assert {f.msg.kind for f in _wait(pool, 8, 9).values()} == {Kind.DONE}


def test_a_worker_that_overruns_its_jobs_deadline_is_replaced(pool: WorkerPool) -> None:
    pid = pool.pids()[0]
    os.kill(pid, signal.SIGSTOP)  # hung: alive but never answers
    _start(pool, 3, np.ones(SHAPE, np.float32), timeout_s=0.3)
    f = _wait(pool, 3)[3]
    assert isinstance(from_wire(f.msg.body), WorkerCrashed) and "did not answer" in f.msg.body["message"]
    assert not alive(pid) and pool.pids()[0] != pid


def test_closing_the_pool_leaves_no_process_and_no_arena(pool: WorkerPool) -> None:
    pids = pool.pids()
    pool.close()
    assert not any(alive(p) for p in pids)
    assert not list(SHM_DIR.glob(f"npusim-{os.getpid()}-w*"))
