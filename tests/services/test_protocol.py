"""The wire protocol: round trips, every validation in ``decode``, and a seeded fuzz.

``decode`` is the trust boundary of every service: whatever arrives, it must return a
:class:`Message` or raise :class:`ProtocolError`. Anything else escapes the service loop
(see ``npusim.services.server.Service._dispatch``) and kills the process.
"""

from __future__ import annotations

import collections
import zlib
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from npusim.services import protocol
from npusim.services.errors import NpusimError, ProtocolError, to_wire
from npusim.services.protocol import (
    DTYPES,
    MAX_HEADER_BYTES,
    VERSION,
    Kind,
    Message,
    decode,
    encode,
    error_message,
    peek_id,
)
from tests.fuzzing import mutate, pack, perturb, pick

pytestmark = pytest.mark.timeout(60)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


# -- helpers ------------------------------------------------------------------------------
def wire(frames: list[Any]) -> list[bytes]:
    """What the other side receives: every frame as an independent bytes object."""
    return [bytes(memoryview(f)) for f in frames]


def header(**fields: Any) -> dict[str, Any]:
    """A valid HEALTH header map; keyword arguments override (``None`` value kept, use ``drop``)."""
    h: dict[str, Any] = {"v": VERSION, "k": int(Kind.HEALTH), "id": 7, "tp": None, "t": [], "b": {}}
    h.update(fields)
    return h


def frames_of(h: dict[str, Any], *tensor_frames: bytes, drop: tuple[str, ...] = ()) -> list[bytes]:
    h = {k: v for k, v in h.items() if k not in drop}
    return [pack(h), *tensor_frames]


def assert_same_message(got: Message, want: Message) -> None:
    assert got.kind is want.kind
    assert got.id == want.id
    assert got.body == want.body
    assert got.traceparent == want.traceparent
    assert [n for n, _ in got.tensors] == [n for n, _ in want.tensors]
    for (_, a), (_, b) in zip(got.tensors, want.tensors):
        assert a.dtype == b.dtype
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)


# -- round trips --------------------------------------------------------------------------
ROUND_TRIPS = {
    "health-empty": Message(Kind.HEALTH),
    "health-id": Message(Kind.HEALTH, 2**63 - 1),
    "health-ok": Message(Kind.HEALTH_OK, 3, {"service": "daemon", "name": "npu0", "pid": 42, "version": "0.1.0",
                                             "extra": {"nested": [1, 2.5, "x", None, True]}}),
    "error": Message(Kind.ERROR, 9, to_wire(ProtocolError("bad", details={"size": 3}))),
    "stats-ok": Message(Kind.STATS_OK, 1, {"stats": {"received": 1, "by_kind": {"RUN": 1}}}),
    "open-traceparent": Message(Kind.OPEN, 5, {"pe": "pe0", "session": "s", "client_pid": None},
                                [("program", np.frombuffer(b"NPUSIMEF" + bytes(100), np.uint8))], TRACEPARENT),
    "run-collect": Message(Kind.RUN, 11, {"handle": "h", "collect": True},
                           [("x", np.arange(12, dtype=np.int8).reshape(3, 4))], TRACEPARENT),
    "heartbeat": Message(Kind.HEARTBEAT, 12, {"handles": ["a", "b"]}),
    "setup-float-timeout": Message(Kind.SETUP, 13, {"daemon": "ipc:///x", "device": "npu0pe0", "handle": "h", "timeout_s": 2.5}),
    "setup-int-timeout": Message(Kind.SETUP, 14, {"daemon": "ipc:///x", "device": "npu0pe0", "handle": "h", "timeout_s": 3}),
    "duplicate-tensor-names": Message(Kind.DONE, 15, {}, [("y", np.ones(2, np.float32)),
                                                          ("y", np.zeros(3, np.int64))]),
}


