"""The Calibrator of the SDK (``furiosa.quantizer.Calibrator``), computed with onnxruntime."""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from npusim.compiler_svc.calibrate._list import OBSERVERS
from npusim.services.errors import CalibrationError

__all__ = ["CalibrationMethod", "Calibrator", "float_tensors"]


class CalibrationMethod(enum.IntEnum):
    MIN_MAX_ASYM = 0
    MIN_MAX_SYM = 1
    ENTROPY_ASYM = 2
    ENTROPY_SYM = 3
    PERCENTILE_ASYM = 4
    PERCENTILE_SYM = 5
    MSE_ASYM = 6
    MSE_SYM = 7
    SQNR_ASYM = 8
    SQNR_SYM = 9

    @property
    def family(self) -> str:
        return self.name.rsplit("_", 1)[0]

    @property
    def symmetric(self) -> bool:
        return self.name.endswith("_SYM")


def float_tensors(model: onnx.ModelProto) -> list[str]:
    """Graph inputs and node outputs of float type, in graph order."""
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    inits = {i.name for i in model.graph.initializer}
    names = [vi.name for vi in model.graph.input if vi.name not in inits]
    names += [o for n in model.graph.node for o in n.output if o]
    return [n for n in names if types.get(n) == onnx.TensorProto.FLOAT]


class Calibrator:
    """Collect per-tensor statistics over samples; ``compute_range`` gives ``{name: (min, max)}``.

    Every float tensor (graph inputs and node outputs) gets one observer of the method's family
    (``_list.OBSERVERS``); the ``_SYM`` members build it with ``symmetric=True``. Observers keep
    fixed-size summaries, so memory does not grow with the number of samples.

    Args:
        model: a float ONNX model (``onnx.ModelProto`` or its bytes), ideally optimised.
        calibration_method: one of the ten :class:`CalibrationMethod` members.
        percentage: the percentile kept by PERCENTILE methods (``0 < p <= 100``).
    """

    def __init__(self, model: onnx.ModelProto | bytes, calibration_method: CalibrationMethod, *,
                 percentage: float = 99.99) -> None:
        if isinstance(model, (bytes, bytearray)):
            model = onnx.load_from_string(bytes(model))
        method = CalibrationMethod(calibration_method)
        observer = OBSERVERS.get(method.family)
        if observer is None:
            raise CalibrationError(f"calibration method {method.name} is not available yet; "
                                   f"available: {', '.join(m.name for m in CalibrationMethod if m.family in OBSERVERS)}")
        if not 0 < percentage <= 100:
            raise CalibrationError(f"percentage must be in (0, 100], got {percentage!r}")
        self.method = method
        self.percentage = percentage
        self.names = float_tensors(model)
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        existing = {o.name for o in probe.graph.output}
        for name in self.names:
            if name not in existing:
                probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        self._session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._observers: dict[str, Any] = {
            n: observer(symmetric=method.symmetric, percentage=percentage) for n in self.names}
        self.samples = 0

    def collect_data(self, calibration_dataset: Iterable[Sequence[np.ndarray]], *, progress: bool = True) -> None:
        """Feed samples (each a list of input arrays in graph-input order); callable repeatedly.

        Shows a transient rich progress bar on stderr when it is a terminal (``progress=False``
        turns it off).
        """
        total = len(calibration_dataset) if hasattr(calibration_dataset, "__len__") else None
        with _progress_bar(progress, f"calibrating ({self.method.name})", total) as advance:
            for sample in calibration_dataset:
                self._collect_one(sample)
                advance()

    def _collect_one(self, sample: Sequence[np.ndarray] | np.ndarray) -> None:
        arrays = [sample] if isinstance(sample, np.ndarray) else list(sample)
        if len(arrays) != len(self._inputs):
            raise CalibrationError(f"a calibration sample has {len(arrays)} arrays; the model takes "
                                   f"{len(self._inputs)} ({', '.join(self._inputs)})")
        feeds = dict(zip(self._inputs, arrays))
        try:
            outs = self._session.run(None, feeds)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
            raise CalibrationError(f"running the model on a calibration sample failed: {e}") from None
        values = dict(zip(self._outputs, outs))
        for name, obs in self._observers.items():
            value = values.get(name, feeds.get(name))
            if value is not None:
                obs.update(np.asarray(value, dtype=np.float32))
        self.samples += 1

    def compute_range(self, verbose: bool = False) -> dict[str, tuple[float, float]]:
        """``{tensor: (lo, hi)}`` for every float tensor, ``lo <= 0 <= hi``, finite; repeatable."""
        if self.samples == 0:
            raise CalibrationError("compute_range() before collect_data(): give the calibrator some samples first")
        ranges = {n: obs.range() for n, obs in self._observers.items()}
        if verbose:
            for n, (lo, hi) in ranges.items():
                print(f"{n}: [{lo:.6g}, {hi:.6g}]")
        return ranges


@contextmanager
def _progress_bar(enabled: bool, description: str, total: int | None) -> Iterator[Callable[[], None]]:
    """A transient rich progress bar on stderr, or a no-op when disabled or not on a terminal."""
    if not (enabled and sys.stderr.isatty()):
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn()]
    if total is not None:
        columns.append(TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)
