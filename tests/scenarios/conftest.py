"""The stretched stack of ``stretched.py``, started once for the scenarios that use it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.scenarios.stretched import stretched_stack


@pytest.fixture(scope="package")
def _stretched() -> Iterator[tuple[bytes, float, dict[str, str]]]:
    """A private stack whose daemon's NPU time is 1.5× the CPU time of a request (shared by
    ``test_workers_law.py`` and ``test_async_queue_throughput.py``)."""
    yield from stretched_stack()


@pytest.fixture
def stretched(_stretched: tuple[bytes, float, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, float]:
    """The stack's endpoints for this test (the autouse isolation fixture clears them per test)."""
    model, scale, env = _stretched
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return model, scale
