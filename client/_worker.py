"""A client worker process: runs a program's steps — host operators, NPU stages on the daemon, CPU steps.

``python -m npusim.client._worker`` is started by a session's :class:`~client._workers.WorkerPool`.
It connects a DEALER to the session's ROUTER and announces itself with READY; SETUP
brings the program and the daemon to use; each JOB is handled start to finish (one at a
time per worker: parallelism comes from having several workers). Anything that goes wrong
in a job is answered as an ERROR for that job; the worker keeps serving. It exits on STOP
or when its parent process is gone.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from opentelemetry import trace

from npusim.client._shm import Arena, layout_of, remove_leftovers
from npusim.client.ops import load_op
from npusim.services import tracing
from npusim.services.errors import DeviceUnavailable, NpusimError, ProtocolError, ServiceError
from npusim.services.program import CpuStep, NpuStep, OpStep, Program
from npusim.services.protocol import Kind, Message, decode, encode, error_message
from npusim.services.rpc import Peer
from npusim.services.sockets import new_socket, recv_frames, send_frames

log = logging.getLogger("npusim.worker")

ORPHAN_CHECK_MS = 500
"""How long an idle worker waits for a message before it checks that its session is alive."""


class Worker:
    def __init__(self, index: int, ctx: zmq.Context) -> None:
        self.index = index
        self.ctx = ctx
        self.program: Program | None = None
        self.runners: list[Any] = []  # one per step: a CpuOperator, an onnxruntime session, or None (NPU)
        self.daemon: Peer | None = None
        self.handle = ""
        self.arena: Arena | None = None

    def setup(self, msg: Message) -> Message:
        if self.program is not None:
            raise ProtocolError("a worker is set up once")
        self.program = Program.from_bytes(msg.tensor("program"))
        self.runners = [_runner(step) for step in self.program.steps]
        for r in self.runners:
            if hasattr(r, "warm"):
                r.warm()  # before SETUP_OK: the session is ready only once its workers are
        b = msg.body
        self.daemon = Peer(b["daemon"], name=b["device"], ctx=self.ctx, timeout_s=float(b["timeout_s"]),
                           unavailable=DeviceUnavailable, watch_disconnect=True)
        self.daemon.adopt_limit(b.get("max_message_bytes"))
        self.handle = b["handle"]
        self.arena = Arena(Path(b["arena"]), layout_of(self.program), create=False) if b.get("arena") else None
        return msg.reply(Kind.SETUP_OK)

    def job(self, msg: Message, received_ns: int = 0) -> Message:
        """Run one job; its timing says when this worker got it and when it answered
        (``time.monotonic_ns``, comparable across the processes of one host)."""
        if self.program is None or self.daemon is None:
            raise ProtocolError("JOB before SETUP")
        parent = tracing.extract(msg.traceparent)
        remote: list[dict[str, Any]] = []
        if parent is None:
            outputs, timing = self._pipeline(msg, remote, traced=False)
            body: dict[str, Any] = {"timing": timing}
        else:
            collect = bool(msg.body.get("collect"))
            with tracing.capture(collect) as spans, tracing.tracer().start_as_current_span(
                    "worker.job", context=parent, attributes={"worker": self.index}):
                outputs, timing = self._pipeline(msg, remote, traced=True)
            body = {"timing": timing}
            if collect:
                body["spans"] = [tracing.to_record(s) for s in spans] + remote
        if self.arena is not None:
            for slot, (name, y) in zip(self.arena.outputs, outputs):
                if y.shape != slot.shape or y.dtype != slot.dtype:
                    raise ServiceError(f"output {name!r} is {y.dtype}{y.shape}, the program declares "
                                       f"{slot.dtype}{slot.shape}")
                np.copyto(slot, y)
            outputs = []
        timing.update(worker_received_ns=received_ns, worker_sent_ns=time.monotonic_ns())
        return msg.reply(Kind.DONE, body, outputs)

    def _pipeline(self, msg: Message, remote: list[dict[str, Any]], *,
                  traced: bool) -> tuple[list[tuple[str, np.ndarray]], dict]:
        """Run the program's steps over a table of named tensors."""
        assert self.program is not None and self.daemon is not None
        p = self.program
        if msg.tensors:
            inputs = [x for _, x in msg.tensors]
        elif self.arena is not None:
            inputs = self.arena.inputs
        else:
            raise ProtocolError("JOB without tensors for a worker without an arena")
        if len(inputs) != len(p.inputs):
            raise ProtocolError(f"JOB carries {len(inputs)} tensors, the program takes {len(p.inputs)}")
        env: dict[str, np.ndarray] = {spec.name: x for spec, x in zip(p.inputs, inputs)}
        timings: list[dict[str, Any]] = []
        collect = bool(msg.body.get("collect"))
        started = time.perf_counter_ns()
        waited = 0  # in NPU round trips: the rest of the job is this worker's CPU time
        for step, runner in zip(p.steps, self.runners):
            if isinstance(step, OpStep):
                env[step.output] = runner.run(env[step.input])
            elif isinstance(step, CpuStep):
                env.update(_run_graph(runner, step, env))
            else:
                tp = tracing.inject() if traced and trace.get_current_span().is_recording() else None
                t0 = time.perf_counter_ns()
                reply = self.daemon.request(Kind.RUN, {"handle": self.handle, "stage": step.stage, "collect": collect},
                                            [(n, env[n]) for n in step.inputs], traceparent=tp)
                waited += time.perf_counter_ns() - t0
                remote.extend(reply.body.get("spans") or [])
                timings.append(reply.body.get("timing", {}))
                env.update((n, a) for n, (_, a) in zip(step.outputs, reply.tensors))
        timing = _timing(timings)
        total = time.perf_counter_ns() - started
        timing.update(worker_ns=total, npu_wait_ns=waited, cpu_ns=total - waited, worker=self.index)
        return [(spec.name, env[spec.name]) for spec in p.outputs], timing


