"""``npusim serve`` under load: many clients, open loop, next to the bare session in the same run.

Two timing-only devices: the server (its own process, ``npusim serve``) holds ``npu0pe0-1`` and
the reference, a bare asyncio runner in this process (``create_runner``), holds ``npu1pe0-1``;
both run the same compiled program. A first closed-loop run measures the bare runner's rate;
then the same Poisson arrival schedule, at ``--load`` times that rate, is fired at each: at the
runner with ``await runner.run(x)`` per arrival, at the server with Triton's asyncio HTTP client
(binary tensors) per arrival. Latency counts from each request's scheduled arrival, so a
server that falls behind shows it. The server's overhead is its latency over the bare runner's,
at the same arrivals.

    python benchmarks/serve_load.py [--smoke] [--json] [--requests 2000] [--load 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from npusim.runtime import create_runner  # noqa: E402
from npusim.compiler_svc.estimate import compile_programs  # noqa: E402
from npusim.services import launch  # noqa: E402
from npusim.services.latency import latency_stats  # noqa: E402
from npusim.services.zoo import small_cnn  # noqa: E402

NPUSIM = str(Path(sys.executable).with_name("npusim"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _fire(schedule: list[float], call: Any) -> tuple[list[int], float]:
    """Call ``call()`` at each scheduled instant (seconds from now); latencies from the schedule."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    lat: list[int] = []

    async def one(at: float) -> None:
        await asyncio.sleep(max(0.0, t0 + at - loop.time()))
        await call()
        lat.append(int((loop.time() - (t0 + at)) * 1e9))

    await asyncio.gather(*(one(at) for at in schedule))
    return lat, loop.time() - t0


async def measure(program: bytes, url: str, n: int, load: float, seed: int) -> dict[str, Any]:
    import tritonclient.http.aio as triton

    x = np.random.default_rng(seed).standard_normal((1, 3, 64, 64)).astype(np.float32)
    runner = await create_runner(program, device="npu1pe0-1", worker_num=2)
    client = triton.InferenceServerClient(url, conn_limit=256)
    try:
        inp = triton.InferInput("input", [1, 3, 64, 64], "FP32")
        inp.set_data_from_numpy(x, binary_data=True)

        async def bare() -> None:
            await runner.run(x)

        async def served() -> None:
            await client.infer("serve", [inp])

        for call in (bare, served):  # warm-up both paths
            await asyncio.gather(*(call() for _ in range(20)))
        probe_n = max(50, n // 4)
        t = time.perf_counter()
        sem = asyncio.Semaphore(16)

        async def closed() -> None:
            async with sem:
                await runner.run(x)

        await asyncio.gather(*(closed() for _ in range(probe_n)))
        capacity = probe_n / (time.perf_counter() - t)
        rate = load * capacity
        gaps = np.random.default_rng(seed).exponential(1 / rate, n)
        schedule = list(np.cumsum(gaps) - gaps[0])
        out: dict[str, Any] = {"bare_capacity_per_s": capacity, "offered_per_s": rate, "requests": n}
        for name, call in (("bare", bare), ("serve", served)):
            lat, wall = await _fire(schedule, call)
            out[name] = {"achieved_per_s": n / wall, "latency": latency_stats(lat)}
        b, s = out["bare"]["latency"], out["serve"]["latency"]
        out["overhead_p50_us"] = s["p50_us"] - b["p50_us"]
        out["overhead_p99_us"] = s["p99_us"] - b["p99_us"]
        out["p50_ratio"] = s["p50_us"] / b["p50_us"]
        return out
    finally:
        await client.close()
        await runner.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a few hundred requests: check that it runs")
    ap.add_argument("--json", action="store_true", help="print one JSON object of every figure")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--load", type=float, default=0.5, help="offered rate as a share of the bare runner's capacity")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n = 200 if args.smoke else args.requests
    tmp = tempfile.mkdtemp(prefix="npusim-sl-", dir="/tmp")
    children: list[launch.Child] = []
    server = None
    try:
        children.append(launch.start("compiler", "compiler", f"ipc://{tmp}/compiler.sock", Path(tmp),
                                     extra=["--cache-dir", f"{tmp}/cache"]))
        for i in range(2):
            children.append(launch.start("daemon", f"npu{i}", f"ipc://{tmp}/npu{i}.sock", Path(tmp),
                                         extra=["--timing-only"]))
        launch.wait_healthy(children)
        os.environ["NPUSIM_COMPILER_ENDPOINT"] = children[0].endpoint
        os.environ["NPUSIM_DAEMON_ENDPOINTS"] = ",".join(f"{c.name}={c.endpoint}" for c in children[1:])
        os.environ["NPUSIM_NO_EMBED"] = "1"
        (program,), _ = compile_programs(small_cnn().SerializeToString(), ["warboy-2pe"], [1])
        enf = Path(tmp) / "model.enf"
        enf.write_bytes(program.to_bytes())
        port = _port()
        server = subprocess.Popen([NPUSIM, "serve", "--model-path", str(enf), "--model-name", "serve",
                                   "--npu-device", "npu0pe0-1", "--worker-num", "2", "--http-port", str(port)],
                                  env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = f"127.0.0.1:{port}"
        import urllib.request

        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"npusim serve did not start: {server.stderr.read() if server.stderr else ''}")
            time.sleep(0.2)
        result = asyncio.run(measure(program.to_bytes(), url, n, args.load, args.seed))
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        launch.stop_all(children)
        shutil.rmtree(tmp, ignore_errors=True)
    result["model"] = "small_cnn 1x3x64x64, timing-only devices, worker_num 2 each"
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['model']}; bare runner capacity {result['bare_capacity_per_s']:,.0f} req/s (16 in flight); "
          f"open loop, Poisson at {result['offered_per_s']:,.0f} req/s ({args.load:.0%}), {n} requests each")
    print(f"{'path':<8} {'achieved/s':>11} {'p50 µs':>9} {'p90 µs':>9} {'p99 µs':>9}")
    for name in ("bare", "serve"):
        r = result[name]
        lat = r["latency"]
        print(f"{name:<8} {r['achieved_per_s']:>11,.0f} {lat['p50_us']:>9,.0f} {lat['p90_us']:>9,.0f} "
              f"{lat['p99_us']:>9,.0f}")
    print(f"server overhead at the same arrivals: p50 +{result['overhead_p50_us']:,.0f} µs "
          f"({result['p50_ratio']:.2f}× the bare runner's), p99 +{result['overhead_p99_us']:,.0f} µs")


if __name__ == "__main__":
    main()
