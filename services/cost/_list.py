"""Registry: ONNX operator type → cost rule."""

from __future__ import annotations

from npusim.services.cost.rules import Rule, conv, eltwise, free, gemm, move, pool, reduce

RULES: dict[str, Rule] = {
    "Conv": conv, "ConvTranspose": conv,
    "Gemm": gemm, "MatMul": gemm,
    "MaxPool": pool, "AveragePool": pool, "GlobalAveragePool": pool,
    "Relu": eltwise, "Clip": eltwise, "LeakyRelu": eltwise, "Sigmoid": eltwise, "HardSigmoid": eltwise,
    "HardSwish": eltwise, "Add": eltwise, "Mul": eltwise, "Sub": eltwise, "Tanh": eltwise,
    "Softmax": reduce, "LpNormalization": reduce,
    "Transpose": move, "Concat": move, "Resize": move, "Pad": move, "Slice": move, "Split": move,
    "SpaceToDepth": move, "DepthToSpace": move,
    "Reshape": free, "Flatten": free, "Squeeze": free, "Unsqueeze": free, "Identity": free,
}
"""Quantize/DequantizeLinear are absent on purpose: the chip fuses them into its int8 kernels."""
