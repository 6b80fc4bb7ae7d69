"""ResNet-50 v1.5, the torchvision topology: the MLPerf model the timing model is calibrated on."""

from __future__ import annotations

import onnx

from .builder import GraphBuilder

__all__ = ["resnet50"]

STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, first stride)
EXPANSION = 4


def _bottleneck(g: GraphBuilder, x: str, cin: int, width: int, stride: int) -> str:
    """1×1 → 3×3 (stride here: v1.5) → 1×1 ×4, each with BN; shortcut projected when shapes change."""
    cout = width * EXPANSION
    y = g.conv_bn(x, cin, width, 1)
    y = g.conv_bn(y, width, width, 3, stride=stride)
    # The last BN of a residual branch starts smaller (torchvision's zero_init_residual, softened):
    # the sum then stays near unit variance through a stage, as in a trained network.
    y = g.conv_bn(y, width, cout, 1, act=None, gamma=0.5)
    shortcut = g.conv_bn(x, cin, cout, 1, stride=stride, act=None) if stride != 1 or cin != cout else x
    return g.node("Relu", [g.node("Add", [y, shortcut])])


def resnet50(*, batch: int = 1, height: int = 224, width: int = 224, classes: int = 1000, seed: int = 0,
             fold_bn: bool = False) -> onnx.ModelProto:
    """ResNet-50 v1.5: ≈4.1 GMAC and ≈25.6 M parameters at 224×224, input "input", output "logits".

    By default every Conv has no bias and feeds a real BatchNormalization (a torch export without
    constant folding), so the compiler has BatchNorms to fuse; ``fold_bn=True`` emits the fused
    Conv + bias instead (same function). BatchNorm statistics and the classifier are calibrated
    on 224×224 images whatever ``height``/``width`` is, so the weights depend only on ``seed``.
    """
    g = GraphBuilder(seed)
    x = g.conv_bn("input", 3, 64, 7, stride=2)
    x = g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for w, blocks, stride in STAGES:
        for i in range(blocks):
            x = _bottleneck(g, x, cin, w, stride if i == 0 else 1)
            cin = w * EXPANSION
    x = g.node("GlobalAveragePool", [x])
    x = g.node("Flatten", [x], axis=1)
    g.head(x, cin, classes, out="logits")
    return g.finish("resnet50", {"input": [batch, 3, height, width]}, ["logits"],
                    calib_shape={"input": [1, 3, 224, 224]}, n_calib=8, fold_bn=fold_bn,
                    doc="ResNet-50 v1.5 (torchvision topology), deterministic calibrated random weights")
