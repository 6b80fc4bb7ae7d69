"""The pipeline in virtual time: exact times where the answer is known in closed form, the
throughput law, host-core contention, open loops, back-pressure, determinism, capacity."""

from __future__ import annotations

from pathlib import Path

import pytest

from npusim.services.devices import assign_pes, parse_devices
from npusim.services.errors import ConfigError
from npusim.services.sim import (Phase, Pipeline, Scenario, SessionSpec, closed, combined, constant, from_file, poisson,
                                 simulate)
from npusim.services.sim import summarize as _summarize
from npusim.services.sim.capacity import capacity, parse_slo
from npusim.services.timing import StageTiming

US = 1000


def _stage(exec_us: int, h2d_us: int = 10, d2h_us: int = 5) -> StageTiming:
    return StageTiming(h2d_ns=h2d_us * US, d2h_ns=d2h_us * US, exec_ns=exec_us * US, exec_shared_ns=exec_us * US,
                       compute_ns=exec_us * US, cycles=0, in_bytes=1, out_bytes=1)


def _pipeline(host_us: int, exec_us: int, post_us: int = 0) -> Pipeline:
    phases = [Phase(host_us * US, name="pre"), Phase(stage=_stage(exec_us), name="npu")]
    if post_us:
        phases.append(Phase(post_us * US, name="post"))
    return Pipeline(tuple(phases))


def _one(pipeline: Pipeline, *, workers: int = 1, load=None, pes=((0, "pe0-1"),), cores: int = 8, n: int = 400,
         warmup: int = 20, queue: int = 1024) -> dict:
    spec = SessionSpec(pipeline, pes, workers, load or closed(1), queue)
    return _summarize(simulate(Scenario((spec,), cores, n, warmup)))[0]


def test_a_lone_request_takes_exactly_its_host_time_plus_dma_and_execution() -> None:
    r = _one(_pipeline(100, 500, post_us=30))
    assert r["latency"]["min_us"] == r["latency"]["max_us"] == 100 + 10 + 500 + 5 + 30
    assert r["queue_wait"]["max_us"] == 0


def test_one_worker_alternates_host_and_npu_and_more_workers_saturate_the_npu() -> None:
    p = _pipeline(300, 500)  # per request: 300 µs host, 515 µs device path, 500 µs on the PE
    one = _one(p, load=closed(8))
    assert one["qps"] == pytest.approx(1e6 / 815, rel=1e-6)
    assert one["bound_by"] == "workers"
    two = _one(p, workers=2, load=closed(8))
    # two workers overlap one's host work with the other's NPU job: the PE sets the pace
    assert two["qps"] == pytest.approx(1e6 / 500, rel=1e-3)
    assert two["bound_by"] == "npu" and two["npu_utilization_pct"]["npu0pe0"] > 99.5


def test_workers_share_the_host_cores() -> None:
    p = _pipeline(1000, 100)  # host-heavy
    r = _one(p, workers=4, load=closed(8), cores=1)
    assert r["qps"] == pytest.approx(1e6 / 1000, rel=1e-3)
    assert r["bound_by"] == "cpu" and r["host_cpu_utilization_pct"] > 99.5
    assert _one(p, workers=4, load=closed(8), cores=4)["qps"] > 3.5 * r["qps"]


def test_two_single_pes_run_two_streams() -> None:
    p = _pipeline(10, 500)
    fused = _one(p, workers=4, load=closed(8))
    pair = _one(p, workers=4, load=closed(8), pes=((0, "pe0"), (0, "pe1")))
    assert set(pair["npu_utilization_pct"]) == {"npu0pe0", "npu0pe1"}
    assert pair["qps"] == pytest.approx(2 * fused["qps"], rel=1e-2)  # same exec time given: twice the rate


def test_sessions_on_their_own_pes_add_up_and_share_the_host() -> None:
    p = _pipeline(300, 500)
    specs = tuple(SessionSpec(p, ((0, pe),), 1, closed(2)) for pe in ("pe0", "pe1"))
    both = combined(simulate(Scenario(specs, 8, 400, 20)))
    alone = _one(p, load=closed(2), pes=((0, "pe0"),))
    assert len(both["sessions"]) == 2 and both["queries"] == 800
    assert both["samples_per_s"] == pytest.approx(2 * alone["samples_per_s"], rel=1e-6)
    assert both["latency"]["p50_us"] == alone["latency"]["p50_us"] == 2 * 815  # one waits for the other's 815 µs
    assert set(both["npu_utilization_pct"]) == {"npu0pe0", "npu0pe1"}
    # on one host core both sessions' host work lands on that core: 2 × 300 µs of every 815 µs
    one_core = combined(simulate(Scenario(specs, 1, 400, 20)))
    assert one_core["samples_per_s"] <= both["samples_per_s"]
    assert one_core["host_cpu_utilization_pct"] == pytest.approx(100 * 2 * 300 / 815, rel=1e-3)
    assert combined(simulate(Scenario(specs[:1], 8, 400, 20))) == alone


