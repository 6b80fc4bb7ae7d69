"""How requests arrive: a closed loop (N in flight) or an open loop (times given in advance).

A closed loop is what ``npusim bench`` drives: each of N clients submits its next request
when its last one returns. An open loop submits at given instants whatever the pipeline is
doing: a constant rate, a Poisson process (exponential gaps from a seeded generator, so a
plan is reproducible), or a file of timestamps.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from npusim.services.errors import ConfigError

__all__ = ["Arrivals", "closed", "constant", "poisson", "from_file"]


@dataclass(frozen=True)
class Arrivals:
    """``in_flight`` for a closed loop; else ``times`` yields the arrival instants (ns, rising)."""

    kind: str  # "closed" | "constant" | "poisson" | "file"
    in_flight: int = 0
    rate_per_s: float = 0.0
    seed: int = 0
    stamps_ns: tuple[int, ...] = ()

    @property
    def closed(self) -> bool:
        return self.kind == "closed"

    def times(self) -> Iterator[int]:
        if self.kind == "constant":
            gap = 1e9 / self.rate_per_s
            k = 0
            while True:
                yield int(k * gap)
                k += 1
        elif self.kind == "poisson":
            rng = random.Random(self.seed)
            t = 0.0
            while True:
                yield int(t)
                t += rng.expovariate(self.rate_per_s) * 1e9
        elif self.kind == "file":
            yield from self.stamps_ns
        else:
            raise ValueError("a closed loop has no arrival times")

    def describe(self) -> str:
        if self.closed:
            return f"closed loop, {self.in_flight} in flight"
        if self.kind == "file":
            return f"{len(self.stamps_ns)} arrivals from a file"
        return f"{self.kind} arrivals at {self.rate_per_s:,.1f}/s"


def closed(in_flight: int) -> Arrivals:
    if in_flight < 1:
        raise ConfigError(f"--concurrency {in_flight}: at least one request must be in flight")
    return Arrivals("closed", in_flight=in_flight)


def constant(rate_per_s: float) -> Arrivals:
    _check_rate(rate_per_s)
    return Arrivals("constant", rate_per_s=rate_per_s)


def poisson(rate_per_s: float, seed: int = 0) -> Arrivals:
    _check_rate(rate_per_s)
    return Arrivals("poisson", rate_per_s=rate_per_s, seed=seed)


def from_file(path: Path) -> Arrivals:
    """One arrival per line, in seconds from the start (``#`` starts a comment), in rising order."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read the arrivals file {path}: {e.strerror}") from None
    stamps: list[int] = []
    for n, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            t = float(text)
        except ValueError:
            raise ConfigError(f"{path}:{n}: {text!r} is not a time in seconds") from None
        if t < 0 or (stamps and t * 1e9 < stamps[-1]):
            raise ConfigError(f"{path}:{n}: arrival times must be ≥ 0 and in rising order")
        stamps.append(int(t * 1e9))
    if not stamps:
        raise ConfigError(f"{path} holds no arrival times (one per line, in seconds)")
    return Arrivals("file", stamps_ns=tuple(stamps), rate_per_s=_mean_rate(stamps))


def _mean_rate(stamps: list[int]) -> float:
    span = stamps[-1] - stamps[0]
    return (len(stamps) - 1) / (span / 1e9) if span > 0 else 0.0


def _check_rate(rate: float) -> None:
    if not rate > 0:
        raise ConfigError(f"--rate {rate}: must be a positive number of requests per second")
