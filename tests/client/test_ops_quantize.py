"""Quantize, QuantizeUint8 and Dequantize: bit-exact on every kernel (the compiled one; without
it, numpy), equal to onnxruntime's QuantizeLinear/DequantizeLinear, and each call's output a new
array the caller owns. Every test runs with the compiled kernels (AVX2 and portable C) and
without them. Correctness only: speed is the benchmark's."""

from __future__ import annotations

import numpy as np
import pytest

from npusim.client.ops import load_op
from npusim.client.ops.quantize import _quantize
from tests.qdq_reference import qdq_reference

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("kernels")]


SMALL = (1, 2, 8, 32)        # a few vectors of the compiled kernels, with a tail
LARGE = (1, 3, 64, 96)       # an image's worth


def _hard_values(shape: tuple[int, ...], scale: np.float32, seed: int) -> np.ndarray:
    """Rounding ties (k + 0.5)·scale and their float32 neighbours, ordinary and saturating values,
    signed zeros, infinities and NaN."""
    rng = np.random.default_rng(seed)
    k = rng.integers(-150, 150, shape)
    with np.errstate(over="ignore"):  # extreme scales: values beyond float32 become ±inf
        x = ((k + 0.5) * scale).astype(np.float32)
        flat = x.reshape(-1)
        flat[1::5] = np.nextafter(flat[1::5], np.float32(np.inf))
        flat[2::5] = np.nextafter(flat[2::5], np.float32(-np.inf))
        flat[3::5] = (rng.standard_normal(flat[3::5].shape) * 100 * scale).astype(np.float32)
    flat[:8] = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30, 1e-40]
    return x


@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["small", "large"])
@pytest.mark.parametrize("scale", [0.018658448, 0.027315523475408554, 1 / 3, 0.0078125, 7.3])
@pytest.mark.parametrize("zero_point", [0, -14, 15, -128, 127])
def test_quantize_equals_quantize_linear(shape: tuple[int, ...], scale: float, zero_point: int) -> None:
    s = float(np.float32(scale))
    op = load_op("Quantize", {"scale": s, "zero_point": zero_point})
    for seed in range(2):
        x = _hard_values(shape, np.float32(s), seed)
        got, ref = op.run(x), qdq_reference("QuantizeLinear", x, s, zero_point)
        assert got.dtype == np.int8 and got.shape == x.shape
        assert np.array_equal(got, ref), f"{np.count_nonzero(got != ref)} of {x.size} values differ"


def test_quantize_nan_is_minus_128_on_both_kernels() -> None:
    """onnxruntime clamps a NaN to the bottom of the range; the numpy kernel does the same
    (before, the float→int8 cast of a NaN gave an unspecified value and a warning)."""
    op = load_op("Quantize", {"scale": 0.1, "zero_point": 7})
    for shape in (SMALL, LARGE):
        assert (op.run(np.full(shape, np.nan, np.float32)) == -128).all()


def test_quantize_kernels_agree_chunk_by_chunk() -> None:
    s, zp = float(np.float32(0.018658448)), -14
    op = load_op("Quantize", {"scale": s, "zero_point": zp})
    x = _hard_values(LARGE, np.float32(s), 7)
    whole = op.run(x)
    pieces = np.concatenate([op.run(c) for c in np.array_split(x.reshape(-1), 64)])
    assert np.array_equal(whole.reshape(-1), pieces)


def test_quantize_non_contiguous_input() -> None:
    op = load_op("Quantize", {"scale": 0.05, "zero_point": 3})
    x = _hard_values((1, 96, 64, 3), np.float32(0.05), 1).transpose(0, 3, 1, 2)
    assert not x.flags.c_contiguous
    assert np.array_equal(op.run(x), op.run(np.ascontiguousarray(x)))


def test_quantize_without_an_int8_node_keeps_the_numpy_formula() -> None:
    """A zero point outside int8, or float64 input, has no QuantizeLinear twin: the numpy kernel
    runs at every size, with the formula it always had."""
    x = (np.random.default_rng(3).standard_normal(LARGE) * 4).astype(np.float32)
    got = load_op("Quantize", {"scale": 0.02, "zero_point": 200}).run(x)
    assert np.array_equal(got, np.clip(np.rint(x / np.float32(0.02)) + np.float32(200), -128, 127).astype(np.int8))
    x64 = x.astype(np.float64)
    got64 = load_op("Quantize", {"scale": 0.02, "zero_point": 3}).run(x64)
    y = (x64 / np.float32(0.02)).astype(np.float32)  # float64 division, stored in float32
    assert np.array_equal(got64, np.clip(np.rint(y) + np.float32(3), -128, 127).astype(np.int8))


