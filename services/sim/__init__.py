"""``npusim plan``'s engine: the inference pipeline simulated in virtual time.

:mod:`.pipeline` turns a compiled program and a host profile into what one request does;
:mod:`.arrivals` says when requests come; :mod:`.engine` runs sessions, workers, queues, host
cores and devices on a SimPy clock with the daemon's own device engine; :mod:`.report` gives the
figures under ``npusim bench``'s names; :mod:`.capacity` finds the largest rate that meets a
latency objective.
"""

from npusim.services.sim.arrivals import Arrivals, closed, constant, from_file, poisson
from npusim.services.sim.engine import Run, Scenario, SessionSpec, simulate
from npusim.services.sim.pipeline import Phase, Pipeline
from npusim.services.sim.report import combined, summarize

__all__ = ["Arrivals", "closed", "constant", "from_file", "poisson", "Run", "Scenario", "SessionSpec", "simulate",
           "Phase", "Pipeline", "summarize", "combined"]
