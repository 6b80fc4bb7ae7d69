"""A YOLOX-shaped detector: YOLOX-L's 640×640 input on a slim backbone, neck and decoupled heads."""

from __future__ import annotations

import numpy as np
import onnx

from .builder import GraphBuilder

__all__ = ["yolox_like", "STRIDES"]

STRIDES = (8, 16, 32)
CLASSES = 80


def _csp(g: GraphBuilder, x: str, cin: int, cout: int, n: int = 1) -> str:
    """CSP block: two 1×1 branches, bottlenecks on one, channel Concat, 1×1 fuse."""
    h = cout // 2
    a = g.conv_bn(x, cin, h, 1, act="silu")
    b = g.conv_bn(x, cin, h, 1, act="silu")
    for _ in range(n):
        y = g.conv_bn(a, h, h, 1, act="silu")
        y = g.conv_bn(y, h, h, 3, act="silu")
        a = g.node("Add", [a, y])
    return g.conv_bn(g.node("Concat", [a, b], axis=1), 2 * h, cout, 1, act="silu")


def _up(g: GraphBuilder, x: str) -> str:
    """Nearest ×2, as torch exports nn.Upsample(scale_factor=2) at opset 13."""
    return g.node("Resize", [x, "", g.const([1.0, 1.0, 2.0, 2.0])], mode="nearest",
                  coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def _head(g: GraphBuilder, x: str, cin: int, width: int, out: str) -> str:
    """YOLOX's decoupled head: reg (4) and obj (1) on one branch, cls (80) on the other."""
    stem = g.conv_bn(x, cin, width, 1, act="silu")
    cls = g.conv_bn(stem, width, width, 3, act="silu")
    reg = g.conv_bn(stem, width, width, 3, act="silu")
    prior = -np.log((1 - 0.01) / 0.01)  # YOLOX's bias prior: scores start near 1%

    def pred(y: str, c: int, bias: float) -> str:
        name = g._name("conv")
        w = g.init(name + "_w", g._normal((c, width, 1, 1), np.sqrt(2.0 / width)))
        b = g.init(name + "_b", np.full(c, bias, np.float32))
        return g.node("Conv", [y, w, b], kernel_shape=[1, 1])

    box = pred(reg, 4, 0.0)
    obj = g.node("Sigmoid", [pred(reg, 1, prior / 2)])
    cls = g.node("Sigmoid", [pred(cls, CLASSES, prior / 2)])
    return g.node("Concat", [box, obj, cls], axis=1, out=out)


def yolox_like(*, seed: int = 0, height: int = 640, width: int = 640, nhwc: bool = False,
               fold_bn: bool = True) -> onnx.ModelProto:
    """Input "input" [1,3,640,640] (or [1,640,640,3] + Transpose with ``nhwc``); ≈2 GMAC.

    Outputs "out_s8", "out_s16", "out_s32": [1, 85, H/s, W/s] in NCHW (4 box, 1 objectness and
    80 class scores, the last two through Sigmoid). Strided 3×3 convolutions, CSP blocks with a
    channel Concat, SiLU as x·Sigmoid(x), a PAFPN neck with nearest ×2 Resize upsampling. As
    YOLOX exports, BatchNorms are folded into the convolutions (``fold_bn=False`` keeps them).
    ``height`` and ``width`` must be multiples of 32. The NHWC model has exactly the NCHW
    model's weights.
    """
    if height % 32 or width % 32:
        raise ValueError(f"yolox_like needs height and width that are multiples of 32, not {height}×{width}")
    g = GraphBuilder(seed)
    x = g.conv_bn("input", 3, 16, 3, stride=2, act="silu")                 # /2
    x = _csp(g, g.conv_bn(x, 16, 32, 3, stride=2, act="silu"), 32, 32)     # /4
    c3 = _csp(g, g.conv_bn(x, 32, 64, 3, stride=2, act="silu"), 64, 64)    # /8
    c4 = _csp(g, g.conv_bn(c3, 64, 128, 3, stride=2, act="silu"), 128, 128)  # /16
    c5 = _csp(g, g.conv_bn(c4, 128, 256, 3, stride=2, act="silu"), 256, 256)  # /32
    # PAFPN: top-down with Resize, bottom-up with strided convs, channel Concats
    p5 = g.conv_bn(c5, 256, 128, 1, act="silu")
    p4 = _csp(g, g.node("Concat", [_up(g, p5), c4], axis=1), 256, 128)
    p4r = g.conv_bn(p4, 128, 64, 1, act="silu")
    n3 = _csp(g, g.node("Concat", [_up(g, p4r), c3], axis=1), 128, 64)
    n4 = _csp(g, g.node("Concat", [g.conv_bn(n3, 64, 64, 3, stride=2, act="silu"), p4r], axis=1), 128, 128)
    n5 = _csp(g, g.node("Concat", [g.conv_bn(n4, 128, 128, 3, stride=2, act="silu"), p5], axis=1), 256, 256)
    outs = [_head(g, f, c, 64, f"out_s{s}") for f, c, s in ((n3, 64, 8), (n4, 128, 16), (n5, 256, 32))]
    return g.finish("yolox_like", {"input": [1, 3, height, width]}, outs,
                    calib_shape={"input": [1, 3, 640, 640]}, n_calib=4, fold_bn=fold_bn, nhwc=nhwc,
                    doc="YOLOX-shaped detector, deterministic calibrated random weights")
