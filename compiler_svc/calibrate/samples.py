"""Random calibration samples, for compiling a float model without real data ('random' mode).

The samples only have to run the model: the ranges they give are poor, and the pipeline warns
so. Each input gets values of its own dtype — onnxruntime refuses float32 for a uint8 image
input or an int64 index input — drawn from what that dtype usually carries.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from npusim.services.errors import CalibrationError

__all__ = ["random_samples"]

_SMALL_INT_HIGH = 8
"""Integer inputs wider than 8 bits get 0..7: such inputs are mostly indices or counts, and small
non-negative values are the ones most likely valid for them (int8/uint8 cover their whole range)."""


def random_samples(model: onnx.ModelProto, n: int, seed: int = 0) -> list[list[np.ndarray]]:
    """``n`` samples, each one array per pure graph input (graph order), of its dtype and static shape.

    Floats are N(0, 1); uint8 0..255; int8 -128..127; other integers 0..7; bool either. Raises
    CalibrationError for an input with a dynamic dim (run ``optimize_model`` first, which fixes
    them) or a dtype it cannot sample (strings, complex, bfloat16, float8, 4-bit integers).
    """
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        dims = [int(d.dim_value) if d.HasField("dim_value") else 0 for d in t.shape.dim]
        if not t.HasField("shape") or any(d <= 0 for d in dims):
            raise CalibrationError(f"input {vi.name!r} has no static shape ({dims or 'unknown rank'}); random "
                                   "calibration samples need one: run optimize_model(model, input_shapes=...) first")
        if t.elem_type not in _KIND:
            kind = helper.tensor_dtype_to_string(t.elem_type) if t.elem_type else "of no tensor type"
            raise CalibrationError(f"input {vi.name!r} is {kind}: random calibration samples cannot be made for it; "
                                   "pass real calibration data")
        specs.append((np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)), _KIND[t.elem_type], dims))
    return [[_sample(rng, dt, kind, dims) for dt, kind, dims in specs] for _ in range(n)]


_T = onnx.TensorProto
_KIND = {_T.FLOAT: "normal", _T.FLOAT16: "normal", _T.DOUBLE: "normal", _T.UINT8: "full", _T.INT8: "full",
         _T.BOOL: "full", **{t: "small" for t in (_T.INT16, _T.INT32, _T.INT64, _T.UINT16, _T.UINT32, _T.UINT64)}}
"""The ONNX element types sampled, and how: N(0, 1), the type's whole range, or 0..7."""


def _sample(rng: np.random.Generator, dt: np.dtype, kind: str, dims: list[int]) -> np.ndarray:
    if kind == "normal":
        return rng.standard_normal(dims).astype(dt)
    if kind == "small":
        return rng.integers(0, _SMALL_INT_HIGH, dims).astype(dt)
    if dt == np.bool_:
        return rng.integers(0, 2, dims).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(int(info.min), int(info.max) + 1, dims).astype(dt)
