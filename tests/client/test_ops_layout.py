"""Lower, Unlower, Pad and Slice: the fast NHWC kernels (compiled shuffles for byte tensors; without them,
two wide onnxruntime transposes) give exactly ``npusim.services.layout``'s lowered tensor, Unlower
inverts Lower, every other layout still goes through ``npusim.services.layout``, Pad and Slice equal
``layout.pad_last``/``slice_last``, and outputs are new arrays. Every test runs with the compiled kernels (AVX2 and portable C) and without them. Correctness only."""

from __future__ import annotations

import numpy as np
import pytest

from npusim.client.ops import _transpose, load_op
from npusim.services import layout

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("kernels")]


# (shape, why): NHWC shapes crossing every branch of the kernels
NHWC = [
    ((1, 640, 640, 3), "the benchmark's image: onnxruntime chain, no padding"),
    ((2, 64, 256, 3), "batch of two"),
    ((1, 48, 200, 3), "W % 32 != 0: padded rows; W % 8 == 0: chain"),
    ((1, 40, 300, 3), "W % 8 != 0: numpy copy"),
    ((1, 64, 128, 4), "RGBA"),
    ((1, 64, 512, 2), "two channels"),
    ((1, 64, 256, 16), "widest chained C"),
    ((1, 16, 256, 20), "C beyond the chain: numpy"),
    ((1, 64, 640, 1), "one channel: a plain copy"),
    ((1, 64, 64, 3), "short rows: numpy"),
    ((2, 5, 7, 3), "tiny"),
    ((1, 8, 47, 3), "W % 16 != 0: the compiled kernel's byte tail"),
    ((3, 4, 16, 3), "one 16-pixel block a row"),
    ((1, 2, 5, 0), "no channels: an empty tensor"),
]


def _data(shape: tuple[int, ...], dtype: type, seed: int = 0) -> np.ndarray:
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    rng = np.random.default_rng(seed)
    if info is None:
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)


@pytest.mark.parametrize("shape", [s for s, _ in NHWC], ids=[why for _, why in NHWC])
@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.float32])
def test_lower_and_unlower_nhwc_equal_services_layout(shape: tuple[int, ...], dtype: type) -> None:
    x = _data(shape, dtype)
    lower = load_op("Lower", {"axes": "NHWC", "value": -14 if dtype != np.uint8 else 3})
    lowered = lower.run(x)
    expected = layout.lower(x, "NHWC", -14 if dtype != np.uint8 else 3)
    assert lowered.dtype == expected.dtype and np.array_equal(lowered, expected)
    unlower = load_op("Unlower", {"axes": "NHWC", "shape": list(shape)})
    back = unlower.run(lowered)
    assert back.dtype == x.dtype and back.flags.c_contiguous and np.array_equal(back, x)
    assert np.array_equal(back, layout.unlower(lowered, "NHWC", shape))


def test_unlower_ignores_the_row_padding() -> None:
    shape = (1, 48, 200, 3)
    lowered = layout.lower(_data(shape, np.int8), "NHWC", 0)
    noisy = lowered.copy()
    noisy[..., 200:] = 99  # whatever the NPU left in the padding
    op = load_op("Unlower", {"axes": "NHWC", "shape": list(shape)})
    assert np.array_equal(op.run(noisy), op.run(lowered))


def test_lower_non_contiguous_input() -> None:
    nchw = _data((1, 3, 256, 256), np.int8)
    nhwc = nchw.transpose(0, 2, 3, 1)
    assert not nhwc.flags.c_contiguous
    got = load_op("Lower", {"axes": "NHWC"}).run(nhwc)
    assert np.array_equal(got, layout.lower(np.ascontiguousarray(nhwc), "NHWC"))


@pytest.mark.parametrize(("axes", "shape"), [("NC", (2, 1000)), ("NCHW", (1, 3, 8, 20)), ("NCW", (1, 4, 50))])
def test_other_layouts_go_through_services_layout(axes: str, shape: tuple[int, ...]) -> None:
    x = _data(shape, np.int8)
    lowered = load_op("Lower", {"axes": axes, "value": 5}).run(x)
    assert np.array_equal(lowered, layout.lower(x, axes, 5))
    assert np.array_equal(load_op("Unlower", {"axes": axes, "shape": list(shape)}).run(lowered), x)


def test_unlower_rejects_a_tensor_of_the_wrong_shape() -> None:
    op = load_op("Unlower", {"axes": "NHWC", "shape": [1, 64, 640, 3]})
    with pytest.raises(ValueError, match="lowered tensor has shape"):
        op._run(np.zeros((1, 64, 3, 608), np.int8))


