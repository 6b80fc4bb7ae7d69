"""How fast ``npusim plan`` sweeps: 100 configurations of 10,000 requests each (goal: ≤ 60 s on a
2-core host), next to a reference measured in the same run.

The configurations are ResNet-50's pipeline (mlperf host profile) on a fused PE and on two
single PEs, with 1–10 workers and 1–5 levels of load (closed loops and Poisson arrivals),
on 8 host cores, so some configurations contend for cores and some do not. The reference is a
bare SimPy model of the same requests: one process per request that only waits its latency,
which is the least any event-driven simulation of them can cost.

    python benchmarks/plan_speed.py [--configs N] [--requests N] [--smoke] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import simpy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from npusim.compiler_svc.estimate import compile_programs  # noqa: E402
from npusim.services.hostprofile import host_profile  # noqa: E402
from npusim.services.sim import Pipeline, Scenario, SessionSpec, closed, poisson, simulate, summarize  # noqa: E402
from npusim.services.zoo import build  # noqa: E402

GOAL_S = 60.0
GOAL_CONFIGS, GOAL_REQUESTS = 100, 10_000


def scenarios(pipe: dict[str, Pipeline], count: int, requests: int) -> list[Scenario]:
    out: list[Scenario] = []
    k = 0
    while len(out) < count:
        mode = ("fused", "pair")[k % 2]
        pes = ((0, "pe0-1"),) if mode == "fused" else ((0, "pe0"), (0, "pe1"))
        workers = 1 + (k // 2) % 10
        level = (k // 20) % 5
        load = closed(2 ** level) if level < 3 else poisson(1000.0 * level, seed=k)
        out.append(Scenario((SessionSpec(pipe[mode], pes, workers, load),), host_cores=8, requests=requests,
                            warmup=10))
        k += 1
    return out


def bare(requests: int, latency_ns: int) -> None:
    env = simpy.Environment()

    def one() -> simpy.events.ProcessGenerator:
        yield env.timeout(latency_ns)

    def source() -> simpy.events.ProcessGenerator:
        for _ in range(requests):
            env.process(one())
            yield env.timeout(latency_ns)

    env.process(source())
    env.run()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", type=int, default=GOAL_CONFIGS)
    ap.add_argument("--requests", type=int, default=GOAL_REQUESTS)
    ap.add_argument("--smoke", action="store_true", help="4 configurations of 500 requests: check that it runs")
    ap.add_argument("--json", action="store_true", help="print one JSON object of every figure")
    args = ap.parse_args()
    count, requests = (4, 500) if args.smoke else (args.configs, args.requests)
    data = build("mnist" if args.smoke else "resnet50").SerializeToString()
    programs, _ = compile_programs(data, ["warboy-2pe", "warboy"], [1])
    profile = host_profile("mlperf")
    pipe = {name: Pipeline.of(p, None, runtime_overhead_ns=profile.runtime_overhead_ns)
            for name, p in zip(("fused", "pair"), programs)}
    work = scenarios(pipe, count, requests)
    t0 = time.perf_counter()
    results = [summarize(simulate(s))[0] for s in work]
    plan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in work:
        bare(requests, 700_000)
    bare_s = time.perf_counter() - t0
    scale = (GOAL_CONFIGS * GOAL_REQUESTS) / (count * requests)
    figures = {
        "configs": count, "requests_per_config": requests,
        "plan_s": plan_s, "bare_simpy_s": bare_s, "ratio_to_bare": plan_s / bare_s,
        "us_per_request": plan_s / (count * requests) * 1e6,
        "projected_goal_s": plan_s * scale, "goal_s": GOAL_S, "meets_goal": plan_s * scale <= GOAL_S,
        "bound_by": sorted({r["bound_by"] for r in results}),
    }
    if args.json:
        print(json.dumps(figures))
        return
    print(f"{count} configurations × {requests:,} requests: plan {plan_s:.1f} s "
          f"({figures['us_per_request']:.1f} µs per request); a bare SimPy model of the same requests "
          f"{bare_s:.1f} s in the same run ({figures['ratio_to_bare']:.1f}×)")
    print(f"projected for {GOAL_CONFIGS} × {GOAL_REQUESTS:,}: {figures['projected_goal_s']:.1f} s (goal ≤ {GOAL_S:g} s: "
          f"{'met' if figures['meets_goal'] else 'NOT met'}); configurations bound by {', '.join(figures['bound_by'])}")


if __name__ == "__main__":
    main()
