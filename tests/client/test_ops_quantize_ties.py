"""The host Quantize operator (client/ops/quantize.py) on rounding ties: it equals onnxruntime's
QuantizeLinear bit for bit, on values on and next to a tie, on ordinary and saturating values,
and leaves its input alone.

It once multiplied by ``1/scale``; QuantizeLinear divides by ``scale`` and rounds half to even,
so a value on (or next to) a rounding tie could land on the other integer and the program's
output differed from the quantised model's. These tests run on the kernels as the process
picks them (``test_ops_quantize.py`` runs its cases on every kernel set).
"""

from __future__ import annotations

import numpy as np
import pytest

from npusim.client.ops import load_op
from tests.qdq_reference import qdq_reference

pytestmark = pytest.mark.timeout(60)

SHAPE = (1, 4, 8, 32)


def _ties(scale: np.float32, seed: int) -> np.ndarray:
    """(k + 0.5) * scale in float32, and its float32 neighbours: values on and next to a tie."""
    k = np.random.default_rng(seed).integers(-140, 140, SHAPE)
    x = ((k + 0.5) * scale).astype(np.float32)
    x[..., 1::3] = np.nextafter(x[..., 1::3], np.float32(np.inf))
    x[..., 2::3] = np.nextafter(x[..., 2::3], np.float32(-np.inf))
    return x


@pytest.mark.parametrize("scale", [0.027315523475408554, 0.018658448, 0.1, 1 / 3, 0.0078125, 7.3])
@pytest.mark.parametrize("zero_point", [0, 15, -14, -128, 127])
def test_quantize_equals_onnxruntime_quantize_linear_on_rounding_ties(scale: float, zero_point: int) -> None:
    s = np.float32(scale)
    op = load_op("Quantize", {"scale": float(s), "zero_point": zero_point})  # as a program stores them
    for seed in range(3):
        x = _ties(s, seed)
        got = op.run(x)
        ref = qdq_reference("QuantizeLinear", x, float(s), zero_point)
        assert got.dtype == ref.dtype == np.int8
        assert np.array_equal(got, ref), f"{np.count_nonzero(got != ref)} of {x.size} values differ"


def test_quantize_equals_onnxruntime_on_ordinary_and_saturating_values() -> None:
    s, zp = np.float32(0.018658448), -14
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(SHAPE) * 3).astype(np.float32)
    x.flat[:4] = [1e9, -1e9, 0.0, -0.0]
    got = load_op("Quantize", {"scale": float(s), "zero_point": zp}).run(x)
    assert np.array_equal(got, qdq_reference("QuantizeLinear", x, float(s), zp))


def test_quantize_leaves_its_input_alone() -> None:
    x = _ties(np.float32(0.1), 0)
    before = x.copy()
    load_op("Quantize", {"scale": 0.1, "zero_point": 3}).run(x)
    assert np.array_equal(x, before)
