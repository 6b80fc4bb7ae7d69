"""Random calibration samples (``compiler_svc.calibrate.random_samples``, the pipeline's
``calibration_data="random"``): each input gets samples of its own dtype and shape (uint8 in
the pixel range, integers small), reproducible from the seed, that the Calibrator and the
pipeline take; a dtype they cannot sample, or a dynamic shape, is a CalibrationError that says
what to do. Models are built here with ``onnx.helper``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from npusim.compiler_svc import CalibrationMethod, Calibrator, optimize_model
from npusim.compiler_svc.calibrate import random_samples
from npusim.compiler_svc.pipeline import CompileOptions, compile_model
from npusim.services.errors import CalibrationError
from tests.compiler.graphs import FLOAT, SHAPE
from tests.compiler.graphs import conv as _conv
from tests.compiler.graphs import model as _model
from tests.compiler.graphs import weight as _weight

pytestmark = pytest.mark.timeout(60)



def _dynamic_model() -> onnx.ModelProto:
    return _model([_conv("x", "w1", "y")], [("x", ["N", 4, "H", 32], FLOAT)], [("y", None, FLOAT)], [_weight("w1")])


# -- samples of each input's dtype ------------------------------------------------------------
DTYPES = [(TensorProto.FLOAT, np.float32), (TensorProto.FLOAT16, np.float16), (TensorProto.UINT8, np.uint8),
          (TensorProto.INT8, np.int8), (TensorProto.INT32, np.int32), (TensorProto.INT64, np.int64),
          (TensorProto.BOOL, np.bool_)]


def _typed_inputs_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Cast", [f"i{k}"], [f"f{k}"], to=FLOAT) for k in range(len(DTYPES))]
    nodes.append(helper.make_node("Sum", [f"f{k}" for k in range(len(DTYPES))], ["y"]))
    return _model(nodes, [(f"i{k}", [2, 3, 5], t) for k, (t, _) in enumerate(DTYPES)], [("y", None, FLOAT)])


def test_random_samples_have_each_inputs_dtype_and_run_the_calibrator() -> None:
    m = optimize_model(_typed_inputs_model())
    samples = random_samples(m, 3, seed=1)
    assert len(samples) == 3
    for sample in samples:
        assert [a.dtype for a in sample] == [np.dtype(d) for _, d in DTYPES]
        assert all(a.shape == (2, 3, 5) for a in sample)
    u8 = np.concatenate([s[2].ravel() for s in samples])
    i64 = np.concatenate([s[5].ravel() for s in samples])
    assert u8.min() >= 0 and u8.max() > 127  # the pixel range, not N(0, 1) cast to uint8
    assert i64.min() >= 0 and i64.max() < 8
    assert all(np.array_equal(a, b) for a, b in zip(samples[0], random_samples(m, 1, seed=1)[0]))
    cal = Calibrator(m, CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data(samples, progress=False)
    lo, hi = cal.compute_range()["y"]
    assert lo < 0 < hi


@pytest.mark.parametrize("elem", [TensorProto.STRING, TensorProto.COMPLEX64, TensorProto.BFLOAT16])
def test_random_samples_refuse_a_dtype_they_cannot_sample(elem: int) -> None:
    m = _model([helper.make_node("Identity", ["s"], ["y"])], [("s", [2], elem)], [("y", [2], elem)])
    with pytest.raises(CalibrationError, match=r"input 's' is .*pass real calibration data"):
        random_samples(m, 1)


def test_random_samples_refuse_a_dynamic_shape() -> None:
    with pytest.raises(CalibrationError, match=r"input 'x' has no static shape.*optimize_model"):
        random_samples(_dynamic_model(), 1)


def _integer_input_model(elem: int) -> onnx.ModelProto:
    return _model([helper.make_node("Cast", ["i"], ["f"], to=FLOAT), _conv("f", "w1", "y")], [("i", SHAPE, elem)],
                  [("y", None, FLOAT)], [_weight("w1")])


@pytest.mark.parametrize("elem", [TensorProto.UINT8, TensorProto.INT64])
def test_random_samples_let_the_pipeline_calibrate_integer_inputs(elem: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the pipeline's 'random' mode does once it takes its samples from here."""
    from npusim.compiler_svc import pipeline
    monkeypatch.setattr(pipeline, "random_samples", random_samples)
    program, _ = compile_model(_integer_input_model(elem).SerializeToString(),
                               CompileOptions(target_npu="warboy", calibration_samples=2))
    assert program.inputs[0].dtype == np.dtype(helper.tensor_dtype_to_np_dtype(elem)).name


def test_pipeline_random_calibration_of_a_uint8_input() -> None:
    compile_model(_integer_input_model(TensorProto.UINT8).SerializeToString(),
                  CompileOptions(target_npu="warboy", calibration_samples=2))
