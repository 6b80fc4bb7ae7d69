"""The engine under every client API: who drives the worker pool, and that every job ends once.

A caller that waits for its own job (``Engine.run``) drives the pool itself when nobody else
does; jobs submitted without waiting are driven by the dispatcher thread; the two hand the pump
to each other without losing a job, also when a session closes mid-way.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from npusim.client._engine import Engine
from npusim.services.errors import SessionClosed
from npusim.services.zoo import small_cnn
from tests.helpers import RunningStack, wait_until

SHAPE = (1, 3, 64, 64)


@pytest.fixture(scope="module")
def model() -> bytes:
    return small_cnn().SerializeToString()


@pytest.fixture
def engine(use_stack: RunningStack, model: bytes) -> Iterator[Engine]:
    e = Engine(model, worker_num=2, name="engine-test")
    try:
        yield e
    finally:
        e.close()


def _x(seed: int = 0) -> list[np.ndarray]:
    return [np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)]


def _pumpers(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the name of the thread behind every turn of the pool."""
    seen: list[str] = []
    turn = Engine._pump_once

    def spy(self: Engine, timeout_ms: int = 100) -> None:
        seen.append(threading.current_thread().name)
        turn(self, timeout_ms)

    monkeypatch.setattr(Engine, "_pump_once", spy)
    return seen


def test_a_lone_caller_drives_the_pool_itself(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    engine.run(_x())  # workers warm
    seen = _pumpers(engine, monkeypatch)
    result = engine.run(_x(1))
    assert result.outputs[0].shape[0] == 1
    assert seen and set(seen) == {threading.current_thread().name}  # no hand-off to the dispatcher
    assert engine._pumper is None


def test_jobs_nobody_waits_for_are_driven_by_the_dispatcher(engine: Engine,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _pumpers(engine, monkeypatch)
    futures = [engine.submit(_x(i)) for i in range(6)]
    results = [f.result(timeout=60) for f in futures]
    assert len(results) == 6
    assert "npusim-engine-test" in set(seen)


def test_every_job_ends_once_when_callers_and_submitters_mix(engine: Engine) -> None:
    futures = [engine.submit(_x(i)) for i in range(10)]
    got: list[object] = []

    def caller(i: int) -> None:
        got.append(engine.run(_x(100 + i)))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 4
    assert all(f.result(timeout=60).outputs for f in futures)
    assert engine._pumper is None or engine._pumper == engine._thread.ident  # type: ignore[union-attr]
    assert wait_until(lambda: not engine._running and not engine._queue, 10)


def test_a_caller_that_stops_driving_hands_the_pump_over(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    engine.run(_x())
    turn = Engine._pump_once

    def interrupted(self: Engine, timeout_ms: int = 100) -> None:
        monkeypatch.setattr(Engine, "_pump_once", turn)  # only this once
        raise KeyboardInterrupt

    monkeypatch.setattr(Engine, "_pump_once", interrupted)
    with pytest.raises(KeyboardInterrupt):
        engine.run(_x(1))
    assert engine._pumper != threading.get_ident()
    # the abandoned job still ends (the dispatcher drove it), and the next caller is served
    assert wait_until(lambda: not engine._running and not engine._queue, 30)
    assert engine.run(_x(2)).outputs


def test_closing_while_a_caller_drives_fails_what_is_queued_and_finishes_what_runs(engine: Engine) -> None:
    engine.run(_x())
    started = threading.Event()
    outcome: list[object] = []

    def caller() -> None:
        started.set()
        try:
            outcome.append(engine.run(_x(1)))
        except SessionClosed as e:
            outcome.append(e)

    queued = [engine.submit(_x(10 + i)) for i in range(8)]
    t = threading.Thread(target=caller)
    t.start()
    started.wait(10)
    engine.close(wait=True)
    t.join(30)
    assert not t.is_alive() and len(outcome) == 1
    ends = [f.exception(timeout=30) for f in queued]
    assert all(e is None or isinstance(e, SessionClosed) for e in ends)  # each ended exactly once
    assert engine.wait_closed(0)
    with pytest.raises(SessionClosed):
        engine.run(_x())
