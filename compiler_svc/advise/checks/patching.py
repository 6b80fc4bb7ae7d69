"""Patches: a fully convolutional model on a large image (denoising, super-resolution) can run
on overlapping patches whose interiors are stitched back. A patch that fits the PE's SRAM
avoids streaming activations from DRAM, and patches of one image run on several PEs at once;
too small a patch wastes work on the halo and pays the per-request cost many times."""

from __future__ import annotations

import math

import onnx

from npusim.compiler_svc.advise.registry import check
from npusim.compiler_svc.advise.context import Context
from npusim.compiler_svc.advise.recommendation import Recommendation, Skip, gain

LOCAL_OPS = frozenset({"Conv", "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
                       "Add", "Sub", "Mul", "Div", "BatchNormalization", "Identity"})
SIZES = (64, 128, 256, 512)
LARGE = 256 * 256  # pixels: below this a whole image is one small job already
WORTH = 0.05


def halo(model: onnx.ModelProto) -> int | None:
    """Pixels of context an output pixel needs on each side (the sum over every Conv: an upper
    bound when branches run in parallel); None if some operator is not local."""
    total = 0
    for n in model.graph.node:
        if n.op_type not in LOCAL_OPS:
            return None
        if n.op_type == "Conv":
            a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
            if any(s != 1 for s in a.get("strides", [1, 1])):
                return None
            k = list(a.get("kernel_shape", [1, 1]))
            dil = list(a.get("dilations", [1] * len(k)))
            total += max(d * (kk - 1) // 2 for d, kk in zip(dil, k))
    return total


@check("patch_size")
def patching(ctx: Context) -> Recommendation | Skip:
    imgs = [vi for vi in ctx.inputs if ctx.image_input(vi) == "NCHW"]
    if len(ctx.inputs) != 1 or not imgs:
        return Skip("patch_size", "patching needs one NCHW image input")
    _, _, h, w = ctx.dims(imgs[0])
    if h * w < LARGE:
        return Skip("patch_size", f"the input is {h}×{w}: small enough to run whole")
    r = halo(ctx.model)
    if r is None:
        return Skip("patch_size", "not fully convolutional (a stride, a pooling, a reshape or a dense layer): "
                                  "patches would not stitch back to the whole image's result")
    whole = ctx.base
    before = ctx.predict(whole)
    pes = ctx.pes_for(whole.target)
    workers = max(ctx.cfg.workers, 2 * len(pes))
    sweep = []
    for s in (s for s in SIZES if s < min(h, w) and s > 2 * r):
        core = s - 2 * r
        n = math.ceil(h / core) * math.ceil(w / core)
        pipe = ctx.pipeline(whole.but(patch=s))
        span = ctx.makespan_ns(pipe, pes, workers, n, min(n, 64))
        offline = ctx.simulate(pipe, pes, workers, max(64, 2 * workers))
        sweep.append({"patch": s, "patches": n, "halo": r, "latency_us": span / 1e3,
                      "throughput_per_s": offline["samples_per_s"] / n, "bound_by": offline["bound_by"]})
    if not sweep:
        return Skip("patch_size", f"the halo ({r} px) leaves no patch size below the image worth trying")
    key = (lambda p: -p["latency_us"]) if ctx.cfg.target == "latency" else (lambda p: p["throughput_per_s"])
    best = max(sweep, key=key)
    after = {**best, "offline_p50_us": None, "cpu_us": None, "npu_us": None}
    details = {"sweep": sweep, "whole": before}
    if gain(before, after, ctx.cfg.target) < WORTH:
        return Skip("patch_size", f"no patch size beats the whole {h}×{w} image by {WORTH:.0%}", details)
    s, core = best["patch"], best["patch"] - 2 * r
    return Recommendation(
        knob="patch_size", change=f"run {s}×{s} patches ({best['patches']} per image, halo {r} px), "
                                  f"{workers} workers on {len(pes)} PE{'s' if len(pes) > 1 else ''}",
        code=f"# export the model at {s}×{s}; cut the image into patches of {s} with a {r}-pixel overlap,\n"
             f"# submit them all (create_async, worker_num={workers}), stitch the {core}×{core} interiors back",
        cli=f"npusim plan PATCH_MODEL.onnx -w {workers} --concurrency 64",
        why="each patch's activations stay in SRAM and patches of one image run on every PE at once",
        before=before, after=after, details=details, measured=ctx.measured(whole, whole.but(patch=s)),
        accuracy={"note": f"the interiors equal whole-image inference when the overlap is ≥ the halo ({r} px): "
                          "tests/scenarios/test_patched_inference.py"})
