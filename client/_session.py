"""Sessions: compile (or load) a model, open it on a device, run it through the workers."""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import threading
import weakref
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from client import _heartbeat
from client._profiler import collecting, deliver
from client._stack import get_stack
from client._tensor import TensorDesc, check_inputs
from client._workers import WorkerPool
from services import tracing
from services.config import env_float
from services.config import timeout_s as default_timeout
from services.devices import AnyPe, DeviceSpec, NamedPe, parse_devices
from services.discovery import Stack
from services.modelfile import read_model
from services.errors import (
    ConfigError,
    DeviceBusy,
    DeviceNotFound,
    DeviceUnavailable,
    InvalidInput,
    NpusimError,
    ServiceUnavailable,
    SessionClosed,
)
from services.program import Program, is_program
from services.protocol import Kind
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
        return read_model(model)
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    if hasattr(model, "SerializeToString"):
        return model.SerializeToString()
    if hasattr(model, "__bytes__"):
        return bytes(model)
    raise InvalidInput(f"cannot use a {type(model).__name__} as a model: pass a path, bytes, an onnx.ModelProto "
                       "or an .enf program")


@dataclass(frozen=True)
class _Opened:
    device: str
    pe: str
    endpoint: str
    handle: str
    max_message_bytes: int | None = None

    @property
    def name(self) -> str:
        return f"{self.device}{self.pe}"


def _single_pe(specs: list[DeviceSpec]) -> DeviceSpec:
    """Sessions use one PE (or fused pair) today; refuse strings that ask for more."""
    if len(specs) > 1 or (isinstance(specs[0], AnyPe) and specs[0].count > 1):
        asked = ", ".join(str(s) for s in specs)
        raise ConfigError(f"device {asked!r} asks for several PEs; a session uses one PE or one fused pair "
                          "so far: pass e.g. 'npu0pe0-1', 'npu0pe1' or 'warboy(2)*1'")
    return specs[0]


