"""The protocol's tensor datatypes and numpy's, both ways."""

from __future__ import annotations

import numpy as np

from npusim.services.errors import InvalidInput

__all__ = ["to_numpy", "to_oip"]

_TO_NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
             "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
             "FP32": np.float32, "FP64": np.float64}
_TO_OIP = {np.dtype(v): k for k, v in _TO_NUMPY.items()}


def to_numpy(datatype: str) -> np.dtype:
    try:
        return np.dtype(_TO_NUMPY[datatype])
    except KeyError:
        raise InvalidInput(f"datatype {datatype!r} is not served; use one of {', '.join(_TO_NUMPY)}") from None


def to_oip(dtype: np.dtype | str) -> str:
    return _TO_OIP[np.dtype(dtype)]
