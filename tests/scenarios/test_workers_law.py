"""S8 (workers) of the mission, on a timing-only daemon: the law of CPU and NPU time.

Throughput rises with ``worker_num`` until the NPU saturates; the PE is then nearly always
busy and throughput is close to 1 / max(NPU, CPU / workers). The async queues at depth ≥ 8
(S9) are in ``test_async_queue_throughput.py``; both run on the stretched stack of
``stretched.py`` (NPU time 1.5× the CPU time of a request).
"""

from __future__ import annotations

import pytest

from tests.scenarios.stretched import run_throughput as _run

pytestmark = pytest.mark.timeout(240)


def test_s8_throughput_rises_with_workers_until_the_npu_saturates(stretched: tuple[bytes, float]) -> None:
    model, _ = stretched
    one, two, four = (_run(model, w) for w in (1, 2, 4))
    assert one["qps"] < 0.75 * one["ideal"]["qps"]  # one worker leaves the NPU idle during its CPU work
    assert two["qps"] > 1.3 * one["qps"], (one["qps"], two["qps"])  # CPU of one request overlaps NPU of another
    # four workers offer more than the NPU can take (a request's round trip < 2 NPU times): saturated
    assert four["ideal"]["bound_by"] == "npu", four["ideal"]
    assert four["ratio_to_ideal"] >= 0.85, four
    assert next(iter(four["npu_utilization_pct"].values())) >= 85.0, four["npu_utilization_pct"]
    assert four["qps"] <= 1.05 * four["ideal"]["qps"]  # never faster than the chip
