"""The pipeline in virtual time: sessions, workers, bounded queues, host cores and devices.

Every process of the live system has a counterpart here, on a SimPy clock instead of the
wall clock: the client submits into a session's bounded input queue (blocking while it is
full, as ``submit`` does), ``worker_num`` workers each take one request at a time, host phases
hold one of ``host_cores`` cores, and each NPU stage is a job on the worker's PE (workers of a
session on several PEs take them round-robin, as the live pool does). The device is the
daemon's own engine, :class:`~npusim.services.timing.DeviceClock`, fed the virtual submit
instant: its closed form already answers a job's queue, DMA and execution exactly, so only the
host side needs events.

Nothing here reads the wall clock or an unseeded generator: one scenario gives one result.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from npusim.services.errors import ConfigError
from npusim.services.sim.arrivals import Arrivals
from npusim.services.sim.pipeline import Pipeline
from npusim.services.timing import CORES, DeviceClock

__all__ = ["SessionSpec", "Scenario", "SessionRun", "Run", "simulate"]


@dataclass(frozen=True)
class SessionSpec:
    """One session: a program's pipeline on some PEs, its workers, its arrivals."""

    pipeline: Pipeline
    pes: tuple[tuple[int, str], ...]  # (device, "pe0" | "pe1" | "pe0-1"), one per opened PE
    workers: int
    arrivals: Arrivals
    input_queue: int = 1024
    output_queue: int = 1024
    consumer_ns: int = 0  # the caller's own time per answer (its post-processing), on one thread

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"worker_num must be at least 1, got {self.workers}")
        if self.input_queue < 1:
            raise ConfigError(f"the input queue must hold at least one request, got {self.input_queue}")
        if self.output_queue < 1:
            raise ConfigError(f"the output queue must hold at least one answer, got {self.output_queue}")
        if self.consumer_ns < 0:
            raise ConfigError(f"the consumer's time per answer cannot be negative, got {self.consumer_ns} ns")
        if not self.pes:
            raise ConfigError("a session needs at least one PE")


@dataclass(frozen=True)
class Scenario:
    sessions: tuple[SessionSpec, ...]
    host_cores: int
    requests: int = 10_000  # measured per session, after the warm-up
    warmup: int = 0
    duration_ns: int | None = None  # stop here at the latest (virtual time)

    def __post_init__(self) -> None:
        if self.host_cores < 1:
            raise ConfigError(f"--host-cores {self.host_cores}: the host needs at least one core")
        if self.requests < 1:
            raise ConfigError("simulate at least one request (-n)")


@dataclass
class SessionRun:
    """What one session's requests did, one entry per finished request in completion order."""

    spec: SessionSpec
    arrival: list[int] = field(default_factory=list)  # when the client meant to submit
    start: list[int] = field(default_factory=list)  # when a worker took it
    end: list[int] = field(default_factory=list)
    device: list[int] = field(default_factory=list)  # emulated device time (queue + DMA + execution)
    measured_from: int = 0  # index of the first request after the warm-up

    def arrays(self) -> dict[str, np.ndarray]:
        k = self.measured_from
        return {name: np.asarray(getattr(self, name)[k:], dtype=np.int64)
                for name in ("arrival", "start", "end", "device")}


@dataclass
class Run:
    """A finished simulation: per session records, and the busy time of every resource."""

    sessions: list[SessionRun]
    end_ns: int
    host_cores: int
    pe_busy: dict[tuple[int, int], list[tuple[int, int]]]  # (device, core) -> execution intervals
    link_busy: dict[tuple[int, str], list[tuple[int, int]]]  # (device, "h2d" | "d2h") -> transfers
    core_busy: list[tuple[int, int]]  # host phases
    worker_busy: list[list[tuple[int, int]]]  # per session: a worker holds a request


def simulate(scenario: Scenario) -> Run:
    env = simpy.Environment()
    workers_total = sum(s.workers for s in scenario.sessions)
    # a core pool only matters when more workers than cores can want one at once
    cores = simpy.Resource(env, capacity=scenario.host_cores) if workers_total > scenario.host_cores else None
    clocks: dict[int, DeviceClock] = {}
    run = Run([SessionRun(s) for s in scenario.sessions], 0, scenario.host_cores, {}, {}, [],
              [[] for _ in scenario.sessions])
    pending = [len(scenario.sessions)]
    all_done = env.event()
    for k, spec in enumerate(scenario.sessions):
        for device, pe in spec.pes:
            clocks.setdefault(device, DeviceClock())
            for core in CORES[pe]:
                run.pe_busy.setdefault((device, core), [])
            for link in ("h2d", "d2h"):
                run.link_busy.setdefault((device, link), [])
        queue = simpy.Store(env, capacity=spec.input_queue)
        target = scenario.warmup + scenario.requests
        state = _State(run.sessions[k], target, pending, all_done)
        answers = None
        if spec.consumer_ns > 0:  # answers wait in the output queue for the caller; a full one holds the workers
            answers = simpy.Store(env, capacity=spec.output_queue)
            env.process(_consumer(env, spec.consumer_ns, answers, state))
        for w in range(spec.workers):
            env.process(_worker(env, spec, w, queue, cores, clocks, run, k, state, answers))
        if spec.arrivals.closed:
            for _ in range(spec.arrivals.in_flight):
                env.process(_client(env, queue, state))
        else:
            env.process(_submitter(env, spec.arrivals, queue, state))
    env.run(until=all_done if scenario.duration_ns is None else env.any_of([all_done, env.timeout(
        scenario.duration_ns)]))
    run.end_ns = int(env.now)
    for r in run.sessions:
        r.measured_from = min(scenario.warmup, len(r.end))
    return run


