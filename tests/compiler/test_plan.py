"""``npusim plan``: the sweep, its figures and their agreement with ``npusim estimate``, the
capacity finder, and the errors a user can cause (in-process, plus the console script once)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from npusim.client.hostcost import measure_steps
from npusim.compiler_svc.estimate import compile_programs, estimate_program
from npusim.compiler_svc.plan import PlanConfig, host_costs, plan
from npusim.services.errors import ConfigError, InvalidInput
from npusim.services.hostprofile import host_profile
from npusim.services.zoo import mnist
from tests.htmlcheck import check_report

pytestmark = pytest.mark.timeout(120)

_candidate = Path(sys.executable).with_name("npusim")
NPUSIM = str(_candidate) if _candidate.exists() else (shutil.which("npusim") or "npusim")


@pytest.fixture(scope="module")
def model() -> bytes:
    return mnist().SerializeToString()


def test_one_request_at_a_time_takes_what_estimate_predicts(model: bytes) -> None:
    report = plan(PlanConfig(concurrency=(1,), requests=200), model)
    (program,), _ = compile_programs(model, ["warboy-2pe"], [1])
    predicted = estimate_program(program).modes["pe0-1"]["latency_ns"]
    (c,) = report["configs"]
    assert c["latency_us"]["p50"] == pytest.approx(predicted / 1e3, abs=1e-3)
    assert c["throughput_per_s"] == pytest.approx(1e9 / predicted, rel=1e-3)
    assert set(c["latency_us"]) == {"p50", "p90", "p99", "p999"}


def test_two_single_pes_kept_busy_by_enough_workers_give_estimates_offline_rate(model: bytes) -> None:
    report = plan(PlanConfig(devices="warboy(1)*2", workers=(32,), batch=(8,), requests=3000), model)
    (program,), _ = compile_programs(model, ["warboy"], [8])
    offline = estimate_program(program).modes["pe0+pe1"]["throughput_per_s"]
    (c,) = report["configs"]
    assert report["pes"] == ["npu0pe0", "npu0pe1"]
    assert c["throughput_per_s"] == pytest.approx(offline, rel=0.02)


def test_the_sweep_covers_every_combination_in_order(model: bytes) -> None:
    report = plan(PlanConfig(workers=(1, 2), batch=(1, 4), rate=(500.0, 1000.0), requests=300), model)
    got = [(c["batch"], c["workers"], c["rate_per_s"]) for c in report["configs"]]
    assert got == [(b, w, r) for b in (1, 4) for w in (1, 2) for r in (500.0, 1000.0)]
    assert all(c["arrivals"] == "poisson" for c in report["configs"])


def test_the_host_profile_this_times_the_host_operators_once_and_keeps_them(model: bytes, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPUSIM_CACHE_DIR", str(tmp_path / "programs"))
    calls = []

    def timed(program):  # type: ignore[no-untyped-def]
        calls.append(1)
        return measure_steps(program, repeats=3)

    (program,), _ = compile_programs(model, ["warboy-2pe"], [1])
    profile = host_profile("this", step_costs=timed)
    first = host_costs(program, profile)
    assert host_costs(program, profile) == first and len(calls) == 1
    assert any(ns for ns in first)  # Quantize and the others cost something here
    mlperf = plan(PlanConfig(concurrency=(1,), requests=100), model)["configs"][0]["latency_us"]["p50"]
    here = plan(PlanConfig(concurrency=(1,), requests=100, host="this"), model, step_costs=timed)
    assert here["configs"][0]["latency_us"]["p50"] > mlperf  # the host operators are now in the timed path
    assert here["host"]["name"] == "this"


def test_capacity_and_devices_needed(model: bytes) -> None:
    report = plan(PlanConfig(workers=(4,), slo="p99<1ms", target_rate=8000.0, requests=1500), model)
    (cap,) = report["capacity"]
    assert 0 < cap["rate_per_s"] <= cap["saturated_per_s"]
    assert cap["latency_us"]["p99"] <= 1000
    need = report["devices_needed"]
    assert need["count"] >= 1 and need["capacity_per_s"] >= 8000
    assert need["devices"] == f"warboy(2)*{need['count']}"


@pytest.mark.parametrize("cfg, why", [
    (PlanConfig(concurrency=(4,), rate=(100.0,)), "one load"),
    (PlanConfig(target_rate=100.0), "needs --slo"),
    (PlanConfig(slo="p99 below 5ms"), "p99<5ms"),
    (PlanConfig(devices="warboy(1)*1,warboy(2)*1"), "mixes fused"),
    (PlanConfig(batch=(0,)), "positive"),
    (PlanConfig(host="laptop"), "unknown host profile"),
    (PlanConfig(time_scale=0.0), "positive"),
])
def test_user_errors_say_what_to_do(model: bytes, cfg: PlanConfig, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        plan(cfg, model)


def test_a_program_plans_only_with_its_own_target(model: bytes) -> None:
    (program,), _ = compile_programs(model, ["warboy"], [1])
    with pytest.raises(InvalidInput, match="compiled for warboy"):
        plan(PlanConfig(devices="warboy(2)*1"), program.to_bytes())
    assert plan(PlanConfig(devices="npu0pe1", requests=50), program.to_bytes())["pes"] == ["npu0pe1"]


def test_the_console_script_prints_json_and_refuses_bad_lists() -> None:
    ok = subprocess.run([NPUSIM, "plan", "zoo:mnist", "-w", "1,2", "-n", "200", "--json"], capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert [c["workers"] for c in report["configs"]] == [1, 2]
    bad = subprocess.run([NPUSIM, "plan", "zoo:mnist", "-w", "1,two"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--workers '1,two': an integer or a comma list" in bad.stderr


def test_plot_and_report_show_the_sweep_and_the_capacity(tmp_path: Path) -> None:
    png, page = tmp_path / "plan.png", tmp_path / "plan.html"
    ok = subprocess.run([NPUSIM, "plan", "zoo:mnist", "-w", "1,2", "-b", "1,8", "-n", "200", "--slo", "p99<2ms",
                         "--plot", str(png), "--report", str(page), "--json"], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert png.read_bytes().startswith(b"\x89PNG")
    parsed = check_report(page.read_text())
    sweep, capacity = parsed.tables[0], parsed.tables[1]
    assert len(sweep) == 1 + len(report["configs"]) == 5
    assert [row[:2] for row in sweep[1:]] == [[str(c["batch"]), str(c["workers"])] for c in report["configs"]]
    assert len(capacity) == 1 + len(report["capacity"])
    assert "wrote the report" in ok.stderr


def test_sessions_each_get_their_own_pes(model: bytes) -> None:
    split = plan(PlanConfig(devices="warboy(1)*1", sessions=2, workers=(1,), requests=300), model)
    one = plan(PlanConfig(devices="warboy(1)*2", workers=(2,), requests=300), model)
    assert split["session_pes"] == [["npu0pe0"], ["npu0pe1"]]
    (c,), (d,) = split["configs"], one["configs"]
    assert len(c["sessions"]) == 2
    assert c["throughput_per_s"] == pytest.approx(d["throughput_per_s"], rel=1e-3)  # the same two PEs and workers
    with pytest.raises(ConfigError, match="named PEs"):
        plan(PlanConfig(devices="npu0pe0", sessions=2), model)
    with pytest.raises(ConfigError, match="--sessions"):
        plan(PlanConfig(sessions=2, slo="p99<5ms"), model)
