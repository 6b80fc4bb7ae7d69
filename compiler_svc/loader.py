"""Reading a model the user handed us, with an error that says what is wrong and what to do."""

from __future__ import annotations

import onnx
from google.protobuf.message import DecodeError

from npusim.services.errors import InvalidModel
from npusim.services.program import is_program

__all__ = ["load_model", "opset_of", "OPSET_RANGE"]

OPSET_RANGE = (11, 21)
"""Opsets npusim reads: 11–17 as exporters' classic range, 18–21 as torch's default (dynamo)
exporter writes them; optimize_model brings every one to the target opset where it can."""


def load_model(data: bytes) -> onnx.ModelProto:
    if not data:
        raise InvalidModel("the model is empty (0 bytes); pass an .onnx file, its bytes, or an .enf program")
    if is_program(data):  # checked first: an .enf is not protobuf, and "cannot parse" would mislead
        raise InvalidModel("this is an already compiled npusim program (.enf), not an ONNX model: there is nothing "
                           "to compile — pass it to session.create / npusim explain directly")
    try:
        model = onnx.load_from_string(bytes(data))
    except (DecodeError, ValueError, RuntimeError) as e:
        # A ModelProto starts with its ir_version (field 1, varint): a file that does too but
        # does not parse is most likely cut off rather than something else entirely.
        looks_onnx = len(data) > 16 and data[0] == 0x08 and data[1] < 0x80
        hint = "the file looks truncated or corrupt" if looks_onnx else "it is not an ONNX protobuf"
        raise InvalidModel(f"cannot parse the model ({len(data)} bytes): {hint} ({e}). "
                           "Pass an .onnx file, its bytes, or an .enf program") from None
    if not model.graph.node:
        raise InvalidModel("the model has no nodes: it is not an ONNX model (or an empty one)")
    from onnx.external_data_helper import uses_external_data

    if any(uses_external_data(t) for t in model.graph.initializer):
        raise InvalidModel("the model keeps weights in external files the compiler cannot see; pass its path "
                           "(npusim compile PATH, session.create(PATH)) so npusim reads them, or save it with "
                           "onnx.save(model, path, save_as_external_data=False)")
    opset = opset_of(model)
    if not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        raise InvalidModel(f"the model uses opset {opset}; npusim compiles opset {OPSET_RANGE[0]}–{OPSET_RANGE[1]}. "
                           "Re-export it with opset_version=13")
    return model


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise InvalidModel("the model imports no default-domain opset")
