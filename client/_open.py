"""Getting a program and PEs for a session: compile (or accept an .enf), open, close.

A device string may ask for several PEs (``warboy(1)*2``, ``npu0pe0,npu1pe0``); they are
allocated like the SDK does it: named entries first, then each implicit one on the first
free PE of its kind. Every PE of one session runs the same program, so all must be of one
kind (single or fused). If any cannot be opened, those already opened are closed again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from npusim.client._profiler import collecting, deliver
from npusim.services import tracing
from npusim.services.config import env_float
from npusim.services.devices import AnyPe, DeviceSpec, NamedPe, target_of
from npusim.services.discovery import Stack
from npusim.services.errors import (
    ConfigError,
    DeviceBusy,
    DeviceNotFound,
    DeviceUnavailable,
    InvalidInput,
    NpusimError,
    ServiceUnavailable,
)
from npusim.services.modelfile import read_model
from npusim.services.program import Program, is_program
from npusim.services.protocol import Kind
from npusim.services.rpc import Peer

__all__ = ["Opened", "model_bytes", "compile_program", "open_pes", "close_pe", "target_of", "default_device"]

ENV_COMPILE_TIMEOUT = "NPUSIM_COMPILE_TIMEOUT_S"


@dataclass(frozen=True)
class Opened:
    device: str  # npu0
    pe: str  # pe0 | pe1 | pe0-1
    endpoint: str
    handle: str
    max_message_bytes: int | None = None

    @property
    def name(self) -> str:
        return f"{self.device}{self.pe}"


def model_bytes(model: Any) -> bytes:
    """A path, bytes, an ``onnx.ModelProto``, a quantised graph or an .enf program → bytes."""
    if isinstance(model, (str, os.PathLike)):
        return read_model(model)
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    if hasattr(model, "SerializeToString"):
        return model.SerializeToString()
    if hasattr(model, "__bytes__"):
        return bytes(model)
    raise InvalidInput(f"cannot use a {type(model).__name__} as a model: pass a path, bytes, an onnx.ModelProto "
                       "or an .enf program")


def default_device(data: bytes) -> str:
    """The SDK's default, except that an .enf compiled for one PE opens on one PE."""
    if is_program(data):
        return "warboy(2)*1" if Program.from_bytes(data).target == "warboy-2pe" else "warboy(1)*1"
    return "warboy(2)*1"


def compile_program(stack: Stack, data: bytes, target: str, batch_size: int | None,
                    compiler_config: dict[str, Any] | None) -> tuple[bytes, dict[str, Any]]:
    """The program for ``data`` (compiled by the service unless it is one) and its compile info."""
    if is_program(data):
        if compiler_config:
            raise InvalidInput("compiler_config cannot change an already compiled .enf program; "
                               "pass the ONNX model instead")
        return data, {"cached": True, "precompiled": True}
    if compiler_config is not None and not isinstance(compiler_config, dict):
        raise ConfigError(f"compiler_config must be a dict of option -> value, got {type(compiler_config).__name__}")
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if stack.compiler is None:
        raise ServiceUnavailable("no compiler service is running; start one with `npusim up` or pass an .enf")
    options = {"target_npu": target, "batch_size": batch_size or 1, "compiler_config": compiler_config or {}}
    timeout = env_float(ENV_COMPILE_TIMEOUT, 600.0, minimum=1.0)
    with Peer(stack.compiler, name="compiler", timeout_s=timeout, watch_disconnect=True) as peer:
        peer.adopt_limit()
        reply = peer.request(Kind.COMPILE, {"options": options, "collect": collecting()},
                             [("model", np.frombuffer(data, dtype=np.uint8))],
                             traceparent=tracing.inject() if tracing.active() else None)
    deliver(reply.body.get("spans") or [])
    info = dict(reply.body["info"], cached=reply.body["cached"])
    return reply.tensor("program").tobytes(), info


def _wanted(specs: list[DeviceSpec]) -> list[DeviceSpec]:
    """One entry per PE: ``warboy(1)*2`` becomes two requests for any single PE."""
    out: list[DeviceSpec] = []
    for s in specs:
        out.extend([AnyPe(s.pes, 1)] * s.count if isinstance(s, AnyPe) else [s])
    return out


