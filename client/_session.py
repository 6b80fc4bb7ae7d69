"""Sessions: compile (or load) a model, open it on a device, run it through the workers."""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from client._profiler import collecting, deliver
from client._stack import get_stack
from client._tensor import TensorDesc, check_inputs
from client._workers import WorkerPool
from services import tracing
from services.config import env_float
from services.config import timeout_s as default_timeout
from services.devices import AnyPe, DeviceSpec, NamedPe, parse_devices
from services.discovery import Stack
from services.errors import (
    DeviceBusy,
    DeviceNotFound,
    DeviceUnavailable,
    InvalidInput,
    NpusimError,
    ServiceUnavailable,
    SessionClosed,
)
from services.program import Program, is_program
from services.protocol import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS, Kind
from services.rpc import Peer

__all__ = ["Session", "create", "model_bytes"]

log = logging.getLogger("npusim.client")

ENV_DEVICES = "NPUSIM_DEVICES"
ENV_COMPILE_TIMEOUT = "NPUSIM_COMPILE_TIMEOUT_S"


class State(enum.Enum):
    OPENING = "opening"
    OPEN = "open"
    CLOSED = "closed"


def model_bytes(model: Any) -> bytes:
    """A path, bytes, an ``onnx.ModelProto``, a quantised graph or an .enf program → bytes."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise InvalidInput(f"model file {str(path)!r} does not exist")
        return path.read_bytes()
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    if hasattr(model, "SerializeToString"):
        return model.SerializeToString()
    if hasattr(model, "__bytes__"):
        return bytes(model)
    raise InvalidInput(f"cannot use a {type(model).__name__} as a model: pass a path, bytes, an onnx.ModelProto "
                       "or an .enf program")


@dataclass
class _Opened:
    device: str
    pe: str
    endpoint: str
    handle: str

    @property
    def name(self) -> str:
        return f"{self.device}{self.pe}"


class _Heartbeat(threading.Thread):
    """Tells the daemon every second that the session lives; notices when the daemon does not."""

    def __init__(self, opened: _Opened, on_lost: Any) -> None:
        super().__init__(name="npusim-heartbeat", daemon=True)
        self.opened = opened
        self.on_lost = on_lost
        self.stop_event = threading.Event()

    def run(self) -> None:
        peer = Peer(self.opened.endpoint, name=self.opened.device, ctx=zmq.Context.instance(),
                    timeout_s=HEARTBEAT_INTERVAL_S, unavailable=DeviceUnavailable, watch_disconnect=True)
        misses = 0
        try:
            while not self.stop_event.wait(HEARTBEAT_INTERVAL_S):
                try:
                    reply = peer.request(Kind.HEARTBEAT, {"handles": [self.opened.handle]})
                    misses = 0
                    if self.opened.handle in (reply.body.get("dead") or []):
                        self.on_lost(SessionClosed(f"{self.opened.name} released this session (heartbeats were "
                                                   "missed or the daemon restarted); create a new session"))
                        return
                except DeviceUnavailable as e:
                    misses += 1
                    if misses >= HEARTBEAT_LIVENESS or peer.lost:
                        self.on_lost(e)
                        return
        finally:
            peer.close(linger_ms=0)


class Session:
    """A model opened on an emulated NPU. Use :func:`create`; a context manager."""

    def __init__(self, model: Any, *, device: str | None = None, worker_num: int | None = None,
                 batch_size: int | None = None, compiler_config: dict[str, Any] | None = None,
                 timeout_s: float | None = None) -> None:
        self._state = State.OPENING
        self._lock = threading.Lock()
        self._lost: NpusimError | None = None
        self._pool: WorkerPool | None = None
        self._heartbeat: _Heartbeat | None = None
        self._opened: _Opened | None = None
        self.timeout_s = default_timeout(timeout_s)
        tracing.setup_tracing("client", instance="client")
        data = model_bytes(model)
        specs = parse_devices(device or os.environ.get(ENV_DEVICES) or _default_device(data))
        stack = get_stack()
        try:
            span = tracing.tracer().start_as_current_span("session.create") if tracing.active() \
                else contextlib.nullcontext()
            with span:
                self._pool = WorkerPool(worker_num if worker_num is not None else 1)
                blob, self.compile_info = self._program(stack, data, specs, batch_size, compiler_config)
                self.program = Program.from_bytes(blob)
                self._opened = self._open(stack, specs, blob)
                self._pool.setup(blob, daemon=self._opened.endpoint, device=self._opened.name,
                                 handle=self._opened.handle, timeout_s=self.timeout_s)
        except BaseException:
            self._teardown()
            raise
        self._heartbeat = _Heartbeat(self._opened, self._on_lost)
        self._heartbeat.start()
        self._finalizer = weakref.finalize(self, Session._finalize, self._pool, self._opened, self._heartbeat)
        self._state = State.OPEN
        log.info("session opened on %s (%s)", self._opened.name, self.program.target)

    # -- creation steps ---------------------------------------------------------------
    def _program(self, stack: Stack, data: bytes, specs: list[DeviceSpec], batch_size: int | None,
                 compiler_config: dict[str, Any] | None) -> tuple[bytes, dict[str, Any]]:
        if is_program(data):
            if compiler_config:
                raise InvalidInput("compiler_config cannot change an already compiled .enf program; "
                                   "pass the ONNX model instead")
            return data, {"cached": True, "precompiled": True}
        if stack.compiler is None:
            raise ServiceUnavailable("no compiler service is running; start one with `npusim up` or pass an .enf")
        target = "warboy-2pe" if specs[0].pe == "pe0-1" else "warboy"
        options = {"target_npu": target, "batch_size": batch_size or 1, "compiler_config": compiler_config or {}}
        timeout = env_float(ENV_COMPILE_TIMEOUT, 600.0, minimum=1.0)
        with Peer(stack.compiler, name="compiler", timeout_s=timeout, watch_disconnect=True) as peer:
            reply = peer.request(Kind.COMPILE, {"options": options, "collect": collecting()},
                                 [("model", np.frombuffer(data, dtype=np.uint8))],
                                 traceparent=tracing.inject() if tracing.active() else None)
        deliver(reply.body.get("spans") or [])
        info = dict(reply.body["info"], cached=reply.body["cached"])
        for w in info.get("warnings", []):
            log.warning("compiler: %s", w)
        return reply.tensor("program").tobytes(), info

    def _open(self, stack: Stack, specs: list[DeviceSpec], blob: bytes) -> _Opened:
        """Allocate the first device spec: a named PE, or the first free one of its kind."""
        if not stack.daemons:
            raise DeviceNotFound("no NPU device daemon is running; start one with `npusim up`")
        spec = specs[0]
        if isinstance(spec, NamedPe):
            candidates = [(spec.device_name, spec.pe)]
            if spec.device_name not in stack.daemons:
                raise DeviceNotFound(f"device {spec} not found: the running devices are "
                                     f"{', '.join(sorted(stack.daemons))}", details={"device": str(spec)})
        else:
            assert isinstance(spec, AnyPe)
            pes = ["pe0-1"] if spec.pes == 2 else ["pe0", "pe1"]
            candidates = [(d, pe) for d in sorted(stack.daemons) for pe in pes]
        busy: list[str] = []
        program = np.frombuffer(blob, dtype=np.uint8)
        for dev, pe in candidates:
            with Peer(stack.daemons[dev], name=dev, timeout_s=self.timeout_s, unavailable=DeviceUnavailable) as peer:
                try:
                    reply = peer.request(Kind.OPEN, {"pe": pe, "session": f"pid{os.getpid()}-{id(self):x}",
                                                     "client_pid": os.getpid()}, [("program", program)])
                except DeviceBusy as e:
                    if isinstance(spec, NamedPe):
                        raise
                    busy.append(str(e))
                    continue
            return _Opened(dev, pe, stack.daemons[dev], reply.body["handle"])
        raise DeviceBusy(f"device {spec} found but still in use: {'; '.join(busy)}", details={"device": str(spec)})

    # -- running ----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._state is not State.OPEN:
            raise SessionClosed("Session or AsyncSession is already closed. Please create a new session.")
        if self._lost is not None:
            raise self._lost

    def _on_lost(self, exc: NpusimError) -> None:
        self._lost = exc

    def run(self, inputs: Any) -> list[np.ndarray]:
        """Run one inference; returns one array per model output."""
        self._check_open()
        arrays = check_inputs(inputs, self.program.inputs)
        tensors = [(s.name, a) for s, a in zip(self.program.inputs, arrays)]
        with self._lock:
            self._check_open()
            assert self._pool is not None
            try:
                if tracing.active():
                    with tracing.tracer().start_as_current_span("Inference", attributes={"device": self._device()}):
                        done = self._pool.call(tensors, traceparent=tracing.inject(),
                                               collect=collecting(), timeout_s=self.timeout_s + 5)
                else:
                    done = self._pool.call(tensors, traceparent=None, collect=False, timeout_s=self.timeout_s + 5)
            except DeviceUnavailable as e:
                self._lost = e  # the device is gone: later calls fail at once, close() skips it
                raise
        if done.body.get("spans"):
            deliver(done.body["spans"])
        self.last_timing = done.body.get("timing") or {}
        return [a for _, a in done.tensors]

    def run_with(self, outputs: list[str], inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run with inputs by name and return only the named outputs, in that order."""
        self._check_open()
        if not isinstance(outputs, (list, tuple)):
            raise TypeError("outputs must be a list of output names")
        if not isinstance(inputs, dict):
            raise TypeError("inputs must be a dict of input name -> array")
        names = [s.name for s in self.program.inputs]
        unknown = sorted(set(inputs) - set(names))
        if unknown or set(inputs) != set(names):
            raise InvalidInput(f"run_with needs exactly the inputs {names}; got {sorted(inputs)}")
        out_names = [s.name for s in self.program.outputs]
        bad = [o for o in outputs if o not in out_names]
        if bad or not outputs:
            raise InvalidInput(f"unknown output name(s) {bad}; the model's outputs are {out_names}")
        results = self.run([inputs[n] for n in names])
        return [results[out_names.index(o)] for o in outputs]

    def _device(self) -> str:
        return self._opened.name if self._opened else "?"

    # -- description ------------------------------------------------------------------
    def inputs(self) -> list[TensorDesc]:
        self._check_open()
        return [TensorDesc.of(s) for s in self.program.inputs]

    def outputs(self) -> list[TensorDesc]:
        self._check_open()
        return [TensorDesc.of(s) for s in self.program.outputs]

    def input(self, i: int) -> TensorDesc:
        return self.inputs()[i]

    def output(self, i: int) -> TensorDesc:
        return self.outputs()[i]

    @property
    def input_num(self) -> int:
        return len(self.inputs())

    @property
    def output_num(self) -> int:
        return len(self.outputs())

    @property
    def device(self) -> str:
        return self._device()

    def summary(self) -> str:
        ins = ", ".join(f"{i}: {d!r}" for i, d in enumerate(self.inputs()))
        outs = ", ".join(f"{i}: {d!r}" for i, d in enumerate(self.outputs()))
        return f"Inputs:\n{{{ins}}}\nOutputs:\n{{{outs}}}"

    def print_summary(self) -> None:
        print(self.summary())

    # -- closing ------------------------------------------------------------------------
    def close(self) -> bool:
        if self._state is State.CLOSED:
            return True
        with self._lock:
            self._state = State.CLOSED
            self._teardown()
        return True

    def _teardown(self) -> None:
        if getattr(self, "_finalizer", None) is not None:
            self._finalizer.detach()
        lost = isinstance(self._lost, DeviceUnavailable)
        Session._finalize(self._pool, None if lost else self._opened, self._heartbeat)
        self._pool = None
        self._state = State.CLOSED

    @staticmethod
    def _finalize(pool: WorkerPool | None, opened: _Opened | None, heartbeat: _Heartbeat | None) -> None:
        if heartbeat is not None:
            heartbeat.stop_event.set()
        if pool is not None:
            pool.close()
        if opened is not None:
            try:
                with Peer(opened.endpoint, name=opened.device, timeout_s=2.0) as peer:
                    peer.request(Kind.CLOSE, {"handle": opened.handle})
            except NpusimError:
                pass  # the daemon is gone or released us already

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _default_device(data: bytes) -> str:
    if is_program(data):
        return "warboy(2)*1" if Program.from_bytes(data).target == "warboy-2pe" else "warboy(1)*1"
    return "warboy(2)*1"


def create(model: Any, *, device: str | None = None, worker_num: int | None = None, batch_size: int | None = None,
           compiler_config: dict[str, Any] | None = None) -> Session:
    """Compile ``model`` if needed, open it on a device and start its workers.

    Args:
        model: path, bytes, ``onnx.ModelProto``, quantised graph, or ``.enf`` program.
        device: SDK device string (``warboy(2)*1``, ``npu0pe0``, ...); default ``NPUSIM_DEVICES``
            or the fused PE of the first free device.
        worker_num: worker processes running the CPU operators (default 1).
        batch_size: compile for this batch (multiplies dim 0 of every input and output).
        compiler_config: compiler options such as ``{"permute_input": [[0, 3, 1, 2]]}``.
    """
    return Session(model, device=device, worker_num=worker_num, batch_size=batch_size,
                   compiler_config=compiler_config)

