"""Reading a model file from disk, external weight files included, safely.

An ONNX model may keep its weights in separate files named relative to the model; a name
that leaves the model's folder (``../../etc/passwd``, an absolute path, a symlink out) is
refused rather than read. The weights are inlined, so the bytes travel to the compiler
service as one message.
"""

from __future__ import annotations

import os
from pathlib import Path

from services.errors import InvalidModel
from services.program import is_program

__all__ = ["read_model"]


def read_model(path: str | os.PathLike[str]) -> bytes:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise InvalidModel(f"cannot read the model file {str(p)!r}: {e.strerror}") from None
    if is_program(data) or b"external_data" not in data and b"location" not in data:
        return data
    import onnx  # only models that may reference external files need parsing here
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    try:
        model = onnx.load_from_string(data)
    except Exception:  # noqa: BLE001 - not ONNX: the compiler will say so precisely
        return data
    base = p.resolve().parent
    tensors = [t for t in _all_tensors(model) if uses_external_data(t)]
    if not tensors:
        return data
    for t in tensors:
        location = ExternalDataInfo(t).location
        target = (base / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(base):
            raise InvalidModel(f"the model's tensor {t.name!r} names external data {location!r} outside the model's "
                               f"folder {base}; refusing to read it (keep external files next to the model)")
        if not target.is_file():
            raise InvalidModel(f"the model's external data file {location!r} for {t.name!r} is missing from {base}")
    onnx.load_external_data_for_model(model, str(base))
    return model.SerializeToString()


def _all_tensors(model: object) -> list[object]:
    from onnx.external_data_helper import _get_all_tensors

    return list(_get_all_tensors(model))
