"""YOLOv8 (Ultralytics): C2f blocks with a channel Split, SPPF, a PAN neck and a decoupled anchor-free head."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper

from .builder import GraphBuilder
from .yolov5 import STRIDES, _cat, _channels, _conv, _repeats, _sppf
from .yolox import _up

__all__ = ["yolov8_like", "STRIDES", "REG_MAX"]

REG_MAX = 16  # DFL bins per box side: the box branch predicts 4×16 logits


def _split(g: GraphBuilder, x: str, halves: int) -> tuple[str, str]:
    """Split into two equal halves along channels, as torch exports ``chunk(2, 1)`` at opset 13."""
    name = g._name("split")
    outs = [name + "_0", name + "_1"]
    g.nodes.append(helper.make_node("Split", [x, g.const([halves, halves], np.int64)], outs, name=name, axis=1))
    return outs[0], outs[1]


def _c2f(g: GraphBuilder, x: str, cin: int, cout: int, n: int, shortcut: bool = True) -> str:
    """C2f: 1×1, Split in halves, ``n`` bottlenecks (3×3, 3×3) each on the last piece, Concat of all, 1×1."""
    h = cout // 2
    ys = list(_split(g, _conv(g, x, cin, 2 * h), h))
    for _ in range(n):
        y = _conv(g, _conv(g, ys[-1], h, h, 3), h, h, 3)
        ys.append(g.node("Add", [ys[-1], y]) if shortcut else y)
    return _conv(g, _cat(g, ys), (2 + n) * h, cout)


def _pred(g: GraphBuilder, x: str, cin: int, cout: int, bias: float) -> str:
    name = g._name("conv")
    w = g.init(name + "_w", g._normal((cout, cin, 1, 1), np.sqrt(2.0 / cin)))
    b = g.init(name + "_b", np.full(cout, bias, np.float32))
    return g.node("Conv", [x, w, b], kernel_shape=[1, 1])


def _detect(g: GraphBuilder, x: str, cin: int, c_box: int, c_cls: int, stride: int, classes: int, out: str) -> str:
    """One scale of the decoupled head: box (4×16 DFL logits) and class branches, Concat along channels.

    The biases are Ultralytics' (``bias_init``): 1.0 for the box logits, and class logits for
    about 5 objects per 640×640 image, so the class scores start low as in a trained model.
    """
    box = _conv(g, _conv(g, x, cin, c_box, 3), c_box, c_box, 3)
    box = _pred(g, box, c_box, 4 * REG_MAX, 1.0)
    cls = _conv(g, _conv(g, x, cin, c_cls, 3), c_cls, c_cls, 3)
    cls = _pred(g, cls, c_cls, classes, math.log(5 / classes / (640 / stride) ** 2))
    return g.node("Concat", [box, cls], axis=1, out=out)


def yolov8_like(*, seed: int = 0, height: int = 640, width: int = 640, depth: float = 0.33,
                width_mult: float = 0.50, max_channels: int = 1024, classes: int = 80) -> onnx.ModelProto:
    """YOLOv8s by default (≈14 GMAC, ≈11.1 M parameters at 640×640); input "input" [1,3,H,W].

    Outputs "out_s8", "out_s16", "out_s32": [1, 64+classes, H/s, W/s] in NCHW, the box (4×16
    DFL bins) and class logits of each scale; DFL softmax, sigmoid and box decoding are host
    post-processing. ``depth``/``width_mult``/``max_channels`` as in Ultralytics' yaml: n
    0.33/0.25/1024, s 0.33/0.50/1024, m 0.67/0.75/768, l 1.0/1.0/512, x 1.0/1.25/512. Strided
    3×3 convs, C2f blocks (an ONNX Split, channel Concat), SPPF, a PAN neck with nearest ×2
    Resize and Concats (no lateral convs); SiLU as x·Sigmoid(x) and BatchNorms folded, as
    Ultralytics exports. Inputs are pixels in [0, 1]. ``height`` and ``width`` must be
    multiples of 32. Calibrated on 640×640 images whatever the input size, like
    :func:`npusim.services.zoo.yolov5_like`.
    """
    if height % 32 or width % 32:
        raise ValueError(f"yolov8_like needs height and width that are multiples of 32, not {height}×{width}")
    g = GraphBuilder(seed)
    c64, c128, c256, c512, c1024 = (_channels(c, width_mult, max_channels) for c in (64, 128, 256, 512, 1024))
    n3, n6 = _repeats(3, depth), _repeats(6, depth)
    x = _conv(g, "input", 3, c64, 3, 2)                                              # /2
    x = _c2f(g, _conv(g, x, c64, c128, 3, 2), c128, c128, n3)                        # /4
    p3 = _c2f(g, _conv(g, x, c128, c256, 3, 2), c256, c256, n6)                      # /8
    p4 = _c2f(g, _conv(g, p3, c256, c512, 3, 2), c512, c512, n6)                     # /16
    x = _c2f(g, _conv(g, p4, c512, c1024, 3, 2), c1024, c1024, n3)                   # /32
    p5 = _sppf(g, x, c1024, c1024)
    h4 = _c2f(g, _cat(g, [_up(g, p5), p4]), c1024 + c512, c512, n3, shortcut=False)
    o3 = _c2f(g, _cat(g, [_up(g, h4), p3]), c512 + c256, c256, n3, shortcut=False)
    o4 = _c2f(g, _cat(g, [_conv(g, o3, c256, c256, 3, 2), h4]), c256 + c512, c512, n3, shortcut=False)
    o5 = _c2f(g, _cat(g, [_conv(g, o4, c512, c512, 3, 2), p5]), c512 + c1024, c1024, n3, shortcut=False)
    c_box, c_cls = max(16, c256 // 4, 4 * REG_MAX), max(c256, min(classes, 100))  # Ultralytics' c2, c3
    outs = [_detect(g, f, c, c_box, c_cls, s, classes, f"out_s{s}")
            for f, c, s in zip((o3, o4, o5), (c256, c512, c1024), STRIDES)]
    return g.finish("yolov8_like", {"input": [1, 3, height, width]}, outs, calib_shape={"input": [1, 3, 640, 640]},
                    n_calib=4, preprocess="unit", fold_bn=True,
                    doc="YOLOv8 (Ultralytics topology), deterministic calibrated random weights")
