"""Real-world robustness: torch exports through optimise → calibrate → quantise → compile → run.

Five small torch models (deterministic weights, BatchNorm in eval mode with non-trivial running
statistics) cover what exporters emit for vision nets: Resize (nn.Upsample nearest, F.interpolate
bilinear), ConvTranspose, Hardsigmoid, Hardswish, Clip (ReLU6 / clamp), Concat (torch.cat along
channels and along height), depthwise Conv (groups = channels, 32 and 160 > 128), BatchNorm2d
(after a Conv, and alone on the input), Gemm/MatMul heads (nn.Linear, torch.matmul).

Each is exported with the TorchScript exporter (``dynamo=False``) at opsets 11, 13, 15, 17 and with
the default exporter (``dynamo=True``) at its default opset, which is 20 with torch 2.13. The dynamo
exporter cannot write opsets below 16 (``opset_version=11..15`` still gives 18), and writes 16/17
only when onnx's C version converter succeeds (it fails on ReduceMean-18, i.e. a global average
pool, and leaves the model at 18): its explicit opset 17 is the ``slow`` extra ``dynamo17``.

Each export is loaded as ``onnx.load`` gives it (a ModelProto, as the package docs show) and:

* ``optimize_model`` must give a model onnx's full checker accepts, with constants folded and BN
  fused, computing torch's output to 1e-4 of the output's scale (max |y|: an element-wise rtol is
  meaningless for outputs near 0);
* it is calibrated (MIN_MAX_ASYM, 32 random N(0, 1) samples), quantised, compiled for warboy-2pe
  and run with ``run_program`` (onnxruntime optimisations on, as the daemon runs it) on held-out
  inputs: output float32 of torch's shape, cosine with torch's fp32 output ≥ ``COSINE_MIN``;
* the operators in ``cpu`` steps must be exactly those the chip's rules exclude (and float
  neighbours an excluded operator leaves unquantised), pinned per model in ``CPU_EXPECTED``.

Failures on real exports are ``xfail(strict=True)`` with the cause in the reason; an expected
InvalidModel must also carry the expected message (anything else fails the test). The
``native_opset`` tests show that the rest of the pipeline handles those exports when
``optimize_model`` is not asked to convert them down to opset 13.
"""

from __future__ import annotations

import functools
import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from npusim.compiler_svc import CalibrationMethod, Calibrator, compile, optimize_model, quantize  # noqa: E402
from npusim.compiler_svc.loader import opset_of  # noqa: E402
from npusim.services.errors import InvalidModel  # noqa: E402
from npusim.services.program import CpuStep, OpStep, Program  # noqa: E402
from tests.programs import run_program  # noqa: E402

TARGET = "warboy-2pe"

COSINE_MIN = 0.98
"""Bound on cos(int8 program output, torch fp32 output), per sample.

Each int8 tensor (per-tensor asymmetric activations over their calibrated range, per-channel
symmetric weights) adds rounding noise of about step/√12: a signal-to-noise ratio of 30–40 dB
for the well-spread activations of these nets. Over the ≤ 12 quantised tensors on a path here
the noise-to-signal power ε² stays ≲ 1e-2, so cos ≈ 1 − ε²/2 ≳ 0.995; held-out inputs can exceed
the calibrated ranges and clip, and a 6-element output (``head``) averages little noise away,
hence the margin down to 0.98. Observed over 40 held-out inputs: min 0.992 (head), ≥ 0.9996 for
the others. A wrong layout, channel order, scale or zero point gives far less, and
``check_program`` asserts the bound is discriminating: torch's output for another input scores
below it (0.08–0.87 here)."""

OPT_RTOL = 1e-4  # optimize_model vs torch, relative to the output's max |y|
CAL_SAMPLES = 32
RUNS = 2  # held-out inputs per program (≥ 2: the discrimination check compares two)

# ---------------------------------------------------------------------------------------------
# Models


def _bn(c: int) -> nn.BatchNorm2d:
    """BatchNorm2d with non-trivial running statistics and affine parameters (eval mode)."""
    b = nn.BatchNorm2d(c)
    with torch.no_grad():
        b.running_mean.uniform_(-0.5, 0.5)
        b.running_var.uniform_(0.5, 2.0)
        b.weight.uniform_(0.5, 1.5)
        b.bias.uniform_(-0.3, 0.3)
    return b


