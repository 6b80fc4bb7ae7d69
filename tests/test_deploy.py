"""The container recipe, tested where no container engine exists: ``deploy/install.sh`` (the
Dockerfile's install step) installs a working npusim into a fresh venv, whose ``npusim health``
is the image's health check; and the Dockerfile runs that script, as a user without privileges."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers import start_stack

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)
def test_the_install_script_gives_a_working_npusim_and_its_health_check(tmp_path: Path) -> None:
    prefix = tmp_path / "venv"
    proc = subprocess.run(["sh", str(ROOT / "deploy" / "install.sh"), str(prefix), str(ROOT)],
                          capture_output=True, text=True, timeout=580)
    assert proc.returncode == 0, proc.stderr[-3000:]
    npusim = prefix / "bin" / "npusim"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPUSIM_")}
    empty = subprocess.run([str(npusim), "health", "--run-dir", str(tmp_path / "run")], capture_output=True,
                           text=True, env=env, timeout=60)
    assert empty.returncode == 1 and "no npusim service is registered" in empty.stdout
    with start_stack(devices=1) as stack:
        ok = subprocess.run([str(npusim), "health", "--run-dir", str(stack.run_dir)], capture_output=True,
                            text=True, env=env, timeout=60)
        assert ok.returncode == 0 and "healthy: " in ok.stdout, ok.stdout + ok.stderr
        daemon = stack.child("npu0").proc
        daemon.send_signal(signal.SIGSTOP)  # hung: alive, registered, not answering
        try:
            down = subprocess.run([str(npusim), "health", "--run-dir", str(stack.run_dir)], capture_output=True,
                                  text=True, env=env, timeout=60)
        finally:
            daemon.send_signal(signal.SIGCONT)
    assert down.returncode == 1 and "npu0: not answering" in down.stdout, down.stdout


def test_the_dockerfile_installs_with_the_script_and_runs_unprivileged_with_a_health_check() -> None:
    lines = [ln.strip() for ln in (ROOT / "deploy" / "Dockerfile").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    froms = [ln for ln in lines if ln.startswith("FROM ")]
    assert froms and all("slim" in ln for ln in froms)
    final = lines[lines.index(froms[-1]):]
    assert any("npusim-install" in ln for ln in final if ln.startswith("RUN"))
    users = [ln for ln in final if ln.startswith("USER ")]
    assert users and users[-1].split()[1] not in ("root", "0")
    assert any(ln.startswith("HEALTHCHECK") and "npusim" in ln and "health" in ln for ln in final)
