"""The SDK's ``furiosa.quantizer``: calibrate a model, then quantize it to int8."""

from npusim.compiler_svc import CalibrationMethod, Calibrator, ModelEditor, TensorType, quantize

__all__ = ["CalibrationMethod", "Calibrator", "ModelEditor", "TensorType", "quantize"]
