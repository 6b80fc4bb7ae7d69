"""Built-in models, built in code with onnx.helper and deterministic random weights.

No weights can be downloaded here, so every model npusim ships is made from a seed, then made to
behave like a trained network: BatchNorm statistics and classifier heads are calibrated on
image-like sample inputs (see :mod:`services.zoo.builder`). Used by the demo, the tests, the
scenarios and the benchmarks.

    small_cnn      [1,3,64,64] → logits [1,10]                        the demo's model
    resnet50       [1,3,224,224] → logits [1,1000]                    ResNet-50 v1.5, ≈4.1 GMAC
    mobilenet_v2   [1,3,224,224] → logits [1,1000]                    depthwise, ReLU6, ≈0.3 GMAC
    mnist          [1,1,28,28] → logits [1,10]                        the batching scenario's model
    yolox_like     [1,3,640,640] → three [1,85,H/s,W/s] heads          detection, NHWC variant
    ops_gallery    [1,3,60,100] → seg, logits, embed                  every operator the compiler meets
    denoiser       [1,3,256,256] → output [1,3,256,256]               local, for patching
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import onnx

from .basic import identity, small_cnn
from .builder import OPSET, GraphBuilder, Head, calibrate, fold_batchnorm, macs, params
from .denoiser import denoiser
from .gallery import ops_gallery
from .inputs import sample_inputs
from .mnist import mnist
from .mobilenet import mobilenet_v2
from .resnet import resnet50
from .yolox import yolox_like

__all__ = ["GraphBuilder", "Head", "OPSET", "small_cnn", "identity", "resnet50", "mobilenet_v2", "mnist",
           "yolox_like", "ops_gallery", "denoiser", "sample_inputs", "calibrate", "fold_batchnorm", "macs",
           "params", "MODELS", "build"]

MODELS: dict[str, Callable[..., onnx.ModelProto]] = {
    "small_cnn": small_cnn,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
    "mnist": mnist,
    "yolox_like": yolox_like,
    "yolox_like_nhwc": partial(yolox_like, nhwc=True),
    "ops_gallery": ops_gallery,
    "ops_gallery_w32": partial(ops_gallery, height=64, width=128),
    "denoiser": denoiser,
}


def build(name: str, **kwargs: object) -> onnx.ModelProto:
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"no built-in model {name!r}; known: {', '.join(MODELS)}") from None
    return factory(**kwargs)
