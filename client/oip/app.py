"""The REST side of the Open Inference Protocol v2 as an ASGI app (Starlette): health, metadata,
inference (JSON and binary tensors), and the repository extension (index, load, unload).

Every request ends in one response: an answer, or an error status with ``{"error": message}``
naming what to fix: 400 for a wrong name, shape, datatype or model, 503 when the model's queue is
full or its device is gone (never a wait without end)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from npusim.client.oip import traced
from npusim.client.oip.codec import HEADER_LENGTH, decode_request, encode_response
from npusim.client.oip.datatypes import to_oip
from npusim.client.oip.grpc_server import start_grpc
from npusim.client.oip.metrics import ServeMetrics
from npusim.client.oip.server_info import EXTENSIONS, SERVER_NAME
from npusim.client.oip.repository import Repository
from npusim.services import __version__
from npusim.services.errors import DeviceError, NpusimError, QueueFull, ServiceUnavailable

__all__ = ["create_app", "SERVER_NAME", "EXTENSIONS"]

UNAVAILABLE = (QueueFull, DeviceError, ServiceUnavailable)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(repo: Repository, *, load_at_start: bool = True,
               grpc_address: tuple[str, int] | None = None) -> Starlette:
    """The REST app; with ``grpc_address``, its lifespan also serves gRPC there, on the same models."""
    metrics = ServeMetrics(repo)
    requests, latency = metrics.requests, metrics.latency

    def served(request: Request) -> Any:  # an unknown model's KeyError answers 400 (on_lookup)
        return repo.get(request.path_params["model"], request.path_params.get("version"))

    async def live(_: Request) -> Response:
        return JSONResponse({"live": True})

    # readiness is the status code (200 ready, 400 not), the body says the same, as the protocol's
    # clients read it
    async def ready(_: Request) -> Response:
        ok = all(m.ready for m in repo.models.values())
        return JSONResponse({"ready": ok}, status_code=200 if ok else 400)

    async def server_metadata(_: Request) -> Response:
        return JSONResponse({"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS})

    async def model_ready(request: Request) -> Response:
        m = served(request)
        return JSONResponse({"name": m.config.name, "ready": m.ready}, status_code=200 if m.ready else 400)

    async def model_metadata(request: Request) -> Response:
        m = served(request)
        if m.engine is None:
            return _error(400, f"model {m.config.name!r} is not loaded ({m.reason or m.state}); load it with POST "
                               f"/v2/repository/models/{m.config.name}/load")
        p = m.engine.program
        return JSONResponse({
            "name": m.config.name, "versions": [m.config.version or "1"], "platform": "npusim_enf",
            "inputs": [{"name": s.name, "datatype": to_oip(s.dtype), "shape": list(s.shape)} for s in p.inputs],
            "outputs": [{"name": s.name, "datatype": to_oip(s.dtype), "shape": list(s.shape)} for s in p.outputs]})

    async def infer(request: Request) -> Response:
        m = served(request)
        name = m.config.name
        t0 = time.perf_counter()
        engine = m.engine
        if engine is None or not m.ready:
            requests.labels(name, "error").inc()
            return _error(400, f"model {name!r} is not ready ({m.reason or m.state}); load it with POST "
                               f"/v2/repository/models/{name}/load")
        body = await request.body()
        req = decode_request(body, request.headers.get(HEADER_LENGTH), list(engine.program.inputs))
        result = await traced.infer(engine, req.arrays, span_name=f"POST {request.url.path}",
                                    traceparent=request.headers.get("traceparent"), attributes={"model": name})
        out, head_len = encode_response(name, m.config.version, req, [s.name for s in engine.program.outputs],
                                        result.outputs)
        requests.labels(name, "ok").inc()
        latency.labels(name).observe(time.perf_counter() - t0)
        headers = {HEADER_LENGTH: str(head_len)} if head_len is not None else {}
        return Response(out, media_type="application/octet-stream" if head_len is not None else "application/json",
                        headers=headers)

    async def index(_: Request) -> Response:
        return JSONResponse(repo.index())

    async def load(request: Request) -> Response:
        await repo.load(Repository.check_name(request.path_params["model"]))
        return Response(status_code=200)

    async def unload(request: Request) -> Response:
        await repo.unload(Repository.check_name(request.path_params["model"]))
        return Response(status_code=200)

    async def scrape(_: Request) -> Response:
        body = await asyncio.to_thread(generate_latest, metrics.registry)  # asks the devices: not on the loop
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def on_lookup(_: Request, exc: Exception) -> Response:
        return _error(400, str(exc.args[0]) if exc.args else str(exc))  # a KeyError's str() adds quotes

    async def on_npusim(request: Request, exc: Exception) -> Response:
        model = request.path_params.get("model", "")
        if model:
            requests.labels(model, "unavailable" if isinstance(exc, UNAVAILABLE) else "error").inc()
        if isinstance(exc, QueueFull):
            return _error(503, f"model {model!r} is busy: {exc}; retry later")
        if isinstance(exc, UNAVAILABLE):
            return _error(503, str(exc))
        return _error(400, str(exc))

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        grpc_server = await start_grpc(repo, metrics, *grpc_address) if grpc_address is not None else None
        try:
            if load_at_start:
                for name in repo.models:
                    await repo.load(name)
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=5)
            await repo.close()

    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version}"
    routes = [
        Route("/v2", server_metadata), Route("/v2/health/live", live), Route("/v2/health/ready", ready),
        Route(model, model_metadata), Route(versioned, model_metadata),
        Route(model + "/ready", model_ready), Route(versioned + "/ready", model_ready),
        Route(model + "/infer", infer, methods=["POST"]), Route(versioned + "/infer", infer, methods=["POST"]),
        Route("/v2/repository/index", index, methods=["POST"]),
        Route("/v2/repository/models/{model}/load", load, methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", unload, methods=["POST"]),
        Route("/metrics", scrape),
    ]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={LookupError: on_lookup, NpusimError: on_npusim,
                                         json.JSONDecodeError: on_lookup})
