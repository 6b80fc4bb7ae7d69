"""Which device strings a session accepts, and where it opens: a device string a session
cannot serve (a mix of fused and single PEs, a PE twice, a malformed string; by argument or
``NPUSIM_DEVICES``) is refused before anything starts, single-PE strings are accepted and map
to their target, and the default (any PE) allocation skips a daemon that does not answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from npusim.client import _engine as client_engine
from npusim.client import _session as client_session
from npusim.client import session
from npusim.client._open import target_of
from npusim.services.devices import parse_devices
from npusim.services.errors import ConfigError
from npusim.services.zoo import small_cnn
from tests.helpers import RunningStack

X = np.zeros((1, 3, 64, 64), np.float32)


def _set_env(monkeypatch: pytest.MonkeyPatch, stack: RunningStack) -> None:
    for k, v in stack.env().items():
        monkeypatch.setenv(k, v)


# -- device strings a session cannot serve, and those it can --------------------------------
# (Several PEs of one kind are served since the multi-device sessions; a mix of fused and
# single PEs, or a malformed string, is still refused before anything starts.)
@pytest.mark.timeout(20)
@pytest.mark.parametrize("device", ["warboy(2)*1,npu1pe0", "npu0pe0,npu0pe0-1", "warboy(3)*1", "npu:0:1-0"])
@pytest.mark.parametrize("via", ["argument", "env"])
def test_unservable_device_is_refused_before_starting(monkeypatch: pytest.MonkeyPatch, device: str, via: str) -> None:
    def must_not_start(*a: Any, **k: Any) -> None:
        raise AssertionError("create() started something before refusing the device string")

    monkeypatch.setattr(client_engine, "get_stack", must_not_start)
    monkeypatch.setattr(client_engine, "WorkerPool", must_not_start)
    if via == "env":
        monkeypatch.setenv("NPUSIM_DEVICES", device)
    with pytest.raises(ConfigError) as ei:
        session.create(small_cnn(), device=device if via == "argument" else None)
    assert isinstance(ei.value, ValueError)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("device", ["warboy(2)*1", "warboy(1)*1", "warboy*1", "npu0pe1", "npu:1:0-1", "npu0"])
def test_single_pe_device_strings_are_still_accepted(device: str) -> None:
    specs = parse_devices(device)
    assert target_of(specs) == ("warboy-2pe" if specs[0].pe == "pe0-1" else "warboy")


# -- any-PE allocation skips a daemon that does not answer ------------------------------------
@pytest.mark.timeout(30)
def test_default_device_skips_a_dead_daemon(stack: RunningStack, ipc_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _set_env(monkeypatch, stack)
    monkeypatch.setenv("NPUSIM_DAEMON_ENDPOINTS", f"npu0=ipc://{ipc_dir}/gone.sock,npu1={stack.daemons['npu0']}")
    s = client_session.Session(small_cnn(), timeout_s=1.0)
    try:
        assert s.device == "npu1pe0-1"
        out = s.run(X)
        assert out and out[0].size
    finally:
        s.close()
