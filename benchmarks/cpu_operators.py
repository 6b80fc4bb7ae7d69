"""The host (CPU) operators' speed, each next to a plain memcpy of the same bytes, and S1's figure.

Every operator is the class the worker runs (``npusim.client.ops.load_op(name, attrs).run(x)``, with its
output check, outside any trace), on the tensors of a 1×3×640×640 (YOLOX-L sized) model:

- Quantize       float32 → int8, the input of a model quantised with_quantize=True;
- QuantizeUint8  uint8 → int8, the same input with with_quantize=False (a shift by 128);
- Dequantize     int8 → float32 of the same shape;
- Lower          int8 NHWC 1×640×640×3 → the NPU's lowered N,H,C,Wp layout (an NHWC input);
- Unlower        that lowered tensor → NHWC again;
- Pad / Slice    an int8 1×3×640×100 tensor padded to width 128 and sliced back to 100.

The references are ``np.copyto`` into a preallocated array: of the operator's input bytes
("memcpy"), and, for an operator whose output is larger or smaller than its input, of its output
bytes too ("memcpy out": Dequantize writes 4× the bytes it reads, so a copy of its input alone
under-states what any kernel must move). Quantize is also timed next to onnxruntime's own
QuantizeLinear (a session built here, one thread like a worker; the default thread count is
shown for context only). Operator and references alternate call by call, so all see the same
load and cache state; each figure is the best of the repetitions after a warm-up (the machine is
noisy: the best is the least disturbed run), with the median alongside in the JSON.

The operators run their compiled kernels (``client/ops/_simd.c``) where the install built them,
and the report says so; without them, their numpy fallbacks.

The goals (from the issue): Quantize ≤ 200 µs, QuantizeUint8 ≤ 1.5× memcpy, Lower and Unlower
≤ 2× memcpy, Dequantize ≤ 2× memcpy. S1's headline: the uint8 path against a memcpy of the uint8
tensor, and the float path against the uint8 path (the seed's YOLOX-L table: 60.639 ms →
0.277 ms, 219×, from a slow float kernel).

    python benchmarks/cpu_operators.py [--smoke] [--json] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from npusim.client.ops import _native, load_op  # noqa: E402
from npusim.services import layout  # noqa: E402
from npusim.services.zoo.inputs import image_batch  # noqa: E402

SHAPE = (1, 3, 640, 640)
PAD_SHAPE = (1, 3, 640, 100)
# the yolox_like input's MIN_MAX_ASYM quantisation (ImageNet-normalised images in ≈[-2.12, 2.64])
SCALE, ZERO_POINT = 0.018658448, -14
QUANTIZE_GOAL_US = 200.0
GOALS = {"QuantizeUint8": 1.5, "Lower": 2.0, "Unlower": 2.0, "Dequantize": 2.0}  # × memcpy


def tensors() -> dict[str, tuple[str, dict[str, Any], np.ndarray]]:
    """name → (operator, attributes, input)."""
    rng = np.random.default_rng(0)
    x = image_batch(rng, SHAPE)  # float32, ImageNet-normalised, like the model's input
    u = np.round((x / SCALE) + ZERO_POINT + 128).clip(0, 255).astype(np.uint8)
    i8 = load_op("QuantizeUint8", {}).run(u)
    nhwc = np.ascontiguousarray(i8.transpose(0, 2, 3, 1))
    lowered = load_op("Lower", {"axes": "NHWC", "value": ZERO_POINT}).run(nhwc)
    narrow = np.ascontiguousarray(i8[..., :PAD_SHAPE[-1]])
    padded = load_op("Pad", {"multiple": layout.LANE, "value": ZERO_POINT}).run(narrow)
    q = {"scale": SCALE, "zero_point": ZERO_POINT}
    return {
        "Quantize": ("Quantize", q, x),
        "QuantizeUint8": ("QuantizeUint8", {}, u),
        "Dequantize": ("Dequantize", q, i8),
        "Lower": ("Lower", {"axes": "NHWC", "value": ZERO_POINT}, nhwc),
        "Unlower": ("Unlower", {"axes": "NHWC", "shape": list(nhwc.shape)}, lowered),
        "Pad": ("Pad", {"multiple": layout.LANE, "value": ZERO_POINT}, narrow),
        "Slice": ("Slice", {"length": PAD_SHAPE[-1]}, padded),
    }


def timed(calls: dict[str, Callable[[], Any]], repeat: int, warmup: int) -> dict[str, dict[str, float]]:
    """Best and median (µs) of each call, the calls alternating one by one."""
    for _ in range(warmup):
        for f in calls.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeat):
        for k, f in calls.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: {"best_us": min(v) * 1e6, "p50_us": float(np.median(v)) * 1e6} for k, v in times.items()}


def memcpy(src: np.ndarray) -> Callable[[], Any]:
    dst = np.empty_like(src)
    return lambda: np.copyto(dst, src)


def ort_quantize_linear(x: np.ndarray, threads: int) -> Callable[[], Any]:
    """onnxruntime's QuantizeLinear on ``x`` (``threads`` 0: onnxruntime's default)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.INT8, list(x.shape))],
        [numpy_helper.from_array(np.array(SCALE, np.float32), "s"),
         numpy_helper.from_array(np.array(ZERO_POINT, np.int8), "z")])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads must not steal the core
    session = ort.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString(),
                                   so, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"x": x})


