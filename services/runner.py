"""Running one service process: arguments, registration, signals, clean exit.

Shared by ``python -m npusim.compiler_svc`` and ``python -m npusim.npu_daemon`` (what ``npusim up`` and
the client's embedded stack spawn) and by the ``npusim compiler`` / ``npusim daemon``
commands, so every service process behaves the same on start and stop.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import time
from pathlib import Path

from npusim.services import __version__, tracing
from npusim.services.config import ENV_MAX_MESSAGE, env_int, run_dir
from npusim.services.discovery import ServiceRecord, claim, register, unregister
from npusim.services.protocol import DEFAULT_MAX_MESSAGE_BYTES
from npusim.services.server import Service
from npusim.services.sockets import ipc_endpoint, load_keys

__all__ = ["common_args", "resolve_endpoint", "serve", "service_kwargs"]


def common_args(parser: argparse.ArgumentParser, *, default_name: str) -> None:
    parser.add_argument("--name", default=default_name)
    parser.add_argument("--bind", default=None, help="ipc://PATH or tcp://127.0.0.1:PORT (default: ipc in the run dir)")
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--curve-dir", default=None)
    parser.add_argument("--log-level", default=os.environ.get("NPUSIM_LOG_LEVEL", "INFO"))
    parser.add_argument("--ephemeral", action="store_true",
                        help="the run dir belongs to the parent: remove it if the parent dies without cleaning up")


def resolve_endpoint(bind: str | None, rdir: Path, name: str) -> str:
    return bind or ipc_endpoint(rdir, name)


def service_kwargs(args: argparse.Namespace) -> dict[str, object]:
    return {"keys": load_keys(args.curve_dir), "parent_pid": args.parent_pid,
            "max_message_bytes": env_int(ENV_MAX_MESSAGE, DEFAULT_MAX_MESSAGE_BYTES, minimum=1024)}


def serve(service: Service, *, kind: str, rdir: Path, ephemeral: bool = False) -> int:
    """Register ``service``, serve until SIGTERM/SIGINT or parent death, then clean up."""
    record = ServiceRecord(kind, service.name, service.endpoint, os.getpid(), time.time(), __version__)
    register(rdir, record)

    def on_signal(signum: int, frame: object) -> None:
        service.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logging.getLogger("npusim").info("%s %s listening on %s (pid %d)", kind, service.name, service.endpoint,
                                     os.getpid())
    try:
        service.serve_forever()
    finally:
        unregister(rdir, service.name, os.getpid())
        tracing.shutdown()
        if ephemeral and service.orphaned:
            shutil.rmtree(rdir, ignore_errors=True)
    return 0


def prepare(args: argparse.Namespace, *, kind: str) -> tuple[Path, str]:
    """Logging, tracing, run dir and endpoint for a service about to bind."""
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    rdir = run_dir(args.run_dir)
    claim(rdir, kind, args.name)
    tracing.setup_tracing(kind, instance=args.name)
    return rdir, resolve_endpoint(args.bind, rdir, args.name)
