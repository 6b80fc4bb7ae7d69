"""The machinery under every client API: a model opened on PEs, its workers, a dispatcher.

``Session.run``, the legacy ``create_async`` queues, the asyncio ``create_runner`` /
``create_queue`` and their ``sync`` twins, and ``NuxModel`` are thin faces of one
:class:`Engine`. A caller's thread submits a job (the input queue is bounded: ``submit``
blocks when it is full); one thread at a time holds the *pump*: it owns the worker pool's
socket, hands queued jobs to idle workers, and resolves each job's future when its worker
answers. So CPU work of one request overlaps NPU work of others exactly when there are
several workers, which is the seed's point about ``worker_num``.

Who pumps: a caller that waits for its own job (:meth:`Engine.run`) takes the pump when it
is free and drives the pool until its job is done. Handing every request to another thread
and back costs two thread wake-ups, which on a small host is a good part of a request's
latency. Jobs nobody waits for (queues, asyncio) are driven by the dispatcher thread, which
parks while there are none; whoever gives up the pump with work left wakes it.

Every submitted job ends in exactly one result or one error: a dead worker fails its job
with WorkerCrashed and is replaced; a lost device fails the queued jobs at once; closing
without draining fails what is still queued with SessionClosed.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures as cf
import contextlib
import itertools
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
from opentelemetry import trace

from npusim.client import _heartbeat
from npusim.client._open import (
    Opened,
    close_pe,
    compile_program,
    default_device,
    model_bytes,
    open_pes,
    target_of,
)
from npusim.client._profiler import Profiler, collecting, deliver, session_profiler
from npusim.client._stack import get_stack
from npusim.client._workers import Target, WorkerPool
from npusim.services import tracing
from npusim.services.config import timeout_s as default_timeout
from npusim.services.devices import parse_devices
from npusim.services.errors import (
    ConfigError,
    DeviceUnavailable,
    NpusimError,
    QueueFull,
    SessionClosed,
    from_wire,
)
from npusim.services.program import Program
from npusim.services.protocol import Kind

__all__ = ["Engine", "Result", "ENV_DEVICES", "positive_int"]

log = logging.getLogger("npusim.client")

ENV_DEVICES = "NPUSIM_DEVICES"
DEFAULT_QUEUE_SIZE = 1024  # the SDK's legacy queues were "much larger" than its new ones; so are ours
_NO_FD = -1
HOUSEKEEPING_S = 0.5
"""How often an idle dispatcher looks at the workers (one that died is replaced)."""
_live: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """At interpreter exit, sessions nobody closed stop their workers and give their PEs back."""
    engines = [e for e in list(_live) if e._pid == os.getpid()]
    for engine in engines:
        engine.close(wait=False)
    for engine in engines:
        engine.wait_closed(5.0)


def positive_int(name: str, value: Any, default: int, *, maximum: int = 2**31 - 1) -> int:
    """An option that must be a positive int (None → ``default``), or ConfigError saying so."""
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= maximum:
        raise ConfigError(f"{name} must be an integer from 1 to {maximum}, got {value!r}")
    return value


@dataclass
class Result:
    """One finished job."""

    context: Any
    outputs: list[np.ndarray]
    timing: dict[str, Any]


@dataclass
class _Job:
    rid: int
    tensors: list[tuple[str, np.ndarray]]
    context: Any
    future: cf.Future[Result]
    collect: bool
    traceparent: str | None = None
    span: Any = None
    counts_output: bool = False  # its result waits in a bounded output queue
    submitted_ns: int = 0  # time.monotonic_ns() when queued, and when handed to a worker
    sent_ns: int = 0


class Engine:
    """A model compiled (if needed), opened on one or more PEs, with ``worker_num`` workers."""

    def __init__(self, model: Any, *, device: str | None = None, worker_num: int | None = None,
                 batch_size: int | None = None, compiler_config: dict[str, Any] | None = None,
                 input_queue_size: int | None = None, output_queue_size: int | None = None,
                 timeout_s: float | None = None, name: str = "session") -> None:
        self.timeout_s = default_timeout(timeout_s)
        self.input_limit = positive_int("input_queue_size", input_queue_size, DEFAULT_QUEUE_SIZE)
        self.output_limit = positive_int("output_queue_size", output_queue_size, DEFAULT_QUEUE_SIZE)
        if compiler_config is not None and not isinstance(compiler_config, dict):
            raise ConfigError(f"compiler_config must be a dict of option -> value, got "
                              f"{type(compiler_config).__name__}")
        data = model_bytes(model)
        device_text = device if device is not None else os.environ.get(ENV_DEVICES) or default_device(data)
        if not isinstance(device_text, str):
            raise ConfigError(f"device must be a string such as 'warboy(2)*1' or 'npu0pe0', got {device!r}")
        specs = parse_devices(device_text)
        target = target_of(specs)
        workers = positive_int("worker_num", worker_num, 1, maximum=256)
        self.live = _heartbeat.Liveness()
        self.pool: WorkerPool | None = None
        self.opened: list[Opened] = []
        lock = threading.Lock()
        self._cv = threading.Condition(lock)  # room in the input queue; the engine's state
        self._work = threading.Condition(lock)  # the idle dispatcher waits here for work nobody pumps
        self._queue: collections.deque[_Job] = collections.deque()
        self._running: dict[int, _Job] = {}
        self._undelivered = 0
        self._ids = itertools.count(1)
        self._closing = False
        self._drain = True
        self._closed = threading.Event()
        self._wake_r, self._wake_w = _NO_FD, _NO_FD
        self._wake_lock = threading.Lock()  # the dispatcher closes the pipe while others may write to it
        self._thread: threading.Thread | None = None
        self._pumper: int | None = None  # threading.get_ident() of the thread driving the pool, if any
        self._beating: list[Opened] = []
        self._pid = os.getpid()  # a forked child must not close (or wait for) its parent's session
        tracing.setup_tracing("client", instance="client")
        self._profiler: Profiler | None = session_profiler()  # NPUSIM_PROFILER_OUTPUT_PATH: the whole life
        try:
            stack = get_stack()
            span = tracing.tracer().start_as_current_span("session.create") if tracing.active() \
                else contextlib.nullcontext()
            with span:
                self.pool = WorkerPool(workers)  # the workers start while we compile and open
                blob, self.compile_info = compile_program(stack, data, target, batch_size, compiler_config)
                for w in self.compile_info.get("warnings", []):
                    log.warning("compiler: %s", w)
                self.program = Program.from_bytes(blob)
                # beat for each PE as soon as it is open: opening the next ones may take longer than
                # the daemon waits for a first heartbeat
                self.opened = open_pes(stack, specs, blob, f"pid{os.getpid()}-{name}-{id(self):x}", self.timeout_s,
                                       on_open=self._beat_for)
                self.pool.setup(self.program, blob, [Target(o.endpoint, o.name, o.handle, o.max_message_bytes)
                                                     for o in self.opened], timeout_s=self.timeout_s)
        except BaseException:
            self._release()
            raise
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # a job may wait up to timeout_s for each NPU stage; past that its worker is taken for hung
        self._job_timeout_s = self.timeout_s * max(1, len(self.program.stages)) + 5
        self._thread = threading.Thread(target=self._dispatch, name=f"npusim-{name}", daemon=True)
        self._thread.start()
        _live.add(self)
        log.info("%s opened on %s (%s, %d workers)", name, self.device, self.program.target, workers)

    def _beat_for(self, o: Opened, is_open: bool) -> None:
        if is_open:
            _heartbeat.register(o.endpoint, o.device, o.handle, self.live)
            self._beating.append(o)
        else:
            _heartbeat.unregister(o.endpoint, o.handle)
            self._beating.remove(o)

    # -- facts -------------------------------------------------------------------------
    @property
    def device(self) -> str:
        return ",".join(o.name for o in self.opened) or "?"

    @property
    def closed(self) -> bool:
        return self._closing

    def check_open(self) -> None:
        if self._closing:
            raise SessionClosed("the session is already closed; create a new session")
        lost = self.live.lost
        if lost is not None:
            raise type(lost)(lost.message, details=lost.details)  # a fresh exception: no growing traceback

    # -- submitting ----------------------------------------------------------------------
    def _full(self) -> bool:
        """The input queue has no room and can still get some (call with ``_cv`` held)."""
        return len(self._queue) >= self.input_limit and not self._closing and self.live.lost is None

    def submit(self, arrays: list[np.ndarray], context: Any = None, *, block: bool = True,
               counts_output: bool = False, pump: bool = False) -> cf.Future[Result]:
        """Queue one job of checked input arrays; blocks while the input queue is full (or raises
        QueueFull when ``block`` is False). With ``pump``, the calling thread takes the pump when
        nobody holds it, and must then drive it (:meth:`run`)."""
        self.check_open()
        tensors = [(s.name, a) for s, a in zip(self.program.inputs, arrays)]
        job = _Job(0, tensors, context, cf.Future(), collecting(), counts_output=counts_output,
                   submitted_ns=time.monotonic_ns())
        if tracing.active():
            job.span = tracing.tracer().start_span("Inference", attributes={"device": self.device})
            job.traceparent = tracing.inject(trace.set_span_in_context(job.span))
        with self._cv:
            while self._full():
                if not block:
                    self._end_span(job, "queue full")
                    raise QueueFull(f"the input queue is full ({self.input_limit} requests waiting); receive "
                                    "results first or create the session with a larger input_queue_size")
                self._cv.wait(0.5)
            try:
                self.check_open()
            except NpusimError:
                self._end_span(job, "closed")
                raise
            job.rid = next(self._ids)
            if counts_output:
                self._undelivered += 1
            self._queue.append(job)
            pumped = self._pumper is not None
            if pump and not pumped:
                self._pumper = threading.get_ident()
                return job.future
            if not pumped:
                self._work.notify()  # the parked dispatcher takes the pump
        if pumped:
            self._wake()  # the thread polling the workers starts it
        return job.future

    def run(self, arrays: list[np.ndarray]) -> Result:
        """Submit one job and wait for it. When no other thread is driving the workers, the calling
        thread drives them itself until its job is done, so a lone request costs no hand-off
        between threads; otherwise it waits like any other job."""
        fut = self.submit(arrays, pump=True)
        if self._pumper == threading.get_ident():
            try:
                while not fut.done():
                    self._pump_once()
            finally:
                self._unpump()
        return self.wait(fut)

    def wait(self, fut: cf.Future[Result]) -> Result:
        """A job's result. The engine ends every job it accepted, even when it stops; the check
        guards against a job it could no longer end (a bug), so no caller waits forever."""
        while True:
            try:
                return fut.result(timeout=1.0)
            except cf.TimeoutError:
                if self.wait_closed(0) and not fut.done():
                    raise SessionClosed("the session stopped without answering this request; this is a bug in "
                                        "npusim, please report it") from None

    def wait_room(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds until the input queue has room (or the engine closes);
        submits nothing, so a caller that gives up (an asyncio task cancelled while this runs in a
        thread) loses nothing."""
        with self._cv:
            self._cv.wait_for(lambda: not self._full(), timeout)

    def delivered(self) -> None:
        """A result left the bounded output queue: there is room for one more job."""
        with self._cv:
            self._undelivered -= 1
        self._wake()

    # -- closing -------------------------------------------------------------------------
    def close(self, *, drain: bool = False, wait: bool = True) -> None:
        """Stop taking jobs; with ``drain`` finish the queued ones first, else fail them with
        SessionClosed. The jobs already on a worker always finish. Idempotent; does nothing in a
        forked child, which shares the session's PEs and workers with its parent but not its thread."""
        if os.getpid() != self._pid:
            return
        with self._cv:
            if not self._closing:
                self._closing = True
                self._drain = drain
            elif not drain:
                self._drain = False
            self._cv.notify_all()
            self._work.notify_all()
        if self._thread is None:
            self._release()
            return
        self._wake()
        me = threading.current_thread()
        if wait and me is not self._thread and self._pumper != me.ident:
            self._closed.wait()

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self._closed.wait(timeout)

    def _release(self) -> None:
        """Stop the workers and give the PEs back (also after a failed start)."""
        for o in self._beating:
            _heartbeat.unregister(o.endpoint, o.handle)
        if self.pool is not None:
            self.pool.close()
        if self._profiler is not None:
            profiler, self._profiler = self._profiler, None
            profiler.close()
        reachable = not isinstance(self.live.lost, DeviceUnavailable)
        if reachable:
            for o in self.opened:
                close_pe(o)
        self._closed.set()

    # -- the dispatcher thread ---------------------------------------------------------------
    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_w != _NO_FD:
                try:
                    os.write(self._wake_w, b"x")
                except (BlockingIOError, OSError):
                    pass  # the pipe is full: the thread is awake anyway

    def _dispatch(self) -> None:
        """Drive the pool whenever there is work and no caller drives it; park otherwise."""
        assert self.pool is not None
        me = threading.get_ident()
        try:
            while True:
                with self._cv:
                    idle = False
                    while self._pumper is not None or not (self._queue or self._running or self._closing):
                        if not self._work.wait(HOUSEKEEPING_S) and self._pumper is None:
                            idle = True  # a while without work: look at the workers (replace dead ones)
                            break
                    if self._closing and not self._running and (not self._queue or not self._drain):
                        break
                    self._pumper = me
                try:
                    self._pump_once(0 if idle else 100)
                    while not idle and self._has_work():
                        self._pump_once()
                finally:
                    self._unpump()
        except BaseException as e:  # noqa: BLE001 - a bug here must still end every job
            log.exception("the session's dispatcher failed")
            self._fail_all(SessionClosed(f"the session's dispatcher failed ({type(e).__name__}: {e}); "
                                         "create a new session"))
        finally:
            with self._cv:  # whatever ended the loop, the engine takes no more jobs
                self._closing, self._drain = True, False
                self._cv.notify_all()
                self._work.notify_all()
                while self._pumper is not None:  # a caller still drives its own job to its end
                    self._work.wait(HOUSEKEEPING_S)
            self._fail_all(SessionClosed("the session was closed before this request ran; submit it to an "
                                         "open session"))
            with self._wake_lock:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = _NO_FD
            self._release()

    def _pump_once(self, timeout_ms: int = 100) -> None:
        """One turn of the pool by the thread holding the pump: start what can start, collect what
        ended (waiting up to ``timeout_ms``, less if another thread submits)."""
        assert self.pool is not None
        self._start_jobs()
        if self._closing and not self._drain and self._queue:
            self._fail_queued(SessionClosed("the session was closed before this request ran; submit it to an "
                                            "open session"))
        for f in self.pool.poll(timeout_ms, self._wake_r):
            self._finish(f.rid, f.msg, f.outputs)
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _has_work(self) -> bool:
        """Jobs to start or to wait for, unless the engine is closing and may stop."""
        with self._cv:
            return bool(self._running or self._queue) and not (
                self._closing and not self._running and (not self._queue or not self._drain))

    def _unpump(self) -> None:
        """Give the pump back; the dispatcher takes it if work is left."""
        with self._cv:
            self._pumper = None
            if self._queue or self._running or self._closing:
                self._work.notify_all()

    def _start_jobs(self) -> None:
        assert self.pool is not None
        lost = self.live.lost
        if lost is not None:
            self._fail_queued(type(lost)(lost.message, details=lost.details))
        while True:
            w = self.pool.idle()
            if w is None:
                return
            with self._cv:
                if not self._queue or (self._closing and not self._drain):
                    return
                if self._queue[0].counts_output and self._undelivered - len(self._queue) >= self.output_limit:
                    return  # running + unreceived fill the output queue: results must be received first
                job = self._queue.popleft()
                self._cv.notify_all()
            if not job.future.set_running_or_notify_cancel():
                self._resolve(job, error=SessionClosed("cancelled"))  # its caller cancelled it: nobody waits
                continue
            try:
                started = self.pool.start(w, job.rid, job.tensors, traceparent=job.traceparent, collect=job.collect,
                                          timeout_s=self._job_timeout_s)
            except Exception as e:  # noqa: BLE001 - e.g. an input the arena cannot take: this job fails
                log.exception("could not hand a job to a worker")
                self._resolve(job, error=SessionClosed(f"the request could not be started ({type(e).__name__}: "
                                                       f"{e}); see the log"))
                continue
            if started:
                job.sent_ns = time.monotonic_ns()
                self._running[job.rid] = job
            else:  # the worker vanished before taking it: another one will
                with self._cv:
                    self._queue.appendleft(job)

    def _finish(self, rid: int, msg: Any, outputs: list[tuple[str, np.ndarray]]) -> None:
        job = self._running.pop(rid, None)
        if job is None:
            return
        if msg.body.get("spans"):
            deliver(msg.body["spans"])
        if msg.kind == Kind.ERROR:
            err = from_wire(msg.body)
            if isinstance(err, DeviceUnavailable) and self.live.lost is None:
                self.live.lost = err  # later calls fail at once; close() does not wait for it
            self._resolve(job, error=err)
        else:
            timing = msg.body.get("timing") or {}
            timing["client"] = {"submitted_ns": job.submitted_ns, "sent_ns": job.sent_ns,
                                "done_ns": time.monotonic_ns()}
            self._resolve(job, Result(job.context, [a for _, a in outputs], timing))

    def _resolve(self, job: _Job, result: Result | None = None, error: BaseException | None = None) -> None:
        if error is not None and job.counts_output:
            error.context = job.context  # type: ignore[attr-defined]  # the queue hands it back with the error
        self._end_span(job, None if error is None else type(error).__name__)
        try:
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)  # type: ignore[arg-type]
        except cf.InvalidStateError:
            pass  # cancelled by its caller (an asyncio task that was cancelled): nobody waits for it

    @staticmethod
    def _end_span(job: _Job, error: str | None) -> None:
        if job.span is not None:
            if error is not None:
                job.span.set_attribute("error", error)
            job.span.end()
            job.span = None

    def _fail_queued(self, err: NpusimError) -> None:
        with self._cv:
            jobs = list(self._queue)
            self._queue.clear()
            self._cv.notify_all()
        for job in jobs:
            self._resolve(job, error=type(err)(err.message, details=err.details))

    def _fail_all(self, err: NpusimError) -> None:
        self._fail_queued(err)
        for rid in list(self._running):
            self._resolve(self._running.pop(rid), error=type(err)(err.message, details=err.details))
