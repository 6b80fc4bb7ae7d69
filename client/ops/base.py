"""The shape every CPU operator shares: attributes in, one array in, one array out.

A subclass implements ``infer`` (output dtype and shape from the input's) and ``_run``
(the numpy kernel). The inherited ``run`` traces the call as a ``cpu.<Name>`` span when
the request is traced, and checks the kernel against ``infer``, so a kernel bug is an
error naming the operator instead of a corrupt tensor on the NPU.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from opentelemetry import trace

from services import tracing
from services.errors import InvalidModel, ServiceError

__all__ = ["CpuOperator"]


class CpuOperator:
    name: ClassVar[str]
    span_name: ClassVar[str] = ""  # the name in traces, when not ``name`` (two kernels, one operator)
    required: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **attrs: Any) -> None:
        missing = [a for a in self.required if a not in attrs]
        if missing:
            raise InvalidModel(f"the program's {self.name} operator lacks attribute(s) {missing}; recompile it")
        self.attrs = attrs

    def infer(self, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[np.dtype, tuple[int, ...]]:
        raise NotImplementedError

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run(self, x: np.ndarray) -> np.ndarray:
        if trace.get_current_span().is_recording():
            with tracing.tracer().start_as_current_span(f"cpu.{self.span_name or self.name}",
                                                        attributes={"bytes_in": x.nbytes}):
                y = self._run(x)
        else:
            y = self._run(x)
        dtype, shape = self.infer(x.dtype, tuple(x.shape))
        if y.dtype != dtype or tuple(y.shape) != shape:
            raise ServiceError(f"CPU operator {self.name} produced {y.dtype}{tuple(y.shape)}, expected "
                               f"{dtype}{shape} for input {x.dtype}{tuple(x.shape)}")
        return y

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.attrs.items())
        return f"{self.name}({args})"
