"""The compile pipeline, from model bytes and options to a Program.

Stages, each timed and (inside a traced request) a span: load → optimise → calibrate →
quantise (these three only for a float model) → partition → cost. The compiler service and
``npusim compile`` both run :func:`compile_model`; :func:`compile` is the library form for
an already quantised graph.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from opentelemetry import trace

from npusim.compiler_svc.cache import compiler_digest
from npusim.compiler_svc.calibrate import CalibrationMethod, Calibrator, random_samples
from npusim.compiler_svc.config import CompilerConfig
from npusim.compiler_svc.editor import get_output_names
from npusim.compiler_svc.loader import load_model
from npusim.compiler_svc.partition import build_program
from npusim.compiler_svc.passes import NOTES_KEY, optimize_model
from npusim.compiler_svc.quantize import is_quantized, quantize
from npusim.services import __version__
from npusim.services.errors import ConfigError, InvalidCompilerConfig, InvalidModel
from npusim.services.hw import WARBOY, timing_params
from npusim.services.hw import target as resolve_target
from npusim.services.program import FORMAT_VERSION, CpuStep, OpStep, Program
from npusim.services.tracing import tracer

__all__ = ["CompileOptions", "compile_model", "compile", "cache_key", "program_info"]

MAX_BATCH = 1024


@dataclass(frozen=True)
class CompileOptions:
    """Everything a compile depends on besides the model (the cache key covers all of it)."""

    target_npu: str = "warboy-2pe"
    batch_size: int = 1
    compiler_config: dict[str, Any] = field(default_factory=dict)
    calibration_method: str = "MIN_MAX_ASYM"
    calibration_samples: int = 8
    with_quantize: bool = True
    normalized_pixel_outputs: list[int] = field(default_factory=list)
    auto_quantize: bool = True  # a float model is calibrated on random samples (session.create does this)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)  # fixes dynamic dims other than the batch

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompileOptions:
        if not isinstance(d, dict):
            raise InvalidCompilerConfig(f"compile options must be a mapping of option name to value, got "
                                        f"{type(d).__name__}")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidCompilerConfig(f"unknown compile option(s): {', '.join(sorted(unknown))}")
        opts = cls(**d)
        opts.validate()
        return opts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        for name, typ in (("target_npu", str), ("calibration_method", str), ("with_quantize", bool),
                          ("auto_quantize", bool), ("normalized_pixel_outputs", list), ("input_shapes", dict)):
            if not isinstance(getattr(self, name), typ):
                raise InvalidCompilerConfig(f"{name} must be {typ.__name__}, got {type(getattr(self, name)).__name__}",
                                            details={"option": name})
        _check_elements(self)
        try:
            resolve_target(self.target_npu)
        except ConfigError as e:
            raise InvalidCompilerConfig(str(e)) from None
        if type(self.batch_size) is not int or not 1 <= self.batch_size <= MAX_BATCH:
            raise InvalidCompilerConfig(f"batch_size must be an integer from 1 to {MAX_BATCH}, got {self.batch_size!r}")
        CompilerConfig.parse(self.compiler_config)
        if self.calibration_method not in CalibrationMethod.__members__:
            raise InvalidCompilerConfig(f"unknown calibration_method {self.calibration_method!r}; "
                                        f"choose one of {', '.join(CalibrationMethod.__members__)}")
        if type(self.calibration_samples) is not int or not 1 <= self.calibration_samples <= 1024:
            raise InvalidCompilerConfig("calibration_samples must be an integer from 1 to 1024")


def _check_elements(opts: CompileOptions) -> None:
    """The containers' contents: a bad element would otherwise fail deep in a pass (or in the
    cache key's JSON) with an error that does not name the option."""
    outputs = opts.normalized_pixel_outputs
    for i in outputs:
        if type(i) is not int or i < 0:
            raise InvalidCompilerConfig(f"normalized_pixel_outputs must list output indices (integers >= 0), got "
                                        f"{i!r} in {outputs!r}", details={"option": "normalized_pixel_outputs"})
    for name, dims in opts.input_shapes.items():
        if not isinstance(name, str) or not isinstance(dims, list) or not dims or not all(
                type(d) is int and d >= 1 for d in dims):
            raise InvalidCompilerConfig(f"input_shapes must map input names to lists of positive integers like "
                                        f"{{'input': [1, 3, 224, 224]}}, got {name!r}: {dims!r}",
                                        details={"option": "input_shapes"})


