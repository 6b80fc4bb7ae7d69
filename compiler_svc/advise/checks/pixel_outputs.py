"""normalized_pixel_outputs: an output that is an image comes back as uint8 over [0, 1], so the
NPU requantises it and no Dequantize runs on the host."""

from __future__ import annotations

import onnx

from npusim.compiler_svc.advise.registry import check
from npusim.compiler_svc.advise.context import Context
from npusim.compiler_svc.advise.recommendation import Recommendation, Skip


@check("normalized_pixel_outputs")
def pixel_outputs(ctx: Context) -> Recommendation | Skip:
    images = []
    for i, vi in enumerate(ctx.model.graph.output):
        d = ctx.dims(vi)
        if (vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and len(d) == 4 and d[1] in (1, 3)
                and min(d[2], d[3]) >= 8):
            images.append(i)
    if not images:
        return Skip("normalized_pixel_outputs", "no output shaped like an image [N, 1|3, H, W]")
    before, after = ctx.base, ctx.base.but(pixel_outputs=tuple(images))
    return Recommendation(
        knob="normalized_pixel_outputs", change=f"normalized_pixel_outputs={images}: image outputs as uint8 over [0, 1]",
        code=f"graph = quantize(model, ranges, normalized_pixel_outputs={images})\n"
             "image = outputs[0].numpy()  # uint8, 0..255 for [0, 1]",
        cli="npusim compile MODEL.onnx " + " ".join(f"--normalized-pixel-outputs {i}" for i in images),
        why="the NPU writes uint8 pixels; the host's Dequantize of the output goes away",
        before=ctx.predict(before), after=ctx.predict(after), measured=ctx.measured(before, after),
        accuracy={"before": ctx.accuracy(before), "after": ctx.accuracy(after),
                  "note": "after: against the float output clipped to [0, 1], as an image shows it"})
