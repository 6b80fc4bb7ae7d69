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
import concurrent.futures as cf
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any, Generic, TypeVar

import numpy as np

from client._engine import Engine, Result
from client._model import Model, pick_inputs
from services.errors import QueueFull, SessionClosed, SessionTerminated

__all__ = ["Runner", "Submitter", "Receiver", "create_runner", "create_queue"]

T = TypeVar("T")


class Runner:
    """A model opened on NPU PEs; ``await run(x)`` from any number of tasks at once."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.model = Model(engine.program, engine.check_open)

    @property
    def device(self) -> str:
        return self._engine.device

    async def run(self, inputs: Any) -> list[np.ndarray]:
        """One inference. The inputs are not copied: do not change them until it returns."""
        arrays = self.model.check(inputs)
        return (await _submit(self._engine, arrays, None, False)).outputs

    async def run_with(self, outputs: list[str], inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        arrays, picked = pick_inputs(self.model, outputs, inputs)
        results = (await _submit(self._engine, arrays, None, False)).outputs
        return [results[i] for i in picked]

    async def close(self) -> bool:
        await asyncio.to_thread(self._engine.close)
        return True

    async def __aenter__(self) -> Runner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _submit(engine: Engine, arrays: list[np.ndarray], context: Any, counts_output: bool) -> Result:
    """Queue a job without blocking the loop (a full queue is waited for in a thread); its result."""
    try:
        fut = engine.submit(arrays, context, block=False, counts_output=counts_output)
    except QueueFull:
        fut = await asyncio.to_thread(engine.submit, arrays, context, counts_output=counts_output)
    return await asyncio.wrap_future(fut)


class Submitter:
    """The submitting half of :func:`create_queue`."""

    def __init__(self, engine: Engine, receiver: Receiver) -> None:
        self._engine = engine
        self._receiver = receiver
        self.model = Model(engine.program, engine.check_open)
        self._closed = False

    def allocate(self) -> list[np.ndarray]:
        """Fresh zeroed input tensors."""
        return self.model.allocate()

    async def submit(self, inputs: Any, context: Any = None) -> None:
        """Queue one inference; returns once it is queued (waits while the input queue is full).
        The inputs are not copied: do not change them until their result is received."""
        if self._closed:
            raise SessionClosed("the Submitter is already closed; create a new queue")
        arrays = self.model.check(inputs)
        try:
            fut = self._engine.submit(arrays, context, block=False, counts_output=True)
        except QueueFull:
            fut = await asyncio.to_thread(self._engine.submit, arrays, context, counts_output=True)
        self._receiver._add(fut)

    async def close(self) -> bool:
        """No more submissions; what was submitted still runs, then the receiver ends."""
        if not self._closed:
            self._closed = True
            self._engine.close(drain=True, wait=False)
        return True


class Receiver:
    """The receiving half of :func:`create_queue`: ``(context, outputs)`` in completion order."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._done: asyncio.Queue[cf.Future[Result]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outstanding = 0  # submitted, not yet received
        self._closed = False

    def _add(self, fut: cf.Future[Result]) -> None:
        self._outstanding += 1
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._done = loop, asyncio.Queue()
        queue = self._done
        assert queue is not None
        fut.add_done_callback(lambda f: loop.call_soon_threadsafe(queue.put_nowait, f))

    async def recv(self) -> tuple[Any, list[np.ndarray]]:
        """The next finished request; a failed one raises its error (its context as ``err.context``).
        SessionTerminated once the submitter is closed and everything was received."""
        if self._closed:
            raise SessionClosed("the Receiver is closed; create a new queue")
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._done = loop, asyncio.Queue()
        queue = self._done
        assert queue is not None
        while True:
            if not queue.empty():
                fut = queue.get_nowait()
                break
            if self._outstanding == 0 and self._engine.closed:
                raise SessionTerminated("the Submitter was closed and every submitted request has been received")
            try:
                fut = await asyncio.wait_for(queue.get(), 0.1)
                break
            except asyncio.TimeoutError:
                continue
        self._outstanding -= 1
        self._engine.delivered()
        err = fut.exception()
        if err is not None:
            raise err
        result = fut.result()
        return result.context, result.outputs

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
        self._closed = True
        await asyncio.to_thread(self._engine.close)
        return True


class _Opening(Generic[T]):
    """``await create_runner(...)`` and ``async with create_runner(...) as runner`` both work."""

    def __init__(self, make: Callable[[], Awaitable[T]], close: Callable[[T], Awaitable[Any]]) -> None:
        self._make = make
        self._close = close
        self._value: T | None = None

    def __await__(self) -> Generator[Any, None, T]:
        return self._make().__await__()

    async def __aenter__(self) -> T:
        self._value = await self._make()
        return self._value

    async def __aexit__(self, *exc: object) -> None:
        if self._value is not None:
            await self._close(self._value)


def create_runner(model: Any, *, device: str | None = None, worker_num: int | None = None,
                  batch_size: int | None = None, compiler_config: dict[str, Any] | None = None) -> _Opening[Runner]:
    """Compile ``model`` if needed and open it on ``device``; a :class:`Runner`."""

    async def make() -> Runner:
        engine = await asyncio.to_thread(Engine, model, device=device, worker_num=worker_num, batch_size=batch_size,
                                         compiler_config=compiler_config, name="runner")
        return Runner(engine)

    return _Opening(make, lambda r: r.close())


def create_queue(model: Any, *, device: str | None = None, worker_num: int | None = None,
                 batch_size: int | None = None, input_queue_size: int | None = None,
                 output_queue_size: int | None = None,
                 compiler_config: dict[str, Any] | None = None) -> _Opening[tuple[Submitter, Receiver]]:
    """Like :func:`create_runner`, but ``(submitter, receiver)`` for many requests in flight."""

    async def make() -> tuple[Submitter, Receiver]:
        engine = await asyncio.to_thread(Engine, model, device=device, worker_num=worker_num, batch_size=batch_size,
                                         compiler_config=compiler_config, input_queue_size=input_queue_size,
                                         output_queue_size=output_queue_size, name="queue")
        receiver = Receiver(engine)
        return Submitter(engine, receiver), receiver

    async def close(pair: tuple[Submitter, Receiver]) -> None:
        await pair[0].close()
        await pair[1].close()

    return _Opening(make, close)
