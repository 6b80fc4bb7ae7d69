"""The NPU cost model: what each operator of an NPU stage costs on a target, in cycles.

Rules (one per operator family, ``_list.py``) turn a node into its *work*; the slice array
(``array.py``), the SRAM plan (``memory.py``) and layer fusion (``fusion.py``) turn work into
cycles with the two fitted parameters of :class:`npusim.services.hw.TimingParams`. It lives in
``services`` because the compiler prices a program with it and the daemon re-prices one with
it under ``--hw``: one engine, so a prediction and an emulated run never disagree.
"""

from npusim.services.cost.array import ArrayCost, fold_overhead, mac_cycles, vector_cycles
from npusim.services.cost.model import estimate, op_work
from npusim.services.cost.recost import LAYOUT_OPS, layout_costs, program_weights, recost_program, recost_stage
from npusim.services.cost.work import Gemm, Shapes, Work

__all__ = ["LAYOUT_OPS", "ArrayCost", "Gemm", "Shapes", "Work", "estimate", "fold_overhead", "layout_costs",
           "mac_cycles", "op_work", "program_weights", "recost_program", "recost_stage", "vector_cycles"]
