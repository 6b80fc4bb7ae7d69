"""Compile time of a float model, stage by stage, next to onnxruntime's own static quantisation.

On ResNet-50 v1.5 (``npusim.services.zoo.resnet50()``, ≈4.1 GMAC) with the same calibration samples
(``npusim.services.zoo.sample_inputs``), in the same run:

- npusim's compile path, each stage timed: ``optimize_model`` → ``Calibrator(MIN_MAX_ASYM)``
  (``collect_data`` + ``compute_range``) → ``quantize`` → ``compile`` (partition + cost; the cost
  model's share is timed by wrapping the ``estimate`` the partitioner calls), and the total.
  A histogram method (``PERCENTILE_ASYM`` by default) is timed too, as a second calibration figure
  outside the total;
- onnxruntime's ``quantize_static`` of the same float model: QDQ, per-channel, QInt8 activations and
  weights, ``CalibrationMethod.MinMax``, a ``CalibrationDataReader`` over the same samples. Its
  calibration part (``create_calibrator`` + ``collect_data`` + ``compute_data``) is timed inside that
  very call by wrapping the ``create_calibrator`` it uses (if that hook is missing in this version of
  onnxruntime, its calibrator is run separately on the same data instead). For reference, the same
  calibrator is also run on npusim's optimised graph (the graph npusim calibrates: BatchNorms fused).

The models are built and saved (quantize_static takes a path) outside the timed regions, and both
paths are warmed up once on a tiny model first so that neither pays the other's lazy imports. Each
repeat runs both paths back to back (alternating which goes first); figures are medians.

Goals, reported and not asserted: npusim's total ≤ 30 s on this box, and npusim's calibration no
slower than quantize_static's (ratio ≤ 1).

    python benchmarks/compile_time.py [--samples 8] [--repeats 3] [--histogram-method PERCENTILE_ASYM]
                                      [--smoke] [--json]

``--smoke`` uses MobileNet-V2 and 2 samples, one repeat; ``--json`` prints one JSON object of every
figure as the last line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization import CalibrationMethod as OrtCalibrationMethod
from onnxruntime.quantization.calibrate import create_calibrator
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import npusim.compiler_svc.partition as _partition  # noqa: E402
from npusim.compiler_svc import (  # noqa: E402
    CalibrationMethod,
    Calibrator,
    get_pure_input_names,
    optimize_model,
    quantize,
)
from npusim.compiler_svc import compile as npu_compile  # noqa: E402
from npusim.services import zoo  # noqa: E402

GOAL_TOTAL_S = 30.0
GOAL_CALIBRATION_RATIO = 1.0
# quantize_static's default op_types_to_quantize, which it also passes to create_calibrator
ORT_OP_TYPES = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


# -- onnxruntime ------------------------------------------------------------------------------
class Reader(CalibrationDataReader):
    """The calibration samples as onnxruntime's data reader (input name → array)."""

    def __init__(self, names: Sequence[str], samples: Sequence[Sequence[np.ndarray]]) -> None:
        self._feeds = [dict(zip(names, s)) for s in samples]
        self._it = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def __len__(self) -> int:
        return len(self._feeds)


