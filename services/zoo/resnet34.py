"""ResNet-34, the torchvision topology: basic blocks, the backbone of MLPerf's SSD-ResNet-34."""

from __future__ import annotations

import onnx

from .builder import GraphBuilder
from .resnet import STAGES

__all__ = ["resnet34"]


def _basic(g: GraphBuilder, x: str, cin: int, cout: int, stride: int) -> str:
    """3×3 (stride here) → 3×3, each with BN; shortcut projected (1×1 + BN) when shapes change."""
    y = g.conv_bn(x, cin, cout, 3, stride=stride)
    # The last BN of a residual branch starts smaller, as in resnet50: the sum stays near unit variance.
    y = g.conv_bn(y, cout, cout, 3, act=None, gamma=0.5)
    shortcut = g.conv_bn(x, cin, cout, 1, stride=stride, act=None) if stride != 1 or cin != cout else x
    return g.node("Relu", [g.node("Add", [y, shortcut])])


def resnet34(*, batch: int = 1, height: int = 224, width: int = 224, classes: int = 1000, seed: int = 0,
             fold_bn: bool = False) -> onnx.ModelProto:
    """ResNet-34: ≈3.6 GMAC and ≈21.8 M parameters at 224×224, input "input", output "logits".

    Stages of 3, 4, 6 and 3 basic blocks (64, 128, 256, 512 channels) after the 7×7 stem and
    MaxPool; otherwise as :func:`npusim.services.zoo.resnet50`: BatchNorms kept unless ``fold_bn``, and
    statistics and classifier calibrated on 224×224 images whatever ``height``/``width`` is, so
    the weights depend only on ``seed`` (it can be built at 1200×1200, say, with the same weights).
    """
    g = GraphBuilder(seed)
    x = g.conv_bn("input", 3, 64, 7, stride=2)
    x = g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for w, blocks, stride in STAGES:
        for i in range(blocks):
            x = _basic(g, x, cin, w, stride if i == 0 else 1)
            cin = w
    x = g.node("GlobalAveragePool", [x])
    x = g.node("Flatten", [x], axis=1)
    g.head(x, cin, classes, out="logits")
    return g.finish("resnet34", {"input": [batch, 3, height, width]}, ["logits"],
                    calib_shape={"input": [1, 3, 224, 224]}, n_calib=8, fold_bn=fold_bn,
                    doc="ResNet-34 (torchvision topology), deterministic calibrated random weights")
