"""What every check of ``npusim advise`` needs about the user's model, computed once.

The model is calibrated once on the samples; each variant a check wants (another input type,
output type, permutation, batch or target) is quantised and compiled from those ranges, and
its host steps are timed on this machine with the real kernels (the ``this`` host profile).
Predictions come from the same virtual-time pipeline as ``npusim plan``; accuracy from the
quantised graph in onnxruntime, which is the program's own arithmetic (a program reproduces
its quantised model: ``tests/programs.py``), against the float model on held-out samples.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from npusim.compiler_svc.calibrate import CalibrationMethod, Calibrator
from npusim.compiler_svc.loader import load_model
from npusim.compiler_svc.passes import optimize_model
from npusim.compiler_svc.pipeline import CompileOptions, compile_model
from npusim.compiler_svc.plan import host_costs
from npusim.compiler_svc.quantize import is_quantized, quantize
from npusim.services.devices import assign_pes, parse_devices, target_of
from npusim.services.errors import ConfigError, InvalidInput
from npusim.services.hostprofile import HostProfile
from npusim.services.program import NpuStep, Program, is_program
from npusim.services.sim import Pipeline, Scenario, SessionSpec, closed, simulate, summarize
from npusim.services.zoo import sample_inputs

__all__ = ["AdviseConfig", "Context", "Variant"]

TARGETS = ("latency", "throughput")


@dataclass(frozen=True)
class AdviseConfig:
    devices: str = "warboy(2)*1"
    target: str = "latency"
    workers: int = 1  # the session's worker_num today: the baseline the checks improve on
    samples: str = "random"
    n_samples: int = 8  # half calibrate, half are held out for accuracy
    requests: int = 2_000
    time_scale: float = 1.0

    def check(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError(f"--target {self.target!r}: latency or throughput")
        if self.workers < 1:
            raise ConfigError("--workers must be at least 1")
        if not self.time_scale > 0:
            raise ConfigError("--time-scale must be positive")
        if self.n_samples < 2:
            raise ConfigError("--n-samples must be at least 2: half calibrate, half measure accuracy")


@dataclass(frozen=True)
class Variant:
    """One way to compile the model: the knobs a check turns."""

    with_quantize: bool = True
    pixel_outputs: tuple[int, ...] = ()
    permute: tuple[tuple[int, ...], ...] = ()
    batch: int = 1
    target: str = "warboy-2pe"
    patch: int = 0  # > 0: the model at a square patch of this many pixels (fully convolutional models)

    def but(self, **changes: Any) -> Variant:
        return replace(self, **changes)


def _calibration_samples(source: str, model: onnx.ModelProto, n: int) -> list[list[np.ndarray]]:
    if source == "random":
        return sample_inputs(model, n, seed=0)
    from npusim.compiler_svc.cli import load_calibration_data

    names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    got = load_calibration_data(source, names)
    assert got is not None
    if len(got) < 2:
        raise InvalidInput(f"--samples {source}: at least 2 samples are needed (half calibrate, half measure accuracy)")
    return got


class Context:
    def __init__(self, data: bytes, cfg: AdviseConfig, profile: HostProfile) -> None:
        cfg.check()
        self.cfg = cfg
        self.profile = profile
        raw = None if is_program(data) else load_model(data)
        if raw is None or is_quantized(raw):
            raise InvalidInput("advise needs the float ONNX model: with_quantize and normalized_pixel_outputs are "
                               "quantize() options, so an already quantised model or .enf cannot be advised")
        self.model = optimize_model(raw)
        self.float_bytes = self.model.SerializeToString()
        samples = _calibration_samples(cfg.samples, self.model, cfg.n_samples)
        half = max(1, len(samples) // 2)
        self.calibration, self.held_out = samples[:half], samples[half:]
        self.specs = parse_devices(cfg.devices)
        self.target = target_of(self.specs)
        self.pes = tuple(assign_pes(self.specs))
        self.cores = profile.cores
        self._programs: dict[Variant, Program] = {}
        self._qmodels: dict[tuple[bool, tuple[int, ...], int], bytes] = {}
        self._costs: dict[Variant, list[float | None]] = {}

    # -- the model --------------------------------------------------------------------------------
    @property
    def base(self) -> Variant:
        return Variant(target=self.target)

    @property
    def inputs(self) -> list[onnx.ValueInfoProto]:
        init = {t.name for t in self.model.graph.initializer}
        return [i for i in self.model.graph.input if i.name not in init]

    @staticmethod
    def dims(vi: onnx.ValueInfoProto) -> list[int]:
        return [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]

    @cached_property
    def ranges(self) -> dict[str, Any]:
        cal = Calibrator(self.model, CalibrationMethod.MIN_MAX_ASYM)
        cal.collect_data(self.calibration, progress=False)
        return cal.compute_range()

    def qmodel(self, v: Variant) -> bytes:
        key = (v.with_quantize, v.pixel_outputs, v.patch)
        if key not in self._qmodels:
            model = _at_size(self.model, v.patch) if v.patch else self.model
            self._qmodels[key] = quantize(model, self.ranges, with_quantize=v.with_quantize,
                                          normalized_pixel_outputs=list(v.pixel_outputs))
        return self._qmodels[key]

    def program(self, v: Variant) -> Program:
        if v not in self._programs:
            config = {"permute_input": [list(p) for p in v.permute]} if v.permute else {}
            self._programs[v], _ = compile_model(self.qmodel(v), CompileOptions(
                target_npu=v.target, batch_size=v.batch, compiler_config=config, auto_quantize=False))
        return self._programs[v]

    # -- host costs, measured here ----------------------------------------------------------------
    def step_costs(self, v: Variant) -> list[float | None]:
        if v not in self._costs:
            costs = host_costs(self.program(v), self.profile)
            self._costs[v] = costs if costs is not None else [None] * len(self.program(v).steps)
        return self._costs[v]

    def host_ops_us(self, v: Variant) -> dict[str, float]:
        """Each host step's measured time (µs), by operator (summed when one repeats)."""
        out: dict[str, float] = {}
        for step, ns in zip(self.program(v).steps, self.step_costs(v)):
            if isinstance(step, NpuStep) or ns is None:
                continue
            name = getattr(step, "op", None) or "cpu graph"
            out[name] = out.get(name, 0.0) + ns / 1e3
        return out

    def measured(self, before: Variant, after: Variant) -> dict[str, Any]:
        """Host operator time per request before and after a change, measured on this machine."""
        b, a = self.host_ops_us(before), self.host_ops_us(after)
        return {"host_ops_us": {"before": b, "after": a}, "host_us_before": round(sum(b.values()), 2),
                "host_us_after": round(sum(a.values()), 2), "host": self.profile.name}

    def image_input(self, vi: onnx.ValueInfoProto) -> str | None:
        """``NCHW`` or ``NHWC`` for a float input shaped like an image batch, else None."""
        d = self.dims(vi)
        if vi.type.tensor_type.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) or len(d) != 4:
            return None
        if d[1] in (1, 3, 4) and min(d[2], d[3]) >= 8:
            return "NCHW"
        if d[3] in (1, 3, 4) and min(d[1], d[2]) >= 8:
            return "NHWC"
        return None

    # -- predictions, in virtual time -------------------------------------------------------------
    def pipeline(self, v: Variant, *, drop_ops: tuple[str, ...] = ()) -> Pipeline:
        costs = [None if getattr(s, "op", None) in drop_ops else c
                 for s, c in zip(self.program(v).steps, self.step_costs(v))]
        return Pipeline.of(self.program(v), costs, runtime_overhead_ns=self.profile.runtime_overhead_ns,
                           time_scale=self.cfg.time_scale)

    def pes_for(self, target: str) -> tuple[tuple[int, str], ...]:
        """The session's PEs if its devices match ``target``, else the same device's PEs of that kind."""
        if target == self.target:
            return self.pes
        devices = sorted({d for d, _ in self.pes})
        return tuple((d, "pe0-1") for d in devices) if target == "warboy-2pe" else tuple(
            (d, pe) for d in devices for pe in ("pe0", "pe1"))

    def simulate(self, pipeline: Pipeline, pes: tuple[tuple[int, str], ...], workers: int,
                 in_flight: int) -> dict[str, Any]:
        warmup = min(self.cfg.requests, max(2 * workers, 5))
        sc = Scenario((SessionSpec(pipeline, pes, workers, closed(in_flight)),), self.cores, self.cfg.requests, warmup)
        return summarize(simulate(sc))[0]

    def makespan_ns(self, pipeline: Pipeline, pes: tuple[tuple[int, str], ...], workers: int, requests: int,
                    in_flight: int) -> int:
        """Virtual time from submitting ``requests`` at once (``in_flight`` at a time) to the last answer."""
        sc = Scenario((SessionSpec(pipeline, pes, workers, closed(in_flight)),), self.cores, requests, 0)
        return simulate(sc).end_ns

    def offline_depth(self, workers: int, pes: int) -> int:
        return max(8, 2 * workers, 2 * pes)  # bench's throughput workload

    def predict(self, v: Variant, *, workers: int | None = None, in_flight: int | None = None,
                drop_ops: tuple[str, ...] = (), pes: tuple[tuple[int, str], ...] | None = None) -> dict[str, float]:
        """Single-stream latency (one request at a time) and offline throughput (many in flight) of
        a variant: the two figures every recommendation is ranked on."""
        w = workers or self.cfg.workers
        pes = pes or self.pes_for(v.target)
        pipe = self.pipeline(v, drop_ops=drop_ops)
        single = self.simulate(pipe, pes, w, 1)
        offline = self.simulate(pipe, pes, w, in_flight or self.offline_depth(w, len(pes)))
        return {"latency_us": single["latency"]["p50_us"], "throughput_per_s": offline["samples_per_s"],
                "offline_p50_us": offline["latency"]["p50_us"], "bound_by": offline["bound_by"],
                "cpu_us": offline["per_query"]["cpu_us"], "npu_us": offline["per_query"]["npu_exec_us"]}

    # -- accuracy ---------------------------------------------------------------------------------
    @cached_property
    def reference(self) -> list[list[np.ndarray]]:
        sess = ort.InferenceSession(self.float_bytes, providers=["CPUExecutionProvider"])
        names = [i.name for i in self.inputs]
        return [sess.run(None, dict(zip(names, s))) for s in self.held_out]

    def accuracy(self, v: Variant) -> dict[str, Any]:
        """The int8 variant against the float model on the held-out samples: top-1 agreement for
        logits, SQNR otherwise, on the first output."""
        q = onnx.load_from_string(self.qmodel(v))
        sess = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = []
        for sample in self.held_out:
            feeds.append({i.name: _as_input(q, i.name, x) for i, x in zip(self.inputs, sample)})
        got = [sess.run(None, f) for f in feeds]
        out0 = [_as_float(g[0], 0 in v.pixel_outputs) for g in got]
        ref0 = [r[0] for r in self.reference]
        if ref0[0].ndim == 2 and ref0[0].shape[-1] >= 2:
            agree = np.mean([np.array_equal(a.argmax(-1), b.argmax(-1)) for a, b in zip(out0, ref0)])
            return {"metric": "top-1 agreement with fp32 (%)", "value": round(100 * float(agree), 2),
                    "samples": len(ref0)}
        if 0 in v.pixel_outputs:  # a uint8 image over [0, 1]: compare with the float image as it would be shown
            ref0 = [np.clip(r, 0, 1) for r in ref0]
        sig = sum(float(np.sum(np.square(r, dtype=np.float64))) for r in ref0)
        err = sum(float(np.sum(np.square(a.astype(np.float64) - r))) for a, r in zip(out0, ref0))
        sqnr = 10 * np.log10(sig / err) if err > 0 else float("inf")
        return {"metric": "SQNR vs fp32 (dB), first output", "value": round(float(sqnr), 2), "samples": len(ref0)}


