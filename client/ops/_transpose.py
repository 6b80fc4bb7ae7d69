"""Byte transposes of a batch of matrices, interleaved ``(n, r, c)`` ↔ planar ``(n, c, r)``, for Lower/Unlower.

The numpy kernels, for a host without the compiled extension (``_native``) and as its test
oracle: a strided copy, about a cycle a byte (10× a memcpy of an RGB image); the compiled
kernels shuffle bytes in vector registers at about 1.5× a memcpy (docs/cpu-operators.md).
"""

from __future__ import annotations

import numpy as np

__all__ = ["to_interleaved", "to_planar"]


def to_planar(x: np.ndarray) -> np.ndarray:
    """``(n, r, c)`` → a new C-contiguous ``(n, c, r)`` array."""
    n, r, c = x.shape
    out = np.empty((n, c, r), dtype=x.dtype)  # not ascontiguousarray: for c = 1 that returns x itself
    np.copyto(out, x.transpose(0, 2, 1))
    return out


def to_interleaved(z: np.ndarray) -> np.ndarray:
    """``(n, c, r)`` → a new C-contiguous ``(n, r, c)`` array."""
    n, c, r = z.shape
    out = np.empty((n, r, c), dtype=z.dtype)
    for ch in range(c):  # one strided copy per channel: numpy's copy of the whole transposed view
        out[:, :, ch] = z[:, ch, :]  # runs an inner loop of length c, 10× slower for c = 3
    return out
