"""``services/timing.json`` is what ``benchmarks/fidelity.py --fit`` makes from the code as it is:
a change to the cost model that moves the fit fails here until the fit is run again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from npusim.services.hw import FITTED, TimingParams, timing_params

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_timing_json_is_what_the_fitting_script_fits_from_the_code() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fidelity.py"), "--check", "--json"],
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert abs(report["residuals"]["fused_latency_us"]) < 1e-6 and abs(report["residuals"]["offline_per_s"]) < 1e-6


def test_timing_json_names_its_fit_and_holds_only_the_free_parameters() -> None:
    data = json.loads(FITTED.read_text())
    assert set(data["params"]) == set(TimingParams.__dataclass_fields__)
    assert data["by"] == "benchmarks/fidelity.py --fit" and "ResNet-50" in data["fitted_on"]
    assert len(data["fit"]) == 2, "fitted on two of the three ResNet-50 figures; the third is a prediction"
    p = timing_params()
    assert 0 < p.stream_efficiency <= 1 and p.runtime_overhead_ns >= 0
