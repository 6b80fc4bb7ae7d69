"""npusim's client library: the runtime API of the SDK, on an emulated NPU.

    from client import session
    with session.create("model.onnx") as sess:          # the legacy API the seed uses
        outputs = sess.run(x)

    async with create_runner("model.onnx") as runner:   # the current asyncio API
        outputs = await runner.run(x)

``client.sync`` has the blocking twins of ``create_runner`` / ``create_queue``, and
``client.serving`` the serving framework's ``NuxModel``.

Names load lazily, so a worker process (``python -m client._worker``) does not pay for the
session machinery it never uses.
"""

from __future__ import annotations

import importlib
from typing import Any

from services.errors import (
    DeviceBusy,
    DeviceNotFound,
    DeviceUnavailable,
    InvalidDtype,
    InvalidInput,
    NpusimError,
    QueueFull,
    QueueWaitTimeout,
    SessionClosed,
    SessionTerminated,
    WorkerCrashed,
)

__all__ = [
    "AsyncSession",
    "CompletionQueue",
    "DeviceBusy",
    "DeviceNotFound",
    "DeviceUnavailable",
    "InvalidDtype",
    "InvalidInput",
    "NpusimError",
    "QueueFull",
    "QueueWaitTimeout",
    "Model",
    "Profiler",
    "RecordFormat",
    "Resource",
    "Receiver",
    "Runner",
    "Session",
    "SessionClosed",
    "SessionTerminated",
    "Submitter",
    "Tensor",
    "TensorArray",
    "TensorDesc",
    "WorkerCrashed",
    "create",
    "create_async",
    "create_queue",
    "create_runner",
    "profile",
    "session",
]

_LAZY = {
    "Session": "client._session",
    "AsyncSession": "client._session",
    "CompletionQueue": "client._session",
    "create": "client._session",
    "create_async": "client._session",
    "Runner": "client._runtime",
    "Submitter": "client._runtime",
    "Receiver": "client._runtime",
    "create_runner": "client._runtime",
    "create_queue": "client._runtime",
    "Model": "client._model",
    "Tensor": "client._tensor",
    "TensorArray": "client._tensor",
    "profile": "client._profiler",
    "Profiler": "client._profiler",
    "RecordFormat": "client._profiler",
    "Resource": "client._profiler",
    "TensorDesc": "client._tensor",
    "session": "client.session",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'client' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if name == "session" else getattr(mod, name)
    globals()[name] = value
    return value