def cache_key(data: bytes, options: CompileOptions) -> str:
    """sha256 of everything a program depends on: model, options, and the versions, constants,
    program format and compiler source the result is made of (a change to any is a new key)."""
    h = hashlib.sha256()
    h.update(json.dumps({"npusim": __version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                         "hw": asdict(WARBOY), "timing": asdict(timing_params()), "format": FORMAT_VERSION,
                         "compiler_sha256": compiler_digest(), "options": options.to_dict()},
                        sort_keys=True).encode())
    h.update(data)
    return h.hexdigest()


class Stages:
    """Times each stage of a compile; traces it only inside a traced request."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        if trace.get_current_span().get_span_context().is_valid:
            with tracer().start_as_current_span(f"compile.{name}"):
                yield
        else:
            yield
        self.seconds[name] = time.perf_counter() - t0


def compile_model(data: bytes, options: CompileOptions | None = None, *,
                  calibration_data: Iterable[Sequence[np.ndarray]] | None = None,
                  stages: Stages | None = None) -> tuple[Program, dict[str, Any]]:
    """Compile ONNX bytes (float or already quantised) into a :class:`Program`.

    A float model is optimised, calibrated on ``calibration_data`` (or, with
    ``auto_quantize``, on random samples — with a warning) and quantised first.
    """
    opts = options or CompileOptions()
    opts.validate()
    st = stages or Stages()
    warnings: list[str] = []
    with st.stage("load"):
        model = load_model(data)
    if is_quantized(model):
        qmodel = model
        warnings.extend(_ignored_options(opts, calibration_data))
        config = _compiler_config(qmodel, opts)
    else:
        if calibration_data is None and not opts.auto_quantize:
            raise InvalidModel(_float_model_message(opts))
        _check_output_indices(model, opts.normalized_pixel_outputs)
        with st.stage("optimize"):
            model = optimize_model(model, input_shapes=opts.input_shapes or None)
            warnings.extend(p.value for p in model.metadata_props if p.key == NOTES_KEY)
        config = _compiler_config(model, opts)  # permute_input against the input ranks, before calibrating
        with st.stage("calibrate"):
            cal = Calibrator(model, CalibrationMethod[opts.calibration_method])
            if calibration_data is None:
                cal.collect_data(random_samples(model, opts.calibration_samples), progress=False)
                warnings.append(f"calibrated on {opts.calibration_samples} random samples (N(0,1) for float inputs): accuracy on real "
                                "data needs a Calibrator run on real samples and quantize() before compiling")
            else:
                cal.collect_data(calibration_data, progress=False)
            ranges = cal.compute_range()
        with st.stage("quantize"):
            qmodel = onnx.load_from_string(quantize(model, ranges, with_quantize=opts.with_quantize,
                                                    normalized_pixel_outputs=opts.normalized_pixel_outputs))
    program = _partition(qmodel, opts, config, st, data, warnings)
    return program, dict(program_info(program), stages=st.seconds)


def _float_model_message(opts: CompileOptions) -> str:
    if not opts.with_quantize:
        return ("this is a float model and compiling needs a quantised one; with_quantize=False is a quantize() "
                "option: quantize(model, ranges, with_quantize=False) — or ModelEditor(model)"
                ".convert_input_type(name, TensorType.UINT8) before calibrating and quantize(model, ranges) — "
                "gives the quantised graph a uint8 input, which compile() then takes as it is")
    return ("this is a float model and compiling needs a quantised one: calibrate it on real samples "
            "(Calibrator(optimize_model(model), CalibrationMethod.MIN_MAX_ASYM).collect_data(samples)) and "
            "quantize(model, ranges) first — or pass calibration data (npusim compile --calibration-data "
            "DIR, or 'random' to accept poor accuracy)")


def _check_output_indices(model: onnx.ModelProto, indices: list[int]) -> None:
    """normalized_pixel_outputs against the model's outputs, before seconds of calibration."""
    outputs = get_output_names(model)
    for i in indices:
        if i >= len(outputs):
            valid = f"0–{len(outputs) - 1}" if len(outputs) > 1 else "0"
            raise InvalidCompilerConfig(f"normalized_pixel_outputs: {i} is not an output index; the model has "
                                        f"{len(outputs)} output(s) {outputs}, so use {valid}",
                                        details={"option": "normalized_pixel_outputs"})


