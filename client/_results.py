"""The receiving end of a blocking queue API: finished jobs in completion order.

Shared by the legacy ``CompletionQueue`` (timeouts in milliseconds) and ``npusim.client.sync``'s
``Receiver`` (seconds). A job is *expected* before it is submitted, so a receiver can tell
"nothing yet" (wait) from "everything was received and the submitter closed" (the end).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from npusim.client._engine import Engine, Result
from npusim.services.errors import QueueWaitTimeout, SessionClosed, SessionTerminated

__all__ = ["Results", "InvalidTimeout"]


class InvalidTimeout(ValueError, RuntimeError):
    """A negative or non-numeric timeout (the SDK raises RuntimeError; a ValueError here too)."""


class Results:
    def __init__(self, engine: Engine, *, name: str) -> None:
        self._engine = engine
        self._name = name  # what the user calls this end, for messages
        self._items: collections.deque[cf.Future[Result]] = collections.deque()
        self._cv = threading.Condition()
        self._outstanding = 0  # submitted, not yet taken
        self.closed = False
        self.notify: Callable[[], None] | None = None  # also called when a result arrives (an asyncio waiter)

    def submit(self, arrays: list[np.ndarray], context: Any, *, block: bool = True) -> None:
        """Submit a job whose result comes back through :meth:`take` (QueueFull if ``block`` is
        False and the input queue is full)."""
        with self._cv:
            self._outstanding += 1  # before the job can finish, so take() never sees it early
        try:
            fut = self._engine.submit(arrays, context, block=block, counts_output=True)
        except BaseException:
            with self._cv:
                self._outstanding -= 1
            raise
        fut.add_done_callback(self._put)

    def _put(self, fut: cf.Future[Result]) -> None:
        with self._cv:
            self._items.append(fut)
            self._cv.notify_all()
            notify = self.notify
        if notify is not None:
            notify()

    def take_nowait(self) -> Result | None:
        """:meth:`take` without waiting: None when nothing has finished yet."""
        try:
            return self.take(0.0, "0 s")
        except QueueWaitTimeout:
            return None

    def take(self, timeout_s: float | None, shown: str) -> Result:
        """The next finished job's result (its error is raised, with its context as ``err.context``).

        Raises QueueWaitTimeout (a TimeoutError) after ``timeout_s`` (``shown`` says it in the
        user's units), SessionTerminated once the submitter closed and all was taken, and
        SessionClosed after :meth:`close`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cv:
            while True:
                if self.closed:
                    raise SessionClosed(f"the {self._name} is closed; create a new session")
                if self._items:
                    break
                if self._outstanding == 0 and self._engine.closed:
                    raise SessionTerminated("the submitter was closed and every submitted request has been received")
                if self._outstanding == 0 and self._engine.live.lost is not None:
                    self._engine.check_open()  # the device is gone: no result can come any more
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise QueueWaitTimeout(f"no result within {shown}; wait longer or submit requests first")
                self._cv.wait(0.1 if remaining is None else min(0.1, remaining))
            fut = self._items.popleft()
            self._outstanding -= 1
        self._engine.delivered()
        err = fut.exception()
        if err is not None:
            raise err
        return fut.result()

    def close(self) -> None:
        with self._cv:
            self.closed = True
            self._cv.notify_all()

    def pending(self) -> list[cf.Future[Result]]:
        """Finished jobs not taken yet (for tests and diagnostics)."""
        with self._cv:
            return list(self._items)