def _overlaps(a: tuple[str, str], b: tuple[str, str]) -> bool:
    return a[0] == b[0] and (a[1] == b[1] or "pe0-1" in (a[1], b[1]))


def open_pes(stack: Stack, specs: list[DeviceSpec], blob: bytes, session: str, timeout_s: float,
             on_open: Callable[[Opened, bool], None] = lambda o, is_open: None) -> list[Opened]:
    """Open one PE per wanted entry; all or nothing. ``on_open(pe, True)`` runs as each opens
    (``False`` when it is closed again because a later one could not be opened)."""
    if not stack.daemons:
        raise DeviceNotFound("no NPU device daemon is running; start one with `npusim up`")
    opened: list[Opened] = []
    try:
        for spec in _wanted(specs):
            opened.append(_open_one(stack, spec, blob, session, timeout_s, [(o.device, o.pe) for o in opened]))
            on_open(opened[-1], True)
    except BaseException:
        for o in opened:
            on_open(o, False)
            close_pe(o)
        raise
    return opened


def _open_one(stack: Stack, spec: DeviceSpec, blob: bytes, session: str, timeout_s: float,
              taken: list[tuple[str, str]]) -> Opened:
    """Open a named PE, or the first free PE of the asked kind on any running device."""
    if isinstance(spec, NamedPe):
        if spec.device_name not in stack.daemons:
            raise DeviceNotFound(f"device {spec} not found: the running devices are "
                                 f"{', '.join(sorted(stack.daemons))}", details={"device": str(spec)})
        candidates = [(spec.device_name, spec.pe)]
    else:
        pes = ["pe0-1"] if spec.pes == 2 else ["pe0", "pe1"]
        candidates = [(d, pe) for d in sorted(stack.daemons) for pe in pes
                      if not any(_overlaps((d, pe), t) for t in taken)]
        if not candidates:
            raise DeviceNotFound(f"device {spec} not found: every {'fused' if spec.pes == 2 else 'single'} PE "
                                 f"of the running devices ({', '.join(sorted(stack.daemons))}) is already asked for; "
                                 "start more devices (`npusim up --devices N`) or ask for fewer PEs",
                                 details={"device": str(spec)})
    refused: list[str] = []
    unreachable: list[NpusimError] = []
    program = np.frombuffer(blob, dtype=np.uint8)
    for dev, pe in candidates:
        try:
            with Peer(stack.daemons[dev], name=dev, timeout_s=timeout_s, unavailable=DeviceUnavailable,
                      watch_disconnect=True) as peer:
                peer.adopt_limit()
                reply = peer.request(Kind.OPEN, {"pe": pe, "session": session, "client_pid": os.getpid()},
                                     [("program", program)])
            return Opened(dev, pe, stack.daemons[dev], reply.body["handle"], reply.body.get("max_message_bytes"))
        except (DeviceBusy, DeviceUnavailable) as e:
            if isinstance(spec, NamedPe):
                raise
            (refused if isinstance(e, DeviceBusy) else unreachable).append(e)  # type: ignore[arg-type]
    if refused:
        raise DeviceBusy(f"device {spec} found but still in use: {'; '.join(str(e) for e in refused)}",
                         details={"device": str(spec)})
    raise DeviceUnavailable(f"no device for {spec} answered: {'; '.join(str(e) for e in unreachable)}",
                            details={"device": str(spec)})


def gone(endpoint: str) -> bool:
    """An ipc endpoint whose socket file is gone has no daemon to say goodbye to."""
    return endpoint.startswith("ipc://") and not os.path.exists(endpoint.removeprefix("ipc://"))


def close_pe(opened: Opened, timeout_s: float = 2.0) -> None:
    """Give a PE back; quietly, since the daemon may be gone or have released it already."""
    if gone(opened.endpoint):
        return
    try:
        with Peer(opened.endpoint, name=opened.device, timeout_s=timeout_s, watch_disconnect=True) as peer:
            peer.request(Kind.CLOSE, {"handle": opened.handle})
    except NpusimError:
        pass