class _State:
    """A session's progress: requests finished, and whether enough have to stop."""

    def __init__(self, rec: SessionRun, target: int, pending: list[int], all_done: simpy.Event) -> None:
        self.rec = rec
        self.target = target
        self.submitted = 0
        self.pending = pending
        self.all_done = all_done

    @property
    def enough_submitted(self) -> bool:
        return self.submitted >= self.target

    def finished(self, arrival: int, start: int, end: int, device: int) -> None:
        r = self.rec
        r.arrival.append(arrival)
        r.start.append(start)
        r.end.append(end)
        r.device.append(device)
        if len(r.end) == self.target:
            self.pending[0] -= 1
            if self.pending[0] == 0:
                self.all_done.succeed()


class _Job:
    __slots__ = ("arrival", "done", "start", "device")

    def __init__(self, arrival: int, done: simpy.Event | None) -> None:
        self.arrival = arrival
        self.done = done
        self.start = 0
        self.device = 0


def _consumer(env: simpy.Environment, ns: int, answers: simpy.Store, state: _State) -> Generator[Any, Any, None]:
    """The caller's thread: receives each answer (its latency ends there), handles it for ``ns``,
    and only then receives the next; a closed-loop client submits again once it has handled one."""
    while True:
        job: _Job = yield answers.get()
        state.finished(job.arrival, job.start, int(env.now), job.device)
        yield env.timeout(ns)
        if job.done is not None:
            job.done.succeed()


def _client(env: simpy.Environment, queue: simpy.Store, state: _State) -> Generator[Any, Any, None]:
    """A closed-loop client: submit, wait for the answer, submit again."""
    while not state.enough_submitted:
        state.submitted += 1
        job = _Job(int(env.now), env.event())
        yield queue.put(job)
        yield job.done


def _submitter(env: simpy.Environment, arrivals: Arrivals, queue: simpy.Store,
               state: _State) -> Generator[Any, Any, None]:
    """An open loop: submit at each instant; a full input queue holds the submitter back (the
    request's latency still counts from the instant it was meant to arrive)."""
    for t in arrivals.times():
        if state.enough_submitted:
            return
        if t > env.now:
            yield env.timeout(t - env.now)
        state.submitted += 1
        yield queue.put(_Job(t, None))
    state.target = state.submitted  # a file ran out: its requests are all there is
    if len(state.rec.end) >= state.target:
        state.pending[0] -= 1
        if state.pending[0] == 0:
            state.all_done.succeed()


def _worker(env: simpy.Environment, spec: SessionSpec, index: int, queue: simpy.Store,
            cores: simpy.Resource | None, clocks: dict[int, DeviceClock], run: Run, session: int,
            state: _State, answers: simpy.Store | None) -> Generator[Any, Any, None]:
    device, pe = spec.pes[index % len(spec.pes)]
    clock = clocks[device]
    pe_busy = [run.pe_busy[(device, c)] for c in CORES[pe]]
    h2d, d2h = run.link_busy[(device, "h2d")], run.link_busy[(device, "d2h")]
    core_busy, worker_busy = run.core_busy, run.worker_busy[session]
    phases = spec.pipeline.phases
    while True:
        job: _Job = yield queue.get()
        start = int(env.now)
        device_ns = 0
        for ph in phases:
            if ph.stage is None:
                if cores is not None:
                    req = cores.request()
                    yield req
                    t0 = int(env.now)
                    yield env.timeout(ph.ns)
                    cores.release(req)
                else:
                    t0 = int(env.now)
                    yield env.timeout(ph.ns)
                core_busy.append((t0, t0 + ph.ns))
            else:
                t = clock.schedule(pe, int(env.now), ph.stage)
                for busy in pe_busy:
                    busy.append((t.exec_start, t.exec_end))
                h2d.append((t.h2d_start, t.h2d_end))
                d2h.append((t.d2h_start, t.end))
                device_ns += t.end - t.arrival
                yield env.timeout(t.end - env.now)
        if answers is not None:
            job.start, job.device = start, device_ns
            yield answers.put(job)  # waits while the output queue is full
            worker_busy.append((start, int(env.now)))
            continue
        end = int(env.now)
        worker_busy.append((start, end))
        state.finished(job.arrival, start, end, device_ns)
        if job.done is not None:
            job.done.succeed()


def busy_fraction(intervals: Sequence[tuple[int, int]], lo: int, hi: int) -> float:
    """The share of [lo, hi) that ``intervals`` (which may overlap only if their owner can do
    several things at once: count them as given) cover."""
    if hi <= lo or not intervals:
        return 0.0
    a = np.asarray(intervals, dtype=np.int64)
    covered = np.clip(np.minimum(a[:, 1], hi) - np.maximum(a[:, 0], lo), 0, None)
    return float(covered.sum()) / (hi - lo)
