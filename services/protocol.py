"""The wire protocol: every message npusim processes exchange, defined once.

A message is a list of ZeroMQ frames::

    [header, tensor_0, tensor_1, ...]

``header`` is a msgpack map ``{v, k, id, tp, t, b}``: protocol version, message kind,
request id, W3C ``traceparent`` (or nil), tensor descriptors ``[[name, dtype, shape], ...]``
and a kind-specific body. Each tensor frame holds the raw C-ordered bytes of one tensor.
Tensors never travel inside msgpack and nothing is ever pickled: a frame is sent zero-copy
(pyzmq copies only frames below its 64 kB ``copy_threshold``) and received as a buffer that
``numpy.frombuffer`` wraps without a copy.

:func:`decode` trusts nothing: a wrong version or kind, a missing or extra frame, a frame
whose size disagrees with its descriptor, an oversize message or a body field of the wrong
type raises :class:`~services.errors.ProtocolError`, which a service turns into an ERROR
reply. Fuzzing tests hold it to that.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from npusim.services.errors import ProtocolError, to_wire

__all__ = [
    "VERSION",
    "Kind",
    "Message",
    "encode",
    "decode",
    "error_message",
    "peek_id",
    "DTYPES",
    "HEARTBEAT_INTERVAL_S",
    "HEARTBEAT_LIVENESS",
    "MAX_HEADER_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
]

VERSION = 1
HEARTBEAT_INTERVAL_S = 1.0
"""Seconds between heartbeats; a peer silent for HEARTBEAT_LIVENESS intervals is dead."""
HEARTBEAT_LIVENESS = 3
MAX_HEADER_BYTES = 1 << 20
DEFAULT_MAX_MESSAGE_BYTES = 1 << 30
MAX_NDIM = 8

DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name)
    for name in (
        "bool", "int8", "uint8", "int16", "uint16", "int32", "uint32",
        "int64", "uint64", "float16", "float32", "float64",
    )
}


class Kind(enum.IntEnum):
    """Message kinds. Requests and their replies sit next to each other."""

    ERROR = 1
    HEALTH = 2
    HEALTH_OK = 3
    HEARTBEAT = 4
    HEARTBEAT_OK = 5
    STATS = 6
    STATS_OK = 7
    # client -> compiler service
    COMPILE = 10
    COMPILED = 11
    # client / worker -> device daemon
    OPEN = 20
    OPENED = 21
    CLOSE = 22
    CLOSED = 23
    RUN = 24
    RESULT = 25
    # client <-> its worker processes
    READY = 40
    SETUP = 41
    SETUP_OK = 42
    JOB = 43
    DONE = 44
    STOP = 45


_KINDS = {int(k): k for k in Kind}  # a dict lookup is ten times cheaper than Kind(k)

_Spec = tuple[tuple[type, ...], bool]
_STR: _Spec = ((str,), True)
_INT: _Spec = ((int,), True)
_DICT: _Spec = ((dict,), True)
_LIST: _Spec = ((list,), True)


def _opt(spec: _Spec) -> _Spec:
    return (spec[0] + (type(None),), False)


# Body fields each kind must (True) or may (False) carry, with their allowed types.
# Unknown extra fields are ignored so a newer peer can add fields.
BODY: dict[Kind, dict[str, _Spec]] = {
    Kind.ERROR: {"code": _INT, "message": _STR, "details": _opt(_DICT)},
    Kind.HEALTH: {},
    Kind.HEALTH_OK: {"service": _STR, "name": _STR, "pid": _INT, "version": _STR},
    Kind.HEARTBEAT: {"handles": _opt(_LIST)},
    Kind.HEARTBEAT_OK: {"dead": _opt(_LIST)},
    Kind.STATS: {},
    Kind.STATS_OK: {"stats": _DICT},
    Kind.COMPILE: {"options": _DICT, "collect": _opt(((bool,), False))},
    Kind.COMPILED: {"info": _DICT, "cached": ((bool,), True), "spans": _opt(_LIST)},
    Kind.OPEN: {"pe": _STR, "session": _STR, "client_pid": _opt(_INT)},
    Kind.OPENED: {"handle": _STR, "pe": _STR, "device": _STR, "queue_limit": _INT},
    Kind.CLOSE: {"handle": _STR},
    Kind.CLOSED: {},
    Kind.RUN: {"handle": _STR, "stage": _opt(_INT), "collect": _opt(((bool,), False))},
    Kind.RESULT: {"timing": _DICT, "spans": _opt(_LIST)},
    Kind.READY: {"worker": _INT, "pid": _INT},
    Kind.SETUP: {"daemon": _STR, "device": _STR, "handle": _STR, "timeout_s": ((int, float), True),
                 "arena": _opt(_STR), "max_message_bytes": _opt(_INT)},
    Kind.SETUP_OK: {},
    Kind.JOB: {"collect": _opt(((bool,), False))},
    Kind.DONE: {"timing": _opt(_DICT), "spans": _opt(_LIST)},
    Kind.STOP: {},
}


@dataclass(slots=True)
class Message:
    """One decoded message. ``tensors`` keeps wire order; names need not be unique."""

    kind: Kind
    id: int = 0
    body: dict[str, Any] = field(default_factory=dict)
    tensors: list[tuple[str, np.ndarray]] = field(default_factory=list)
    traceparent: str | None = None

    def reply(self, kind: Kind, body: dict[str, Any] | None = None,
              tensors: list[tuple[str, np.ndarray]] | None = None) -> Message:
        return Message(kind, self.id, body or {}, tensors or [], self.traceparent)

    def tensor(self, name: str) -> np.ndarray:
        for n, a in self.tensors:
            if n == name:
                return a
        raise ProtocolError(f"{self.kind.name} message has no tensor named {name!r}")


def error_message(req_id: int, exc: BaseException) -> Message:
    return Message(Kind.ERROR, req_id, to_wire(exc))


_NAMES = {dt: name for name, dt in DTYPES.items()}


def encode(msg: Message) -> list[Any]:
    """Frames for ``send_multipart(frames, copy=False)``: the header, then tensor buffers."""
    descs = []
    frames: list[Any] = [b""]
    for name, arr in msg.tensors:
        dname = _NAMES.get(arr.dtype)
        if dname is None:
            raise ProtocolError(f"tensor {name!r} has dtype {arr.dtype} which the wire cannot carry")
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        descs.append([name, dname, list(arr.shape)])
        frames.append(memoryview(arr).cast("B") if arr.ndim and arr.size else arr.tobytes())
    frames[0] = msgpack.packb(
        {"v": VERSION, "k": int(msg.kind), "id": msg.id, "tp": msg.traceparent, "t": descs, "b": msg.body},
        use_bin_type=True,
    )
    return frames


def _as_buffer(frame: Any) -> memoryview:
    buf = getattr(frame, "buffer", None)
    return buf if buf is not None else memoryview(frame)


def peek_id(frames: Sequence[Any]) -> int:
    """Best-effort request id of a message that failed to decode, for the error reply."""
    try:
        h = msgpack.unpackb(bytes(_as_buffer(frames[0])[:MAX_HEADER_BYTES]), raw=False)
        rid = h.get("id") if isinstance(h, dict) else None
        return rid if type(rid) is int and 0 <= rid < 2**63 else 0
    except Exception:  # noqa: BLE001 - anything goes wrong: there is no id to echo
        return 0


def decode(frames: Sequence[Any], *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """Validate and decode frames (``zmq.Frame`` or bytes-like) into a :class:`Message`."""
    if not frames:
        raise ProtocolError("empty message")
    bufs = [_as_buffer(f) for f in frames]
    total = sum(b.nbytes for b in bufs)
    if total > max_message_bytes:
        raise ProtocolError(
            f"message of {total} bytes exceeds the limit of {max_message_bytes} bytes; "
            "send smaller tensors or raise NPUSIM_MAX_MESSAGE_BYTES on the service",
            details={"size": total, "limit": max_message_bytes},
        )
    if bufs[0].nbytes > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {bufs[0].nbytes} bytes exceeds {MAX_HEADER_BYTES}")
    key = _repeat_key(bufs[0])
    if key is not None:
        rid, rest = key
        known = _REPEATS.get(rest)
        if known is not None and len(known[2]) == len(bufs) - 1 and rid < 2**63:
            kind, body, specs = known
            return Message(kind, rid, dict(body), [_view(spec, b) for spec, b in zip(specs, bufs[1:])])
    msg, canonical = _decode(bufs)
    if key is not None and canonical and msg.kind in _REPEATED and msg.traceparent is None:
        if len(_REPEATS) >= _REPEATS_MAX:
            _REPEATS.clear()
        _REPEATS[key[1]] = (msg.kind, dict(msg.body), [(n, a.dtype, a.shape, a.nbytes) for n, a in msg.tensors])
    return msg


_REPEATED = frozenset({Kind.RUN, Kind.JOB})
"""Requests a peer sends over and over with the same header but for the id (the same session,
stage and tensor shapes, no trace): their decoded headers are remembered, so the next one costs
a lookup instead of msgpack and the validation. The first of each is decoded and validated in
full, and only a header with the six keys once each is remembered; the next ones are byte for
byte the same apart from the id, so they decode to the same values."""

_HEAD = b"\x86\xa1v" + bytes([VERSION]) + b"\xa1k"  # encode() writes v, k, id first: a map of 6, "v": 1, "k"
_ID_AT = len(_HEAD) + len(b"\x18\xa2id")  # then a kind below 128 and "id": the id starts here
_ID_WIDTH = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}  # msgpack's unsigned ints (a positive fixint is 1 byte)
_Spec3 = tuple[str, np.dtype, tuple[int, ...], int]  # name, dtype, shape, bytes
_REPEATS: dict[bytes, tuple[Kind, dict[str, Any], list[_Spec3]]] = {}
_REPEATS_MAX = 1024
_REPEATED_BYTES = frozenset(int(k) for k in _REPEATED)  # kinds below 128: one msgpack byte each


def _repeat_key(head: memoryview) -> tuple[int, bytes] | None:
    """(id, the header without its id) when ``head`` starts the way encode() writes a header of a
    kind in _REPEATED; None for any other header, which is then neither copied nor hashed."""
    if head.nbytes <= _ID_AT or head[6] not in _REPEATED_BYTES:
        return None
    h = bytes(head)
    if not h.startswith(_HEAD) or h[7:10] != b"\xa2id":
        return None
    tag = h[_ID_AT]
    if tag < 0x80:
        return tag, h[6:7] + h[_ID_AT + 1:]
    width = _ID_WIDTH.get(tag)
    if width is None:
        return None
    end = _ID_AT + 1 + width
    return int.from_bytes(h[_ID_AT + 1:end], "big"), h[6:7] + h[end:]


def _view(spec: _Spec3, buf: memoryview) -> tuple[str, np.ndarray]:
    name, dt, shape, nbytes = spec
    if buf.nbytes != nbytes:
        raise ProtocolError(f"tensor {name!r}: descriptor {dt}{shape} needs {nbytes} bytes "
                            f"but its frame has {buf.nbytes}")
    if nbytes == 0:
        return name, np.zeros(shape, dt)
    return name, np.frombuffer(buf, dtype=dt).reshape(shape)


_KEYS = frozenset(("v", "k", "id", "tp", "t", "b"))


def _canonical(h: dict[Any, Any]) -> bool:
    """Whether a decoded header map had exactly the six keys, each once (a duplicate key would
    have collapsed into one, leaving fewer)."""
    return len(h) == 6 and h.keys() == _KEYS


def _decode(bufs: list[memoryview]) -> tuple[Message, bool]:
    """Decode and validate a header in full; also whether it has exactly the six keys, once each."""
    try:
        h = msgpack.unpackb(bufs[0], raw=False, strict_map_key=True)
    except Exception as e:  # noqa: BLE001 - msgpack raises many types on garbage
        raise ProtocolError(f"header is not valid msgpack: {type(e).__name__}: {e}") from None
    if not isinstance(h, dict):
        raise ProtocolError(f"header must be a map, got {type(h).__name__}")
    version = h.get("v")
    if type(version) is not int or version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version!r} (this side speaks {VERSION}); "
                            "upgrade the older npusim")
    k = h.get("k")
    if type(k) is not int or k not in _KINDS:
        raise ProtocolError(f"unknown message kind {k!r}")
    kind = _KINDS[k]
    rid = h.get("id")
    if type(rid) is not int or not 0 <= rid < 2**63:
        raise ProtocolError(f"request id must be a non-negative integer, got {rid!r}")
    tp = h.get("tp")
    if tp is not None and (not isinstance(tp, str) or len(tp) > 256):
        raise ProtocolError("traceparent must be a string of at most 256 characters")
    body = h.get("b", {})
    if not isinstance(body, dict):
        raise ProtocolError(f"{kind.name} body must be a map")
    _check_body(kind, body)
    descs = h.get("t", [])
    if not isinstance(descs, list):
        raise ProtocolError("tensor descriptors must be a list")
    if len(descs) != len(bufs) - 1:
        raise ProtocolError(f"{kind.name} header describes {len(descs)} tensors but {len(bufs) - 1} "
                            "tensor frames followed")
    tensors = [_tensor(i, d, b) for i, (d, b) in enumerate(zip(descs, bufs[1:]))]
    return Message(kind, rid, body, tensors, tp), _canonical(h)


def _check_body(kind: Kind, body: dict[str, Any]) -> None:
    for name, (types, required) in BODY[kind].items():
        if name not in body:
            if required:
                raise ProtocolError(f"{kind.name} body lacks the field {name!r}")
            continue
        value = body[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            want = "/".join(t.__name__ for t in types)
            raise ProtocolError(f"{kind.name} field {name!r} must be {want}, got {type(value).__name__}")


_SHAPES: dict[tuple[str, tuple[int, ...]], tuple[np.dtype, int]] = {}  # validated (dtype, shape) → dtype, bytes


def _tensor(i: int, desc: Any, buf: memoryview) -> tuple[str, np.ndarray]:
    if not (isinstance(desc, list) and len(desc) == 3):
        raise ProtocolError(f"tensor descriptor {i} must be [name, dtype, shape]")
    name, dtype, shape = desc
    if not isinstance(name, str) or len(name) > 1024:
        raise ProtocolError(f"tensor descriptor {i}: name must be a string")
    hashable = isinstance(dtype, str) and isinstance(shape, list) and all(type(d) is int for d in shape)
    key = (dtype, tuple(shape)) if hashable else None
    known = _SHAPES.get(key) if key is not None else None
    if known is None:
        known = _check_tensor(name, dtype, shape, buf)
        if key is not None and known[1] and len(_SHAPES) < 4096:  # few distinct shapes per service; bounded
            _SHAPES[key] = known
    dt, expected = known
    if expected != buf.nbytes:
        raise ProtocolError(f"tensor {name!r}: descriptor {dtype}{tuple(shape)} needs {expected} bytes "
                            f"but its frame has {buf.nbytes}")
    if expected == 0:
        return name, np.zeros(shape, dt)
    return name, np.frombuffer(buf, dtype=dt).reshape(shape)


def _check_tensor(name: str, dtype: Any, shape: Any, buf: memoryview) -> tuple[np.dtype, int]:
    """Validate a descriptor's dtype and shape once; its dtype and byte size."""
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ProtocolError(f"tensor {name!r}: unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape)):
        raise ProtocolError(f"tensor {name!r}: shape must be a list of at most {MAX_NDIM} non-negative ints")
    dt = DTYPES[dtype]
    expected = math.prod(shape) * dt.itemsize
    if expected == 0 and math.prod(max(d, 1) for d in shape) * dt.itemsize > buf.nbytes + DEFAULT_MAX_MESSAGE_BYTES:
        raise ProtocolError(f"tensor {name!r}: empty tensor with an absurd shape {shape}")
    return dt, expected
