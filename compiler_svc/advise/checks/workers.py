"""worker_num: a worker runs a request's host work and then waits for its NPU job, so one worker
leaves the NPU idle during host work; enough workers hide it. More than that only costs memory
and host cores, so the advice is the fewest workers that reach the best throughput."""

from __future__ import annotations

from npusim.compiler_svc.advise.registry import check
from npusim.compiler_svc.advise.context import Context
from npusim.compiler_svc.advise.recommendation import Recommendation, Skip, gain

CANDIDATES = (1, 2, 3, 4, 6, 8, 12, 16)
NEAR_BEST = 0.97
WORTH = 0.03


@check("worker_num")
def workers(ctx: Context) -> Recommendation | Skip:
    if ctx.cfg.target == "latency":
        return Skip("worker_num", "one request at a time uses one worker: more workers do not lower its latency")
    base = ctx.base
    sweep = {w: ctx.predict(base, workers=w) for w in sorted({*CANDIDATES, ctx.cfg.workers})}
    top = max(p["throughput_per_s"] for p in sweep.values())
    best = min(w for w, p in sweep.items() if p["throughput_per_s"] >= NEAR_BEST * top)
    before, after = sweep[ctx.cfg.workers], sweep[best]
    table = [{"workers": w, **p} for w, p in sweep.items()]
    one = sweep[1]
    balance = (f"CPU {one['cpu_us']:,.0f} µs and NPU {one['npu_us']:,.0f} µs per request: about "
               f"{(one['cpu_us'] + one['npu_us']) / one['npu_us']:.1f} workers keep one PE busy" if one["npu_us"] else "")
    if best == ctx.cfg.workers or gain(before, after, "throughput") < WORTH:
        return Skip("worker_num", f"worker_num={ctx.cfg.workers} already reaches {NEAR_BEST:.0%} of the best "
                                  f"throughput; {balance}", {"sweep": table})
    return Recommendation(
        knob="worker_num", change=f"worker_num={best}",
        code=f"runner = create_runner(model, worker_num={best})", cli=f"npusim bench MODEL.onnx --workers {best}",
        why=f"the fewest workers within {100 - 100 * NEAR_BEST:.0f}% of the best throughput; {balance}",
        before=before, after=after, details={"sweep": table}, measured=ctx.measured(base, base),
        accuracy={"note": "unchanged"})
