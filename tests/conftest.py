from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import RunningStack, short_dir, start_stack


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's run directory or program cache; never embed by accident."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("NPUSIM_CACHE_DIR", str(base / "program-cache"))
    for var in ("NPUSIM_COMPILER_ENDPOINT", "NPUSIM_DAEMON_ENDPOINTS", "NPUSIM_DEVICES",
                "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NPUSIM_RUN_DIR", f"/tmp/npusim-test-{os.getpid()}")


@pytest.fixture(scope="session")
def stack() -> Iterator[RunningStack]:
    """A compiler service and two devices shared by the tests that only use them."""
    with start_stack(devices=2) as s:
        yield s


@pytest.fixture
def use_stack(stack: RunningStack, monkeypatch: pytest.MonkeyPatch) -> RunningStack:
    for k, v in stack.env().items():
        monkeypatch.setenv(k, v)
    return stack


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
def ipc_dir() -> Iterator[Path]:
    """A short private directory for ipc sockets (socket paths are limited to 107 bytes)."""
    with short_dir() as d:
        yield d
