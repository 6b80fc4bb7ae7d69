"""Fidelity of the timing model: fitted ResNet-50 figures next to the published ones, and sweeps.

The timing model has three free parameters (``services.hw.TimingParams``): the MAC array's
efficiency on a well-filled layer, a per-operator overhead and a per-job overhead. They are
fitted on ResNet-50 v1.5 only (``services.zoo.resnet50()``), to the two published figures of
research/hardware.md:

- SingleStream, fused ``pe0-1``, batch 1: p50 711.8 µs end to end;
- Offline, ``pe0`` + ``pe1`` together, batch 8: 2,758.44 samples/s.

Two figures pin two parameters: the fit solves for the MAC efficiency and the per-operator
overhead, with the per-job overhead held at its prior (2 µs: a doorbell and a completion
interrupt over PCIe); the fit that frees the job overhead instead is shown in
docs/timing-model.md and rejected there. The
predictions come from the same engine the daemon runs (``services.timing``), on the programs
``compile()`` makes. Everything else — the MNIST profile (NPU ≈ 10.9 µs), the fused/single-PE
and batch-size sweeps — is a prediction, not a fit.

    python benchmarks/fidelity.py [--fit] [--smoke] [--json]

``--fit`` solves for the parameters and writes them to ``services/timing.json`` (plain
config the daemon and the compiler read); without it the current parameters are evaluated.
The table goes to ``docs/fidelity.md`` and the plot to ``docs/fidelity.png`` (with matplotlib).
``--smoke`` evaluates batch 1 and 8 only and writes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compiler_svc import (  # noqa: E402
    CalibrationMethod,
    Calibrator,
    compile,
    optimize_model,
    quantize,
)
from compiler_svc.cost import estimate, op_work  # noqa: E402
from compiler_svc.estimate import layout_costs  # noqa: E402
from services import zoo  # noqa: E402
from services.hw import FITTED, TARGETS, TimingParams, timing_params  # noqa: E402
from services.program import Program  # noqa: E402
from services.timing import StageTiming, single_stream, throughput  # noqa: E402

PUBLISHED = {"fused_latency_us": 711.8, "offline_per_s": 2758.44, "mnist_npu_us": 10.9}
MODES = {"pe0": ("warboy", ["pe0"]), "pe0-1": ("warboy-2pe", ["pe0-1"]), "pe0+pe1": ("warboy", ["pe0", "pe1"])}


class Model:
    """A compiled program whose NPU stage can be re-costed under other parameters quickly."""

    def __init__(self, program: Program) -> None:
        if len(program.stages) != 1:
            raise SystemExit(f"expected one NPU stage, got {len(program.stages)}")
        self.stage = program.stages[0]
        self.target = TARGETS[program.target]
        self.graph = onnx.load_from_string(self.stage.graph)
        self.works = op_work(self.graph)
        self.extra = layout_costs(self.stage)

    def timing(self, params: TimingParams) -> StageTiming:
        _, est = estimate(self.graph, self.target, extra=self.extra, params=params, works=self.works)
        return StageTiming.for_stage(self.stage, self.target.hw, estimate=est)


def _quantised(name: str, samples: int) -> bytes:
    m = optimize_model(zoo.build(name))
    cal = Calibrator(m, CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data(zoo.sample_inputs(m, samples), progress=False)
    return quantize(m, cal.compute_range())


def _models(q: bytes, batches: list[int]) -> dict[tuple[str, int], Model]:
    return {(t, b): Model(compile(q, target_npu=t, batch_size=b)) for t in ("warboy", "warboy-2pe") for b in batches}


def predict(models: dict[tuple[str, int], Model], params: TimingParams, batch: int) -> dict[str, dict[str, float]]:
    out = {}
    for mode, (tgt, pes) in MODES.items():
        st = models[(tgt, batch)].timing(params)
        out[mode] = {"latency_us": single_stream(pes[0], st) / 1e3, "throughput_per_s": throughput(pes, st, batch)}
    return out


def _fitted_figures(models: dict[tuple[str, int], Model], p: TimingParams) -> tuple[float, float]:
    lat = single_stream("pe0-1", models[("warboy-2pe", 1)].timing(p)) / 1e3
    thr = throughput(["pe0", "pe1"], models[("warboy", 8)].timing(p), 8)
    return lat, thr


def fit(models: dict[tuple[str, int], Model], prior: TimingParams, free: str = "op_overhead_cycles",
        limit: float = 100_000.0) -> TimingParams:
    """Solve latency(e, x) = 711.8 µs and throughput(e, x) = 2758.44/s for the MAC efficiency e
    and one overhead x (``free``), the other overhead held at its prior.

    For a given x, latency falls monotonically with e: bisect e. Raising x then raises the e
    that keeps the latency, and with it the batch-8 throughput, which pays an overhead once
    per eight images: bisect x."""

    def e_for(x: float) -> float:
        lo, hi = 0.01, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            lat, _ = _fitted_figures(models, dataclasses.replace(prior, mac_efficiency=mid, **{free: x}))
            lo, hi = (lo, mid) if lat < PUBLISHED["fused_latency_us"] else (mid, hi)
        return (lo + hi) / 2

    def gap(x: float) -> tuple[float, TimingParams]:
        p = dataclasses.replace(prior, mac_efficiency=e_for(x), **{free: x})
        return _fitted_figures(models, p)[1] - PUBLISHED["offline_per_s"], p

    lo, hi = 0.0, limit
    g_lo, p_lo = gap(lo)
    if g_lo >= 0:  # even with no job overhead the throughput is reached: best effort at J = 0
        return p_lo
    for _ in range(30):
        mid = (lo + hi) / 2
        g, _ = gap(mid)
        lo, hi = (lo, mid) if g > 0 else (mid, hi)
    return gap((lo + hi) / 2)[1]


def _mnist_npu_us(params: TimingParams) -> float:
    q = _quantised("mnist", 2)
    m = Model(compile(q, target_npu="warboy-2pe", batch_size=1))
    st = m.timing(params)
    return (st.h2d_ns + st.exec_ns + st.d2h_ns) / 1e3


def _write_docs(figures: dict[str, Any], sweep: dict[int, dict[str, dict[str, float]]]) -> None:
    p = figures["params"]
    lines = [
        "# Timing model fidelity (generated by `python benchmarks/fidelity.py`)",
        "",
        f"Parameters: mac_efficiency = {p['mac_efficiency']:.4f}, op_overhead_cycles = "
        f"{p['op_overhead_cycles']:.0f}, job_overhead_ns = {p['job_overhead_ns']:.0f} (fitted on ResNet-50 only).",
        "",
        "| figure | published | npusim | ratio |",
        "|---|---|---|---|",
        f"| ResNet-50 SingleStream p50, fused pe0-1, batch 1 | {PUBLISHED['fused_latency_us']} µs | "
        f"{figures['fused_latency_us']:.1f} µs | {figures['fused_latency_ratio']:.3f} |",
        f"| ResNet-50 Offline, pe0+pe1, batch 8 | {PUBLISHED['offline_per_s']:.0f}/s | "
        f"{figures['offline_per_s']:.0f}/s | {figures['offline_ratio']:.3f} |",
        f"| MNIST NPU time (not fitted) | {PUBLISHED['mnist_npu_us']} µs | {figures['mnist_npu_us']:.1f} µs | "
        f"{figures['mnist_ratio']:.2f} |",
        "",
        "Sweeps (ResNet-50; latency = single stream, throughput = offline with every PE of the mode busy):",
        "",
        "| batch | pe0 latency µs | pe0-1 latency µs | pe0+pe1 latency µs | pe0 /s | pe0-1 /s | pe0+pe1 /s |",
        "|---|---|---|---|---|---|---|",
    ]
    for b, row in sweep.items():
        lines.append(f"| {b} | " + " | ".join(f"{row[m]['latency_us']:.0f}" for m in MODES) + " | "
                     + " | ".join(f"{row[m]['throughput_per_s']:.0f}" for m in MODES) + " |")
    (ROOT / "docs" / "fidelity.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no docs/fidelity.png", file=sys.stderr)
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    batches = list(sweep)
    for m in MODES:
        ax1.plot(batches, [sweep[b][m]["latency_us"] for b in batches], marker="o", label=m)
        ax2.plot(batches, [sweep[b][m]["throughput_per_s"] for b in batches], marker="o", label=m)
    ax1.scatter([1], [PUBLISHED["fused_latency_us"]], marker="*", s=150, color="k", label="published (pe0-1)")
    ax2.scatter([8], [PUBLISHED["offline_per_s"]], marker="*", s=150, color="k", label="published (pe0+pe1)")
    for ax, title in ((ax1, "single-stream latency (µs)"), (ax2, "offline throughput (samples/s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_title(f"ResNet-50: {title}")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "fidelity.png", dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit", action="store_true", help="fit the parameters and write services/timing.json")
    ap.add_argument("--smoke", action="store_true", help="batch 1 and 8 only, write nothing")
    ap.add_argument("--json", action="store_true", help="print one JSON object of every figure")
    args = ap.parse_args()
    t0 = time.perf_counter()
    batches = [1, 8] if args.smoke else [1, 2, 4, 8, 16]
    q = _quantised("resnet50", 1 if args.smoke else 2)
    models = _models(q, batches)
    params = timing_params()
    if args.fit:
        params = fit(models, TimingParams())
        FITTED.write_text(json.dumps({
            "params": dataclasses.asdict(params), "fitted_on": "ResNet-50 v1.5 (services.zoo.resnet50)",
            "targets": {k: PUBLISHED[k] for k in ("fused_latency_us", "offline_per_s")},
            "held": ["job_overhead_ns"], "by": "benchmarks/fidelity.py --fit"}, indent=2) + "\n")
    lat, thr = _fitted_figures(models, params)
    mnist = _mnist_npu_us(params)
    sweep = {b: predict(models, params, b) for b in batches}
    figures: dict[str, Any] = {
        "params": dataclasses.asdict(params),
        "fused_latency_us": lat, "fused_latency_ratio": lat / PUBLISHED["fused_latency_us"],
        "offline_per_s": thr, "offline_ratio": thr / PUBLISHED["offline_per_s"],
        "mnist_npu_us": mnist, "mnist_ratio": mnist / PUBLISHED["mnist_npu_us"],
        "sweep": {str(b): row for b, row in sweep.items()},
        "seconds": time.perf_counter() - t0,
    }
    if not args.smoke:
        _write_docs(figures, sweep)
    if args.json:
        print(json.dumps(figures))
        return
    p = figures["params"]
    print(f"parameters: mac_efficiency {p['mac_efficiency']:.4f}, op_overhead {p['op_overhead_cycles']:.0f} cycles, "
          f"job_overhead {p['job_overhead_ns'] / 1e3:.1f} µs{' (fitted now)' if args.fit else ''}")
    print(f"ResNet-50 fused single-stream: {lat:8.1f} µs  published {PUBLISHED['fused_latency_us']} µs  "
          f"ratio {figures['fused_latency_ratio']:.3f}")
    print(f"ResNet-50 pe0+pe1 offline b8:  {thr:8.0f} /s  published {PUBLISHED['offline_per_s']:.0f} /s  "
          f"ratio {figures['offline_ratio']:.3f}")
    print(f"MNIST NPU time (prediction):   {mnist:8.1f} µs  published {PUBLISHED['mnist_npu_us']} µs  "
          f"ratio {figures['mnist_ratio']:.2f}")
    print(f"{'batch':>5} " + " ".join(f"{m + ' µs':>12}" for m in MODES) + " " + " ".join(f"{m + ' /s':>12}" for m in MODES))
    for b, row in sweep.items():
        print(f"{b:>5} " + " ".join(f"{row[m]['latency_us']:12.0f}" for m in MODES) + " "
              + " ".join(f"{row[m]['throughput_per_s']:12.0f}" for m in MODES))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
