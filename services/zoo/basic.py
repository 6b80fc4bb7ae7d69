"""The first built-in models: the demo's small CNN, and a bare Identity for pipeline overhead."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from .builder import IR_VERSION, OPSET, GraphBuilder

__all__ = ["small_cnn", "identity"]


def small_cnn(*, height: int = 64, width: int = 64, classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """Three conv blocks and a classifier: the demo's model (≈11 MMAC at 64×64)."""
    g = GraphBuilder(seed)
    x = g.conv("input", 3, 16)
    x = g.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = g.conv(x, 16, 32)
    x = g.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = g.conv(x, 32, 64)
    x = g.node("GlobalAveragePool", [x])
    x = g.node("Flatten", [x], axis=1)
    g.gemm(x, 64, classes, out="logits")
    return g.model("small_cnn", {"input": [1, 3, height, width]}, ["logits"])


def identity(shape: list[int], *, dtype: int = TensorProto.UINT8) -> onnx.ModelProto:
    """One Identity: a program with no NPU work, for measuring the pipeline itself."""
    node = helper.make_node("Identity", ["input"], ["output"], name="identity")
    graph = helper.make_graph([node], "identity", [helper.make_tensor_value_info("input", dtype, shape)],
                              [helper.make_tensor_value_info("output", dtype, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="npusim.zoo")
    model.ir_version = IR_VERSION
    return model
