"""``npusim bench``: the load test's figures, its files and its error messages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from npusim.client.bench import BenchConfig, bench
from npusim.services.zoo import small_cnn
from tests.helpers import RunningStack

_candidate = Path(sys.executable).with_name("npusim")
NPUSIM = str(_candidate) if _candidate.exists() else (shutil.which("npusim") or "npusim")


def _npusim(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NPUSIM, *args], cwd=cwd, env=dict(os.environ), capture_output=True, text=True, timeout=180)


@pytest.mark.timeout(200)
def test_bench_prints_and_writes_every_figure(use_stack: RunningStack, tmp_path: Path) -> None:
    proc = _npusim("bench", "zoo:small_cnn", "-w", "2", "-n", "40", "-o", "r.json", "-T", "t.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    for phrase in ("throughput-workload", "40 queries executed with batch size 1", "QPS(Throughput):", "p99.9",
                   "NPU utilisation: npu", "ideal 1 / max(NPU / PEs, CPU / workers)", "use `npusim plan`"):
        assert phrase in out, phrase
    res = json.loads((tmp_path / "r.json").read_text())
    r = res["result"]
    assert r["queries"] == 40 and r["qps"] > 0
    assert set(r["latency"]) == {"min_us", "mean_us", "max_us", "p50_us", "p90_us", "p95_us", "p99_us", "p99.9_us"}
    assert r["latency"]["min_us"] <= r["latency"]["p50_us"] <= r["latency"]["max_us"]
    assert r["per_query"]["npu_exec_us"] > 0 and r["per_query"]["cpu_us"] > 0
    assert r["ideal"]["bound_by"] in ("npu", "cpu") and r["ratio_to_ideal"] > 0
    assert list(r["npu_utilization_pct"]) == [res["config"]["device"]]
    trace = json.loads((tmp_path / "t.json").read_text())
    names = {e.get("name") for e in (trace["traceEvents"] if isinstance(trace, dict) else trace)}
    assert "Inference" in names and "npu.exec" in names


@pytest.mark.timeout(120)
def test_bench_latency_workload_keeps_one_query_in_flight(use_stack: RunningStack) -> None:
    res = bench(BenchConfig(small_cnn(), workers=2, workload="L", queries=20, warmup=2))
    assert res["config"]["in_flight"] == 1 and res["result"]["mode"] == "Latency"
    assert res["result"]["queries"] == 20


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("args", "says"), [
    (["nope.onnx"], "is not a file"),
    (["zoo:nope"], "no zoo model"),
    (["zoo:small_cnn", "--workload", "fast"], "latency (L) or throughput (T)"),
    (["zoo:small_cnn", "-d", "warboy(3)*1"], "warboy(X)*Y"),
])
def test_bench_user_errors_say_what_to_do(use_stack: RunningStack, tmp_path: Path, args: list[str], says: str) -> None:
    proc = _npusim("bench", *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert says in " ".join(proc.stderr.split()), proc.stderr
