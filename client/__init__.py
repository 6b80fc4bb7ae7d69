"""npusim's client library: the runtime API of the SDK, on an emulated NPU.

    from client import session
    with session.create("model.onnx") as sess:
        outputs = sess.run(x)

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
    "DeviceBusy",
    "DeviceNotFound",
    "DeviceUnavailable",
    "InvalidDtype",
    "InvalidInput",
    "NpusimError",
    "QueueFull",
    "QueueWaitTimeout",
    "Session",
    "SessionClosed",
    "SessionTerminated",
    "TensorDesc",
    "WorkerCrashed",
    "create",
    "profile",
    "session",
]

_LAZY = {
    "Session": "client._session",
    "create": "client._session",
    "profile": "client._profiler",
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