class Seg(nn.Module):
    """A tiny decoder: Conv+BN+ReLU6, ConvTranspose ∥ nearest Upsample+Conv, cat(channels),
    bilinear resize to a fixed size, clamp."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        self.b1 = _bn(16)
        self.ct = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.c2 = nn.Conv2d(16, 8, 3, padding=1)
        self.c3 = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = F.relu6(self.b1(self.c1(x)))
        z = torch.cat([self.ct(y), self.c2(self.up(y))], dim=1)
        z = F.interpolate(self.c3(z), size=(8, 8), mode="bilinear", align_corners=False)
        return torch.clamp(z, -1.0, 2.0)


class Mobile(nn.Module):
    """A MobileNetV3 block: 1×1 expand+BN+Hardswish, depthwise 3×3 (32 groups)+BN+Hardswish,
    squeeze-excite (avg pool, ReLU, Hardsigmoid gate), 1×1 project+BN, residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.e = nn.Conv2d(8, 32, 1, bias=False)
        self.b1 = _bn(32)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
        self.b2 = _bn(32)
        self.se1 = nn.Conv2d(32, 8, 1)
        self.se2 = nn.Conv2d(8, 32, 1)
        self.p = nn.Conv2d(32, 8, 1, bias=False)
        self.b3 = _bn(8)

    def forward(self, x):
        y = F.hardswish(self.b1(self.e(x)))
        y = F.hardswish(self.b2(self.dw(y)))
        w = F.hardsigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(y, 1)))))
        return x + self.b3(self.p(y * w))


class Head(nn.Module):
    """A classifier: Conv+BN+ReLU, flatten, Linear+ReLU6 (Gemm), Linear without bias (MatMul),
    torch.matmul with a weight matrix. (No global pool: over N(0, 1) inputs it averages the
    input away, and the output would hardly depend on the input.)"""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.b = _bn(8)
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10, bias=False)
        self.w = nn.Parameter(torch.randn(10, 6) * 0.3)

    def forward(self, x):
        y = torch.flatten(F.relu(self.b(self.c(x))), 1)
        y = F.relu6(self.fc1(y))
        return torch.matmul(self.fc2(y), self.w)


class WideDepthwise(nn.Module):
    """A depthwise Conv with 160 groups (> 128: not an NPU Conv) between NPU work."""

    def __init__(self) -> None:
        super().__init__()
        self.e = nn.Conv2d(3, 160, 1)
        self.dw = nn.Conv2d(160, 160, 3, padding=1, groups=160)
        self.b = _bn(160)
        self.p = nn.Conv2d(160, 8, 1)

    def forward(self, x):
        return self.p(F.relu6(self.b(self.dw(self.e(x)))))


