"""``advise``'s predicted gains, run live: for the changes a stretched live run can show (the
device-side ones: batch size, PE mode), the gain ``advise --time-scale K`` predicts agrees with
the one ``bench`` measures against a timing-only daemon at the same K within ±10%.

K stretches one batch-1 request's execution to about 40 ms, so this emulator's own transport
(about a millisecond a request for these small tensors) stays a small share of what is compared.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from npusim.client.bench import BenchConfig, bench
from npusim.client.hostcost import measure_steps
from npusim.compiler_svc.advise import AdviseConfig, advise
from npusim.compiler_svc.estimate import compile_programs
from npusim.services.sim import Pipeline
from npusim.services.zoo import build
from tests.helpers import start_stack

pytestmark = pytest.mark.timeout(300)

EXEC_MS = 40.0
TOLERANCE = 0.10


def _scale(data: bytes) -> float:
    (program,), _ = compile_programs(data, ["warboy-2pe"], [1])
    return float(f"{EXEC_MS * 1e6 / Pipeline.of(program, None, runtime_overhead_ns=0).npu_ns:.3g}")


@pytest.fixture
def stretched(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[bytes, float]]:
    data = build(request.param).SerializeToString()
    k = _scale(data)
    with start_stack(daemon_args=("--timing-only", "--time-scale", f"{k:g}")) as stack:
        for key, value in stack.env().items():
            monkeypatch.setenv(key, value)
        yield data, k


def _live(data: bytes, device: str, workers: int, batch: int, queries: int) -> float:
    r = bench(BenchConfig(data, device=device, workers=workers, batch=batch, workload="throughput", queries=queries,
                          warmup=max(5, 2 * workers)))["result"]
    return r["samples_per_s"]


def _recommend(data: bytes, k: float, check: str, **cfg: Any) -> dict[str, Any]:
    r = advise(AdviseConfig(target="throughput", time_scale=k, requests=300, **cfg), data, step_costs=measure_steps,
               only=(check,))
    (rec,) = r["recommendations"]
    return rec


@pytest.mark.parametrize("stretched", ["mnist"], indirect=True)
def test_the_batch_size_gain_is_the_live_one(stretched: tuple[bytes, float]) -> None:
    data, k = stretched
    rec = _recommend(data, k, "batch_size")
    batch = int(rec["change"].split("=")[1])
    predicted = rec["predicted"]["throughput_per_s"] / rec["predicted"]["before"]["throughput_per_s"]
    live = _live(data, "warboy(2)*1", 1, batch, 12) / _live(data, "warboy(2)*1", 1, 1, 40)
    assert predicted == pytest.approx(live, rel=TOLERANCE), (batch, predicted, live)


@pytest.mark.parametrize("stretched", ["mobilenet_v1"], indirect=True)
def test_the_pe_mode_gain_is_the_live_one(stretched: tuple[bytes, float]) -> None:
    data, k = stretched
    rec = _recommend(data, k, "pe_mode")
    assert "warboy(1)*2" in rec["change"]
    w = rec["details"]["workers"]
    predicted = rec["predicted"]["throughput_per_s"] / rec["predicted"]["before"]["throughput_per_s"]
    live = _live(data, "warboy(1)*2", w["single"], 1, 40) / _live(data, "warboy(2)*1", w["fused"], 1, 40)
    assert predicted == pytest.approx(live, rel=TOLERANCE), (predicted, live)
