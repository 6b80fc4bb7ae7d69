"""Scenario S5, patching (seed technique 8: large tensors).

"Patched inference of a local (convolution-only) model equals whole-image inference in the
interior; a patch-size sweep reports NPU compute/IO per size."

The model is the zoo's ``denoiser``: five 3×3 convolutions (padding 1, stride 1, BatchNorm folded)
with ReLU between them and the input added back — no pooling, no stride, nothing global, so
it is translation-equivariant and an output pixel depends only on the input within
``receptive_radius() = 5`` pixels of it. Its weights do not depend on the size it is built
for, so ``denoiser(height=h, width=w)`` is the same function at every size.

How equality is made exact (and why it can be): the whole-image graph and the patch graph are
quantised with *one* set of ranges (one ``Calibrator`` run, the same tensor names in both
graphs), so every int8 tensor has the same scale and zero point in both programs. Each output
pixel is then computed by the same integer arithmetic on the same int8 inputs — int32
accumulation is exact, and requantisation is a per-element function of the accumulator — so
nothing depends on where the pixel sits in the tensor or on how large the tensor is. Pixels
within the halo of a patch edge see the patch's zero padding instead of their neighbours and
are thrown away; what is kept is bit-identical to whole-image inference. (Calibrating each
program on its own would give different scales and only quantisation-level agreement.)

The patches go through real sessions opened on two single PEs (``npu1pe0``, ``npu1pe1``,
round-robin: the seed's "spread patches over several NPUs"), the whole image through a fused
``npu0pe0-1`` session; the compiler service compiles both quantised graphs.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest

from npusim.client import session
from npusim.compiler_svc import CalibrationMethod, Calibrator, optimize_model, quantize
from npusim.services.zoo import denoiser, sample_inputs
from npusim.services.zoo.denoiser import receptive_radius

pytestmark = pytest.mark.timeout(120)

H, W = 128, 160  # not square, so a swapped axis shows; W % 32 == 0: no host Pad/Slice
PATCH = 64  # the patch program's input size (a multiple of 32 as well)
R = receptive_radius()  # the halo: 5 for the five 3×3 convolutions
CORE = PATCH - 2 * R  # output pixels each patch contributes, per axis


def _model(h: int, w: int) -> onnx.ModelProto:
    return optimize_model(denoiser(height=h, width=w))


def _tensor_names(m: onnx.ModelProto) -> set[str]:
    return {o for n in m.graph.node for o in n.output} | {i.name for i in m.graph.input}


@pytest.fixture(scope="module")
def graphs() -> tuple[bytes, bytes, np.ndarray]:
    """The whole-image and patch graphs quantised with the same ranges, and a test image."""
    whole, patch = _model(H, W), _model(PATCH, PATCH)
    assert _tensor_names(whole) == _tensor_names(patch), "one set of ranges must fit both graphs"
    cal = Calibrator(whole, CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data(sample_inputs(whole, 2, seed=11), progress=False)
    ranges = cal.compute_range()
    image = sample_inputs(whole, 1, seed=12)[0][0]  # natural-image-like pixels in [0, 1]
    assert image.shape == (1, 3, H, W)
    return quantize(whole, ranges), quantize(patch, ranges), image


def _patches(image: np.ndarray) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Patch origins (in output pixels) and the image padded for them.

    Patch (i, j) produces output rows i·CORE … i·CORE+CORE−1 (and columns likewise) from the
    input window that starts R pixels earlier; the image is padded with zeros by R on the top
    and left and by enough on the bottom and right for the last row and column of patches.
    """
    rows, cols = math.ceil(H / CORE), math.ceil(W / CORE)
    pad_h, pad_w = rows * CORE + 2 * R - H - R, cols * CORE + 2 * R - W - R
    padded = np.pad(image, ((0, 0), (0, 0), (R, pad_h), (R, pad_w)))
    return [(i * CORE, j * CORE) for i in range(rows) for j in range(cols)], padded


