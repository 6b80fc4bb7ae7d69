"""The SDK's current API in asyncio form: ``create_runner`` and ``create_queue``.

    async with create_runner("model.onnx", worker_num=4) as runner:
        outputs = await runner.run(x)

    async with create_queue("model.onnx", worker_num=4) as (submitter, receiver):
        await submitter.submit(x, context=i)
        context, outputs = await receiver.recv()

Everything blocking (compiling, opening, a full input queue) runs in a thread, so the event
loop never stalls; results arrive as futures of the session's dispatcher, wrapped for the
loop that awaits them — so one runner can serve several ``asyncio.run`` calls in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from typing import Any, TypeVar

import numpy as np

from npusim.client._engine import Engine
from npusim.client._model import Model, pick_inputs
from npusim.client._results import Results
from npusim.services.errors import QueueFull, SessionClosed, SessionTerminated

__all__ = ["Runner", "Submitter", "Receiver", "create_runner", "create_queue"]

T = TypeVar("T")


class Runner:
    """A model opened on NPU PEs; ``await run(x)`` from any number of tasks at once."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.model = Model(engine.program, engine.check_open)
        weakref.finalize(self, engine.close, wait=False)  # dropped unclosed: the PEs are given back

    @property
    def device(self) -> str:
        return self._engine.device

    async def run(self, inputs: Any) -> list[np.ndarray]:
        """One inference. The inputs are not copied: do not change them until it returns."""
        arrays = self.model.check(inputs)
        fut = await _when_room(self._engine, lambda: self._engine.submit(arrays, block=False))
        return (await asyncio.wrap_future(fut)).outputs

    async def run_with(self, outputs: list[str], inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        arrays, picked = pick_inputs(self.model, outputs, inputs)
        fut = await _when_room(self._engine, lambda: self._engine.submit(arrays, block=False))
        results = (await asyncio.wrap_future(fut)).outputs
        return [results[i] for i in picked]

    async def close(self) -> bool:
        await asyncio.to_thread(self._engine.close)
        return True

    async def __aenter__(self) -> Runner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _when_room(engine: Engine, submit: Callable[[], T]) -> T:
    """``submit()`` (non-blocking) on the loop; while the input queue is full, wait for room in a
    thread. Nothing is submitted from the thread, so a task cancelled while it waits loses nothing."""
    while True:
        try:
            return submit()
        except QueueFull:
            await asyncio.to_thread(engine.wait_room, 1.0)


class Submitter:
    """The submitting half of :func:`create_queue`."""

    def __init__(self, engine: Engine, receiver: Receiver) -> None:
        self._engine = engine
        self._results = receiver._results
        self.model = Model(engine.program, engine.check_open)
        self._closed = False
        weakref.finalize(self, engine.close, drain=True, wait=False)

    def allocate(self) -> list[np.ndarray]:
        """Fresh zeroed input tensors."""
        return self.model.allocate()

    async def submit(self, inputs: Any, context: Any = None) -> None:
        """Queue one inference; returns once it is queued (waits while the input queue is full).
        The inputs are not copied: do not change them until their result is received."""
        if self._closed:
            raise SessionClosed("the Submitter is already closed; create a new queue")
        arrays = self.model.check(inputs)
        await _when_room(self._engine, lambda: self._results.submit(arrays, context, block=False))

    async def close(self) -> bool:
        """No more submissions; what was submitted still runs, then the receiver ends."""
        if not self._closed:
            self._closed = True
            self._engine.close(drain=True, wait=False)
        return True


class Receiver:
    """The receiving half of :func:`create_queue`: ``(context, outputs)`` in completion order.

    Finished results wait in a thread-safe buffer, not in any event loop, so a receiver may be
    used from one ``asyncio.run`` after another; only the loop waiting right now is woken."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._results = Results(engine, name="Receiver")
        weakref.finalize(self, engine.close, wait=False)

    async def recv(self) -> tuple[Any, list[np.ndarray]]:
        """The next finished request; a failed one raises its error (its context as ``err.context``).
        SessionTerminated once the submitter is closed and everything was received."""
        loop = asyncio.get_running_loop()
        while True:
            result = self._results.take_nowait()
            if result is not None:
                return result.context, result.outputs
            arrived = asyncio.Event()

            def wake() -> None:
                with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits there
                    loop.call_soon_threadsafe(arrived.set)

            self._results.notify = wake
            if self._results.pending():  # arrived between the check and the hook
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(arrived.wait(), 0.5)  # also notices a close without a result

    def __aiter__(self) -> AsyncIterator[tuple[Any, list[np.ndarray]]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[tuple[Any, list[np.ndarray]]]:
        while True:
            try:
                yield await self.recv()
            except (SessionTerminated, SessionClosed):
                return

    async def close(self) -> bool:
        """Stop receiving; queued requests are dropped."""
        self._results.close()
        await asyncio.to_thread(self._engine.close)
        return True


class _Opening(Coroutine[Any, Any, T]):
    """``await create_runner(...)``, ``asyncio.run(create_runner(...))`` and ``async with
    create_runner(...) as runner`` all work, as with the SDK's ``async def`` that is also used as a
    context manager. The creating coroutine is made only when one of them starts it."""

    def __init__(self, make: Callable[[], Coroutine[Any, Any, T]], close: Callable[[T], Awaitable[Any]]) -> None:
        self._make = make
        self._close = close
        self._coro: Coroutine[Any, Any, T] | None = None
        self._value: T | None = None

    def _started(self) -> Coroutine[Any, Any, T]:
        if self._coro is None:
            self._coro = self._make()
        return self._coro

    def send(self, value: Any) -> Any:
        return self._started().send(value)

    def throw(self, *args: Any) -> Any:
        return self._started().throw(*args)

    def close(self) -> None:
        if self._coro is not None:
            self._coro.close()

    def __await__(self) -> Generator[Any, None, T]:
        return self._started().__await__()

    async def __aenter__(self) -> T:
        self._value = await self._make()
        return self._value

    async def __aexit__(self, *exc: object) -> None:
        if self._value is not None:
            await self._close(self._value)


async def _engine_in_thread(**kwargs: Any) -> Engine:
    """Create an Engine in a thread; if the awaiting task is cancelled, the engine that the thread
    still finishes creating is closed, so its PEs are not held by nobody."""
    fut = asyncio.get_running_loop().run_in_executor(None, lambda: Engine(**kwargs))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        def close(f: asyncio.Future[Engine]) -> None:
            if not f.cancelled() and f.exception() is None:
                f.result().close(wait=False)

        fut.add_done_callback(close)
        raise


def create_runner(model: Any, *, device: str | None = None, worker_num: int | None = None,
                  batch_size: int | None = None, compiler_config: dict[str, Any] | None = None) -> _Opening[Runner]:
    """Compile ``model`` if needed and open it on ``device``; a :class:`Runner`."""

    async def make() -> Runner:
        engine = await _engine_in_thread(model=model, device=device, worker_num=worker_num, batch_size=batch_size,
                                         compiler_config=compiler_config, name="runner")
        return Runner(engine)

    return _Opening(make, lambda r: r.close())


def create_queue(model: Any, *, device: str | None = None, worker_num: int | None = None,
                 batch_size: int | None = None, input_queue_size: int | None = None,
                 output_queue_size: int | None = None,
                 compiler_config: dict[str, Any] | None = None) -> _Opening[tuple[Submitter, Receiver]]:
    """Like :func:`create_runner`, but ``(submitter, receiver)`` for many requests in flight."""

    async def make() -> tuple[Submitter, Receiver]:
        engine = await _engine_in_thread(model=model, device=device, worker_num=worker_num, batch_size=batch_size,
                                         compiler_config=compiler_config, input_queue_size=input_queue_size,
                                         output_queue_size=output_queue_size, name="queue")
        receiver = Receiver(engine)
        return Submitter(engine, receiver), receiver

    async def close(pair: tuple[Submitter, Receiver]) -> None:
        await pair[0].close()
        await pair[1].close()

    return _Opening(make, close)