def measure(repeat: int, warmup: int) -> dict[str, Any]:
    ops: dict[str, Any] = {}
    ort_figures: dict[str, dict[str, float]] = {}
    for label, (name, attrs, x) in tensors().items():
        op = load_op(name, attrs)
        y = op.run(x)
        calls: dict[str, Callable[[], Any]] = {"op": lambda op=op, x=x: op.run(x), "memcpy": memcpy(x)}
        if y.nbytes != x.nbytes:
            calls["memcpy_out"] = memcpy(y)
        if label == "Quantize":
            calls["ort_1_thread"] = ort_quantize_linear(x, 1)
            calls["ort_default_threads"] = ort_quantize_linear(x, 0)
        t = timed(calls, repeat, warmup)
        o = ops[label] = {
            "input": f"{x.dtype}{list(x.shape)}", "output": f"{y.dtype}{list(y.shape)}",
            "bytes_in": int(x.nbytes), "bytes_out": int(y.nbytes),
            "best_us": t["op"]["best_us"], "p50_us": t["op"]["p50_us"],
            "memcpy_us": t["memcpy"]["best_us"], "ratio_to_memcpy": t["op"]["best_us"] / t["memcpy"]["best_us"],
        }
        if "memcpy_out" in t:
            o["memcpy_out_us"] = t["memcpy_out"]["best_us"]
            o["ratio_to_memcpy_out"] = t["op"]["best_us"] / t["memcpy_out"]["best_us"]
        if label == "Quantize":
            ort_figures = {k: t[k] for k in ("ort_1_thread", "ort_default_threads")}
    q = ops["Quantize"]
    quantize = {
        "us": q["best_us"], "ratio_to_memcpy": q["ratio_to_memcpy"],
        "ort_quantize_linear_us": ort_figures["ort_1_thread"]["best_us"],
        "ratio_to_ort": q["best_us"] / ort_figures["ort_1_thread"]["best_us"],
        "ort_quantize_linear_default_threads_us": ort_figures["ort_default_threads"]["best_us"],
        "seed_ms": 60.639,
    }
    goals: dict[str, Any] = {"Quantize": {"goal_us": QUANTIZE_GOAL_US, "us": q["best_us"],
                                          "met": bool(q["best_us"] <= QUANTIZE_GOAL_US)}}
    for label, limit in GOALS.items():
        o = ops[label]
        g = goals[label] = {"goal_x_memcpy": limit, "ratio_to_memcpy": o["ratio_to_memcpy"],
                            "met": bool(o["ratio_to_memcpy"] <= limit)}
        if "ratio_to_memcpy_out" in o:
            g["ratio_to_memcpy_out"] = o["ratio_to_memcpy_out"]
            g["met_against_memcpy_out"] = bool(o["ratio_to_memcpy_out"] <= limit)
    u8 = ops["QuantizeUint8"]
    s1 = {  # S1: the uint8 path against a copy of the uint8 tensor, and the float path against the uint8 path
        "float_quantize_us": q["best_us"],
        "uint8_quantize_us": u8["best_us"],
        "uint8_memcpy_us": u8["memcpy_us"],
        "uint8_quantize_to_memcpy": u8["ratio_to_memcpy"],
        "float_to_uint8_ratio": q["best_us"] / u8["best_us"],
        "uint8_within_1_5x_memcpy": bool(u8["ratio_to_memcpy"] <= 1.5),
        "seed_yolox_l_ms": {"with_quantize_true": 60.639, "with_quantize_false": 0.277},
    }
    config = {"repeat": repeat, "warmup": warmup, "statistic": "best", "reference": "np.copyto",
              "shape": list(SHAPE), "pad_shape": list(PAD_SHAPE), "compiled_kernels": _native.available()}
    return {"operators": ops, "quantize": quantize, "goals": goals, "s1": s1, "config": config}


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(r: dict[str, Any]) -> None:
    c = r["config"]
    print(f"host operators, best of {c['repeat']} after {c['warmup']} warm-up, each next to np.copyto of the same "
          f"bytes (its input; its output too when the size differs)")
    k = c["compiled_kernels"]
    print("kernels: " + ("compiled, AVX2" if k and k.get("avx2") else "compiled, portable C" if k is not None
                         else "numpy fallback (the compiled extension is not built here)"))
    print(f"{'operator':14s} {'input':>24s} {'output':>24s} {'best':>8s} {'memcpy':>8s} {'×':>6s} "
          f"{'memcpy out':>10s} {'×':>6s}")
    for label, o in r["operators"].items():
        out = (f"{o['memcpy_out_us']:>8.0f}µs {o['ratio_to_memcpy_out']:>5.2f}×" if "memcpy_out_us" in o else "")
        print(f"{label:14s} {o['input']:>24s} {o['output']:>24s} {o['best_us']:>6.0f}µs {o['memcpy_us']:>6.0f}µs "
              f"{o['ratio_to_memcpy']:>5.2f}× {out}")
    q = r["quantize"]
    print(f"\nQuantize float32→int8 {q['us']:.0f} µs: {q['ratio_to_memcpy']:.2f}× a memcpy of its input, "
          f"{q['ratio_to_ort']:.2f}× onnxruntime QuantizeLinear on one thread ({q['ort_quantize_linear_us']:.0f} µs; "
          f"{q['ort_quantize_linear_default_threads_us']:.0f} µs on onnxruntime's default threads); "
          f"seed {q['seed_ms']:.1f} ms")
    print("goals:")
    for label, g in r["goals"].items():
        if "goal_us" in g:
            print(f"  {label:14s} ≤ {g['goal_us']:.0f} µs: {g['us']:.0f} µs, {_met(g['met'])}")
            continue
        line = f"  {label:14s} ≤ {g['goal_x_memcpy']:.1f}× memcpy: {g['ratio_to_memcpy']:.2f}×, {_met(g['met'])}"
        if "ratio_to_memcpy_out" in g:
            line += (f" (against a memcpy of its output bytes: {g['ratio_to_memcpy_out']:.2f}×, "
                     f"{_met(g['met_against_memcpy_out'])})")
        print(line)
    s = r["s1"]
    print(f"\nS1: Quantize float32→int8 {s['float_quantize_us']:.0f} µs, uint8→int8 {s['uint8_quantize_us']:.0f} µs: "
          f"{s['float_to_uint8_ratio']:.1f}× (seed, YOLOX-L: 60.639 ms → 0.277 ms, 219×); the uint8 path is "
          f"{s['uint8_quantize_to_memcpy']:.2f}× a memcpy of the uint8 tensor ({s['uint8_memcpy_us']:.0f} µs; "
          f"goal ≤ 1.5×: {_met(s['uint8_within_1_5x_memcpy'])})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=300, help="timed repetitions per operator (default 300)")
    ap.add_argument("--smoke", action="store_true", help="a few repetitions: check that it runs")
    ap.add_argument("--json", action="store_true", help="print one JSON object of every figure")
    args = ap.parse_args()
    repeat, warmup = (10, 2) if args.smoke else (args.repeat, max(10, args.repeat // 10))
    r = measure(repeat, warmup)
    if args.json:
        print(json.dumps(r))
    else:
        report(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
