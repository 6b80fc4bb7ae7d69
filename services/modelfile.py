"""Reading a model the way every command takes one: a file, or ``zoo:NAME``.

A file is an ``.onnx`` model or an ``.enf`` program. An ONNX model may keep its weights in
separate files named relative to the model; a name that leaves the model's folder
(``../../etc/passwd``, an absolute path, a symlink out) is refused rather than read. The
weights are inlined, so the bytes travel to the compiler service as one message.
``zoo:NAME`` builds a model of the built-in zoo (``zoo:resnet50``, ``zoo:mnist``, ...).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from npusim.services.errors import ConfigError, InvalidModel
from npusim.services.program import is_program

__all__ = ["ModelSource", "model_source", "read_model"]

ZOO = "zoo:"


@dataclass(frozen=True)
class ModelSource:
    """A model named on a command line: its bytes, a name for it, and its file (None for the zoo)."""

    data: bytes
    name: str
    path: Path | None


def model_source(arg: str | os.PathLike[str]) -> ModelSource:
    """``arg`` as every command takes a model: an .onnx or .enf path, or ``zoo:NAME``."""
    text = os.fspath(arg)
    if text.startswith(ZOO):
        from npusim.services import zoo  # building a model needs onnx: only then

        name = text.removeprefix(ZOO)
        if name not in zoo.MODELS:
            raise ConfigError(f"no zoo model {name!r}; known: {', '.join(zoo.MODELS)}")
        return ModelSource(zoo.build(name).SerializeToString(), name, None)
    p = Path(text)
    if not p.is_file():
        raise ConfigError(f"model {text!r} is not a file; pass an .onnx or .enf path, or zoo:NAME (e.g. zoo:resnet50)")
    return ModelSource(read_model(p), p.stem, p)


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
