"""Prometheus ``/metrics`` for one daemon (``--metrics-port``), read from its PE counters.

Names follow the vendor's furiosa-metrics-exporter where it has one
(``furiosa_npu_core_utilization`` in percent, ``furiosa_npu_core_frequency`` in MHz) so
existing dashboards work; everything else is ``npusim_npu_*``. Nothing is kept up to date
in the background: the collector reads ``DaemonService.counters()`` when scraped.

The daemon's state belongs to its loop thread and the HTTP server runs on its own threads,
so a scrape asks the loop for the snapshot (one consistent read, never half a job booked)
and reads directly only if the loop does not answer in time (it is stopping). The
utilisation gauge is the change since the previous scrape (since start on the first);
``rate(npusim_npu_task_cycles_total[1m]) / rate(npusim_npu_cycles_total[1m])`` gives the
same over any window without depending on who scrapes how often.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from npusim.services.errors import ConfigError
from npusim.services.rates import pe_rates

if TYPE_CHECKING:
    from npusim.npu_daemon.server import DaemonService

__all__ = ["DaemonCollector", "MetricsExporter", "METRICS_HOST"]

METRICS_HOST = "127.0.0.1"
"""Loopback only: the metrics carry session names and there is no authentication on HTTP."""
SNAPSHOT_TIMEOUT_S = 1.0

_COUNTERS = (  # (metric name without _total, counters() key, help)
    ("npusim_npu_cycles", "cycles", "Elapsed cycles at the PE clock since the daemon started."),
    ("npusim_npu_task_cycles", "task_cycles", "Cycles the PE held a job (emulated time)."),
    ("npusim_npu_tensor_cycles", "tensor_cycles", "Cycles the PE's tensor array computed (emulated time)."),
    ("npusim_npu_io_cycles", "io_cycles", "Cycles of DMA to and from the PE (emulated time)."),
    ("npusim_npu_jobs", "jobs", "Jobs the PE finished."),
)


class DaemonCollector:
    """A prometheus_client collector over one daemon's ``counters()``; attach the service later."""

    def __init__(self, device: str, clock_hz: float) -> None:
        self.device = device
        self.clock_hz = clock_hz
        self.service: DaemonService | None = None
        self._prev: dict[str, dict[str, Any]] = {}  # core -> its counters at the last scrape
        self._lock = threading.Lock()  # scrapes may run concurrently (threaded HTTP server)

    def snapshot(self) -> dict[str, Any] | None:
        """A copy of the counters, read on the daemon's loop thread when it answers."""
        svc = self.service
        if svc is None:
            return None
        box: list[dict[str, Any]] = []
        done = threading.Event()

        def read() -> None:
            box.append(svc.counters())
            done.set()

        svc.call_soon_threadsafe(read)
        if done.wait(SNAPSHOT_TIMEOUT_S) and box:
            return box[0]
        return svc.counters()  # the loop is stopping or stuck: ints read off dicts are still whole

    def collect(self) -> Iterator[Metric]:
        counters = self.snapshot()
        if counters is None:
            return
        pes = {k: dict(v) for k, v in counters.items() if k.startswith("pe") and isinstance(v, dict)}
        labels = ["device", "core"]
        util = GaugeMetricFamily("furiosa_npu_core_utilization",
                                 "Percent of time the core held a job since the previous scrape.", labels=labels)
        freq = GaugeMetricFamily("furiosa_npu_core_frequency", "Core clock in MHz.", labels=labels)
        queue = GaugeMetricFamily("npusim_npu_queue_depth", "Outstanding jobs of the session owning the core.",
                                  labels=labels)
        totals = {key: CounterMetricFamily(name, doc, labels=labels) for name, key, doc in _COUNTERS}
        with self._lock:
            for pe, k in pes.items():
                core = _core(pe)
                rates = pe_rates(self._prev.get(core, {}), k, 0.0)  # the same arithmetic as npusim top
                self._prev[core] = k
                values = [self.device, core]
                util.add_metric(values, rates.utilization_pct)
                freq.add_metric(values, self.clock_hz / 1e6)
                queue.add_metric(values, int(k.get("queue", 0)))
                for key, fam in totals.items():
                    fam.add_metric(values, int(k.get(key, 0)))
        yield util
        yield freq
        yield from totals.values()
        yield queue
        host = CounterMetricFamily("npusim_npu_host_bound",
                                   "Jobs whose outputs took this host longer to compute than the emulated chip "
                                   "needed (wall clock then follows the host, not the chip).", labels=["device"])
        host.add_metric([self.device], int(counters.get("host_bound", 0)))
        yield host


def _core(pe: str) -> str:
    """The core label: the PE index, "pe0" -> "0" (a number, as the hardware numbers its cores)."""
    return pe[2:] if pe[2:].isdigit() else pe


class MetricsExporter:
    """An HTTP server for ``/metrics`` on 127.0.0.1, with a private registry.

    Bound before the daemon binds its socket, so a taken port fails the start cleanly;
    :meth:`attach` then gives the collector the service to read.
    """

    def __init__(self, port: int, device: str, clock_hz: float) -> None:
        if not 0 < port < 65536:
            raise ConfigError(f"--metrics-port {port}: give a TCP port 1-65535 (0 turns the exporter off)")
        self.collector = DaemonCollector(device, clock_hz)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)  # type: ignore[arg-type]
        try:
            self._server, self._thread = start_http_server(port, addr=METRICS_HOST, registry=self.registry)
        except OSError as e:
            raise ConfigError(f"--metrics-port {port}: cannot serve /metrics on {METRICS_HOST}:{port} "
                              f"({e.strerror or e}); pick a free port, or 0 to turn the exporter off") from None
        self.port = port
        self.url = f"http://{METRICS_HOST}:{port}/metrics"

    def attach(self, service: DaemonService) -> None:
        self.collector.service = service

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