def _runner(step: OpStep | CpuStep | NpuStep) -> Any:
    if isinstance(step, OpStep):
        return load_op(step.op, step.attrs)
    if isinstance(step, CpuStep):
        import onnxruntime as ort  # only programs with CPU fallback operators need it here

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        return ort.InferenceSession(step.graph, so, providers=["CPUExecutionProvider"])
    return None


def _run_graph(session: Any, step: CpuStep, env: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """Operators the chip does not run, on the host; one span for the group."""
    feeds = {n: env[n] for n in step.inputs}
    if trace.get_current_span().is_recording():
        names = ",".join(o["op_type"] for o in step.ops)
        with tracing.tracer().start_as_current_span("cpu.fallback", attributes={"ops": names}):
            outs = session.run(step.outputs, feeds)
    else:
        outs = session.run(step.outputs, feeds)
    return list(zip(step.outputs, outs))


def _timing(stages: list[dict[str, Any]]) -> dict[str, Any]:
    """One NPU stage: its timing; several: their sums, and each under ``stages``."""
    if len(stages) == 1:
        return dict(stages[0], stages=stages)
    return {"exec_ns": sum(t.get("exec_ns", 0) for t in stages),
            "emulated_ns": sum(t.get("emulated_ns", 0) for t in stages),
            "replied_ns": sum(t.get("replied_ns", 0) for t in stages),
            "host_bound": any(t.get("host_bound") for t in stages),
            "zero_filled": any(t.get("zero_filled") for t in stages), "stages": stages}


def _orphaned(endpoint: str, client_pid: int) -> None:
    """The session's process died without closing us: remove its socket directory and arenas."""
    path = Path(endpoint.removeprefix("ipc://")).parent
    if path.name.startswith("npusim-w-"):
        shutil.rmtree(path, ignore_errors=True)
    remove_leftovers(client_pid)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m npusim.client._worker")
    p.add_argument("--connect", required=True)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--parent-pid", type=int, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("NPUSIM_LOG_LEVEL", "WARNING").upper())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    tracing.setup_tracing("worker", instance=f"worker-{args.index}")
    ctx = zmq.Context()
    sock = new_socket(ctx, zmq.DEALER, rcvtimeo_ms=ORPHAN_CHECK_MS)
    sock.setsockopt(zmq.IDENTITY, f"w{args.index}-{os.getpid()}".encode())
    sock.connect(args.connect)
    sock.send_multipart(encode(Message(Kind.READY, 0, {"worker": args.index, "pid": os.getpid()})))
    worker = Worker(args.index, ctx)
    try:
        while True:
            try:
                frames = recv_frames(sock)  # a blocking receive: one call into libzmq per job
            except zmq.Again:
                if os.getppid() != args.parent_pid:
                    _orphaned(args.connect, args.parent_pid)
                    return 0
                continue
            received = time.monotonic_ns()
            try:
                msg = decode(frames)
            except ProtocolError as e:
                sock.send_multipart(encode(error_message(0, e)))
                continue
            if msg.kind == Kind.STOP:
                return 0
            try:
                if msg.kind == Kind.SETUP:
                    reply = worker.setup(msg)
                elif msg.kind == Kind.JOB:
                    reply = worker.job(msg, received)
                else:
                    raise ProtocolError(f"a worker does not handle {msg.kind.name}")
            except NpusimError as e:
                reply = error_message(msg.id, e)
            except Exception as e:  # noqa: BLE001 - the request fails, the worker lives on
                log.exception("worker %d: job failed", args.index)
                reply = error_message(msg.id, e)
            send_frames(sock, encode(reply))
    finally:
        if worker.daemon is not None:
            worker.daemon.close()
        sock.close(linger=1000)
        tracing.shutdown()
        ctx.term()


if __name__ == "__main__":
    sys.exit(main())