def _ignored_options(opts: CompileOptions, calibration_data: object) -> list[str]:
    """Warnings for the options an already quantised model makes moot (it is compiled as it is)."""
    default = CompileOptions()
    given = [f"{name}={getattr(opts, name)!r}" for name in
             ("with_quantize", "normalized_pixel_outputs", "calibration_method", "calibration_samples", "input_shapes")
             if getattr(opts, name) != getattr(default, name)]
    if calibration_data is not None:
        given.append("calibration data")
    if not given:
        return []
    return [(f"the model is already quantised, so {', '.join(given)} had no effect: these apply when quantising "
             "a float model (quantize(model, ranges, with_quantize=..., normalized_pixel_outputs=...), or "
             "ModelEditor before quantize) — compile the float model to use them")]


def _compiler_config(model: onnx.ModelProto, opts: CompileOptions) -> CompilerConfig:
    inits = {i.name for i in model.graph.initializer}
    inputs = [(vi.name, len(vi.type.tensor_type.shape.dim)) for vi in model.graph.input if vi.name not in inits]
    return CompilerConfig.parse(opts.compiler_config, inputs=inputs)


def _partition(qmodel: onnx.ModelProto, opts: CompileOptions, config: CompilerConfig, st: Stages, data: bytes,
               warnings: list[str]) -> Program:
    with st.stage("partition+cost"):
        meta = {"compiler": f"npusim {__version__}", "model": qmodel.graph.name or "model",
                "source_sha256": hashlib.sha256(data).hexdigest(), "created": time.time(),
                "warnings": list(warnings)}
        program = build_program(qmodel, target=resolve_target(opts.target_npu), batch_size=opts.batch_size,
                                config=config, meta=meta)
    # Which operators fell back to the CPU is known only now; the meta gets a new, complete list
    # rather than relying on build_program keeping a reference to the one it was given.
    fallback = [f"{op['op_type']} {op['name']!r} runs on the CPU: {op['reason']}"
                for s in program.steps if isinstance(s, CpuStep) for op in s.ops]
    program.meta["warnings"] = [*warnings, *fallback]
    return program


def compile(graph: onnx.ModelProto | bytes, *, target_npu: str = "warboy-2pe", batch_size: int = 1,  # noqa: A001
            compiler_config: dict[str, Any] | None = None) -> Program:
    """Compile a quantised graph (from :func:`npusim.compiler_svc.quantize`) into a program.

    ``bytes(program)`` is the .enf file; ``session.create`` accepts the program directly.
    """
    data = graph.SerializeToString() if isinstance(graph, onnx.ModelProto) else bytes(graph)
    # validate() (CompilerConfig.parse) refuses a compiler_config that is not a mapping.
    opts = CompileOptions(target_npu=target_npu, batch_size=batch_size,
                          compiler_config={} if compiler_config is None else compiler_config, auto_quantize=False)
    program, _ = compile_model(data, opts)
    return program


def program_info(program: Program) -> dict[str, Any]:
    """The summary a compile reply carries, the same whether compiled now or cached."""
    cpu_ops: list[str] = []
    for s in program.cpu_steps():
        cpu_ops.extend([s.op] if isinstance(s, OpStep) else [o["op_type"] for o in s.ops])
    return {
        "target": program.target,
        "cpu_ops": cpu_ops,
        "npu_stages": len(program.stages),
        "warnings": list(program.meta.get("warnings", [])),
        "npu_ns": program.estimate.get("npu_ns", 0.0),
    }
