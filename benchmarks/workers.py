"""Throughput against ``worker_num``: the seed's worker law, measured.

A worker runs a request's CPU operators, waits for its NPU job, then runs the rest; with
``w`` workers the NPU is fed by ``w`` requests at once. The law the seed gives is

    throughput ≤ 1 / max(NPU, CPU / workers)

so throughput rises with ``w`` until the NPU saturates, and then stays at 1/NPU with the PE
near 100 % busy. This benchmark runs ``npusim bench``'s engine (throughput workload,
``max(8, 2w)`` queries in flight) for ``w = 1 … 8`` on a model whose CPU and NPU times are
comparable, and prints each measured rate next to the law computed from the CPU and NPU
time measured in the same run.

To make "comparable" hold on any host, the NPU time is stretched with the daemon's
``--time-scale`` (a slower emulated chip): a first run with one worker measures the CPU
time per request, and the scale is set so the NPU time is about 1.5× that, and at least
4 ms, which keeps the host's own per-request overhead (Python, sockets, thread hand-offs:
0.5–2 ms on a loaded 2-core host) small next to it.

"Once the NPU saturates" means from the worker count whose offered load reaches the NPU's
rate: a worker holds a request for its whole round trip (CPU, DMA, NPU, and the host's
overhead), so ``w_sat = ceil(NPU rate / rate with one worker)``. The daemon runs ``--timing-only``: the NPU part is not computed on the host (which
would compete with the workers for the two cores), while the CPU operators are real.

    python benchmarks/workers.py [--smoke] [--json] [--max-workers 8] [--seconds 3] [--plot docs/workers.png]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from npusim.client.bench import BenchConfig, bench  # noqa: E402
from npusim.services.zoo import small_cnn  # noqa: E402
from _stack import Stack  # noqa: E402  (this script's folder is on sys.path)

GOAL = 0.90  # of the law, once the NPU saturates
SIZE = 224


def one(model: Any, workers: int, seconds: float, queries: int) -> dict[str, Any]:
    cfg = BenchConfig(model, device="npu0pe0-1", workers=workers, workload="throughput",
                      duration_s=seconds, queries=queries, warmup=max(5, 2 * workers))
    r = bench(cfg)["result"]
    pq = r["per_query"]
    return {"workers": workers, "qps": r["qps"], "law_qps": r["ideal"]["qps"], "bound_by": r["ideal"]["bound_by"],
            "ratio_to_law": r["ratio_to_ideal"], "npu_us": pq["npu_exec_us"], "cpu_us": pq["cpu_us"],
            "npu_utilization_pct": next(iter(r["npu_utilization_pct"].values()), 0.0),
            "p50_us": r["latency"]["p50_us"]}


def plot(rows: list[dict[str, Any]], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    w = [r["workers"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(w, [r["qps"] for r in rows], "o-", label="measured")
    ax.plot(w, [r["law_qps"] for r in rows], "--", label="1 / max(NPU, CPU / workers)")
    ax.set_xlabel("worker_num")
    ax.set_ylabel("requests / s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("throughput vs workers (small_cnn 224², timing-only daemon)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return f"wrote {path}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="workers 1 and 2, briefly: check that it runs")
    ap.add_argument("--json", action="store_true", help="print one JSON object of every figure")
    ap.add_argument("--max-workers", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per worker count")
    ap.add_argument("--plot", type=Path, default=None, help="write the plot to this PNG")
    args = ap.parse_args()
    counts = [1, 2] if args.smoke else list(range(1, args.max_workers + 1))
    seconds, queries = (0.0, 30) if args.smoke else (args.seconds, 1)
    model = small_cnn(height=SIZE, width=SIZE)
    tmp = tempfile.mkdtemp(prefix="npusim-w-", dir="/tmp")
    stack = Stack(tmp, 1.0)
    try:
        probe = one(model, 1, 0.0, 40 if args.smoke else 200)
        scale = max(1.0, 1.5 * probe["cpu_us"] / probe["npu_us"], 4000.0 / probe["npu_us"])
        stack.rescale(scale)
        rows = [one(model, w, seconds, queries) for w in counts]
    finally:
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)
    npu_rate = 1e6 / rows[0]["npu_us"]
    w_sat = math.ceil(npu_rate / rows[0]["qps"] - 1e-9) if rows[0]["qps"] > 0 else counts[-1] + 1
    saturated = [r for r in rows if r["workers"] >= w_sat]
    worst = min((r["ratio_to_law"] for r in saturated), default=0.0)
    result = {"model": f"small_cnn 1x3x{SIZE}x{SIZE}", "time_scale": scale, "probe": probe, "rows": rows,
              "saturating_workers": w_sat, "saturated_min_ratio_to_law": worst, "goal": GOAL,
              "goal_met": bool(saturated) and worst >= GOAL}
    if args.plot:
        result["plot"] = plot(rows, args.plot)
    if args.json:
        print(json.dumps(result))
        return
    print(f"small_cnn 1×3×{SIZE}×{SIZE}; CPU per request {probe['cpu_us']:.0f} µs measured with one worker; NPU time "
          f"stretched ×{scale:.1f} to {rows[0]['npu_us']:.0f} µs (timing-only daemon)")
    print(f"{'workers':>7} {'req/s':>8} {'law req/s':>10} {'ratio':>6} {'bound':>6} {'NPU util':>9} "
          f"{'CPU µs':>7} {'NPU µs':>7} {'p50 µs':>8}")
    for r in rows:
        print(f"{r['workers']:>7} {r['qps']:>8.1f} {r['law_qps']:>10.1f} {r['ratio_to_law']:>6.2f} {r['bound_by']:>6} "
              f"{r['npu_utilization_pct']:>8.1f}% {r['cpu_us']:>7.0f} {r['npu_us']:>7.0f} {r['p50_us']:>8.0f}")
    print(f"the NPU saturates from {w_sat} workers on (its rate {npu_rate:.0f}/s ÷ {rows[0]['qps']:.0f}/s with one "
          "worker)")
    print(f"once the NPU saturates: worst ratio to the law {worst:.2f} (goal ≥ {GOAL}): "
          f"{'met' if result['goal_met'] else 'NOT met'}")
    if "plot" in result:
        print(result["plot"])


if __name__ == "__main__":
    main()
