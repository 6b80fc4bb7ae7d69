"""Calibration methods: each observer on synthetic data with known distributions, the streaming
histogram (exact re-binning, streaming == one-shot, bounded memory), degenerate inputs, the KL
and noise formulas against naive references, and all ten methods end to end through Calibrator.
"""

from __future__ import annotations

import io
import math
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from npusim.compiler_svc.calibrate import CalibrationMethod, Calibrator
from npusim.compiler_svc.calibrate._list import OBSERVERS
from npusim.compiler_svc.calibrate.base import MIN_WIDTH
from npusim.compiler_svc.calibrate.calibrator import float_tensors
from npusim.compiler_svc.calibrate.entropy import _side_table, asym_thresholds, sym_threshold
from npusim.compiler_svc.calibrate.histogram import SLOTS, HistogramObserver, StreamingHistogram
from npusim.compiler_svc.calibrate.noise import side_noise
from npusim.services.errors import CalibrationError

pytestmark = pytest.mark.timeout(30)

METHODS = list(CalibrationMethod)
HIST_METHODS = [m for m in METHODS if m.family != "MIN_MAX"]
N = 400_000


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


DATA = {
    "normal": _f32(_rng(1).standard_normal(N)),
    "uniform": _f32(_rng(2).uniform(-1.0, 3.0, N)),
    "laplace_outliers": _f32(np.concatenate([_rng(3).laplace(0.0, 1.0, N), [80.0, -60.0, 100.0]])),
    "student_t_outliers": _f32(np.concatenate([_rng(4).standard_t(3, N), [150.0, -120.0, 180.0]])),
    "relu": _f32(np.maximum(_rng(6).standard_normal(N), 0.0)),
    "skewed": _f32(_rng(7).gamma(2.0, 1.0, N) - 1.0),
}
HEAVY = ("laplace_outliers", "student_t_outliers")
SMALL = {name: np.concatenate([x[:50_000], x[N:]]) for name, x in DATA.items()}  # for brute-force checks


def observe(method: CalibrationMethod, x: np.ndarray, *, chunks: int = 1, percentage: float = 99.99):
    obs = OBSERVERS[method.family](symmetric=method.symmetric, percentage=percentage)
    for part in np.array_split(x, chunks):
        obs.update(part)
    return obs


def rng_of(method: CalibrationMethod, x: np.ndarray, **kw: object) -> tuple[float, float]:
    return observe(method, x, **kw).range()


def quant_noise(x: np.ndarray, lo: float, hi: float, symmetric: bool, gamma: float = 1.0) -> float:
    """Empirical mean of rounding² + gamma·clipping² of int8 quantisation with this range."""
    x = x.astype(np.float64)
    if symmetric:
        d = hi / 127
        k_lo, k_hi = -127, 127
    else:
        d = (hi - lo) / 255
        z = round(-lo / d)
        k_lo, k_hi = -z, 255 - z
    k = np.round(x / d)
    clipped = (k < k_lo) | (k > k_hi)
    e = (x - np.clip(k, k_lo, k_hi) * d) ** 2
    return float(np.mean(np.where(clipped, gamma * e, e)))


def assert_valid(r: tuple[float, float], symmetric: bool) -> None:
    lo, hi = r
    assert isinstance(lo, float) and isinstance(hi, float)
    assert math.isfinite(lo) and math.isfinite(hi)
    assert lo <= 0.0 <= hi
    assert hi - lo >= MIN_WIDTH * 0.999
    if symmetric:
        assert lo == -hi


