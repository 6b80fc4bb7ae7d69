"""A session's worker processes and the ROUTER socket that feeds them.

Workers are separate processes (``python -m client._worker``), not threads, so their CPU
operators run outside the caller's interpreter and in parallel with the NPU. Each worker
announces itself with READY, gets its program and arena with SETUP, then serves one job at
a time. A worker that dies, or stops answering, is killed and replaced; the job it held
ends in :class:`~services.errors.WorkerCrashed`. (Today a session hands out one job at a
time; several in flight over several workers come with the asynchronous API.)
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import zmq

from client._shm import Arena
from services.errors import NpusimError, ServiceUnavailable, WorkerCrashed, from_wire
from services.program import Program
from services.protocol import Kind, Message, decode, encode, error_message
from services.sockets import new_socket

__all__ = ["WorkerPool"]

log = logging.getLogger("npusim.client")

START_TIMEOUT_S = 60.0


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    identity: bytes | None = None
    setup_sent: bool = False
    ready: bool = False  # SETUP_OK received
    busy_with: int | None = None
    arena: Arena | None = None


class WorkerPool:
    """``n`` worker processes; ``call`` runs one job on an idle one."""

    def __init__(self, n: int, *, ctx: zmq.Context | None = None) -> None:
        self.ctx = ctx or zmq.Context.instance()
        self._dir = tempfile.mkdtemp(prefix="npusim-w-", dir="/tmp")
        self.endpoint = f"ipc://{self._dir}/w.sock"
        self.workers: list[_Worker] = []
        self._setup: Message | None = None
        self._program: Program | None = None
        self._setup_error: NpusimError | None = None
        self._next_id = 1
        self._pending: dict[int, Message] = {}
        try:
            self.sock = new_socket(self.ctx, zmq.ROUTER)
            self.sock.bind(self.endpoint)
            for i in range(n):
                self.workers.append(self._spawn(i))
        except BaseException:
            self.close()
            raise

    def _spawn(self, index: int) -> _Worker:
        cmd = [sys.executable, "-m", "client._worker", "--connect", self.endpoint, "--index", str(index),
               "--parent-pid", str(os.getpid())]
        return _Worker(index, subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True))

    # -- start-up ---------------------------------------------------------------------
    def setup(self, program: Program, blob: bytes, *, daemon: str, device: str, handle: str,
              timeout_s: float, max_message_bytes: int | None = None) -> None:
        """Send every worker the program and its device; wait until all are ready."""
        self._program = program
        body: dict[str, object] = {"daemon": daemon, "device": device, "handle": handle, "timeout_s": timeout_s}
        if max_message_bytes:
            body["max_message_bytes"] = max_message_bytes
        self._setup = Message(Kind.SETUP, 0, body,
                              [("program", np.frombuffer(blob, dtype=np.uint8))])
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

    def _send(self, w: _Worker, msg: Message) -> None:
        assert w.identity is not None
        self.sock.send_multipart([w.identity, *encode(msg)], copy=False)

    def _pump(self, timeout_ms: int) -> None:
        """Receive what arrives within ``timeout_ms`` and file it."""
        if not self.sock.poll(timeout_ms):
            return
        while self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
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
            w.busy_with = None
            self._pending[msg.id] = msg
        # anything else is a late answer nobody waits for

    def _send_setups(self) -> None:
        """Give every announced worker that has none yet its arena and SETUP."""
        if self._setup is None or self._program is None:
            return
        for w in self.workers:
            if w.identity is None or w.setup_sent:
                continue
            w.arena = Arena.create(self._program, f"w{w.index}")
            body = dict(self._setup.body)
            if w.arena is not None:
                body["arena"] = str(w.arena.path)
            w.setup_sent = True
            self._send(w, Message(Kind.SETUP, 0, body, self._setup.tensors))

    def _check_processes(self) -> None:
        """Replace dead workers; the job a dead worker held ends in WorkerCrashed."""
        for i, w in enumerate(self.workers):
            if (rc := w.proc.poll()) is not None:
                self._replace(i, f"worker {w.index} (pid {w.proc.pid}) died with exit code {rc}")

    def _replace(self, i: int, why: str) -> None:
        w = self.workers[i]
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()
        if w.arena is not None:
            w.arena.unlink()
            w.arena.close()
        if w.busy_with is not None:
            self._pending[w.busy_with] = error_message(w.busy_with, WorkerCrashed(
                f"{why} while running this request; it has been replaced, retry the request",
                details={"worker": w.index}))
        self.workers[i] = self._spawn(w.index)

    # -- jobs --------------------------------------------------------------------------
    def call(self, tensors: list[tuple[str, np.ndarray]], *, traceparent: str | None, collect: bool,
             timeout_s: float) -> Message:
        """Run one job on an idle worker and return its DONE (an ERROR is raised)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_processes()
            w = next((x for x in self.workers if x.ready and x.busy_with is None), None)
            if w is None:
                if time.monotonic() > deadline:
                    raise ServiceUnavailable(f"no worker became ready within {timeout_s:g} s"
                                             + (f": {self._setup_error}" if self._setup_error else ""))
                self._pump(50)
                continue
            rid = self._next_id
            self._next_id += 1
            sent = tensors
            if w.arena is not None:
                for slot, (_, arr) in zip(w.arena.inputs, tensors):
                    np.copyto(slot, arr)
                sent = []
            try:
                self._send(w, Message(Kind.JOB, rid, {"collect": collect}, sent, traceparent))
            except zmq.ZMQError:
                # The worker vanished after the check: nothing was delivered, use another one.
                self._replace(self.workers.index(w), f"worker {w.index} vanished")
                continue
            w.busy_with = rid
            break
        while rid not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._replace(self.workers.index(w), f"worker {w.index} did not answer within {timeout_s:g} s")
                break
            self._pump(min(100, max(1, int(remaining * 1000))))
            if rid not in self._pending:
                self._check_processes()
        msg = self._pending.pop(rid)
        if msg.kind == Kind.ERROR:
            raise from_wire(msg.body)
        if msg.tensors:
            msg.tensors = [(n, np.array(a)) for n, a in msg.tensors]
        elif w.arena is not None and self._program is not None:
            msg.tensors = [(s.name, v.copy()) for s, v in zip(self._program.outputs, w.arena.outputs)]
        return msg

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
