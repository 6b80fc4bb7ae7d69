"""A session's worker processes and the ROUTER socket that feeds them.

Workers are separate processes (``python -m npusim.client._worker``), not threads, so their CPU
operators run outside the caller's interpreter and in parallel with the NPU. Each worker
announces itself with READY, gets its program and arena with SETUP, then serves one job at
a time. A worker that dies, or stops answering, is killed and replaced; the job it held
ends in :class:`~services.errors.WorkerCrashed`.

The pool is driven by one thread (the session's dispatcher, :mod:`npusim.client._engine`): it
hands a job to an idle worker with :meth:`WorkerPool.start` and collects what finished
with :meth:`WorkerPool.poll`, so as many jobs run at once as there are workers.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import zmq

from npusim.client._shm import Arena
from npusim.services.errors import NpusimError, ServiceUnavailable, WorkerCrashed, from_wire
from npusim.services.program import Program
from npusim.services.protocol import Kind, Message, decode, encode, error_message
from npusim.services.sockets import new_socket, recv_frames, send_frames

__all__ = ["WorkerPool"]

log = logging.getLogger("npusim.client")

START_TIMEOUT_S = 60.0
CHECK_EVERY_S = 0.05
"""How often the pool looks for workers that died or hung."""


@dataclass(frozen=True)
class Target:
    """One opened PE a worker sends its NPU stages to."""

    daemon: str  # endpoint
    device: str  # e.g. npu0pe0-1
    handle: str
    max_message_bytes: int | None = None


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    identity: bytes | None = None
    setup_sent: bool = False
    ready: bool = False  # SETUP_OK received
    busy_with: int | None = None
    deadline: float = 0.0  # of the job it holds (time.monotonic)
    arena: Arena | None = None
    jobs: int = 0


@dataclass
class Finished:
    """A job's end: its DONE (outputs copied out of the arena) or its ERROR."""

    rid: int
    msg: Message
    worker: int
    outputs: list[tuple[str, np.ndarray]] = field(default_factory=list)


