"""npusim's client library: the runtime API of the SDK, on an emulated NPU.

    from client import session
    with session.create("model.onnx") as sess:
        outputs = sess.run(x)
"""

from client import session
from client._profiler import profile
from client._session import Session, create
from client._tensor import TensorDesc
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