class LoneBN(nn.Module):
    """BatchNorm2d on the input (no Conv before it: becomes Mul+Add), then Conv, and a cat along
    the height axis (the one Concat the NPU runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.b0 = _bn(3)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = self.c1(self.b0(x))
        return torch.cat([y, self.c2(y)], dim=2)


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "seg": (Seg, (1, 3, 16, 16)),
    "mobile": (Mobile, (1, 8, 8, 8)),
    "head": (Head, (1, 3, 8, 8)),
    "wide_dw": (WideDepthwise, (1, 3, 8, 8)),
    "lone_bn": (LoneBN, (1, 3, 8, 8)),
}

NPU_EXPECTED = {  # operator types that must run on the NPU (in the stages' graphs)
    # Relu and Clip (ReLU6, clamp) after a quantised operator are absent: the QDQ quantiser folds
    # them into that operator's int8 output range (exact: a quantised range [0, hi] is a ReLU).
    "seg": {"Conv", "ConvTranspose", "Resize"},
    "mobile": {"Conv", "HardSigmoid", "Mul", "Add", "GlobalAveragePool"},
    "head": {"Conv", "Gemm", "MatMul"},
    "wide_dw": {"Conv"},
    "lone_bn": {"Mul", "Add", "Conv", "Concat"},
}

CPU_EXPECTED = {  # (op_type, reason pattern) of every cpu-step operator, observed and justified
    "seg": [],  # its channel Concat is an NPU memory operation (docs/partitioning.md)
    "mobile": [],
    "head": [],
    "wide_dw": [],  # its 160-group depthwise Conv runs on the NPU as two pieces of at most 128 groups
    "lone_bn": [],
}


@functools.cache
def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name][0]().eval()


def sample(name: str, seed: int, batch: int = 1) -> np.ndarray:
    shape = (batch,) + MODELS[name][1][1:]
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def torch_out(name: str, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return build(name)(torch.from_numpy(x)).numpy()


# ---------------------------------------------------------------------------------------------
# Exporters

EXPORTERS: dict[str, dict[str, object]] = {
    "ts11": {"dynamo": False, "opset_version": 11},
    "ts13": {"dynamo": False, "opset_version": 13},
    "ts15": {"dynamo": False, "opset_version": 15},
    "ts17": {"dynamo": False, "opset_version": 17},
    "dynamo": {"dynamo": True},  # default opset (20 with torch 2.13)
}

EXTRA_EXPORTERS: dict[str, dict[str, object]] = {
    "dynamo17": {"dynamo": True, "opset_version": 17},  # an explicit opset below the exporter's default
}
ALL_EXPORTERS = {**EXPORTERS, **EXTRA_EXPORTERS}


@dataclass(frozen=True)
class Known:
    """An expected failure: why, and the regex the InvalidModel message must match."""

    reason: str
    match: str


KNOWN_FAILURES: dict[tuple[str, str], Known] = {}
"""Exports that fail today (none: every combination of the matrix goes through)."""

NATIVE_FAILURES: dict[tuple[str, str], Known] = {}


def optimize(raw: onnx.ModelProto | bytes, known: Known | None = None, **kw: object) -> onnx.ModelProto:
    """optimize_model, letting through only the InvalidModel a known failure expects."""
    try:
        return optimize_model(raw, **kw)  # type: ignore[arg-type]
    except InvalidModel as e:
        if known is not None and re.search(known.match, str(e)):
            raise
        pytest.fail(f"unexpected InvalidModel: {e}")


@functools.cache
def export(name: str, exporter: str, *, dynamic: bool = False, fold: bool = True) -> bytes:
    """The ONNX bytes torch writes for model ``name`` (cached: tests share exports)."""
    kw = dict(ALL_EXPORTERS[exporter])
    x = torch.from_numpy(sample(name, 0, batch=2 if dynamic and kw["dynamo"] else 1))
    if kw["dynamo"]:
        pytest.importorskip("onnxscript")
        kw.update(verbose=False, external_data=False)
        if dynamic:
            kw["dynamic_shapes"] = {"x": {0: torch.export.Dim("batch", min=1, max=64)}}
    else:
        kw["do_constant_folding"] = fold
        if dynamic:
            kw["dynamic_axes"] = {"x": {0: "batch"}, "y": {0: "batch"}}
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(build(name), (x,), f, input_names=["x"], output_names=["y"], **kw)
    return f.getvalue()


# ---------------------------------------------------------------------------------------------
# The pipeline and its checks


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def check_optimized(name: str, om: onnx.ModelProto, opset: int = 13) -> None:
    onnx.checker.check_model(om, full_check=True)
    assert opset_of(om) == opset
    ops = {n.op_type for n in om.graph.node}
    left = ops & {"Constant", "Shape", "Gather", "Unsqueeze", "Identity", "Dropout", "BatchNormalization", "Cast"}
    assert not left, f"optimize_model left {sorted(left)} (constants not folded / BN not fused)"
    dims = om.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == list(MODELS[name][1])
    sess = ort.InferenceSession(om.SerializeToString(), providers=["CPUExecutionProvider"])
    for seed in (100, 101):
        x = sample(name, seed)
        ref = torch_out(name, x)
        (got,) = sess.run(None, {om.graph.input[0].name: x})
        assert got.shape == ref.shape
        err = float(np.max(np.abs(got - ref)))
        assert err <= OPT_RTOL * float(np.max(np.abs(ref))), f"optimised model differs from torch by {err}"


def quantize_compile(name: str, om: onnx.ModelProto, batch_size: int = 1) -> Program:
    cal = Calibrator(om, CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data([[sample(name, 1000 + i)] for i in range(CAL_SAMPLES)], progress=False)
    q = quantize(om, cal.compute_range())
    return compile(q, target_npu=TARGET, batch_size=batch_size)


def check_program(name: str, program: Program, batch: int = 1) -> None:
    assert program.target == TARGET and program.batch_size == batch
    shape = (batch,) + MODELS[name][1][1:]
    assert [(s.dtype, s.shape) for s in program.inputs] == [("float32", shape)]
    outs, refs = [], []
    for seed in range(200, 200 + RUNS):
        x = sample(name, seed, batch)
        ref = torch_out(name, x)
        assert [(s.dtype, s.shape) for s in program.outputs] == [("float32", ref.shape)]
        (out,) = run_program(program, [x])
        assert out.dtype == np.float32 and out.shape == ref.shape
        for i in range(batch):  # every sample of the batch, not just the batch as a whole
            c = cosine(out[i], ref[i])
            assert c >= COSINE_MIN, f"int8 program vs torch fp32: cosine {c:.4f} < {COSINE_MIN} (sample {i})"
        outs.append(out)
        refs.append(ref)
    # The bound discriminates: the output for one input is not "close" to torch's for another.
    assert cosine(outs[0], refs[1]) < COSINE_MIN


def cpu_ops(program: Program) -> list[dict[str, str]]:
    return [op for s in program.steps if isinstance(s, CpuStep) for op in s.ops]


def npu_ops(program: Program) -> set[str]:
    """Operator types in the NPU stages' graphs (quantisation nodes aside)."""
    return {n.op_type for st in program.stages for n in onnx.load_from_string(st.graph).graph.node} - {
        "QuantizeLinear", "DequantizeLinear"}


