"""The SDK's legacy session API: ``session.create`` (blocking) and ``session.create_async``.

Both sit on one :class:`~client._engine.Engine`. ``Session.run`` submits and waits, so
several threads may share a session and keep several workers busy. ``create_async``
returns a submitter and a completion queue: ``submit`` returns at once (blocking only
while the input queue is full) and ``recv`` hands back ``(context, outputs)`` in
completion order.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from npusim.client._engine import Engine
from npusim.client._model import Described, Model, pick_inputs
from npusim.client._open import model_bytes
from npusim.client._results import InvalidTimeout, Results
from npusim.client._tensor import TensorArray, tensor_array
from npusim.client._workers import WorkerPool
from npusim.services.errors import SessionClosed, SessionTerminated
from npusim.services.program import Program

__all__ = ["Session", "AsyncSession", "CompletionQueue", "create", "create_async", "model_bytes"]


class Session(Described):
    """A model opened on an emulated NPU. Use :func:`create`; a context manager."""

    def __init__(self, model: Any, *, device: str | None = None, worker_num: int | None = None,
                 batch_size: int | None = None, compiler_config: dict[str, Any] | None = None,
                 timeout_s: float | None = None, engine: Engine | None = None) -> None:
        self._engine = engine or Engine(model, device=device, worker_num=worker_num, batch_size=batch_size,
                                        compiler_config=compiler_config, timeout_s=timeout_s)
        self.model = Model(self._engine.program, self._engine.check_open)
        self.last_timing: dict[str, Any] = {}
        # collected unclosed: close without waiting (the collector may run in any thread)
        self._finalizer = weakref.finalize(self, self._engine.close, wait=False)

    @property
    def program(self) -> Program:
        return self._engine.program

    @property
    def compile_info(self) -> dict[str, Any]:
        return self._engine.compile_info

    @property
    def device(self) -> str:
        return self._engine.device

    @property
    def timeout_s(self) -> float:
        return self._engine.timeout_s

    @property
    def _pool(self) -> WorkerPool | None:
        return None if self._engine.closed else self._engine.pool

    def run(self, inputs: Any) -> TensorArray:
        """Run one inference; returns one array per model output."""
        arrays = self.model.check(inputs)
        result = self._engine.run(arrays)
        self.last_timing = result.timing
        return tensor_array(result.outputs)

    def run_with(self, outputs: list[str], inputs: dict[str, np.ndarray]) -> TensorArray:
        """Run with inputs by name and return only the named outputs, in that order."""
        arrays, picked = pick_inputs(self.model, outputs, inputs)
        results = self.run(arrays)
        return TensorArray(results[i] for i in picked)

    def allocate_inputs(self) -> list[np.ndarray]:
        return self.model.allocate()

    create_inputs = allocate_inputs

    def close(self) -> bool:
        self._finalizer.detach()
        self._engine.close()
        return True

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSession(Described):
    """The submitting half of :func:`create_async`."""

    def __init__(self, engine: Engine, queue: CompletionQueue) -> None:
        self._engine = engine
        self._results = queue._results
        self.model = Model(engine.program, engine.check_open)
        self._closed = False
        weakref.finalize(self, engine.close, drain=True, wait=False)  # dropped unclosed: like close()

    @property
    def device(self) -> str:
        return self._engine.device

    def submit(self, values: Any, context: Any = None) -> None:
        """Queue one inference and return at once; blocks only while the input queue is full.

        The inputs are copied, so the caller may reuse its buffers at once."""
        if self._closed:
            raise SessionClosed("the AsyncSession is already closed; create a new one")
        self._results.submit([np.array(a, copy=True) for a in self.model.check(values)], context)

    def close(self) -> bool:
        """No more submissions; what was submitted still runs, then the queue ends."""
        if not self._closed:
            self._closed = True
            self._engine.close(drain=True, wait=False)
        return True

    def __enter__(self) -> AsyncSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CompletionQueue:
    """The receiving half of :func:`create_async`: ``(context, outputs)`` in completion order."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._results = Results(engine, name="CompletionQueue")
        weakref.finalize(self, engine.close, drain=False, wait=False)

    def recv(self, timeout: int | None = None, *, timeout_ms: int | None = None) -> tuple[Any, TensorArray]:
        """The next finished ``(context, outputs)``. ``timeout`` is in milliseconds like the SDK's
        (``timeout_ms`` says so explicitly); None waits as long as results can still come.

        A failed request raises its error here, with its context as ``err.context``."""
        if timeout is not None and timeout_ms is not None:
            raise TypeError("pass timeout or timeout_ms, not both")
        ms = timeout if timeout is not None else timeout_ms
        if ms is not None and (not isinstance(ms, (int, float)) or isinstance(ms, bool) or ms < 0):
            raise InvalidTimeout(f"timeout must be a non-negative number of milliseconds, got {ms!r}")
        result = self._results.take(None if ms is None else ms / 1000.0, f"{ms} ms")
        return result.context, tensor_array(result.outputs)

    def __iter__(self) -> CompletionQueue:
        return self

    def __next__(self) -> tuple[Any, TensorArray]:
        try:
            return self.recv()
        except (SessionTerminated, SessionClosed):
            raise StopIteration from None

    def close(self) -> bool:
        """Stop receiving; queued requests are dropped (they fail with SessionClosed). Returns once
        the running ones ended and the PEs are free again."""
        self._results.close()
        self._engine.close(drain=False)
        return True

    def __enter__(self) -> CompletionQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create(model: Any, *, device: str | None = None, worker_num: int | None = None, batch_size: int | None = None,
           compiler_config: dict[str, Any] | None = None) -> Session:
    """Compile ``model`` if needed, open it on a device and start its workers.

    Args:
        model: path, bytes, ``onnx.ModelProto``, quantised graph, or ``.enf`` program.
        device: SDK device string (``warboy(2)*1``, ``warboy(1)*2``, ``npu0pe0``, ``npu:0:0-1``, comma
            lists); default ``NPUSIM_DEVICES``, else the fused PE of the first free device.
        worker_num: worker processes running the CPU operators (default 1).
        batch_size: compile for this batch.
        compiler_config: compiler options.
    """
    return Session(model, device=device, worker_num=worker_num, batch_size=batch_size,
                   compiler_config=compiler_config)


def create_async(model: Any, *, device: str | None = None, worker_num: int | None = None,
                 batch_size: int | None = None, input_queue_size: int | None = None,
                 output_queue_size: int | None = None,
                 compiler_config: dict[str, Any] | None = None) -> tuple[AsyncSession, CompletionQueue]:
    """Like :func:`create`, but returns ``(submitter, queue)`` for requests in flight at once."""
    engine = Engine(model, device=device, worker_num=worker_num, batch_size=batch_size,
                    compiler_config=compiler_config, input_queue_size=input_queue_size,
                    output_queue_size=output_queue_size, name="async-session")
    queue = CompletionQueue(engine)
    return AsyncSession(engine, queue), queue
