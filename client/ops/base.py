"""The shape every CPU operator shares: attributes in, one array in, one array out.

A subclass implements ``infer`` (output dtype and shape from the input's) and ``_run``
(the numpy kernel). The inherited ``run`` traces the call as a ``cpu.<Name>`` span when
the request is traced, and checks the kernel against ``infer``, so a kernel bug is an
error naming the operator instead of a corrupt tensor on the NPU.

Ownership: ``run`` returns a new array each call, which the caller owns. No operator keeps a
reference to an output or writes into it later, so an output may be held across jobs (the
worker passes it to the next step, copies it into the shared-memory arena, or sends it; a user
may keep it). Kernels never reuse an output buffer between calls: the allocation is cheap (the
allocator hands back the block the previous output freed, still in cache) and a reused buffer
would be overwritten under a caller that still holds it. The input is only read.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from opentelemetry import trace

from npusim.services import tracing
from npusim.services.errors import InvalidModel, ServiceError

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
        self._expect: dict[tuple[np.dtype, tuple[int, ...]], tuple[np.dtype, tuple[int, ...]]] = {}

    def infer(self, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[np.dtype, tuple[int, ...]]:
        raise NotImplementedError

    def warm(self) -> None:
        """Build what the first call would (an onnxruntime session, ~0.1 s) while the worker starts,
        so the first request, often the one a user profiles, times the kernel and not its set-up."""

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run(self, x: np.ndarray) -> np.ndarray:
        if trace.get_current_span().is_recording():
            with tracing.tracer().start_as_current_span(f"cpu.{self.span_name or self.name}",
                                                        attributes={"bytes_in": x.nbytes}):
                y = self._run(x)
        else:
            y = self._run(x)
        key = (x.dtype, x.shape)
        expect = self._expect.get(key)
        if expect is None:  # a few µs of shape arithmetic, per call, on a 50 µs kernel: once per shape
            expect = self.infer(x.dtype, tuple(x.shape))
            if len(self._expect) < 64:
                self._expect[key] = expect
        dtype, shape = expect
        if y.dtype != dtype or y.shape != shape:
            raise ServiceError(f"CPU operator {self.name} produced {y.dtype}{tuple(y.shape)}, expected "
                               f"{dtype}{shape} for input {x.dtype}{tuple(x.shape)}")
        return y

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.attrs.items())
        return f"{self.name}({args})"
