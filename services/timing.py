"""The device timing engine: when each job of one emulated chip queues, moves and runs.

One ``DeviceClock`` holds the state of a whole device, because its PEs share it: one
host-to-device and one device-to-host DMA engine on the PCIe link, and the DRAM bandwidth.
A job's timeline is queue → H2D DMA → execution on its PE(s) → D2H DMA. Each PE has two
input buffers (double buffering): the next job's H2D runs while the current one executes,
and the one after waits for a buffer. When the other PE executes at the same time, the
DRAM bandwidth is shared: the part of a job that overlaps takes the stage's
``npu_ns_shared`` rate instead of ``npu_ns`` (both from the compiler's cost model).

The engine is pure arithmetic on integer nanoseconds: the daemon feeds it wall-clock
arrivals, and ``npusim estimate`` / ``benchmarks/fidelity.py`` feed it synthetic ones, so
predictions and the daemon can never disagree. See docs/timing-model.md.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from npusim.services.hw import WARBOY, Hardware
from npusim.services.program import NpuStage

__all__ = ["CORES", "dma_ns", "StageTiming", "JobTimes", "DeviceClock", "PeCounters", "single_stream", "throughput"]

CORES = {"pe0": (0,), "pe1": (1,), "pe0-1": (0, 1)}


def dma_ns(nbytes: int, hw: Hardware = WARBOY) -> float:
    """One DMA transfer over PCIe: its round-trip latency, then the bytes at the link's rate."""
    return hw.pcie_latency_ns + nbytes / hw.pcie_bytes_per_s * 1e9 if nbytes > 0 else 0.0


@dataclass(frozen=True, slots=True)
class StageTiming:
    """Per-job constants of one NPU stage on one device (from the program's estimate)."""

    h2d_ns: int
    d2h_ns: int
    exec_ns: int  # alone on the device, job overhead included
    exec_shared_ns: int  # while the other PE competes for DRAM
    compute_ns: int  # of which the MAC array / vector units compute (tensor cycles)
    cycles: int
    in_bytes: int
    out_bytes: int

    @classmethod
    def of(cls, estimate: dict[str, Any], in_bytes: int, out_bytes: int, hw: Hardware = WARBOY,
           scale: float = 1.0) -> StageTiming:
        overhead = float(estimate.get("job_overhead_ns", 0.0))
        alone = float(estimate.get("npu_ns", 0.0)) + overhead
        shared = float(estimate.get("npu_ns_shared", estimate.get("npu_ns", 0.0))) + overhead
        clock = float(estimate.get("clock_hz", hw.clock_hz))
        compute = float(estimate.get("compute_cycles", 0.0)) / clock * 1e9
        return cls(h2d_ns=int(dma_ns(in_bytes, hw) * scale), d2h_ns=int(dma_ns(out_bytes, hw) * scale),
                   exec_ns=int(alone * scale), exec_shared_ns=int(shared * scale), compute_ns=int(compute * scale),
                   cycles=int(estimate.get("npu_cycles", 0)), in_bytes=in_bytes, out_bytes=out_bytes)

    @classmethod
    def for_stage(cls, stage: NpuStage, hw: Hardware = WARBOY, scale: float = 1.0,
                  estimate: dict[str, Any] | None = None) -> StageTiming:
        """One program stage's constants (``estimate``: a re-costed one instead of the stored)."""
        return cls.of(stage.estimate if estimate is None else estimate, sum(t.size for t in stage.device_inputs),
                      sum(t.size for t in stage.device_outputs), hw, scale)


@dataclass(slots=True)  # not frozen: one is made per job, and a frozen init costs a microsecond more
class JobTimes:
    arrival: int
    h2d_start: int
    h2d_end: int
    exec_start: int
    exec_end: int
    d2h_start: int
    end: int
    shared: float  # fraction of the execution that shared DRAM with the other PE

    @property
    def queue_ns(self) -> int:
        return self.h2d_start - self.arrival

    def as_dict(self, **extra: Any) -> dict[str, Any]:
        """The timeline as a RESULT's ``timing`` (with ``emulated_ns``), plus ``extra`` fields."""
        return {"arrival_ns": self.arrival, "start_ns": self.h2d_start, "h2d_end_ns": self.h2d_end,
                "exec_start_ns": self.exec_start, "exec_end_ns": self.exec_end, "end_ns": self.end,
                "queue_ns": self.queue_ns, "h2d_ns": self.h2d_end - self.h2d_start,
                "exec_ns": self.exec_end - self.exec_start, "d2h_ns": self.end - self.d2h_start,
                "dram_shared": round(self.shared, 4), "emulated_ns": self.end - self.arrival, **extra}


@dataclass
class PeCounters:
    """The chip's utilisation counters for one PE, in nanoseconds of emulated time (the daemon
    reports cycles at the clock): task = the PE holds a job, tensor = its array computes."""

    task_ns: int = 0
    tensor_ns: int = 0
    io_ns: int = 0
    jobs: int = 0


