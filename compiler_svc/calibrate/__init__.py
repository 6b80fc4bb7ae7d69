"""Calibration: run the float model on sample inputs and pick a range for every tensor.

``Calibrator(model, CalibrationMethod.X).collect_data(samples)`` streams the samples
through onnxruntime with every intermediate tensor exposed as an output, and feeds each
tensor to one *observer* of the chosen method; only the observers' summaries stay in
memory, never the activations of all samples. Methods are a registry (``_list.py``).
"""

from compiler_svc.calibrate.calibrator import CalibrationMethod, Calibrator

__all__ = ["CalibrationMethod", "Calibrator"]
