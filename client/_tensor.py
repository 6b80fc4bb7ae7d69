"""Tensor descriptions as the SDK prints them, and the check of user inputs against them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from npusim.services.errors import InvalidDtype, InvalidInput
from npusim.services.program import TensorSpec

__all__ = ["TensorDesc", "Tensor", "TensorArray", "check_inputs", "tensor_array"]

_DTYPE_NAMES = {"float32": "FLOAT32", "float16": "FLOAT16", "int8": "INT8", "uint8": "UINT8",
                "int16": "INT16", "int32": "INT32", "int64": "INT64", "bool": "BOOL"}


@dataclass(frozen=True)
class TensorDesc:
    """A model input or output. ``repr`` matches the SDK's ``TensorDesc(...)`` string."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # SDK DataType name, e.g. FLOAT32
    format: str
    size: int  # bytes
    length: int  # elements

    @classmethod
    def of(cls, spec: TensorSpec) -> TensorDesc:
        fmt = spec.axes if len(spec.axes) == len(spec.shape) else "?" * len(spec.shape)
        return cls(spec.name, tuple(spec.shape), _DTYPE_NAMES.get(spec.dtype, spec.dtype.upper()), fmt,
                   spec.size, spec.length)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype.lower())

    def __repr__(self) -> str:
        return (f'TensorDesc(name="{self.name}", shape={self.shape}, dtype={self.dtype}, format={self.format}, '
                f"size={self.size}, len={self.length})")


def check_inputs(inputs: Any, specs: Sequence[TensorSpec]) -> list[np.ndarray]:
    """User inputs → one array per model input, or InvalidInput (ValueError) / InvalidDtype (TypeError)."""
    if isinstance(inputs, np.ndarray):
        arrays = [inputs]
    elif isinstance(inputs, (list, tuple)):
        arrays = list(inputs)
    else:
        raise InvalidDtype(f"inputs must be a numpy array or a list of them, got {type(inputs).__name__}")
    if len(arrays) != len(specs):
        names = ", ".join(s.name for s in specs)
        raise InvalidInput(f"the model takes {len(specs)} input(s) ({names}) but {len(arrays)} were given")
    out = []
    for a, s in zip(arrays, specs):
        if not isinstance(a, np.ndarray):
            raise InvalidDtype(f"input {s.name!r} must be a numpy array, got {type(a).__name__}")
        want = np.dtype(s.dtype)
        if a.dtype != want:
            raise InvalidDtype(f"input {s.name!r}: expected {s.shape} ({want}) but got {a.shape} ({a.dtype}); "
                               f"convert it with .astype(np.{want})")
        if tuple(a.shape) != tuple(s.shape):
            raise InvalidInput(f"input {s.name!r}: expected shape {s.shape} ({want}) but got {a.shape}")
        out.append(a)  # the arena copy (or the frame encoder) takes any strides
    return out


class Tensor(np.ndarray):
    """An output array of the legacy API: a numpy array that also has the SDK's ``.numpy()``,
    so code written as ``outputs[0].numpy()`` runs unchanged."""

    def numpy(self) -> np.ndarray:
        return self.view(np.ndarray)


class TensorArray(list):  # type: ignore[type-arg]
    """What the legacy ``Session.run`` returns: a list of :class:`Tensor`."""

    def numpy(self) -> list[np.ndarray]:
        return [t.numpy() for t in self]


def tensor_array(arrays: Sequence[np.ndarray]) -> TensorArray:
    return TensorArray(a.view(Tensor) for a in arrays)
