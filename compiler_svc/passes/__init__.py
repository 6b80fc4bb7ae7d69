"""``optimize_model``: the graph clean-up before calibration, as a list of small passes.

Each pass is a function ``(model, ctx) -> model`` in its own file; the order matters and
is the list below. Constant folding, BatchNormalization fusion and Identity/Dropout removal
are onnxruntime's basic graph optimiser (a well-kept implementation of exactly those
rewrites); the passes around it prepare the graph for it and tidy what it returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx

from npusim.compiler_svc.passes._context import PassContext
from npusim.compiler_svc.passes.cleanup import cleanup
from npusim.compiler_svc.passes.dropout import drop_dropout
from npusim.compiler_svc.passes.global_pool import reduce_mean_to_global_pool
from npusim.compiler_svc.passes.lone_bn import lone_batchnorm_to_mul_add
from npusim.compiler_svc.passes.names import name_nodes
from npusim.compiler_svc.passes.opset import convert_opset
from npusim.compiler_svc.passes.ort_basic import ort_basic
from npusim.compiler_svc.passes.shapes import (
    check_input_shapes,
    fix_input_shapes,
    infer_shapes,
)
from npusim.services.errors import InvalidModel

__all__ = ["optimize_model", "PASSES"]

PASSES = [fix_input_shapes, name_nodes, drop_dropout, ort_basic, convert_opset, reduce_mean_to_global_pool,
          lone_batchnorm_to_mul_add, cleanup, name_nodes, infer_shapes]
"""The opset changes after onnxruntime has folded the graph: with static shapes the Shape
chains that block a down-conversion are gone by then."""
NOTES_KEY = "npusim.optimize_notes"


def optimize_model(model: onnx.ModelProto | bytes, input_shapes: Mapping[str, Sequence[int]] | None = None,
                   opset_version: int = 13) -> onnx.ModelProto:
    """Convert to ``opset_version``, fix dynamic dims (batch → 1, others from ``input_shapes``),
    fold constants, fuse BatchNormalization into Conv, drop Identity/Dropout, name nodes.

    Returns a new model that onnx's checker accepts and that computes the same outputs.
    Raises InvalidModel for a model (or ``input_shapes``) it cannot make that of.
    """
    if isinstance(model, (bytes, bytearray)):
        from npusim.compiler_svc.loader import load_model

        model = load_model(bytes(model))
    ctx = PassContext(opset_version=opset_version, input_shapes=check_input_shapes(input_shapes))
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for p in PASSES:
        m = p(m, ctx)
    if ctx.notes:
        m.metadata_props.add(key=NOTES_KEY, value="; ".join(ctx.notes))
    try:
        onnx.checker.check_model(m)
    except onnx.checker.ValidationError as e:
        raise InvalidModel(f"the optimised model is not valid ONNX: {e}. The input model is likely malformed "
                           "there (onnx.checker.check_model(model) on it tells more)") from None
    return m
