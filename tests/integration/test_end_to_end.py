"""The walking system: a model through the compiler service, a daemon and the workers."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from npusim.client import session
from npusim.services.errors import InvalidDtype, InvalidInput, SessionClosed
from npusim.services.zoo import small_cnn
from tests.helpers import RunningStack


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_int8_outputs_match_fp32(use_stack: RunningStack) -> None:
    model = small_cnn()
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    with session.create(model) as sess:
        assert sess.device == "npu0pe0-1"
        for _ in range(5):
            x = rng.standard_normal((1, 3, 64, 64)).astype(np.float32)
            (y,) = sess.run(x)
            (want,) = ref.run(None, {"input": x})
            assert y.shape == want.shape == (1, 10)
            assert y.dtype == np.float32
            assert cosine(y, want) >= 0.99
        assert sess.last_timing["emulated_ns"] > 0


def test_errors_name_the_problem(use_stack: RunningStack) -> None:
    with session.create(small_cnn()) as sess:
        x = np.zeros((1, 3, 64, 64), np.float32)
        with pytest.raises(InvalidDtype, match="float32"):
            sess.run(x.astype(np.float16))
        with pytest.raises(TypeError):
            sess.run(x.astype(np.float16))
        with pytest.raises(InvalidInput, match="shape"):
            sess.run(np.zeros((1, 3, 32, 32), np.float32))
        with pytest.raises(ValueError):
            sess.run([x, x])
        assert sess.run_with(["logits"], {"input": x})[0].shape == (1, 10)
        with pytest.raises(ValueError):
            sess.run_with(["nope"], {"input": x})
    with pytest.raises(SessionClosed):
        sess.run(x)
