"""The serving loop's compiled lane (services/_lane.c) on real sockets.

The lane decides, on raw bytes, that a request is one a handler has already decoded and checked
(a *route*): it must never route a message the full decode would refuse or decode differently.
Its replies must be byte for byte what ``encode`` writes, and every other message must reach the
Python path intact, as frames ``decode`` reads like pyzmq's.
"""

from __future__ import annotations

import collections
import gc
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from services import lane, protocol
from services.errors import ProtocolError
from services.protocol import MAX_HEADER_BYTES, VERSION, Kind, Message, decode, encode, reply_parts, route_key
from tests.fuzzing import mutate
from tests.helpers import short_dir, wait_until

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(lane._lane is None, reason="services._lane is not built (no C compiler)")]

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
LIMIT = 1 << 30


def _run(rid: int, handle: str = "h" * 32, x: np.ndarray | None = None, tp: str | None = None) -> list[bytes]:
    x = np.arange(6, dtype=np.int8).reshape(2, 3) if x is None else x
    return [bytes(memoryview(f)) for f in encode(Message(Kind.RUN, rid, {"handle": handle, "stage": 1},
                                                          [("input", x)], tp))]


class Pair:
    """A ROUTER with a lane and a DEALER talking to it over ipc; every drain call is recorded."""

    def __init__(self, d: Path) -> None:
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(f"ipc://{d}/lane.sock")
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.setsockopt(zmq.IDENTITY, b"client-1")
        self.dealer.connect(f"ipc://{d}/lane.sock")
        self.lane = lane.open_lane(self.router)
        assert self.lane is not None, lane.available()
        self.routes: dict[bytes, Any] = {}
        self.routed: list[tuple[int, bytes, int]] = []
        self.other: list[tuple[list[Any], int]] = []

    def route(self, frames: list[bytes]) -> bytes:
        key = route_key(frames[0])
        assert key is not None
        self.routes[key] = (lambda *a: self.routed.append(a), tuple(len(f) for f in frames[1:]))
        return key

    def drain(self, budget: int = 64, timers: list[Any] | None = None, max_total: int = LIMIT) -> bool:
        return self.lane.drain(budget, [] if timers is None else timers, self.routes, max_total, MAX_HEADER_BYTES,
                               lambda frames, t: self.other.append((frames, t)))

    def exchange(self, *messages: list[bytes], **kw: Any) -> None:
        """Send ``messages`` and drain until each one was handled."""
        before = len(self.routed) + len(self.other)
        for m in messages:
            self.dealer.send_multipart(m)
        while len(self.routed) + len(self.other) < before + len(messages):
            assert self.router.poll(5000), "a message never arrived"
            self.drain(**kw)

    def close(self) -> None:
        self.lane = None
        self.dealer.close()
        self.router.close()
        self.ctx.term()


@pytest.fixture
def pair() -> Iterator[Pair]:
    with short_dir() as d:
        p = Pair(d)
        try:
            yield p
        finally:
            p.close()


# -- pack: msgpack-python's bytes -------------------------------------------------------------------
INTS = [0, 1, 31, 32, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1,
        -1, -32, -33, -128, -129, -32768, -32769, -2**31, -2**31 - 1, -2**63]
LENGTHS = [0, 1, 15, 16, 31, 32, 255, 256, 65535, 65536]


@pytest.mark.parametrize("value", [
    None, True, False, 0.0, -0.0, 1.5, float("inf"), float("nan"), 1e300, *INTS,
    *("é" * n for n in (0, 10, 16, 40)), *("x" * n for n in LENGTHS), *(b"\x00" * n for n in LENGTHS),
    *([1] * n for n in LENGTHS), *((None,) * n for n in (0, 15, 16)), *({str(i): i for i in range(n)} for n in (0, 15, 16, 65536)),
    {"timing": {"arrival_ns": 2**62, "dram_shared": 0.25, "host_bound": True}, 3: [b"", {}]}, [[[[]]]],
], ids=repr)
def test_pack_writes_what_msgpack_writes(value: Any) -> None:
    assert lane._lane.pack(value) == msgpack.packb(value, use_bin_type=True)


