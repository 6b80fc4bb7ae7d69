"""The device daemon: admission (exclusive PEs), per-PE FIFO queues, emulated timing, replies.

A RUN is answered at the later of two instants: when the emulated PE finishes the job
(its timeline) and when onnxruntime has really computed the outputs. When the host is the
later one the job is *host-bound*: the wall clock then no longer matches the chip, so the
daemon counts it and marks it in the reply and the trace.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from opentelemetry import trace

from npusim.npu_daemon.execute import Executor
from npusim.services import tracing
from npusim.services.cost import recost_program
from npusim.services.devices import PE_NAMES
from npusim.services.discovery import pid_alive
from npusim.services.errors import (
    DeviceBusy,
    DeviceError,
    DeviceNotFound,
    NpusimError,
    QueueFull,
    SessionClosed,
    TargetMismatch,
)
from npusim.services.hw import WARBOY, Hardware
from npusim.services.program import Program
from npusim.services.protocol import (
    HEARTBEAT_INTERVAL_S,
    HEARTBEAT_LIVENESS,
    Kind,
    Message,
    error_message,
)
from npusim.services.server import Request, Service
from npusim.services.timing import CORES, DeviceClock, JobTimes, StageTiming

__all__ = ["DaemonService", "DaemonOptions"]

log = logging.getLogger("npusim.daemon")

TARGET_PE = {"warboy": ("pe0", "pe1"), "warboy-2pe": ("pe0-1",)}


def stage_costs(program: Program, hw: Hardware, time_scale: float = 1.0) -> list[StageTiming]:
    """Each stage's per-job constants on ``hw``: the compiler's estimate on the spec-sheet chip,
    the same cost model run again on the stage graph for a what-if chip (``--hw``), exactly as
    ``npusim estimate --hw`` does."""
    costs = [s.estimate for s in program.stages] if hw == WARBOY else [e for _, e in recost_program(program, hw)]
    return [StageTiming.for_stage(st, hw, time_scale, estimate=est) for st, est in zip(program.stages, costs)]


@dataclass(frozen=True)
class DaemonOptions:
    timing_only: bool = False
    ort_threads: int = 1
    queue_limit: int = 128
    time_scale: float = 1.0
    hw: Hardware = WARBOY
    jitter: float = 0.0  # relative standard deviation of execution time; 0 = deterministic
    seed: int = 0


@dataclass
class OpenSession:
    """An admitted session; its stages' per-job constants come from the program at OPEN."""

    handle: str
    pe: str
    name: str
    client_pid: int | None
    program: Program
    costs: list[StageTiming]
    outputs: list[list[str]]
    executor: Executor | None = None  # None while the program loads
    last_seen: float = field(default_factory=time.monotonic)
    outstanding: int = 0
    jobs: int = 0
    host_bound: int = 0


