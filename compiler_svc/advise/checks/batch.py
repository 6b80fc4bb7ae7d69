"""Batch size: a small model leaves the NPU waiting on the per-request work around it; a larger
batch spreads that work over more samples. Latency stays or grows, so it is for throughput."""

from __future__ import annotations

from npusim.compiler_svc.advise.registry import check
from npusim.compiler_svc.advise.context import Context
from npusim.compiler_svc.advise.recommendation import Recommendation, Skip, gain
from npusim.compiler_svc.pipeline import MAX_BATCH

CANDIDATES = (4, 8, 16, 32)
WORTH = 0.05  # a change that gains less than this is noise, not advice


@check("batch_size")
def batch(ctx: Context) -> Recommendation | Skip:
    if ctx.cfg.target == "latency":
        return Skip("batch_size", "batching keeps or raises the latency of each request: it is for throughput "
                                  "(--target throughput)")
    base = ctx.base
    before = ctx.predict(base)
    sweep = {1: before}
    for b in (b for b in CANDIDATES if b <= MAX_BATCH):
        sweep[b] = ctx.predict(base.but(batch=b))
    best = max(sweep, key=lambda b: sweep[b]["throughput_per_s"])
    table = [{"batch": b, **p} for b, p in sweep.items()]
    if best == 1 or gain(before, sweep[best], "throughput") < WORTH:
        return Skip("batch_size", "a larger batch does not raise throughput here", {"sweep": table})
    return Recommendation(
        knob="batch_size", change=f"batch_size={best}",
        code=f"session = create(model, batch_size={best})  # inputs: {best} samples per request",
        cli=f"npusim compile MODEL.onnx --batch-size {best}",
        why=f"per-request work is shared by {best} samples (the NPU is {before['bound_by']}-bound at batch 1)",
        before=before, after=sweep[best], details={"sweep": table},
        measured=ctx.measured(base, base.but(batch=best)),
        accuracy={"note": "unchanged: each sample is computed as alone"})
