"""Async depth: ``session.run`` waits for each answer, so the NPU idles while the caller handles
it; ``create_async`` with enough requests in flight keeps every worker fed. The advice is the
fewest in flight that reach the best throughput (more only adds queueing latency)."""

from __future__ import annotations

from npusim.compiler_svc.advise.registry import check
from npusim.compiler_svc.advise.context import Context
from npusim.compiler_svc.advise.recommendation import Recommendation, Skip, gain

CANDIDATES = (1, 2, 4, 8, 16, 32, 64)
NEAR_BEST = 0.97
WORTH = 0.03


@check("async_depth")
def queue_depth(ctx: Context) -> Recommendation | Skip:
    if ctx.cfg.target == "latency":
        return Skip("async_depth", "one request at a time (session.run) is the lowest latency: requests in flight "
                                   "only queue behind each other")
    base, w = ctx.base, ctx.cfg.workers
    sweep = {d: ctx.predict(base, in_flight=d) for d in CANDIDATES}
    top = max(p["throughput_per_s"] for p in sweep.values())
    best = min(d for d, p in sweep.items() if p["throughput_per_s"] >= NEAR_BEST * top)
    table = [{"in_flight": d, **p} for d, p in sweep.items()]
    if best == 1 or gain(sweep[1], sweep[best], "throughput") < WORTH:
        return Skip("async_depth", f"with worker_num={w}, more than one request in flight does not raise throughput",
                    {"sweep": table})
    return Recommendation(
        knob="async_depth", change=f"create_async with {best} requests in flight (worker_num={w})",
        code=f"submitter, queue = create_async(model, worker_num={w}, input_queue_size={2 * best})\n"
             f"# keep {best} submitted and not yet received",
        cli=f"npusim bench MODEL.onnx --workers {w} --in-flight {best}",
        why=f"session.run leaves the NPU idle between a result and the next request; {best} in flight keep "
            f"{w} worker{'s' if w > 1 else ''} fed",
        before=sweep[1], after=sweep[best], details={"sweep": table}, measured=ctx.measured(base, base),
        accuracy={"note": "unchanged"})
