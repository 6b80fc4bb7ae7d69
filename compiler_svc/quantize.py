"""int8 quantisation: per-channel symmetric weights, per-tensor int8 activations, as QDQ.

onnxruntime's QDQ quantiser does the graph surgery from our calibrated ranges; the result
is an ordinary ONNX model in which every quantised tensor passes through a
QuantizeLinear/DequantizeLinear pair. onnxruntime fuses those pairs into int8 kernels
(QLinearConv, ...) when it executes the NPU part, so outputs are computed in int8.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import QuantType
from onnxruntime.quantization.calibrate import CalibrationMethod as OrtMethod
from onnxruntime.quantization.calibrate import TensorData, TensorsData
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

from compiler_svc.graph import toposort
from services.errors import CalibrationError, InvalidModel

__all__ = ["quantize", "is_quantized", "NPU_OPS"]

NPU_OPS = [
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid",
    "MaxPool", "AveragePool", "GlobalAveragePool", "Add", "Mul", "Concat", "Resize", "Flatten", "Reshape",
    "Transpose", "Squeeze", "Unsqueeze", "Pad", "Split", "Slice",
]
"""Operator types the emulated chip executes in int8 (hardware.md's rules refine this)."""


def is_quantized(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv") for n in model.graph.node)


def quantize(model: onnx.ModelProto | bytes, ranges: Mapping[str, Sequence[float]]) -> bytes:
    """Quantise ``model`` with ``ranges`` (``{tensor: (min, max)}`` from a Calibrator) to int8.

    Returns the serialised quantised graph, which ``session.create`` and the compiler accept.
    """
    if isinstance(model, (bytes, bytearray)):
        model = onnx.load_from_string(bytes(model))
    if is_quantized(model):
        raise InvalidModel("the model is already quantised")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    data = {}
    for name, rng in ranges.items():
        try:
            lo, hi = float(rng[0]), float(rng[1])
        except (TypeError, ValueError, IndexError):
            raise CalibrationError(f"range of {name!r} must be (min, max), got {rng!r}") from None
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
            raise CalibrationError(f"range of {name!r} is not a finite (min <= max) pair: {rng!r}")
        data[name] = TensorData(lowest=np.float32(lo), highest=np.float32(hi))
    inputs = [i.name for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}]
    missing = [n for n in inputs + [o.name for o in m.graph.output] if n not in data]
    if missing:
        raise CalibrationError(f"ranges lack the graph inputs/outputs {missing}; pass the ranges "
                               "Calibrator.compute_range() returned for this model")
    quantizer = QDQQuantizer(
        m, True, False, QuantType.QInt8, QuantType.QInt8, TensorsData(OrtMethod.MinMax, data),
        [], [], NPU_OPS, {"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    q = quantizer.quantize_model()
    toposort(q.graph)
    q.producer_name = "npusim.quantizer"
    return q.SerializeToString()
