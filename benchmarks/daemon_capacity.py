"""How many jobs one device daemon sustains, and how steady its emulated latency is.

1. Capacity: a daemon with ``--time-scale 0 --timing-only`` (no emulated time, zero-filled
   outputs) is driven with many concurrent RUN requests of a tiny program over a few DEALER
   sockets, each keeping a window of requests in flight. The frames are encoded once, so the
   driver costs little more than the sockets. The goal is ≥ 10,000 jobs/s, several times the
   chip's best published job rate, so the emulator is not what limits a real client (which pays
   about a millisecond a request in its own processes). For reference, the same driver against
   a bare pyzmq ROUTER echo in another process, measured in the same run, is what the transport
   and the driver carry with a minimal Python server.
2. Jitter: a timing-only daemon at time scale 1 and ``--jitter 0`` runs a stream of jobs of
   a program whose estimate is ~100 µs, one after another; the reply's ``timing.emulated_ns``
   should not vary (goal p99/p50 ≤ 1.01). The wall latency the client sees is reported too,
   for information, next to that of a zero-time program on the other PE: the difference is
   what the emulated time adds (its 100 µs plus how late the loop's timer wakes up).

With ``--profile`` the capacity phase is run once more against a daemon in a spawned process
whose serving loop (not its start-up) runs under cProfile, and where its time goes is printed.

    python benchmarks/daemon_capacity.py [--jobs N] [--smoke] [--json] [--profile]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _echo import echo  # noqa: E402

from npusim.services import launch  # noqa: E402
from npusim.services.program import NpuStage, NpuStep, Program, TensorSpec  # noqa: E402
from npusim.services.protocol import Kind, Message, decode, encode  # noqa: E402
from npusim.services.rpc import Peer  # noqa: E402
from npusim.services.zoo import identity  # noqa: E402

GOAL_JOBS_PER_S = 10_000
GOAL_JITTER = 1.01
SHAPE = (1, 64)  # a tiny uint8 tensor: the job is all overhead
JITTER_EXEC_NS = 100_000.0


def tiny_program(npu_ns: float = 0.0, *, target: str = "warboy", shape: tuple[int, ...] = SHAPE) -> bytes:
    """An identity NPU stage on a small uint8 tensor; its estimate is ``npu_ns`` and no overhead."""
    spec = TensorSpec("input", "uint8", shape, "NC")
    out = TensorSpec("output", "uint8", shape, "NC")
    stage = NpuStage(identity(list(shape)).SerializeToString(), [spec], [out], [spec], [out],
                     estimate={"npu_ns": npu_ns, "npu_ns_shared": npu_ns, "job_overhead_ns": 0.0})
    return Program(target=target, batch_size=1, inputs=[spec], outputs=[out], steps=[NpuStep(0, ["input"], ["output"])],
                   stages=[stage], meta={"model": "tiny"}).to_bytes()


def open_session(endpoint: str, program: bytes, pe: str = "pe0") -> str:
    with Peer(endpoint, name="daemon", timeout_s=30.0) as peer:
        reply = peer.request(Kind.OPEN, {"pe": pe, "session": f"bench-{pe}", "client_pid": os.getpid()},
                             [("program", np.frombuffer(program, np.uint8))])
    return reply.body["handle"]


def drive(ctx: zmq.Context, endpoint: str, frames: list[Any], total: int, *, sockets: int, window: int,
          check: bool) -> float:
    """Send ``total`` copies of ``frames`` over ``sockets`` DEALERs, ``window`` in flight on each;
    returns messages per second. With ``check``, every 64th reply is decoded and must be a RESULT."""
    socks = []
    for _ in range(sockets):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.connect(endpoint)
        socks.append(s)
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    sent = received = 0
    try:
        time.sleep(0.05)  # let the connections establish before the clock starts
        t0 = time.perf_counter()
        for s in socks:
            for _ in range(min(window, total - sent)):
                s.send_multipart(frames, copy=False)
                sent += 1
        while received < total:
            events = poller.poll(10_000)
            if not events:
                raise SystemExit(f"no reply for 10 s after {received} of {total}; is the daemon alive?")
            for s, _ in events:
                while True:
                    try:
                        reply = s.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    received += 1
                    if check and received % 64 == 1:
                        msg = decode(reply)
                        if msg.kind != Kind.RESULT:
                            raise SystemExit(f"the daemon answered {msg.kind.name}: {msg.body}")
                    if sent < total:
                        s.send_multipart(frames, copy=False)
                        sent += 1
        return total / (time.perf_counter() - t0)
    finally:
        for s in socks:
            s.close(linger=0)


def _echo(endpoint: str, ready: Any) -> None:
    echo(endpoint, ready, unbounded=True)


def _thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds per thread kind of a process (Linux /proc; empty elsewhere): the loop thread
    ("python") against zmq's I/O thread shows where a job's time goes without a profiler."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            key = "zmq_io" if name.startswith("ZMQbg/IO") else "loop" if name == "python" else "other"
            out[key] = out.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    except OSError:
        return {}
    return out


def capacity(tmp: str, jobs: int, sockets: int, window: int) -> dict[str, float]:
    """Jobs/s of a daemon with no emulated time, and the raw echo rate with the same driver."""
    daemon = launch.start("daemon", "npu0", f"ipc://{tmp}/cap.sock", Path(tmp),
                          extra=["--time-scale", "0", "--timing-only", "--queue-limit", "100000"])
    ctx = zmq.Context()
    spawn = mp.get_context("spawn")
    ready = spawn.Event()
    echo_ep = f"ipc://{tmp}/echo.sock"
    echo = spawn.Process(target=_echo, args=(echo_ep, ready), daemon=True)
    echo.start()
    try:
        launch.wait_healthy([daemon])
        ready.wait(30)
        handle = open_session(daemon.endpoint, tiny_program())
        x = np.zeros(SHAPE, np.uint8)
        frames = encode(Message(Kind.RUN, 1, {"handle": handle, "stage": 0}, [("input", x)]))
        drive(ctx, daemon.endpoint, frames, min(jobs, 2000), sockets=sockets, window=window, check=True)  # warm-up
        rates, raws = [], []
        cpu0 = _thread_cpu_s(daemon.proc.pid)
        for _ in range(3):  # interleaved, best of three: both see the same host load
            rates.append(drive(ctx, daemon.endpoint, frames, jobs, sockets=sockets, window=window, check=True))
            raws.append(drive(ctx, echo_ep, frames, jobs, sockets=sockets, window=window, check=False))
        cpu1 = _thread_cpu_s(daemon.proc.pid)
        cpu = {f"daemon_{k}_cpu_us_per_job": 1e6 * (cpu1[k] - cpu0.get(k, 0.0)) / (3 * jobs) for k in cpu1}
        rate, raw = max(rates), max(raws)
        return {**cpu, "jobs_per_s": rate, "raw_zmq_msgs_per_s": raw, "ratio_to_goal": rate / GOAL_JOBS_PER_S,
                "ratio_to_raw": rate / raw, "us_per_job": 1e6 / rate, "raw_us_per_msg": 1e6 / raw,
                "daemon_us_above_raw": 1e6 / rate - 1e6 / raw, "jobs": jobs, "sockets": sockets, "window": window,
                "lane": False}  # kept for scripts that read it: services read through pyzmq alone since the lane went
    finally:
        try:
            with ctx.socket(zmq.DEALER) as q:
                q.connect(echo_ep)
                q.send_multipart([b"quit"])
                echo.join(5)
        finally:
            if echo.is_alive():
                echo.kill()
            ctx.term()
            launch.stop_all([daemon])


def jitter(tmp: str, jobs: int) -> dict[str, float]:
    """p99/p50 of the emulated and the wall latency of sequential ~100 µs jobs on pe0, jitter off.

    Interleaved with them, the same requests to a zero-time program on pe1 give the wall latency of
    the path alone, so ``wall - baseline`` is what the emulated time adds (ideally its 100 µs).
    """
    daemon = launch.start("daemon", "npu1", f"ipc://{tmp}/jit.sock", Path(tmp),
                          extra=["--timing-only", "--jitter", "0"])
    try:
        launch.wait_healthy([daemon])
        timed = open_session(daemon.endpoint, tiny_program(JITTER_EXEC_NS), "pe0")
        zero = open_session(daemon.endpoint, tiny_program(0.0), "pe1")
        x = np.zeros(SHAPE, np.uint8)
        emulated, wall, base = [], [], []
        with Peer(daemon.endpoint, name="npu1", timeout_s=10.0) as peer:
            for i in range(jobs + 20):
                t0 = time.perf_counter_ns()
                reply = peer.request(Kind.RUN, {"handle": timed, "stage": 0}, [("input", x)])
                t1 = time.perf_counter_ns()
                peer.request(Kind.RUN, {"handle": zero, "stage": 0}, [("input", x)])
                t2 = time.perf_counter_ns()
                if i >= 20:  # warm-up
                    emulated.append(reply.body["timing"]["emulated_ns"])
                    wall.append(t1 - t0)
                    base.append(t2 - t1)
        e50, e99 = (float(v) for v in np.percentile(emulated, [50, 99]))
        w50, w99 = (float(v) for v in np.percentile(wall, [50, 99]))
        b50, b99 = (float(v) for v in np.percentile(base, [50, 99]))
        return {"emulated_p50_us": e50 / 1e3, "emulated_p99_us": e99 / 1e3, "emulated_p99_over_p50": e99 / e50,
                "emulated_max_over_min": max(emulated) / min(emulated),
                "wall_p50_us": w50 / 1e3, "wall_p99_us": w99 / 1e3, "wall_p99_over_p50": w99 / w50,
                "zero_time_wall_p50_us": b50 / 1e3, "zero_time_wall_p99_us": b99 / 1e3,
                "wall_added_by_emulated_time_p50_us": (w50 - b50) / 1e3, "jobs": jobs}
    finally:
        launch.stop_all([daemon])


def _profiled_daemon(endpoint: str, out: str, ready: Any) -> None:
    """A daemon whose serving loop (not its start-up) runs under cProfile; SIGTERM stops it."""
    import cProfile
    import signal

    from npusim.npu_daemon.server import DaemonOptions, DaemonService

    svc = DaemonService("npu9", endpoint, options=DaemonOptions(timing_only=True, time_scale=0.0, queue_limit=100000))
    signal.signal(signal.SIGTERM, lambda *_: svc.stop())
    prof = cProfile.Profile()
    ready.set()
    prof.enable()
    try:
        svc.serve_forever()
    finally:
        prof.disable()
        prof.dump_stats(out)


def profile(tmp: str, jobs: int, sockets: int, window: int, top: int = 30) -> str:
    """The capacity phase against a daemon process whose loop runs under cProfile: where the time goes."""
    import io
    import pstats

    out, endpoint = f"{tmp}/daemon.prof", f"ipc://{tmp}/prof.sock"
    spawn = mp.get_context("spawn")
    ready = spawn.Event()
    proc = spawn.Process(target=_profiled_daemon, args=(endpoint, out, ready), daemon=True)
    proc.start()
    ctx = zmq.Context()
    try:
        ready.wait(60)
        handle = open_session(endpoint, tiny_program())
        frames = encode(Message(Kind.RUN, 1, {"handle": handle, "stage": 0}, [("input", np.zeros(SHAPE, np.uint8))]))
        drive(ctx, endpoint, frames, jobs, sockets=sockets, window=window, check=False)
    finally:
        ctx.term()
        proc.terminate()  # SIGTERM: the loop stops and the profile is written
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()
    buf = io.StringIO()
    stats = pstats.Stats(out, stream=buf)
    buf.write(f"{jobs} RUN requests; per job: "
              f"{1e6 * sum(v[2] for v in stats.stats.values()) / jobs:.1f} µs of own time in the loop (profiled)\n")
    stats.sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20_000, help="RUN requests per capacity measurement")
    ap.add_argument("--jitter-jobs", type=int, default=2000, help="sequential jobs of the jitter stream")
    ap.add_argument("--sockets", type=int, default=2, help="DEALER sockets driving the daemon")
    ap.add_argument("--window", type=int, default=64, help="requests in flight per socket")
    ap.add_argument("--smoke", action="store_true", help="a few requests: check that it runs")
    ap.add_argument("--json", action="store_true", help="print one JSON object of every figure")
    ap.add_argument("--profile", action="store_true", help="also profile the daemon's loop (in-process)")
    args = ap.parse_args()
    jobs, jitter_jobs = (1000, 100) if args.smoke else (args.jobs, args.jitter_jobs)
    tmp = tempfile.mkdtemp(prefix="npusim-b-", dir="/tmp")
    try:
        results: dict[str, Any] = {"capacity": capacity(tmp, jobs, args.sockets, args.window),
                                   "jitter": jitter(tmp, jitter_jobs)}
        report = profile(tmp, max(jobs, 5000), args.sockets, args.window) if args.profile else ""
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    c, j = results["capacity"], results["jitter"]
    results["goals"] = {"jobs_per_s_met": bool(c["jobs_per_s"] >= GOAL_JOBS_PER_S),
                        "emulated_jitter_met": bool(j["emulated_p99_over_p50"] <= GOAL_JITTER)}
    if args.json:
        print(json.dumps(results))
        return
    print(f"capacity: {c['jobs']} tiny jobs, time scale 0, {c['sockets']} DEALER sockets × {c['window']} in flight "
          "(best of 3, interleaved with a raw pyzmq ROUTER echo driven the same way)")
    print(f"  daemon      {c['jobs_per_s']:>9,.0f} jobs/s  ({c['us_per_job']:.1f} µs/job)   "
          f"× goal {GOAL_JOBS_PER_S:,}: {c['ratio_to_goal']:.2f}")
    print(f"  raw echo    {c['raw_zmq_msgs_per_s']:>9,.0f} msgs/s  ({c['raw_us_per_msg']:.1f} µs/msg)   "
          f"daemon / raw: {c['ratio_to_raw']:.2f}  ({c['daemon_us_above_raw']:+.1f} µs per job)")
    if "daemon_loop_cpu_us_per_job" in c:
        print(f"  daemon CPU  {c['daemon_loop_cpu_us_per_job']:.1f} µs/job on its loop thread, "
              f"{c.get('daemon_zmq_io_cpu_us_per_job', 0.0):.1f} µs/job on zmq's I/O thread")
    print(f"jitter: {j['jobs']} sequential jobs of ~{JITTER_EXEC_NS / 1e3:.0f} µs, --jitter 0")
    print(f"  emulated    p50 {j['emulated_p50_us']:.2f} µs  p99 {j['emulated_p99_us']:.2f} µs  "
          f"p99/p50 {j['emulated_p99_over_p50']:.4f} (goal ≤ {GOAL_JITTER})  max/min {j['emulated_max_over_min']:.4f}")
    print(f"  wall        p50 {j['wall_p50_us']:.1f} µs  p99 {j['wall_p99_us']:.1f} µs  "
          f"p99/p50 {j['wall_p99_over_p50']:.3f}  (client-side, for information)")
    print(f"  zero-time   p50 {j['zero_time_wall_p50_us']:.1f} µs  p99 {j['zero_time_wall_p99_us']:.1f} µs  "
          f"(the same request to a program with no emulated time: the path alone); the emulated "
          f"{JITTER_EXEC_NS / 1e3:.0f} µs add {j['wall_added_by_emulated_time_p50_us']:.1f} µs at p50")
    for goal, met in results["goals"].items():
        print(f"  {goal}: {'yes' if met else 'NO'}")
    if report:
        print("\nwhere the daemon's loop spends its time (cProfile, by own time):")
        print(report)


if __name__ == "__main__":
    main()
