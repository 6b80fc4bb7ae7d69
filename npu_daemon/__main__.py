"""``python -m npusim.npu_daemon --name npu0``: one emulated device (what ``npusim up`` spawns)."""

from __future__ import annotations

import argparse
import logging
import sys

import zmq

from npusim.services.errors import ConfigError, NpusimError


def main(argv: list[str] | None = None) -> int:
    from npusim.npu_daemon.server import DaemonOptions, DaemonService
    from npusim.services.runner import common_args, prepare, serve, service_kwargs

    p = argparse.ArgumentParser(prog="python -m npusim.npu_daemon", description=__doc__)
    common_args(p, default_name="npu0")
    p.add_argument("--timing-only", action="store_true")
    p.add_argument("--ort-threads", type=int, default=1)
    p.add_argument("--queue-limit", type=int, default=128)
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--jitter", type=float, default=0.0, help="relative std-dev of execution time (0: deterministic)")
    p.add_argument("--seed", type=int, default=0, help="seed of the jitter")
    p.add_argument("--hw", action="append", default=[], metavar="KEY=VALUE",
                   help="hardware knob override, e.g. pcie_bytes_per_s=7.9e9 (what-if studies)")
    p.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                   help="serve Prometheus /metrics on http://127.0.0.1:PORT (0: off)")
    args = p.parse_args(argv)
    exporter = None
    try:
        rdir, endpoint = prepare(args, kind="daemon")
        from npusim.services.hw import WARBOY, with_overrides

        if args.jitter < 0:
            raise ConfigError(f"--jitter {args.jitter}: must be ≥ 0")
        opts = DaemonOptions(timing_only=args.timing_only, ort_threads=args.ort_threads,
                             queue_limit=args.queue_limit, time_scale=args.time_scale, jitter=args.jitter,
                             seed=args.seed, hw=with_overrides(WARBOY, args.hw))  # type: ignore[arg-type]
        if args.metrics_port:  # bound first: a taken port fails the start before the daemon is reachable
            from npusim.npu_daemon.metrics import MetricsExporter

            exporter = MetricsExporter(args.metrics_port, args.name, opts.hw.clock_hz)
        service = DaemonService(args.name, endpoint, options=opts, **service_kwargs(args))
    except (NpusimError, zmq.ZMQError) as e:
        if exporter is not None:
            exporter.close()
        print(f"npusim daemon: {e}", file=sys.stderr)
        return 2
    if exporter is not None:
        exporter.attach(service)
        logging.getLogger("npusim").info("%s: Prometheus metrics on %s", args.name, exporter.url)
    try:
        return serve(service, kind="daemon", rdir=rdir, ephemeral=args.ephemeral)
    finally:
        if exporter is not None:
            exporter.close()


if __name__ == "__main__":
    sys.exit(main())
