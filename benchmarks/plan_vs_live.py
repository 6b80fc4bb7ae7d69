"""``npusim plan`` against the live system, cell by cell.

For each model, batch, PE mode (``pe0``, ``pe0-1``, ``pe0+pe1``) and worker count, the same
compiled program runs twice:

- live: ``npusim bench``'s engine (throughput workload, ``max(8, 2 × workers)`` in flight)
  against a timing-only daemon at ``--time-scale K``, with the host operators computed for real
  by the worker processes;
- in virtual time: ``plan`` with the same K and ``--host this`` (the host operators timed on
  this machine with the same kernels).

K is chosen per model and batch so that this emulator's own transport (ZeroMQ hops, Python,
copies: about a millisecond a request plus about half a millisecond per MB of tensors moved),
which the chip does not have and ``plan`` does not simulate, is small beside what is being
compared: a probe at K = 1 (one worker, one PE) measures what the live pipeline adds to a
request beyond plan's, and K stretches one request's execution to at least 60 times that, and
to at least ``--device-ms`` (120 ms by default). The two models differ in their CPU/NPU
balance at chip scale: ResNet-50's host operators are a small share of its device time,
the NHWC YOLOX's are larger than it.

Goal: throughput and p50 within ±5% on every cell. The smoke run is one cell on a small model.

    python benchmarks/plan_vs_live.py [--smoke] [--json] [--models resnet50,yolox_like_nhwc]
        [--seconds 4] [--device-ms 120] [--plot docs/plan_vs_live.png]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from npusim.client.bench import BenchConfig, bench  # noqa: E402
from npusim.client.hostcost import measure_steps  # noqa: E402
from npusim.compiler_svc.estimate import compile_programs  # noqa: E402
from npusim.compiler_svc.plan import PlanConfig, plan  # noqa: E402
from npusim.services.program import Program  # noqa: E402
from npusim.services.sim import Pipeline  # noqa: E402
from npusim.services.zoo import build  # noqa: E402

from _stack import Stack  # noqa: E402  (this script's folder is on sys.path)

GOAL = 0.05  # |plan / live - 1|, for throughput and p50
MODES = {"pe0": ("npu0pe0", "warboy"), "pe0-1": ("npu0pe0-1", "warboy-2pe"), "pe0+pe1": ("warboy(1)*2", "warboy")}
PLAN_REQUESTS = 2_000
PROBE_QUERIES = 30
TRANSPORT_SHARE = 1 / 60  # the transport measured at K = 1 is at most this share of the stretched device time


def transport_ms(blob: bytes, batch: int, stack: Stack) -> float:
    """What the live pipeline adds to one request beyond plan's pipeline, measured at time scale 1
    with one worker on one PE: the emulator's transport (it grows with the tensors' bytes)."""
    stack.rescale(1.0)
    lv = live(blob, "npu0pe0", 1, batch, 0.0, PROBE_QUERIES)
    pl = planned(blob, "npu0pe0", 1, batch, 1.0)
    return max(0.5, batch * 1e3 * (1 / lv["throughput_per_s"] - 1 / pl["throughput_per_s"]))


def scale_for(program: Program, device_ms: float) -> float:
    """The time scale that makes one request's execution time about ``device_ms`` (3 significant digits)."""
    npu_ns = Pipeline.of(program, None, runtime_overhead_ns=0).npu_ns
    return float(f"{max(1.0, device_ms * 1e6 / npu_ns):.3g}")


def live(program: bytes, device: str, workers: int, batch: int, seconds: float, queries: int) -> dict[str, Any]:
    r = bench(BenchConfig(program, device=device, workers=workers, batch=batch, workload="throughput",
                          duration_s=seconds, queries=queries))["result"]
    return {"throughput_per_s": r["samples_per_s"], "p50_us": r["latency"]["p50_us"], "queries": r["queries"],
            "cpu_us": r["per_query"]["cpu_us"]}


def planned(program: bytes, device: str, workers: int, batch: int, scale: float) -> dict[str, Any]:
    cfg = PlanConfig(devices=device, workers=(workers,), batch=(batch,), host="this", time_scale=scale,
                     requests=PLAN_REQUESTS)
    c = plan(cfg, program, step_costs=measure_steps)["configs"][0]
    return {"throughput_per_s": c["throughput_per_s"], "p50_us": c["latency_us"]["p50"], "bound_by": c["bound_by"],
            "cpu_us": c["per_query"]["cpu_us"], "device_us": c["per_query"]["device_us"]}


def sample_size(pl: dict[str, Any], workers: int, batch: int, seconds: float, queries: int) -> int:
    """Live queries for a cell: about ``seconds`` of them at the planned rate, and at least six
    times the queries in flight, so the first ones (which start on an empty pipeline, as bench
    drains it after the warm-up) set neither the median nor the rate."""
    depth = max(8, 2 * workers)
    return max(queries, 6 * depth, round(seconds * pl["throughput_per_s"] / batch))


