"""Byte transposes of a batch of matrices, interleaved ``(n, r, c)`` ↔ planar ``(n, c, r)``, for Lower/Unlower.

An NHWC image row keeps its c = 3 channels interleaved; the lowered layout wants them planar
(Lower passes the image as n·h matrices of (w, c)). numpy copies that transpose one byte per
strided step (about a cycle per byte: 10× a memcpy of the 1.2 MB tensor), and has no operation
that shuffles bytes inside a vector register. onnxruntime's Transpose does, in blocks of 16×16
bytes, but only when both sides of the matrix are wide: it moves a 640×3 matrix no faster than
numpy. So the narrow transpose is done as two wide ones. With r = g·k (element p = q·k + i):

    (g, k·c) → (k·c, g)    takes x[q·k + i, ch] to [i·c + ch, q], that is (k, c·g)[i, ch·g + q]
    (k, c·g) → (c·g, k)    takes it to [ch·g + q, i], that is (c, r)[ch, q·k + i]: planar

and the reverse runs the two steps backwards; both, for the whole batch, in one onnxruntime call.
Small tensors, short rows, wide c (one transpose is then wide already) and r not a multiple of
``_K`` keep numpy's copy.
"""

from __future__ import annotations

import numpy as np

from client.ops._ort import swap_axes_chain

__all__ = ["to_interleaved", "to_planar"]

_K = 8                # k: 8 and 16 measure the same on rows of 640 RGB pixels; 4 and 32 are slower
_MIN_R = 16 * _K      # onnxruntime pays per matrix: below 128 elements a row, numpy's copy is as fast
_MAX_C = 16           # beyond this one transpose is already wide; leave it to numpy
_MIN_BYTES = 1 << 15  # below this the onnxruntime call (≈15 µs) costs more than numpy's copy


def _chained(x: np.ndarray, r: int, c: int) -> bool:
    return (x.dtype.itemsize == 1 and 2 <= c <= _MAX_C and r >= _MIN_R and r % _K == 0
            and x.nbytes >= _MIN_BYTES)


def _run_chain(x: np.ndarray, s1: tuple[int, int, int], s2: tuple[int, int, int]) -> np.ndarray:
    """``x`` viewed as ``s1``, its last two axes swapped, viewed as ``s2``, swapped again."""
    u = np.ascontiguousarray(x).view(np.uint8).reshape(s1)
    y = swap_axes_chain().run(None, {"x": u, "shape": np.array(s2, np.int64)})[0]
    return y.view(x.dtype)


def to_planar(x: np.ndarray) -> np.ndarray:
    """``(n, r, c)`` → a new C-contiguous ``(n, c, r)`` array (any dtype; the fast path for bytes)."""
    n, r, c = x.shape
    if _chained(x, r, c):
        g = r // _K
        return _run_chain(x, (n, g, _K * c), (n, _K, c * g)).reshape(n, c, r)
    out = np.empty((n, c, r), dtype=x.dtype)  # not ascontiguousarray: for c = 1 that returns x itself
    np.copyto(out, x.transpose(0, 2, 1))
    return out


def to_interleaved(z: np.ndarray) -> np.ndarray:
    """``(n, c, r)`` → a new C-contiguous ``(n, r, c)`` array (any dtype; the fast path for bytes)."""
    n, c, r = z.shape
    if _chained(z, r, c):
        g = r // _K
        return _run_chain(z, (n, c * g, _K), (n, _K * c, g)).reshape(n, r, c)
    out = np.empty((n, r, c), dtype=z.dtype)
    for ch in range(c):  # one strided copy per channel: numpy's copy of the whole transposed view
        out[:, :, ch] = z[:, ch, :]  # runs an inner loop of length c, 10× slower for c = 3
    return out