def _at_size(model: onnx.ModelProto, size: int) -> onnx.ModelProto:
    """A fully convolutional model with its image input (and so every tensor) at size × size."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    init = {t.name for t in m.graph.initializer}
    for vi in m.graph.input:
        if vi.name not in init and len(vi.type.tensor_type.shape.dim) == 4:
            for d in vi.type.tensor_type.shape.dim[2:]:
                d.Clear()
                d.dim_value = size
    del m.graph.value_info[:]
    for vi in m.graph.output:
        for d in vi.type.tensor_type.shape.dim[2:]:
            d.Clear()
    return onnx.shape_inference.infer_shapes(m, strict_mode=True)


def _as_input(q: onnx.ModelProto, name: str, x: np.ndarray) -> np.ndarray:
    """A float sample as the quantised graph's input wants it: as is, or (a uint8 input) through
    the input's own scale and zero point, exactly as the host's Quantize would make it."""
    vi = next(i for i in q.graph.input if i.name == name)
    if vi.type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        return x
    node = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == name)
    init = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
    scale = float(init[node.input[1]])
    zp = int(init[node.input[2]]) if len(node.input) > 2 else 0
    return np.clip(np.round(x / scale) + zp, 0, 255).astype(np.uint8)


def _as_float(y: np.ndarray, pixel: bool) -> np.ndarray:
    return y.astype(np.float32) / 255.0 if pixel and y.dtype == np.uint8 else y.astype(np.float32)