def run(models: list[str], batches: list[int], modes: list[str], workers: list[int], seconds: float,
        queries: int, device_ms: float, out: Any = sys.stderr) -> list[dict[str, Any]]:
    """Every cell, live then planned; each row is printed to ``out`` as it is measured."""
    tmp = tempfile.mkdtemp(prefix="npusim-pvl-", dir="/tmp")
    stack = Stack(tmp, 1.0)
    rows = []
    try:
        for name in models:
            data = build(name).SerializeToString()
            targets = sorted({MODES[m][1] for m in modes})
            programs, _ = compile_programs(data, targets, batches)
            by = {(p.target, p.batch_size): p for p in programs}
            for b in batches:
                single = by[("warboy", b)] if ("warboy", b) in by else by[(targets[0], b)]
                transport = transport_ms(single.to_bytes(), b, stack)
                scale = scale_for(single, max(device_ms, transport / TRANSPORT_SHARE))
                stack.rescale(scale)
                for mode in modes:
                    device, target = MODES[mode]
                    blob = by[(target, b)].to_bytes()
                    for w in workers:
                        pl = planned(blob, device, w, b, scale)
                        lv = live(blob, device, w, b, 0.0, sample_size(pl, w, b, seconds, queries))
                        rows.append({"model": name, "batch": b, "mode": mode, "workers": w, "time_scale": scale,
                                     "transport_ms_at_k1": transport,
                                     "live": lv, "plan": pl,
                                     "throughput_ratio": pl["throughput_per_s"] / lv["throughput_per_s"],
                                     "p50_ratio": pl["p50_us"] / lv["p50_us"]})
                        print(_line(rows[-1]), file=out, flush=True)
    finally:
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def _line(r: dict[str, Any]) -> str:
    lv, pl = r["live"], r["plan"]
    return (f"{r['model']:<16} {r['batch']:>5} {r['mode']:<8} {r['workers']:>7} {r['time_scale']:>8g} "
            f"{lv['throughput_per_s']:>10.1f} {pl['throughput_per_s']:>10.1f} {r['throughput_ratio']:>6.3f} "
            f"{lv['p50_us'] / 1e3:>9.2f} {pl['p50_us'] / 1e3:>9.2f} {r['p50_ratio']:>6.3f} {pl['bound_by']:>9}")


HEADER = (f"{'model':<16} {'batch':>5} {'mode':<8} {'workers':>7} {'K':>8} {'live /s':>10} {'plan /s':>10} "
          f"{'ratio':>6} {'live p50':>9} {'plan p50':>9} {'ratio':>6} {'plan: bound':>9}")


def plot(rows: list[dict[str, Any]], path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, key, label in ((axes[0], "throughput_per_s", "throughput (samples/s)"), (axes[1], "p50_us", "p50 (µs)")):
        for model in dict.fromkeys(r["model"] for r in rows):
            sel = [r for r in rows if r["model"] == model]
            ax.scatter([r["live"][key] for r in sel], [r["plan"][key] for r in sel], label=model, s=22)
        lo = min(min(r["live"][key], r["plan"][key]) for r in rows) * 0.8
        hi = max(max(r["live"][key], r["plan"][key]) for r in rows) * 1.25
        xs = [lo, hi]
        ax.plot(xs, xs, "k-", lw=0.8)
        ax.plot(xs, [x * (1 + GOAL) for x in xs], "k:", lw=0.8)
        ax.plot(xs, [x * (1 - GOAL) for x in xs], "k:", lw=0.8, label="±5%")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"live {label}")
        ax.set_ylabel(f"plan {label}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("npusim plan vs the live pipeline (timing-only daemon at --time-scale K, --host this)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"wrote {path}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="one cell on a small model: check that it runs")
    ap.add_argument("--json", action="store_true", help="print one JSON object of every figure")
    ap.add_argument("--models", default="resnet50,yolox_like_nhwc")
    ap.add_argument("--seconds", type=float, default=4.0, help="about this many live seconds per cell (at least "
                    "6 × the queries in flight)")
    ap.add_argument("--device-ms", type=float, default=120.0, help="one request's stretched device time")
    ap.add_argument("--plot", type=Path, default=None, help="write the plot to this PNG")
    args = ap.parse_args()
    out = sys.stderr if args.json else sys.stdout
    print(HEADER, file=out, flush=True)
    if args.smoke:
        rows = run(["small_cnn"], [1], ["pe0+pe1"], [2], 0.0, 30, args.device_ms, out)
    else:
        rows = run(args.models.split(","), [1, 8], list(MODES), [1, 2, 4], args.seconds, 1, args.device_ms, out)
    worst_tp = max(abs(r["throughput_ratio"] - 1) for r in rows)
    worst_p50 = max(abs(r["p50_ratio"] - 1) for r in rows)
    result = {"rows": rows, "cells": len(rows), "worst_throughput_error": worst_tp, "worst_p50_error": worst_p50,
              "within_goal": sum(abs(r["throughput_ratio"] - 1) <= GOAL and abs(r["p50_ratio"] - 1) <= GOAL
                                 for r in rows),
              "goal": GOAL, "goal_met": worst_tp <= GOAL and worst_p50 <= GOAL}
    if args.plot:
        result["plot"] = plot(rows, args.plot)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['within_goal']} of {len(rows)} cells within ±{GOAL:.0%} on throughput and p50; worst errors: "
          f"throughput {worst_tp:.1%}, p50 {worst_p50:.1%}: goal {'met' if result['goal_met'] else 'NOT met'}")
    if "plot" in result:
        print(result["plot"])


if __name__ == "__main__":
    main()
