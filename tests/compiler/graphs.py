"""Small ONNX graphs and runners shared by the compiler tests: a 4-channel Conv model builder,
its weights and inputs, onnxruntime runs, and a quick MinMax quantisation."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from npusim.compiler_svc import CalibrationMethod, Calibrator
from npusim.compiler_svc import quantize as _quantize

FLOAT = TensorProto.FLOAT
SHAPE = [1, 4, 8, 32]


def model(nodes: list[onnx.NodeProto], inputs: list[tuple[str, list[int | str] | None, int]],
           outputs: list[tuple[str, list[int | str] | None, int]], inits: list[onnx.TensorProto] = (),
           opset: int = 13) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, s, t in inputs],
                          [helper.make_tensor_value_info(n, t, s) for n, s, t in outputs], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def weight(name: str, seed: int = 0) -> onnx.TensorProto:
    return numpy_helper.from_array((np.random.default_rng(seed).standard_normal((4, 4, 3, 3)) * 0.5)
                                   .astype(np.float32), name)


def conv(x: str, w: str, y: str) -> onnx.NodeProto:
    return helper.make_node("Conv", [x, w], [y], pads=[1, 1, 1, 1])


def sample(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def run(model: onnx.ModelProto | bytes, feeds: dict[str, np.ndarray], *, exact: bool = False) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if exact:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"]).run(None, feeds)


def minmax_quantize(m: onnx.ModelProto, **kw: object) -> bytes:
    cal = Calibrator(m, CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data([[sample(s)] for s in range(2)], progress=False)
    return _quantize(m, cal.compute_range(), **kw)  # type: ignore[arg-type]
