"""onnxruntime's own QuantizeLinear / DequantizeLinear, the reference the host operators must equal."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def qdq_reference(op: str, x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """onnxruntime's own QuantizeLinear / DequantizeLinear, built independently of client.ops."""
    types = {"QuantizeLinear": (TensorProto.FLOAT, TensorProto.INT8),
             "DequantizeLinear": (TensorProto.INT8, TensorProto.FLOAT)}[op]
    g = helper.make_graph(
        [helper.make_node(op, ["x", "s", "z"], ["y"])], "ref",
        [helper.make_tensor_value_info("x", types[0], list(x.shape))],
        [helper.make_tensor_value_info("y", types[1], list(x.shape))],
        [numpy_helper.from_array(np.array(scale, np.float32), "s"),
         numpy_helper.from_array(np.array(zero_point, np.int8), "z")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