HOST_OPS = {"Quantize", "QuantizeUint8", "Lower", "Pad", "Unlower", "Slice", "Dequantize"}


def check_placement(name: str, program: Program) -> None:
    ops = cpu_ops(program)
    expected = CPU_EXPECTED[name]
    assert len(ops) == len(expected), f"cpu-step operators {[(o['op_type'], o['reason']) for o in ops]}"
    for op, (op_type, pattern) in zip(sorted(ops, key=lambda o: o["op_type"]), sorted(expected)):
        assert op["op_type"] == op_type and re.search(pattern, op["reason"]), op
    # A float neighbour on the CPU must be fed by an operator the rules put there, in the same step.
    for s in program.steps:
        if not isinstance(s, CpuStep):
            continue
        g = onnx.load_from_string(s.graph).graph
        made = {o: n for n in g.node for o in n.output}
        ruled = {o["name"] for o in s.ops if "not quantised" not in o["reason"]}
        for o in s.ops:
            m = re.match(r"its input '(.*)' is not quantised", o["reason"])
            if m:
                assert made[m.group(1)].name in ruled, f"{o} is on the CPU with no excluded operator before it"
    missing = NPU_EXPECTED[name] - npu_ops(program)
    assert not missing, f"{sorted(missing)} did not run on the NPU"
    # The other host steps are the program's boundary and layout operators, nothing of the model.
    assert {s.op for s in program.steps if isinstance(s, OpStep)} <= HOST_OPS


def _param(name: str, exporter: str, *rest: object, known: Known | None = None, raises: type = InvalidModel,
           timeout: int = 120) -> object:
    marks = [pytest.mark.timeout(timeout)]
    if known is not None:
        marks.append(pytest.mark.xfail(strict=True, raises=raises, reason=known.reason))
    if exporter in EXTRA_EXPORTERS:
        marks.append(pytest.mark.slow)
    return pytest.param(name, exporter, *rest, marks=marks, id="-".join(map(str, (name, exporter, *rest))))


def run_pipeline(name: str, om: onnx.ModelProto, *, opset: int = 13, batch: int = 1) -> Program:
    check_optimized(name, om, opset=opset)
    program = quantize_compile(name, om, batch_size=batch)
    check_program(name, program, batch=batch)
    check_placement(name, program)
    return program


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize(("name", "exporter"), [
    _param(n, e, known=KNOWN_FAILURES.get((n, e))) for n in MODELS for e in ALL_EXPORTERS])
def test_export_optimize_quantize_compile_run(name: str, exporter: str) -> None:
    raw = onnx.load_from_string(export(name, exporter))
    if not ALL_EXPORTERS[exporter]["dynamo"]:
        assert opset_of(raw) == ALL_EXPORTERS[exporter]["opset_version"]
    run_pipeline(name, optimize(raw, KNOWN_FAILURES.get((name, exporter))))


