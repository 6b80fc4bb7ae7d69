"""``ModelEditor``: the SDK's newer form of the quantiser's input/output type options.

``convert_input_type(name, TensorType.UINT8)`` is ``with_quantize=False`` for one input and
``convert_output_type(name, TensorType.UINT8)`` is ``normalized_pixel_outputs`` for one output
(``TensorType.INT8`` keeps an output as raw int8, with no Dequantize). The editor records the
wish in the model's metadata; :func:`npusim.compiler_svc.quantize.quantize` carries it out.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence

import onnx

__all__ = ["TensorType", "ModelEditor", "get_pure_input_names", "get_output_names", "edits_of"]

_KEY = "npusim.editor"


class TensorType(enum.IntEnum):
    UINT8 = 1
    INT8 = 2


def get_pure_input_names(model: onnx.ModelProto) -> list[str]:
    """Graph inputs that are not initialisers."""
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def get_output_names(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output]


def edits_of(model: onnx.ModelProto) -> dict[str, dict[str, object]]:
    for p in model.metadata_props:
        if p.key == _KEY:
            return json.loads(p.value)
    return {"inputs": {}, "outputs": {}}


class ModelEditor:
    def __init__(self, model: onnx.ModelProto) -> None:
        if not isinstance(model, onnx.ModelProto):
            raise TypeError("ModelEditor edits an onnx.ModelProto in place")
        self.model = model

    def _save(self, edits: dict[str, dict[str, object]]) -> None:
        for p in self.model.metadata_props:
            if p.key == _KEY:
                p.value = json.dumps(edits)
                return
        self.model.metadata_props.add(key=_KEY, value=json.dumps(edits))

    def convert_input_type(self, tensor_name: str, tensor_type: TensorType) -> None:
        """Make input ``tensor_name`` uint8: the host's Quantize becomes a uint8→int8 shift."""
        if tensor_name not in get_pure_input_names(self.model):
            raise ValueError(f"{tensor_name!r} is not an input of the model; inputs: "
                             f"{get_pure_input_names(self.model)}")
        if TensorType(tensor_type) is not TensorType.UINT8:
            raise ValueError("convert_input_type supports TensorType.UINT8 only")
        edits = edits_of(self.model)
        edits["inputs"][tensor_name] = "uint8"
        self._save(edits)

    def convert_output_type(self, tensor_name: str, tensor_type: TensorType,
                            tensor_range: Sequence[float] | None = None) -> None:
        """Return output ``tensor_name`` as uint8 (range default [0, 1]) or raw int8: no Dequantize."""
        if tensor_name not in get_output_names(self.model):
            raise ValueError(f"{tensor_name!r} is not an output of the model; outputs: {get_output_names(self.model)}")
        kind = TensorType(tensor_type)
        rng = None if tensor_range is None else [float(tensor_range[0]), float(tensor_range[1])]
        if rng is not None and not rng[0] < rng[1]:
            raise ValueError(f"tensor_range must be (min, max) with min < max, got {tensor_range!r}")
        edits = edits_of(self.model)
        edits["outputs"][tensor_name] = {"type": kind.name.lower(), "range": rng}
        self._save(edits)
