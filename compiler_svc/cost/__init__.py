"""The NPU cost model: per-operator work (rules by operator family) turned into cycles.

Each rule reads one node and the tensor shapes around it and returns its *work*: MACs,
vector element-operations and bytes. :func:`estimate` turns work into cycles for a target
(PE count, SRAM) with the few free parameters of :class:`services.hw.TimingParams`. The
daemon only schedules what this writes into the program: one source of truth for timing.
"""

from compiler_svc.cost.model import Work, estimate, op_work

__all__ = ["Work", "estimate", "op_work"]
