"""YOLOv5 (v6.0 and later, Ultralytics): C3 blocks, SPPF, a PAN neck and one 1×1 Detect conv per scale."""

from __future__ import annotations

import math

import numpy as np
import onnx

from .builder import GraphBuilder
from .yolox import _up

__all__ = ["yolov5_like", "STRIDES", "ANCHORS"]

STRIDES = (8, 16, 32)
ANCHORS = 3  # anchors per position and scale


def _channels(c: int, width_mult: float, max_channels: int | None = None) -> int:
    """Ultralytics' width scaling: capped, multiplied, rounded up to a multiple of 8."""
    return int(math.ceil(min(c, max_channels or c) * width_mult / 8) * 8)


def _repeats(n: int, depth: float) -> int:
    """Ultralytics' depth scaling of a block's repeats."""
    return max(round(n * depth), 1) if n > 1 else n


def _conv(g: GraphBuilder, x: str, cin: int, cout: int, k: int = 1, stride: int = 1, pad: int | None = None) -> str:
    """Ultralytics' Conv: Conv + BN + SiLU (exported as x·Sigmoid(x))."""
    return g.conv_bn(x, cin, cout, k, stride=stride, act="silu", pad=pad)


def _cat(g: GraphBuilder, xs: list[str]) -> str:
    return g.node("Concat", xs, axis=1)


def _c3(g: GraphBuilder, x: str, cin: int, cout: int, n: int, shortcut: bool = True) -> str:
    """C3: two 1×1 branches, ``n`` bottlenecks (1×1, 3×3, residual in the backbone) on one, Concat, 1×1."""
    h = cout // 2
    a = _conv(g, x, cin, h)
    b = _conv(g, x, cin, h)
    for _ in range(n):
        y = _conv(g, _conv(g, a, h, h), h, h, 3)
        a = g.node("Add", [a, y]) if shortcut else y
    return _conv(g, _cat(g, [a, b]), 2 * h, cout)


def _sppf(g: GraphBuilder, x: str, cin: int, cout: int) -> str:
    """SPPF: 1×1 to half, three chained MaxPool 5×5 (stride 1, pad 2), Concat of the four, 1×1."""
    h = cin // 2
    ys = [_conv(g, x, cin, h)]
    for _ in range(3):
        ys.append(g.node("MaxPool", [ys[-1]], kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2]))
    return _conv(g, _cat(g, ys), 4 * h, cout)


def _detect(g: GraphBuilder, x: str, cin: int, stride: int, classes: int, out: str) -> str:
    """One scale of Detect: a 1×1 conv to anchors×(4 box, 1 objectness, classes) logits.

    The biases are Ultralytics' priors (``_initialize_biases``): about 8 objects per 640×640
    image, class scores ≈ 0.6/classes, so the sigmoid scores start low as in a trained model.
    """
    no = 5 + classes
    bias = np.zeros((ANCHORS, no))
    bias[:, 4] = math.log(8 / (640 / stride) ** 2)
    bias[:, 5:] = math.log(0.6 / (classes - 0.99))
    name = g._name("conv")
    w = g.init(name + "_w", g._normal((ANCHORS * no, cin, 1, 1), np.sqrt(2.0 / cin)))
    b = g.init(name + "_b", bias.reshape(-1).astype(np.float32))
    return g.node("Conv", [x, w, b], kernel_shape=[1, 1], out=out)


def yolov5_like(*, seed: int = 0, height: int = 640, width: int = 640, depth: float = 0.33,
                width_mult: float = 0.50, classes: int = 80) -> onnx.ModelProto:
    """YOLOv5s by default (≈8.2 GMAC, ≈7.2 M parameters at 640×640); input "input" [1,3,H,W].

    Outputs "out_s8", "out_s16", "out_s32": [1, 3×(5+classes), H/s, W/s] in NCHW, the raw
    logits of the three Detect convs (the 5-D reshape, sigmoid and box decoding are host
    post-processing). ``depth``/``width_mult`` as in Ultralytics' yaml files: n 0.33/0.25,
    s 0.33/0.50, m 0.67/0.75, l 1.0/1.0. Stem 6×6 stride-2 conv, strided 3×3 downsamples, C3
    blocks, SPPF, a PAN neck with nearest ×2 Resize and channel Concats; SiLU as x·Sigmoid(x)
    and BatchNorms folded, as Ultralytics exports. Inputs are pixels in [0, 1]. ``height`` and
    ``width`` must be multiples of 32. Calibrated on 640×640 images whatever the input size (as
    an Ultralytics model trained at 640 is run at other sizes), so the weights depend only on
    ``seed`` and the size parameters.
    """
    if height % 32 or width % 32:
        raise ValueError(f"yolov5_like needs height and width that are multiples of 32, not {height}×{width}")
    g = GraphBuilder(seed)
    c64, c128, c256, c512, c1024 = (_channels(c, width_mult) for c in (64, 128, 256, 512, 1024))
    n3, n6, n9 = (_repeats(n, depth) for n in (3, 6, 9))
    x = _conv(g, "input", 3, c64, 6, 2, pad=2)                                       # /2
    x = _c3(g, _conv(g, x, c64, c128, 3, 2), c128, c128, n3)                         # /4
    p3 = _c3(g, _conv(g, x, c128, c256, 3, 2), c256, c256, n6)                       # /8
    p4 = _c3(g, _conv(g, p3, c256, c512, 3, 2), c512, c512, n9)                      # /16
    x = _c3(g, _conv(g, p4, c512, c1024, 3, 2), c1024, c1024, n3)                    # /32
    x = _sppf(g, x, c1024, c1024)
    # PAN: top-down through 1×1 laterals and Resize, bottom-up through strided convs
    h5 = _conv(g, x, c1024, c512)
    x = _c3(g, _cat(g, [_up(g, h5), p4]), 2 * c512, c512, n3, shortcut=False)
    h4 = _conv(g, x, c512, c256)
    o3 = _c3(g, _cat(g, [_up(g, h4), p3]), 2 * c256, c256, n3, shortcut=False)
    o4 = _c3(g, _cat(g, [_conv(g, o3, c256, c256, 3, 2), h4]), 2 * c256, c512, n3, shortcut=False)
    o5 = _c3(g, _cat(g, [_conv(g, o4, c512, c512, 3, 2), h5]), 2 * c512, c1024, n3, shortcut=False)
    outs = [_detect(g, f, c, s, classes, f"out_s{s}") for f, c, s in zip((o3, o4, o5), (c256, c512, c1024), STRIDES)]
    return g.finish("yolov5_like", {"input": [1, 3, height, width]}, outs, calib_shape={"input": [1, 3, 640, 640]},
                    n_calib=4, preprocess="unit", fold_bn=True,
                    doc="YOLOv5 (v6+, Ultralytics topology), deterministic calibrated random weights")
