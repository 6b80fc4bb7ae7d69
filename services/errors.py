"""The one exception tree of npusim, shared by every process.

Branches split by *where* a failure happens, so a caller can catch a whole family::

    NpusimError
    ├── ProtocolError                 a message on the wire was malformed
    ├── ServiceError                  a service failed internally (a bug: please report)
    ├── ServiceUnavailable            a compiler service or daemon did not answer
    ├── ConfigError (ValueError)      a bad option, environment variable or endpoint
    ├── CompileError                  the model cannot be compiled
    │   ├── InvalidModel (ValueError)      not ONNX, truncated, bad opset, ...
    │   ├── UnsupportedOperator
    │   ├── InvalidCompilerConfig
    │   └── CalibrationError
    ├── DeviceError                   the emulated NPU refused or lost the work
    │   ├── DeviceBusy
    │   ├── DeviceNotFound
    │   └── DeviceUnavailable         the daemon died or cannot be reached
    └── RequestError                  one inference request failed
        ├── InvalidInput (ValueError)      wrong shape / count / name
        │   └── InvalidDtype (TypeError)   wrong dtype
        ├── QueueFull
        ├── QueueWaitTimeout (TimeoutError)
        ├── SessionClosed
        ├── SessionTerminated
        └── WorkerCrashed

Builtins are mixed in where the SDK's contract names one, so generic handlers still
work (``except ValueError`` catches a bad shape). Every class has a stable wire ``code``:
a service replies ``{code, message, details}`` and the receiving side re-raises the same
class from :data:`BY_CODE` — one translation table, round-tripped by a test.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "NpusimError",
    "ProtocolError",
    "ServiceError",
    "ServiceUnavailable",
    "ConfigError",
    "CompileError",
    "InvalidModel",
    "UnsupportedOperator",
    "InvalidCompilerConfig",
    "CalibrationError",
    "DeviceError",
    "DeviceBusy",
    "DeviceNotFound",
    "DeviceUnavailable",
    "RequestError",
    "InvalidInput",
    "InvalidDtype",
    "QueueFull",
    "QueueWaitTimeout",
    "SessionClosed",
    "SessionTerminated",
    "WorkerCrashed",
    "BY_CODE",
    "TargetMismatch",
    "to_wire",
    "from_wire",
]


class NpusimError(Exception):
    """Root of every npusim error. ``details`` carries machine-readable context."""

    code = 1

    def __init__(self, message: str = "", *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})


class ProtocolError(NpusimError):
    code = 10


class ServiceError(NpusimError):
    code = 11


class ServiceUnavailable(NpusimError):
    code = 12


class ConfigError(NpusimError, ValueError):
    code = 13


class CompileError(NpusimError):
    code = 20


class InvalidModel(CompileError, ValueError):
    code = 21


class UnsupportedOperator(CompileError):
    code = 22


class InvalidCompilerConfig(CompileError):
    code = 23


class CalibrationError(CompileError):
    code = 24


class DeviceError(NpusimError):
    code = 30


class DeviceBusy(DeviceError):
    code = 31


class DeviceNotFound(DeviceError):
    code = 32


class DeviceUnavailable(DeviceError):
    code = 33


class TargetMismatch(DeviceError, ValueError):
    """A program compiled for one PE kind opened on the other (warboy on pe0-1, warboy-2pe on pe0)."""

    code = 34


class RequestError(NpusimError):
    code = 40


class InvalidInput(RequestError, ValueError):
    code = 41


class InvalidDtype(InvalidInput, TypeError):
    code = 42


class QueueFull(RequestError):
    code = 43


class QueueWaitTimeout(RequestError, TimeoutError):
    code = 44


class SessionClosed(RequestError):
    code = 45


class SessionTerminated(RequestError):
    code = 46


class WorkerCrashed(RequestError):
    code = 47


def _all_subclasses(cls: type[NpusimError]) -> list[type[NpusimError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


BY_CODE: dict[int, type[NpusimError]] = {c.code: c for c in _all_subclasses(NpusimError)}


def to_wire(exc: BaseException) -> dict[str, Any]:
    """Encode any exception as the body of an ERROR reply.

    Foreign exceptions become :class:`ServiceError` so a bug in a service reaches the
    caller as a named failure instead of a hang.
    """
    if isinstance(exc, NpusimError):
        return {"code": exc.code, "message": exc.message, "details": exc.details}
    return {
        "code": ServiceError.code,
        "message": f"internal error: {type(exc).__name__}: {exc}",
        "details": {"exception": type(exc).__name__},
    }


def from_wire(body: dict[str, Any]) -> NpusimError:
    """Rebuild the exception a service sent; unknown codes become ServiceError."""
    cls = BY_CODE.get(int(body.get("code", ServiceError.code)), ServiceError)
    details = body.get("details")
    return cls(str(body.get("message", "")), details=details if isinstance(details, dict) else None)
