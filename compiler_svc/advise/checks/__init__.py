"""The seed's checklist, one small module per technique: each looks at the model, and either
recommends a change (with its predicted effect, the host time it saves, measured here, its
accuracy cost and the code to write) or says why it has nothing to change.

A check is a function ``(Context) -> Recommendation | Skip`` registered with
:func:`npusim.compiler_svc.advise.registry.check`; importing its module registers it."""

from __future__ import annotations

from npusim.compiler_svc.advise.checks import (
    batch, layout, patching, pe_mode, pixel_outputs, quantize_input, queue_depth, workers)
from npusim.compiler_svc.advise.registry import CHECKS

__all__ = ["CHECKS", "MODULES", "SEED_ORDER"]

MODULES = (quantize_input, pixel_outputs, layout, patching, batch, pe_mode, workers, queue_depth)
SEED_ORDER = ("with_quantize", "normalized_pixel_outputs", "layout", "patch_size", "batch_size", "pe_mode",
              "worker_num", "async_depth")
"""The order of the seed's document: the order checks run and are listed in."""
CHECKS.update({k: CHECKS.pop(k) for k in SEED_ORDER})
