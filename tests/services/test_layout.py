"""Layout kernels at the CPU/NPU boundary: lower/unlower, pad/slice."""

from __future__ import annotations

import numpy as np
import pytest

from npusim.services import layout
from npusim.services.layout import LANE, lower, lowered_shape, pad_last, padded, slice_last, unlower

pytestmark = pytest.mark.timeout(30)

# (axes, logical shape): widths that are multiples of 32 and widths that are not
CASES = [
    ("NCHW", (1, 3, 4, 32)),
    ("NCHW", (2, 3, 5, 64)),
    ("NCHW", (1, 3, 4, 7)),
    ("NCHW", (2, 1, 3, 33)),
    ("NHWC", (1, 4, 32, 3)),
    ("NHWC", (2, 5, 7, 16)),
    ("NHWC", (1, 2, 1, 1)),
    ("NC", (1, 10)),
    ("NC", (3, 64)),
    ("NCW", (1, 3, 32)),
    ("NCW", (2, 4, 45)),
    ("NCW", (1, 1, 1)),
]
IDS = [f"{a}-{'x'.join(map(str, s))}" for a, s in CASES]


def _logical(axes: str, shape: tuple[int, ...], dtype: str = "int8") -> np.ndarray:
    rng = np.random.default_rng(len(axes) * 1000 + sum(shape))
    return rng.integers(-100, 100, size=shape).astype(dtype)


def _nchw_dims(axes: str, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    size = dict(zip(axes, shape))
    return size.get("N", 1), size.get("C", 1), size.get("H", 1), size.get("W", 1)


@pytest.mark.parametrize("axes,shape", CASES, ids=IDS)
def test_lowered_shape(axes: str, shape: tuple[int, ...]) -> None:
    n, c, h, w = _nchw_dims(axes, shape)
    got = lowered_shape(shape, axes)
    assert got == (n, h, c, padded(w))
    assert got[3] % LANE == 0 and got[3] >= w and got[3] - w < LANE


@pytest.mark.parametrize("dtype", ["int8", "uint8", "float32"])
@pytest.mark.parametrize("axes,shape", CASES, ids=IDS)
def test_lower_unlower_round_trip(axes: str, shape: tuple[int, ...], dtype: str) -> None:
    x = _logical(axes, shape, dtype)
    y = lower(x, axes, pad_value=7)
    assert y.shape == lowered_shape(shape, axes)
    assert y.dtype == x.dtype
    back = unlower(y, axes, shape)
    assert back.shape == shape and back.dtype == x.dtype
    assert back.flags.c_contiguous
    np.testing.assert_array_equal(back, x)


@pytest.mark.parametrize("axes,shape", CASES, ids=IDS)
def test_lower_puts_each_element_where_the_layout_says(axes: str, shape: tuple[int, ...]) -> None:
    """Element (n, c, h, w) of the logical tensor lands at [n, h, c, w] of the lowered one."""
    x = _logical(axes, shape, "int32")
    y = lower(x, axes)
    for idx in np.ndindex(*shape):
        pos = dict(zip(axes, idx))
        n, c, h, w = pos.get("N", 0), pos.get("C", 0), pos.get("H", 0), pos.get("W", 0)
        assert y[n, h, c, w] == x[idx]


@pytest.mark.parametrize("pad_value", [0, -128, 5])
@pytest.mark.parametrize("axes,shape", CASES, ids=IDS)
def test_padding_holds_the_pad_value(axes: str, shape: tuple[int, ...], pad_value: int) -> None:
    x = _logical(axes, shape, "int8")
    y = lower(x, axes, pad_value=pad_value)
    w = _nchw_dims(axes, shape)[3]
    assert np.all(y[..., w:] == pad_value)
    if w % LANE == 0:
        assert y.shape[3] == w  # no padding at all


def test_lower_does_not_alias_its_input() -> None:
    x = _logical("NCHW", (1, 2, 3, 32))
    y = lower(x, "NCHW")
    y[...] = 0
    assert x.any()


@pytest.mark.parametrize("shape", [(1, 3, 4, 5)])
@pytest.mark.parametrize("bad", [(1, 3, 4, 32), (1, 3, 4, 5), (1, 3, 4, 64), (2, 4, 3, 32), (4, 3, 32)],
                         ids=["h-c-not-swapped", "unpadded", "overpadded", "wrong-n", "3d"])
def test_unlower_rejects_wrong_shape(shape: tuple[int, ...], bad: tuple[int, ...]) -> None:
    assert lowered_shape(shape, "NCHW") == (1, 4, 3, 32)
    with pytest.raises(ValueError, match="lowered tensor has shape"):
        unlower(np.zeros(bad, np.int8), "NCHW", shape)
    unlower(np.zeros((1, 4, 3, 32), np.int8), "NCHW", shape)  # the right shape is accepted


@pytest.mark.parametrize("axes,shape", [("NCH?", (1, 2, 3, 4)), ("NCC", (1, 2, 3)), ("NCHWX", (1, 1, 1, 1, 1)),
                                        ("NCHW", (1, 2, 3)), ("NXW", (1, 2, 3))],
                         ids=["unknown-axis", "repeated", "foreign-letter-5d", "length-mismatch", "foreign-letter"])
def test_bad_axes_are_value_errors(axes: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="cannot lower"):
        lowered_shape(shape, axes)
    with pytest.raises(ValueError):
        lower(np.zeros(shape, np.int8), axes)


def test_default_axes_and_width_is_last() -> None:
    assert [layout.default_axes(n) for n in range(1, 6)] == ["C", "NC", "NCW", "NCHW", "?????"]
    assert layout.width_is_last("NCHW") and layout.width_is_last("NCW")
    assert not layout.width_is_last("NHWC") and not layout.width_is_last("NC")


def test_padded() -> None:
    assert [padded(n) for n in (0, 1, 31, 32, 33, 64, 65)] == [0, 32, 32, 32, 64, 64, 96]
    assert padded(5, 4) == 8 and padded(8, 4) == 8


@pytest.mark.parametrize("shape", [(7,), (2, 3, 31), (1, 32), (4, 33), (2, 2, 64), (1, 1)])
@pytest.mark.parametrize("multiple", [LANE, 4])
def test_pad_last_slice_last_round_trip(shape: tuple[int, ...], multiple: int) -> None:
    x = np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape) - 50
    p = pad_last(x, multiple, value=-9)
    w = shape[-1]
    assert p.shape == shape[:-1] + (padded(w, multiple),)
    assert np.all(p[..., w:] == -9)
    np.testing.assert_array_equal(slice_last(p, w), x)
    if w % multiple == 0:
        assert p is x  # nothing to pad: no copy
    else:
        assert not np.shares_memory(p, x)


def test_pad_last_float_value() -> None:
    p = pad_last(np.ones((2, 3), np.float32), 4, value=0.5)
    np.testing.assert_array_equal(p, [[1, 1, 1, 0.5], [1, 1, 1, 0.5]])
