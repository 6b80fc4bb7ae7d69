"""``npusim smi``: the vendor CLI's views (furiosa-smi / furiosactl) of the emulated devices, so
scripts that parse them run against npusim.

    info     NPU, name, firmware, temperature, power, PCI-BDF (full: also UUID and serial number)
    list     NPU, its cores and whether each is available, its device files
    ps       which process holds which device file
    status   cores occupied and their utilisation over a short interval

Everything comes from the daemons registered in the run directory: HEALTH says which session
(and process) holds each PE, STATS gives the cycle counters. An emulated device has no
thermometer or power meter: those columns say so ("-", null in JSON) instead of inventing a
figure. Its PCI address and UUID are stable identities derived from the device's name and
this host, in the formats the real tool prints."""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from npusim.services import __version__, stack_cli
from npusim.services.config import run_dir as resolve_run_dir
from npusim.services.discovery import records
from npusim.services.errors import ConfigError
from npusim.services.rates import device_rates, sample
from npusim.services.top import sample_all

__all__ = ["VIEWS", "gather", "smi"]

VIEWS = ("info", "list", "ps", "status")
FORMATS = ("table", "json", "full")
PRODUCT = "warboy"
_NAMESPACE = uuid.UUID("6f1d9c4e-3b2a-5d8e-9f10-7a6b5c4d3e2f")  # npusim's own, for uuid5 identities


def _index(name: str) -> int:
    digits = "".join(c for c in name if c.isdigit())
    return int(digits) if digits else 0


def _cmd(pid: int | None) -> str | None:
    if pid is None:
        return None
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None  # not on this host, or gone
    return " ".join(" ".join(p.decode(errors="replace").split()) for p in raw.split(b"\0") if p) or None


def gather(rdir: Path, interval_s: float = 0.0) -> list[dict[str, Any]]:
    """One entry per registered device: identity, cores, device files, holders; with
    ``interval_s`` > 0 also each core's utilisation over that interval."""
    daemons = sorted((r for r in records(rdir) if r.kind == "daemon"), key=lambda r: _index(r.name))
    first = sample_all(rdir) if interval_s > 0 else {}
    if interval_s > 0:
        time.sleep(interval_s)
    host = socket.gethostname()
    out = []
    for r in daemons:
        health = stack_cli.health(r.endpoint, r.name)
        ident = uuid.uuid5(_NAMESPACE, f"{host}/{r.name}")
        i = _index(r.name)
        pes = (health or {}).get("pes") or {}
        cores = {}
        for core in ("0", "1"):
            v = pes.get(f"pe{core}") or {}  # a single PE's entry is its core's: held alone or through pe0-1
            held = not v.get("available", True)
            cores[core] = {"available": not held, "session": v.get("session") if held else None}
        holders = []
        for pe, v in pes.items():
            if not v.get("available", True) and v.get("session_pe") == pe:  # the PE its session opened
                pid = v.get("client_pid")
                holders.append({"devfile": f"{r.name}{pe}", "pid": pid, "cmd": _cmd(pid), "session": v.get("session")})
        entry: dict[str, Any] = {
            "npu": r.name, "name": PRODUCT, "alive": health is not None, "firmware": f"npusim-{__version__}",
            "temperature_c": None, "power_w": None, "pci_bdf": f"0000:{0x51 + i:02x}:00.0",
            "uuid": str(ident).upper(), "serial": f"NPUSIM{ident.hex[:10].upper()}",
            "cores": cores, "devfiles": [r.name, f"{r.name}pe0", f"{r.name}pe1", f"{r.name}pe0-1"],
            "processes": holders,
        }
        if interval_s > 0:
            cur = sample(r.name, r.endpoint)
            prev = first.get(r.name)
            if cur.counters is not None and prev is not None and prev.counters is not None:
                rates = device_rates(prev.counters, cur.counters, cur.t - prev.t)
                for pe, rate in rates.items():
                    core = pe.removeprefix("pe")
                    if core in cores:
                        cores[core]["utilization_pct"] = round(rate.utilization_pct, 2)
        out.append(entry)
    return out


def _cores(d: dict[str, Any]) -> str:
    return ", ".join(f"{c} ({'available' if v['available'] else 'occupied'})" for c, v in d["cores"].items())


def smi(*, view: str, run_dir: Path | None, fmt: str, interval: float = 0.5) -> None:
    if view not in VIEWS:
        raise ConfigError(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}")
    if fmt not in FORMATS or (fmt == "full" and view != "info"):
        raise ConfigError(f"--format {fmt!r}: table or json ({'or full ' if view == 'info' else ''}for {view})")
    rdir = resolve_run_dir(run_dir)
    devices = gather(rdir, interval if view == "status" else 0.0)
    console = Console()
    if fmt == "json":
        keys = {"info": ("npu", "name", "alive", "firmware", "temperature_c", "power_w", "pci_bdf", "uuid", "serial"),
                "list": ("npu", "cores", "devfiles"), "ps": ("npu", "processes"), "status": ("npu", "alive", "cores")}
        print(json.dumps([{k: d[k] for k in keys[view]} for d in devices]))
        return
    if not devices:
        console.print(f"no emulated NPU is running in {rdir}; start them with `npusim up`")
        return
    t = Table()
    if view == "info":
        cols = ["NPU", "Name", "Firmware", "Temp.", "Power", "PCI-BDF"] + (["UUID", "S/N"] if fmt == "full" else [])
        for c in cols:
            t.add_column(c)
        for d in devices:
            row = [d["npu"], d["name"], d["firmware"], "-", "-", d["pci_bdf"]]
            t.add_row(*(row + ([d["uuid"], d["serial"]] if fmt == "full" else [])))
    elif view == "list":
        for c in ("NPU", "Cores", "DEVFILES"):
            t.add_column(c)
        for d in devices:
            t.add_row(d["npu"], _cores(d), ", ".join(d["devfiles"]))
    elif view == "ps":
        for c in ("NPU", "PID", "CMD"):
            t.add_column(c, overflow="fold")
        for d in devices:
            for p in d["processes"]:
                t.add_row(p["devfile"], str(p["pid"] or "-"), p["cmd"] or f"(session {p['session']})")
    else:
        for c in ("NPU", "Cores", "Core utilisation"):
            t.add_column(c)
        for d in devices:
            util = ", ".join(f"{c}: {v.get('utilization_pct', 0.0):.1f}%" for c, v in d["cores"].items())
            t.add_row(d["npu"], _cores(d), util)
    console.print(t)
