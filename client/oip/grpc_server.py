"""The gRPC side of the Open Inference Protocol v2 (``inference.GRPCInferenceService``), on
grpc.aio in the same event loop and over the same models as the REST side.

Inputs come as ``raw_input_contents`` (one entry per input, row-major) or as typed ``contents``;
outputs always go back as ``raw_output_contents``, which every client of the protocol reads.
Errors are gRPC statuses with a message naming the fix: INVALID_ARGUMENT for a wrong name, shape
or datatype, NOT_FOUND for an unknown model or version, UNAVAILABLE for a model that is not
loaded, a full queue or a device that is gone."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np

from npusim.client.oip import traced
from npusim.client.oip.datatypes import to_numpy, to_oip
from npusim.client.oip.metrics import ServeMetrics
from npusim.client.oip.server_info import EXTENSIONS, SERVER_NAME
from npusim.client.oip.proto import inference_pb2 as pb
from npusim.client.oip.proto import inference_pb2_grpc as pb_grpc
from npusim.client.oip.repository import Repository, Served
from npusim.services import __version__
from npusim.services.errors import DeviceError, InvalidInput, NpusimError, QueueFull, ServiceUnavailable

__all__ = ["start_grpc"]

_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents"}


def _array(t: Any, raw: bytes | None) -> np.ndarray:
    dtype = to_numpy(t.datatype)
    shape = list(t.shape)
    count = int(np.prod(shape, dtype=np.int64))
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise InvalidInput(f"input {t.name!r}: {len(raw)} raw bytes, but {shape} {t.datatype} needs "
                               f"{count * dtype.itemsize}")
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    field = _CONTENTS.get(t.datatype)
    values = getattr(t.contents, field) if field else []
    if len(values) != count:
        raise InvalidInput(f"input {t.name!r}: {len(values)} values in contents.{field}, the shape {shape} needs "
                           f"{count} (FP16 and BF16 go as raw_input_contents)")
    return np.asarray(values, dtype=dtype).reshape(shape)


class _Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, repo: Repository, metrics: ServeMetrics) -> None:
        self.repo = repo
        self.metrics = metrics

    async def _served(self, name: str, version: str, ctx: grpc.aio.ServicerContext) -> Served:
        try:
            return self.repo.get(name, version or None)
        except KeyError as e:
            await ctx.abort(grpc.StatusCode.NOT_FOUND, e.args[0])
            raise  # abort raises; this line is for the type checker

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return pb.ServerReadyResponse(ready=all(m.ready for m in self.repo.models.values()))

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        m = await self._served(request.name, request.version, context)
        return pb.ModelReadyResponse(ready=m.ready)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        m = await self._served(request.name, request.version, context)
        if m.engine is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"model {m.config.name!r} is not loaded")
        assert m.engine is not None
        p = m.engine.program
        meta = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=m.config.name, versions=[m.config.version or "1"], platform="npusim_enf",
            inputs=[meta(name=s.name, datatype=to_oip(s.dtype), shape=list(s.shape)) for s in p.inputs],
            outputs=[meta(name=s.name, datatype=to_oip(s.dtype), shape=list(s.shape)) for s in p.outputs])

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        m = await self._served(request.model_name, request.model_version, context)
        name = m.config.name
        engine = m.engine
        if engine is None or not m.ready:
            self.metrics.requests.labels(name, "unavailable").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"model {name!r} is not ready ({m.reason or m.state}); "
                                                             "load it through the repository API")
        assert engine is not None
        try:
            arrays = self._inputs(request, engine)
            out_names = [s.name for s in engine.program.outputs]
            wanted = [o.name for o in request.outputs] or out_names
            unknown = [n for n in wanted if n not in out_names]
            if unknown:
                raise InvalidInput(f"the model has no output(s) {', '.join(unknown)}; its outputs are "
                                   f"{', '.join(out_names)}")
            parent = dict(context.invocation_metadata() or ()).get("traceparent")
            result = await traced.infer(engine, arrays, span_name="inference.GRPCInferenceService/ModelInfer",
                                        traceparent=parent, attributes={"model": name})
        except InvalidInput as e:
            self.metrics.requests.labels(name, "error").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except (QueueFull, DeviceError, ServiceUnavailable) as e:
            self.metrics.requests.labels(name, "unavailable").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"model {name!r} is busy or its device is gone: {e}; "
                                                             "retry later")
        except NpusimError as e:
            self.metrics.requests.labels(name, "error").inc()
            await context.abort(grpc.StatusCode.INTERNAL, str(e))
        self.metrics.requests.labels(name, "ok").inc()
        response = pb.ModelInferResponse(model_name=name, model_version=m.config.version or "", id=request.id)
        for out_name, arr in zip(out_names, result.outputs):
            if out_name not in wanted:
                continue
            arr = np.ascontiguousarray(arr)
            response.outputs.add(name=out_name, datatype=to_oip(arr.dtype), shape=list(arr.shape))
            response.raw_output_contents.append(arr.tobytes())
        return response

    @staticmethod
    def _inputs(request: Any, engine: Any) -> list[np.ndarray]:
        specs = list(engine.program.inputs)
        raw = list(request.raw_input_contents)
        if raw and len(raw) != len(request.inputs):
            raise InvalidInput(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: give one per input")
        by_name = {}
        for i, t in enumerate(request.inputs):
            by_name[t.name] = (t, raw[i] if raw else None)
        wanted = {s.name: s for s in specs}
        for n in by_name:
            if n not in wanted:
                raise InvalidInput(f"the model has no input {n!r}; its inputs are {', '.join(wanted)}")
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise InvalidInput(f"the request lacks input(s) {', '.join(missing)}")
        arrays = []
        for s in specs:
            t, blob = by_name[s.name]
            if to_numpy(t.datatype) != np.dtype(s.dtype):
                raise InvalidInput(f"input {s.name!r} is {to_oip(s.dtype)}, not {t.datatype}")
            if tuple(t.shape) != tuple(s.shape):
                raise InvalidInput(f"input {s.name!r} has shape {list(s.shape)}, not {list(t.shape)}")
            arrays.append(_array(t, blob))
        return arrays


async def start_grpc(repo: Repository, metrics: ServeMetrics, host: str, port: int) -> grpc.aio.Server:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 256 << 20),
                                      ("grpc.max_send_message_length", 256 << 20)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(repo, metrics), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise ServiceUnavailable(f"cannot listen for gRPC on {host}:{port}; pick another --grpc-port")
    await server.start()
    return server
