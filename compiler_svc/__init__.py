"""The compiler: ONNX → optimise → calibrate → int8 quantise → partition → cost.

The library API follows the SDK's quantiser and compiler::

    from npusim.compiler_svc import optimize_model, Calibrator, CalibrationMethod, quantize, compile
    model = optimize_model(onnx.load("model.onnx"))
    cal = Calibrator(model, CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data([[x] for x in samples])
    graph = quantize(model, cal.compute_range(), with_quantize=False)
    program = compile(graph, target_npu="warboy", batch_size=8)   # bytes(program) is the .enf

It also runs as a ZeroMQ service (``npusim compiler``) with a content-addressed cache.
"""

from npusim.compiler_svc.calibrate import CalibrationMethod, Calibrator
from npusim.compiler_svc.editor import ModelEditor, TensorType, get_output_names, get_pure_input_names
from npusim.compiler_svc.passes import optimize_model
from npusim.compiler_svc.pipeline import compile
from npusim.compiler_svc.quantize import quantize

__all__ = [
    "CalibrationMethod",
    "Calibrator",
    "ModelEditor",
    "TensorType",
    "compile",
    "get_output_names",
    "get_pure_input_names",
    "optimize_model",
    "quantize",
]
