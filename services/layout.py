"""Tensor layouts at the CPU/NPU boundary, and the numpy kernels that convert between them.

The emulated NPU keeps an activation as rows of width ``W`` padded to a multiple of 32
(one slice's lane width), one row per ``(H, C)`` pair: the *lowered* layout ``N,H,C,Wp``.
Its DMA engine can lower on the fly only when the host tensor already has ``W`` as its
contiguous last axis and ``W % 32 == 0``; otherwise the host must ``Pad`` the width, or,
when the last axis is not the width at all (NHWC, ``[N, K]`` logits), do the whole
``Lower``/``Unlower`` transpose itself. These are the kernels of those CPU operators; the
daemon uses the same ones to turn a boundary tensor back into the logical tensor its
onnxruntime graph computes on.

``axes`` names the logical axes of a tensor in order, from ``N``, ``C``, ``H``, ``W``
(``NCHW``, ``NHWC``, ``NC``); ``?`` marks an axis of unknown meaning.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "LANE",
    "default_axes",
    "width_is_last",
    "padded",
    "lowered_shape",
    "lower",
    "unlower",
    "pad_last",
    "slice_last",
]

LANE = 32


def default_axes(ndim: int) -> str:
    return {1: "C", 2: "NC", 3: "NCW", 4: "NCHW"}.get(ndim, "?" * ndim)


def width_is_last(axes: str) -> bool:
    return axes.endswith("W")


def padded(n: int, multiple: int = LANE) -> int:
    return -(-n // multiple) * multiple


def _dims(shape: tuple[int, ...], axes: str) -> tuple[int, int, int, int]:
    if len(axes) != len(shape) or "?" in axes or len(set(axes)) != len(axes) or set(axes) - set("NCHW"):
        raise ValueError(f"cannot lower a tensor of shape {shape} with axes {axes!r}")
    size = dict(zip(axes, shape))
    return size.get("N", 1), size.get("C", 1), size.get("H", 1), size.get("W", 1)


def lowered_shape(shape: tuple[int, ...], axes: str) -> tuple[int, int, int, int]:
    n, c, h, w = _dims(tuple(shape), axes)
    return n, h, c, padded(w)


def _as_nchw(x: np.ndarray, axes: str) -> np.ndarray:
    """A view of ``x`` with axes N, C, H, W (missing axes of size 1)."""
    present = list(axes)
    for letter in "NCHW":
        if letter not in present:
            x = x[..., None]
            present.append(letter)
    return x.transpose([present.index(letter) for letter in "NCHW"])


def lower(x: np.ndarray, axes: str, pad_value: int = 0) -> np.ndarray:
    """Logical tensor → lowered ``N,H,C,Wp``; the width padding holds ``pad_value``."""
    n, h, c, wp = lowered_shape(x.shape, axes)
    view = _as_nchw(x, axes).transpose(0, 2, 1, 3)
    w = view.shape[3]
    out = np.empty((n, h, c, wp), dtype=x.dtype)
    out[..., :w] = view
    if wp > w:
        out[..., w:] = pad_value
    return out


def unlower(y: np.ndarray, axes: str, shape: tuple[int, ...]) -> np.ndarray:
    """Lowered ``N,H,C,Wp`` → the logical tensor of ``shape`` with ``axes`` (a new array)."""
    n, c, h, w = _dims(tuple(shape), axes)
    if y.shape != (n, h, c, padded(w)):
        raise ValueError(f"lowered tensor has shape {y.shape}, expected {(n, h, c, padded(w))}")
    nchw = y[..., :w].transpose(0, 2, 1, 3)
    present = list(axes) + [a for a in "NCHW" if a not in axes]
    perm = ["NCHW".index(a) for a in present]
    return np.ascontiguousarray(nchw.transpose(perm)).reshape(shape)


def pad_last(x: np.ndarray, multiple: int = LANE, value: int | float = 0) -> np.ndarray:
    """Pad the last axis up to a multiple of ``multiple`` with ``value``."""
    w = x.shape[-1]
    wp = padded(w, multiple)
    if wp == w:
        return x
    out = np.empty(x.shape[:-1] + (wp,), dtype=x.dtype)
    out[..., :w] = x
    out[..., w:] = value
    return out


def slice_last(x: np.ndarray, length: int) -> np.ndarray:
    return x[..., :length]
