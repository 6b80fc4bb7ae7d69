"""Per-request overhead of client → worker → daemon → worker → client.

The program is an identity on a uint8 tensor with no CPU operators, and the daemon runs
with ``--time-scale 0`` so no emulated NPU or DMA time is added: what remains is the
pipeline itself. Interleaved with it, request by request, so both see the same load:

- a raw pyzmq DEALER→ROUTER echo of the same bytes between two processes over ipc
  (the reference the goal is stated against), and
- a bare pyzmq chain of the pipeline's shape: a small message to a forwarder process,
  which round-trips the bytes to an echo process and answers (the floor that any design
  with separate worker processes pays, before any of npusim's own work).

    python benchmarks/pipeline_overhead.py [--requests N] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _echo import echo  # noqa: E402

from npusim.services import launch  # noqa: E402
from npusim.services.program import NpuStage, NpuStep, Program, TensorSpec  # noqa: E402
from npusim.services.zoo import identity  # noqa: E402

SIZES = {"150KB": (1, 3, 224, 224), "1.2MB": (1, 3, 640, 640)}


def identity_program(shape: tuple[int, ...]) -> bytes:
    """A program whose one NPU stage passes a uint8 tensor through: no host operators at all."""
    spec = TensorSpec("input", "uint8", shape, "NCHW")
    out = TensorSpec("output", "uint8", shape, "NCHW")
    stage = NpuStage(identity(list(shape)).SerializeToString(), [spec], [out], [spec], [out],
                     estimate={"npu_ns": 0.0, "job_overhead_ns": 0.0})
    return Program(target="warboy-2pe", batch_size=1, inputs=[spec], outputs=[out],
                   steps=[NpuStep(0, ["input"], ["output"])], stages=[stage], meta={"model": "identity"}).to_bytes()


def _forwarder(front: str, back: str, nbytes: int, ready: mp.synchronize.Event) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.bind(front)
    d = ctx.socket(zmq.DEALER)
    d.connect(back)
    data = np.zeros(nbytes, np.uint8)
    ready.set()
    while True:
        ident, msg = s.recv_multipart()
        if msg == b"quit":
            break
        d.send_multipart([b"h", data], copy=False)
        d.recv_multipart(copy=False)
        s.send_multipart([ident, b"done"])
    s.close(linger=0)
    d.close(linger=0)
    ctx.term()


def _echo(endpoint: str, ready: Any) -> None:
    echo(endpoint, ready, unbounded=False)


class RawEcho:
    """A DEALER talking to a ROUTER echo in another process: the floor of one ZeroMQ hop."""

    def __init__(self, tmp: str) -> None:
        self.endpoint = f"ipc://{tmp}/echo.sock"
        ctx = mp.get_context("spawn")
        ready = ctx.Event()
        self.proc = ctx.Process(target=_echo, args=(self.endpoint, ready), daemon=True)
        self.proc.start()
        ready.wait(30)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.connect(self.endpoint)

    def roundtrip(self, data: np.ndarray) -> None:
        self.sock.send_multipart([b"h", data], copy=False)
        self.sock.recv_multipart(copy=False)

    def chain(self, nbytes: int, tmp: str) -> Chain:
        return Chain(self, nbytes, tmp)

    def close(self) -> None:
        self.sock.send_multipart([b"quit"])
        self.proc.join(10)
        self.sock.close(linger=0)
        self.ctx.term()


class Chain:
    """client → forwarder (small message) → echo (the bytes) → forwarder → client."""

    def __init__(self, echo: RawEcho, nbytes: int, tmp: str) -> None:
        front = f"ipc://{tmp}/fwd-{nbytes}.sock"
        ctx = mp.get_context("spawn")
        ready = ctx.Event()
        self.proc = ctx.Process(target=_forwarder, args=(front, echo.endpoint, nbytes, ready), daemon=True)
        self.proc.start()
        ready.wait(30)
        self.sock = echo.ctx.socket(zmq.DEALER)
        self.sock.connect(front)

    def roundtrip(self) -> None:
        self.sock.send(b"job")
        self.sock.recv()

    def close(self) -> None:
        self.sock.send(b"quit")
        self.proc.join(10)
        self.sock.close(linger=0)


def measure(n: int, shape: tuple[int, ...], echo: RawEcho, tmp: str) -> dict[str, list[float]]:
    """Interleave pipeline requests, raw round trips and chain round trips (same load for all)."""
    from npusim.client import session

    x = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    out: dict[str, list[float]] = {"pipeline": [], "raw": [], "chain": [], **{h: [] for h in HOPS}}
    chain = echo.chain(x.nbytes, tmp)
    try:
        with session.create(identity_program(shape)) as sess:
            for i in range(n + max(2, n // 10)):
                m0 = time.monotonic_ns()
                t0 = time.perf_counter()
                y = sess.run(x)
                t1 = time.perf_counter()
                m1 = time.monotonic_ns()
                echo.roundtrip(x)
                t2 = time.perf_counter()
                chain.roundtrip()
                t3 = time.perf_counter()
                if i >= max(2, n // 10):
                    out["pipeline"].append((t1 - t0) * 1e6)
                    out["raw"].append((t2 - t1) * 1e6)
                    out["chain"].append((t3 - t2) * 1e6)
                    for h, us in hops(sess.last_timing, m0, m1).items():
                        out[h].append(us)
            assert np.array_equal(y[0], x), "the identity program changed its input"
    finally:
        chain.close()
    return out


HOPS = {
    "caller_to_job_sent": "caller: check the inputs, queue the job, copy them into the arena, send JOB",
    "job_to_worker": "JOB over the session's socket until the worker has it",
    "worker_to_daemon": "worker: decode JOB, send RUN with the bytes; the daemon wakes and reads it",
    "daemon": "daemon: decode, schedule, (compute), encode and send RESULT",
    "daemon_to_worker_done": "RESULT with the bytes to the worker; decode, outputs into the arena, DONE",
    "done_to_client": "DONE over the session's socket; the client decodes it and copies the outputs out",
    "client_to_caller": "resolve the job's future and return the arrays",
}
"""One request's path, hop by hop, from the ``time.monotonic_ns`` stamps each process puts in its
timing (one clock for all processes of a host)."""


def hops(t: dict, m0: int, m1: int) -> dict[str, float]:
    c = t["client"]
    marks = [m0, c["sent_ns"], t["worker_received_ns"], t["arrival_ns"], t["sent_ns"], t["worker_sent_ns"],
             c["done_ns"], m1]
    return {h: (b - a) / 1e3 for h, a, b in zip(HOPS, marks, marks[1:])}


def stats(xs: list[float]) -> dict[str, float]:
    return {"p50_us": float(np.percentile(xs, 50)), "p99_us": float(np.percentile(xs, 99))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--smoke", action="store_true", help="a few requests: check that it runs")
    ap.add_argument("--json", action="store_true", help="print one JSON object of every figure")
    args = ap.parse_args()
    n = 20 if args.smoke else args.requests
    tmp = tempfile.mkdtemp(prefix="npusim-b-", dir="/tmp")
    daemon = launch.start("daemon", "npu0", f"ipc://{tmp}/npu0.sock", Path(tmp), extra=["--time-scale", "0"])
    results: dict[str, dict[str, float]] = {}
    echo = None
    try:
        launch.wait_healthy([daemon])
        os.environ["NPUSIM_DAEMON_ENDPOINTS"] = f"npu0={daemon.endpoint}"
        os.environ["NPUSIM_NO_EMBED"] = "1"
        echo = RawEcho(tmp)
        for label, shape in SIZES.items():
            nbytes = int(np.prod(shape))
            m = measure(n, shape, echo, tmp)
            raw, path, chain = stats(m["raw"]), stats(m["pipeline"]), stats(m["chain"])
            results[label] = {
                "bytes": nbytes,
                "pipeline_p50_us": path["p50_us"], "pipeline_p99_us": path["p99_us"],
                "raw_zmq_rt_p50_us": raw["p50_us"], "raw_zmq_rt_p99_us": raw["p99_us"],
                "chain_floor_p50_us": chain["p50_us"], "chain_floor_p99_us": chain["p99_us"],
                "overhead_p50_us": path["p50_us"] - raw["p50_us"],
                "ratio_p50": path["p50_us"] / raw["p50_us"],
                "above_floor_p50_us": path["p50_us"] - chain["p50_us"],
                "ratio_to_floor_p50": path["p50_us"] / chain["p50_us"],
                "hops_p50_us": {h: float(np.percentile(m[h], 50)) for h in HOPS},
            }
    finally:
        if echo is not None:
            echo.close()
        launch.stop_all([daemon])
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(results))
        return
    print(f"{n} requests per size, interleaved with a raw pyzmq round trip of the same bytes and a bare "
          "pyzmq chain of the pipeline's shape")
    print(f"{'size':>6} {'pipeline p50':>13} {'p99':>9} {'raw RT p50':>11} {'chain p50':>10} "
          f"{'overhead vs raw':>16} {'× raw':>6} {'above chain':>12} {'× chain':>8}")
    for label, r in results.items():
        print(f"{label:>6} {r['pipeline_p50_us']:>11.0f}µs {r['pipeline_p99_us']:>7.0f}µs "
              f"{r['raw_zmq_rt_p50_us']:>9.0f}µs {r['chain_floor_p50_us']:>8.0f}µs "
              f"{r['overhead_p50_us']:>14.0f}µs {r['ratio_p50']:>5.2f}× {r['above_floor_p50_us']:>10.0f}µs "
              f"{r['ratio_to_floor_p50']:>7.2f}×")
    print("\none request hop by hop, p50 (the hops' p50s need not add up to the total's):")
    print(f"{'hop':<24}" + "".join(f"{label:>9}" for label in results) + "   what happens")
    for h, what in HOPS.items():
        print(f"{h:<24}" + "".join(f"{r['hops_p50_us'][h]:>7.0f}µs" for r in results.values()) + f"   {what}")


if __name__ == "__main__":
    main()