@pytest.mark.parametrize("name", ["Quantize", "Dequantize", "QuantizeUint8"])
@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["small", "large"])
def test_outputs_are_new_arrays_and_the_input_is_untouched(name: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    x = {"Quantize": rng.standard_normal(shape).astype(np.float32),
         "Dequantize": rng.integers(-128, 128, shape).astype(np.int8),
         "QuantizeUint8": rng.integers(0, 256, shape).astype(np.uint8)}[name]
    before = x.copy()
    op = load_op(name, {} if name == "QuantizeUint8" else {"scale": 0.05, "zero_point": -3})
    a, b = op.run(x), op.run(x)
    assert np.array_equal(x, before)
    assert not np.shares_memory(a, x) and not np.shares_memory(a, b)
    keep = a.copy()
    a[...] = 0  # the caller owns it: writable, and writing it changes nothing else
    assert np.array_equal(b, keep) and np.array_equal(op.run(x), keep)


@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["small", "large"])
def test_dequantize_every_int8_value_equals_dequantize_linear(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(5)
    q = np.resize(np.arange(-128, 128, dtype=np.int8), shape)
    for _ in range(40):
        s = float(np.float32(np.exp(rng.uniform(-12, 3))))
        zp = int(rng.integers(-128, 128))
        got = load_op("Dequantize", {"scale": s, "zero_point": zp}).run(q)
        ref = qdq_reference("DequantizeLinear", q, s, zp)
        assert got.dtype == np.float32 and got.shape == q.shape
        assert np.array_equal(got.view(np.int32), ref.view(np.int32)), (s, zp)  # bit for bit


def test_dequantize_without_an_int8_node_keeps_the_numpy_formula() -> None:
    q = np.resize(np.arange(-128, 128, dtype=np.int8), LARGE)
    got = load_op("Dequantize", {"scale": 0.1, "zero_point": 300}).run(q)
    assert np.array_equal(got, (q.astype(np.float32) - np.float32(300)) * np.float32(0.1))


@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["small", "large"])
def test_quantize_uint8_is_a_shift_by_128(shape: tuple[int, ...]) -> None:
    u = np.resize(np.arange(256, dtype=np.uint8), shape)
    got = load_op("QuantizeUint8", {}).run(u)
    assert got.dtype == np.int8 and np.array_equal(got.astype(np.int16), u.astype(np.int16) - 128)


def test_the_compiled_kernels_are_built() -> None:
    """The install compiles them (setup.py); without a compiler the slower kernels would serve
    silently, so CI insists."""
    import importlib
    assert importlib.import_module("npusim.client.ops._simd").features() is not None


@pytest.mark.parametrize("scale", [1e-40, 1e-38, 2.0**-101, 2.0**-100, 3e-5, 2.0**100, 2.0**101, 1e30, 3e38])
def test_quantize_extreme_scales_equal_the_numpy_kernel(scale: float) -> None:
    s = float(np.float32(scale))
    x = _hard_values((3, 1400), np.float32(s), 11)
    x.reshape(-1)[8:40] = np.linspace(-3e38, 3e38, 32, dtype=np.float32)
    with np.errstate(all="ignore"):
        ref = _quantize(x, s, 5)
    assert np.array_equal(load_op("Quantize", {"scale": s, "zero_point": 5}).run(x), ref)


@pytest.mark.parametrize("scale", [0.018658448, 1 / 3, 2.0**-100, 2.0**100])
def test_quantize_random_bit_patterns_equal_the_numpy_kernel(scale: float) -> None:
    """Every kind of float32 (NaN payloads, subnormals, infinities, huge values), a million of them."""
    s = float(np.float32(scale))
    x = np.random.default_rng(5).integers(0, 2**32, 1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32)
    with np.errstate(all="ignore"):
        ref = _quantize(x, s, -7)
    assert np.array_equal(load_op("Quantize", {"scale": s, "zero_point": -7}).run(x), ref)


def test_tensors_take_the_compiled_kernels(kernels: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """So the equalities above cover the compiled kernels; without them, numpy serves."""
    from npusim.client.ops import dequantize, quantize
    used: list[str] = []
    monkeypatch.setattr(quantize, "_quantize", lambda *a: used.append("np-q") or np.zeros(a[0].shape, np.int8))
    monkeypatch.setattr(dequantize, "_dequantize", lambda *a: used.append("np-dq") or np.zeros(a[0].shape, np.float32))
    q = load_op("Quantize", {"scale": 0.1, "zero_point": 0})
    dq = load_op("Dequantize", {"scale": 0.1, "zero_point": 0})
    for shape in (SMALL, LARGE):
        q.run(np.zeros(shape, np.float32))
        dq.run(np.zeros(shape, np.int8))
    # strided views too: they are copied once and go through the kernel
    q.run(np.zeros((1, 96, 64, 3), np.float32).transpose(0, 3, 1, 2))
    dq.run(np.zeros((1, 96, 64, 3), np.int8).transpose(0, 3, 1, 2))
    assert used == ([] if kernels != "fallback" else ["np-q", "np-dq"] * 3)
