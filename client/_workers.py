"""A session's worker processes and the ROUTER socket that feeds them.

Workers are separate processes (``python -m client._worker``), not threads, so CPU
operators of several requests really run in parallel with each other and with the NPU.
Each worker announces itself with READY and then serves one job at a time; the pool hands
a job to an idle worker, waits for its DONE, and notices a worker that died: its job ends
in :class:`~services.errors.WorkerCrashed` and a replacement is started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
import numpy as np
import zmq

from client._shm import Arena
from services.errors import ServiceUnavailable, WorkerCrashed, from_wire
from services.program import Program
from services.protocol import Kind, Message, decode, encode
from services.sockets import new_socket

__all__ = ["WorkerPool"]

START_TIMEOUT_S = 60.0


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    identity: bytes | None = None
    ready: bool = False  # READY received and SETUP done
    busy_with: int | None = None
    arena: Arena | None = None
    setup_sent: bool = False
    started: float = field(default_factory=time.monotonic)


class WorkerPool:
    """``n`` worker processes; ``call`` runs one job on an idle one."""

    def __init__(self, n: int, *, ctx: zmq.Context | None = None) -> None:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"worker_num must be a positive integer, got {n!r}")
        self.ctx = ctx or zmq.Context.instance()
        self._dir = tempfile.mkdtemp(prefix="npusim-w-", dir="/tmp")
        self.endpoint = f"ipc://{self._dir}/w.sock"
        self.sock = new_socket(self.ctx, zmq.ROUTER)
        self.sock.bind(self.endpoint)
        self.workers: list[_Worker] = []
        self._setup: Message | None = None
        self._program: Program | None = None
        self._next_id = 1
        self._pending: dict[int, Message] = {}
        for i in range(n):
            self.workers.append(self._spawn(i))

    def _spawn(self, index: int) -> _Worker:
        cmd = [sys.executable, "-m", "client._worker", "--connect", self.endpoint, "--index", str(index),
               "--parent-pid", str(os.getpid())]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
        return _Worker(index, proc)

    # -- start-up ---------------------------------------------------------------------
    def setup(self, program: bytes, *, daemon: str, device: str, handle: str, timeout_s: float) -> None:
        """Send every worker the program and its device; wait until all are ready."""
        self._program = Program.from_bytes(program)
        self._setup = Message(Kind.SETUP, 0, {"daemon": daemon, "device": device, "handle": handle,
                                              "timeout_s": timeout_s},
                              [("program", np.frombuffer(program, dtype=np.uint8))])
        self._send_setups()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(w.ready for w in self.workers):
            self._check_processes(during_start=True)
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"workers did not start within {START_TIMEOUT_S:g} s")
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
            ident = frames[0].bytes
            msg = decode(frames[1:])
            w = next((x for x in self.workers if x.identity == ident), None)
            if msg.kind == Kind.READY:
                idx = msg.body["worker"]
                w = next((x for x in self.workers if x.index == idx and x.proc.pid == msg.body["pid"]), None)
                if w is None:
                    continue  # a worker we already replaced
                w.identity = ident
            elif msg.kind in (Kind.SETUP_OK, Kind.ERROR) and w is not None and not w.ready and msg.id == 0:
                if msg.kind == Kind.ERROR:
                    raise from_wire(msg.body)
                w.ready = True
                if w.arena is not None:
                    w.arena.unlink()  # both sides have it mapped now
            elif w is not None and w.busy_with == msg.id:
                w.busy_with = None
                self._pending[msg.id] = msg
            self._send_setups()

    def _send_setups(self) -> None:
        """Give every announced worker that has none yet its arena and SETUP."""
        if self._setup is None or self._program is None:
            return
        for w in self.workers:
            if w.identity is None or w.setup_sent or w.proc.poll() is not None:
                continue
            w.arena = Arena.create(self._program, f"w{w.index}")
            body = dict(self._setup.body)
            if w.arena is not None:
                body["arena"] = str(w.arena.path)
            w.setup_sent = True
            self._send(w, Message(Kind.SETUP, 0, body, self._setup.tensors))

    def _check_processes(self, *, during_start: bool = False) -> None:
        """Replace dead workers; the job a dead worker held ends in WorkerCrashed."""
        for i, w in enumerate(self.workers):
            rc = w.proc.poll()
            if rc is None:
                continue
            if during_start:
                raise ServiceUnavailable(f"worker {w.index} exited with code {rc} while starting")
            self._replace(i)
            if w.busy_with is not None:
                self._pending[w.busy_with] = Message(Kind.ERROR, w.busy_with, {
                    "code": WorkerCrashed.code, "message":
                    f"worker {w.index} (pid {w.proc.pid}) died with exit code {rc} while running this request; "
                    "it has been replaced, retry the request", "details": {"exit_code": rc}})

    def _replace(self, i: int) -> None:
        w = self.workers[i]
        if w.proc.poll() is None:
            w.proc.kill()
        if w.arena is not None:
            w.arena.unlink()
            w.arena.close()
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
                    raise ServiceUnavailable(f"no worker became ready within {timeout_s:g} s")
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
                self._replace(self.workers.index(w))
                continue
            w.busy_with = rid
            break
        while rid not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                w.busy_with = None
                raise ServiceUnavailable(f"worker {w.index} did not finish the request within {timeout_s:g} s")
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
                w.proc.terminate()
                try:
                    w.proc.wait(1.0)
                except subprocess.TimeoutExpired:
                    w.proc.kill()
                    w.proc.wait()
        for w in self.workers:
            if w.arena is not None:
                w.arena.unlink()
                w.arena.close()
        self.sock.close(linger=0)
        shutil.rmtree(self._dir, ignore_errors=True)

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers]

