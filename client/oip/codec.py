"""Inference requests and responses of the REST protocol: JSON tensors, and the binary tensor
data extension (a JSON header followed by raw bytes, its length in
``Inference-Header-Content-Length``) that Triton's clients use with ``binary_data=True``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from npusim.client.oip.datatypes import to_numpy, to_oip
from npusim.services.errors import InvalidInput
from npusim.services.program import TensorSpec

__all__ = ["HEADER_LENGTH", "Request", "decode_request", "encode_response"]

HEADER_LENGTH = "inference-header-content-length"


@dataclass
class Request:
    id: str | None
    arrays: list[np.ndarray]
    binary_outputs: dict[str, bool]  # requested output name -> returned as binary
    all_binary: bool  # the request's own binary_data_output parameter


def _header(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    n = len(body)
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise InvalidInput(f"Inference-Header-Content-Length {header_length!r} is not a number") from None
        if not 0 <= n <= len(body):
            raise InvalidInput(f"Inference-Header-Content-Length {n} is outside the body ({len(body)} bytes)")
    try:
        head = json.loads(bytes(body[:n]))
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInput(f"the request body is not JSON: {e}") from None
    if not isinstance(head, dict):
        raise InvalidInput("the request must be a JSON object with an 'inputs' list")
    return head, memoryview(body)[n:]


def decode_request(body: bytes, header_length: str | None, specs: list[TensorSpec]) -> Request:
    """The request's input arrays, in the model's input order, checked against its inputs."""
    head, rest = _header(body, header_length)
    inputs = head.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("the request needs a non-empty 'inputs' list")
    by_name: dict[str, np.ndarray] = {}
    offset = 0
    wanted = {s.name: s for s in specs}
    for i, t in enumerate(inputs):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise InvalidInput(f"inputs[{i}] needs a 'name'")
        name = t["name"]
        if name not in wanted:
            raise InvalidInput(f"the model has no input {name!r}; its inputs are {', '.join(wanted)}")
        spec = wanted[name]
        dtype = to_numpy(str(t.get("datatype")))
        shape = t.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise InvalidInput(f"input {name!r} needs a 'shape' list of non-negative integers")
        if dtype != np.dtype(spec.dtype):
            raise InvalidInput(f"input {name!r} is {to_oip(spec.dtype)}, not {t.get('datatype')}")
        if tuple(shape) != tuple(spec.shape):
            raise InvalidInput(f"input {name!r} has shape {list(spec.shape)}, not {shape}")
        count = int(np.prod(shape, dtype=np.int64))
        size = (t.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if size != count * dtype.itemsize or offset + size > len(rest):
                raise InvalidInput(f"input {name!r}: binary_data_size {size} does not match {shape} {dtype} "
                                   f"({count * dtype.itemsize} bytes) or the body")
            arr = np.frombuffer(rest[offset:offset + size], dtype=dtype).reshape(shape).copy()
            offset += size
        else:
            try:
                arr = np.asarray(t.get("data"), dtype=dtype)
            except (TypeError, ValueError) as e:
                raise InvalidInput(f"input {name!r}: 'data' is not {t.get('datatype')} values: {e}") from None
            if arr.size != count:
                raise InvalidInput(f"input {name!r}: 'data' holds {arr.size} values, the shape {shape} needs {count}")
            arr = arr.reshape(shape)
        by_name[name] = arr
    missing = [n for n in wanted if n not in by_name]
    if missing:
        raise InvalidInput(f"the request lacks input(s) {', '.join(missing)}")
    params = head.get("parameters") or {}
    outs = head.get("outputs") or []
    binary = {o["name"]: bool((o.get("parameters") or {}).get("binary_data", False))
              for o in outs if isinstance(o, dict) and isinstance(o.get("name"), str)}
    rid = head.get("id")
    return Request(str(rid) if rid is not None else None, [by_name[s.name] for s in specs], binary,
                   bool(params.get("binary_data_output", False)))


def encode_response(model: str, version: str | None, req: Request, names: list[str],
                    outputs: list[np.ndarray]) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    wanted = req.binary_outputs or {n: req.all_binary for n in names}
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise InvalidInput(f"the model has no output(s) {', '.join(unknown)}; its outputs are {', '.join(names)}")
    tensors, blobs = [], []
    for name, arr in zip(names, outputs):
        if name not in wanted:
            continue
        arr = np.ascontiguousarray(arr)
        t: dict[str, Any] = {"name": name, "datatype": to_oip(arr.dtype), "shape": list(arr.shape)}
        if wanted[name] or req.all_binary:
            blob = arr.tobytes()
            t["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            t["data"] = arr.ravel().tolist()
        tensors.append(t)
    out: dict[str, Any] = {"model_name": model, "outputs": tensors}
    if version:
        out["model_version"] = version
    if req.id is not None:
        out["id"] = req.id
    head = json.dumps(out, separators=(",", ":")).encode()
    return (head + b"".join(blobs), len(head)) if blobs else (head, None)
