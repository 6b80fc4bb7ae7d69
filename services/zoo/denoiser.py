"""A local image-to-image model (DnCNN-like) for the patching scenario."""

from __future__ import annotations

import numpy as np
import onnx

from .builder import GraphBuilder

__all__ = ["denoiser", "receptive_radius"]


def receptive_radius(depth: int = 5) -> int:
    """Pixels beyond which an input change cannot reach an output: one per 3×3 convolution."""
    return depth


def denoiser(*, seed: int = 0, channels: int = 32, depth: int = 5, height: int = 256,
             width: int = 256) -> onnx.ModelProto:
    """``depth`` 3×3 convolutions (padding 1), ReLU between them, plus the input: output = input + residual.

    Input "input" and output "output" are [1, 3, height, width] pixels in [0, 1]. Convolution-only,
    so an output pixel depends on the input within ``depth`` pixels of it: patches inferred
    separately equal whole-image inference away from the patch borders. The weights do not depend
    on height/width (BatchNorm calibrated at 128×128, then folded), so models built for a patch
    size and for the whole image compute the same function.
    """
    if depth < 2:
        raise ValueError("the denoiser needs depth >= 2")
    g = GraphBuilder(seed)
    x = g.conv_bn("input", 3, channels, 3)
    for _ in range(depth - 2):
        x = g.conv_bn(x, channels, channels, 3)
    # The residual (the "noise estimate") is small next to the image, as in a trained denoiser.
    w = g.init(g._name("conv") + "_w", g._normal((3, channels, 3, 3), 0.05 / np.sqrt(9 * channels)))
    b = g.init(w[:-2] + "_b", np.zeros(3, np.float32))
    r = g.node("Conv", [x, w, b], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    g.node("Add", ["input", r], out="output")
    return g.finish("denoiser", {"input": [1, 3, height, width]}, ["output"],
                    calib_shape={"input": [1, 3, 128, 128]}, n_calib=4, preprocess="unit", fold_bn=True,
                    doc="Convolution-only residual denoiser, deterministic calibrated random weights")
