"""Constant folding, Conv+BatchNormalization fusion, Identity/Dropout removal — by onnxruntime.

onnxruntime's *basic* level rewrites only into standard ONNX operators, so the result is a
plain model again. With input shapes fixed first it also folds ``Shape`` chains (the
``Shape→Gather→Concat→Reshape`` that exporters emit) into constants.
"""

from __future__ import annotations

import os
import tempfile

import onnx
import onnxruntime as ort

from npusim.compiler_svc.passes._context import PassContext
from npusim.services.errors import InvalidModel


def ort_basic(m: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="npusim-opt-") as d:
        so.optimized_model_filepath = os.path.join(d, "optimized.onnx")
        try:
            ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
            raise InvalidModel(f"onnxruntime cannot load the model: {e}") from None
        out = onnx.load(so.optimized_model_filepath)
    foreign = {n.domain for n in out.graph.node if n.domain not in ("", "ai.onnx")}
    if foreign:
        raise InvalidModel(f"graph optimisation produced operators of domains {sorted(foreign)}; "
                           "this model needs an operator npusim cannot express")
    return out
