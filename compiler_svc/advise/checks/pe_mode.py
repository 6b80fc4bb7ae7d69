"""Fused ``pe0-1`` or single PEs ``pe0`` + ``pe1``: fused is faster per request (latency), two
single PEs run two requests at once (throughput), unless a single PE takes at least twice the
fused time, in which case fused wins throughput too (the seed's 2× rule)."""

from __future__ import annotations

from npusim.compiler_svc.advise.registry import check
from npusim.compiler_svc.advise.context import Context
from npusim.compiler_svc.advise.recommendation import Recommendation, Skip, gain

WORTH = 0.03


@check("pe_mode")
def pe_mode(ctx: Context) -> Recommendation | Skip:
    fused, single = ctx.base.but(target="warboy-2pe"), ctx.base.but(target="warboy")
    pes_f, pes_s = ctx.pes_for("warboy-2pe"), ctx.pes_for("warboy")
    w_f = max(ctx.cfg.workers, 2 * len(pes_f))
    w_s = max(ctx.cfg.workers, 2 * len(pes_s))
    if ctx.cfg.target == "latency":  # one request at a time: one PE of each kind
        pf = ctx.predict(fused, pes=pes_f[:1])
        ps = ctx.predict(single, pes=pes_s[:1])
    else:
        pf = ctx.predict(fused, workers=w_f, pes=pes_f)
        ps = ctx.predict(single, workers=w_s, pes=pes_s)
    ratio = ps["npu_us"] / pf["npu_us"] if pf["npu_us"] else 0.0
    rule = (f"a single PE takes {ratio:.2f}× the fused NPU time"
            + (" (≥ 2×: fused wins throughput too)" if ratio >= 2 else " (< 2×: two single PEs win throughput)"))
    details = {"fused": pf, "single": ps, "single_over_fused_npu": round(ratio, 3), "rule": rule,
               "workers": {"fused": w_f, "single": w_s}}
    best_single = (ps["latency_us"] < pf["latency_us"]) if ctx.cfg.target == "latency" else (
        ps["throughput_per_s"] > pf["throughput_per_s"])
    now_fused = ctx.target == "warboy-2pe"
    before, after = (pf, ps) if now_fused else (ps, pf)
    if best_single != now_fused or gain(before, after, ctx.cfg.target) < WORTH:
        return Skip("pe_mode", f"{'fused pe0-1' if now_fused else 'single PEs'} is already the better mode for "
                               f"{ctx.cfg.target}: {rule}", details)
    devices = sorted({d for d, _ in ctx.pes})
    if best_single:
        dev = f"warboy(1)*{2 * len(devices)}"
        return Recommendation(
            knob="pe_mode", change=f"two single PEs per device ({dev}), {w_s} workers",
            code=f'runner = create_runner(model, device="{dev}", worker_num={w_s})',
            cli=f"npusim compile MODEL.onnx --target-npu warboy  # and open it on {dev}",
            why=f"two requests run at once; {rule}", before=before, after=after, details=details,
            measured=ctx.measured(fused, single),
            accuracy={"note": "unchanged: the same int8 program on either PE kind"})
    dev = f"warboy(2)*{len(devices)}"
    return Recommendation(
        knob="pe_mode", change=f"fused pe0-1 ({dev})",
        code=f'runner = create_runner(model, device="{dev}")',
        cli="npusim compile MODEL.onnx --target-npu warboy-2pe",
        why=f"a request uses both PEs' arrays and SRAM at once; {rule}", before=before, after=after, details=details,
        measured=ctx.measured(single, fused),
        accuracy={"note": "unchanged: the same int8 program on either PE kind"})
