"""``npusim up`` and ``npusim status``: start a whole stack, or look at a running one."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.table import Table

from npusim.services import launch
from npusim.services.config import run_dir as resolve_run_dir
from npusim.services.discovery import records
from npusim.services.errors import ConfigError, NpusimError, ServiceUnavailable
from npusim.services.protocol import Kind
from npusim.services.rpc import Peer
from npusim.services.sockets import check_bind_endpoint, ipc_endpoint, load_keys

__all__ = ["up", "status", "endpoints_for"]

console = Console()


def endpoints_for(devices: int, bind: str | None, rdir: Path) -> dict[str, str]:
    """Endpoints of ``compiler`` and ``npu0..`` : ipc in the run dir, or consecutive tcp ports."""
    names = ["compiler"] + [f"npu{i}" for i in range(devices)]
    if bind is None:
        return {n: ipc_endpoint(rdir, n) for n in names}
    parts = urlsplit(bind)
    if parts.scheme != "tcp" or parts.port is None:
        raise ConfigError(f"--bind {bind!r}: give tcp://HOST:PORT; the compiler takes PORT and npuN PORT+1+N")
    host = parts.hostname if ":" not in (parts.hostname or "") else f"[{parts.hostname}]"
    return {n: f"tcp://{host}:{parts.port + i}" for i, n in enumerate(names)}


def up(*, devices: int, bind: str | None, run_dir: Path | None, timing_only: bool, curve_dir: Path | None,
       metrics_port: int = 0) -> None:
    rdir = resolve_run_dir(run_dir)
    if metrics_port and metrics_port + devices - 1 > 65535:
        raise ConfigError(f"--metrics-port {metrics_port}: npu{devices - 1} would need port "
                          f"{metrics_port + devices - 1}; give a base port ≤ {65536 - devices}")
    running = records(rdir)
    if running:
        names = ", ".join(f"{r.name} (pid {r.pid})" for r in running)
        raise ConfigError(f"services are already running in {rdir}: {names}; stop them first or use --run-dir")
    keys = load_keys(curve_dir)
    eps = endpoints_for(devices, bind, rdir)
    for ep in eps.values():
        check_bind_endpoint(ep, keys)
    extra = ["--curve-dir", str(curve_dir)] if curve_dir else []
    metrics_ports = {f"npu{i}": metrics_port + i for i in range(devices)} if metrics_port else {}

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # explicitly: a background job inherits SIGINT ignored
    children: list[launch.Child] = []
    try:
        for name, ep in eps.items():
            kind = "compiler" if name == "compiler" else "daemon"
            args = extra + (["--timing-only"] if timing_only and kind == "daemon" else [])
            if name in metrics_ports:
                args += ["--metrics-port", str(metrics_ports[name])]
            children.append(launch.start(kind, name, ep, rdir, extra=args))
        launch.wait_healthy(children)
        table = Table(title=f"npusim up — run dir {rdir}")
        for col in ("service", "endpoint", "pid") + (("metrics",) if metrics_ports else ()):
            table.add_column(col)
        for c in children:
            port = metrics_ports.get(c.name)
            metrics = [f"http://127.0.0.1:{port}/metrics" if port else ""] if metrics_ports else []
            table.add_row(c.name, c.endpoint, str(c.proc.pid), *metrics)
        console.print(table)
        console.print("ready — Ctrl-C to stop", style="green")
        while True:
            for c in children:
                rc = c.proc.poll()
                if rc is not None:
                    raise ServiceUnavailable(f"{c.kind} {c.name} exited unexpectedly with code {rc}:\n{c.log_tail()}")
            time.sleep(0.2)
    except KeyboardInterrupt:
        console.print("stopping …")
    finally:
        killed = launch.stop_all(children)
        if children:
            note = f" (had to kill {', '.join(killed)})" if killed else ""
            console.print(f"stopped {len(children)} services{note}")


def health(endpoint: str, name: str) -> dict[str, Any] | None:
    """A service's HEALTH reply, or None when it does not answer within a second."""
    try:
        with Peer(endpoint, name=name, timeout_s=1.0) as peer:
            return peer.request(Kind.HEALTH).body
    except NpusimError:
        return None


def status(*, run_dir: Path | None, json_out: bool) -> None:
    rdir = resolve_run_dir(run_dir)
    rows = []
    for r in records(rdir):
        reply = health(r.endpoint, r.name)
        rows.append({"name": r.name, "kind": r.kind, "endpoint": r.endpoint, "pid": r.pid,
                     "state": "up" if reply else "not answering",
                     "uptime_s": round(time.time() - r.started, 1),
                     "pes": (reply or {}).get("pes"), "sessions": (reply or {}).get("sessions")})
    if json_out:
        print(json.dumps({"run_dir": str(rdir), "services": rows}))
        return
    if not rows:
        console.print(f"no npusim services are running in {rdir}; start them with `npusim up`")
        return
    table = Table(title=f"npusim services in {rdir}")
    for col in ("name", "kind", "endpoint", "pid", "uptime", "state", "PEs"):
        table.add_column(col, overflow="fold", no_wrap=col != "PEs")
    for r in rows:
        pes = ""
        if r["pes"]:
            pes = ", ".join(f"{pe}: {'free' if v['available'] else 'busy (' + str(v['session']) + ')'}"
                            for pe, v in r["pes"].items())
        table.add_row(r["name"], r["kind"], r["endpoint"], str(r["pid"]), f"{r['uptime_s']:.0f} s", r["state"], pes)
    console.print(table)


def check_health(*, run_dir: Path | None, endpoint: str | None, url: str | None = None) -> int:
    """0 when the service at ``endpoint`` (or every service registered in the run directory, or
    the HTTP ``url``, e.g. a server's /v2/health/ready) answers, else 1 with one line per one that
    does not: a container's health check."""
    if url is not None:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - the operator's own URL
                ok = r.status == 200
        except (urllib.error.URLError, OSError) as e:
            console.print(f"{url}: {e}")
            return 1
        console.print(f"{url}: {'healthy' if ok else 'not ready'}")
        return 0 if ok else 1
    if endpoint is not None:
        targets = [(endpoint, endpoint)]
    else:
        rdir = resolve_run_dir(run_dir)
        targets = [(r.endpoint, r.name) for r in records(rdir)]
        if not targets:
            console.print(f"no npusim service is registered in {rdir}")
            return 1
    bad = [name for ep, name in targets if health(ep, name) is None]
    for name in bad:
        console.print(f"{name}: not answering")
    if not bad:
        console.print(f"healthy: {', '.join(name for _, name in targets)}")
    return 1 if bad else 0