class Session:
    """A model opened on an emulated NPU. Use :func:`create`; a context manager."""

    def __init__(self, model: Any, *, device: str | None = None, worker_num: int | None = None,
                 batch_size: int | None = None, compiler_config: dict[str, Any] | None = None,
                 timeout_s: float | None = None) -> None:
        self._state = State.OPENING
        self._lock = threading.Lock()
        self._live = _heartbeat.Liveness()
        self._pool: WorkerPool | None = None
        self._opened: _Opened | None = None
        self.last_timing: dict[str, Any] = {}
        self.timeout_s = default_timeout(timeout_s)
        workers = 1 if worker_num is None else worker_num
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ConfigError(f"worker_num must be a positive integer, got {worker_num!r}")
        tracing.setup_tracing("client", instance="client")
        data = model_bytes(model)
        spec = _single_pe(parse_devices(device or os.environ.get(ENV_DEVICES) or _default_device(data)))
        stack = get_stack()
        try:
            span = tracing.tracer().start_as_current_span("session.create") if tracing.active() \
                else contextlib.nullcontext()
            with span:
                self._pool = WorkerPool(workers)  # starts while we compile and open
                blob, self.compile_info = self._program(stack, data, spec, batch_size, compiler_config)
                self.program = Program.from_bytes(blob)
                self._opened = self._open(stack, spec, blob)
                _heartbeat.register(self._opened.endpoint, self._opened.device, self._opened.handle, self._live)
                self._pool.setup(self.program, blob, daemon=self._opened.endpoint, device=self._opened.name,
                                 handle=self._opened.handle, timeout_s=self.timeout_s,
                                 max_message_bytes=self._opened.max_message_bytes)
        except BaseException:
            Session._finalize(self._pool, self._opened)
            self._pool = None
            self._state = State.CLOSED
            raise
        self._finalizer = weakref.finalize(self, Session._finalize, self._pool, self._opened)
        self._state = State.OPEN
        log.info("session opened on %s (%s)", self._opened.name, self.program.target)

    # -- creation steps ---------------------------------------------------------------
    def _program(self, stack: Stack, data: bytes, spec: DeviceSpec, batch_size: int | None,
                 compiler_config: dict[str, Any] | None) -> tuple[bytes, dict[str, Any]]:
        if is_program(data):
            if compiler_config:
                raise InvalidInput("compiler_config cannot change an already compiled .enf program; "
                                   "pass the ONNX model instead")
            return data, {"cached": True, "precompiled": True}
        if stack.compiler is None:
            raise ServiceUnavailable("no compiler service is running; start one with `npusim up` or pass an .enf")
        target = "warboy-2pe" if spec.pe == "pe0-1" else "warboy"
        options = {"target_npu": target, "batch_size": batch_size or 1, "compiler_config": compiler_config or {}}
        timeout = env_float(ENV_COMPILE_TIMEOUT, 600.0, minimum=1.0)
        with Peer(stack.compiler, name="compiler", timeout_s=timeout, watch_disconnect=True) as peer:
            peer.adopt_limit()
            reply = peer.request(Kind.COMPILE, {"options": options, "collect": collecting()},
                                 [("model", np.frombuffer(data, dtype=np.uint8))],
                                 traceparent=tracing.inject() if tracing.active() else None)
        deliver(reply.body.get("spans") or [])
        info = dict(reply.body["info"], cached=reply.body["cached"])
        for w in info.get("warnings", []):
            log.warning("compiler: %s", w)
        return reply.tensor("program").tobytes(), info

    def _open(self, stack: Stack, spec: DeviceSpec, blob: bytes) -> _Opened:
        """Open a named PE, or the first free PE of the asked kind on any running device."""
        if not stack.daemons:
            raise DeviceNotFound("no NPU device daemon is running; start one with `npusim up`")
        if isinstance(spec, NamedPe):
            if spec.device_name not in stack.daemons:
                raise DeviceNotFound(f"device {spec} not found: the running devices are "
                                     f"{', '.join(sorted(stack.daemons))}", details={"device": str(spec)})
            candidates = [(spec.device_name, spec.pe)]
        else:
            pes = ["pe0-1"] if spec.pes == 2 else ["pe0", "pe1"]
            candidates = [(d, pe) for d in sorted(stack.daemons) for pe in pes]
        refused: list[str] = []
        unreachable: list[NpusimError] = []
        program = np.frombuffer(blob, dtype=np.uint8)
        for dev, pe in candidates:
            try:
                with Peer(stack.daemons[dev], name=dev, timeout_s=self.timeout_s, unavailable=DeviceUnavailable,
                          watch_disconnect=True) as peer:
                    peer.adopt_limit()
                    reply = peer.request(Kind.OPEN, {"pe": pe, "session": f"pid{os.getpid()}-{id(self):x}",
                                                     "client_pid": os.getpid()}, [("program", program)])
                return _Opened(dev, pe, stack.daemons[dev], reply.body["handle"],
                               reply.body.get("max_message_bytes"))
            except (DeviceBusy, DeviceUnavailable) as e:
                if isinstance(spec, NamedPe):
                    raise
                (refused if isinstance(e, DeviceBusy) else unreachable).append(e)  # type: ignore[arg-type]
        if refused:
            raise DeviceBusy(f"device {spec} found but still in use: {'; '.join(str(e) for e in refused)}",
                             details={"device": str(spec)})
        raise DeviceUnavailable(f"no device for {spec} answered: {'; '.join(str(e) for e in unreachable)}",
                                details={"device": str(spec)})

    # -- running ----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._state is not State.OPEN:
            raise SessionClosed("the session is already closed; create a new session")
        lost = self._live.lost
        if lost is not None:
            raise type(lost)(lost.message, details=lost.details)  # a fresh exception: no growing traceback

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
                    with tracing.tracer().start_as_current_span("Inference", attributes={"device": self.device}):
                        done = self._pool.call(tensors, traceparent=tracing.inject(), collect=collecting(),
                                               timeout_s=self.timeout_s + 5)
                else:
                    done = self._pool.call(tensors, traceparent=None, collect=False, timeout_s=self.timeout_s + 5)
            except DeviceUnavailable as e:
                self._live.lost = e  # the device is gone: later calls fail at once, close() skips it
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
        if set(inputs) != set(names):
            raise InvalidInput(f"run_with needs exactly the inputs {names}; got {sorted(inputs)}")
        out_names = [s.name for s in self.program.outputs]
        bad = [o for o in outputs if o not in out_names]
        if bad or not outputs:
            raise InvalidInput(f"unknown output name(s) {bad}; the model's outputs are {out_names}")
        results = self.run([inputs[n] for n in names])
        return [results[out_names.index(o)] for o in outputs]

    # -- description ------------------------------------------------------------------
    @cached_property
    def _inputs(self) -> list[TensorDesc]:
        return [TensorDesc.of(s) for s in self.program.inputs]

    @cached_property
    def _outputs(self) -> list[TensorDesc]:
        return [TensorDesc.of(s) for s in self.program.outputs]

    def inputs(self) -> list[TensorDesc]:
        self._check_open()
        return list(self._inputs)

    def outputs(self) -> list[TensorDesc]:
        self._check_open()
        return list(self._outputs)

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
        return self._opened.name if self._opened else "?"

    def summary(self) -> str:
        ins = ", ".join(f"{i}: {d!r}" for i, d in enumerate(self.inputs()))
        outs = ", ".join(f"{i}: {d!r}" for i, d in enumerate(self.outputs()))
        return f"Inputs:\n{{{ins}}}\nOutputs:\n{{{outs}}}"

    def print_summary(self) -> None:
        print(self.summary())

    # -- closing ------------------------------------------------------------------------
    def close(self) -> bool:
        with self._lock:
            if self._state is State.CLOSED:
                return True
            self._state = State.CLOSED
            self._finalizer.detach()
            reachable = not isinstance(self._live.lost, DeviceUnavailable)
            Session._finalize(self._pool, self._opened if reachable else None)
            if self._opened is not None:
                _heartbeat.unregister(self._opened.endpoint, self._opened.handle)
            self._pool = None
        return True

    @staticmethod
    def _finalize(pool: WorkerPool | None, opened: _Opened | None) -> None:
        """Stop the workers and give the PE back; also runs for a session never closed."""
        if opened is not None:
            _heartbeat.unregister(opened.endpoint, opened.handle)
        if pool is not None:
            pool.close()
        if opened is not None and not _gone(opened.endpoint):
            try:
                with Peer(opened.endpoint, name=opened.device, timeout_s=2.0, watch_disconnect=True) as peer:
                    peer.request(Kind.CLOSE, {"handle": opened.handle})
            except NpusimError:
                pass  # the daemon is gone or released us already

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _gone(endpoint: str) -> bool:
    """An ipc endpoint whose socket file is gone has no daemon to say goodbye to."""
    return endpoint.startswith("ipc://") and not os.path.exists(endpoint.removeprefix("ipc://"))


def _default_device(data: bytes) -> str:
    if is_program(data):
        return "warboy(2)*1" if Program.from_bytes(data).target == "warboy-2pe" else "warboy(1)*1"
    return "warboy(2)*1"


def create(model: Any, *, device: str | None = None, worker_num: int | None = None, batch_size: int | None = None,
           compiler_config: dict[str, Any] | None = None) -> Session:
    """Compile ``model`` if needed, open it on a device and start its workers.

    Args:
        model: path, bytes, ``onnx.ModelProto``, quantised graph, or ``.enf`` program.
        device: SDK device string for one PE or one fused pair (``warboy(2)*1``, ``npu0pe0``,
            ``npu:0:0-1``); default ``NPUSIM_DEVICES`` or the fused PE of the first free device.
        worker_num: worker processes running the CPU operators (default 1).
        batch_size: compile for this batch.
        compiler_config: compiler options.
    """
    return Session(model, device=device, worker_num=worker_num, batch_size=batch_size,
                   compiler_config=compiler_config)
