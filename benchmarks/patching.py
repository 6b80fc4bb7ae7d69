"""Large tensors (seed technique 8, scenario S5): infer an image as patches, and which patch size pays.

A local model — ``npusim.services.zoo.denoiser``: five 3×3 convolutions with ReLU and a residual, no
pooling or stride, so an output pixel depends only on the input within ``halo`` = 5 pixels of
it — can be run on an image cut into overlapping patches and the patch interiors stitched back
(``tests/scenarios/test_patched_inference.py`` checks that this equals whole-image inference in the
interior, bit for bit). A patch of ``size`` × ``size`` input pixels yields a ``core`` of
``size − 2·halo`` output pixels; an H × W image needs ``⌈H/core⌉ · ⌈W/core⌉`` patches (the image
is padded by the halo at its borders). Small patches waste work on the halo and pay the per-job
overhead many times; large ones — and the whole image — stop fitting the PE's SRAM and stream
activations from DRAM. This sweep finds the size in between.

For every patch size and for the whole image (the reference, measured in the same run), from
the compiler's cost model (each program's stage estimate) and the daemon's timing engine
(``npusim.services.timing``) — the figures ``npusim estimate`` prints for one program:

- per patch: MACs, NPU time (execution incl. the job overhead; of it, MAC-array compute), DMA
  (host→device and device→host over PCIe) time and bytes, NPU/DMA ratio, whether it fits SRAM;
- per image: patches, halo overhead (per patch ``size²/core² − 1``; per image, pixels computed
  over pixels of the image − 1, which includes the partly used last row/column of patches), NPU
  and DMA time summed over the patches;
- predicted image latency: every patch of one image queued at once on the fused PE ``pe0-1``
  (DMA of the next patch overlapping execution of the current one), and spread over the two
  single PEs ``pe0`` + ``pe1`` (a ``warboy`` program on each); images/s = offline throughput;
  each next to the whole image's figure as a ratio.

Unless ``--no-measure``, each program also runs against a real ``--timing-only`` daemon (zero
outputs, chip timing): all patches of an image are sent over one socket, 64 in flight per PE,
and the emulated makespan (first arrival to last DMA out, on the daemon's clock) and the wall
time are reported next to the prediction. They differ only where this host cannot send patches
as fast as the emulated chip consumes them.

    python benchmarks/patching.py [--image 1024] [--sizes 32,64,128,256,352,512] [--images 3]
                                  [--no-measure] [--smoke] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from npusim.compiler_svc import CalibrationMethod, Calibrator, compile, optimize_model, quantize  # noqa: E402
from npusim.services import launch  # noqa: E402
from npusim.services.program import Program  # noqa: E402
from npusim.services.protocol import Kind, Message, decode, encode  # noqa: E402
from npusim.services.rpc import Peer  # noqa: E402
from npusim.services.timing import DeviceClock, StageTiming, throughput  # noqa: E402
from npusim.services.zoo import denoiser, sample_inputs  # noqa: E402
from npusim.services.zoo.denoiser import receptive_radius  # noqa: E402

DEPTH = 5
HALO = receptive_radius(DEPTH)
WINDOW = 64  # RUN requests in flight per PE (the daemon's queue limit is 128 per session)
MODES = {"pe0-1": ("warboy-2pe", ["pe0-1"]), "pe0+pe1": ("warboy", ["pe0", "pe1"])}


# -- models and programs ----------------------------------------------------------------------------
def model(height: int, width: int) -> onnx.ModelProto:
    return optimize_model(denoiser(depth=DEPTH, height=height, width=width))


def ranges(samples: int) -> dict[str, tuple[float, float]]:
    """One calibration for every size: a convolution-only model has the same tensor names (and,
    on images like these, the same ranges) whatever its input size, so all programs quantise
    alike and patched inference reproduces whole-image inference exactly."""
    m = model(128, 128)
    cal = Calibrator(m, CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data(sample_inputs(m, samples, seed=1), progress=False)
    return cal.compute_range()


def programs(height: int, width: int, r: dict[str, tuple[float, float]]) -> dict[str, Program]:
    """The denoiser at height × width, compiled for each PE mode's target."""
    q = quantize(model(height, width), r)
    out = {}
    for mode, (target, _) in MODES.items():
        p = compile(q, target_npu=target)
        if len(p.stages) != 1:
            raise SystemExit(f"expected one NPU stage at {height}×{width}, got {len(p.stages)}")
        out[mode] = p
    return out


