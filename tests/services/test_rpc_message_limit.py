"""The message size limit on the requester's side (services/rpc.py ``Peer``): a request above
the limit, set by argument or by ``NPUSIM_MAX_MESSAGE_BYTES``, fails at once before anything is
sent (the connection stays intact and the service never sees it), and a request above a smaller
limit of the service's own is refused with an error that names the variable.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from npusim.compiler_svc.cache import ProgramCache
from npusim.compiler_svc.server import CompilerService
from npusim.services.errors import ProtocolError
from npusim.services.protocol import Kind
from npusim.services.rpc import Peer
from tests.helpers import serving

LIMIT = 1 << 20


@pytest.mark.timeout(20)
@pytest.mark.parametrize("via", ["argument", "env"])
def test_oversize_request_fails_before_sending(ipc_dir: Path, monkeypatch: pytest.MonkeyPatch, via: str) -> None:
    svc = CompilerService("compiler", f"ipc://{ipc_dir}/c.sock", cache=ProgramCache(max_bytes=0),
                          max_message_bytes=LIMIT)
    if via == "env":
        monkeypatch.setenv("NPUSIM_MAX_MESSAGE_BYTES", str(LIMIT))
    big = np.zeros(3 * LIMIT, np.uint8)
    with serving(svc), Peer(svc.endpoint, timeout_s=3.0, watch_disconnect=True,
                            max_message_bytes=LIMIT if via == "argument" else None) as peer:
        t0 = time.monotonic()
        with pytest.raises(ProtocolError, match="NPUSIM_MAX_MESSAGE_BYTES") as ei:
            peer.request(Kind.COMPILE, {"options": {}}, [("model", big)])
        assert time.monotonic() - t0 < 1.0
        assert ei.value.details["limit"] == LIMIT and ei.value.details["size"] > LIMIT
        # Nothing was sent, so the connection is intact and the service never saw a COMPILE.
        assert peer.request(Kind.HEALTH).kind == Kind.HEALTH_OK
        assert not peer.lost
        assert "COMPILE" not in peer.request(Kind.STATS).body["stats"]["by_kind"]


@pytest.mark.timeout(20)
def test_oversize_for_a_smaller_service_limit_is_named(ipc_dir: Path) -> None:
    svc = CompilerService("compiler", f"ipc://{ipc_dir}/c.sock", cache=ProgramCache(max_bytes=0),
                          max_message_bytes=LIMIT)
    with serving(svc), Peer(svc.endpoint, timeout_s=3.0, watch_disconnect=True) as peer:
        with pytest.raises(ProtocolError, match="NPUSIM_MAX_MESSAGE_BYTES"):
            peer.request(Kind.COMPILE, {"options": {}}, [("model", np.zeros(3 * LIMIT, np.uint8))])
