"""Random and damaged messages for the protocol and service fuzz tests (seeded numpy RNGs)."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

Frames = list[bytes]


def pick(rng: np.random.Generator, options: list[Any]) -> Any:
    return options[int(rng.integers(0, len(options)))]


def rand_bytes(rng: np.random.Generator, n: int) -> bytes:
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def rand_value(rng: np.random.Generator, depth: int = 0) -> Any:
    c = int(rng.integers(0, 10 if depth < 2 else 8))
    if c == 0:
        return None
    if c == 1:
        return bool(rng.integers(0, 2))
    if c == 2:
        return pick(rng, [0, 1, 7, 255, -1, -(2**40), 2**40, 2**63 - 1, 2**64 - 1])
    if c == 3:
        return pick(rng, [0.0, -1.5, 2.5, 1e300, float("inf"), float("nan")])
    if c == 4:
        return pick(rng, ["", "x", "pe0", "pe0-1", "pe7", "warboy", "int8", "\u00e9\u4e2d", "h" * 2000])
    if c == 5:
        return rand_bytes(rng, int(rng.integers(0, 32)))
    if c == 6:
        return int(rng.integers(0, 2**31))
    if c == 7:
        return [int(rng.integers(0, 4)) for _ in range(int(rng.integers(0, 4)))]
    if c == 8:
        return [rand_value(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))]
    return {pick(rng, ["v", "k", "id", "handle", "pe", "options", "x"]): rand_value(rng, depth + 1)
            for _ in range(int(rng.integers(0, 4)))}


def mutate(rng: np.random.Generator, frames: Frames) -> Frames:
    """Byte-level damage to a valid message."""
    out = [bytearray(f) for f in frames]
    for _ in range(int(rng.integers(1, 4))):
        op = int(rng.integers(0, 8))
        i = int(rng.integers(0, len(out))) if out else 0
        if op <= 2 and out and out[0]:
            for _ in range(int(rng.integers(1, 4))):
                j = int(rng.integers(0, len(out[0])))
                out[0][j] ^= (1 << int(rng.integers(0, 8))) if rng.random() < 0.5 else int(rng.integers(1, 256))
        elif op == 3 and out and out[i]:
            del out[i][int(rng.integers(0, len(out[i]))):]
        elif op == 4 and out:
            out[i] += rand_bytes(rng, int(rng.integers(1, 4096)))
        elif op == 5 and out:
            del out[i]
        elif op == 6 and out:
            out.insert(i, bytearray(out[i]))
        elif op == 7 and len(out) > 1:
            j = int(rng.integers(0, len(out)))
            out[i], out[j] = out[j], out[i]
    return [bytes(f) for f in out]


def perturb(rng: np.random.Generator, value: Any) -> Any:
    """Replace, delete or add one node somewhere inside a decoded header."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = pick(rng, list(value))
        out = dict(value)
        r = rng.random()
        if r < 0.1:
            del out[key]
        elif r < 0.2:
            out[pick(rng, ["extra", "b", "t", "tp"])] = rand_value(rng)
        else:
            out[key] = perturb(rng, value[key])
        return out
    if isinstance(value, list) and value and rng.random() < 0.8:
        i = int(rng.integers(0, len(value)))
        out = list(value)
        r = rng.random()
        if r < 0.1:
            del out[i]
        elif r < 0.2:
            out.insert(i, rand_value(rng))
        else:
            out[i] = perturb(rng, value[i])
        return out
    return rand_value(rng)


def pack(header: Any) -> bytes:
    return msgpack.packb(header, use_bin_type=True)