# -- the enum and the registry ------------------------------------------------------------------
def test_methods_and_registry() -> None:
    assert [(m.name, int(m)) for m in CalibrationMethod] == [
        ("MIN_MAX_ASYM", 0), ("MIN_MAX_SYM", 1), ("ENTROPY_ASYM", 2), ("ENTROPY_SYM", 3),
        ("PERCENTILE_ASYM", 4), ("PERCENTILE_SYM", 5), ("MSE_ASYM", 6), ("MSE_SYM", 7),
        ("SQNR_ASYM", 8), ("SQNR_SYM", 9)]
    assert set(OBSERVERS) == {m.family for m in METHODS}
    for m in METHODS:
        obs = OBSERVERS[m.family](symmetric=m.symmetric, percentage=99.0)
        assert obs.symmetric is m.symmetric
        assert callable(obs.update) and callable(obs.range)


# -- MIN_MAX ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(DATA))
def test_min_max_is_exact(name: str) -> None:
    x = DATA[name]
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    assert rng_of(CalibrationMethod.MIN_MAX_ASYM, x) == (lo, hi)
    t = max(-lo, hi)
    assert rng_of(CalibrationMethod.MIN_MAX_SYM, x) == (-t, t)
    assert rng_of(CalibrationMethod.MIN_MAX_ASYM, x, chunks=7) == (lo, hi)


# -- PERCENTILE ---------------------------------------------------------------------------------
def test_percentile_normal_matches_gaussian_quantiles() -> None:
    x = DATA["normal"]
    lo, hi = rng_of(CalibrationMethod.PERCENTILE_SYM, x, percentage=99.0)
    assert hi == pytest.approx(2.5758, rel=0.02)          # ±quantile(0.99) of |x|
    assert lo == -hi
    lo, hi = rng_of(CalibrationMethod.PERCENTILE_ASYM, x, percentage=99.0)
    assert lo == pytest.approx(-2.3263, rel=0.02)          # quantile(0.01), quantile(0.99) of x
    assert hi == pytest.approx(2.3263, rel=0.02)


@pytest.mark.parametrize("name", list(DATA))
@pytest.mark.parametrize("p", [90.0, 99.0, 99.99])
def test_percentile_matches_exact_quantiles_within_a_bin(name: str, p: float) -> None:
    x = DATA[name]
    obs = observe(CalibrationMethod.PERCENTILE_ASYM, x, percentage=p)
    w = obs.hist.width
    q_lo, q_hi = np.quantile(x, [1 - p / 100, p / 100])
    lo, hi = obs.range()
    assert lo == pytest.approx(min(q_lo, 0.0), abs=2 * w)
    assert hi == pytest.approx(max(q_hi, 0.0), abs=2 * w)
    obs = observe(CalibrationMethod.PERCENTILE_SYM, x, percentage=p)
    assert obs.range()[1] == pytest.approx(np.quantile(np.abs(x), p / 100), abs=2 * obs.hist.width)


def test_percentile_uniform_and_100_is_min_max() -> None:
    x = DATA["uniform"]
    lo, hi = rng_of(CalibrationMethod.PERCENTILE_ASYM, x, percentage=99.0)
    assert lo == pytest.approx(-1 + 0.04, abs=0.01) and hi == pytest.approx(3 - 0.04, abs=0.01)
    for m, ref in ((CalibrationMethod.PERCENTILE_ASYM, CalibrationMethod.MIN_MAX_ASYM),
                   (CalibrationMethod.PERCENTILE_SYM, CalibrationMethod.MIN_MAX_SYM)):
        for name in DATA:
            assert rng_of(m, DATA[name], percentage=100.0) == rng_of(ref, DATA[name])


# -- ENTROPY ------------------------------------------------------------------------------------
def test_entropy_keeps_bounded_distributions() -> None:
    x = DATA["uniform"]
    lo, hi = rng_of(CalibrationMethod.ENTROPY_ASYM, x)
    assert lo == pytest.approx(-1.0, abs=0.03) and hi == pytest.approx(3.0, abs=0.03)
    assert rng_of(CalibrationMethod.ENTROPY_SYM, x)[1] == pytest.approx(3.0, abs=0.03)
    for m in (CalibrationMethod.ENTROPY_ASYM, CalibrationMethod.ENTROPY_SYM):
        lo, hi = rng_of(m, DATA["normal"])      # the Gaussian body is never clipped
        assert lo < -3.0 and hi > 3.0


