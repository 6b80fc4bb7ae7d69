"""Fidelity of the timing model: the fit on ResNet-50, its residuals, and what it predicts.

The timing model (docs/timing-model.md) has two free parameters (``npusim.services.hw.TimingParams``):
the rate a slice streams operands in a fold's steady state (``stream_efficiency``) and the
runtime's per-query overhead on the host (``runtime_overhead_ns``). Everything else is a
constant of the spec sheet or another cited source. research/hardware.md publishes three
ResNet-50 v1.5 figures, measured end to end by the MLPerf harness (runtime + DMA + device, no
host operator in the timed path); the fit uses two and predicts the third:

- fitted:    Offline, ``pe0`` + ``pe1``, batch 8: 2,758.44 samples/s (device-bound: it pins the
             array's efficiency, the runtime overhead hidden by the harness's workers);
- fitted:    SingleStream, fused ``pe0-1``, batch 1: p50 711.8 µs (then pins the runtime overhead);
- predicted: MultiStream, fused ``pe0-1``, 8 samples per query: p50 3.912 ms.

MNIST's NPU time (≈ 10.9 µs in the SDK's profile) is a prediction too. The predictions come
from ``npusim.compiler_svc.estimate.estimate_program`` — the engine the daemon schedules with — on
the programs ``compile()`` makes. Also here, all without the held-out figures:

- microbenchmarks: single Conv/GEMM layers, compiled, against SCALE-Sim's weight-stationary
  fold timing (fill + drain + folds) in closed form from each layer's declared shape; the
  closed form deals the folds over the slices by the same search as the engine, so agreement
  checks the path from ONNX to the array, not the array model itself;
- a roofline check: no operator of any zoo model is faster than its compute or DRAM bound;
- sweeps over batch and PE mode for several zoo models, with the trend each shows.

    python benchmarks/fidelity.py [--fit] [--check] [--smoke] [--json]

``--fit`` solves for the parameters and writes ``services/timing.json`` (plain config the
daemon and the compiler read); ``--check`` fits and fails (exit 1) when ``services/timing.json``
differs from what the code fits. Without either, the current parameters are evaluated and
``docs/fidelity.md`` (and ``docs/fidelity.png``, with matplotlib) are written. ``--smoke``
evaluates the ResNet-50 figures and MNIST only and writes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from npusim.compiler_svc import CalibrationMethod, Calibrator, compile, optimize_model, quantize  # noqa: E402
from npusim.compiler_svc.estimate import estimate_program  # noqa: E402
from npusim.services import zoo  # noqa: E402
from npusim.services.cost import recost_stage  # noqa: E402
from npusim.services.hw import FITTED, WARBOY, TimingParams, target, timing_params  # noqa: E402
from npusim.services.program import Program  # noqa: E402

PUBLISHED = {"fused_latency_us": 711.8, "offline_per_s": 2758.44, "multistream_us": 3912.0, "mnist_npu_us": 10.9}
FIT_ON = ("offline_per_s", "fused_latency_us")
PREDICTED = ("multistream_us", "mnist_npu_us")
LABELS = {
    "fused_latency_us": "ResNet-50 SingleStream p50, fused pe0-1, batch 1",
    "offline_per_s": "ResNet-50 Offline, pe0+pe1, batch 8",
    "multistream_us": "ResNet-50 MultiStream p50, fused pe0-1, 8 per query",
    "mnist_npu_us": "MNIST NPU time (H2D + execution + D2H), fused pe0-1",
}
MODES = {"pe0": ("warboy", "pe0"), "pe0-1": ("warboy-2pe", "pe0-1"), "pe0+pe1": ("warboy", "pe0+pe1")}
SWEEP_MODELS = ("resnet50", "mobilenet_v1", "mobilenet_v2", "ssd_mobilenet_v1", "yolov5n_like", "yolox_like", "mnist")
HARNESS = {"remove_unlower": True}
"""The calibration runs take the argmax on the NPU's lowered output (research/hardware.md)."""
SWEEP_BATCHES = (1, 2, 4, 8, 16)
TOLERANCE = 1e-6  # --check: relative difference allowed between timing.json and a fresh fit


