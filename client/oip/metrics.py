"""The server's ``/metrics``: its own request counts and latencies, and the NPU metrics of the
devices its models run on under the vendor exporter's names (``furiosa_npu_core_utilization``
with ``device`` and ``core`` labels, as each daemon's own exporter has them), so dashboards built
for furiosa-server and the metrics exporter read npusim unchanged. The devices are asked for
their counters when scraped; nothing runs in the background."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from npusim.client.oip.repository import Repository
from npusim.services.rates import pe_rates, sample

__all__ = ["ServeMetrics"]

BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5)


class _NpuCollector:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._prev: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        devices: dict[str, str] = {}
        for m in self.repo.models.values():
            engine = m.engine
            for o in (engine.opened if engine is not None else ()):
                devices[o.device] = o.endpoint
        util = GaugeMetricFamily("furiosa_npu_core_utilization",
                                 "Percent of time the core held a job since the previous scrape.",
                                 labels=["device", "core"])
        with self._lock:
            for device, endpoint in sorted(devices.items()):
                s = sample(device, endpoint, timeout_s=1.0)
                for pe, counters in sorted((s.counters or {}).items()):
                    if not (pe.startswith("pe") and isinstance(counters, dict)):
                        continue
                    core = pe[2:]
                    rates = pe_rates(self._prev.get((device, core), {}), counters, 0.0)
                    self._prev[(device, core)] = counters
                    util.add_metric([device, core], rates.utilization_pct)
        yield util


class ServeMetrics:
    def __init__(self, repo: Repository) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("npusim_serve_requests", "Inference requests by model and outcome (ok, error, "
                                "unavailable).", ["model", "outcome"], registry=self.registry)
        self.latency = Histogram("npusim_serve_request_duration_seconds", "Inference request latency by model.",
                                 ["model"], registry=self.registry, buckets=BUCKETS)
        self.registry.register(_NpuCollector(repo))