# -- predictions ------------------------------------------------------------------------------------
def timing(p: Program) -> StageTiming:
    return StageTiming.for_stage(p.stages[0])


def makespan(pes: list[str], st: StageTiming, jobs: int) -> float:
    """ns from queuing ``jobs`` jobs at once (round-robin over ``pes``) to the last one's DMA out."""
    clock, end = DeviceClock(), 0
    for i in range(jobs):
        end = max(end, clock.schedule(pes[i % len(pes)], 0, st).end)
    return float(end)


def grid(height: int, width: int, size: int | None) -> tuple[int, int, int]:
    """(patches down, patches across, core) for ``size`` (None: the whole image, one job)."""
    if size is None:
        return 1, 1, 0
    core = size - 2 * HALO
    return math.ceil(height / core), math.ceil(width / core), core


def figures(height: int, width: int, size: int | None, progs: dict[str, Program]) -> dict[str, Any]:
    rows, cols, core = grid(height, width, size)
    n = rows * cols
    p = progs["pe0-1"]
    st = timing(p)
    est = p.stages[0].estimate
    ph, pw = (height, width) if size is None else (size, size)
    io_ns = st.h2d_ns + st.d2h_ns
    f: dict[str, Any] = {
        "size": size, "input": [1, 3, ph, pw], "core": core, "patches": n, "grid": [rows, cols],
        "halo_overhead_per_patch": 0.0 if size is None else size * size / (core * core) - 1.0,
        "halo_overhead_per_image": n * ph * pw / (height * width) - 1.0,
        "patch": {"macs": int(est.get("macs", 0)), "npu_us": st.exec_ns / 1e3, "compute_us": st.compute_ns / 1e3,
                  "h2d_us": st.h2d_ns / 1e3, "d2h_us": st.d2h_ns / 1e3, "io_us": io_ns / 1e3,
                  "h2d_bytes": st.in_bytes, "d2h_bytes": st.out_bytes,
                  "npu_to_io": st.exec_ns / io_ns if io_ns else math.inf,
                  "fits_sram": bool(est.get("fits_sram", True)),
                  "peak_activation_bytes": int(est.get("peak_activation_bytes", 0))},
        "image": {"macs": n * int(est.get("macs", 0)), "npu_us": n * st.exec_ns / 1e3,
                  "compute_us": n * st.compute_ns / 1e3, "io_us": n * io_ns / 1e3,
                  "io_bytes": n * (st.in_bytes + st.out_bytes)},
        "predicted": {},
    }
    for mode, (_, pes) in MODES.items():
        mst = timing(progs[mode])
        # the whole image is one job: a second PE cannot help it
        used = pes if n > 1 else pes[:1]
        f["predicted"][mode] = {"image_latency_us": makespan(used, mst, n) / 1e3,
                                "images_per_s": throughput(used, mst, 1) / n,
                                "fits_sram": bool(progs[mode].stages[0].estimate.get("fits_sram", True))}
    return f


# -- measurement against a timing-only daemon -------------------------------------------------------
def open_pe(endpoint: str, program: Program, pe: str) -> str:
    with Peer(endpoint, name="npu0", timeout_s=60.0) as peer:
        reply = peer.request(Kind.OPEN, {"pe": pe, "session": f"patching-{pe}", "client_pid": os.getpid()},
                             [("program", np.frombuffer(program.to_bytes(), np.uint8))])
    return reply.body["handle"]


def close_pe(endpoint: str, handle: str) -> None:
    with Peer(endpoint, name="npu0", timeout_s=30.0) as peer:
        peer.request(Kind.CLOSE, {"handle": handle})


