"""A smoke run of every benchmark, so none rots: each runs briefly and prints its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "run_all" and not p.stem.startswith("_"))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_smoke(name: str) -> None:
    proc = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--smoke", "--json"],
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(figures, dict) and figures
    CHECKS.get(name, lambda _: None)(figures)


def _daemon_capacity(f: dict[str, Any]) -> None:
    """The rate is the host's (not asserted); emulated latency with jitter off is exact by design."""
    assert f["capacity"]["jobs_per_s"] > 0 and f["capacity"]["raw_zmq_msgs_per_s"] > 0
    assert f["jitter"]["emulated_p99_over_p50"] <= 1.01, f["jitter"]


def _fidelity(f: dict[str, Any]) -> None:
    """The two fitted ResNet-50 figures are met; the predictions are reported beside them."""
    assert abs(f["fused_latency_ratio"] - 1) < 1e-6 and abs(f["offline_ratio"] - 1) < 1e-6
    assert f["multistream_us"] > 0 and f["mnist_npu_us"] > 0


CHECKS = {"daemon_capacity": _daemon_capacity, "fidelity": _fidelity}
