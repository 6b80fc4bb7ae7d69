"""Watching a device: the utilisation arithmetic, ``npusim top`` and the daemon's ``/metrics``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from npusim.client import session
from npusim.services import stack_cli
from npusim.services.errors import ConfigError
from npusim.services.rates import pe_rates
from npusim.services.top import top
from npusim.services.zoo import small_cnn
from tests.helpers import RunningStack, start_stack

X = np.zeros((1, 3, 64, 64), np.float32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _npusim(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "npusim.services.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, stdin=subprocess.DEVNULL)


# -- the arithmetic ----------------------------------------------------------------------
def _k(cycles: int, task: int = 0, tensor: int = 0, io: int = 0, jobs: int = 0, **kw: object) -> dict[str, object]:
    return {"cycles": cycles, "task_cycles": task, "tensor_cycles": tensor, "io_cycles": io, "jobs": jobs,
            "queue": 0, "session": None, "pe": None, **kw}


@pytest.mark.timeout(10)
def test_rates_are_differences_over_the_interval() -> None:
    prev = _k(1_000_000, task=100_000, tensor=50_000, io=10_000, jobs=10)
    cur = _k(3_000_000, task=600_000, tensor=450_000, io=110_000, jobs=60, queue=3, session="s", pe="pe0-1")
    r = pe_rates(prev, cur, dt_s=0.5)
    assert r.utilization_pct == 25.0  # 500k task of 2M elapsed
    assert r.compute_pct == 80.0  # 400k tensor of 500k task
    assert r.io_pct == 5.0  # 100k io of 2M elapsed
    assert r.jobs_per_s == 100.0  # 50 jobs in 0.5 s
    assert (r.jobs, r.queue, r.session, r.session_pe) == (60, 3, "s", "pe0-1")


@pytest.mark.timeout(10)
def test_rates_of_an_idle_or_empty_interval_are_zero() -> None:
    idle = pe_rates(_k(1000, task=10), _k(2000, task=10), dt_s=1.0)
    assert (idle.utilization_pct, idle.compute_pct, idle.io_pct, idle.jobs_per_s) == (0.0, 0.0, 0.0, 0.0)
    same = pe_rates(_k(1000, task=10), _k(1000, task=10), dt_s=0.0)
    assert (same.utilization_pct, same.jobs_per_s) == (0.0, 0.0)


@pytest.mark.timeout(10)
def test_rates_are_clamped_and_survive_a_restart() -> None:
    # a long job booked at its end can add more task cycles than the interval had
    assert pe_rates(_k(0), _k(1000, task=1500, tensor=1500), dt_s=1.0).utilization_pct == 100.0
    # counters went backwards: the daemon restarted; rates are from its start, never negative
    r = pe_rates(_k(10_000, task=5000, jobs=50), _k(2000, task=500, jobs=5), dt_s=1.0)
    assert r.utilization_pct == 25.0
    assert r.jobs_per_s >= 0 and r.jobs == 5


# -- a real stack with a metrics port ----------------------------------------------------
@pytest.fixture(scope="module")
def metered() -> Iterator[tuple[RunningStack, int]]:
    """A compiler and npu0 serving /metrics on a free loopback port."""
    port = _free_port()
    with start_stack(devices=1, daemon_args=("--metrics-port", str(port))) as s:
        yield s, port


@pytest.fixture
def use_metered(metered: tuple[RunningStack, int], monkeypatch: pytest.MonkeyPatch) -> tuple[RunningStack, int]:
    for k, v in metered[0].env().items():
        monkeypatch.setenv(k, v)
    return metered


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.mark.timeout(120)
def test_top_once_json_shows_the_busy_pe(use_metered: tuple[RunningStack, int]) -> None:
    stack, _ = use_metered
    with session.create(small_cnn(), device="npu0pe0") as sess:
        sess.run(X)
        proc = subprocess.Popen([sys.executable, "-m", "npusim.services.cli", "top", "--once", "--format", "json",
                                 "--interval", "1", "--run-dir", str(stack.run_dir)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        try:
            while proc.poll() is None:  # keep pe0 busy over both samples
                sess.run(X)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    view = json.loads(out)
    assert set(view) == {"npu0"} and set(view["npu0"]) == {"pe0", "pe1"}
    pe0, pe1 = view["npu0"]["pe0"], view["npu0"]["pe1"]
    assert pe0["utilization_pct"] > 0 and pe0["compute_pct"] > 0
    assert pe0["jobs_per_s"] > 0 and pe0["jobs"] > 0
    assert pe0["session"] and pe0["session_pe"] == "pe0"
    assert pe1["utilization_pct"] == 0 and pe1["session"] is None


@pytest.mark.timeout(60)
def test_top_once_table(use_metered: tuple[RunningStack, int], capsys: pytest.CaptureFixture[str]) -> None:
    stack, _ = use_metered
    assert top(run_dir=stack.run_dir, once=True, interval=0.1, fmt="table") == 0
    out = capsys.readouterr().out
    assert "npu0" in out and "pe1" in out and "util%" in out


@pytest.mark.timeout(60)
def test_top_without_daemons_says_how_to_start_one(tmp_path: Path) -> None:
    res = _npusim("top", "--once", "--run-dir", str(tmp_path))
    assert res.returncode == 1
    assert "no npusim device daemon is running" in res.stderr and "npusim up" in res.stderr
    bad = _npusim("top", "--once", "--format", "yaml", "--run-dir", str(tmp_path))
    assert bad.returncode == 2 and "--format 'yaml'" in bad.stderr


@pytest.mark.timeout(120)
def test_metrics_endpoint_counts_jobs(use_metered: tuple[RunningStack, int]) -> None:
    _, port = use_metered
    npu0 = (("core", "0"), ("device", "npu0"))
    before = _scrape(port)
    assert ("furiosa_npu_core_utilization", npu0) in before
    assert before[("furiosa_npu_core_frequency", npu0)] == 2000.0
    for name in ("npusim_npu_cycles_total", "npusim_npu_tensor_cycles_total", "npusim_npu_io_cycles_total",
                 "npusim_npu_jobs_total", "npusim_npu_queue_depth"):
        assert (name, npu0) in before, name
    assert ("npusim_npu_host_bound_total", (("device", "npu0"),)) in before
    with session.create(small_cnn(), device="npu0pe0") as sess:
        for _ in range(20):
            sess.run(X)
    after = _scrape(port)
    assert after[("npusim_npu_task_cycles_total", npu0)] > before[("npusim_npu_task_cycles_total", npu0)]
    assert after[("npusim_npu_jobs_total", npu0)] >= before[("npusim_npu_jobs_total", npu0)] + 20
    assert after[("npusim_npu_cycles_total", npu0)] > before[("npusim_npu_cycles_total", npu0)]
    assert after[("furiosa_npu_core_utilization", npu0)] > 0  # jobs ran since the previous scrape


@pytest.mark.timeout(60)
def test_a_taken_metrics_port_fails_the_start_clearly(metered: tuple[RunningStack, int], ipc_dir: Path) -> None:
    _, port = metered
    res = subprocess.run([sys.executable, "-m", "npusim.npu_daemon", "--name", "npu9", "--run-dir", str(ipc_dir),
                          "--bind", f"ipc://{ipc_dir}/npu9.sock", "--metrics-port", str(port)],
                         capture_output=True, text=True, timeout=50, stdin=subprocess.DEVNULL)
    assert res.returncode == 2
    assert f"--metrics-port {port}: cannot serve /metrics on 127.0.0.1:{port}" in res.stderr
    assert "pick a free port" in res.stderr


@pytest.mark.timeout(10)
def test_up_refuses_metrics_ports_past_65535(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--metrics-port 65535: npu1 would need port 65536"):
        stack_cli.up(devices=2, bind=None, run_dir=tmp_path, timing_only=False, curve_dir=None, metrics_port=65535)
