"""Built-in models, built in code with onnx.helper and deterministic random weights.

No weights can be downloaded here, so every model npusim ships is made from a seed: He
initialisation keeps activations in a realistic range through depth, and small biases
keep ReLUs alive. Used by the demo, the tests and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["GraphBuilder", "small_cnn", "identity", "MODELS", "build"]

OPSET = 13


@dataclass
class GraphBuilder:
    """Accumulates nodes and initialisers; names are generated and unique."""

    seed: int = 0
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    _n: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def _name(self, kind: str) -> str:
        self._n += 1
        return f"{kind}_{self._n}"

    def init(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], *, out: str | None = None, **attrs: object) -> str:
        name = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out or name], name=name, **attrs))
        return out or name

    def conv(self, x: str, cin: int, cout: int, k: int = 3, *, stride: int = 1, group: int = 1,
             relu: bool = True) -> str:
        fan_in = cin // group * k * k
        w = (self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (self.rng.standard_normal(cout) * 0.05).astype(np.float32)
        name = self._name("conv")
        y = self.node("Conv", [x, self.init(name + "_w", w), self.init(name + "_b", b)],
                      kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride, stride], group=group)
        return self.node("Relu", [y]) if relu else y

    def gemm(self, x: str, cin: int, cout: int, *, out: str | None = None) -> str:
        w = (self.rng.standard_normal((cout, cin)) * np.sqrt(1.0 / cin)).astype(np.float32)
        b = (self.rng.standard_normal(cout) * 0.05).astype(np.float32)
        name = self._name("fc")
        return self.node("Gemm", [x, self.init(name + "_w", w), self.init(name + "_b", b)], transB=1, out=out)

    def model(self, name: str, inputs: dict[str, list[int]], outputs: list[str],
              *, dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info(k, dtype, v) for k, v in inputs.items()],
            [helper.make_tensor_value_info(k, dtype, None) for k in outputs],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="npusim.zoo")
        model.ir_version = 8
        model = onnx.shape_inference.infer_shapes(model)
        onnx.checker.check_model(model)
        return model


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
    model.ir_version = 8
    return model


MODELS: dict[str, Callable[..., onnx.ModelProto]] = {"small_cnn": small_cnn}


def build(name: str, **kwargs: object) -> onnx.ModelProto:
    try:
        return MODELS[name](**kwargs)
    except KeyError:
        raise ValueError(f"no built-in model {name!r}; known: {', '.join(MODELS)}") from None
