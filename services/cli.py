"""``npusim``: the one command-line entry point.

Each package brings its own commands: ``register(app)`` of every entry point in the
``npusim.commands`` group (pyproject.toml) adds them to the app, so this module imports no
package but ``services``. The commands here are the stack's own: ``up``, ``status``, ``top``,
``smi`` and ``keys``. A command body's user errors (:class:`NpusimError`) end in a one-line message and
exit status 2 (:func:`call`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Optional

import typer

from npusim.services import smi as smi_view
from npusim.services import stack_cli
from npusim.services import top as top_view
from npusim.services.errors import NpusimError
from npusim.services.sockets import generate_keys

__all__ = ["COMMANDS", "app", "call", "main", "service_args"]

COMMANDS = "npusim.commands"
"""The entry-point group of the packages' command registrars."""

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="npusim: an emulated Warboy-class NPU inference stack (compiler, device daemons, client).")
keys_app = typer.Typer(no_args_is_help=True, help="CURVE keys for serving beyond loopback.")
app.add_typer(keys_app, name="keys")


def call(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """Run a command's body; a user error becomes a red one-line message and exit status 2."""
    try:
        return fn(**kwargs)
    except NpusimError as e:
        typer.secho(f"npusim: {type(e).__name__}: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def service_args(name: str, bind: Optional[str], run_dir: Optional[Path], curve_dir: Optional[Path]) -> list[str]:
    """The arguments every service's ``python -m`` entry takes."""
    args = ["--name", name]
    if bind:
        args += ["--bind", bind]
    if run_dir:
        args += ["--run-dir", str(run_dir)]
    if curve_dir:
        args += ["--curve-dir", str(curve_dir)]
    return args


@app.command()
def up(
    devices: int = typer.Option(1, min=1, help="number of emulated devices (npu0, npu1, ...)"),
    bind: Optional[str] = typer.Option(None, help="tcp://127.0.0.1:PORT: compiler on PORT, npuN on PORT+1+N"),
    run_dir: Optional[Path] = typer.Option(None, help="run directory"),
    timing_only: bool = typer.Option(False, help="daemons emulate timing only"),
    curve_dir: Optional[Path] = typer.Option(None, help="CURVE key directory (required beyond loopback)"),
    metrics_port: int = typer.Option(0, min=0, max=65535,
                                     help="npuN serves Prometheus /metrics on 127.0.0.1:PORT+N (0: off)"),
) -> None:
    """Start the compiler service and N device daemons; stop them all on Ctrl-C or SIGTERM."""
    call(stack_cli.up, devices=devices, bind=bind, run_dir=run_dir, timing_only=timing_only,
          curve_dir=curve_dir, metrics_port=metrics_port)


@app.command()
def status(
    run_dir: Optional[Path] = typer.Option(None, help="run directory"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """List the running services and devices, with their PEs."""
    call(stack_cli.status, run_dir=run_dir, json_out=json_out)


@app.command()
def health(
    endpoint: Optional[str] = typer.Option(None, help="check this endpoint only (ipc://… or tcp://…)"),
    run_dir: Optional[Path] = typer.Option(None, help="run directory (default: every service registered there)"),
    url: Optional[str] = typer.Option(None, help="check an HTTP URL instead, e.g. npusim serve's "
                                      "http://127.0.0.1:8080/v2/health/ready"),
) -> None:
    """Exit 0 when the services answer, 1 when one does not (a container's health check)."""
    raise typer.Exit(call(stack_cli.check_health, run_dir=run_dir, endpoint=endpoint, url=url))


@app.command()
def top(
    run_dir: Optional[Path] = typer.Option(None, help="run directory"),
    once: bool = typer.Option(False, "--once", help="take two samples, print them and exit"),
    interval: Optional[float] = typer.Option(None, help="seconds between samples (default 1, or 0.5 with --once)"),
    fmt: str = typer.Option("table", "--format", help="table or json (without --once: one JSON line per sample)"),
) -> None:
    """Live per-PE view of every running device: utilisation, compute and IO share, queue, jobs/s, owner."""
    raise typer.Exit(call(top_view.top, run_dir=run_dir, once=once, interval=interval, fmt=fmt))


@app.command()
def smi(
    view: str = typer.Argument(..., help="info, list, ps or status (the vendor CLI's views)"),
    run_dir: Optional[Path] = typer.Option(None, help="run directory"),
    fmt: str = typer.Option("table", "--format", help="table or json (info also: full, with UUID and S/N)"),
    interval: float = typer.Option(0.5, min=0.05, help="status: seconds over which utilisation is measured"),
) -> None:
    """The vendor CLI's device views (furiosa-smi): info, list, ps, status."""
    call(smi_view.smi, view=view, run_dir=run_dir, fmt=fmt, interval=interval)


@keys_app.command("generate")
def keys_generate(directory: Path = typer.Argument(..., help="where to write the key pairs")) -> None:
    """Create server and client CURVE key pairs (and authorise the client)."""
    keys = call(generate_keys, directory=directory)
    typer.echo(f"wrote CURVE keys to {keys.directory}; serve with --curve-dir {keys.directory}")


def _register(target: typer.Typer) -> None:
    for ep in sorted(entry_points(group=COMMANDS), key=lambda e: e.name):
        ep.load()(target)


def main() -> None:
    _register(app)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