class DaemonService(Service):
    service = "daemon"

    def __init__(self, name: str, endpoint: str, *, options: DaemonOptions = DaemonOptions(), **kw: Any) -> None:
        super().__init__(name, endpoint, **kw)
        self.options = options
        self.owner: dict[int, str | None] = {0: None, 1: None}  # core -> session handle
        self.sessions: dict[str, OpenSession] = {}
        self.released: deque[dict[str, Any]] = deque(maxlen=20)
        self._wall_offset = time.time_ns() - time.monotonic_ns()
        self.clock = DeviceClock(jitter=options.jitter, seed=options.seed)
        self.started_ns = time.monotonic_ns()
        self.host_bound = 0
        self.handlers.update({
            Kind.OPEN: self._open,
            Kind.CLOSE: self._close,
            Kind.RUN: self._run,
            Kind.HEARTBEAT: self._heartbeat,
        })

    # -- HEALTH / STATS -------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        pes = {}
        for pe, cores in CORES.items():
            owners = {self.owner[c] for c in cores} - {None}
            s = self.sessions.get(next(iter(owners))) if owners else None
            pes[pe] = {"available": not owners, "session": s.name if s else None,
                       "client_pid": s.client_pid if s else None, "session_pe": s.pe if s else None}
        return {"device": self.name, "pes": pes, "sessions": len(self.sessions),
                "timing_only": self.options.timing_only}

    def extra_stats(self) -> dict[str, Any]:
        return {"sessions": {h: {"pe": s.pe, "name": s.name, "jobs": s.jobs, "host_bound": s.host_bound,
                                 "outstanding": s.outstanding}
                             for h, s in self.sessions.items()},
                "counters": self.counters(),
                "released": list(self.released)}

    def counters(self) -> dict[str, Any]:
        """The chip's counters per PE, in cycles at the clock: elapsed, task (holding a job),
        tensor (computing); utilisation = Δtask/Δcycle and compute ratio = Δtensor/Δtask
        between two reads (``npusim top``, ``/metrics``)."""
        clock = self.options.hw.clock_hz / 1e9
        elapsed = int((time.monotonic_ns() - self.started_ns) * clock)
        out: dict[str, Any] = {}
        for core, k in enumerate(self.clock.counters):
            owner = self.sessions.get(self.owner[core] or "")
            out[f"pe{core}"] = {"cycles": elapsed, "task_cycles": int(k.task_ns * clock),
                                "tensor_cycles": int(k.tensor_ns * clock), "io_cycles": int(k.io_ns * clock),
                                "jobs": k.jobs, "queue": owner.outstanding if owner else 0,
                                "session": owner.name if owner else None, "pe": owner.pe if owner else None}
        out["host_bound"] = self.host_bound
        return out

    # -- OPEN / CLOSE ---------------------------------------------------------------
    def _open(self, req: Request) -> Message | None:
        body = req.msg.body
        pe = body["pe"]
        if pe not in CORES:
            raise DeviceNotFound(f"{self.name} has no PE {pe!r}; it has {', '.join(PE_NAMES)}",
                                 details={"device": self.name, "pe": pe})
        program = Program.from_bytes(req.msg.tensor("program"))
        allowed = TARGET_PE.get(program.target, ())
        if pe not in allowed:
            fix = "warboy-2pe" if pe == "pe0-1" else "warboy"
            raise TargetMismatch(
                f"the program was compiled for {program.target} and cannot open on {self.name}{pe}; "
                f"use device {'/'.join(self.name + p for p in allowed)} or compile with target_npu={fix!r}",
                details={"target": program.target, "pe": pe})
        busy = {self.owner[c] for c in CORES[pe]} - {None}
        if busy:
            holder = self.sessions[busy.pop()]
            raise DeviceBusy(f"{self.name}{pe} is in use by session {holder.name!r} (pid {holder.client_pid}) on "
                             f"{self.name}{holder.pe}; close that session or pick another device",
                             details={"device": self.name, "pe": pe, "holder": holder.name})
        handle = uuid.uuid4().hex
        s = OpenSession(handle, pe, body["session"], body.get("client_pid"), program, [],
                        [[t.name for t in st.device_outputs] for st in program.stages])
        self.sessions[handle] = s
        for c in CORES[pe]:
            self.owner[c] = handle

        def load() -> None:  # onnxruntime takes a while to load a graph: off the loop thread
            try:
                s.costs = stage_costs(program, self.options.hw, self.options.time_scale)
                ex = Executor(program, threads=self.options.ort_threads, timing_only=self.options.timing_only)
            except Exception as e:  # noqa: BLE001 - onnxruntime load errors are user-facing
                log.exception("%s: loading the program failed", self.name)
                err = e if isinstance(e, NpusimError) else DeviceError(
                    f"{self.name} cannot load the program ({type(e).__name__}: {e}); recompile it with this npusim")
                self.call_soon_threadsafe(lambda: self._loaded(req, handle, None, err))
                return
            self.call_soon_threadsafe(lambda: self._loaded(req, handle, ex, None))

        threading.Thread(target=load, name=f"load-{handle[:8]}", daemon=True).start()
        return None

    def _loaded(self, req: Request, handle: str, ex: Executor | None, err: NpusimError | None) -> None:
        """Finish an OPEN on the loop thread: the session may have been released meanwhile."""
        s = self.sessions.get(handle)
        if err is not None or s is None:
            if ex is not None:
                ex.close()
            self._release(handle, "load failed")
            self.reply(req, error_message(req.msg.id, err or SessionClosed(
                f"{self.name} released the session while its program was loading; open it again")))
            return
        s.executor = ex
        s.last_seen = time.monotonic()
        self.reply(req, req.msg.reply(Kind.OPENED, {"handle": handle, "pe": s.pe, "device": self.name,
                                                     "queue_limit": self.options.queue_limit,
                                                     "max_message_bytes": self.max_message_bytes}))

    def _close(self, req: Request) -> Message:
        self._release(req.msg.body["handle"], "closed by the client")
        return req.msg.reply(Kind.CLOSED)

    def _release(self, handle: str, why: str) -> None:
        s = self.sessions.pop(handle, None)
        if s is None:
            return
        for c in CORES[s.pe]:
            if self.owner[c] == handle:
                self.owner[c] = None
        if s.executor is not None:
            s.executor.close()
        self.released.append({"session": s.name, "pe": s.pe, "why": why, "at": time.time()})
        log.info("%s: released %s%s of session %r: %s", self.name, self.name, s.pe, s.name, why)

    # -- liveness ---------------------------------------------------------------------
    def _heartbeat(self, req: Request) -> Message:
        now = time.monotonic()
        dead = []
        for h in req.msg.body.get("handles") or []:
            s = self.sessions.get(h) if isinstance(h, str) else None
            if s is None:
                dead.append(h)
            else:
                s.last_seen = now
        return req.msg.reply(Kind.HEARTBEAT_OK, {"dead": dead})

    def tick(self) -> None:
        limit = HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS
        now = time.monotonic()
        for h, s in list(self.sessions.items()):
            if s.executor is None:
                continue  # still loading: the client cannot beat before it has its handle
            if s.client_pid is not None and self.endpoint.startswith("ipc://") and not pid_alive(s.client_pid):
                self._release(h, f"client process {s.client_pid} exited")
            elif now - s.last_seen > limit and s.outstanding == 0:
                self._release(h, f"no heartbeat for {now - s.last_seen:.1f} s")

    def on_stop(self) -> None:
        for h in list(self.sessions):
            self._release(h, "daemon stopping")

    # -- RUN --------------------------------------------------------------------------
    def _run(self, req: Request) -> Message | None:
        handle = req.msg.body["handle"]
        s = self.sessions.get(handle)
        if s is None or s.executor is None:
            raise SessionClosed(f"{self.name} has no open session {handle[:8]}…: it was closed, timed out, or the "
                                "daemon restarted; create a new session")
        s.last_seen = time.monotonic()
        ex = s.executor
        stage = req.msg.body.get("stage", 0)
        inputs = ex.check(stage, req.msg.tensors)
        self._admit(s)
        c = s.costs[stage]
        times = self.clock.schedule(s.pe, req.received_ns, c)
        job = _Job(req, s, stage, times)
        s.outstanding += 1
        s.jobs += 1
        # Timing-only outputs are ready at once, so their jobs' replies stay in FIFO order inline.
        if ex.cheap and (ex.timing_only or s.outstanding == 1):
            try:
                outs, ready = ex.timed(stage, inputs)
            except Exception as e:  # noqa: BLE001 - the job failed: it no longer holds a queue slot
                s.outstanding -= 1
                raise self._execution_error(s, e) from e
            self._complete(job, outs, ready)
            return None

        def done(fut: cf.Future[tuple[list[np.ndarray], int]]) -> None:
            self.call_soon_threadsafe(lambda: self._complete_future(job, fut))

        try:
            ex.submit(stage, inputs, done)
        except Exception as e:  # noqa: BLE001
            s.outstanding -= 1
            raise self._execution_error(s, e) from e
        return None

    def _execution_error(self, s: OpenSession, e: BaseException) -> NpusimError:
        """What a requester is told when its job's execution fails."""
        if isinstance(e, NpusimError):
            return e
        log.error("%s: NPU execution failed", self.name, exc_info=e)
        return DeviceError(f"NPU execution on {self.name}{s.pe} failed ({type(e).__name__}: {e}); see the daemon's log")

    def _admit(self, s: OpenSession) -> None:
        if s.outstanding >= self.options.queue_limit:
            raise QueueFull(f"{self.name}{s.pe} already has {s.outstanding} jobs queued (limit "
                            f"{self.options.queue_limit}); wait for results before submitting more")

    def _timing(self, s: OpenSession, stage: int, times: JobTimes, ready: int) -> dict[str, Any]:
        """Count a finished job (host-bound or not, the PE's counters) and give its RESULT timing."""
        host_bound = ready > times.end
        s.host_bound += host_bound
        self.host_bound += host_bound
        self.clock.account(s.pe, times, s.costs[stage])
        return times.as_dict(host_bound=host_bound, zero_filled=self.options.timing_only, stage=stage,
                             replied_ns=max(times.end, ready) - times.arrival)

    def _complete_future(self, job: _Job, fut: cf.Future[tuple[list[np.ndarray], int]]) -> None:
        err: NpusimError | None = None
        if fut.cancelled():
            err = SessionClosed("the session was closed while this job was queued")
        elif (e := fut.exception()) is not None:
            err = self._execution_error(job.session, e)
        if err is not None:
            job.session.outstanding -= 1
            self.reply(job.req, error_message(job.req.msg.id, err))
            return
        outs, ready = fut.result()
        self._complete(job, outs, ready)

    def _complete(self, job: _Job, outs: list[np.ndarray], ready: int) -> None:
        due = max(job.times.end, ready)
        if due <= time.monotonic_ns():
            self._finish(job, outs, ready)
        else:
            self.call_at(due, lambda: self._finish(job, outs, ready))

    def _finish(self, job: _Job, outs: list[np.ndarray], ready: int) -> None:
        """Reply to one RUN; whatever goes wrong here, the requester still gets an answer."""
        s, times, req = job.session, job.times, job.req
        s.outstanding -= 1
        try:
            timing = self._timing(s, job.stage, times, ready)
            timing["sent_ns"] = time.monotonic_ns()  # when the reply left (the host's clock, for hop costs)
            body: dict[str, Any] = {"timing": timing}
            parent = tracing.extract(req.msg.traceparent)
            if parent is not None:
                collect = bool(req.msg.body.get("collect"))
                body["spans"] = self._spans(parent, job, timing["host_bound"], max(times.end, ready), collect)
            reply = req.msg.reply(Kind.RESULT, body, list(zip(s.outputs[job.stage], outs)))
        except Exception as e:  # noqa: BLE001
            log.exception("%s: building a RESULT failed", self.name)
            reply = error_message(req.msg.id, e)
        self.reply(req, reply)

    def _spans(self, parent: Any, job: _Job, host_bound: bool, replied: int, collect: bool) -> list[dict[str, Any]]:
        s, t, c = job.session, job.times, job.session.costs[job.stage]
        off = self._wall_offset
        tr = tracing.tracer()
        track = {tracing.TRACK: f"{self.name}{s.pe}"}
        with tracing.capture(collect) as spans:
            span = tr.start_span("npu.job", context=parent, start_time=t.arrival + off,
                                 attributes={**track, "pe": s.pe, "session": s.name, "host_bound": host_bound,
                                             "stage": job.stage, "program": s.program.meta.get("model", "")})
            ctx = trace.set_span_in_context(span)
            for name, a, b, extra in (
                ("npu.queue", t.arrival, t.h2d_start, {}),
                ("npu.h2d", t.h2d_start, t.h2d_end, {"bytes": c.in_bytes}),
                ("npu.exec", t.exec_start, t.exec_end, {"pe": s.pe, "stage": job.stage, "cycles": c.cycles,
                                                        "program": s.program.meta.get("model", ""),
                                                        "dram_shared": round(t.shared, 3),
                                                        "bound_by": "host" if host_bound else "npu"}),
                ("npu.d2h", t.d2h_start, t.end, {"bytes": c.out_bytes}),
            ):
                sp = tr.start_span(name, context=ctx, start_time=a + off, attributes={**track, **extra})
                sp.end(end_time=b + off)
            span.end(end_time=replied + off)
        return [tracing.to_record(sp) for sp in spans]


@dataclass(slots=True)
class _Job:
    req: Request
    session: OpenSession
    stage: int
    times: JobTimes
