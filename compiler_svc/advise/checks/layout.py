"""Layout: the NPU reads NCHW with a width that is a multiple of 32. An NHWC input costs a host
Lower (a transpose) that ``permute_input`` removes when the model starts by transposing it; a
width off the multiple costs Pad/Slice (or a padded Lower/Unlower) on every request, which only a
model exported at another width avoids."""

from __future__ import annotations

from npusim.compiler_svc.advise.registry import check
from npusim.compiler_svc.advise.context import Context
from npusim.compiler_svc.advise.recommendation import Recommendation, Skip

LAYOUT_OPS = ("Lower", "Unlower", "Pad", "Slice")
WIDTH_MULTIPLE = 32


@check("layout")
def layout(ctx: Context) -> Recommendation | Skip:
    base = ctx.base
    ops = ctx.host_ops_us(base)
    found = {k: ops[k] for k in LAYOUT_OPS if k in ops}
    if not found:
        return Skip("layout", "no host layout operator (Lower, Unlower, Pad, Slice): the inputs and outputs are "
                              "already in the NPU's layout")
    kinds = [ctx.image_input(vi) for vi in ctx.inputs]
    if "NHWC" in kinds:
        perms = tuple((0, 3, 1, 2) if k == "NHWC" else tuple(range(len(ctx.dims(vi))))
                      for k, vi in zip(kinds, ctx.inputs))
        after = base.but(permute=perms)
        m = ctx.measured(base, after)
        if m["host_us_after"] < m["host_us_before"]:
            text = ", ".join(f"[{', '.join(map(str, p))}]" for p in perms)
            return Recommendation(
                knob="permute_input", change=f"permute_input=[{text}]: feed the NHWC input as NCHW",
                code=f'compiler_config = {{"permute_input": [{text}]}}\n'
                     "session = create_runner(model, compiler_config=compiler_config)  # input: N×C×H×W\n"
                     "# the caller passes the image channels-first, as the model's own first Transpose made it",
                cli=f"npusim compile MODEL.onnx --compiler-config config.yaml  # permute_input: [{text}]",
                why="the model's first transpose and the program's cancel: no host Lower of the input",
                before=ctx.predict(base), after=ctx.predict(after), measured=m,
                accuracy={"before": ctx.accuracy(base), "after": ctx.accuracy(base),
                          "note": "the same arithmetic in another order: unchanged"})
    widths = {vi.name: ctx.dims(vi)[3] for vi, k in zip(ctx.inputs, kinds)
              if k == "NCHW" and ctx.dims(vi)[3] % WIDTH_MULTIPLE}
    if not widths:
        return Skip("layout", f"host layout operators {', '.join(found)} remain, but no input change removes them",
                    {"host_ops_us": found})
    names = ", ".join(f"{n!r} (width {w} → {-(-w // WIDTH_MULTIPLE) * WIDTH_MULTIPLE})" for n, w in widths.items())
    before_ops = ops
    after_ops = {k: v for k, v in ops.items() if k not in LAYOUT_OPS}
    return Recommendation(
        knob="input_width", change=f"export the model with input width a multiple of {WIDTH_MULTIPLE}: {names}",
        code="# resize or pad the image to the new width before inference and export the model at that width:\n"
             "torch.onnx.export(model, torch.zeros(1, 3, H, W32), 'model.onnx')",
        why=f"the NPU's rows are {WIDTH_MULTIPLE} pixels wide: other widths are padded and sliced on the host",
        before=ctx.predict(base), after=ctx.predict(base, drop_ops=LAYOUT_OPS),
        measured={"host_ops_us": {"before": before_ops, "after": after_ops},
                  "host_us_before": round(sum(before_ops.values()), 2),
                  "host_us_after": round(sum(after_ops.values()), 2), "host": ctx.profile.name,
                  "note": "after: a what-if, the layout operators' measured time taken out"},
        accuracy={"note": "depends on how the image is brought to the new width (not measured)"})
