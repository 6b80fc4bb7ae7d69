"""Host profiles: what the host adds around the device in an end-to-end figure.

An end-to-end latency is the runtime's own per-query overhead, the host operators before the
first NPU stage, the DMA and the device, the host operators between and after. Which host
operators count depends on how the figure is measured, so a profile names that too:

- ``mlperf``: the MLPerf submitter's host and harness, the way the calibration figures were
  measured (research/hardware.md): 2x Xeon Platinum 8368Q at 2.6 GHz, SDK 0.5's native runtime.
  The harness quantizes and lowers every image when it loads the sample set and takes the
  argmax on the NPU's lowered output, so no host operator is in the timed path; the runtime's
  per-query overhead is the fitted ``runtime_overhead_ns``.
- ``this``: this machine, the host operators timed with npusim's real kernels
  (``npusim.client.hostcost``), plus the same runtime overhead (the vendor runtime is not here to time).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass

from npusim.services.errors import ConfigError
from npusim.services.hw import TimingParams, timing_params
from npusim.services.program import Program

__all__ = ["HOSTS", "HostProfile", "host_profile"]

StepCosts = Callable[[Program], list[float | None]]


@dataclass(frozen=True)
class HostProfile:
    name: str
    description: str
    runtime_overhead_ns: float
    step_costs: StepCosts | None = None  # None: host steps are outside the timed path
    cores: int = 1  # host cores the runtime's workers share (``npusim plan``)

    @property
    def times_host_steps(self) -> bool:
        return self.step_costs is not None


HOSTS = ("mlperf", "this")
MLPERF_CORES = 2 * 38
"""The submitter's host: two Xeon Platinum 8368Q of 38 cores each (research/hardware.md)."""


def host_profile(name: str, params: TimingParams | None = None, step_costs: StepCosts | None = None) -> HostProfile:
    """The named profile; ``this`` needs ``step_costs``, the function that times a program's host steps."""
    runtime = (params or timing_params()).runtime_overhead_ns
    if name == "mlperf":
        return HostProfile("mlperf", "MLPerf v2.0 submitter: 2x Xeon Platinum 8368Q 2.6 GHz, SDK 0.5 native runtime; "
                           "host operators outside the timed path", runtime, cores=MLPERF_CORES)
    if name == "this":
        if step_costs is None:
            raise ConfigError("the 'this' host profile times host steps with the client's kernels; "
                              "run it through `npusim estimate --host this`")
        return HostProfile("this", f"this machine ({platform.machine()}, {os.cpu_count()} cores): host operators "
                           "timed with npusim's kernels", runtime, step_costs, cores=os.cpu_count() or 1)
    raise ConfigError(f"unknown host profile {name!r}; choose one of {', '.join(HOSTS)}")