class WorkerPool:
    """``n`` worker processes; ``call`` runs one job on an idle one."""

    def __init__(self, n: int, *, ctx: zmq.Context | None = None) -> None:
        self.ctx = ctx or zmq.Context.instance()
        self._dir = tempfile.mkdtemp(prefix="npusim-w-", dir="/tmp")
        self.endpoint = f"ipc://{self._dir}/w.sock"
        self.workers: list[_Worker] = []
        self._targets: list[Target] = []
        self._blob: np.ndarray | None = None
        self._timeout_s = 60.0
        self._program: Program | None = None
        self._setup_error: NpusimError | None = None
        self._finished: list[Finished] = []
        self._poller: zmq.Poller | None = None
        self._poller_fd = -1
        self._next_check = 0.0
        try:
            self.sock = new_socket(self.ctx, zmq.ROUTER)
            self.sock.bind(self.endpoint)
            for i in range(n):
                self.workers.append(self._spawn(i))
        except BaseException:
            self.close()
            raise

    def _spawn(self, index: int) -> _Worker:
        cmd = [sys.executable, "-m", "npusim.client._worker", "--connect", self.endpoint, "--index", str(index),
               "--parent-pid", str(os.getpid())]
        return _Worker(index, subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True))

    # -- start-up ---------------------------------------------------------------------
    def setup(self, program: Program, blob: bytes, targets: list[Target], *, timeout_s: float) -> None:
        """Send every worker the program and its PE (worker i uses ``targets[i % len]``); wait until
        all are ready."""
        self._program = program
        self._targets = targets
        self._timeout_s = timeout_s
        self._blob = np.frombuffer(blob, dtype=np.uint8)
        self._send_setups()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(w.ready for w in self.workers):
            if self._setup_error is not None:
                raise self._setup_error
            for w in self.workers:
                if (rc := w.proc.poll()) is not None:
                    raise ServiceUnavailable(f"worker {w.index} exited with code {rc} while starting; "
                                             "its error is on this process's stderr")
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"workers did not start within {START_TIMEOUT_S:g} s; "
                                         "is the machine overloaded?")
            self._pump(100)

    def target_of(self, index: int) -> Target:
        return self._targets[index % len(self._targets)]

    def _send(self, w: _Worker, msg: Message) -> None:
        assert w.identity is not None
        send_frames(self.sock, [w.identity, *encode(msg)])

    def _pump(self, timeout_ms: int, wake_fd: int | None = None) -> None:
        """Receive what arrives within ``timeout_ms`` (or until ``wake_fd`` is readable) and file it."""
        if wake_fd is None:
            if not self.sock.poll(timeout_ms):
                self._send_setups()
                return
        else:
            if self._poller is None or self._poller_fd != wake_fd:
                self._poller, self._poller_fd = zmq.Poller(), wake_fd
                self._poller.register(self.sock, zmq.POLLIN)
                self._poller.register(wake_fd, zmq.POLLIN)
            if not self._poller.poll(timeout_ms):
                self._send_setups()
                return
        while self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            frames = recv_frames(self.sock, zmq.NOBLOCK)
            try:
                msg = decode(frames[1:])
            except NpusimError as e:
                log.warning("dropped a malformed message from a worker: %s", e)
                continue
            self._file(frames[0].bytes, msg)
        self._send_setups()

    def _file(self, ident: bytes, msg: Message) -> None:
        if msg.kind == Kind.READY:
            w = next((x for x in self.workers if x.index == msg.body["worker"] and x.proc.pid == msg.body["pid"]),
                     None)
            if w is not None:  # else: a worker we already replaced
                w.identity = ident
            return
        w = next((x for x in self.workers if x.identity == ident), None)
        if w is None:
            return
        if not w.ready and msg.id == 0 and msg.kind in (Kind.SETUP_OK, Kind.ERROR):
            if msg.kind == Kind.ERROR:
                self._setup_error = from_wire(msg.body)
                log.error("worker %d could not set up: %s", w.index, self._setup_error)
                return
            w.ready = True
            if w.arena is not None:
                w.arena.unlink()  # both sides have it mapped now
        elif w.busy_with is not None and w.busy_with == msg.id:
            self._finished.append(self._collect(w, msg))
            w.busy_with = None
        # anything else is a late answer nobody waits for

    def _send_setups(self) -> None:
        """Give every announced worker that has none yet its arena and SETUP."""
        if self._blob is None or self._program is None:
            return
        for w in self.workers:
            if w.identity is None or w.setup_sent:
                continue
            w.arena = Arena.create(self._program, f"w{w.index}")
            t = self.target_of(w.index)
            body: dict[str, object] = {"daemon": t.daemon, "device": t.device, "handle": t.handle,
                                       "timeout_s": self._timeout_s}
            if t.max_message_bytes:
                body["max_message_bytes"] = t.max_message_bytes
            if w.arena is not None:
                body["arena"] = str(w.arena.path)
            w.setup_sent = True
            self._send(w, Message(Kind.SETUP, 0, body, [("program", self._blob)]))

    def _check_processes(self) -> None:
        """Replace dead workers and ones that overran their job's deadline (at most every
        CHECK_EVERY_S: a look at every process costs a system call each)."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + CHECK_EVERY_S
        for i, w in enumerate(self.workers):
            if (rc := w.proc.poll()) is not None:
                self._replace(i, f"worker {w.index} (pid {w.proc.pid}) died with exit code {rc}")
            elif w.busy_with is not None and now > w.deadline:
                self._replace(i, f"worker {w.index} did not answer within {self._timeout_s:g} s")

    def _replace(self, i: int, why: str) -> None:
        """Kill and respawn worker ``i``; the job it held ends in WorkerCrashed."""
        w = self.workers[i]
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()
        if w.arena is not None:
            w.arena.unlink()
            w.arena.close()
        if w.busy_with is not None:
            log.warning("%s; its request fails and the worker is replaced", why)
            self._finished.append(Finished(w.busy_with, error_message(w.busy_with, WorkerCrashed(
                f"{why} while running this request; it has been replaced, retry the request",
                details={"worker": w.index})), w.index))
        self.workers[i] = self._spawn(w.index)

    # -- jobs (one thread drives these) ----------------------------------------------
    def idle(self) -> _Worker | None:
        """A ready worker without a job, if any."""
        return next((w for w in self.workers if w.ready and w.busy_with is None), None)

    @property
    def busy(self) -> int:
        return sum(w.busy_with is not None for w in self.workers)

    def start(self, w: _Worker, rid: int, tensors: list[tuple[str, np.ndarray]], *, traceparent: str | None,
              collect: bool, timeout_s: float) -> bool:
        """Hand job ``rid`` to idle worker ``w``; False if the worker vanished (it is replaced)."""
        sent = tensors
        if w.arena is not None:
            for slot, (_, arr) in zip(w.arena.inputs, tensors):
                np.copyto(slot, arr)
            sent = []
        try:
            self._send(w, Message(Kind.JOB, rid, {"collect": collect}, sent, traceparent))
        except zmq.ZMQError:
            self._replace(self.workers.index(w), f"worker {w.index} vanished")
            return False
        w.busy_with = rid
        w.deadline = time.monotonic() + timeout_s
        w.jobs += 1
        return True

    def poll(self, timeout_ms: int, wake_fd: int | None = None) -> list[Finished]:
        """Wait up to ``timeout_ms`` for jobs to end (sooner if ``wake_fd`` becomes readable);
        return every job that ended, replacing workers that died or overran."""
        if not self._finished:
            self._pump(timeout_ms, wake_fd)
        self._check_processes()
        done, self._finished = self._finished, []
        return done

    def _collect(self, w: _Worker, msg: Message) -> Finished:
        """Copy a DONE's outputs out of the worker's arena before it takes another job."""
        out: list[tuple[str, np.ndarray]] = []
        if msg.kind == Kind.DONE:
            if msg.tensors:
                out = [(n, np.array(a)) for n, a in msg.tensors]
            elif w.arena is not None and self._program is not None:
                out = [(s.name, v.copy()) for s, v in zip(self._program.outputs, w.arena.outputs)]
        return Finished(msg.id, msg, w.index, out)

    def close(self, timeout_s: float = 2.0) -> None:
        for w in self.workers:
            if w.proc.poll() is not None:
                continue
            try:
                if w.identity is None:
                    raise zmq.ZMQError()
                self._send(w, Message(Kind.STOP))
            except zmq.ZMQError:
                w.proc.terminate()  # still starting (or gone from the socket): no STOP can reach it
        deadline = time.monotonic() + timeout_s
        for w in self.workers:
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            if w.arena is not None:
                w.arena.unlink()
                w.arena.close()
        if hasattr(self, "sock"):
            self.sock.close(linger=0)
        shutil.rmtree(self._dir, ignore_errors=True)

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers]
