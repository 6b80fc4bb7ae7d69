"""The profiler against a real stack: the SDK's tables from real requests, pause/resume across
processes, and ``NPUSIM_PROFILER_OUTPUT_PATH`` profiling a program that does not ask for it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from npusim.client import profile, session
from npusim.client._profiler import ENV_OUTPUT_PATH
from npusim.services.zoo import small_cnn
from tests.helpers import RunningStack

REPO = Path(__file__).resolve().parents[2]
DEVICE = "npu0pe0-1"
CPU_OPS = {"Quantize", "Unlower", "Dequantize"}  # small_cnn's host operators (float in, float out)


@pytest.mark.timeout(90)
def test_tables_from_real_requests(use_stack: RunningStack, tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    with open(path, "w") as f, profile(file=f) as prof, session.create(small_cnn(), device=DEVICE) as sess:
        with prof.record("pre"):
            x = np.random.default_rng(7).standard_normal((1, 3, 64, 64)).astype(np.float32)
        with prof.record("inf"):
            for _ in range(3):
                sess.run(x)
        prof.pause()
        sess.run(x)  # not profiled, nor are its worker's and device's spans
        prof.resume()
        sess.run(x)

    assert prof.summary()["count"] == 4
    ops = {r["name"]: r for r in prof.external_operators()}
    assert set(ops) >= CPU_OPS
    assert all(ops[n]["count"] == 4 and ops[n]["average_elapsed"] > 0 for n in CPU_OPS)

    executions = prof.npu_executions()
    assert len(executions) == 4
    assert sorted(e["execution_index"] for e in executions) == [0, 1, 2, 3]
    for e in executions:
        assert e["pe_index"] == "pe0-1" and e["program"] == "small_cnn (stage 0)"
        assert e["npu_total"] >= e["npu_run"] > 0 and e["npu_io_wait"] == e["npu_total"] - e["npu_run"] >= 0
    (npu_op,) = prof.npu_operators()
    assert (npu_op["name"], npu_op["pe_index"], npu_op["count"]) == ("small_cnn (stage 0)", "pe0-1", 4)

    inferences = prof.inferences()
    assert len(inferences) == 4
    assert all(r["device"] == DEVICE and r["npu_execution"] > 0 and r["cpu_operators"] > 0 for r in inferences)

    rows = prof.rows()
    (inf,) = [r for r in rows if r["name"] == "inf"]
    under = [r for r in rows if r["name"] == "Inference" and r["parent_span_id"] == inf["span_id"]]
    assert len(under) == 3, "the user span is the parent of the requests inside it"
    assert {r["thread.id"] for r in rows if r["cat"] == "NPU"} == {DEVICE}
    assert {r["thread.id"] for r in rows if r["name"].startswith("cpu.")} == {"worker-0"}

    buf = io.StringIO()
    prof.print_summary(file=buf)
    assert "Inference Results Summary" in buf.getvalue() and "│ Inference counts" in buf.getvalue()

    doc = json.loads(path.read_text())
    names = [e["name"] for e in doc["traceEvents"] if e["ph"] == "X"]
    assert names.count("Inference") == 4 and names.count("npu.exec") == 4


ENV_CLIENT = """
import numpy as np
from npusim.client import session
from npusim.client._profiler import session_profiler
from npusim.services.zoo import small_cnn

x = np.zeros((1, 3, 64, 64), np.float32)
# session_profiler()/close() are what a session does with the variable set; one more use per
# session changes nothing (the file is written when the last use is given back, or at exit).
a = session.create(small_cnn(), device="npu0pe0-1")
pa = session_profiler()
assert pa is not None
a.run(x)
a.run(x)
pa.close()
a.close()
b = session.create(small_cnn(), device="npu0pe0-1")
pb = session_profiler()
assert pb is pa, "one profiler per process and path"
b.run(x)
print("client done")  # b is never closed: the file is rewritten at exit
"""


@pytest.mark.timeout(120)
def test_env_variable_profiles_a_program(use_stack: RunningStack, tmp_path: Path) -> None:
    path = tmp_path / "env-trace.json"
    env = {**os.environ, ENV_OUTPUT_PATH: str(path)}
    proc = subprocess.run([sys.executable, "-c", ENV_CLIENT], check=False, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=100)
    assert proc.returncode == 0 and "client done" in proc.stdout, proc.stderr[-4000:]
    doc = json.loads(path.read_text())
    spans = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    names = [e["name"] for e in spans]
    assert names.count("Inference") == 3, "both sessions' requests are in the one file"
    assert names.count("npu.exec") == 3 and names.count("cpu.Quantize") == 3
    processes = {e["args"]["name"].partition(" (")[0] for e in doc["traceEvents"] if e["name"] == "process_name"}
    assert {"client", "worker-0", "npu0"} <= processes
    assert not list(tmp_path.glob("*.tmp"))