class _Engine:
    """A DMA engine: busy intervals in start order; a transfer takes the first gap it fits in
    at or after it is ready, so one PE's queued jobs never hold the link against the other's.

    Intervals that end before ``floor`` (the latest arrival seen: no later transfer can be
    ready before it) are dropped, so the scan covers only transfers still pending; a daemon
    at thousands of jobs a second would otherwise walk its whole history on every job."""

    def __init__(self, keep: int = 256) -> None:
        self.busy: deque[tuple[int, int]] = deque()
        self.keep = keep

    def reserve(self, ready: int, duration: int, floor: int = 0) -> int:
        busy = self.busy
        while busy and busy[0][1] <= floor:
            busy.popleft()
        if duration <= 0:
            return ready  # an empty transfer holds the link for no time
        start = ready
        k = len(busy)
        for i, (a, b) in enumerate(busy):
            if b <= start:
                continue
            if a >= start + duration:
                k = i
                break
            start = b
        busy.insert(k, (start, start + duration))
        if len(busy) > self.keep:
            busy.popleft()
        return start


@dataclass
class _Pe:
    free_at: int = 0
    buffers: deque[int] = field(default_factory=lambda: deque(maxlen=2))  # exec ends of the last two jobs
    runs: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=64))  # recent executions


class DeviceClock:
    """The schedule of one device: two PEs (alone or fused), two DMA engines, shared DRAM."""

    def __init__(self, *, jitter: float = 0.0, seed: int = 0) -> None:
        self.pes = [_Pe(), _Pe()]
        self.h2d = _Engine()
        self.d2h = _Engine()
        self.jitter = jitter
        self._rng = random.Random(seed)
        self.counters = [PeCounters(), PeCounters()]
        self._floor = 0  # latest arrival scheduled: arrivals never go back in time

    def schedule(self, pe: str, arrival: int, st: StageTiming) -> JobTimes:
        cores = CORES[pe]
        if arrival > self._floor:
            self._floor = arrival
        if len(cores) == 1:  # the common case, without the generic loops over PEs
            p = self.pes[cores[0]]
            buffer_free = p.buffers[0] if len(p.buffers) == 2 else 0
            h2d_start = self.h2d.reserve(arrival if arrival > buffer_free else buffer_free, st.h2d_ns, self._floor)
            h2d_end = h2d_start + st.h2d_ns
            exec_start = h2d_end if h2d_end > p.free_at else p.free_at
            duration, shared = self._duration(cores, exec_start, st)
            exec_end = exec_start + duration
            p.free_at = exec_end
            p.buffers.append(exec_end)
            p.runs.append((exec_start, exec_end))
        else:
            pes = [self.pes[c] for c in cores]
            buffer_free = max((q.buffers[0] for q in pes if len(q.buffers) == q.buffers.maxlen), default=0)
            h2d_start = self.h2d.reserve(max(arrival, buffer_free), st.h2d_ns, self._floor)
            h2d_end = h2d_start + st.h2d_ns
            exec_start = max(h2d_end, *(q.free_at for q in pes))
            duration, shared = self._duration(cores, exec_start, st)
            exec_end = exec_start + duration
            for q in pes:
                q.free_at = exec_end
                q.buffers.append(exec_end)
                q.runs.append((exec_start, exec_end))
        d2h_start = self.d2h.reserve(exec_end, st.d2h_ns, self._floor)
        end = d2h_start + st.d2h_ns
        return JobTimes(arrival, h2d_start, h2d_end, exec_start, exec_end, d2h_start, end, shared)

    def _duration(self, cores: tuple[int, ...], start: int, st: StageTiming) -> tuple[int, float]:
        """Execution time: the alone rate, slowed where the other PE's runs overlap it."""
        base = st.exec_ns
        shared = 0.0
        if len(cores) == 1 and base > 0 and st.exec_shared_ns > base:
            other = self.pes[1 - cores[0]]
            end = start + base
            overlap = 0
            for a, b in reversed(other.runs):  # in time order: stop at the first run over before us
                if b <= start:
                    break
                overlap += max(0, min(b, end) - max(a, start))
            shared = min(1.0, overlap / base)
            base = int(base + (st.exec_shared_ns - base) * shared)
        if self.jitter > 0:
            base = int(base * max(0.0, 1.0 + self.jitter * self._rng.gauss(0.0, 1.0)))
        return base, shared

    def account(self, pe: str, t: JobTimes, st: StageTiming) -> None:
        """Add a finished job to its PEs' counters."""
        duration = t.exec_end - t.exec_start
        stretch = min(1.0, duration / st.exec_ns) if st.exec_ns else 1.0  # jitter may shorten a run
        for c in CORES[pe]:
            k = self.counters[c]
            k.task_ns += duration
            k.tensor_ns += int(min(st.compute_ns * stretch, duration))
            k.io_ns += (t.h2d_end - t.h2d_start) + (t.end - t.d2h_start)
            k.jobs += 1


def single_stream(pe: str, st: StageTiming, jobs: int = 16) -> float:
    """Steady single-stream latency in ns: each job arrives when the previous one returned."""
    clock, now, last = DeviceClock(), 0, 0
    for _ in range(jobs):
        t = clock.schedule(pe, now, st)
        last, now = t.end - t.arrival, t.end
    return float(last)


def throughput(pes: list[str], st: StageTiming, batch: int, jobs_per_pe: int = 64) -> float:
    """Offline samples/s with every PE of ``pes`` kept busy (all jobs queued at once)."""
    clock = DeviceClock()
    end = 0
    for _ in range(jobs_per_pe):
        for pe in pes:
            end = max(end, clock.schedule(pe, 0, st).end)
    return len(pes) * jobs_per_pe * batch / (end / 1e9) if end else float("inf")
