"""Which services are running: one small JSON file per service in the run directory.

A service writes its record after it has bound its socket and removes it when it stops.
A record whose process is gone (killed with SIGKILL) is stale and is removed by the next
reader, so ``npusim status`` and the client never chase a dead endpoint for long.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from npusim.services.config import ENV_COMPILER, ENV_DAEMONS
from npusim.services.errors import ConfigError

__all__ = ["ServiceRecord", "register", "unregister", "records", "pid_alive", "Stack", "from_env", "from_run_dir"]


@dataclass(frozen=True)
class ServiceRecord:
    kind: str  # "compiler" | "daemon"
    name: str  # "compiler", "npu0", ...
    endpoint: str
    pid: int
    started: float
    version: str


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _path(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.json"


def register(run_dir: Path, record: ServiceRecord) -> Path:
    """Atomically write ``record``; refuse if a live process already holds the name."""
    path = _path(run_dir, record.name)
    claim(run_dir, record.kind, record.name)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(record)))
    os.replace(tmp, path)
    return path


def claim(run_dir: Path, kind: str, name: str) -> None:
    """Fail early, before binding, when a live service already owns ``name``."""
    existing = _read(_path(run_dir, name))
    if existing and existing.pid != os.getpid() and pid_alive(existing.pid):
        raise ConfigError(f"a {existing.kind} named {name!r} is already running (pid {existing.pid}, "
                          f"{existing.endpoint}); stop it or use another run directory")


def unregister(run_dir: Path, name: str, pid: int) -> None:
    path = _path(run_dir, name)
    rec = _read(path)
    if rec is not None and rec.pid == pid:
        path.unlink(missing_ok=True)


def _read(path: Path) -> ServiceRecord | None:
    try:
        return ServiceRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def records(run_dir: Path) -> list[ServiceRecord]:
    """Live records, compiler first then daemons by name; stale files are removed."""
    out = []
    for path in sorted(run_dir.glob("*.json")):
        rec = _read(path)
        if rec is None:
            continue
        if not pid_alive(rec.pid):
            path.unlink(missing_ok=True)
            continue
        out.append(rec)
    return sorted(out, key=lambda r: (r.kind != "compiler", r.name))


@dataclass(frozen=True)
class Stack:
    """Endpoints of one compiler service and the device daemons, by device name."""

    compiler: str | None
    daemons: dict[str, str]
    source: str  # "env", "run-dir", "embedded"


def from_env() -> Stack | None:
    comp = os.environ.get(ENV_COMPILER) or None
    raw = os.environ.get(ENV_DAEMONS) or ""
    daemons: dict[str, str] = {}
    for i, item in enumerate(x.strip() for x in raw.split(",") if x.strip()):
        name, sep, ep = item.partition("=")
        if not sep:
            name, ep = f"npu{i}", item
        if "://" not in ep:
            raise ConfigError(f"{ENV_DAEMONS}: {item!r} is not name=endpoint or an endpoint like ipc://... "
                              "or tcp://127.0.0.1:PORT")
        daemons[name.strip()] = ep.strip()
    if comp is None and not daemons:
        return None
    return Stack(comp, daemons, "env")


def from_run_dir(run_dir: Path) -> Stack | None:
    recs = records(run_dir)
    if not recs:
        return None
    comp = next((r.endpoint for r in recs if r.kind == "compiler"), None)
    daemons = {r.name: r.endpoint for r in recs if r.kind == "daemon"}
    return Stack(comp, daemons, "run-dir")
