"""OpenTelemetry set-up for every npusim process, and span capture for trace files.

Every process calls :func:`setup_tracing` once after it starts. Exporters come only from
the standard ``OTEL_*`` environment: OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_TRACES_EXPORTER=otlp``) is set, so Jaeger shows the traces; ``console`` for
debugging; nothing otherwise. A failed export is logged by the SDK, never raised into a
request.

The trace context travels in the message header as a W3C ``traceparent``. A request
without one is not traced downstream, so an untraced client costs the pipeline nothing.

To write a trace file without any collector, a request can ask each process to *capture*
the spans it makes for that request (:func:`capture`) and send them back with the reply
as plain records (:func:`to_record`); the client merges them into one Chrome trace.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "setup_tracing",
    "tracer",
    "active",
    "inject",
    "extract",
    "capture",
    "add_sink",
    "remove_sink",
    "to_record",
    "TRACK",
]

log = logging.getLogger("npusim.tracing")

TRACK = "npusim.track"
"""Span attribute naming the timeline a span belongs to inside its process (e.g. ``pe0-1``)."""

_propagator = TraceContextTextMapPropagator()
_lock = threading.Lock()
_provider: TracerProvider | None = None
_label = f"pid-{os.getpid()}"
_otlp = False
_capture: contextvars.ContextVar[list[ReadableSpan] | None] = contextvars.ContextVar("npusim_capture", default=None)
_sinks: list[list[ReadableSpan]] = []


class _CaptureProcessor(SpanProcessor):
    """Hands finished spans to the capture list of the current context and to global sinks."""

    def on_end(self, span: ReadableSpan) -> None:
        target = _capture.get()
        if target is not None:
            target.append(span)
        for sink in tuple(_sinks):
            sink.append(span)


def _exporter_names() -> list[str]:
    raw = os.environ.get("OTEL_TRACES_EXPORTER")
    if raw is None:
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if endpoint else []
    return [n.strip().lower() for n in raw.split(",") if n.strip() and n.strip().lower() != "none"]


def setup_tracing(service: str, *, instance: str | None = None) -> None:
    """Configure this process's tracer provider from ``OTEL_*``; later calls only relabel.

    Args:
        service: ``client``, ``worker``, ``daemon`` or ``compiler``; becomes ``npusim-<service>``
            unless ``OTEL_SERVICE_NAME`` says otherwise.
        instance: the process's label in trace files (``worker-0``, ``npu0``).
    """
    global _provider, _label, _otlp
    with _lock:
        _label = instance or service
        if _provider is not None or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
            return
        attrs = {
            "service.instance.id": f"{_label}@{os.uname().nodename}:{os.getpid()}",
            "process.pid": os.getpid(),
            "npusim.process": _label,
        }
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attrs["service.name"] = f"npusim-{service}"  # explicit attributes would override the env var
        resource = Resource.create(attrs)
        existing = trace.get_tracer_provider()
        if isinstance(existing, TracerProvider):
            provider = existing  # the application set up OpenTelemetry itself: join it
            _otlp = True
        else:
            provider = TracerProvider(resource=resource)
            for name in _exporter_names():
                if name == "otlp":
                    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
                    _otlp = True
                elif name == "console":
                    provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
                else:
                    log.warning("OTEL_TRACES_EXPORTER=%s is not supported by npusim (use otlp or console)", name)
            trace.set_tracer_provider(provider)
        provider.add_span_processor(_CaptureProcessor())
        _provider = provider


def shutdown() -> None:
    """Flush exporters; services call this on the way out."""
    if _provider is not None:
        _provider.force_flush(5000)
        _provider.shutdown()


def tracer() -> trace.Tracer:
    return trace.get_tracer("npusim")


def active() -> bool:
    """Whether a new request should be traced: an exporter or a capture wants its spans."""
    return _otlp or bool(_sinks) or _capture.get() is not None


def inject(ctx: otel_context.Context | None = None) -> str | None:
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=ctx)
    return carrier.get("traceparent")


def extract(traceparent: str | None) -> otel_context.Context | None:
    """Context of a remote parent, or None when the request is not traced."""
    if not traceparent:
        return None
    ctx = _propagator.extract({"traceparent": traceparent})
    span_ctx = trace.get_current_span(ctx).get_span_context()
    return ctx if span_ctx.is_valid else None


@contextlib.contextmanager
def capture(enabled: bool = True) -> Iterator[list[ReadableSpan]]:
    """Collect the spans that end inside this block (on this thread/context)."""
    spans: list[ReadableSpan] = []
    if not enabled:
        yield spans
        return
    token = _capture.set(spans)
    try:
        yield spans
    finally:
        _capture.reset(token)


def add_sink(sink: list[ReadableSpan]) -> None:
    """Receive every span this process finishes until :func:`remove_sink` (the profiler)."""
    with _lock:
        _sinks.append(sink)


def remove_sink(sink: list[ReadableSpan]) -> None:
    with _lock:
        if any(s is sink for s in _sinks):
            _sinks[:] = [s for s in _sinks if s is not sink]


def to_record(span: ReadableSpan) -> dict[str, Any]:
    """A span as a msgpack-able record for trace files."""
    ctx = span.context
    attrs = dict(span.attributes or {})
    resource = span.resource.attributes if span.resource is not None else {}
    return {
        "name": span.name,
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "start": span.start_time,
        "end": span.end_time,
        "process": str(resource.get("npusim.process", _label)),
        "pid": int(resource.get("process.pid", os.getpid())),
        "track": str(attrs.pop(TRACK, "main")),
        "attrs": {k: v if isinstance(v, (str, int, float, bool)) else str(v) for k, v in attrs.items()},
    }