@pytest.mark.parametrize("msg", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_round_trip(msg: Message) -> None:
    assert_same_message(decode(wire(encode(msg))), msg)


SHAPES = [(), (1,), (0,), (3, 0, 2), (2, 3), (1, 3, 5, 7), (1,) * 8]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_tensor_round_trip_every_dtype_and_shape(dtype: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{dtype}{shape}".encode()))
    arr = (rng.integers(0, 100, size=shape) > 50) if dtype == "bool" else rng.integers(0, 100, size=shape)
    arr = np.asarray(arr).astype(dtype)
    msg = Message(Kind.RESULT, 1, {"timing": {}}, [("t", arr)])
    frames = encode(msg)
    assert len(frames) == 2
    assert memoryview(frames[1]).nbytes == arr.nbytes
    got = decode(wire(frames))
    assert_same_message(got, msg)


def test_large_tensor_round_trip_through_zmq_frames() -> None:
    """A >64 kB tensor (sent zero-copy by pyzmq) decodes from ``zmq.Frame`` objects too."""
    rng = np.random.default_rng(1)
    big = rng.standard_normal((3, 128, 257)).astype(np.float32)  # 394 kB
    assert big.nbytes > 64 * 1024
    small = np.arange(5, dtype=np.uint16)
    msg = Message(Kind.RUN, 77, {"handle": "h"}, [("big", big), ("small", small)], TRACEPARENT)
    frames = [zmq.Frame(bytes(memoryview(f))) for f in encode(msg)]
    got = decode(frames)
    assert_same_message(got, msg)
    assert got.tensor("big").flags.c_contiguous


def test_non_contiguous_tensor_is_sent_in_c_order() -> None:
    base = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    view = base.transpose(2, 0, 1)[:, :, ::2]
    assert not view.flags.c_contiguous
    got = decode(wire(encode(Message(Kind.JOB, 1, {}, [("v", view)]))))
    np.testing.assert_array_equal(got.tensor("v"), view)


@pytest.mark.parametrize("arr", [np.zeros(3, np.complex64), np.zeros(3, ">i4"), np.zeros(2, object)],
                         ids=["complex64", "big-endian", "object"])
def test_encode_refuses_dtypes_the_wire_cannot_carry(arr: np.ndarray) -> None:
    with pytest.raises(ProtocolError, match="dtype"):
        encode(Message(Kind.JOB, 1, {}, [("x", arr)]))


def test_reply_keeps_id_and_traceparent() -> None:
    req = Message(Kind.RUN, 99, {"handle": "h"}, [], TRACEPARENT)
    rep = req.reply(Kind.RESULT, {"timing": {}})
    assert (rep.kind, rep.id, rep.traceparent) == (Kind.RESULT, 99, TRACEPARENT)
    assert_same_message(decode(wire(encode(rep))), rep)


def test_missing_tensor_name_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="no tensor named 'nope'"):
        Message(Kind.RUN, 1, {"handle": "h"}, [("x", np.zeros(1))]).tensor("nope")


def test_error_message_round_trip() -> None:
    got = decode(wire(encode(error_message(5, ProtocolError("boom", details={"a": 1})))))
    assert got.kind is Kind.ERROR and got.id == 5
    assert got.body == {"code": ProtocolError.code, "message": "boom", "details": {"a": 1}}


# -- every validation in decode ------------------------------------------------------------
F32x2 = np.zeros(2, np.float32).tobytes()  # 8 bytes: one valid frame for ["x", "float32", [2]]
DESC = ["x", "float32", [2]]

INVALID: dict[str, tuple[list[bytes], str]] = {
    # framing and header
    "empty-message": ([], "empty message"),
    "header-not-msgpack": ([b"\xc1"], "not valid msgpack"),
    "header-truncated-msgpack": ([pack(header())[:-3]], "not valid msgpack"),
    "header-trailing-bytes": ([pack(header()) + b"\x00"], "not valid msgpack"),
    "header-empty-frame": ([b""], "not valid msgpack"),
    "header-non-string-map-key": ([pack({1: 2})], "not valid msgpack"),
    "header-is-list": ([pack([1, 2, 3])], "must be a map"),
    "header-is-int": ([pack(5)], "must be a map"),
    "header-is-str": ([pack("v")], "must be a map"),
    # version
    "version-2": (frames_of(header(v=2)), "unsupported protocol version"),
    "version-0": (frames_of(header(v=0)), "unsupported protocol version"),
    "version-missing": (frames_of(header(), drop=("v",)), "unsupported protocol version"),
    "version-str": (frames_of(header(v="1")), "unsupported protocol version"),
    # kind
    "kind-unknown-int": (frames_of(header(k=99)), "unknown message kind"),
    "kind-zero": (frames_of(header(k=0)), "unknown message kind"),
    "kind-missing": (frames_of(header(), drop=("k",)), "unknown message kind"),
    "kind-str": (frames_of(header(k="HEALTH")), "unknown message kind"),
    "kind-list": (frames_of(header(k=[2])), "unknown message kind"),
    # request id
    "id-negative": (frames_of(header(id=-1)), "request id"),
    "id-bool": (frames_of(header(id=True)), "request id"),
    "id-str": (frames_of(header(id="7")), "request id"),
    "id-float": (frames_of(header(id=7.0)), "request id"),
    "id-too-big": (frames_of(header(id=2**63)), "request id"),
    "id-missing": (frames_of(header(), drop=("id",)), "request id"),
    # traceparent
    "traceparent-int": (frames_of(header(tp=5)), "traceparent"),
    "traceparent-bytes": (frames_of(header(tp=TRACEPARENT.encode())), "traceparent"),
    "traceparent-too-long": (frames_of(header(tp="0" * 257)), "traceparent"),
    # body
    "body-list": (frames_of(header(b=[1])), "body must be a map"),
    "body-str": (frames_of(header(b="x")), "body must be a map"),
    "body-nil": (frames_of(header(b=None)), "body must be a map"),
    "error-lacks-code": (frames_of(header(k=int(Kind.ERROR), b={"message": "m"})), "lacks the field 'code'"),
    "health-ok-lacks-pid": (frames_of(header(k=int(Kind.HEALTH_OK),
                                             b={"service": "s", "name": "n", "version": "v"})),
                            "lacks the field 'pid'"),
    "open-lacks-pe": (frames_of(header(k=int(Kind.OPEN), b={"session": "s"})), "lacks the field 'pe'"),
    "run-lacks-handle": (frames_of(header(k=int(Kind.RUN), b={})), "lacks the field 'handle'"),
    "error-code-str": (frames_of(header(k=int(Kind.ERROR), b={"code": "10", "message": "m"})),
                       "'code' must be int"),
    "error-code-bool": (frames_of(header(k=int(Kind.ERROR), b={"code": True, "message": "m"})),
                        "'code' must be int"),
    "error-details-list": (frames_of(header(k=int(Kind.ERROR), b={"code": 10, "message": "m", "details": [1]})),
                           "'details' must be"),
    "open-client-pid-bool": (frames_of(header(k=int(Kind.OPEN), b={"pe": "pe0", "session": "s", "client_pid": False})),
                             "'client_pid' must be"),
    "run-handle-int": (frames_of(header(k=int(Kind.RUN), b={"handle": 5})), "'handle' must be str"),
    "run-collect-int": (frames_of(header(k=int(Kind.RUN), b={"handle": "h", "collect": 1})),
                        "'collect' must be bool"),
    "setup-timeout-bool": (frames_of(header(k=int(Kind.SETUP), b={"daemon": "d", "device": "npu0", "handle": "h", "timeout_s": True})),
                           "'timeout_s' must be int/float"),
    "stats-ok-stats-list": (frames_of(header(k=int(Kind.STATS_OK), b={"stats": []})), "'stats' must be dict"),
    # tensor descriptors
    "descriptors-map": (frames_of(header(t={"x": 1})), "descriptors must be a list"),
    "descriptors-str": (frames_of(header(t="x")), "descriptors must be a list"),
    "descriptors-nil": (frames_of(header(t=None)), "descriptors must be a list"),
    "fewer-frames-than-descriptors": (frames_of(header(t=[DESC, DESC]), F32x2), "describes 2 tensors but 1"),
    "frames-without-descriptors": (frames_of(header(t=[]), F32x2), "describes 0 tensors but 1"),
    "more-frames-than-descriptors": (frames_of(header(t=[DESC]), F32x2, F32x2), "describes 1 tensors but 2"),
    "descriptor-not-list": (frames_of(header(t=["x"]), F32x2), "must be \\[name, dtype, shape\\]"),
    "descriptor-two-items": (frames_of(header(t=[["x", "float32"]]), F32x2), "must be \\[name, dtype, shape\\]"),
    "descriptor-name-int": (frames_of(header(t=[[1, "float32", [2]]]), F32x2), "name must be a string"),
    "descriptor-name-too-long": (frames_of(header(t=[["n" * 1025, "float32", [2]]]), F32x2), "name must be"),
    "shape-not-list": (frames_of(header(t=[["x", "float32", 2]]), F32x2), "shape must be a list"),
    "shape-str": (frames_of(header(t=[["x", "float32", "2"]]), F32x2), "shape must be a list"),
    "shape-negative-dim": (frames_of(header(t=[["x", "float32", [-2]]]), F32x2), "shape must be a list"),
    "shape-too-many-dims": (frames_of(header(t=[["x", "float32", [1] * 8 + [2]]]), F32x2), "at most 8"),
    "shape-float-dim": (frames_of(header(t=[["x", "float32", [2.0]]]), F32x2), "shape must be a list"),
    "shape-bool-dim": (frames_of(header(t=[["x", "float32", [True, 2]]]), F32x2), "shape must be a list"),
    "shape-huge-dim": (frames_of(header(t=[["x", "float32", [2**40]]]), F32x2), "shape must be a list"),
    "dtype-unknown": (frames_of(header(t=[["x", "complex64", [1]]]), F32x2), "unknown dtype"),
    "dtype-numpy-alias": (frames_of(header(t=[["x", "f4", [2]]]), F32x2), "unknown dtype"),
    "dtype-int": (frames_of(header(t=[["x", 4, [2]]]), F32x2), "unknown dtype"),
    "dtype-nil": (frames_of(header(t=[["x", None, [2]]]), F32x2), "unknown dtype"),
    "frame-too-short": (frames_of(header(t=[DESC]), F32x2[:-1]), "needs 8 bytes but its frame has 7"),
    "frame-too-long": (frames_of(header(t=[DESC]), F32x2 + b"\x00"), "needs 8 bytes but its frame has 9"),
    "frame-empty-for-nonzero-shape": (frames_of(header(t=[DESC]), b""), "needs 8 bytes but its frame has 0"),
    "frame-nonempty-for-zero-shape": (frames_of(header(t=[["x", "float32", [0, 2]]]), F32x2),
                                      "needs 0 bytes but its frame has 8"),
    "second-frame-wrong": (frames_of(header(t=[DESC, ["y", "int8", [3]]]), F32x2, b"\x00\x00"),
                           "'y'.*needs 3 bytes"),
}


@pytest.mark.parametrize("frames,match", INVALID.values(), ids=INVALID.keys())
def test_decode_rejects(frames: list[bytes], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode(frames)


def test_decode_rejects_message_over_max_message_bytes() -> None:
    frames = frames_of(header(t=[["x", "uint8", [200]]]), bytes(200))
    decode(frames, max_message_bytes=len(frames[0]) + 200)  # exactly at the limit: fine
    with pytest.raises(ProtocolError, match="exceeds the limit") as e:
        decode(frames, max_message_bytes=len(frames[0]) + 199)
    assert e.value.details == {"size": len(frames[0]) + 200, "limit": len(frames[0]) + 199}


def test_decode_rejects_header_over_max_header_bytes() -> None:
    h = header(b={"pad": "x" * MAX_HEADER_BYTES})
    frames = frames_of(h)
    assert len(frames[0]) > MAX_HEADER_BYTES
    with pytest.raises(ProtocolError, match="header of .* exceeds"):
        decode(frames)


def test_decode_accepts_boundaries() -> None:
    """The limits themselves are inclusive: 256-char traceparent, 8 dims, 1024-char name."""
    msg = decode(frames_of(header(tp="0" * 256, t=[["n" * 1024, "int8", [1] * 8]]), b"\x07"))
    assert msg.traceparent == "0" * 256
    assert msg.tensors[0][1].shape == (1,) * 8


def test_decode_ignores_unknown_body_fields() -> None:
    msg = decode(frames_of(header(b={"from_the_future": [1, 2]})))
    assert msg.body == {"from_the_future": [1, 2]}


# -- decode bugs (documented, not fixed) ---------------------------------------------------
@pytest.mark.parametrize("dtype", [["int8"], {"a": 1}], ids=["list", "map"])
def test_decode_rejects_unhashable_dtype(dtype: Any) -> None:
    with pytest.raises(ProtocolError, match="dtype"):
        decode(frames_of(header(t=[["x", dtype, [1]]]), b"\x00"))


def test_decode_rejects_zero_size_shape_that_overflows() -> None:
    with pytest.raises(ProtocolError):
        decode(frames_of(header(t=[["x", "float64", [0, 2**39, 2**39]]]), b""))


# -- peek_id ------------------------------------------------------------------------------
GARBAGE = {
    "no-frames": [],
    "empty-frame": [b""],
    "not-msgpack": [b"\xc1\xc1"],
    "list": [pack([1, 2])],
    "no-id": [pack({"v": 1})],
    "negative": [pack({"id": -5})],
    "str": [pack({"id": "5"})],
    "float": [pack({"id": 5.0})],
    "too-big": [pack({"id": 2**63})],
    "truncated": [pack(header(id=5))[:-2]],
    "random": [bytes(range(256))],
}


@pytest.mark.parametrize("frames", GARBAGE.values(), ids=GARBAGE.keys())
def test_peek_id_of_garbage_is_zero(frames: list[bytes]) -> None:
    assert peek_id(frames) == 0


def test_peek_id_of_valid_header() -> None:
    assert peek_id(frames_of(header(id=12345))) == 12345
    assert peek_id([zmq.Frame(pack(header(id=2**63 - 1)))]) == 2**63 - 1
    # The id is found even when the rest of the message is invalid: that is its purpose.
    assert peek_id(frames_of(header(id=31, v=99, t=[DESC]))) == 31


def test_error_reply_to_bool_id_is_decodable() -> None:
    frames = frames_of(header(id=True))
    with pytest.raises(ProtocolError) as e:
        decode(frames)
    # What Service._dispatch sends back:
    reply = wire(encode(error_message(peek_id(frames), e.value)))
    got = decode(reply)
    assert got.kind is Kind.ERROR


# -- randomized: decode returns a Message or raises ProtocolError, nothing else -----------
def _valid_messages() -> list[list[bytes]]:
    msgs = [
        Message(Kind.HEALTH, 1),
        Message(Kind.RUN, 2, {"handle": "0123456789abcdef", "collect": False},
                [("input", np.arange(48, dtype=np.int8).reshape(1, 3, 4, 4)),
                 ("aux", np.ones((2, 5), np.float32)), ("empty", np.zeros((0, 3), np.uint16))],
                TRACEPARENT),
        Message(Kind.OPEN, 3, {"pe": "pe0-1", "session": "s", "client_pid": 4242},
                [("program", np.frombuffer(b"NPUSIMEF" + bytes(range(200)), np.uint8))]),
        Message(Kind.COMPILE, 4, {"options": {"target_npu": "warboy", "batch_size": 1}},
                [("model", np.frombuffer(bytes(range(256)) * 3, np.uint8))]),
        Message(Kind.RESULT, 5, {"timing": {"a": 1, "b": 2.5}, "spans": [{"n": "x"}]},
                [("out", np.arange(10, dtype=np.float16)), ("b", np.array([True, False]))]),
        Message(Kind.ERROR, 6, to_wire(ProtocolError("x", details={"k": [1, 2]}))),
        Message(Kind.SETUP, 7, {"daemon": "ipc:///tmp/x", "device": "npu0", "handle": "h", "timeout_s": 1.5}),
    ]
    return [wire(encode(m)) for m in msgs]


def _random_frames(rng: np.random.Generator) -> list[bytes]:
    frames = []
    for _ in range(int(rng.integers(1, 6))):
        size = pick(rng, [0, 1, 2, 8, 16, 64, 300, 5000])
        size = int(rng.integers(0, size + 1))
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        if frames == [] and size and rng.random() < 0.3:
            data = bytes([0x86]) + data  # a fixmap prefix: gets msgpack further into the header
        frames.append(data)
    return frames


def _perturb_message(rng: np.random.Generator, frames: list[bytes]) -> list[bytes]:
    """Structure-aware damage: a well-formed msgpack header with one field replaced."""
    h = msgpack.unpackb(frames[0], raw=False)
    out = [pack(perturb(rng, h)), *frames[1:]]
    if rng.random() < 0.2:
        out = mutate(rng, out)
    return out


def _decode_escapes(inputs: list[list[bytes]]) -> tuple[int, collections.Counter[str], list[list[bytes]]]:
    decoded = 0
    escapes: collections.Counter[str] = collections.Counter()
    examples: list[list[bytes]] = []
    for frames in inputs:
        try:
            msg = decode(frames)
        except ProtocolError as e:
            assert isinstance(e, NpusimError) and e.message
            continue
        except Exception as e:  # noqa: BLE001 - exactly what this test looks for
            escapes[f"{type(e).__name__}: {str(e)[:80]}"] += 1
            if len(examples) < 3:
                examples.append(frames)
            continue
        decoded += 1
        assert isinstance(msg, Message) and isinstance(msg.kind, Kind)
        assert all(isinstance(a, np.ndarray) for _, a in msg.tensors)
    return decoded, escapes, examples


def test_random_frame_lists_decode_or_raise_protocol_error() -> None:
    rng = np.random.default_rng(20240601)
    inputs = [_random_frames(rng) for _ in range(2000)]
    _, escapes, examples = _decode_escapes(inputs)
    assert not escapes, f"decode raised non-ProtocolError exceptions: {dict(escapes)}; e.g. {examples[:1]!r}"


def test_mutated_valid_messages_decode_or_raise_protocol_error() -> None:
    rng = np.random.default_rng(424242)
    valid = _valid_messages()
    for frames in valid:
        decode(frames)  # the seeds themselves are valid
    inputs = [mutate(rng, valid[int(rng.integers(0, len(valid)))]) for _ in range(2000)]
    decoded, escapes, examples = _decode_escapes(inputs)
    assert decoded > 0  # some mutations (e.g. a flipped byte inside a string) stay valid
    assert not escapes, f"decode raised non-ProtocolError exceptions: {dict(escapes)}; e.g. {examples[:1]!r}"


def test_structurally_mutated_headers_decode_or_raise_protocol_error() -> None:
    rng = np.random.default_rng(8675309)
    valid = _valid_messages()
    inputs = [_perturb_message(rng, valid[int(rng.integers(0, len(valid)))]) for _ in range(2000)]
    decoded, escapes, examples = _decode_escapes(inputs)
    assert decoded > 0
    assert not escapes, f"decode raised non-ProtocolError exceptions: {dict(escapes)}; e.g. {examples[:1]!r}"


# -- the repeated-header cache: a shortcut must decode exactly like the full path ---------------------


def _same(a: Message, b: Message) -> bool:
    return (a.kind, a.id, a.body, a.traceparent) == (b.kind, b.id, b.body, b.traceparent) and \
        [(n, x.dtype, x.shape, x.tobytes()) for n, x in a.tensors] == \
        [(n, x.dtype, x.shape, x.tobytes()) for n, x in b.tensors]


def _full(frames: list[bytes]) -> Message:
    return protocol._decode([memoryview(f) for f in frames])[0]


@pytest.fixture
def cache() -> Any:
    protocol._REPEATS.clear()
    yield protocol._REPEATS
    protocol._REPEATS.clear()


def _run(rid: int, handle: str = "h" * 32, x: np.ndarray | None = None, tp: str | None = None) -> list[bytes]:
    x = np.arange(6, dtype=np.int8).reshape(2, 3) if x is None else x
    return wire(encode(Message(Kind.RUN, rid, {"handle": handle, "stage": 1}, [("input", x)], tp)))


@pytest.mark.parametrize("rid", [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1])
def test_repeated_request_decodes_like_the_first_for_every_id_width(cache: Any, rid: int,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    decode(_run(7))  # the first decode fills the cache
    assert len(cache) == 1
    frames = _run(rid, x=np.full((2, 3), 5, np.int8))
    want = _full(frames)
    monkeypatch.setattr(protocol, "_decode", lambda bufs: pytest.fail("a repeated header was decoded in full"))
    msg = decode(frames)
    assert len(cache) == 1
    assert msg.id == rid and _same(msg, want)


def test_cached_header_still_checks_its_frames(cache: Any) -> None:
    decode(_run(1))
    frames = _run(2)
    with pytest.raises(ProtocolError, match="needs 6 bytes but its frame has 5"):
        decode([frames[0], frames[1][:5]])
    with pytest.raises(ProtocolError, match="describes 1 tensors but 2"):
        decode([*frames, b""])
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decode(frames, max_message_bytes=8)


def test_cached_header_refuses_an_id_beyond_63_bits(cache: Any) -> None:
    decode(_run(1))
    head = msgpack.packb({"v": VERSION, "k": int(Kind.RUN), "id": 2**63, "tp": None,
                          "t": [["input", "int8", [2, 3]]], "b": {"handle": "h" * 32, "stage": 1}})
    with pytest.raises(ProtocolError, match="non-negative integer"):
        decode([head, bytes(6)])


def test_decoded_bodies_are_not_shared(cache: Any) -> None:
    decode(_run(1))
    first = decode(_run(2))
    first.body["handle"] = "changed"
    assert decode(_run(3)).body["handle"] == "h" * 32


def test_traced_and_non_canonical_headers_are_not_cached(cache: Any) -> None:
    decode(_run(1, tp=TRACEPARENT))
    assert not cache  # a trace id never repeats
    # six entries with "id" twice: msgpack keeps the last, and so must every later decode
    head = b"\x86" + b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in (
        ("v", VERSION), ("k", int(Kind.RUN)), ("id", 5), ("t", [["input", "int8", [2, 3]]]),
        ("b", {"handle": "h"}), ("id", 9)))
    assert decode([head, bytes(6)]).id == 9
    assert not cache
    assert decode([head.replace(b"id\x05", b"id\x06", 1), bytes(6)]).id == 9


def test_mutated_repeated_requests_decode_like_the_full_path(cache: Any) -> None:
    """Byte-level damage to cached RUN/JOB headers: the shortcut gives the full decode's message, or
    both raise ProtocolError."""
    rng = np.random.default_rng(777)
    seeds = [_run(3), _run(300), wire(encode(Message(Kind.JOB, 70000, {"collect": True},
                                                        [("x", np.ones((4,), np.float32))])))]
    checked = 0
    for _ in range(3000):
        for s in seeds:
            decode(s)  # keep the seeds cached
        frames = [bytes(f) for f in mutate(rng, seeds[int(rng.integers(0, len(seeds)))])]
        try:
            want: Message | None = _full(frames)
        except ProtocolError:
            want = None
        if want is None:
            with pytest.raises(ProtocolError):
                decode(frames)
        else:
            assert _same(decode(frames), want)
            checked += 1
    assert checked > 100
