"""Bring the model to the target opset (models exported with opset 11–17 arrive here)."""

from __future__ import annotations

import onnx
from onnx import version_converter

from compiler_svc.loader import opset_of
from compiler_svc.passes._context import PassContext
from services.errors import InvalidModel


def convert_opset(m: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    if opset_of(m) == ctx.opset_version:
        return m
    try:
        return version_converter.convert_version(m, ctx.opset_version)
    except Exception as e:  # noqa: BLE001 - the converter raises bare RuntimeErrors
        raise InvalidModel(f"cannot convert the model from opset {opset_of(m)} to {ctx.opset_version}: {e}") from None