class CalibrationClock:
    """Wraps the ``create_calibrator`` quantize_static calls, timing the calibrator it makes:
    its creation (graph augmentation, save, session) and its ``collect_data``/``compute_data``
    (re-entrant calls — MinMaxCalibrater.collect_data calls compute_data — count once)."""

    def __init__(self) -> None:
        self.setup_s = 0.0
        self.run_s = 0.0
        self.calls = 0
        self._depth = 0

    def _timed(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.run_s += time.perf_counter() - t0
        return wrapper

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        module = sys.modules[quantize_static.__module__]
        original = getattr(module, "create_calibrator", None)
        if original is None:
            yield
            return

        def create(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            cal = original(*a, **k)
            self.setup_s += time.perf_counter() - t0
            self.calls += 1
            for name in ("collect_data", "compute_data"):
                setattr(cal, name, self._timed(getattr(cal, name)))
            return cal

        module.create_calibrator = create
        try:
            yield
        finally:
            module.create_calibrator = original


def ort_calibrator(path: str, names: Sequence[str], samples: Sequence[Sequence[np.ndarray]],
                   tmp: str) -> tuple[float, float, int]:
    """onnxruntime's MinMax calibrator alone, as quantize_static builds it: (setup s, run s, tensors)."""
    t0 = time.perf_counter()
    cal = create_calibrator(Path(path), ORT_OP_TYPES, augmented_model_path=os.path.join(tmp, "augmented.onnx"),
                            calibrate_method=OrtCalibrationMethod.MinMax, extra_options={})
    t1 = time.perf_counter()
    cal.collect_data(Reader(names, samples))
    ranges = cal.compute_data()
    t2 = time.perf_counter()
    del cal
    return t1 - t0, t2 - t1, len(ranges.data)


def run_ort(path: str, names: Sequence[str], samples: Sequence[Sequence[np.ndarray]], tmp: str,
            optimized_path: str | None) -> dict[str, float]:
    out = os.path.join(tmp, "ort_quantized.onnx")
    clock = CalibrationClock()
    with clock.installed():
        t0 = time.perf_counter()
        quantize_static(path, out, Reader(names, samples), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=OrtCalibrationMethod.MinMax)
        total = time.perf_counter() - t0
    q = onnx.load(out, load_external_data=False)
    f = {"ort_total_s": total,
         "ort_qdq_nodes": float(sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in q.graph.node))}
    if clock.calls == 1:
        f["ort_calibrate_setup_s"], f["ort_calibrate_collect_s"] = clock.setup_s, clock.run_s
        f["ort_calibration_timed_inside"] = 1.0
    else:  # no hook in this onnxruntime: its calibrator, separately, on the same data
        f["ort_calibrate_setup_s"], f["ort_calibrate_collect_s"], _ = ort_calibrator(path, names, samples, tmp)
        f["ort_calibration_timed_inside"] = 0.0
    f["ort_calibrate_s"] = f["ort_calibrate_setup_s"] + f["ort_calibrate_collect_s"]
    if optimized_path is not None:
        setup, run, n = ort_calibrator(optimized_path, names, samples, tmp)
        f["ort_calibrate_on_optimized_s"] = setup + run
        f["ort_calibrated_tensors_on_optimized"] = float(n)
    return f


# -- npusim -----------------------------------------------------------------------------------
class CostClock:
    """Times the cost model inside compile(): wraps the ``estimate`` the partitioner calls."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        original = _partition.estimate

        def estimate(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t0

        _partition.estimate = estimate
        try:
            yield
        finally:
            _partition.estimate = original


def run_npusim(model: onnx.ModelProto, samples: Sequence[Sequence[np.ndarray]],
               histogram_method: CalibrationMethod) -> tuple[dict[str, float], onnx.ModelProto]:
    f: dict[str, float] = {}
    cost = CostClock()
    t_start = time.perf_counter()
    optimized = optimize_model(model)
    t1 = time.perf_counter()
    cal = Calibrator(optimized, CalibrationMethod.MIN_MAX_ASYM)
    t2 = time.perf_counter()
    cal.collect_data(samples, progress=False)
    t3 = time.perf_counter()
    ranges = cal.compute_range()
    t4 = time.perf_counter()
    qgraph = quantize(optimized, ranges)
    t5 = time.perf_counter()
    with cost.installed():
        program = npu_compile(qgraph)
    t_end = time.perf_counter()
    del cal
    f["optimize_s"] = t1 - t_start
    f["calibrate_setup_s"] = t2 - t1
    f["calibrate_collect_s"] = t3 - t2
    f["calibrate_range_s"] = t4 - t3
    f["calibrate_s"] = t4 - t1
    f["quantize_s"] = t5 - t4
    f["compile_s"] = t_end - t5
    f["compile_cost_s"] = cost.seconds
    f["compile_partition_s"] = f["compile_s"] - cost.seconds
    f["total_s"] = t_end - t_start
    f["calibrated_tensors"] = float(len(ranges))
    f["npu_stages"] = float(len(program.stages))
    f["npu_estimate_us"] = float(program.estimate.get("npu_ns", 0.0)) / 1e3

    t0 = time.perf_counter()  # the second calibration figure, outside the total
    hist = Calibrator(optimized, histogram_method)
    hist.collect_data(samples, progress=False)
    hist.compute_range()
    f["calibrate_hist_s"] = time.perf_counter() - t0
    del hist
    return f, optimized


# -- the run ----------------------------------------------------------------------------------
class _QuietOrtHints(logging.Filter):
    """quantize_static logs on the root logger, per call: a hint to pre-process the model (twice),
    and, per BatchNormalization of an unfused model, that per-channel axis 1 does not fit its rank-1
    scale. Neither changes what is timed; both would drown the table."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "pre-process" not in msg and "is out-of-range for weight" not in msg


def warm_up(tmp: str, histogram_method: CalibrationMethod) -> None:
    """Both paths once on a tiny model, so neither pays first-call imports inside a timed region."""
    model = zoo.small_cnn()
    samples = zoo.sample_inputs(model, 1)
    path = os.path.join(tmp, "warmup.onnx")
    onnx.save(model, path)
    _, optimized = run_npusim(model, samples, histogram_method)
    opt_path = os.path.join(tmp, "warmup_optimized.onnx")
    onnx.save(optimized, opt_path)
    run_ort(path, get_pure_input_names(model), samples, tmp, opt_path)


def measure(model_name: str, n_samples: int, repeats: int, histogram_method: CalibrationMethod) -> dict[str, Any]:
    build = zoo.MODELS[model_name]
    t0 = time.perf_counter()
    model = build()
    build_s = time.perf_counter() - t0
    samples = zoo.sample_inputs(model, n_samples)
    names = get_pure_input_names(model)
    tmp = tempfile.mkdtemp(prefix="npusim-b-", dir="/tmp")
    runs: list[dict[str, float]] = []
    try:
        warm_up(tmp, histogram_method)
        path = os.path.join(tmp, f"{model_name}.onnx")
        onnx.save(model, path)
        opt_path = os.path.join(tmp, f"{model_name}_optimized.onnx")
        onnx.save(optimize_model(model), opt_path)
        for r in range(repeats):
            f: dict[str, float] = {}
            order = ("npusim", "ort") if r % 2 == 0 else ("ort", "npusim")
            for which in order:
                if which == "npusim":
                    f.update(run_npusim(model, samples, histogram_method)[0])
                else:
                    f.update(run_ort(path, names, samples, tmp, opt_path))
            runs.append(f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    figures = {k: float(statistics.median(run[k] for run in runs)) for k in runs[0]}
    figures["ort_rest_s"] = figures["ort_total_s"] - figures["ort_calibrate_s"]
    figures["calibrate_ratio"] = figures["calibrate_s"] / figures["ort_calibrate_s"]
    figures["calibrate_hist_ratio"] = figures["calibrate_hist_s"] / figures["ort_calibrate_s"]
    figures["calibrate_ratio_same_graph"] = figures["calibrate_s"] / figures["ort_calibrate_on_optimized_s"]
    figures["total_ratio"] = figures["total_s"] / figures["ort_total_s"]
    figures["goal_total_s"] = GOAL_TOTAL_S
    figures["goal_total_met"] = figures["total_s"] <= GOAL_TOTAL_S
    figures["goal_calibrate_ratio"] = GOAL_CALIBRATION_RATIO
    figures["goal_calibrate_met"] = figures["calibrate_ratio"] <= GOAL_CALIBRATION_RATIO
    figures["total_s_min"] = min(run["total_s"] for run in runs)
    figures["total_s_max"] = max(run["total_s"] for run in runs)
    figures["ort_total_s_min"] = min(run["ort_total_s"] for run in runs)
    figures["ort_total_s_max"] = max(run["ort_total_s"] for run in runs)
    for k in ("calibrated_tensors", "npu_stages", "ort_qdq_nodes", "ort_calibrated_tensors_on_optimized",
              "ort_calibration_timed_inside"):
        figures[k] = int(figures[k])
    figures.update(model=model_name, gmac=zoo.macs(model) / 1e9, params_m=zoo.params(model) / 1e6,
                   samples=n_samples, repeats=repeats, histogram_method=histogram_method.name,
                   model_build_s=build_s, cpus=os.cpu_count())
    return figures


def report(f: dict[str, Any]) -> None:
    hist = f["histogram_method"]
    inside = "timed inside quantize_static" if f["ort_calibration_timed_inside"] else "run separately"
    rows: list[tuple[str, float | None, str]] = [
        ("npusim", None, ""),
        ("  optimize_model", f["optimize_s"], ""),
        (f"  calibrate MIN_MAX_ASYM, {f['samples']} samples", f["calibrate_s"], ""),
        ("    Calibrator() (probe model + session)", f["calibrate_setup_s"], ""),
        ("    collect_data", f["calibrate_collect_s"], ""),
        ("    compute_range", f["calibrate_range_s"], ""),
        ("  quantize", f["quantize_s"], ""),
        ("  compile (partition + cost)", f["compile_s"], ""),
        ("    partition (incl. load)", f["compile_partition_s"], ""),
        ("    cost model", f["compile_cost_s"], ""),
        ("  total", f["total_s"], f"min {f['total_s_min']:.2f}, max {f['total_s_max']:.2f}"),
        (f"  calibrate {hist} (not in the total)", f["calibrate_hist_s"], ""),
        ("onnxruntime quantize_static (QDQ, per-channel, QInt8/QInt8, MinMax)", None, ""),
        (f"  calibration ({inside})", f["ort_calibrate_s"], ""),
        ("    create_calibrator (augment, save, session)", f["ort_calibrate_setup_s"], ""),
        ("    collect_data + compute_data", f["ort_calibrate_collect_s"], ""),
        ("  the rest (load + shape inference, QDQ quantiser, save)", f["ort_rest_s"], ""),
        ("  total", f["ort_total_s"], f"min {f['ort_total_s_min']:.2f}, max {f['ort_total_s_max']:.2f}"),
        ("  its calibrator on npusim's optimised graph", f["ort_calibrate_on_optimized_s"],
         f"{f['ort_calibrated_tensors_on_optimized']} tensors"),
    ]
    print(f"{f['model']} ({f['gmac']:.2f} GMAC, {f['params_m']:.1f} M params; built in {f['model_build_s']:.1f} s, "
          f"not timed), {f['samples']} calibration samples, {f['cpus']} CPUs")
    print(f"each figure is its median over {f['repeats']} run(s), so parts need not add up exactly")
    print(f"npusim calibrates {f['calibrated_tensors']} tensors of the optimised graph; the program has "
          f"{f['npu_stages']} NPU stage(s), {f['npu_estimate_us']:.0f} µs estimated")
    print()
    print(f"{'stage':<62} {'seconds':>8}")
    for label, v, note in rows:
        if v is None:
            print(label)
        else:
            print(f"{label:<62} {v:>8.2f}  {note}".rstrip())
    print()
    print("ratios (npusim / onnxruntime)")
    ratios = (("  calibration MIN_MAX_ASYM / quantize_static's calibration", f["calibrate_ratio"]),
              (f"  calibration {hist} / quantize_static's calibration", f["calibrate_hist_ratio"]),
              ("  calibration MIN_MAX_ASYM / its calibrator on the same graph", f["calibrate_ratio_same_graph"]),
              ("  total / quantize_static's total", f["total_ratio"]))
    for label, v in ratios:
        print(f"{label:<62} {v:>7.2f}×")
    print()
    print("goals (reported, not asserted)")
    print(f"  npusim total ≤ {GOAL_TOTAL_S:.0f} s: {f['total_s']:.2f} s — "
          f"{'met' if f['goal_total_met'] else 'NOT met'}")
    print(f"  npusim calibration no slower than quantize_static's: {f['calibrate_ratio']:.2f}× — "
          f"{'met' if f['goal_calibrate_met'] else 'NOT met'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50", choices=sorted(zoo.MODELS))
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--histogram-method", default="PERCENTILE_ASYM",
                    choices=[m.name for m in CalibrationMethod if m.family != "MIN_MAX"])
    ap.add_argument("--smoke", action="store_true", help="MobileNet-V2, 2 samples, one run: check that it runs")
    ap.add_argument("--json", action="store_true", help="print one JSON object of every figure")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.samples, args.repeats = "mobilenet_v2", 2, 1
    if args.samples < 1 or args.repeats < 1:
        ap.error("--samples and --repeats must be at least 1")
    logging.getLogger().addFilter(_QuietOrtHints())
    figures = measure(args.model, args.samples, args.repeats, CalibrationMethod[args.histogram_method])
    if args.json:
        print(json.dumps(figures))
        return
    report(figures)


if __name__ == "__main__":
    main()
