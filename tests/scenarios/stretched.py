"""A private stack whose NPU time is stretched, shared by the S8 and S9 scenarios
(``test_workers_law.py`` and ``test_async_queue_throughput.py``; the fixtures are in
``conftest.py`` beside this file).

The NPU time is stretched with the daemon's ``--time-scale`` to 1.5× the CPU time per
request measured first (and at least 4 ms), so the emulated chip, not the Python
overhead of a shared 2-core host, is what the workers feed; the bounds keep a margin for
that host's noise (the benchmark ``benchmarks/workers.py`` holds the 90 % goal).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from npusim.client.bench import BenchConfig, bench
from npusim.services.zoo import small_cnn
from tests.helpers import start_stack

SIZE = 160


def _probe_scale(model: bytes) -> float:
    """On a daemon at time scale 1: the scale that makes the NPU time 1.5× a request's CPU time."""
    pq = bench(BenchConfig(model, workers=1, workload="latency", queries=30, warmup=5))["result"]["per_query"]
    return max(1.5 * pq["cpu_us"] / pq["npu_exec_us"], 4000.0 / pq["npu_exec_us"])


def stretched_stack() -> Iterator[tuple[bytes, float, dict[str, str]]]:
    """A private stack whose daemon's NPU time is 1.5× the CPU time of a request."""
    model = small_cnn(height=SIZE, width=SIZE).SerializeToString()
    with pytest.MonkeyPatch.context() as mp:
        with start_stack(daemon_args=("--timing-only",)) as probe:
            for k, v in probe.env().items():
                mp.setenv(k, v)
            scale = _probe_scale(model)
        with start_stack(daemon_args=("--timing-only", "--time-scale", f"{scale:g}")) as stack:
            yield model, scale, stack.env()


def run_throughput(model: bytes, workers: int, seconds: float = 1.5) -> dict:
    return bench(BenchConfig(model, workers=workers, workload="throughput", duration_s=seconds,
                             warmup=2 * workers))["result"]
