"""``from client.sync import create_runner, create_queue``: the blocking twins of the asyncio API.

    with create_runner("model.onnx", worker_num=4) as runner:
        outputs = runner.run(x)

    with create_queue("model.onnx", worker_num=4) as (submitter, receiver):
        submitter.submit(x, context=0)
        context, outputs = receiver.recv(timeout=1.0)   # seconds; TimeoutError when none came
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np

from npusim.client._engine import Engine
from npusim.client._model import Model, pick_inputs
from npusim.client._results import InvalidTimeout, Results
from npusim.services.errors import SessionClosed, SessionTerminated

__all__ = ["Runner", "Submitter", "Receiver", "create_runner", "create_queue"]


class Runner:
    """A model opened on NPU PEs; ``run`` may be called from several threads at once."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.model = Model(engine.program, engine.check_open)
        weakref.finalize(self, engine.close, wait=False)  # dropped unclosed: the PEs are given back

    @property
    def device(self) -> str:
        return self._engine.device

    def run(self, inputs: Any) -> list[np.ndarray]:
        return self._engine.run(self.model.check(inputs)).outputs

    def run_with(self, outputs: list[str], inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        arrays, picked = pick_inputs(self.model, outputs, inputs)
        results = self._engine.run(arrays).outputs
        return [results[i] for i in picked]

    def close(self) -> bool:
        self._engine.close()
        return True

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Submitter:
    def __init__(self, engine: Engine, receiver: Receiver) -> None:
        self._engine = engine
        self._results = receiver._results
        self.model = Model(engine.program, engine.check_open)
        self._closed = False
        weakref.finalize(self, engine.close, drain=True, wait=False)

    def allocate(self) -> list[np.ndarray]:
        return self.model.allocate()

    def submit(self, inputs: Any, context: Any = None) -> None:
        """Queue one inference (blocks while the input queue is full). The inputs are not copied."""
        if self._closed:
            raise SessionClosed("the Submitter is already closed; create a new queue")
        self._results.submit(self.model.check(inputs), context)

    def close(self) -> bool:
        if not self._closed:
            self._closed = True
            self._engine.close(drain=True, wait=False)
        return True


class Receiver:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._results = Results(engine, name="Receiver")
        weakref.finalize(self, engine.close, wait=False)

    def recv(self, timeout: float | None = None) -> tuple[Any, list[np.ndarray]]:
        """The next finished ``(context, outputs)``; ``timeout`` in seconds (TimeoutError when it passes)."""
        if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
                                    or timeout < 0):
            raise InvalidTimeout(f"timeout must be a non-negative number of seconds, got {timeout!r}")
        result = self._results.take(timeout, f"{timeout} s")
        return result.context, result.outputs

    def __iter__(self) -> Iterator[tuple[Any, list[np.ndarray]]]:
        while True:
            try:
                yield self.recv()
            except (SessionTerminated, SessionClosed):
                return

    def close(self) -> bool:
        self._results.close()
        self._engine.close()
        return True


class _Opened:
    """``with create_queue(...) as (submitter, receiver)`` and plain assignment both work."""

    def __init__(self, submitter: Submitter, receiver: Receiver) -> None:
        self.pair = (submitter, receiver)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.pair)

    def __enter__(self) -> tuple[Submitter, Receiver]:
        return self.pair

    def __exit__(self, *exc: object) -> None:
        self.pair[0].close()
        self.pair[1].close()


def create_runner(model: Any, *, device: str | None = None, worker_num: int | None = None,
                  batch_size: int | None = None, compiler_config: dict[str, Any] | None = None) -> Runner:
    return Runner(Engine(model, device=device, worker_num=worker_num, batch_size=batch_size,
                         compiler_config=compiler_config, name="runner"))


def create_queue(model: Any, *, device: str | None = None, worker_num: int | None = None,
                 batch_size: int | None = None, input_queue_size: int | None = None,
                 output_queue_size: int | None = None, compiler_config: dict[str, Any] | None = None) -> _Opened:
    engine = Engine(model, device=device, worker_num=worker_num, batch_size=batch_size,
                    compiler_config=compiler_config, input_queue_size=input_queue_size,
                    output_queue_size=output_queue_size, name="queue")
    receiver = Receiver(engine)
    return _Opened(Submitter(engine, receiver), receiver)
