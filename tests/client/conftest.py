"""The host-operator tests run every case on each kernel set (``kernels``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from npusim.client.ops import _native


@pytest.fixture(params=["native", "portable", "fallback"])
def kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """native: the compiled kernels as this CPU picks them; portable: their plain C versions
    (AVX2 off); fallback: without the extension (numpy)."""
    simd = _native._simd
    if request.param == "fallback":
        monkeypatch.setattr(_native, "_simd", None)
    elif request.param == "portable":
        simd._use_avx2(False)
    try:
        yield str(request.param)
    finally:
        simd._use_avx2(True)
