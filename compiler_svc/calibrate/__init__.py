"""Calibration: run the float model on sample inputs and pick a range for every tensor.

``Calibrator(model, CalibrationMethod.X).collect_data(samples)`` streams the samples
through onnxruntime with every intermediate tensor exposed as an output, and feeds each
tensor to one *observer* of the chosen method; only the observers' summaries stay in
memory, never the activations of all samples. Methods are a registry (``_list.py``), one
module per family, each ``_ASYM``/``_SYM`` pair being one observer class with a ``symmetric`` flag:

* ``minmax.py``      MIN_MAX     running min/max;
* ``percentile.py``  PERCENTILE  histogram quantiles (``percentage``);
* ``entropy.py``     ENTROPY     TensorRT's KL-divergence threshold search (joint for ASYM);
* ``mse.py``         MSE         least expected squared int8 error (rounding + clipping);
* ``sqnr.py``        SQNR        best SQNR with clipping noise weighted 3× (AIMET's γ).

The histogram methods share ``histogram.py`` (a fixed-size, exactly re-binned streaming
histogram); MSE and SQNR share the noise model in ``noise.py``; ``base.py`` holds the rules every
range obeys (contains zero, finite, never degenerate). ``samples.py`` makes random samples of
each input's dtype, for compiling without real data.
"""

from npusim.compiler_svc.calibrate.calibrator import CalibrationMethod, Calibrator
from npusim.compiler_svc.calibrate.samples import random_samples

__all__ = ["CalibrationMethod", "Calibrator", "random_samples"]
