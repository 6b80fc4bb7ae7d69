"""One-node onnxruntime sessions: the fused kernels behind the large-tensor paths of the host operators.

Why onnxruntime: numpy spends one pass over the tensor per ufunc, so ``Quantize`` (divide, round,
shift, clip, cast) reads and writes 4.9 MB five times; onnxruntime's QuantizeLinear and
DequantizeLinear are single fused passes, and they *are* the semantics the quantised model is
defined by, so they are exact by construction. Its Transpose moves bytes in SIMD blocks where
numpy's strided copy moves one byte at a time (see ``_transpose``).

Each session is single-threaded (a worker runs one job at a time on one core), built on first
use by a large tensor and cached per process and constant set: the first in a process costs about
0.2 s with the onnx/onnxruntime imports, later ones about 10 ms, a run about 10 µs of overhead.
``session.run`` hands its output to numpy without a copy (the array owns onnxruntime's buffer), so
the caller gets a new array each call, as every operator returns.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["dequantize_linear", "quantize_linear", "swap_axes_chain"]

_OPSET = 13


def _session(nodes: list[Any], inputs: list[Any], outputs: list[Any], initializers: list[Any]) -> Any:
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph(nodes, "npusim_cpu_op", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # one node: nothing to fuse
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _qdq(op: str, x_type: int, y_type: int, scale: float, zero_point: int) -> Any:
    from onnx import helper, numpy_helper

    return _session(
        [helper.make_node(op, ["x", "scale", "zero_point"], ["y"])],
        [helper.make_tensor_value_info("x", x_type, None)],
        [helper.make_tensor_value_info("y", y_type, None)],
        [numpy_helper.from_array(np.array(scale, np.float32), "scale"),
         numpy_helper.from_array(np.array(zero_point, np.int8), "zero_point")])


@lru_cache(maxsize=64)
def quantize_linear(scale: float, zero_point: int) -> Any:
    """float32 → int8 ``QuantizeLinear`` with these constants (``scale`` already a float32 value)."""
    from onnx import TensorProto

    return _qdq("QuantizeLinear", TensorProto.FLOAT, TensorProto.INT8, scale, zero_point)


@lru_cache(maxsize=64)
def dequantize_linear(scale: float, zero_point: int) -> Any:
    """int8 → float32 ``DequantizeLinear`` with these constants."""
    from onnx import TensorProto

    return _qdq("DequantizeLinear", TensorProto.INT8, TensorProto.FLOAT, scale, zero_point)


@lru_cache(maxsize=1)
def swap_axes_chain() -> Any:
    """uint8 ``x`` (3-d) → swap its last two axes → reshape to ``shape`` → swap them again → ``y``.

    The shape is an input, so one session serves every tensor shape; ``_transpose`` picks it.
    (``x`` comes in already shaped: a leading Reshape of a graph input costs a copy.)
    """
    from onnx import TensorProto, helper

    return _session(
        [helper.make_node("Transpose", ["x"], ["a"], perm=[0, 2, 1]),
         helper.make_node("Reshape", ["a", "shape"], ["b"]),
         helper.make_node("Transpose", ["b"], ["y"], perm=[0, 2, 1])],
        [helper.make_tensor_value_info("x", TensorProto.UINT8, None),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
        [])