@pytest.mark.parametrize(("name", "exporter"), [
    _param(n, e, known=NATIVE_FAILURES.get((n, e)), timeout=60)
    for n in ("seg", "mobile", "head", "lone_bn") for e in ("ts15", "ts17")])
def test_newer_exports_also_pass_at_their_native_opset(name: str, exporter: str) -> None:
    """Optimised at its own opset (``opset_version=`` the export's) instead of down to 13, an
    opset-15/17 export also optimises, quantises, compiles and runs within the bounds."""
    raw = onnx.load_from_string(export(name, exporter))
    om = optimize_model(raw, opset_version=opset_of(raw))
    known = NATIVE_FAILURES.get((name, exporter))
    try:
        run_pipeline(name, om, opset=opset_of(raw))
    except InvalidModel as e:
        if known is None or not re.search(known.match, str(e)):
            pytest.fail(f"unexpected InvalidModel: {e}")
        raise


@pytest.mark.timeout(120)
def test_default_dynamo_export_as_bytes() -> None:
    data = export("seg", "dynamo")  # optimises, compiles and runs as a ModelProto (see the matrix)
    assert opset_of(onnx.load_from_string(data)) == 20
    run_pipeline("seg", optimize(data))


DYNAMIC = [
    _param("head", "ts13", 1), _param("head", "ts13", 4),
    _param("lone_bn", "ts13", 1), _param("lone_bn", "ts13", 4),
    _param("wide_dw", "ts17", 1), _param("wide_dw", "ts17", 4),
    _param("wide_dw", "dynamo", 1), _param("wide_dw", "dynamo", 4),
    _param("seg", "ts11", 1), _param("seg", "ts11", 4),
    _param("seg", "dynamo", 1), _param("seg", "dynamo", 4),
]


@functools.cache
def _optimized_dynamic(name: str, exporter: str) -> onnx.ModelProto:
    raw = onnx.load_from_string(export(name, exporter, dynamic=True))
    dim0 = raw.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value, "the export should have a symbolic batch"
    return optimize(raw)


@pytest.mark.parametrize(("name", "exporter", "batch"), DYNAMIC)
def test_dynamic_batch_compiles_at_batch_1_and_4(name: str, exporter: str, batch: int) -> None:
    """An export with a symbolic batch (dynamic_axes / dynamic_shapes) optimises with the batch
    fixed to 1, and compiles for batch_size 1 and 4; at 4 each sample matches torch."""
    run_pipeline(name, _optimized_dynamic(name, exporter), batch=batch)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_resize_to_a_fixed_size_scales_with_batch(mode: str) -> None:
    """The minimal reproduction of the batch bug: Conv → F.interpolate(size=(16, 16)), a static
    TorchScript export at opset 13, compiled with batch_size=4."""

    class Up(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return F.interpolate(self.c(x), size=(16, 16), mode=mode)

    torch.manual_seed(0)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Up().eval(), (torch.zeros(1, 3, 8, 8),), f, dynamo=False, opset_version=13,
                          input_names=["x"], output_names=["y"])
    om = optimize_model(onnx.load_from_string(f.getvalue()))
    cal = Calibrator(om, CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data([[np.random.default_rng(i).standard_normal((1, 3, 8, 8)).astype(np.float32)] for i in range(4)],
                     progress=False)
    program = compile(quantize(om, cal.compute_range()), target_npu=TARGET, batch_size=4)
    assert program.outputs[0].shape == (4, 8, 16, 16), f"the batch-4 program's output is {program.outputs[0].shape}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(MODELS))
def test_export_without_constant_folding_still_optimises(name: str) -> None:
    """TorchScript at opset 13 with do_constant_folding=False (the dynamo exporter has no such
    switch): optimize_model folds what the exporter left (Constant, Shape chains, BN) into the
    same operators as the folded export, and the program is as good."""
    raw = onnx.load_from_string(export(name, "ts13", fold=False))
    left = {n.op_type for n in raw.graph.node} & {"Constant", "Shape", "Gather", "Unsqueeze", "BatchNormalization"}
    assert left, "the unfolded export should leave work for the optimiser"
    folded = optimize_model(onnx.load_from_string(export(name, "ts13")))
    om = optimize_model(raw)
    assert sorted(n.op_type for n in om.graph.node) == sorted(n.op_type for n in folded.graph.node)
    assert len(om.graph.initializer) == len(folded.graph.initializer)
    run_pipeline(name, om)
