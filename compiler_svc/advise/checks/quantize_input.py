"""with_quantize=False: feed an image input as uint8, so the host's float Quantize becomes a
shift (the seed's first technique: the Quantize of a large float image is the costliest host
operator of a detector)."""

from __future__ import annotations

from npusim.compiler_svc.advise.registry import check
from npusim.compiler_svc.advise.context import Context
from npusim.compiler_svc.advise.recommendation import Recommendation, Skip


@check("with_quantize")
def quantize_input(ctx: Context) -> Recommendation | Skip:
    images = [vi.name for vi in ctx.inputs if ctx.image_input(vi)]
    if not images:
        return Skip("with_quantize", "no float input shaped like an image: its Quantize stays")
    before, after = ctx.base, ctx.base.but(with_quantize=False)
    names = ", ".join(repr(n) for n in images)
    return Recommendation(
        knob="with_quantize", change=f"with_quantize=False: input {names} as uint8 (u8 = i8 + 128)",
        code="graph = quantize(model, ranges, with_quantize=False)\n"
             "# feed uint8 images: the calibrated range spread over 0..255 (raw pixels for a [0, 255] model)",
        cli="npusim compile MODEL.onnx --no-with-quantize",
        why="the host's float Quantize of the input becomes a shift by 128 (QuantizeUint8)",
        before=ctx.predict(before), after=ctx.predict(after), measured=ctx.measured(before, after),
        accuracy={"before": ctx.accuracy(before), "after": ctx.accuracy(after),
                  "note": "the uint8 input is the same int8 value shifted: identical when the caller quantizes "
                          "with the calibrated range"})
