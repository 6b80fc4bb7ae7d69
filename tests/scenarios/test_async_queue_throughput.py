"""S9 (async queues) of the mission, on a timing-only daemon.

The legacy ``create_async`` submit/recv API at queue depth ≥ 8 sustains the throughput of
``worker_num`` workers driven by the load test (S8, ``test_workers_law.py``). Both run on the
stretched stack of ``stretched.py`` (NPU time 1.5× the CPU time of a request).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from npusim.client import session
from tests.scenarios.stretched import SIZE
from tests.scenarios.stretched import run_throughput as _run

pytestmark = pytest.mark.timeout(240)


def test_s9_async_queue_at_depth_8_sustains_the_worker_throughput(stretched: tuple[bytes, float]) -> None:
    model, _ = stretched
    reference = _run(model, 4)
    x = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    submitter, queue = session.create_async(model, worker_num=4, input_queue_size=8, output_queue_size=16)
    try:
        for i in range(8):  # warm-up, and the queue depth
            submitter.submit(x, context=i)
        for _ in range(8):
            queue.recv(10_000)
        depth, n = 8, 0
        for i in range(depth):
            submitter.submit(x, context=i)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 1.5:
            queue.recv(10_000)
            n += 1
            submitter.submit(x, context=n)  # keep `depth` in flight
        rate = n / (time.perf_counter() - t0)
        for _ in range(depth):
            queue.recv(10_000)
    finally:
        submitter.close()
        queue.close()
    assert rate >= 0.85 * reference["qps"], (rate, reference["qps"])
