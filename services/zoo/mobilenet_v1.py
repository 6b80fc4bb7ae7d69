"""MobileNet v1 (Howard et al. 2017), and the SSD-MobileNet-v1 detector MLPerf runs on its backbone."""

from __future__ import annotations

import numpy as np
import onnx

from .builder import GraphBuilder

__all__ = ["mobilenet_v1", "ssd_mobilenet_v1"]

# (output channels, stride) of the 13 depthwise-separable blocks, the paper's Table 1 (the last
# depthwise conv has stride 1, as in every implementation: the table's "s2" would give 4×4 at 224)
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *((512, 1),) * 5, (1024, 2), (1024, 1))
SSD_EXTRAS = (512, 256, 256, 128)  # output channels of the extra feature layers, each at stride 2
SSD_ANCHORS = (3, 6, 6, 6, 6, 6)  # anchors per position of each of the six feature maps


def _separable(g: GraphBuilder, x: str, cin: int, cout: int, stride: int) -> str:
    """Depthwise 3×3 (group = channels) then pointwise 1×1, each with BN and ReLU6."""
    y = g.conv_bn(x, cin, cin, 3, stride=stride, group=cin, act="relu6")
    return g.conv_bn(y, cin, cout, 1, act="relu6")


def _backbone(g: GraphBuilder, x: str) -> list[tuple[str, int]]:
    """The stride-2 stem and the 13 blocks: each block's output and its channels."""
    x = g.conv_bn(x, 3, 32, 3, stride=2, act="relu6")
    cin, feats = 32, []
    for cout, stride in BLOCKS:
        x = _separable(g, x, cin, cout, stride)
        feats.append((x, cout))
        cin = cout
    return feats


def mobilenet_v1(*, seed: int = 0, height: int = 224, width: int = 224, classes: int = 1000,
                 fold_bn: bool = False) -> onnx.ModelProto:
    """MobileNet v1 1.0 (≈0.57 GMAC, ≈4.2 M parameters at 224×224): input "input", output "logits".

    A 3×3 stride-2 conv to 32 channels, 13 depthwise-separable blocks (64 … 1024 channels), each
    conv followed by BatchNormalization and ReLU6 (as Clip(0, 6), as the TF and torch ports have
    it; the paper says ReLU), GlobalAveragePool and a Gemm head 1024 → ``classes``. Calibrated
    at 224×224 whatever the input size.
    """
    g = GraphBuilder(seed)
    x, c = _backbone(g, "input")[-1]
    x = g.node("GlobalAveragePool", [x])
    x = g.node("Flatten", [x], axis=1)
    g.head(x, c, classes, out="logits")
    return g.finish("mobilenet_v1", {"input": [1, 3, height, width]}, ["logits"],
                    calib_shape={"input": [1, 3, 224, 224]}, n_calib=8, fold_bn=fold_bn,
                    doc="MobileNet v1 1.0 (Howard et al. 2017), deterministic calibrated random weights")


def _predictor(g: GraphBuilder, x: str, cin: int, bias: np.ndarray, out: str, *, gain: float = 1.0) -> str:
    """A 1×1 prediction conv with bias straight to a graph output (no BN, no activation), as the
    TensorFlow SSD-MobileNet-v1 COCO model that MLPerf runs has box predictors of kernel 1."""
    name = g._name("conv")
    w = g.init(name + "_w", g._normal((len(bias), cin, 1, 1), gain * np.sqrt(1.0 / cin)))
    b = g.init(name + "_b", bias.astype(np.float32))
    return g.node("Conv", [x, w, b], kernel_shape=[1, 1], out=out)


def ssd_mobilenet_v1(*, seed: int = 0, size: int = 300, classes: int = 91,
                     fold_bn: bool = True) -> onnx.ModelProto:
    """SSD-MobileNet-v1 as MLPerf runs it: input "input" [1,3,300,300], twelve raw head outputs.

    The MobileNet v1 backbone without its classifier; feature maps after the 11th block (19×19,
    512 channels) and the 13th (10×10, 1024), then four extra layers (1×1 conv to half the
    output channels, 3×3 stride-2 conv: 512@5×5, 256@3×3, 256@2×2, 128@1×1). On each of the six
    maps a 1×1 conv predicts box offsets, "loc0" … "loc5" (anchors×4 channels), and one predicts
    class logits, "conf0" … "conf5" (anchors×``classes``, class 0 the background), with 3
    anchors on the first map and 6 on the others; outputs are NCHW. Reshaping, box decoding and
    NMS are host post-processing. As in a trained detector, most anchors score as background (a
    high background bias) and a few percent as some object (class logits spread by a gain of 3).
    BatchNorms are folded as in the MLPerf ONNX model (``fold_bn=False`` keeps them). Calibrated
    at 300×300 whatever ``size`` is.
    """
    g = GraphBuilder(seed)
    feats = _backbone(g, "input")
    maps = [feats[10], feats[12]]
    x, cin = feats[12]
    for cout in SSD_EXTRAS:
        x = g.conv_bn(x, cin, cout // 2, 1, act="relu6")
        x = g.conv_bn(x, cout // 2, cout, 3, stride=2, act="relu6")
        maps.append((x, cout))
        cin = cout
    background = np.log(99.0 * (classes - 1))  # P(background) ≈ 0.99 with the other logits at 0
    locs, confs = [], []
    for k, ((f, c), anchors) in enumerate(zip(maps, SSD_ANCHORS)):
        locs.append(_predictor(g, f, c, np.zeros(anchors * 4), f"loc{k}"))
        prior = np.zeros((anchors, classes))
        prior[:, 0] = background
        confs.append(_predictor(g, f, c, prior.reshape(-1), f"conf{k}", gain=3.0))
    return g.finish("ssd_mobilenet_v1", {"input": [1, 3, size, size]}, locs + confs,
                    calib_shape={"input": [1, 3, 300, 300]}, n_calib=8, fold_bn=fold_bn,
                    doc="SSD-MobileNet-v1 (MLPerf shape), deterministic calibrated random weights")
