"""Per-request overhead of client → worker → daemon → worker → client.

The program is an identity on a uint8 tensor with no CPU operators, and the daemon runs
with ``--time-scale 0`` so no emulated NPU or DMA time is added: what remains is the
pipeline itself. Next to it, in the same run: a raw pyzmq DEALER→ROUTER echo of the same
bytes between two processes over ipc (the floor any ZeroMQ hop costs on this machine).

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

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services import launch  # noqa: E402
from services.program import Program, TensorSpec  # noqa: E402
from services.zoo import identity  # noqa: E402

SIZES = {"150KB": (1, 3, 224, 224), "1.2MB": (1, 3, 640, 640)}


def identity_program(shape: tuple[int, ...]) -> bytes:
    spec = TensorSpec("input", "uint8", shape, "NCHW")
    out = TensorSpec("output", "uint8", shape, "NCHW")
    model = identity(list(shape))
    return Program(target="warboy-2pe", batch_size=1, inputs=[spec], outputs=[out], pre_ops=[[]], post_ops=[[]],
                   npu_inputs=[spec], npu_outputs=[out], graph_inputs=[spec], graph_outputs=[out],
                   npu_graph=model.SerializeToString(), estimate={"npu_ns": 0.0, "job_overhead_ns": 0.0},
                   meta={"model": "identity"}).to_bytes()


def _echo(endpoint: str, ready: mp.synchronize.Event) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.bind(endpoint)
    ready.set()
    while True:
        m = s.recv_multipart(copy=False)
        if len(m) == 2 and m[1].bytes == b"quit":
            break
        s.send_multipart(m, copy=False)
    s.close(linger=0)
    ctx.term()


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

    def close(self) -> None:
        self.sock.send_multipart([b"quit"])
        self.proc.join(10)
        self.sock.close(linger=0)
        self.ctx.term()


def measure(n: int, shape: tuple[int, ...], echo: RawEcho) -> tuple[list[float], list[float]]:
    """Interleave pipeline requests and raw round trips so both see the same machine load."""
    from client import session

    x = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    raw, path = [], []
    with session.create(identity_program(shape)) as sess:
        for i in range(n + max(2, n // 10)):
            t0 = time.perf_counter()
            y = sess.run(x)
            t1 = time.perf_counter()
            echo.roundtrip(x)
            t2 = time.perf_counter()
            if i >= max(2, n // 10):
                path.append((t1 - t0) * 1e6)
                raw.append((t2 - t1) * 1e6)
        assert np.array_equal(y[0], x), "the identity program changed its input"
    return path, raw


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
            path_us, raw_us = measure(n, shape, echo)
            raw, path = stats(raw_us), stats(path_us)
            results[label] = {
                "bytes": nbytes,
                "pipeline_p50_us": path["p50_us"], "pipeline_p99_us": path["p99_us"],
                "raw_zmq_rt_p50_us": raw["p50_us"], "raw_zmq_rt_p99_us": raw["p99_us"],
                "overhead_p50_us": path["p50_us"] - raw["p50_us"],
                "ratio_p50": path["p50_us"] / raw["p50_us"],
            }
    finally:
        if echo is not None:
            echo.close()
        launch.stop_all([daemon])
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(results))
        return
    print(f"{n} requests per size, each followed by a raw pyzmq round trip of the same bytes")
    print(f"{'size':>6} {'pipeline p50':>13} {'p99':>9} {'raw zmq RT p50':>15} {'p99':>9} "
          f"{'overhead p50':>13} {'ratio':>6}")
    for label, r in results.items():
        print(f"{label:>6} {r['pipeline_p50_us']:>11.0f}µs {r['pipeline_p99_us']:>7.0f}µs "
              f"{r['raw_zmq_rt_p50_us']:>13.0f}µs {r['raw_zmq_rt_p99_us']:>7.0f}µs "
              f"{r['overhead_p50_us']:>11.0f}µs {r['ratio_p50']:>5.2f}×")


if __name__ == "__main__":
    main()
