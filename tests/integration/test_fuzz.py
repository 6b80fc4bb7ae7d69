"""Fuzz the real services over their sockets: a barrage of malformed and hostile messages.

A compiler service and a device daemon each get several thousand random and mutated
multi-frame messages on a raw DEALER socket. Every message must be answered with a
well-formed reply (usually an ERROR), and afterwards both processes must be alive, answer
HEALTH, report the protocol errors in STATS, and still do real work.

Every generated message is also decoded locally first, to count how many protocol errors
the service must at least report. Messages that would close the fuzzer's own session are
left out so the barrage keeps reaching the RUN input checks.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from npusim.services.errors import ProtocolError, ServiceError
from npusim.services.program import Program
from npusim.services.protocol import BODY, DTYPES, VERSION, Kind, Message, decode, encode
from npusim.services.rpc import Peer
from npusim.services.zoo import small_cnn
from tests.fuzzing import Frames, mutate, pack, perturb, pick, rand_bytes, rand_value
from tests.helpers import RunningStack, start_stack

pytestmark = pytest.mark.timeout(90)

MESSAGES_PER_SERVICE = 5000
WINDOW = 100  # requests in flight at once: far below every high-water mark
REPLY_TIMEOUT_MS = 15_000  # a service silent this long is dead or hung
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"



# -- fixtures ---------------------------------------------------------------------------------
@dataclass
class Fuzzed:
    stack: RunningStack
    blob: bytes  # a real compiled program
    model: bytes  # the ONNX model it came from
    program: Program
    ctx: zmq.Context = field(default_factory=zmq.Context)

    def child(self, kind: str) -> Any:
        return next(c for c in self.stack.children if c.kind == kind)


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Fuzzed]:
    with start_stack(devices=1) as stack:
        model = small_cnn(height=32, width=32).SerializeToString()
        with Peer(stack.compiler, timeout_s=60) as compiler:
            reply = compiler.request(Kind.COMPILE, {"options": {}}, [("model", np.frombuffer(model, np.uint8))])
        blob = reply.tensor("program").tobytes()
        f = Fuzzed(stack, blob, model, Program.from_bytes(blob))
        try:
            yield f
        finally:
            f.ctx.destroy(linger=0)


def _dealer(f: Fuzzed, endpoint: str) -> zmq.Socket:
    s = f.ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDTIMEO, REPLY_TIMEOUT_MS)  # never block forever on a dead peer
    s.connect(endpoint)
    return s


def _stats(endpoint: str) -> dict[str, Any]:
    with Peer(endpoint, timeout_s=10) as p:
        return p.request(Kind.STATS).body["stats"]


def _health(endpoint: str) -> dict[str, Any]:
    with Peer(endpoint, timeout_s=10) as p:
        return p.request(Kind.HEALTH).body


# -- message generators -----------------------------------------------------------------------
def rand_size(rng: np.random.Generator) -> int:
    """Mostly small frames, some medium, ~1% up to a megabyte."""
    r = rng.random()
    if r < 0.01:
        return int(rng.integers(64 * 1024, 1 << 20))
    if r < 0.1:
        return int(rng.integers(256, 16 * 1024))
    return int(rng.integers(0, 256))


def typed_value(rng: np.random.Generator, types: tuple[type, ...]) -> Any:
    """A value of one of ``types`` (what the body schema asks for), arbitrary content."""
    t = pick(rng, list(types))
    if t is str:
        return pick(rng, ["", "pe0", "pe1", "pe0-1", "npu0", "0" * 32, "s", "\u00e9", "x" * 300])
    if t is bool:
        return bool(rng.integers(0, 2))
    if t is int:
        return pick(rng, [0, 1, -1, os.getpid(), 2**31, 2**62])
    if t is float:
        return pick(rng, [0.0, 0.5, -1.0, 1e9])
    if t is dict:
        return {pick(rng, ["target_npu", "batch_size", "calibration_method", "calibration_samples", "x"]):
                rand_value(rng, 1)
                for _ in range(int(rng.integers(0, 3)))}
    if t is list:
        return [rand_value(rng, 1) for _ in range(int(rng.integers(0, 3)))]
    return None


def rand_body(rng: np.random.Generator, kind: Kind) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name, (types, required) in BODY.get(kind, {}).items():
        r = rng.random()
        if r < 0.75:
            body[name] = typed_value(rng, types)
        elif r < 0.9 or not required:
            body[name] = rand_value(rng)
        # else: leave a required field out
    if rng.random() < 0.2:
        body[pick(rng, ["extra", "future_field"])] = rand_value(rng)
    return body


def rand_shape(rng: np.random.Generator) -> list[int]:
    return [int(pick(rng, [0, 1, 1, 2, 3, 8, 32])) for _ in range(int(rng.integers(0, 5)))]


def rand_tensors(rng: np.random.Generator, n: int) -> tuple[list[Any], Frames]:
    """Descriptors and frames that agree (valid tensors with arbitrary names/dtypes/shapes)."""
    descs, frames = [], []
    for _ in range(n):
        dtype = pick(rng, list(DTYPES))
        shape = rand_shape(rng)
        size = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
        descs.append([pick(rng, ["input", "program", "model", "x", ""]), dtype, shape])
        frames.append(rand_bytes(rng, size))
    return descs, frames


def gen_random_frames(rng: np.random.Generator) -> Frames:
    return [rand_bytes(rng, rand_size(rng)) for _ in range(int(rng.integers(1, 6)))]


def gen_random_header(rng: np.random.Generator) -> Frames:
    """A msgpack map with some protocol keys, each valid or random."""
    valid = {"v": VERSION, "k": int(pick(rng, list(Kind))), "id": int(rng.integers(0, 2**31)), "tp": None,
             "t": [], "b": {}}
    h = {}
    for key, good in valid.items():
        r = rng.random()
        if r < 0.6:
            h[key] = good
        elif r < 0.9:
            h[key] = rand_value(rng)
    frames = [pack(h)]
    frames += [rand_bytes(rng, rand_size(rng)) for _ in range(int(rng.integers(0, 3)))]
    return frames


def gen_valid_header_random_body(rng: np.random.Generator, kinds: list[Kind]) -> Frames:
    """Passes the framing checks: a real kind (mostly one this service handles) and random content."""
    kind = pick(rng, kinds) if rng.random() < 0.7 else pick(rng, list(Kind))
    descs, frames = rand_tensors(rng, int(rng.integers(0, 3)))
    if rng.random() < 0.3 and frames:  # now make the frames disagree with the descriptors
        i = int(rng.integers(0, len(frames)))
        frames[i] = pick(rng, [frames[i][:-1], frames[i] + b"\x00", b"", rand_bytes(rng, rand_size(rng))])
    h = {"v": VERSION, "k": int(kind), "id": int(rng.integers(0, 2**63)),
         "tp": pick(rng, [None, TRACEPARENT, "garbage-traceparent"]), "t": descs, "b": rand_body(rng, kind)}
    return [pack(h), *frames]


def gen_mutated(rng: np.random.Generator, templates: list[Frames]) -> Frames:
    frames = pick(rng, templates)
    if rng.random() < 0.5:
        return mutate(rng, frames)
    return [pack(perturb(rng, msgpack.unpackb(frames[0], raw=False))), *frames[1:]]


def wire(msg: Message) -> Frames:
    return [bytes(memoryview(f)) for f in encode(msg)]


def u8(data: bytes) -> np.ndarray:
    return np.frombuffer(data, np.uint8)


def compiler_wrong_tensors(rng: np.random.Generator, f: Fuzzed) -> Frames:
    """Well-formed COMPILE requests whose tensors or options are wrong."""
    rid = int(rng.integers(1, 2**31))
    options = pick(rng, [{}, {}, {"target_npu": "warboy"}, {"target_npu": "nope"}, {"batch_size": 4},
                         {"calibration_method": "BOGUS"}, {"calibration_samples": 0}, {"unknown": 1},
                         {"compiler_config": {"x": 1}}, {"target_npu": 5}, {"batch_size": "one"}])
    model = f.model
    tensors = pick(rng, [
        [],
        [("model", u8(rand_bytes(rng, rand_size(rng))))],
        [("model", u8(model[: int(rng.integers(0, 64))]))],  # a cut-off protobuf
        [("model", u8(b""))],
        [("model", np.frombuffer(model[: len(model) // 4 * 4], np.float32))],
        [("weights", u8(model))],
        [("model", u8(rand_bytes(rng, 100))), ("model", u8(model))],
        [("model", np.zeros((0, 3), np.float64))],
        [("model", u8(f.blob))],  # an .enf program is not an ONNX model
    ])
    return wire(Message(Kind.COMPILE, rid, {"options": options}, tensors))


def daemon_wrong_tensors(rng: np.random.Generator, f: Fuzzed, handle: str) -> Frames:
    """Well-formed RUN/OPEN/HEARTBEAT/CLOSE requests with wrong tensors or handles."""
    rid = int(rng.integers(1, 2**31))
    spec = f.program.stages[0].device_inputs[0]
    right = np.zeros(spec.shape, spec.dtype)
    which = int(rng.integers(0, 10))
    if which <= 4:
        tensors = pick(rng, [
            [],
            [(spec.name, right.astype(np.float32))],
            [(spec.name, np.zeros((1, 3, 16, 16), spec.dtype))],
            [(spec.name, right.reshape(-1))],
            [(spec.name, right), (spec.name, right)],
            [("wrong-name", np.zeros((1, 3, 32, 31), spec.dtype))],
            [(spec.name, np.zeros((0,), spec.dtype))],
            [(spec.name, u8(rand_bytes(rng, rand_size(rng))))],
            [(spec.name, np.ones((256, 1024), np.float32))],  # 1 MB
            [(spec.name, right)],  # correct: a real job
        ])
        h = pick(rng, [handle, handle, handle, "0" * 32, "", "x" * 5000])
        return wire(Message(Kind.RUN, rid, {"handle": h, "collect": bool(rng.integers(0, 2))}, tensors,
                            pick(rng, [None, TRACEPARENT])))
    if which <= 7:
        program = pick(rng, [
            [],
            [("program", u8(f.blob))],  # the PE is taken (or the target does not fit)
            [("program", u8(f.blob[: int(rng.integers(0, len(f.blob)))]))],
            [("program", u8(rand_bytes(rng, rand_size(rng))))],
            [("program", np.frombuffer(f.blob[: len(f.blob) // 2 * 2], np.int16))],
            [("prog", u8(f.blob))],
            [("program", u8(b"NPUSIMEF" + rand_bytes(rng, 64)))],
        ])
        body = {"pe": pick(rng, ["pe0", "pe1", "pe0-1", "pe2", "", "pe0-1 "]), "session": "fuzz",
                "client_pid": pick(rng, [None, os.getpid(), 1, 2**31 - 1])}
        return wire(Message(Kind.OPEN, rid, body, program))
    if which == 8:
        handles = pick(rng, [[handle], [], ["nope", handle], [1, None, {"a": 1}], None])
        return wire(Message(Kind.HEARTBEAT, rid, {"handles": handles}))
    return wire(Message(Kind.CLOSE, rid, {"handle": pick(rng, ["0" * 32, "", "not-a-handle"])}))


def templates_for(f: Fuzzed, kind: str, handle: str) -> list[Frames]:
    spec = f.program.stages[0].device_inputs[0]
    common = [wire(Message(Kind.HEALTH, 1)), wire(Message(Kind.STATS, 2, {}, [], TRACEPARENT))]
    if kind == "compiler":
        return common + [
            wire(Message(Kind.COMPILE, 3, {"options": {"target_npu": "warboy-2pe"}},
                         [("model", u8(f.model[:200]))])),
            wire(Message(Kind.COMPILE, 4, {"options": {}, "collect": True}, [("model", u8(b"\x08\x07"))],
                         TRACEPARENT)),
        ]
    return common + [
        wire(Message(Kind.RUN, 5, {"handle": handle}, [(spec.name, np.zeros(spec.shape, spec.dtype))])),
        wire(Message(Kind.OPEN, 6, {"pe": "pe0-1", "session": "s", "client_pid": os.getpid()},
                     [("program", u8(f.blob[:300]))])),
        wire(Message(Kind.HEARTBEAT, 7, {"handles": [handle]})),
        wire(Message(Kind.CLOSE, 8, {"handle": "0" * 32})),
    ]


@dataclass
class Barrage:
    messages: list[Frames]
    expect_protocol_errors: int  # lower bound: messages the local decoder rejects
    skipped: collections.Counter[str]


def build_barrage(rng: np.random.Generator, n: int, generators: list[Callable[[], Frames]],
                  keep: Callable[[Message], bool]) -> Barrage:
    messages: list[Frames] = []
    skipped: collections.Counter[str] = collections.Counter()
    bad = 0
    while len(messages) < n:
        frames = pick(rng, generators)() or [b""]  # zmq cannot send zero frames
        try:
            msg = decode(frames)
        except ProtocolError:
            bad += 1
        else:
            if not keep(msg):
                skipped["would close the fuzz session"] += 1
                continue
        messages.append(frames)
    return Barrage(messages, bad, skipped)


# -- sending ----------------------------------------------------------------------------------
@dataclass
class Outcome:
    sent: int = 0
    replies: int = 0
    reply_kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    error_codes: collections.Counter[int] = field(default_factory=collections.Counter)
    internal_errors: list[str] = field(default_factory=list)
    bad_replies: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _take_replies(sock: zmq.Socket, out: Outcome, timeout_ms: int) -> None:
    """Receive every reply that is ready (waiting up to ``timeout_ms`` for the first)."""
    if not sock.poll(timeout_ms):
        return
    while sock.poll(0):
        frames = sock.recv_multipart(copy=False)
        out.replies += 1
        try:
            reply = decode(frames)
            out.reply_kinds[reply.kind.name] += 1
            if reply.kind is Kind.ERROR:
                out.error_codes[reply.body["code"]] += 1
                if reply.body["code"] == ServiceError.code and len(out.internal_errors) < 5:
                    out.internal_errors.append(reply.body["message"])
        except Exception as e:  # noqa: BLE001 - any failure here is a service bug
            if len(out.bad_replies) < 5:
                out.bad_replies.append(f"{type(e).__name__}: {e}")
            out.reply_kinds["<undecodable>"] += 1


def blast(sock: zmq.Socket, messages: list[Frames], describe: Callable[[], str]) -> Outcome:
    out = Outcome()
    t0 = time.monotonic()
    for frames in messages:
        while out.sent - out.replies >= WINDOW:
            before = out.replies
            _take_replies(sock, out, REPLY_TIMEOUT_MS)
            if out.replies == before:
                pytest.fail(f"no reply for {REPLY_TIMEOUT_MS} ms after {out.sent} messages; {describe()}")
        sock.send_multipart(frames, copy=False)
        out.sent += 1
        _take_replies(sock, out, 0)
    deadline = time.monotonic() + REPLY_TIMEOUT_MS / 1000
    while out.replies < out.sent and time.monotonic() < deadline:
        _take_replies(sock, out, 200)
    out.seconds = time.monotonic() - t0
    return out


def _describe(child: Any) -> Callable[[], str]:
    return lambda: f"{child.name} exit code {child.proc.poll()}; log tail:\n{child.log_tail(30)}"


def _check_outcome(out: Outcome, child: Any) -> None:
    assert child.proc.poll() is None, f"{child.name} died during the barrage; {_describe(child)()}"
    assert not out.bad_replies, f"{child.name} sent malformed replies: {out.bad_replies}"
    assert out.replies == out.sent, (f"{child.name} answered {out.replies} of {out.sent} messages "
                                     f"({dict(out.reply_kinds)}); {_describe(child)()}")
    # ServiceError is "a service failed internally (a bug)": hostile input must get a named error.
    assert not out.internal_errors, f"{child.name} hit internal errors: {out.internal_errors}"


# -- the barrages -----------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_compiler_survives_barrage(fuzzed: Fuzzed) -> None:
    child = fuzzed.child("compiler")
    endpoint = child.endpoint
    rng = np.random.default_rng(1001)
    templates = templates_for(fuzzed, "compiler", "")
    kinds = [Kind.COMPILE, Kind.HEALTH, Kind.STATS]
    generators: list[Callable[[], Frames]] = [
        lambda: gen_random_frames(rng),
        lambda: gen_random_header(rng),
        lambda: gen_valid_header_random_body(rng, kinds),
        lambda: gen_mutated(rng, templates),
        lambda: gen_mutated(rng, templates),
        lambda: compiler_wrong_tensors(rng, fuzzed),
    ]
    barrage = build_barrage(rng, MESSAGES_PER_SERVICE, generators, keep=lambda m: True)
    assert sum(barrage.skipped.values()) < MESSAGES_PER_SERVICE // 20, barrage.skipped
    before = _stats(endpoint)

    sock = _dealer(fuzzed, endpoint)
    try:
        out = blast(sock, barrage.messages, _describe(child))
    finally:
        sock.close(linger=0)

    _check_outcome(out, child)
    assert out.reply_kinds["ERROR"] > MESSAGES_PER_SERVICE // 2
    health = _health(endpoint)
    assert health["service"] == "compiler" and health["pid"] == child.proc.pid
    after = _stats(endpoint)
    assert after["protocol_errors"] > 0
    assert after["protocol_errors"] - before["protocol_errors"] >= barrage.expect_protocol_errors
    assert after["received"] - before["received"] >= MESSAGES_PER_SERVICE
    # ... and it still compiles: the real model again, straight from its cache.
    with Peer(endpoint, timeout_s=30) as p:
        reply = p.request(Kind.COMPILE, {"options": {}}, [("model", u8(fuzzed.model))])
    assert reply.tensor("program").tobytes() == fuzzed.blob


# The barrage is built before the session is opened (a session without traffic for 3 s is
# released), with this stand-in for its handle: a 32-character string like the real one, so
# swapping the bytes keeps every header exactly as valid or invalid as it was.
HANDLE_PLACEHOLDER = "5ca1ab1e" * 4


@pytest.mark.timeout(60)
def test_daemon_survives_barrage(fuzzed: Fuzzed) -> None:
    child = fuzzed.child("daemon")
    endpoint = child.endpoint
    spec = fuzzed.program.stages[0].device_inputs[0]
    rng = np.random.default_rng(2002)
    templates = templates_for(fuzzed, "daemon", HANDLE_PLACEHOLDER)
    kinds = [Kind.OPEN, Kind.CLOSE, Kind.RUN, Kind.HEARTBEAT, Kind.HEALTH, Kind.STATS]
    generators: list[Callable[[], Frames]] = [
        lambda: gen_random_frames(rng),
        lambda: gen_random_header(rng),
        lambda: gen_valid_header_random_body(rng, kinds),
        lambda: gen_mutated(rng, templates),
        lambda: gen_mutated(rng, templates),
        lambda: daemon_wrong_tensors(rng, fuzzed, HANDLE_PLACEHOLDER),
        lambda: daemon_wrong_tensors(rng, fuzzed, HANDLE_PLACEHOLDER),
    ]
    # Closing our own session is legitimate, but it would stop the barrage from reaching
    # the RUN input checks of a live session.
    barrage = build_barrage(rng, MESSAGES_PER_SERVICE, generators,
                            keep=lambda m: not (m.kind is Kind.CLOSE and m.body.get("handle") == HANDLE_PLACEHOLDER))
    assert sum(barrage.skipped.values()) < MESSAGES_PER_SERVICE // 20, barrage.skipped

    with Peer(endpoint, timeout_s=30) as daemon:
        opened = daemon.request(Kind.OPEN, {"pe": "pe0-1", "session": "fuzz", "client_pid": os.getpid()},
                                [("program", u8(fuzzed.blob))])
        handle = opened.body["handle"]
        assert len(handle) == len(HANDLE_PLACEHOLDER)
        old, new = HANDLE_PLACEHOLDER.encode(), handle.encode()
        messages = [[frame.replace(old, new) for frame in m] for m in barrage.messages]
        before = _stats(endpoint)

        sock = _dealer(fuzzed, endpoint)
        try:
            out = blast(sock, messages, _describe(child))
        finally:
            sock.close(linger=0)

        _check_outcome(out, child)
        assert out.reply_kinds["ERROR"] > MESSAGES_PER_SERVICE // 2
        assert out.reply_kinds["RESULT"] > 0  # the valid RUNs among the junk were served
        health = _health(endpoint)
        assert health["service"] == "daemon" and health["pid"] == child.proc.pid
        after = _stats(endpoint)
        assert after["protocol_errors"] > 0
        assert after["protocol_errors"] - before["protocol_errors"] >= barrage.expect_protocol_errors
        assert after["received"] - before["received"] >= MESSAGES_PER_SERVICE
        assert list(after["sessions"]) == [handle]  # the junk opened nothing and closed nothing

        # ... and the session still computes.
        x = np.random.default_rng(3).integers(-128, 128, spec.shape).astype(spec.dtype)
        result = daemon.request(Kind.RUN, {"handle": handle}, [(spec.name, x)])
        (out_spec,) = fuzzed.program.stages[0].device_outputs
        assert result.tensors[0][1].shape == out_spec.shape
        assert daemon.request(Kind.CLOSE, {"handle": handle}).kind is Kind.CLOSED
    assert _stats(endpoint)["sessions"] == {}


# -- regressions ---------------------------------------------------------------------------------
def _header(**fields: Any) -> bytes:
    h = {"v": VERSION, "k": int(Kind.HEALTH), "id": 9, "tp": None, "t": [], "b": {}}
    h.update(fields)
    return pack(h)


KILLERS = {
    "unhashable-dtype": [_header(t=[["x", ["int8"], [1]]]), b"\x00"],
    "zero-size-overflowing-shape": [_header(t=[["x", "float64", [0, 2**39, 2**39]]]), b""],
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("killer", KILLERS.values(), ids=KILLERS.keys())
def test_service_survives_decoder_crash(killer: Frames) -> None:
    problems = []
    ctx = zmq.Context()
    try:
        with start_stack(devices=1) as stack:
            for child in stack.children:
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(child.endpoint)
                try:
                    sock.send_multipart(killer)
                    if not sock.poll(2000):
                        problems.append(f"{child.name}: no reply")
                    else:
                        reply = decode(sock.recv_multipart())
                        if reply.kind is not Kind.ERROR:
                            problems.append(f"{child.name}: replied {reply.kind.name}")
                finally:
                    sock.close(linger=0)
                time.sleep(0.2)
                if child.proc.poll() is not None:
                    problems.append(f"{child.name} exited with code {child.proc.poll()}: "
                                    f"{child.log_tail(3)}")
    finally:
        ctx.destroy(linger=0)
    assert not problems, problems


@pytest.mark.timeout(30)
def test_error_reply_to_bool_id_is_decodable(fuzzed: Fuzzed) -> None:
    child = fuzzed.child("daemon")
    sock = _dealer(fuzzed, child.endpoint)
    try:
        sock.send_multipart([_header(id=True)])
        assert sock.poll(5000), "no reply"
        frames = sock.recv_multipart()
    finally:
        sock.close(linger=0)
    assert child.proc.poll() is None
    try:
        reply = decode(frames)
    except ProtocolError as e:
        raise AssertionError(f"the service's ERROR reply is itself malformed: {e}") from None
    assert reply.kind is Kind.ERROR


@pytest.mark.timeout(30)
@pytest.mark.parametrize("options", [{"target_npu": ["warboy"]}, {"calibration_method": {"a": 1}}],
                         ids=["target_npu-list", "calibration_method-map"])
def test_compile_options_of_the_wrong_type_are_named_errors(fuzzed: Fuzzed, options: dict[str, Any]) -> None:
    with Peer(fuzzed.stack.compiler, timeout_s=30) as p:
        rid = p.send(Kind.COMPILE, {"options": options}, [("model", u8(fuzzed.model))])
        try:
            p.wait(rid, Kind.COMPILE)
        except ServiceError as e:
            raise AssertionError(f"internal error for bad options {options}: {e}") from None
        except Exception:  # noqa: BLE001 - any named error is the right answer
            return
    raise AssertionError(f"options {options} were accepted")
