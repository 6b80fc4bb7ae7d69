"""Functional execution of a program's NPU part with onnxruntime, or timing-only zeros.

The device receives tensors in the program's boundary layout (after the CPU
pre-operators); the NPU graph computes on logical int8 tensors. The conversions here are
emulation plumbing, not work the chip does, so the timing model does not count them.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from services import layout
from services.errors import InvalidInput, SessionClosed
from services.program import Program, TensorSpec

__all__ = ["Executor", "to_graph", "to_device"]

INLINE_NS = 200_000
"""Jobs whose measured compute is below this run on the daemon's loop thread: handing
them to a thread would cost more than the work."""


def to_graph(arr: np.ndarray, device: TensorSpec, graph: TensorSpec) -> np.ndarray:
    if device.layout == "lowered":
        return layout.unlower(arr, graph.axes, graph.shape)
    if device.layout == "padded":
        return np.ascontiguousarray(layout.slice_last(arr, graph.shape[-1]))
    return arr


def to_device(arr: np.ndarray, graph: TensorSpec, device: TensorSpec) -> np.ndarray:
    if device.layout == "lowered":
        return layout.lower(arr, graph.axes, graph.pad)
    if device.layout == "padded":
        return layout.pad_last(arr, layout.LANE, graph.pad)
    return arr


class Executor:
    """Runs one program's NPU part on one worker thread per open session.

    A job runs inline on the daemon's loop thread only when its compute is known to be
    tiny *and* nothing of the session is in flight, so jobs still finish in FIFO order.
    """

    def __init__(self, program: Program, *, threads: int = 1, timing_only: bool = False) -> None:
        self.program = program
        self.timing_only = timing_only
        self.session: ort.InferenceSession | None = None
        if not timing_only:
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.session = ort.InferenceSession(program.npu_graph, so, providers=["CPUExecutionProvider"])
        self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix="npu-exec")
        self._ewma_ns: float | None = None
        self._expect = [(np.dtype(s.dtype), s.shape) for s in program.npu_inputs]
        self._zeros = [np.zeros(s.shape, np.dtype(s.dtype)) for s in program.npu_outputs] if timing_only else []

    def check(self, tensors: list[tuple[str, np.ndarray]]) -> list[np.ndarray]:
        if len(tensors) != len(self._expect):
            raise InvalidInput(f"the program takes {len(self._expect)} device tensors, got {len(tensors)}")
        out = []
        for (name, arr), (dtype, shape) in zip(tensors, self._expect):
            if arr.dtype != dtype or arr.shape != shape:
                raise InvalidInput(f"device tensor {name!r}: expected {dtype}{shape}, got {arr.dtype}{arr.shape}")
            out.append(arr)
        return out

    def compute(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        p = self.program
        if self.timing_only:
            return self._zeros  # read-only to everyone: they are only ever sent
        session = self.session  # read once: close() may drop it from another thread
        if session is None:
            raise SessionClosed("the session was closed while this job was queued")
        feeds = {g.name: to_graph(a, d, g) for a, d, g in zip(inputs, p.npu_inputs, p.graph_inputs)}
        outs = session.run([g.name for g in p.graph_outputs], feeds)
        return [to_device(o, g, d) for o, g, d in zip(outs, p.graph_outputs, p.npu_outputs)]

    @property
    def cheap(self) -> bool:
        """Whether a job's compute is known to be too small to hand to a thread."""
        return self.timing_only or (self._ewma_ns is not None and self._ewma_ns < INLINE_NS)

    def timed(self, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
        """Compute and return the outputs with the monotonic time they were ready."""
        t0 = time.monotonic_ns()
        outs = self.compute(inputs)
        t1 = time.monotonic_ns()
        dt = t1 - t0
        self._ewma_ns = dt if self._ewma_ns is None else 0.8 * self._ewma_ns + 0.2 * dt
        return outs, t1

    def submit(self, inputs: list[np.ndarray], done: Callable[[cf.Future[tuple[list[np.ndarray], int]]], None]) -> None:
        fut = self._pool.submit(self.timed, inputs)
        fut.add_done_callback(done)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.session = None
