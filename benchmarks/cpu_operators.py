"""The host (CPU) operators' speed, each next to a numpy memcpy of the same bytes, and S1's figure.

Every operator is the class the worker runs (``client.ops.load_op(name, attrs).run(x)``, with its
output check, outside any trace), on the tensors of a 1×3×640×640 (YOLOX-L sized) model:

- Quantize       float32 → int8, the input of a model quantised with_quantize=True;
- QuantizeUint8  uint8 → int8, the same input with with_quantize=False (a shift by 128);
- Dequantize     int8 → float32 of the same shape;
- Lower          int8 NHWC 1×640×640×3 → the NPU's lowered N,H,C,Wp layout (an NHWC input);
- Unlower        that lowered tensor → NHWC again;
- Pad / Slice    an int8 1×3×640×100 tensor padded to width 128 and sliced back to 100.

The reference for each is ``np.copy`` of the operator's input (a read of the same bytes and a
write into a new array, as the operator allocates its output). Operator and reference alternate
repetition by repetition, so both see the same load and cache state; each figure is the p50 of
the repetitions after a warm-up. The kernels are measured as they are, not tuned here.

S1's headline: the uint8 path's Quantize against a memcpy of the uint8 tensor (the mission asks
≤ 1.5×) and the float path's Quantize against the uint8 path's (the seed's YOLOX-L table:
60.639 ms → 0.277 ms, 219×, from a slow float kernel).

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

from client.ops import load_op  # noqa: E402
from services import layout  # noqa: E402
from services.zoo.inputs import image_batch  # noqa: E402

SHAPE = (1, 3, 640, 640)
PAD_SHAPE = (1, 3, 640, 100)
# the yolox_like input's MIN_MAX_ASYM quantisation (ImageNet-normalised images in ≈[-2.12, 2.64])
SCALE, ZERO_POINT = 0.018658448, -14


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


def p50_pair(op: Callable[[], Any], ref: Callable[[], Any], repeat: int, warmup: int) -> tuple[float, float]:
    """p50 (µs) of ``op`` and of ``ref``, alternating call by call."""
    for _ in range(warmup):
        op()
        ref()
    a, b = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        op()
        t1 = time.perf_counter()
        ref()
        t2 = time.perf_counter()
        a.append(t1 - t0)
        b.append(t2 - t1)
    return float(np.percentile(a, 50) * 1e6), float(np.percentile(b, 50) * 1e6)


def measure(repeat: int, warmup: int) -> dict[str, Any]:
    results: dict[str, Any] = {"operators": {}}
    for label, (name, attrs, x) in tensors().items():
        op = load_op(name, attrs)
        y = op.run(x)
        op_us, copy_us = p50_pair(lambda: op.run(x), lambda: np.copy(x), repeat, warmup)
        results["operators"][label] = {
            "input": f"{x.dtype}{list(x.shape)}", "output": f"{y.dtype}{list(y.shape)}",
            "bytes_in": int(x.nbytes), "bytes_out": int(y.nbytes),
            "p50_us": op_us, "memcpy_p50_us": copy_us, "ratio_to_memcpy": op_us / copy_us,
        }
    ops = results["operators"]
    # S1: the uint8 path against a copy of the uint8 tensor, and the float path against the uint8 path
    results["s1"] = {
        "float_quantize_us": ops["Quantize"]["p50_us"],
        "uint8_quantize_us": ops["QuantizeUint8"]["p50_us"],
        "uint8_memcpy_us": ops["QuantizeUint8"]["memcpy_p50_us"],
        "uint8_quantize_to_memcpy": ops["QuantizeUint8"]["ratio_to_memcpy"],
        "float_to_uint8_ratio": ops["Quantize"]["p50_us"] / ops["QuantizeUint8"]["p50_us"],
        "uint8_within_1_5x_memcpy": bool(ops["QuantizeUint8"]["ratio_to_memcpy"] <= 1.5),
        "seed_yolox_l_ms": {"with_quantize_true": 60.639, "with_quantize_false": 0.277},
    }
    results["config"] = {"repeat": repeat, "warmup": warmup, "shape": list(SHAPE), "pad_shape": list(PAD_SHAPE)}
    return results


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
        return 0
    print(f"host operators, p50 of {repeat} repetitions after {warmup} warm-up, each next to np.copy of its input")
    print(f"{'operator':14s} {'input':>26s} {'output':>26s} {'p50':>10s} {'memcpy':>10s} {'× memcpy':>9s}")
    for label, o in r["operators"].items():
        print(f"{label:14s} {o['input']:>26s} {o['output']:>26s} {o['p50_us']:>8.0f}µs {o['memcpy_p50_us']:>8.0f}µs "
              f"{o['ratio_to_memcpy']:>8.2f}×")
    s = r["s1"]
    print(f"\nS1: Quantize float32→int8 {s['float_quantize_us']:.0f} µs, uint8→int8 {s['uint8_quantize_us']:.0f} µs: "
          f"{s['float_to_uint8_ratio']:.1f}× (seed, YOLOX-L: 60.639 ms → 0.277 ms, 219×); the uint8 path is "
          f"{s['uint8_quantize_to_memcpy']:.2f}× a memcpy of the uint8 tensor ({s['uint8_memcpy_us']:.0f} µs; "
          f"goal ≤ 1.5×: {'met' if s['uint8_within_1_5x_memcpy'] else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
