"""``npusim smi``: the vendor CLI's views of a private stack, with a session holding one PE."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from npusim.client import session
from npusim.services.errors import ConfigError
from npusim.services.smi import gather, smi
from npusim.services.zoo import small_cnn
from tests.helpers import start_stack

pytestmark = pytest.mark.timeout(120)

_candidate = Path(sys.executable).with_name("npusim")
NPUSIM = str(_candidate) if _candidate.exists() else (shutil.which("npusim") or "npusim")


def test_the_views_show_devices_cores_devfiles_and_holders(monkeypatch: pytest.MonkeyPatch) -> None:
    with start_stack(devices=2, daemon_args=("--timing-only",)) as stack:
        for k, v in stack.env().items():
            monkeypatch.setenv(k, v)
        with session.create(small_cnn().SerializeToString(), device="npu0pe0") as sess:
            x = np.zeros((1, 3, 64, 64), np.float32)
            for _ in range(20):
                sess.run(x)
            devices = gather(stack.run_dir, interval_s=0.2)
            cli = subprocess.run([NPUSIM, "smi", "ps", "--format", "json", "--run-dir", str(stack.run_dir)],
                                 capture_output=True, text=True, timeout=60, env=dict(os.environ))
        after = gather(stack.run_dir)
    npu0, npu1 = devices
    assert [d["npu"] for d in devices] == ["npu0", "npu1"] and all(d["alive"] for d in devices)
    assert npu0["devfiles"] == ["npu0", "npu0pe0", "npu0pe1", "npu0pe0-1"]
    assert npu0["cores"]["0"]["available"] is False and npu0["cores"]["1"]["available"] is True
    assert all(c["available"] for c in npu1["cores"].values())
    (holder,) = npu0["processes"]  # the session's own PE, once
    assert holder["devfile"] == "npu0pe0" and holder["pid"] == os.getpid() and "python" in holder["cmd"]
    assert npu0["temperature_c"] is None and npu0["power_w"] is None  # not measured: not invented
    assert npu0["uuid"] != npu1["uuid"] and npu0["pci_bdf"] != npu1["pci_bdf"]
    assert 0 <= npu0["cores"]["0"]["utilization_pct"] <= 100
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)[0]["processes"][0]["devfile"] == "npu0pe0"
    assert all(c["available"] for d in after for c in d["cores"].values())  # the session closed: PEs free


def test_a_wrong_view_or_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="info, list, ps, status"):
        smi(view="top", run_dir=tmp_path, fmt="table")
    with pytest.raises(ConfigError, match="table or json"):
        smi(view="ps", run_dir=tmp_path, fmt="full")
