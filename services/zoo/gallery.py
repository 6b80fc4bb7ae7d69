"""One moderate model that exercises every operator family the compiler has to place."""

from __future__ import annotations

import numpy as np
import onnx

from .builder import GraphBuilder

__all__ = ["ops_gallery"]


def ops_gallery(*, seed: int = 0, height: int = 60, width: int = 100, opset: int = 13) -> onnx.ModelProto:
    """Conv + BatchNormalization, depthwise Conv, Clip (ReLU6), HardSigmoid, HardSwish, Resize,
    Concat, ConvTranspose, GlobalAveragePool, a Gemm head and a MatMul head.

    Input "input" [1, 3, height, width] (default 60×100: the width is not a multiple of 32, so the
    compiler's Pad/Slice paths run; ``ops_gallery_w32`` in MODELS is the 64×128 variant). Outputs:
    "seg" [1, 4, height, width] (dense, through ConvTranspose), "logits" [1, 10] (Gemm) and
    "embed" [1, 16] (MatMul + Add). Height and width must be multiples of 4. At opset 13 HardSwish
    is x·HardSigmoid(x) (torch's export); ``opset=14`` emits HardSwish nodes. The weights do not
    depend on the input size (calibrated at 64×96), so both variants compute the same function.
    """
    if height % 4 or width % 4:
        raise ValueError(f"ops_gallery needs height and width that are multiples of 4, not {height}×{width}")
    if opset not in (13, 14):
        raise ValueError("ops_gallery is built at opset 13 or 14")
    g = GraphBuilder(seed)
    hswish = "hardswish"
    x1 = g.conv_bn("input", 3, 16, 3)                                       # Conv + BN + Relu
    x2 = g.conv_bn(x1, 16, 16, 3, stride=2, group=16, act="relu6")          # depthwise, Clip(0, 6)
    x3 = g.conv_bn(x2, 16, 32, 1, act=hswish)
    # squeeze-and-excitation gate: GAP → 1×1 → ReLU → 1×1 → HardSigmoid → Mul
    s = g.node("GlobalAveragePool", [x3])
    s = g.conv(s, 32, 8, 1)
    s = g.conv(s, 8, 32, 1, relu=False)
    x4 = g.node("Mul", [x3, g.node("HardSigmoid", [s], alpha=1.0 / 6, beta=0.5)])
    x5 = g.conv_bn(x4, 32, 32, 3, stride=2)                                 # /4
    up = g.node("Resize", [x5, "", g.const([1.0, 1.0, 2.0, 2.0])], mode="nearest",
                coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    x6 = g.conv_bn(g.node("Concat", [x4, up], axis=1), 64, 32, 3, act=hswish)
    name = g._name("deconv")
    wt = g.init(name + "_w", g._normal((32, 8, 2, 2), np.sqrt(2.0 / 32)))
    bt = g.init(name + "_b", np.full(8, 0.1, np.float32))
    y = g.node("Relu", [g.node("ConvTranspose", [x6, wt, bt], kernel_shape=[2, 2], strides=[2, 2])])
    y = g.conv(y, 8, 4, 1, relu=False)
    g.node("Clip", [y, g.const(-3.0), g.const(3.0)], out="seg")
    pooled = g.node("Flatten", [g.node("GlobalAveragePool", [x6])], axis=1)
    g.head(pooled, 32, 10, kind="gemm", out="logits")
    g.head(pooled, 32, 16, kind="matmul", out="embed")
    model = g.finish("ops_gallery", {"input": [1, 3, height, width]}, ["seg", "logits", "embed"],
                     calib_shape={"input": [1, 3, 64, 96]}, n_calib=8,
                     doc="Operator gallery, deterministic calibrated random weights")
    return _to_opset14(model) if opset == 14 else model


def _to_opset14(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace each x·HardSigmoid(x; 1/6, 0.5) by HardSwish(x), bump the opset to 14."""
    from onnx import helper, shape_inference  # local: only this variant needs them

    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    drop: set[str] = set()
    nodes = []
    for n in g.node:
        hs = [producer.get(i) for i in n.input] if n.op_type == "Mul" else []
        hs = [p for p in hs if p is not None and p.op_type == "HardSigmoid"]
        if hs and hs[0].input[0] in n.input and uses[hs[0].output[0]] == 1:
            drop.add(hs[0].name)
            nodes.append(helper.make_node("HardSwish", [hs[0].input[0]], list(n.output), name=n.name))
        else:
            nodes.append(n)
    nodes = [n for n in nodes if n.name not in drop]
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    model.opset_import[0].version = 14
    model = shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    return model