@pytest.mark.parametrize("shape", [(1, 640, 640, 3), (1, 64, 640, 1), (1, 48, 200, 3)])
def test_outputs_are_new_arrays_and_the_input_is_untouched(shape: tuple[int, ...]) -> None:
    x = _data(shape, np.int8)
    before = x.copy()
    lower = load_op("Lower", {"axes": "NHWC"})
    a, b = lower.run(x), lower.run(x)
    assert np.array_equal(x, before) and not np.shares_memory(a, x) and not np.shares_memory(a, b)
    unlower = load_op("Unlower", {"axes": "NHWC", "shape": list(shape)})
    c, d = unlower.run(a), unlower.run(a)
    assert not np.shares_memory(c, a) and not np.shares_memory(c, d)
    a[...] = 0
    c[...] = 0  # both writable; writing them changes neither the input nor the other outputs
    assert np.array_equal(x, before) and np.array_equal(d, x) and np.array_equal(b, layout.lower(x, "NHWC"))


@pytest.mark.parametrize("n,r,c", [(640, 640, 3), (3, 4096, 5), (10, 128, 16), (7, 136, 2), (4, 100, 3), (1, 9, 1)])
def test_byte_transposes_are_numpy_transposes(n: int, r: int, c: int) -> None:
    x = _data((n, r, c), np.uint8, seed=n + r + c)
    planar = _transpose.to_planar(x)
    assert planar.flags.c_contiguous and np.array_equal(planar, x.transpose(0, 2, 1))
    back = _transpose.to_interleaved(planar)
    assert back.flags.c_contiguous and np.array_equal(back, x)
    assert not np.shares_memory(planar, x) and not np.shares_memory(back, planar)


@pytest.mark.parametrize("value", [-14, 3.0, 200, 0.5])
def test_lower_pads_with_the_value_the_dtype_holds(value: float) -> None:
    x = _data((1, 4, 40, 3), np.uint8)
    try:
        expected = layout.lower(x, "NHWC", value)
    except OverflowError:
        with pytest.raises(OverflowError):
            load_op("Lower", {"axes": "NHWC", "value": value}).run(x)
        return
    assert np.array_equal(load_op("Lower", {"axes": "NHWC", "value": value}).run(x), expected)


def test_the_image_sized_tensors_take_the_compiled_kernels(kernels: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """So the equalities above cover the compiled kernels; without them, numpy's copies serve."""
    calls: list[str] = []
    for name in ("to_planar", "to_interleaved"):
        real = getattr(_transpose, name)
        monkeypatch.setattr(_transpose, name, lambda x, *a, real=real, name=name: calls.append(name) or real(x, *a))
    from npusim.client.ops import lower, unlower
    monkeypatch.setattr(lower, "to_planar", _transpose.to_planar)
    monkeypatch.setattr(unlower, "to_interleaved", _transpose.to_interleaved)
    x = _data((1, 640, 640, 3), np.int8)
    lowered = load_op("Lower", {"axes": "NHWC"}).run(x)
    assert np.array_equal(load_op("Unlower", {"axes": "NHWC", "shape": [1, 640, 640, 3]}).run(lowered), x)
    assert calls == ([] if kernels != "fallback" else ["to_planar", "to_interleaved"])


@pytest.mark.parametrize("shape", [(1, 3, 640, 100), (2, 5, 7), (4,), (1, 3, 0, 100), (2, 3, 32), (1, 2, 3, 33)])
@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.float32, np.bool_])
@pytest.mark.parametrize(("multiple", "value"), [(32, 0), (32, 7), (16, 3)])
def test_pad_and_slice_equal_services_layout(shape: tuple[int, ...], dtype: type, multiple: int, value: int) -> None:
    x = np.random.default_rng(1).integers(0, 100, shape).astype(dtype)
    padded = load_op("Pad", {"multiple": multiple, "value": value}).run(x)
    expected = layout.pad_last(x, multiple, value)
    assert padded.dtype == expected.dtype and np.array_equal(padded, expected)
    back = load_op("Slice", {"length": shape[-1]}).run(padded)
    assert back.flags.c_contiguous and np.array_equal(back, x)
    assert np.array_equal(back, layout.slice_last(padded, shape[-1]))


def test_pad_non_contiguous_input_and_negative_byte() -> None:
    x = _data((1, 40, 3, 64), np.int8).transpose(0, 2, 3, 1)
    assert not x.flags.c_contiguous
    got = load_op("Pad", {"multiple": 32, "value": -14}).run(x)
    assert np.array_equal(got, layout.pad_last(np.ascontiguousarray(x), 32, -14))
