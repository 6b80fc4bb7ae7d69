"""Realistic sample inputs: calibration data and test data for the built-in models.

Random uniform noise is a poor stand-in for a photograph: it has no spatial correlation, so a
network's activations (and a quantizer's ranges) on it look nothing like those on real images.
Here an "image" is a natural-statistics random field instead: a 1/f^α luminance field, weaker
and smoother colour fields, an illumination gradient, and a few flat-coloured shapes with sharp
edges, stretched to [0, 1]. MNIST-sized single-channel inputs are pen strokes on a black
background. Models say how they want their input prepared through two metadata properties set
by the zoo (other models fall back to a guess from the input shape):

``npusim.preprocess``  ``imagenet`` (pixels in [0, 1], then ImageNet mean/std),
                       ``unit`` (pixels in [0, 1]) or ``mnist`` (strokes in [0, 1])
``npusim.layout``      ``NCHW`` or ``NHWC``

Integer inputs (a model quantized without its Quantize operator) get the raw pixels: uint8 in
[0, 255], int8 shifted by −128.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper

__all__ = ["sample_inputs", "natural_image", "digit_image", "image_batch", "IMAGENET_MEAN", "IMAGENET_STD",
           "META_PREPROCESS", "META_LAYOUT"]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
META_PREPROCESS = "npusim.preprocess"
META_LAYOUT = "npusim.layout"


def _pink(rng: np.random.Generator, h: int, w: int, alpha: float) -> np.ndarray:
    """Zero-mean, unit-variance noise with a 1/f^alpha amplitude spectrum."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    f[0, 0] = 1.0  # the DC term is removed below
    spec = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f ** alpha
    spec[0, 0] = 0.0
    field = np.fft.irfft2(spec, s=(h, w))
    return field / (field.std() + 1e-12)


def natural_image(rng: np.random.Generator, h: int, w: int, c: int = 3) -> np.ndarray:
    """One image-like [c, h, w] float32 array in [0, 1]."""
    lum = _pink(rng, h, w, rng.uniform(1.3, 1.8))
    chroma = np.stack([_pink(rng, h, w, rng.uniform(1.8, 2.3)) for _ in range(2)])
    mix = rng.normal(0.0, 0.4, size=(c, 2))
    img = lum[None] + np.einsum("ck,khw->chw", mix, chroma)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    theta = rng.uniform(0, 2 * np.pi)
    img += rng.uniform(0.0, 1.5) * ((xx / w - 0.5) * np.cos(theta) + (yy / h - 0.5) * np.sin(theta)) * 2
    for _ in range(int(rng.integers(2, 6))):  # flat objects with sharp (one-pixel soft) edges
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.05, 0.35) * h, rng.uniform(0.05, 0.35) * w
        if rng.random() < 0.5:
            d = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) - 1.0
            edge = d * min(ry, rx)
        else:
            edge = np.maximum(np.abs(yy - cy) - ry, np.abs(xx - cx) - rx)
        mask = np.clip(0.5 - edge, 0.0, 1.0)[None]
        colour = rng.normal(0.0, 1.5, size=(c, 1, 1))
        texture = 0.3 * _pink(rng, h, w, 2.0)[None]
        img = img * (1 - mask) + (colour + texture) * mask
    lo, hi = np.percentile(img, [0.5, 99.5])
    a, b = rng.uniform(0.0, 0.15), rng.uniform(0.8, 1.0)
    img = a + (img - lo) / max(hi - lo, 1e-12) * (b - a)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def digit_image(rng: np.random.Generator, h: int = 28, w: int = 28) -> np.ndarray:
    """One MNIST-like [1, h, w] float32 array: 1-3 pen strokes in [0, 1] on black."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ink = np.zeros((h, w))
    for _ in range(int(rng.integers(1, 4))):
        pts = rng.uniform([0.2 * h, 0.2 * w], [0.8 * h, 0.8 * w], size=(int(rng.integers(2, 5)), 2))
        width = rng.uniform(0.04, 0.065) * min(h, w)
        for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:]):
            dy, dx = y1 - y0, x1 - x0
            t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-9), 0.0, 1.0)
            d2 = (yy - y0 - t * dy) ** 2 + (xx - x0 - t * dx) ** 2
            ink = np.maximum(ink, np.exp(-d2 / (2 * width * width)))
    ink = np.clip(ink * 1.3, 0.0, 1.0)
    ink[ink < 0.05] = 0.0  # a black background, exactly
    return ink.astype(np.float32)[None]


def image_batch(rng: np.random.Generator, shape: Sequence[int], *, preprocess: str = "imagenet",
                layout: str = "NCHW", dtype: np.dtype | type = np.float32) -> np.ndarray:
    """One input tensor of ``shape`` (rank 4) filled with images prepared as ``preprocess`` says."""
    shape = [int(d) for d in shape]
    n, c, h, w = (shape[0], shape[3], shape[1], shape[2]) if layout == "NHWC" else shape
    if preprocess == "mnist":
        x = np.stack([np.concatenate([digit_image(rng, h, w)] * c) for _ in range(n)])
    else:
        x = np.stack([natural_image(rng, h, w, c) for _ in range(n)])
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        x = np.round(x * 255).astype(np.uint8)
    elif dtype == np.int8:
        x = (np.round(x * 255) - 128).astype(np.int8)
    elif dtype.kind == "f":
        if preprocess == "imagenet" and c == 3:
            x = (x - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]
        x = x.astype(dtype)
    else:
        x = np.zeros(x.shape, dtype)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "NHWC" else x


def _guess(shape: list[int]) -> tuple[str, str]:
    layout = "NHWC" if shape[-1] in (1, 3) and shape[1] not in (1, 3) else "NCHW"
    c, h, w = (shape[3], shape[1], shape[2]) if layout == "NHWC" else shape[1:]
    if c == 3:
        return "imagenet", layout
    if c == 1 and h <= 32 and w <= 32:
        return "mnist", layout
    return "unit", layout


def sample_inputs(model: onnx.ModelProto, n: int, *, seed: int = 0) -> list[list[np.ndarray]]:
    """``n`` samples, each a list with one array per graph input (right shape and dtype).

    Sample ``i`` depends only on ``seed`` and ``i``, not on ``n``. Dimensions that are symbolic
    or unknown are taken as 1.
    """
    meta = {p.key: p.value for p in model.metadata_props}
    init_names = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tt.shape.dim]
        specs.append((shape, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))))
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        sample = []
        for shape, dtype in specs:
            if len(shape) == 4:
                pre, layout = _guess(shape)
                pre = meta.get(META_PREPROCESS, pre)
                layout = meta.get(META_LAYOUT, layout)
                sample.append(image_batch(rng, shape, preprocess=pre, layout=layout, dtype=dtype))
            elif dtype.kind == "f":
                sample.append(rng.standard_normal(shape).astype(dtype))
            else:
                sample.append(np.zeros(shape, dtype))
        out.append(sample)
    return out