def run_image(sock: zmq.Socket, frames: list[list[Any]], n: int) -> tuple[float, float]:
    """Send ``n`` patches round-robin over the PEs' frames, ``WINDOW`` in flight per PE; returns
    (emulated makespan, wall time) in µs."""
    per_pe = [n // len(frames) + (k < n % len(frames)) for k in range(len(frames))]
    sent, done = [0] * len(frames), 0
    first, last = math.inf, 0
    t0 = time.perf_counter()
    for k, fr in enumerate(frames):
        while sent[k] < min(WINDOW, per_pe[k]):
            sock.send_multipart(fr, copy=False)
            sent[k] += 1
    while done < n:
        if not sock.poll(30_000):
            raise SystemExit(f"no reply from the daemon for 30 s after {done} of {n} patches")
        while True:
            try:
                reply = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            msg = decode(reply)
            if msg.kind != Kind.RESULT:
                raise SystemExit(f"the daemon answered {msg.kind.name}: {msg.body}")
            t = msg.body["timing"]
            first, last = min(first, t["arrival_ns"]), max(last, t["end_ns"])
            done += 1
            k = msg.id  # the id says which PE's frames it was
            if sent[k] < per_pe[k]:
                sock.send_multipart(frames[k], copy=False)
                sent[k] += 1
    return (last - first) / 1e3, (time.perf_counter() - t0) * 1e6


def measure(endpoint: str, progs: dict[str, Program], n: int, images: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ctx = zmq.Context.instance()
    for mode, (_, pes) in MODES.items():
        p = progs[mode]
        used = pes if n > 1 else pes[:1]
        handles = [open_pe(endpoint, p, pe) for pe in used]
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        try:
            zeros = [(s.name, np.zeros(s.shape, np.dtype(s.dtype))) for s in p.stages[0].device_inputs]
            frames = [encode(Message(Kind.RUN, k, {"handle": h, "stage": 0}, zeros)) for k, h in enumerate(handles)]
            run_image(sock, frames, min(n, 2 * len(used)))  # warm-up
            runs = [run_image(sock, frames, n) for _ in range(images)]
        finally:
            sock.close(linger=0)
            for h in handles:
                close_pe(endpoint, h)
        wall = statistics.median(r[1] for r in runs)
        out[mode] = {"emulated_image_us": statistics.median(r[0] for r in runs), "wall_image_us": wall,
                     "wall_us_per_patch": wall / n, "images": images}
    return out


# -- the sweep --------------------------------------------------------------------------------------
def sweep(height: int, width: int, sizes: list[int], *, samples: int, images: int, measured: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = ranges(samples)
    cases: list[tuple[str, int | None]] = [("whole", None)] + [(str(s), s) for s in sizes]
    progs = {}
    for label, size in cases:
        progs[label] = programs(height, width, r) if size is None else programs(size, size, r)
    compile_s = time.perf_counter() - t0
    rows = {label: figures(height, width, size, progs[label]) for label, size in cases}
    if measured:
        tmp = tempfile.mkdtemp(prefix="npusim-p-", dir="/tmp")
        daemon = launch.start("daemon", "npu0", f"ipc://{tmp}/npu0.sock", Path(tmp),
                              extra=["--timing-only", "--jitter", "0"])
        try:
            launch.wait_healthy([daemon])
            for label, _ in cases:
                rows[label]["measured"] = measure(daemon.endpoint, progs[label], rows[label]["patches"], images)
        finally:
            launch.stop_all([daemon])
            shutil.rmtree(tmp, ignore_errors=True)
    whole = rows["whole"]
    for f in rows.values():
        for mode, pr in f["predicted"].items():
            ref = whole["predicted"][mode]
            pr["latency_vs_whole"] = pr["image_latency_us"] / ref["image_latency_us"]
            pr["throughput_vs_whole"] = pr["images_per_s"] / ref["images_per_s"]
            if "measured" in f:
                m = f["measured"][mode]
                m["emulated_vs_predicted"] = m["emulated_image_us"] / pr["image_latency_us"]
                m["emulated_vs_whole"] = m["emulated_image_us"] / whole["measured"][mode]["emulated_image_us"]
        f["image"]["npu_vs_whole"] = f["image"]["npu_us"] / whole["image"]["npu_us"]
        f["image"]["io_vs_whole"] = f["image"]["io_us"] / whole["image"]["io_us"]
    best = {mode: min((lb for lb, _ in cases), key=lambda lb: rows[lb]["predicted"][mode]["image_latency_us"])
            for mode in MODES}
    return {"image": [1, 3, height, width], "model": f"denoiser(depth={DEPTH}, channels=32)", "halo": HALO,
            "sizes": rows, "best": best, "compile_s": compile_s, "measured": measured,
            "config": {"calibration_samples": samples, "images_measured": images, "window_per_pe": WINDOW}}


def _print(r: dict[str, Any]) -> None:
    h, w = r["image"][2:]
    print(f"patching {r['model']} over a 1×3×{h}×{w} image, halo {r['halo']} px (the receptive radius); "
          f"cost model + timing engine" + (", measured on a --timing-only daemon" if r["measured"] else ""))
    print(f"{'patch':>6} {'core':>5} {'patches':>7} {'halo/patch':>10} {'halo/img':>8} {'fits SRAM':>9} "
          f"{'NPU µs':>9} {'MAC µs':>8} {'DMA µs':>8} {'NPU/DMA':>7} │ {'img NPU ms':>10} {'img DMA ms':>10} "
          f"{'× whole':>7}")
    for label, f in r["sizes"].items():
        p, im = f["patch"], f["image"]
        fits = "/".join("yes" if f["predicted"][m]["fits_sram"] else "no" for m in MODES)
        print(f"{label:>6} {f['core'] or '—':>5} {f['patches']:>7} {f['halo_overhead_per_patch']:>9.0%} "
              f"{f['halo_overhead_per_image']:>8.0%} {fits:>9} {p['npu_us']:>9.1f} "
              f"{p['compute_us']:>8.1f} {p['io_us']:>8.1f} {p['npu_to_io']:>7.1f} │ {im['npu_us'] / 1e3:>10.3f} "
              f"{im['io_us'] / 1e3:>10.3f} {im['npu_vs_whole']:>6.2f}×")
    print()
    hdr = f"{'patch':>6}"
    for mode in MODES:
        hdr += f" │ {mode + ' ms':>10} {'img/s':>7} {'× whole':>7}"
        if r["measured"]:
            hdr += f" {'meas. ms':>8} {'/pred':>5} {'wall ms':>8}"
    print("predicted image latency (all patches queued at once) and images/s" +
          ("; measured: emulated makespan, ratio to predicted, wall time (median)" if r["measured"] else ""))
    print(hdr)
    for label, f in r["sizes"].items():
        line = f"{label:>6}"
        for mode in MODES:
            pr = f["predicted"][mode]
            line += f" │ {pr['image_latency_us'] / 1e3:>10.3f} {pr['images_per_s']:>7.1f} {pr['latency_vs_whole']:>6.2f}×"
            if r["measured"]:
                m = f["measured"][mode]
                line += (f" {m['emulated_image_us'] / 1e3:>8.3f} {m['emulated_vs_predicted']:>5.2f} "
                         f"{m['wall_image_us'] / 1e3:>8.3f}")
        print(line)
    print()
    for mode, label in r["best"].items():
        f = r["sizes"][label]
        print(f"best on {mode}: {'the whole image' if label == 'whole' else f'patch {label}'} — "
              f"{f['predicted'][mode]['image_latency_us'] / 1e3:.3f} ms per image, "
              f"{f['predicted'][mode]['latency_vs_whole']:.2f}× the whole image's "
              f"{r['sizes']['whole']['predicted'][mode]['image_latency_us'] / 1e3:.3f} ms")
    if r["measured"]:
        host = min(f["measured"][m]["wall_us_per_patch"] for f in r["sizes"].values() for m in MODES
                   if f["patches"] > 1)
        print(f"measured: this host turned a patch around every {host:.0f} µs at best (client + daemon, wall); "
              "sizes whose patches take the chip less than that are host-bound here, and /pred > 1 says by how much")
    print("per-patch columns are the fused PE's (pe0-1) program; 'fits SRAM' is pe0-1/pe0 (32/16 MiB)")
    print(f"(compiling {len(r['sizes'])} sizes × {len(MODES)} targets took {r['compile_s']:.1f} s)")


def _image(s: str) -> tuple[int, int]:
    h, _, w = s.lower().partition("x")
    return int(h), int(w or h)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=_image, default=(1024, 1024), help="image H or HxW (default 1024)")
    ap.add_argument("--sizes", default="32,64,128,256,352,512", help="patch input sizes, comma-separated")
    ap.add_argument("--images", type=int, default=3, help="measured images per size and mode (median)")
    ap.add_argument("--no-measure", action="store_true", help="predictions only, no daemon")
    ap.add_argument("--smoke", action="store_true", help="a 256×256 image, patches 32, 64, 128, one measured image")
    ap.add_argument("--json", action="store_true", help="print one JSON object of every figure")
    args = ap.parse_args()
    (h, w), images, samples = args.image, args.images, 4
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.smoke:
        (h, w), sizes, images, samples = (256, 256), [32, 64, 128], 1, 1
    bad = [s for s in sizes if s <= 2 * HALO or s > min(h, w)]
    if bad:
        ap.error(f"patch sizes must be > {2 * HALO} (twice the halo) and at most the image: {bad}")
    r = sweep(h, w, sorted(set(sizes)), samples=samples, images=images, measured=not args.no_measure)
    if args.json:
        print(json.dumps(r, default=float))
    else:
        _print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