@pytest.mark.parametrize("name", HEAVY)
def test_entropy_clips_outliers(name: str) -> None:
    x = DATA[name]
    amax = float(np.abs(x).max())
    for m in (CalibrationMethod.ENTROPY_ASYM, CalibrationMethod.ENTROPY_SYM):
        lo, hi = rng_of(m, x)
        assert 4.0 < hi < 0.3 * amax and -0.3 * amax < lo < -4.0, (m.name, lo, hi)


def test_entropy_asym_follows_the_data() -> None:
    lo, hi = rng_of(CalibrationMethod.ENTROPY_ASYM, DATA["relu"])
    assert lo == 0.0 and 3.0 < hi <= float(DATA["relu"].max())
    lo, hi = rng_of(CalibrationMethod.ENTROPY_ASYM, DATA["skewed"])   # gamma(2) - 1: min -1, long right tail
    assert -1.0 <= lo < -0.9 and hi > 8.0
    t = rng_of(CalibrationMethod.ENTROPY_SYM, DATA["skewed"])[1]
    assert hi - lo < 2 * t                                            # ASYM does not waste levels below -1


def _naive_kl(pos: np.ndarray, pos_edges: list[int], neg: np.ndarray | None = None,
              neg_edges: list[int] | None = None) -> float:
    """KL(P||Q) built bin by bin, as the entropy module docstring describes (no prefix sums).

    ``*_edges``: the bin edges of a side's levels, from 0 to its threshold in bins.
    """
    def side(c: np.ndarray, edges: list[int]) -> tuple[np.ndarray, np.ndarray]:
        t = edges[-1]
        c = np.concatenate([c, np.zeros(max(0, t - len(c)))])
        p = c[:t].copy()
        p[t - 1] += c[t:].sum()                     # the clipped tail, folded into the last bin
        q = np.zeros(t)
        for a, b in zip(edges[:-1], edges[1:]):     # a level: its count spread over non-empty bins
            mask = p[a:b] > 0
            if mask.any():
                q[a:b][mask] = c[a:b].sum() / mask.sum()
        return p, q

    parts = [side(pos, pos_edges)]
    if neg is not None and neg_edges and neg_edges[-1]:
        parts.append(side(neg, neg_edges))
    p = np.concatenate([a for a, _ in parts])
    q = np.concatenate([b for _, b in parts])
    p, q = p / p.sum(), q / q.sum()
    m = p > 0
    if (q[m] == 0).any():
        return math.inf
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def test_entropy_sym_matches_naive_tensorrt_search() -> None:
    rng = _rng(11)
    h = np.bincount(np.minimum((np.abs(rng.standard_t(4, 30_000)) * 40).astype(int), 299), minlength=300)
    h = h[: np.flatnonzero(h)[-1] + 1].astype(float)
    capped = h.copy()
    capped[0] = min(h[0], h[1])
    kls = {i: _naive_kl(capped, [k * i // 128 for k in range(129)]) for i in range(128, len(h) + 1)}
    best = min(kls, key=kls.get)
    assert sym_threshold(h) == best


def test_entropy_kl_table_matches_naive_kl() -> None:
    rng = _rng(12)
    pos = np.bincount((rng.gamma(2.0, 1.0, 20_000) * 30).astype(int)).astype(float)
    neg = np.bincount((rng.exponential(1.0, 3_000) * 20).astype(int)).astype(float)
    capped = pos.copy()
    capped[0] = min(pos[0], pos[1])
    total = capped.sum() + neg.sum()
    k = np.arange(257)
    for s in (1.0, 1.37, 2.0, 2.9):
        edges = np.floor(k[None, :] * np.array([s])[:, None]).astype(np.int64)
        size = max(int(edges.max()), len(pos), len(neg))
        hn, hp = np.zeros(size), np.zeros(size)
        hn[: len(neg)], hp[: len(pos)] = neg, capped
        an, tqn = _side_table(hn, edges)
        ap, tqp = _side_table(hp, edges)
        for n in (1, 17, 60, 128, 200):
            fast = (an[0, n] + ap[0, 256 - n]) / total - np.log(total) + np.log(tqn[0, n] + tqp[0, 256 - n])
            ref = _naive_kl(capped, list(edges[0, : 257 - n]), neg, list(edges[0, : n + 1]))
            assert fast == pytest.approx(ref, rel=1e-9, abs=1e-12) or fast == ref == math.inf, (s, n)
    n, p = asym_thresholds(neg, pos)
    assert 0 < n <= len(neg) and 0 < p <= len(pos)


# -- MSE / SQNR ---------------------------------------------------------------------------------
def test_noise_model_matches_monte_carlo() -> None:
    rng = _rng(13)
    x = np.abs(rng.laplace(0.0, 1.0, 200_000))
    w = 1 / 64
    h = np.bincount((x / w).astype(int)).astype(float)
    xs = (np.floor(x / w) + rng.uniform(0, 1, x.size)) * w    # values uniform inside their bin
    deltas = np.array([0.01, 0.037, 0.09])
    levels = np.array([0, 40, 127, 255])
    r, c = side_noise(h, w, deltas, levels)
    for i, d in enumerate(deltas):
        for j, n in enumerate(levels):
            k = np.round(xs / d)
            inside = xs <= n * d
            rounding = np.sum(np.where(inside, (xs - k * d) ** 2, 0.0))
            clipping = np.sum(np.where(inside, 0.0, (xs - n * d) ** 2))
            assert r[i, j] == pytest.approx(rounding, rel=0.03, abs=1e-6 * x.size * d * d)
            assert c[i, j] == pytest.approx(clipping, rel=0.03, abs=1e-6 * x.size * d * d)


@pytest.mark.parametrize("name", ["normal", "laplace_outliers", "relu", "skewed"])
@pytest.mark.parametrize("method,gamma", [(CalibrationMethod.MSE_SYM, 1.0), (CalibrationMethod.SQNR_SYM, 3.0)])
def test_sym_noise_search_finds_the_empirical_optimum(name: str, method: CalibrationMethod, gamma: float) -> None:
    x = SMALL[name]
    lo, hi = rng_of(method, x)
    amax = float(np.abs(x).max())
    brute = min(quant_noise(x, -t, t, True, gamma) for t in np.geomspace(amax / 200, amax, 160))
    assert quant_noise(x, lo, hi, True, gamma) <= brute * 1.01


@pytest.mark.parametrize("name", ["relu", "skewed"])
def test_asym_mse_finds_the_empirical_optimum(name: str) -> None:
    x = SMALL[name]
    lo, hi = rng_of(CalibrationMethod.MSE_ASYM, x)
    xmin, xmax = min(float(x.min()), 0.0), float(x.max())
    best = math.inf
    for d in np.geomspace((xmax - xmin) / 254 / 40, (xmax - xmin) / 254, 40):
        for z in sorted({0, *range(max(0, math.floor(-xmin / d) - 3), min(255, math.ceil(-xmin / d) + 3) + 1)}):
            best = min(best, quant_noise(x, -z * d, (255 - z) * d, False))
    assert quant_noise(x, lo, hi, False) <= best * 1.01


def test_mse_analytic_cases() -> None:
    t = rng_of(CalibrationMethod.MSE_SYM, DATA["normal"])[1]
    assert 3.7 < t < 4.1                      # 8-bit optimal clip of N(0,1) is ≈ 3.9σ (Banner et al.)
    lo, hi = rng_of(CalibrationMethod.MSE_ASYM, DATA["uniform"])
    assert lo == pytest.approx(-1.0, abs=0.02) and hi == pytest.approx(3.0, abs=0.02)
    lo, hi = rng_of(CalibrationMethod.MSE_ASYM, DATA["relu"])
    assert lo == 0.0 and 3.5 < hi < float(DATA["relu"].max())


@pytest.mark.parametrize("method", [CalibrationMethod.MSE_ASYM, CalibrationMethod.SQNR_ASYM])
def test_asym_noise_ranges_put_zero_on_the_grid(method: CalibrationMethod) -> None:
    for name in DATA:
        lo, hi = rng_of(method, DATA[name])
        z = -lo / ((hi - lo) / 255)
        assert z == pytest.approx(round(z), abs=1e-6) and 0 <= round(z) <= 255


@pytest.mark.parametrize("name", HEAVY)
def test_mse_and_sqnr_clip_outliers_and_sqnr_is_wider(name: str) -> None:
    x = DATA[name]
    amax = float(np.abs(x).max())
    for mse, sqnr in ((CalibrationMethod.MSE_ASYM, CalibrationMethod.SQNR_ASYM),
                      (CalibrationMethod.MSE_SYM, CalibrationMethod.SQNR_SYM)):
        m_lo, m_hi = rng_of(mse, x)
        s_lo, s_hi = rng_of(sqnr, x)
        assert m_hi - m_lo < 0.75 * (float(x.max()) - float(x.min()))
        assert max(s_hi, -s_lo) < amax
        assert s_hi - s_lo > 1.1 * (m_hi - m_lo), (mse.name, (m_lo, m_hi), (s_lo, s_hi))


def test_sqnr_never_narrower_than_mse() -> None:
    for name, x in DATA.items():
        for mse, sqnr in ((CalibrationMethod.MSE_ASYM, CalibrationMethod.SQNR_ASYM),
                          (CalibrationMethod.MSE_SYM, CalibrationMethod.SQNR_SYM)):
            m_lo, m_hi = rng_of(mse, x)
            s_lo, s_hi = rng_of(sqnr, x)
            assert s_hi - s_lo >= (m_hi - m_lo) * 0.99, name


# -- all methods: streaming, degenerate data, memory --------------------------------------------
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_streaming_equals_one_shot(method: CalibrationMethod) -> None:
    x = DATA["student_t_outliers"]
    growing = x[np.argsort(np.abs(x), kind="stable")]      # every chunk widens the range: re-binning
    for data in (x, growing):
        one = observe(method, data)
        many = observe(method, data, chunks=10)
        if isinstance(one, HistogramObserver):
            assert one.hist.width == many.hist.width and one.hist.start == many.hist.start
            assert np.array_equal(one.hist.counts, many.hist.counts)
        assert many.range() == pytest.approx(one.range(), rel=1e-9, abs=1e-12)


def test_histogram_rebinning_is_exact_and_resolution_is_kept() -> None:
    x = DATA["normal"]
    h = StreamingHistogram(absolute=False)
    for part in np.array_split(x[np.argsort(np.abs(x))], 25):
        h.update(part)
    w = h.width
    ref = np.bincount((np.floor(x / w) - h.start).astype(np.int64), minlength=SLOTS)
    assert np.array_equal(h.counts, ref)
    span_bins = (max(float(x.max()), 0) - min(float(x.min()), 0)) / w
    assert SLOTS / 2 <= span_bins + 2 and span_bins <= SLOTS
    a = StreamingHistogram(absolute=True)
    a.update(x)
    assert SLOTS / 2 <= float(np.abs(x).max()) / a.width + 1 <= SLOTS + 1


DEGENERATE = {
    "zeros": np.zeros(1000),
    "constant": np.full(1000, 5.0),
    "negative_constant": np.full(1000, -3.0),
    "single": np.array([7.5]),
    "empty": np.zeros(0),
    "two_values": np.array([-1.0, 1.0]),
    "tiny": np.full(100, 1e-30),
    "huge": np.array([3e38, -3e38, 1.0]),
    "nan_inf": np.array([np.nan, np.inf, -np.inf, 1.0, -2.0]),
    "all_nan": np.full(4, np.nan),
}


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_degenerate_inputs_give_valid_ranges(method: CalibrationMethod) -> None:
    with np.errstate(all="raise"):
        for name, x in DEGENERATE.items():
            obs = observe(method, _f32(x))
            r = obs.range()
            assert_valid(r, method.symmetric)
            finite = x[np.isfinite(x)]
            if name in ("zeros", "empty", "tiny", "all_nan"):
                assert r[1] - r[0] < 1e-6, (name, r)
            elif name != "huge":                         # a sensible range around the values
                neg, pos = max(-finite.min(), 0.0), max(finite.max(), 0.0)
                if method.symmetric:
                    neg = pos = max(neg, pos)
                assert 0.9 * neg <= -r[0] <= 1.5 * neg + 1e-6 and 0.9 * pos <= r[1] <= 1.5 * pos + 1e-6, (name, r)
        assert_valid(OBSERVERS[method.family](symmetric=method.symmetric).range(), method.symmetric)


def _state(obj: object) -> tuple[int, list[tuple[str, str]]]:
    """(bytes held in arrays, [(attribute, type)]) of an observer and its nested summaries."""
    nbytes, kinds = 0, []
    slots = [s for cls in type(obj).__mro__ for s in getattr(cls, "__slots__", ())]
    for name in slots + list(getattr(obj, "__dict__", {})):
        v = getattr(obj, name)
        if isinstance(v, np.ndarray):
            nbytes += v.nbytes
            kinds.append((name, f"array{v.shape}"))
        elif hasattr(v, "__slots__") and not isinstance(v, (int, float, bool, str)):
            b, k = _state(v)
            nbytes += b
            kinds += [(f"{name}.{a}", t) for a, t in k]
        else:
            assert v is None or isinstance(v, (int, float, bool, str)), (name, type(v))
            kinds.append((name, "scalar"))
    return nbytes, kinds


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_observer_memory_is_bounded(method: CalibrationMethod) -> None:
    rng = _rng(21)
    obs = OBSERVERS[method.family](symmetric=method.symmetric)
    obs.update(_f32(rng.standard_normal(1000)))
    first = _state(obs)
    for i in range(60):   # more data, wider ranges, different sizes
        obs.update(_f32(rng.standard_normal(500 + 97 * i) * (1 + i)))
    assert _state(obs) == first
    assert first[0] <= 64 * 1024
    assert_valid(obs.range(), method.symmetric)


# -- the Calibrator end to end ------------------------------------------------------------------
def _model() -> onnx.ModelProto:
    rng = _rng(31)
    inits = [
        numpy_helper.from_array(_f32(rng.standard_normal((8, 3, 3, 3)) * 0.3), "w1"),
        numpy_helper.from_array(_f32(rng.standard_normal(8) * 0.1), "b1"),
        numpy_helper.from_array(_f32(rng.standard_normal((8, 8, 3, 3)) * 0.2), "w2"),
        numpy_helper.from_array(_f32(rng.standard_normal((8, 5)) * 0.5), "fc"),
        numpy_helper.from_array(_f32(np.full(5, 0.25)), "bias"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["conv1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("Conv", ["relu1", "w2"], ["conv2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["conv2", "conv1"], ["res"]),
        helper.make_node("GlobalAveragePool", ["res"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["mm"]),
        helper.make_node("Add", ["mm", "bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["prob"]),
    ]
    graph = helper.make_graph(
        nodes, "calib", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


MODEL = _model()


def _samples(n: int, seed: int = 0) -> list[list[np.ndarray]]:
    rng = _rng(seed)
    return [[_f32(rng.standard_normal((1, 3, 12, 12)))] for _ in range(n)]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_calibrator_end_to_end(method: CalibrationMethod) -> None:
    cal = Calibrator(MODEL, method)
    cal.collect_data(_samples(3), progress=False)
    cal.collect_data(iter(_samples(2, seed=1)), progress=False)   # repeatable, any iterable
    assert cal.samples == 5
    ranges = cal.compute_range()
    names = float_tensors(MODEL)
    assert set(ranges) == set(names) and len(names) == 10
    for name, r in ranges.items():
        assert_valid(r, method.symmetric)
        assert r[1] - r[0] > 1e-3, name
    if not method.symmetric:
        assert ranges["relu1"][0] == 0.0 and ranges["prob"][0] == 0.0
        assert ranges["conv1"][0] < 0 < ranges["conv1"][1]
    assert cal.compute_range() == ranges                          # compute_range does not consume data
    one_call = Calibrator(MODEL.SerializeToString(), method)                 # bytes work too
    one_call.collect_data(_samples(3) + _samples(2, seed=1), progress=False)
    for name, r in one_call.compute_range().items():
        assert r == pytest.approx(ranges[name], rel=1e-9, abs=1e-12), name


def test_calibrator_min_max_matches_onnxruntime_outputs() -> None:
    cal = Calibrator(MODEL, CalibrationMethod.MIN_MAX_ASYM)
    samples = _samples(4)
    cal.collect_data(samples, progress=False)
    ranges = cal.compute_range()
    outs = [dict(zip(cal._outputs, cal._session.run(None, {"input": s[0]}))) for s in samples]
    for name in ("conv2", "prob"):
        lo = min(float(o[name].min()) for o in outs)
        hi = max(float(o[name].max()) for o in outs)
        assert ranges[name] == (min(lo, 0.0), max(hi, 0.0))
    assert ranges["input"] == (min(float(s[0].min()) for s in samples), max(float(s[0].max()) for s in samples))


def test_calibrator_percentage_is_passed_through() -> None:
    samples = _samples(3)
    full = Calibrator(MODEL, CalibrationMethod.PERCENTILE_ASYM, percentage=100.0)
    full.collect_data(samples, progress=False)
    mm = Calibrator(MODEL, CalibrationMethod.MIN_MAX_ASYM)
    mm.collect_data(samples, progress=False)
    assert full.compute_range() == mm.compute_range()
    narrow = Calibrator(MODEL, CalibrationMethod.PERCENTILE_ASYM, percentage=90.0)
    narrow.collect_data(samples, progress=False)
    assert narrow.compute_range()["input"][1] < 0.75 * mm.compute_range()["input"][1]
    with pytest.raises(CalibrationError):
        Calibrator(MODEL, CalibrationMethod.PERCENTILE_SYM, percentage=0.0)


def test_compute_range_before_data_raises() -> None:
    cal = Calibrator(MODEL, CalibrationMethod.MSE_SYM)
    with pytest.raises(CalibrationError):
        cal.compute_range()
    cal.collect_data([], progress=False)
    with pytest.raises(CalibrationError):
        cal.compute_range()
    with pytest.raises(CalibrationError):
        cal.collect_data([[np.zeros((1, 3, 12, 12), np.float32), np.zeros(1, np.float32)]], progress=False)


class _FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    cal = Calibrator(MODEL, CalibrationMethod.ENTROPY_SYM)
    cal.collect_data(_samples(2))                          # stderr is not a terminal under pytest
    assert capfd.readouterr().err == ""
    tty = _FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    cal.collect_data(_samples(2), progress=False)
    assert tty.getvalue() == ""
    cal.collect_data(_samples(3))
    cal.collect_data(s for s in _samples(2))               # no len(): an open-ended bar
    monkeypatch.undo()
    assert "calibrating (ENTROPY_SYM)" in tty.getvalue()
    assert cal.samples == 9