def test_pack_matches_msgpack_on_random_bodies() -> None:
    rng = np.random.default_rng(11)

    def anything(depth: int) -> Any:
        k = int(rng.integers(0, 9 if depth < 4 else 6))
        if k == 0:
            return int(rng.choice(INTS)) + int(rng.integers(-2, 3)) if rng.random() < 0.5 else int(rng.integers(-2**40, 2**40))
        if k == 1:
            return float(rng.standard_normal() * 10.0 ** int(rng.integers(-5, 300)))
        if k == 2:
            return "".join(chr(int(c)) for c in rng.integers(32, 0x2FFF, int(rng.integers(0, 40))))
        if k == 3:
            return rng.bytes(int(rng.integers(0, 300)))
        if k == 4:
            return [None, True, False][int(rng.integers(0, 3))]
        if k == 5:
            return int(rng.integers(0, 2**62))
        if k == 6:
            return [anything(depth + 1) for _ in range(int(rng.integers(0, 20)))]
        if k == 7:
            return tuple(anything(depth + 1) for _ in range(int(rng.integers(0, 5))))
        return {int(rng.integers(-99, 99)) if rng.random() < 0.2 else str(i): anything(depth + 1) for i in range(int(rng.integers(0, 20)))}

    for _ in range(2000):
        v = anything(0)
        try:
            want: bytes | None = msgpack.packb(v, use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            want = None
        if want is None:
            with pytest.raises((TypeError, ValueError, OverflowError)):
                lane._lane.pack(v)
        else:
            assert lane._lane.pack(v) == want


@pytest.mark.parametrize("value, error", [(2**64, OverflowError), (-2**63 - 1, OverflowError), (object(), TypeError),
                                          (np.int64(1), TypeError), ({1.5j: 1}, TypeError), ("\ud800", UnicodeError)],
                         ids=["big", "small", "object", "numpy", "complex key", "surrogate"])
def test_pack_refuses_what_it_cannot_write(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        lane._lane.pack(value)


def test_pack_refuses_a_cycle() -> None:
    a: list[Any] = []
    a.append(a)
    with pytest.raises(ValueError, match="recursion limit"):
        lane._lane.pack(a)


def _nested(levels: int) -> list[Any]:
    a: list[Any] = []
    for _ in range(levels):
        a = [a]
    return a


class _Reversed(list):  # type: ignore[type-arg]
    def __iter__(self) -> Any:
        return iter(list(list.__iter__(self))[::-1])


def test_pack_handles_what_msgpack_handles_as_msgpack_does() -> None:
    moved = collections.OrderedDict(a=1, b=2)
    moved.move_to_end("a")  # items() order differs from the dict's storage order
    for value in (moved, _Reversed([1, 2, 3]), bytearray(b"ab"), memoryview(b"xyz"), _nested(1024)):
        assert lane._lane.pack(value) == msgpack.packb(value, use_bin_type=True)
    for value in (_nested(1025),):
        with pytest.raises(ValueError):
            msgpack.packb(value)
        with pytest.raises(ValueError, match="recursion limit"):
            lane._lane.pack(value)


# -- finding the library -----------------------------------------------------------------------------
def test_lane_is_usable_where_it_is_built() -> None:
    """On Linux with the extension built, the loop must not quietly fall back to pyzmq."""
    assert lane.available() is None


def test_lane_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(lane.ENV_LANE, "0")
    assert lane.available() == "NPUSIM_LANE=0"
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as s:
        assert lane.open_lane(s) is None


def test_a_failed_socket_ends_the_loop_instead_of_spinning(caplog: pytest.LogCaptureFixture) -> None:
    """A context shut down under a running service: libzmq's ETERM ends the loop, as pyzmq's
    ZMQError does, instead of being logged and retried forever. (zmq_ctx_shutdown, which pyzmq
    does not wrap: a second zmq_ctx_term beside the service's own would be undefined.)"""
    import ctypes

    from zmq.backend.cython import _zmq

    from services.server import Service

    with short_dir() as d:
        svc = Service("svc", f"ipc://{d}/svc.sock")
        ended: list[BaseException] = []

        def serve() -> None:
            try:
                svc.serve_forever()
            except BaseException as e:  # noqa: BLE001 - the test looks at it
                ended.append(e)

        t = threading.Thread(target=serve, daemon=True)
        with caplog.at_level(logging.ERROR):
            t.start()
            assert wait_until(lambda: svc.lane is not None, 5)
            ctypes.CDLL(_zmq.__file__).zmq_ctx_shutdown(ctypes.c_void_p(svc.ctx.underlying))
            t.join(10)
        assert not t.is_alive()
        (e,) = ended
        assert isinstance(e, lane.SocketError) and e.errno == zmq.ETERM
        assert not [r for r in caplog.records if "unexpected error" in r.getMessage()]


def test_a_lane_needs_a_socket() -> None:
    with pytest.raises(ValueError, match="open socket"):
        lane._lane.Lane(0)


# -- drain: routes and the rest ----------------------------------------------------------------------
@pytest.mark.parametrize("rid", [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1])
def test_a_repeated_header_is_routed_for_every_id_width(pair: Pair, rid: int) -> None:
    pair.route(_run(7))
    pair.exchange(_run(rid, x=np.full((2, 3), 5, np.int8)))
    assert not pair.other
    (got, peer, received), = pair.routed
    assert (got, peer) == (rid, b"client-1")
    assert abs(received - time.monotonic_ns()) < 5e9  # the loop's clock


@pytest.mark.parametrize("frames, why", [
    (_run(2**63), "an id decode refuses"),
    (_run(2, handle="g" * 32), "another session"),
    (_run(2, x=np.zeros((3, 2), np.int8)), "another shape"),
    (_run(2, tp=TRACEPARENT), "a traced request"),
    ([_run(2)[0], b"\x00" * 5], "a short tensor frame"),
    ([_run(2)[0], b"\x00" * 7], "a long tensor frame"),
    ([_run(2)[0]], "a missing tensor frame"),
    ([*_run(2), b""], "an extra frame"),
    ([msgpack.packb({"v": VERSION, "k": int(Kind.RUN), "id": 2, "tp": None, "t": [["input", "int8", [2, 3]]],
                     "b": {"stage": 1, "handle": "h" * 32}}), bytes(6)], "a body in another order"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_anything_else_takes_the_python_path_intact(pair: Pair, frames: list[bytes], why: str) -> None:
    pair.route(_run(7))
    pair.exchange(frames)
    assert not pair.routed, why
    (got, _), = pair.other
    assert [f.bytes for f in got] == [b"client-1", *frames]


def test_a_routed_message_still_respects_the_size_limits(pair: Pair) -> None:
    frames = _run(7)
    pair.route(frames)
    pair.exchange(frames, max_total=len(frames[0]) + 5)  # the header and 6 bytes of tensor do not fit
    assert not pair.routed and len(pair.other) == 1
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decode(pair.other[0][0][1:], max_message_bytes=len(frames[0]) + 5)


def test_frames_are_zero_copy_buffers_decode_reads(pair: Pair) -> None:
    x = np.arange(4096, dtype=np.float32).reshape(64, 64)
    msg = Message(Kind.COMPILE, 5, {"options": {}}, [("model", x)])
    pair.exchange([bytes(memoryview(f)) for f in encode(msg)])
    (frames, _), = pair.other
    assert len(frames[2]) == x.nbytes and frames[2].buffer.nbytes == x.nbytes and not frames[2].buffer.readonly
    got = decode(frames[1:])
    del frames, pair.other[:]
    gc.collect()
    np.testing.assert_array_equal(got.tensors[0][1], x)  # the array keeps its frame alive
    assert got.tensors[0][1].flags.writeable


def test_drain_keeps_to_its_budget_and_to_due_timers(pair: Pair) -> None:
    for i in range(5):
        pair.dealer.send_multipart(_run(i))
    assert pair.router.poll(5000)
    time.sleep(0.2)  # all five arrive
    assert pair.drain(budget=2) is True and len(pair.other) == 2
    assert pair.drain(timers=[(0, 0, None)]) is True and len(pair.other) == 3  # a due timer: one message, back to the loop
    assert pair.drain(timers=[(2**62, 0, None)]) is False and len(pair.other) == 5
    assert pair.drain() is False


def test_an_error_in_a_route_reaches_the_loop_and_loses_no_other_message(pair: Pair) -> None:
    key = pair.route(_run(7))
    pair.routes[key] = (lambda *a: 1 / 0, pair.routes[key][1])
    for i in range(3):
        pair.dealer.send_multipart(_run(i))
    time.sleep(0.2)
    with pytest.raises(ZeroDivisionError):
        pair.drain()
    del pair.routes[key]  # a route that drops itself (a session released mid-drain) is safe too
    pair.drain()
    assert len(pair.other) == 2


def test_mutated_headers_are_routed_only_when_the_full_decode_agrees(pair: Pair) -> None:
    """Byte-level damage to a routed RUN: the lane routes it only if decode() gives the routed
    message (the same session, stage and tensor, with the id it passed on)."""
    rng = np.random.default_rng(5)
    base = _run(300)
    pair.route(base)
    want = decode(base)
    routed = 0
    for _ in range(1500):
        frames = [bytes(f) for f in mutate(rng, base)] or [b""]
        pair.exchange(frames)
        if not pair.routed:
            pair.other.clear()
            continue
        (rid, _, _), = pair.routed
        pair.routed.clear()
        routed += 1
        got = decode(frames)
        assert (got.kind, got.id, got.body, got.traceparent) == (want.kind, rid, want.body, None)
        assert [(n, a.dtype, a.shape) for n, a in got.tensors] == [(n, a.dtype, a.shape) for n, a in want.tensors]
    assert routed > 20


# -- send: encode's bytes -----------------------------------------------------------------------------
@pytest.mark.parametrize("rid", [0, 127, 128, 2**16, 2**40, 2**63 - 1])
def test_a_sent_reply_is_what_encode_writes(pair: Pair, rid: int) -> None:
    outs = [("output", np.arange(100_000, dtype=np.int8).reshape(100, 1000)), ("scalar", np.float32(2.5).reshape(())),
            ("empty", np.zeros((0, 3), np.uint8))]
    head, tail, frames = reply_parts(Kind.RESULT, outs)
    outputs = lane._lane.Outputs(frames)
    body = {"timing": {"arrival_ns": 2**62 + 1, "dram_shared": 0.1234, "host_bound": False, "stage": 0}}
    pair.exchange(_run(1))  # the ROUTER learns the DEALER's identity
    for _ in range(3):  # the prepared frames are shared, not used up
        assert pair.lane.send(b"client-1", head, rid, tail, body, outputs) is True
        assert pair.dealer.poll(5000)
        assert pair.dealer.recv_multipart() == [bytes(memoryview(f)) for f in encode(Message(Kind.RESULT, rid, body, outs))]
    assert len(outputs) == 3


def test_a_reply_to_a_vanished_peer_is_refused_not_lost(pair: Pair) -> None:
    head, tail, frames = reply_parts(Kind.RESULT, [])
    assert pair.lane.send(b"nobody", head, 1, tail, {}, None) is False
    assert pair.lane.send(b"nobody", head, 1, tail, {}, lane._lane.Outputs(frames)) is False


def test_send_checks_its_arguments(pair: Pair) -> None:
    head, tail, _ = reply_parts(Kind.RESULT, [])
    with pytest.raises(TypeError):
        pair.lane.send("peer", head, 1, tail, {}, None)
    with pytest.raises(TypeError, match="cannot pack"):
        pair.lane.send(b"peer", head, 1, tail, {"x": object()}, None)
    with pytest.raises(OverflowError):
        pair.lane.send(b"peer", head, -1, tail, {}, None)


# -- the protocol's side of it -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", [Kind.RESULT, Kind.DONE, Kind.ERROR, Kind.HEALTH_OK])
def test_reply_parts_rebuild_encode(kind: Kind) -> None:
    tensors = [("a", np.ones((2, 2), np.float32)), ("b", np.zeros((0,), np.int8))]
    head, tail, frames = reply_parts(kind, tensors)
    for rid, body in ((0, {}), (2**63 - 1, {"code": 3, "message": "x" * 300})):
        want = encode(Message(kind, rid, body, tensors))
        assert head + msgpack.packb(rid) + tail + msgpack.packb(body, use_bin_type=True) == want[0]
        assert [bytes(memoryview(f)) for f in frames] == [bytes(memoryview(f)) for f in want[1:]]


def test_route_key_only_for_repeatable_headers() -> None:
    assert route_key(_run(1)[0]) == route_key(_run(2**40)[0]) == protocol._repeat_key(memoryview(_run(1)[0]))[1]
    assert route_key(_run(1)[0]) != route_key(_run(1, handle="g" * 32)[0])
    assert route_key(_run(1, tp=TRACEPARENT)[0]) is None
    assert route_key(encode(Message(Kind.HEALTH, 1))[0]) is None  # not a RUN or JOB
    dup = b"\x86" + b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in (
        ("v", VERSION), ("k", int(Kind.RUN)), ("id", 5), ("t", []), ("b", {"handle": "h"}), ("id", 9)))
    assert route_key(dup) is None
    assert route_key(b"\x86\xa1v\x01\xa1k\x18\xa2id\x01garbage") is None
