"""Functional execution of a program's NPU stages with onnxruntime, or timing-only zeros.

The device receives tensors in each stage's boundary layout (after the host's layout
operators); a stage's graph computes on logical int8 tensors. The conversions here are
emulation plumbing, not work the chip does, so the timing model does not count them.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from npusim.services import layout
from npusim.services.errors import InvalidInput, SessionClosed
from npusim.services.program import NpuStage, Program, TensorSpec

__all__ = ["Executor", "to_graph", "to_device"]

INLINE_NS = 200_000
"""Jobs whose measured compute is below this may run on the daemon's loop thread: handing
them to a thread would cost more than the work."""

Result = tuple[list[np.ndarray], int]


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


class _Stage:
    def __init__(self, stage: NpuStage, *, threads: int, timing_only: bool) -> None:
        self.spec = stage
        self.expect = [(np.dtype(s.dtype), s.shape) for s in stage.device_inputs]
        self.zeros = [np.zeros(s.shape, np.dtype(s.dtype)) for s in stage.device_outputs] if timing_only else []
        self.outputs = [g.name for g in stage.graph_outputs]
        self.session: ort.InferenceSession | None = None
        if not timing_only:
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.session = ort.InferenceSession(stage.graph, so, providers=["CPUExecutionProvider"])


class Executor:
    """Runs one program's NPU stages on one worker thread per open session.

    A job runs inline on the daemon's loop thread only when its compute is known to be
    tiny *and* nothing of the session is in flight, so jobs still finish in FIFO order.
    """

    def __init__(self, program: Program, *, threads: int = 1, timing_only: bool = False) -> None:
        self.program = program
        self.timing_only = timing_only
        self.stages = [_Stage(s, threads=threads, timing_only=timing_only) for s in program.stages]
        self.closed = False
        self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix="npu-exec")
        self._ewma_ns: float | None = None

    def check(self, stage: int, tensors: list[tuple[str, np.ndarray]]) -> list[np.ndarray]:
        if not 0 <= stage < len(self.stages):
            raise InvalidInput(f"the program has {len(self.stages)} NPU stage(s); there is no stage {stage}")
        expect = self.stages[stage].expect
        if len(tensors) != len(expect):
            raise InvalidInput(f"NPU stage {stage} takes {len(expect)} device tensors, got {len(tensors)}")
        out = []
        for (name, arr), (dtype, shape) in zip(tensors, expect):
            if arr.dtype != dtype or arr.shape != shape:
                raise InvalidInput(f"device tensor {name!r}: expected {dtype}{shape}, got {arr.dtype}{arr.shape}")
            out.append(arr)
        return out

    def compute(self, stage: int, inputs: list[np.ndarray]) -> list[np.ndarray]:
        st = self.stages[stage]
        if self.timing_only:
            return st.zeros  # read-only to everyone: they are only ever sent
        session = st.session  # read once: close() may drop it from another thread
        if session is None or self.closed:
            raise SessionClosed("the session was closed while this job was queued")
        spec = st.spec
        feeds = {g.name: to_graph(a, d, g) for a, d, g in zip(inputs, spec.device_inputs, spec.graph_inputs)}
        outs = session.run(st.outputs, feeds)
        return [to_device(o, g, d) for o, g, d in zip(outs, spec.graph_outputs, spec.device_outputs)]

    @property
    def cheap(self) -> bool:
        """Whether a job's compute is known to be too small to hand to a thread."""
        return self.timing_only or (self._ewma_ns is not None and self._ewma_ns < INLINE_NS)

    def timed(self, stage: int, inputs: list[np.ndarray]) -> Result:
        """Compute and return the outputs with the monotonic time they were ready."""
        t0 = time.monotonic_ns()
        outs = self.compute(stage, inputs)
        t1 = time.monotonic_ns()
        dt = t1 - t0
        self._ewma_ns = dt if self._ewma_ns is None else 0.8 * self._ewma_ns + 0.2 * dt
        return outs, t1

    def submit(self, stage: int, inputs: list[np.ndarray], done: Callable[[cf.Future[Result]], None]) -> None:
        fut = self._pool.submit(self.timed, stage, inputs)
        fut.add_done_callback(done)

    def close(self) -> None:
        self.closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        for st in self.stages:
            st.session = None
