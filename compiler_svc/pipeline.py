"""The compile pipeline: one function from model bytes and options to a Program.

Stages, each timed and traced as a span: load → optimise → calibrate → quantise
(skipped for an already quantised graph) → partition → cost. A float model is calibrated on
deterministic random samples when no data is given: it runs, but its accuracy is only as
good as those samples, and the compiler says so in its warnings.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from opentelemetry import trace

from compiler_svc.calibrate import CalibrationMethod, Calibrator
from compiler_svc.cost import estimate
from compiler_svc.loader import load_model
from compiler_svc.optimize import optimize_model
from compiler_svc.partition import partition
from compiler_svc.quantize import is_quantized, quantize
from services import __version__
from services.errors import ConfigError, InvalidCompilerConfig
from services.hw import TIMING, WARBOY
from services.hw import target as resolve_target
from services.program import Program
from services.tracing import tracer

__all__ = ["CompileOptions", "compile_model", "cache_key", "program_info"]

KNOWN_CONFIG: dict[str, tuple[type, ...]] = {}
"""compiler_config keys this compiler understands, with their types."""


@dataclass(frozen=True)
class CompileOptions:
    target_npu: str = "warboy-2pe"
    batch_size: int = 1
    compiler_config: dict[str, Any] = field(default_factory=dict)
    calibration_method: str = "MIN_MAX_ASYM"
    calibration_samples: int = 8

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompileOptions:
        unknown = set(d) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise InvalidCompilerConfig(f"unknown compile option(s): {', '.join(sorted(unknown))}")
        opts = cls(**d)
        opts.validate()
        return opts

    def to_dict(self) -> dict[str, Any]:
        return {"target_npu": self.target_npu, "batch_size": self.batch_size,
                "compiler_config": dict(self.compiler_config), "calibration_method": self.calibration_method,
                "calibration_samples": self.calibration_samples}

    def validate(self) -> None:
        for name, typ in (("target_npu", str), ("calibration_method", str)):
            if not isinstance(getattr(self, name), typ):
                raise InvalidCompilerConfig(f"{name} must be a string, got {type(getattr(self, name)).__name__}")
        try:
            resolve_target(self.target_npu)
        except ConfigError as e:
            raise InvalidCompilerConfig(str(e)) from None
        if not isinstance(self.batch_size, int) or self.batch_size != 1:
            raise InvalidCompilerConfig(f"batch_size={self.batch_size!r}: only batch 1 is supported so far")
        if not isinstance(self.compiler_config, dict):
            raise InvalidCompilerConfig("compiler_config must be a dict")
        for key, value in self.compiler_config.items():
            if key not in KNOWN_CONFIG:
                raise InvalidCompilerConfig(f"unknown compiler_config key {key!r}")
            if not isinstance(value, KNOWN_CONFIG[key]):
                raise InvalidCompilerConfig(f"compiler_config[{key!r}] has the wrong type {type(value).__name__}")
        if self.calibration_method not in CalibrationMethod.__members__:
            raise InvalidCompilerConfig(f"unknown calibration_method {self.calibration_method!r}; "
                                        f"choose one of {', '.join(CalibrationMethod.__members__)}")
        if not isinstance(self.calibration_samples, int) or not 1 <= self.calibration_samples <= 1024:
            raise InvalidCompilerConfig("calibration_samples must be an integer from 1 to 1024")


def cache_key(data: bytes, options: CompileOptions) -> str:
    """sha256 of everything a program depends on: model, options, and the versions and
    constants the compiler's result is made of (a change to any of them is a new key)."""
    h = hashlib.sha256()
    h.update(json.dumps({"npusim": __version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                         "hw": asdict(WARBOY), "timing": asdict(TIMING), "options": options.to_dict()},
                        sort_keys=True).encode())
    h.update(data)
    return h.hexdigest()


class _Stages:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage; trace it only inside a traced request (no orphan root spans)."""
        t0 = time.perf_counter()
        if trace.get_current_span().get_span_context().is_valid:
            with tracer().start_as_current_span(f"compile.{name}"):
                yield
        else:
            yield
        self.seconds[name] = time.perf_counter() - t0


def _random_samples(model: onnx.ModelProto, n: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(0)
    inits = {i.name for i in model.graph.initializer}
    shapes = [[int(d.dim_value) for d in vi.type.tensor_type.shape.dim]
              for vi in model.graph.input if vi.name not in inits]
    return [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(n)]


def compile_model(data: bytes, options: CompileOptions | None = None) -> tuple[Program, dict[str, Any]]:
    """Compile ONNX bytes (float or already quantised) into a :class:`Program`."""
    opts = options or CompileOptions()
    opts.validate()
    tgt = resolve_target(opts.target_npu)
    st = _Stages()
    warnings: list[str] = []
    with st.stage("load"):
        model = load_model(data)
    if is_quantized(model):
        qmodel = model
    else:
        with st.stage("optimize"):
            model = optimize_model(model)
        with st.stage("calibrate"):
            cal = Calibrator(model, CalibrationMethod[opts.calibration_method])
            cal.collect_data(_random_samples(model, opts.calibration_samples))
            ranges = cal.compute_range()
            warnings.append(f"calibrated on {opts.calibration_samples} random N(0,1) samples: accuracy on real "
                            "data needs a Calibrator run on real samples and quantize() before compiling")
        with st.stage("quantize"):
            qmodel = onnx.load_from_string(quantize(model, ranges))
    with st.stage("partition"):
        part = partition(qmodel)
    with st.stage("cost"):
        extra = [{"name": f"Lower({b.user.name})", "op_type": "Lower", "bytes": b.npu_layout_bytes}
                 for b in part.inputs if b.npu_layout_bytes]
        extra += [{"name": f"Unlower({b.user.name})", "op_type": "Unlower", "bytes": b.npu_layout_bytes}
                  for b in part.outputs if b.npu_layout_bytes]
        npu_ops, est = estimate(part.npu_model, tgt, extra=extra)
    program = Program(
        target=tgt.name,
        batch_size=opts.batch_size,
        inputs=[b.user for b in part.inputs],
        outputs=[b.user for b in part.outputs],
        pre_ops=[b.cpu_ops for b in part.inputs],
        post_ops=[b.cpu_ops for b in part.outputs],
        npu_inputs=[b.device for b in part.inputs],
        npu_outputs=[b.device for b in part.outputs],
        graph_inputs=[b.graph for b in part.inputs],
        graph_outputs=[b.graph for b in part.outputs],
        npu_graph=part.npu_model.SerializeToString(),
        npu_ops=npu_ops,
        estimate=est,
        meta={"compiler": f"npusim {__version__}", "model": model.graph.name, "source_sha256":
              hashlib.sha256(data).hexdigest(), "created": time.time(), "warnings": warnings},
    )
    return program, dict(program_info(program), stages=st.seconds)


def program_info(program: Program) -> dict[str, Any]:
    """The summary a compile reply carries, the same whether compiled now or cached."""
    return {
        "target": program.target,
        "cpu_ops": [op.op for ops in program.pre_ops + program.post_ops for op in ops],
        "warnings": list(program.meta.get("warnings", [])),
        "npu_ns": program.estimate.get("npu_ns", 0.0),
    }