# -- programs -------------------------------------------------------------------------------------
def quantised(name: str) -> bytes:
    m = optimize_model(zoo.build(name))
    cal = Calibrator(m, CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data(zoo.sample_inputs(m, 1), progress=False)
    return quantize(m, cal.compute_range())


def programs(name: str, batches: tuple[int, ...], config: dict[str, Any] | None = None) -> dict[tuple[str, int], Program]:
    q = quantised(name)
    return {(t, b): compile(q, target_npu=t, batch_size=b, compiler_config=config)
            for t in ("warboy", "warboy-2pe") for b in batches}


def mode_figures(program: Program, mode: str, params: TimingParams) -> dict[str, Any]:
    return estimate_program(program, params=params).modes[mode]


# -- the fit --------------------------------------------------------------------------------------
def figures(resnet: dict[tuple[str, int], Program], mnist: Program, params: TimingParams) -> dict[str, float]:
    """The four published figures as npusim predicts them with ``params``."""
    fused1 = mode_figures(resnet[("warboy-2pe", 1)], "pe0-1", params)
    fused8 = mode_figures(resnet[("warboy-2pe", 8)], "pe0-1", params)
    pair8 = mode_figures(resnet[("warboy", 8)], "pe0+pe1", params)
    return {"fused_latency_us": fused1["latency_ns"] / 1e3, "offline_per_s": pair8["throughput_per_s"],
            "multistream_us": fused8["latency_ns"] / 1e3,
            "mnist_npu_us": mode_figures(mnist, "pe0-1", params)["device_latency_ns"] / 1e3}


def fit(resnet: dict[tuple[str, int], Program]) -> TimingParams:
    """Offline throughput is device-bound and rises with the stream efficiency: bisect it. The
    single-stream latency less its device path is then the runtime's per-query overhead."""
    pair8 = resnet[("warboy", 8)]
    lo, hi = 0.01, 1.0
    if mode_figures(pair8, "pe0+pe1", TimingParams(hi, 0.0))["throughput_per_s"] < PUBLISHED["offline_per_s"]:
        raise SystemExit("even a slice streaming every cycle is slower than the published Offline figure: "
                         "the cost model's structure, not its parameters, is off")
    for _ in range(60):
        mid = (lo + hi) / 2
        rate = mode_figures(pair8, "pe0+pe1", TimingParams(mid, 0.0))["throughput_per_s"]
        lo, hi = (mid, hi) if rate < PUBLISHED["offline_per_s"] else (lo, mid)
    efficiency = (lo + hi) / 2
    device = mode_figures(resnet[("warboy-2pe", 1)], "pe0-1", TimingParams(efficiency, 0.0))["latency_ns"]
    runtime = PUBLISHED["fused_latency_us"] * 1e3 - device
    if runtime < 0:
        raise SystemExit(f"the device path alone ({device / 1e3:.1f} µs) exceeds the published single-stream "
                         "latency: no runtime overhead fits")
    return TimingParams(stream_efficiency=efficiency, runtime_overhead_ns=runtime)


def fit_record(params: TimingParams, figs: dict[str, float]) -> dict[str, Any]:
    return {
        "params": dataclasses.asdict(params), "fitted_on": "ResNet-50 v1.5 (services.zoo.resnet50)",
        "fit": {LABELS[k]: PUBLISHED[k] for k in FIT_ON},
        "predicted": {LABELS[k]: {"published": PUBLISHED[k], "npusim": round(figs[k], 6)} for k in PREDICTED},
        "residuals": {LABELS[k]: round(figs[k] / PUBLISHED[k] - 1, 9) for k in PUBLISHED},
        "by": "benchmarks/fidelity.py --fit",
    }


# -- microbenchmarks: single layers against SCALE-Sim's analytical model ---------------------------
LAYERS: dict[str, dict[str, Any]] = {
    "conv3x3 64→64 @56×56": {"cin": 64, "cout": 64, "k": 3, "hw": 56},
    "conv1x1 256→64 @56×56": {"cin": 256, "cout": 64, "k": 1, "hw": 56},
    "conv3x3 512→512 @7×7": {"cin": 512, "cout": 512, "k": 3, "hw": 7},
    "conv3x3/2 3→32 @224×224": {"cin": 3, "cout": 32, "k": 3, "hw": 224, "stride": 2},
    "depthwise3x3 ×256 @28×28": {"cin": 256, "cout": 256, "k": 3, "hw": 28, "group": 256},
    "gemm 2048→1000": {"gemm": (2048, 1000)},
}


def _layer_model(spec: dict[str, Any]) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    if "gemm" in spec:
        k, n = spec["gemm"]
        w = helper.make_tensor("w", TensorProto.FLOAT, (n, k), rng.normal(0, 0.05, (n, k)).astype(np.float32).ravel())
        node = helper.make_node("Gemm", ["x", "w"], ["y"], transB=1, name="layer")
        graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], [w])
    else:
        cin, cout, k, size = spec["cin"], spec["cout"], spec["k"], spec["hw"]
        group, stride = spec.get("group", 1), spec.get("stride", 1)
        shape = (cout, cin // group, k, k)
        w = helper.make_tensor("w", TensorProto.FLOAT, shape, rng.normal(0, 0.1, shape).astype(np.float32).ravel())
        node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[k, k], pads=[k // 2] * 4,
                                strides=[stride, stride], group=group, name="layer")
        out = (size + 2 * (k // 2) - k) // stride + 1
        graph = helper.make_graph([node], "conv",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, size, size])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, out, out])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def scalesim_ws(m: int, n: int, k: int, arrays: int, groups: int = 1, rows: int = 4, cols: int = 32) -> int:
    """SCALE-Sim's analytical runtime of a weight-stationary GEMM (M×K by K×N, ``groups`` times)
    on ``arrays`` arrays of ``rows``×``cols`` (Samajdar et al., ISPASS 2020): a fold maps ``rows``
    of the reduction and ``cols`` filters and streams T operand rows in ``2·rows + cols + T − 2``
    cycles; scale-out deals the column folds, and slices of M, over the arrays evenly."""
    col_folds, row_folds = groups * math.ceil(n / cols), math.ceil(k / rows)
    best = None
    for parts in range(1, min(arrays, m) + 1):  # arrays sharing one column fold split its M rows
        cycles = math.ceil(col_folds * parts / arrays) * row_folds * (2 * rows + cols + math.ceil(m / parts) - 2)
        best = cycles if best is None else min(best, cycles)
    return best  # type: ignore[return-value]


