"""An MNIST classifier the size of the ONNX model zoo's mnist-8: the small-tensor batching model."""

from __future__ import annotations

import onnx

from .builder import GraphBuilder

__all__ = ["mnist"]


def mnist(*, seed: int = 0, batch: int = 1) -> onnx.ModelProto:
    """[batch,1,28,28] → Conv 5×5 ×8 + ReLU + MaxPool 2 → Conv 5×5 ×16 + ReLU + MaxPool 3 → 256 → 10.

    The flatten is a Reshape to [-1, 256] and the classifier a MatMul + Add, as in mnist-8
    (≈0.79 MMAC and ≈6.0 k parameters per image). Convolutions carry biases (BatchNorm calibrated
    on stroke images, then folded), so the activations look trained.
    """
    g = GraphBuilder(seed)
    x = g.conv_bn("input", 1, 8, 5)
    x = g.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = g.conv_bn(x, 8, 16, 5)
    x = g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[3, 3])
    x = g.node("Reshape", [x, g.const([-1, 256], dtype="int64")])
    g.head(x, 256, 10, kind="matmul", out="logits")
    return g.finish("mnist", {"input": [batch, 1, 28, 28]}, ["logits"], n_calib=32, preprocess="mnist",
                    fold_bn=True, doc="MNIST classifier (mnist-8 shape), deterministic calibrated random weights")