def test_a_slow_caller_fills_the_output_queue_and_holds_the_workers() -> None:
    p = _pipeline(100, 200)
    fast = SessionSpec(p, ((0, "pe0-1"),), 2, closed(8))
    slow = SessionSpec(p, ((0, "pe0-1"),), 2, closed(8), output_queue=1, consumer_ns=1000 * US)
    r = _summarize(simulate(Scenario((slow,), 8, 400, 20)))[0]
    assert r["qps"] == pytest.approx(1e6 / 1000, rel=1e-6)  # the caller's 1 ms per answer sets the pace
    assert r["worker_utilization_pct"] > 99  # workers wait with finished answers for room in the queue
    assert r["bound_by"] == "caller"
    assert r["npu_utilization_pct"]["npu0pe0"] < 25
    assert _summarize(simulate(Scenario((fast,), 8, 400, 20)))[0]["qps"] > 4 * r["qps"]
    with pytest.raises(ConfigError, match="output queue"):
        SessionSpec(p, ((0, "pe0-1"),), 1, closed(1), output_queue=0)


def test_an_open_loop_below_capacity_is_served_at_its_rate_without_waiting() -> None:
    r = _one(_pipeline(100, 500), workers=2, load=constant(1000.0), n=2000)
    assert r["qps"] == pytest.approx(1000.0, rel=1e-3)
    assert r["queue_wait"]["max_us"] == 0
    assert r["latency"]["p99_us"] == 615
    assert r["bound_by"] == "load"


def test_an_open_loop_above_capacity_waits_in_the_queue_and_then_in_the_submitter() -> None:
    p = _pipeline(100, 500)
    small = _one(p, load=constant(3000.0), n=2000, queue=4)
    assert small["qps"] == pytest.approx(1e6 / 615, rel=1e-2)  # served at the pipeline's pace
    assert small["latency"]["p99_us"] > 100 * 615  # the backlog grows with the run
    assert small["queue_wait"]["p99_us"] > small["latency"]["p99_us"] * 0.9


def test_a_seed_gives_one_answer_and_another_seed_another() -> None:
    p = _pipeline(100, 500)
    a = _one(p, workers=2, load=poisson(1200.0, seed=1), n=3000)
    b = _one(p, workers=2, load=poisson(1200.0, seed=1), n=3000)
    c = _one(p, workers=2, load=poisson(1200.0, seed=2), n=3000)
    assert a == b
    assert a["latency"] != c["latency"]


def test_arrivals_from_a_file_are_all_served(tmp_path: Path) -> None:
    f = tmp_path / "arrivals.txt"
    f.write_text("# seconds\n0\n0.001\n0.0015  # a burst\n0.0016\n0.01\n")
    spec = SessionSpec(_pipeline(100, 500), ((0, "pe0-1"),), 1, from_file(f))
    run = simulate(Scenario((spec,), 2, requests=1000))
    assert len(run.sessions[0].end) == 5  # the file ran out: those are all
    assert run.sessions[0].arrival == [0, 1_000_000, 1_500_000, 1_600_000, 10_000_000]


@pytest.mark.parametrize("text, why", [("0.1\n0.05\n", "rising"), ("abc\n", "not a time"), ("# nothing\n", "no arrival")])
def test_a_bad_arrivals_file_is_refused_with_its_line(tmp_path: Path, text: str, why: str) -> None:
    f = tmp_path / "a.txt"
    f.write_text(text)
    with pytest.raises(ConfigError, match=why):
        from_file(f)


def test_slo_texts() -> None:
    assert parse_slo("p99<5ms").limit_ns == 5e6
    assert parse_slo("p50 <= 800us").statistic == "p50"
    assert parse_slo("p99.9<1s").limit_ns == 1e9
    with pytest.raises(ConfigError, match="p99<5ms"):
        parse_slo("99 under 5")


def test_capacity_meets_the_slo_and_a_little_more_does_not() -> None:
    p = _pipeline(100, 500)
    spec = SessionSpec(p, ((0, "pe0-1"),), 2, closed(1))
    sc = Scenario((spec,), 8, requests=3000, warmup=20)
    slo = parse_slo("p99<2ms")
    c = capacity(sc, slo, seed=3)
    assert 0 < c["rate_per_s"] < c["saturated_per_s"]
    assert slo.met(c["result"])
    above = _one(p, workers=2, load=poisson(c["rate_per_s"] * 1.1, seed=3), n=3000)
    assert not slo.met(above)


def test_an_impossible_slo_has_no_capacity() -> None:
    spec = SessionSpec(_pipeline(100, 500), ((0, "pe0-1"),), 1, closed(1))
    c = capacity(Scenario((spec,), 8, requests=500), parse_slo("p50<100us"))
    assert c["rate_per_s"] == 0.0


def test_pes_are_assigned_as_the_client_opens_them() -> None:
    assert assign_pes(parse_devices("warboy(1)*2")) == [(0, "pe0"), (0, "pe1")]
    assert assign_pes(parse_devices("warboy(1)*3")) == [(0, "pe0"), (0, "pe1"), (1, "pe0")]
    assert assign_pes(parse_devices("warboy(2)*2")) == [(0, "pe0-1"), (1, "pe0-1")]
    assert assign_pes(parse_devices("npu1pe0,warboy(1)*1")) == [(1, "pe0"), (0, "pe0")]
    assert assign_pes(parse_devices("npu0pe0,warboy(1)*1")) == [(0, "pe0"), (0, "pe1")]


def test_scenarios_that_cannot_run_are_refused() -> None:
    p = _pipeline(1, 1)
    with pytest.raises(ConfigError, match="worker_num"):
        SessionSpec(p, ((0, "pe0"),), 0, closed(1))
    with pytest.raises(ConfigError, match="in flight"):
        closed(0)
    with pytest.raises(ConfigError, match="rate"):
        poisson(0.0)
    with pytest.raises(ConfigError, match="host-cores"):
        Scenario((SessionSpec(p, ((0, "pe0"),), 1, closed(1)),), 0)
