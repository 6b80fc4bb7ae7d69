"""When an emulated job happens: queue wait, host-to-device DMA, execution, device-to-host DMA.

Times are ``time.monotonic_ns()`` values, so the emulated timeline is anchored to the
wall clock: a job that arrives at an idle PE starts at its arrival. A PE runs one job at a
time, first come first served.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["JobTimes", "Timeline"]


@dataclass(frozen=True, slots=True)
class JobTimes:
    arrival: int
    start: int
    h2d_end: int
    exec_end: int
    end: int

    @property
    def queue_ns(self) -> int:
        return self.start - self.arrival

    def as_dict(self) -> dict[str, int]:
        return {"arrival_ns": self.arrival, "start_ns": self.start, "h2d_end_ns": self.h2d_end,
                "exec_end_ns": self.exec_end, "end_ns": self.end, "queue_ns": self.queue_ns,
                "h2d_ns": self.h2d_end - self.start, "exec_ns": self.exec_end - self.h2d_end,
                "d2h_ns": self.end - self.exec_end}


class Timeline:
    """The schedule of one PE (or of a fused pair, which acts as one)."""

    def __init__(self) -> None:
        self.free_at = 0
        self.busy_ns = 0  # emulated time spent on jobs, for utilisation
        self.exec_ns = 0  # of which NPU execution

    def schedule(self, arrival: int, h2d_ns: int, exec_ns: int, d2h_ns: int) -> JobTimes:
        start = max(arrival, self.free_at)
        times = JobTimes(arrival, start, start + h2d_ns, start + h2d_ns + exec_ns, start + h2d_ns + exec_ns + d2h_ns)
        self.free_at = times.end
        self.busy_ns += times.end - start
        self.exec_ns += exec_ns
        return times
