"""Built-in models, built in code with onnx.helper and deterministic random weights.

No weights can be downloaded here, so every model npusim ships is made from a seed, then made to
behave like a trained network: BatchNorm statistics and classifier heads are calibrated on
image-like sample inputs (see :mod:`npusim.services.zoo.builder`). Used by the demo, the tests, the
scenarios and the benchmarks.

    small_cnn      [1,3,64,64] → logits [1,10]                        the demo's model
    resnet50       [1,3,224,224] → logits [1,1000]                    ResNet-50 v1.5, ≈4.1 GMAC
    resnet34       [1,3,224,224] → logits [1,1000]                    basic blocks, ≈3.6 GMAC
    mobilenet_v2   [1,3,224,224] → logits [1,1000]                    depthwise, ReLU6, ≈0.3 GMAC
    mobilenet_v1   [1,3,224,224] → logits [1,1000]                    depthwise-separable, ≈0.57 GMAC
    ssd_mobilenet_v1 [1,3,300,300] → loc0-5, conf0-5 (NCHW)           MLPerf's detector, raw heads
    mnist          [1,1,28,28] → logits [1,10]                        the batching scenario's model
    yolox_like     [1,3,640,640] → three [1,85,H/s,W/s] heads          detection, NHWC variant
    yolov5_like    [1,3,640,640] → three [1,255,H/s,W/s] heads         YOLOv5s v6+, ≈8 GMAC; n variant
    yolov8_like    [1,3,640,640] → three [1,144,H/s,W/s] heads         YOLOv8s, C2f/Split; n variant
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
from .mobilenet_v1 import mobilenet_v1, ssd_mobilenet_v1
from .resnet import resnet50
from .resnet34 import resnet34
from .yolov5 import yolov5_like
from .yolov8 import yolov8_like
from .yolox import yolox_like

__all__ = ["GraphBuilder", "Head", "OPSET", "small_cnn", "identity", "resnet50", "resnet34", "mobilenet_v2",
           "mobilenet_v1", "ssd_mobilenet_v1", "mnist", "yolox_like", "yolov5_like", "yolov8_like", "ops_gallery",
           "denoiser", "sample_inputs", "calibrate", "fold_batchnorm", "macs", "params", "MODELS", "HEAVY", "build"]

MODELS: dict[str, Callable[..., onnx.ModelProto]] = {
    "small_cnn": small_cnn,
    "resnet50": resnet50,
    "resnet34": resnet34,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v1": mobilenet_v1,
    "ssd_mobilenet_v1": ssd_mobilenet_v1,
    "mnist": mnist,
    "yolox_like": yolox_like,
    "yolox_like_nhwc": partial(yolox_like, nhwc=True),
    "yolov5_like": yolov5_like,
    "yolov5n_like": partial(yolov5_like, depth=0.33, width_mult=0.25),
    "yolov8_like": yolov8_like,
    "yolov8n_like": partial(yolov8_like, depth=0.33, width_mult=0.25, max_channels=1024),
    "ops_gallery": ops_gallery,
    "ops_gallery_w32": partial(ops_gallery, height=64, width=128),
    "denoiser": denoiser,
}
HEAVY = frozenset({"resnet50", "resnet34", "yolov5_like", "yolov8_like"})
"""Models of several GMAC that take seconds to calibrate or compile: tests that run every model
check these once, in their own slower tests."""


def build(name: str, **kwargs: object) -> onnx.ModelProto:
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"no built-in model {name!r}; known: {', '.join(MODELS)}") from None
    return factory(**kwargs)
