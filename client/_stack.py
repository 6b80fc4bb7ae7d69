"""Finding the services a session talks to, or starting a private set of them.

In order: the endpoints the environment names (``NPUSIM_COMPILER_ENDPOINT``,
``NPUSIM_DAEMON_ENDPOINTS``); the services registered in the run directory (what
``npusim up`` started); otherwise an *embedded* stack — a compiler service and one daemon
started for the life of this process and stopped at exit — so a plain script that calls
``session.create`` works with nothing started by hand, like code written for the SDK.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from npusim.services import launch
from npusim.services.config import ENV_NO_EMBED, run_dir
from npusim.services.discovery import Stack, from_env, from_run_dir
from npusim.services.errors import ServiceUnavailable

__all__ = ["get_stack", "shutdown_embedded", "embedded_pids"]

log = logging.getLogger("npusim.client")

_lock = threading.Lock()
_embedded: Stack | None = None
_children: list[launch.Child] = []
_tmp: str | None = None
_owner_pid: int | None = None
_atexit_registered = False


def get_stack() -> Stack:
    stack = from_env()
    if stack is not None:
        return stack
    stack = from_run_dir(run_dir())
    if stack is not None and stack.compiler is not None and stack.daemons:
        return stack
    return _start_embedded()


def _start_embedded() -> Stack:
    global _embedded, _tmp, _owner_pid, _atexit_registered
    with _lock:
        if _embedded is not None and _owner_pid == os.getpid():
            dead = [c for c in _children if c.proc.poll() is not None]
            if not dead:
                return _embedded
            log.warning("the embedded %s exited (code %s); starting a new embedded stack:\n%s",
                        dead[0].name, dead[0].proc.returncode, dead[0].log_tail(5))
            launch.stop_all(_children)
            _children.clear()
            if _tmp:
                shutil.rmtree(_tmp, ignore_errors=True)
        if os.environ.get(ENV_NO_EMBED, "") not in ("", "0"):
            raise ServiceUnavailable(f"no npusim stack is running and {ENV_NO_EMBED} forbids starting one; "
                                     "start it with `npusim up`")
        _tmp = tempfile.mkdtemp(prefix="npusim-", dir="/tmp")
        rdir = Path(_tmp)
        t0 = time.monotonic()
        children = [
            launch.start("compiler", "compiler", f"ipc://{rdir}/compiler.sock", rdir, extra=["--ephemeral"]),
            launch.start("daemon", "npu0", f"ipc://{rdir}/npu0.sock", rdir, extra=["--ephemeral"]),
        ]
        try:
            launch.wait_healthy(children)
        except BaseException:
            shutil.rmtree(_tmp, ignore_errors=True)
            raise
        _children[:] = children
        _owner_pid = os.getpid()
        _embedded = Stack(children[0].endpoint, {"npu0": children[1].endpoint}, "embedded")
        if not _atexit_registered:
            atexit.register(shutdown_embedded)
            _atexit_registered = True
        log.info("started an embedded npusim stack in %s (%.1f s)", rdir, time.monotonic() - t0)
        return _embedded


def shutdown_embedded() -> None:
    """Stop the embedded services (also runs at exit)."""
    global _embedded, _tmp
    with _lock:
        if _owner_pid != os.getpid():
            return  # a forked child must not stop its parent's services
        launch.stop_all(_children)
        _children.clear()
        _embedded = None
        if _tmp:
            shutil.rmtree(_tmp, ignore_errors=True)
            _tmp = None


def embedded_pids() -> list[int]:
    return [c.proc.pid for c in _children]
