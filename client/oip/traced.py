"""One inference request of the server, as a span under the caller's ``traceparent`` (REST header
or gRPC metadata) when tracing is on, so one request is one trace from the server down to the PE."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from npusim.client._engine import Engine, Result
from npusim.services import tracing

__all__ = ["infer"]


async def infer(engine: Engine, arrays: list[np.ndarray], *, span_name: str, traceparent: str | None,
                attributes: dict[str, Any]) -> Result:
    """Submit without waiting for room (a full queue raises QueueFull at once) and await the answer."""
    span = None
    if tracing.active():
        span = tracing.tracer().start_span(span_name, kind=SpanKind.SERVER, context=tracing.extract(traceparent),
                                           attributes=attributes)
    try:
        token = otel_context.attach(trace.set_span_in_context(span)) if span is not None else None
        try:
            fut = engine.submit(arrays, block=False)
        finally:
            if token is not None:
                otel_context.detach(token)
        return await asyncio.wrap_future(fut)
    finally:
        if span is not None:
            span.end()