@pytest.mark.usefixtures("use_stack")
def test_patched_inference_equals_whole_image_in_the_interior(graphs: tuple[bytes, bytes, np.ndarray]) -> None:
    q_whole, q_patch, image = graphs
    with session.create(q_whole, device="npu0pe0-1") as whole:
        (expected,) = whole.run(image)
    assert expected.shape == (1, 3, H, W) and expected.dtype == np.float32
    assert float(expected.std()) > 0.05, "a constant output would make the comparison vacuous"

    origins, padded = _patches(image)
    assert len(origins) == 9
    stitched = np.full((1, 3, math.ceil(H / CORE) * CORE, math.ceil(W / CORE) * CORE), np.nan, np.float32)
    halo_differs = False
    with session.create(q_patch, device="npu1pe0") as pe0, session.create(q_patch, device="npu1pe1") as pe1:
        assert pe0.input(0).shape == (1, 3, PATCH, PATCH)
        for k, (y, x) in enumerate(origins):
            window = np.ascontiguousarray(padded[:, :, y:y + PATCH, x:x + PATCH])
            (out,) = (pe0 if k % 2 == 0 else pe1).run(window)
            assert out.shape == (1, 3, PATCH, PATCH)
            stitched[:, :, y:y + CORE, x:x + CORE] = out[:, :, R:R + CORE, R:R + CORE]
            # the halo is needed: where a window lies inside the image, its outer ring (computed
            # against the patch's zero padding) differs from the whole-image result
            y0, x0 = y - R, x - R
            if y0 >= 0 and x0 >= 0 and y0 + PATCH <= H and x0 + PATCH <= W:
                halo_differs |= not np.array_equal(out, expected[:, :, y0:y0 + PATCH, x0:x0 + PATCH])
    stitched = stitched[:, :, :H, :W]
    assert not np.isnan(stitched).any(), "the patches cover the whole image"
    inner = (slice(None), slice(None), slice(R, H - R), slice(R, W - R))
    diff = np.abs(stitched[inner] - expected[inner])
    assert np.array_equal(stitched[inner], expected[inner]), (
        f"patched ≠ whole in the interior: {int((diff > 0).sum())} pixels differ, max {float(diff.max())}")
    assert halo_differs, "some patch's halo must differ from the whole image, or the test proves nothing"


def _benchmark() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "patching.py"
    spec = importlib.util.spec_from_file_location("npusim_bench_patching", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_patch_size_sweep_reports_npu_compute_and_io_per_size() -> None:
    """The benchmark's sweep (predictions only: deterministic, no timing is asserted)."""
    bench = _benchmark()
    sizes = [32, 64, 128]
    r = bench.sweep(256, 256, sizes, samples=1, images=1, measured=False)
    rows = r["sizes"]
    assert list(rows) == ["whole", "32", "64", "128"]
    whole = rows["whole"]
    assert whole["patches"] == 1 and whole["halo_overhead_per_image"] == 0.0
    for s in sizes:
        f = rows[str(s)]
        core = s - 2 * r["halo"]
        assert f["core"] == core and f["patches"] == math.ceil(256 / core) ** 2
        p, im = f["patch"], f["image"]
        for key in ("npu_us", "compute_us", "h2d_us", "d2h_us", "io_us"):
            assert p[key] > 0, (s, key)
        assert p["h2d_bytes"] == 3 * s * s and p["d2h_bytes"] == 3 * s * s  # int8 in, int8 out
        assert im["npu_us"] == pytest.approx(f["patches"] * p["npu_us"])
        assert im["io_us"] == pytest.approx(f["patches"] * p["io_us"])
        assert im["macs"] > whole["image"]["macs"], "the halo is computed twice"
        for mode in ("pe0-1", "pe0+pe1"):
            pr = f["predicted"][mode]
            assert pr["image_latency_us"] > 0 and pr["images_per_s"] > 0
            assert pr["latency_vs_whole"] == pytest.approx(
                pr["image_latency_us"] / whole["predicted"][mode]["image_latency_us"])
    # bigger patches: more work per patch, less halo per pixel
    per = [rows[str(s)] for s in sizes]
    assert [f["patch"]["npu_us"] for f in per] == sorted(f["patch"]["npu_us"] for f in per)
    assert [f["patch"]["io_us"] for f in per] == sorted(f["patch"]["io_us"] for f in per)
    assert [f["halo_overhead_per_patch"] for f in per] == sorted((f["halo_overhead_per_patch"] for f in per),
                                                                 reverse=True)
    # patches of one image queued at once overlap DMA and execution: never slower than one after another
    for f in per:
        one_by_one = f["patches"] * (f["patch"]["npu_us"] + f["patch"]["io_us"])
        assert f["predicted"]["pe0-1"]["image_latency_us"] <= one_by_one + 1e-6