def row_broadcast(chunks: int, filters: int, k: int, arrays: int, rows: int = 4, cols: int = 32) -> int:
    """The same fold timing with the columns along a lowered row (32 neighbouring pixels) and one
    filter broadcast to them: a fold streams ``chunks`` row pieces (or a share of them)."""
    best = None
    for parts in range(1, min(arrays, chunks) + 1):
        cycles = (math.ceil(filters * parts / arrays) * math.ceil(k / rows)
                  * (2 * rows + cols + math.ceil(chunks / parts) - 2))
        best = cycles if best is None else min(best, cycles)
    return best  # type: ignore[return-value]


def _analytic(spec: dict[str, Any], arrays: int) -> int:
    """The layer in closed form from its declared shape: the better of the two column mappings,
    a Conv beyond 128 groups as pieces of at most 128 groups run one after another."""
    if "gemm" in spec:
        k, n = spec["gemm"]
        return min(scalesim_ws(1, n, k, arrays), row_broadcast(1, n, k, arrays))
    size, stride, kk = spec["hw"], spec.get("stride", 1), spec["k"]
    out = (size + 2 * (kk // 2) - kk) // stride + 1
    group = spec.get("group", 1)
    depth, per_group = spec["cin"] // group * kk * kk, spec["cout"] // group
    pieces = math.ceil(group / 128)
    each = math.ceil(group / pieces)
    return pieces * min(scalesim_ws(out * out, per_group, depth, arrays, groups=each),
                        row_broadcast(out * math.ceil(out / 32), each * per_group, depth, arrays))


def microbenchmarks() -> list[dict[str, Any]]:
    ideal = TimingParams(stream_efficiency=1.0, runtime_overhead_ns=0.0)  # the array alone, at its peak
    rows = []
    for name, spec in LAYERS.items():
        q = _quantise_one(_layer_model(spec))
        for tgt in ("warboy", "warboy-2pe"):
            program = compile(q, target_npu=tgt)
            stage = program.stages[0]
            ops, _ = recost_stage(stage, tgt, WARBOY, ideal)
            layer = next(o for o in ops if o.get("macs"))
            analytic = _analytic(spec, target(tgt).slices)
            rows.append({"layer": name, "target": tgt, "npusim_cycles": layer["compute_cycles"],
                         "scalesim_cycles": analytic, "ratio": layer["compute_cycles"] / analytic,
                         "mapping": layer.get("mapping"), "pieces": layer.get("pieces", 1)})
    return rows


def _quantise_one(model: onnx.ModelProto) -> bytes:
    m = optimize_model(model)
    cal = Calibrator(m, CalibrationMethod.MIN_MAX_ASYM)
    rng = np.random.default_rng(0)
    shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    cal.collect_data([[rng.standard_normal(shape).astype(np.float32)] for _ in range(2)], progress=False)
    return quantize(m, cal.compute_range())


# -- roofline -------------------------------------------------------------------------------------
def roofline(models: tuple[str, ...]) -> dict[str, Any]:
    """Every costed operator of every model and target against its two bounds."""
    checked, below = 0, []
    for name in models:
        q = quantised(name)
        for tgt in ("warboy", "warboy-2pe"):
            t = target(tgt)
            for stage in compile(q, target_npu=tgt).stages:
                for o in stage.ops:
                    if not o.get("cycles"):
                        continue
                    checked += 1
                    compute_bound = o.get("macs", 0) / t.macs_per_cycle
                    dram_bound = o.get("dram_bytes", 0) / (WARBOY.dram_bytes_per_s / WARBOY.clock_hz)
                    if o["cycles"] < max(compute_bound, dram_bound) * (1 - 1e-9):
                        below.append(f"{name}/{tgt}/{o['name']}")
    return {"operators_checked": checked, "faster_than_a_bound": below}


# -- sweeps ---------------------------------------------------------------------------------------
def sweep(name: str, params: TimingParams, batches: tuple[int, ...]) -> dict[int, dict[str, dict[str, Any]]]:
    progs = programs(name, batches)
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for b in batches:
        row = {}
        for mode, (tgt, key) in MODES.items():
            est = estimate_program(progs[(tgt, b)], params=params)
            m = est.modes[key]
            row[mode] = {"latency_us": (m["latency_ns"] or math.nan) / 1e3,
                         "device_us": (m["device_latency_ns"] or math.nan) / 1e3,
                         "throughput_per_s": m["throughput_per_s"],
                         "weights_resident": all(s["estimate"]["weights_resident"] for s in est.stages)}
        out[b] = row
    return out


def trend(name: str, rows: dict[int, dict[str, dict[str, Any]]]) -> str:
    """A sentence on what the sweep shows, and the physics behind it."""
    b0, b1 = min(rows), max(rows)
    speed0 = rows[b0]["pe0"]["device_us"] / rows[b0]["pe0-1"]["device_us"]
    speed1 = rows[b1]["pe0"]["device_us"] / rows[b1]["pe0-1"]["device_us"]
    gain = rows[b1]["pe0+pe1"]["throughput_per_s"] / rows[b0]["pe0+pe1"]["throughput_per_s"]
    latency_gain = (rows[b0]["pe0-1"]["latency_us"] / b0) / (rows[b1]["pe0-1"]["latency_us"] / b1)
    pair_vs_fused = rows[b1]["pe0+pe1"]["throughput_per_s"] / rows[b1]["pe0-1"]["throughput_per_s"]
    single_streams = not rows[b0]["pe0"]["weights_resident"] and rows[b0]["pe0-1"]["weights_resident"]
    if single_streams:
        why = ("its weights stay in the fused pair's 32 MiB but stream from DRAM on one PE's 16 MiB, "
               "so one PE pays DRAM time on top of its halved array")
    elif speed0 < 1.9:
        why = ("each slice's share of a layer halves on the fused pair but each fold still fills and "
               "drains the array, and small layers cannot use all 128 slices")
    else:
        why = "its layers are large enough that halving each slice's share halves the time"
    return (f"**{name}**: fused pe0-1 is {speed0:.2f}× faster than one PE at batch {b0} and {speed1:.2f}× at "
            f"batch {b1}: {why}. Batch {b1} gives the device {gain:.2f}× the samples/s of batch {b0} — a batch "
            f"repeats one image's schedule and amortises only what a job pays once (DMA latency, set-up, weights "
            f"streamed once per sub-batch) — but {latency_gain:.1f}× per sample end to end, where each query also "
            f"pays the runtime's overhead. At batch {b1} "
            + ("two separate PEs out-run the fused pair: it is less than twice as fast as one PE"
               if pair_vs_fused > 1 else "the fused pair out-runs two separate PEs: one PE is more than twice as slow")
            + " (the seed's rule).")


# -- output ---------------------------------------------------------------------------------------
def write_docs(report: dict[str, Any]) -> None:
    p, f = report["params"], report["figures"]
    lines = [
        "# Timing model fidelity (generated by `python benchmarks/fidelity.py`)",
        "",
        f"Parameters (fitted on ResNet-50 only): stream_efficiency = {p['stream_efficiency']:.4f}, "
        f"runtime_overhead_ns = {p['runtime_overhead_ns']:,.0f}.",
        "",
        "| figure | published | npusim | error | role |",
        "|---|---|---|---|---|",
    ]
    for k in PUBLISHED:
        unit = "/s" if k.endswith("per_s") else " µs"
        role = "fitted" if k in FIT_ON else "prediction"
        lines.append(f"| {LABELS[k]} | {PUBLISHED[k]:,.1f}{unit} | {f[k]:,.1f}{unit} | "
                     f"{f[k] / PUBLISHED[k] - 1:+.1%} | {role} |")
    lines += ["", "## Single layers against SCALE-Sim's analytical model (stream efficiency 1)", "",
              "Each layer is built as a float ONNX model, quantised, partitioned and priced by the engine; the "
              "closed form is SCALE-Sim's weight-stationary fold timing (fill + drain + folds, scale-out over the "
              "slices) computed from the layer's declared shape, dealing the folds over the slices by the same "
              "search as the engine. Agreement checks the path from ONNX to the array — the rules' GEMM "
              "dimensions, the group split, that nothing else (fusion, memory) adds cycles to a compute-bound "
              "layer; it does not test the array model itself, and it is not a measurement of the chip.", "",
              "| layer | target | npusim cycles | SCALE-Sim cycles | ratio | mapping |", "|---|---|---|---|---|---|"]
    for r in report["microbenchmarks"]:
        split = f", {r['pieces']} pieces" if r["pieces"] > 1 else ""
        lines.append(f"| {r['layer']} | {r['target']} | {r['npusim_cycles']:,.0f} | {r['scalesim_cycles']:,.0f} | "
                     f"{r['ratio']:.3f} | {r['mapping']}{split} |")
    rf = report["roofline"]
    lines += ["", f"Roofline: {rf['operators_checked']} operators of {', '.join(SWEEP_MODELS)} checked on both "
              f"targets; {len(rf['faster_than_a_bound'])} faster than their compute or DRAM bound.", "",
              "## Sweeps", "",
              "Latency is end to end on the `mlperf` host profile (runtime overhead + DMA + device), one query "
              "at a time; throughput keeps every PE of the mode busy.", ""]
    for name, rows in report["sweeps"].items():
        lines += [f"### {name}", "", "| batch | pe0 µs | pe0-1 µs | pe0 /s | pe0-1 /s | pe0+pe1 /s |",
                  "|---|---|---|---|---|---|"]
        for b, row in rows.items():
            lines.append(f"| {b} | {row['pe0']['latency_us']:,.1f} | {row['pe0-1']['latency_us']:,.1f} | "
                         f"{row['pe0']['throughput_per_s']:,.0f} | {row['pe0-1']['throughput_per_s']:,.0f} | "
                         f"{row['pe0+pe1']['throughput_per_s']:,.0f} |")
        lines += ["", report["trends"][name], ""]
    (ROOT / "docs" / "fidelity.md").write_text("\n".join(lines).rstrip() + "\n")
    _plot(report)


def _plot(report: dict[str, Any]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no docs/fidelity.png", file=sys.stderr)
        return
    rows = report["sweeps"]["resnet50"]
    batches = list(rows)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in ("pe0", "pe0-1"):
        ax1.plot(batches, [rows[b][mode]["latency_us"] for b in batches], marker="o", label=mode)
    for mode in MODES:
        ax2.plot(batches, [rows[b][mode]["throughput_per_s"] for b in batches], marker="o", label=mode)
    ax1.scatter([1], [PUBLISHED["fused_latency_us"]], marker="*", s=150, color="k", label="SingleStream (fitted)")
    ax1.scatter([8], [PUBLISHED["multistream_us"]], marker="P", s=120, color="r", label="MultiStream (predicted)")
    ax2.scatter([8], [PUBLISHED["offline_per_s"]], marker="*", s=150, color="k", label="Offline (fitted)")
    for ax, title in ((ax1, "latency, end to end (µs)"), (ax2, "throughput (samples/s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_title(f"ResNet-50: {title}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "fidelity.png", dpi=100)


def _print(report: dict[str, Any]) -> None:
    p, f = report["params"], report["figures"]
    print(f"parameters: stream_efficiency {p['stream_efficiency']:.4f}, runtime overhead "
          f"{p['runtime_overhead_ns'] / 1e3:.1f} µs{' (fitted now)' if report['fitted_now'] else ''}")
    for k in PUBLISHED:
        role = "fitted" if k in FIT_ON else "predicted"
        print(f"{LABELS[k]:55s} {f[k]:10.1f}  published {PUBLISHED[k]:8.1f}  {f[k] / PUBLISHED[k] - 1:+7.2%}  {role}")
    for r in report.get("microbenchmarks", []):
        print(f"  {r['layer']:28s} {r['target']:10s} npusim {r['npusim_cycles']:10,.0f}  SCALE-Sim "
              f"{r['scalesim_cycles']:10,.0f}  ratio {r['ratio']:.3f}")
    if "roofline" in report:
        rf = report["roofline"]
        print(f"roofline: {rf['operators_checked']} operators, {len(rf['faster_than_a_bound'])} below a bound")
    for name in report.get("trends", {}):
        print(report["trends"][name])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit", action="store_true", help="fit the parameters and write services/timing.json")
    ap.add_argument("--check", action="store_true", help="fail when services/timing.json is not what the code fits")
    ap.add_argument("--smoke", action="store_true", help="the ResNet-50 figures and MNIST only; write nothing")
    ap.add_argument("--json", action="store_true", help="print one JSON object of every figure")
    args = ap.parse_args()
    t0 = time.perf_counter()
    resnet = programs("resnet50", (1, 8), HARNESS)
    mnist = compile(quantised("mnist"), target_npu="warboy-2pe")
    params = timing_params()
    fitted = fit(resnet) if args.fit or args.check else None
    if args.check:
        stored = dataclasses.asdict(params)
        fresh = dataclasses.asdict(fitted)  # type: ignore[arg-type]
        bad = {k: (stored[k], fresh[k]) for k in fresh
               if not math.isclose(stored[k], fresh[k], rel_tol=TOLERANCE, abs_tol=1e-9)}
        if bad:
            print(f"services/timing.json is stale: {bad} (stored, fitted now); run python benchmarks/fidelity.py --fit",
                  file=sys.stderr)
            return 1
    if args.fit:
        params = fitted  # type: ignore[assignment]
    figs = figures(resnet, mnist, params)
    if args.fit:
        FITTED.write_text(json.dumps(fit_record(params, figs), indent=2) + "\n")
        timing_params.cache_clear()
    report: dict[str, Any] = {
        "params": dataclasses.asdict(params), "figures": figs, "fitted_now": bool(args.fit),
        "residuals": {k: figs[k] / PUBLISHED[k] - 1 for k in PUBLISHED},
        # stable keys of earlier versions
        "fused_latency_us": figs["fused_latency_us"],
        "fused_latency_ratio": figs["fused_latency_us"] / PUBLISHED["fused_latency_us"],
        "offline_per_s": figs["offline_per_s"], "offline_ratio": figs["offline_per_s"] / PUBLISHED["offline_per_s"],
        "mnist_npu_us": figs["mnist_npu_us"], "mnist_ratio": figs["mnist_npu_us"] / PUBLISHED["mnist_npu_us"],
        "multistream_us": figs["multistream_us"], "multistream_ratio": figs["multistream_us"] / PUBLISHED["multistream_us"],
    }
    if not args.smoke and not args.check:
        report["microbenchmarks"] = microbenchmarks()
        report["roofline"] = roofline(SWEEP_MODELS)
        report["sweeps"] = {name: sweep(name, params, SWEEP_BATCHES) for name in SWEEP_MODELS}
        report["trends"] = {name: trend(name, rows) for name, rows in report["sweeps"].items()}
        report["sweep"] = {str(b): row for b, row in report["sweeps"]["resnet50"].items()}
        write_docs(report)
    report["seconds"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(report, default=float))
    else:
        _print(report)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
