"""MobileNet-V2, the torchvision topology: depthwise convolutions and ReLU6."""

from __future__ import annotations

import onnx

from .builder import GraphBuilder

__all__ = ["mobilenet_v2"]

# (expansion t, output channels c, repeats n, first stride s), as in the paper and torchvision
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1))


def _inverted_residual(g: GraphBuilder, x: str, cin: int, cout: int, stride: int, t: int) -> str:
    hidden = cin * t
    residual = stride == 1 and cin == cout
    y = g.conv_bn(x, cin, hidden, 1, act="relu6") if t != 1 else x
    y = g.conv_bn(y, hidden, hidden, 3, stride=stride, group=hidden, act="relu6")  # depthwise
    y = g.conv_bn(y, hidden, cout, 1, act=None, gamma=0.5 if residual else 1.0)     # linear bottleneck
    return g.node("Add", [x, y]) if residual else y


def mobilenet_v2(*, seed: int = 0, height: int = 224, width: int = 224, classes: int = 1000,
                 fold_bn: bool = False) -> onnx.ModelProto:
    """MobileNet-V2 (≈0.30 GMAC, ≈3.5 M parameters at 224×224): input "input", output "logits".

    Conv + BatchNormalization + ReLU6 (as Clip(0, 6)), inverted residuals with depthwise 3×3
    convolutions (group = channels), a 1×1 conv to 1280 channels, GlobalAveragePool and a Gemm
    head 1280 → ``classes``. Calibrated at 224×224 whatever the input size.
    """
    g = GraphBuilder(seed)
    x = g.conv_bn("input", 3, 32, 3, stride=2, act="relu6")
    cin = 32
    for t, c, n, s in SETTINGS:
        for i in range(n):
            x = _inverted_residual(g, x, cin, c, s if i == 0 else 1, t)
            cin = c
    x = g.conv_bn(x, cin, 1280, 1, act="relu6")
    x = g.node("GlobalAveragePool", [x])
    x = g.node("Flatten", [x], axis=1)
    g.head(x, 1280, classes, out="logits")
    return g.finish("mobilenet_v2", {"input": [1, 3, height, width]}, ["logits"],
                    calib_shape={"input": [1, 3, 224, 224]}, n_calib=8, fold_bn=fold_bn,
                    doc="MobileNet-V2 (torchvision topology), deterministic calibrated random weights")
