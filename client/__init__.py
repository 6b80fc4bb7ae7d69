"""npusim's client library: the runtime API of the SDK, on an emulated NPU.

    from npusim.client import session
    with session.create("model.onnx") as sess:          # the legacy API the seed uses
        outputs = sess.run(x)

    async with create_runner("model.onnx") as runner:   # the current asyncio API
        outputs = await runner.run(x)

``npusim.client.sync`` has the blocking twins of ``create_runner`` / ``create_queue``, and
``npusim.client.serving`` the serving framework's ``NuxModel``.

Names load lazily, so a worker process (``python -m npusim.client._worker``) does not pay for the
session machinery it never uses.
"""

from __future__ import annotations

import importlib
from typing import Any

from npusim.services.errors import (
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
    "Session": "npusim.client._session",
    "AsyncSession": "npusim.client._session",
    "CompletionQueue": "npusim.client._session",
    "create": "npusim.client._session",
    "create_async": "npusim.client._session",
    "Runner": "npusim.client._runtime",
    "Submitter": "npusim.client._runtime",
    "Receiver": "npusim.client._runtime",
    "create_runner": "npusim.client._runtime",
    "create_queue": "npusim.client._runtime",
    "Model": "npusim.client._model",
    "Tensor": "npusim.client._tensor",
    "TensorArray": "npusim.client._tensor",
    "profile": "npusim.client._profiler",
    "Profiler": "npusim.client._profiler",
    "RecordFormat": "npusim.client._profiler",
    "Resource": "npusim.client._profiler",
    "TensorDesc": "npusim.client._tensor",
    "session": "npusim.client.session",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'client' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if name == "session" else getattr(mod, name)
    globals()[name] = value
    return value
