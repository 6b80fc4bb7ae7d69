"""``npusim compile`` and ``npusim explain``, run as a user runs them (the real console script).

Each invocation costs about a second of interpreter start-up, so a module fixture starts
them all at once on a small thread pool and each test waits for the one it checks.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from npusim.services.program import OpStep, Program

pytestmark = pytest.mark.timeout(120)

_candidate = Path(sys.executable).with_name("npusim")
NPUSIM = str(_candidate) if _candidate.exists() else (shutil.which("npusim") or "npusim")
WAIT_S = 100.0


# -- the models ---------------------------------------------------------------------------------
def _conv(opset: int = 13, shape: list[int | str] = (1, 3, 4, 32)) -> onnx.ModelProto:
    w = numpy_helper.from_array((np.random.default_rng(1).standard_normal((4, 3, 3, 3)) * 0.5).astype(np.float32), "w")
    b = numpy_helper.from_array(np.full(4, 0.1, np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    out = [shape[0], 4, shape[2], shape[3]]
    g = helper.make_graph(nodes, "cli_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], [w, b])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _write_models(d: Path) -> None:
    onnx.save(_conv(), d / "model.onnx")
    (d / "random.onnx").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    full = (d / "model.onnx").read_bytes()
    (d / "cut.onnx").write_bytes(full[: len(full) * 2 // 3])
    onnx.save(_conv(opset=10), d / "opset10.onnx")
    onnx.save(_conv(opset=22), d / "opset22.onnx")
    onnx.save(_conv(shape=[1, 3, "height", 32]), d / "dynamic.onnx")
    # External weights that point out of the model's folder (the file is there: only the path is wrong).
    sub = d / "sub"
    sub.mkdir()
    onnx.save(_conv(), sub / "escape.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)
    m = onnx.load(sub / "escape.onnx", load_external_data=False)
    for t in m.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../escape.bin"
    os.replace(sub / "weights.bin", d / "escape.bin")
    (sub / "escape.onnx").write_bytes(m.SerializeToString())
    # Calibration samples: pixels in [0, 50], so the input range is known exactly.
    cal = d / "calibration"
    cal.mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        x = rng.uniform(0.0, 50.0, (1, 3, 4, 32)).astype(np.float32)
        x.flat[0], x.flat[1] = 0.0, 50.0
        np.save(cal / f"sample_{i}.npy", x)
    (d / "permute.yaml").write_text("permute_input:\n  - [0, 2, 3, 1]\n")
    (d / "bad_key.yaml").write_text("remove_lowr: true\n")


# -- running ---------------------------------------------------------------------------------
@dataclass
class Run:
    args: list[str]
    rc: int
    stdout: str
    stderr: str

    @property
    def err(self) -> str:
        """stderr with terminal wrapping and table borders undone, for matching phrases."""
        return " ".join(self.stderr.replace("│", " ").split())

    @property
    def error(self) -> str:
        """The one-line error ``npusim`` prints for a failed command."""
        return next((line for line in self.stderr.splitlines() if line.startswith("npusim: ")), "")


class Cli:
    def __init__(self, d: Path, env: dict[str, str]) -> None:
        self.dir = d
        self.env = env
        self._pool = cf.ThreadPoolExecutor(3, thread_name_prefix="npusim-cli")
        self._jobs: dict[str, cf.Future[list[Run]]] = {}

    def run(self, *args: str) -> Run:
        p = subprocess.run([NPUSIM, *args], cwd=self.dir, env=self.env, capture_output=True, text=True,
                           timeout=WAIT_S, stdin=subprocess.DEVNULL)
        return Run(list(args), p.returncode, p.stdout, p.stderr)

    def start(self, name: str, command: list[str], *, then: dict[str, list[str]] | None = None) -> None:
        """Run ``command`` in the background; when it is done, start the commands of ``then``
        (which may read its output)."""
        self._jobs[name] = self._pool.submit(self.run, *command)
        for later, cmd in (then or {}).items():
            self._jobs[later] = cf.Future()
            self._jobs[name].add_done_callback(functools.partial(self._chain, self._jobs[later], cmd))

    def _chain(self, future: cf.Future[Run], command: list[str], _: object) -> None:
        inner = self._pool.submit(self.run, *command)
        inner.add_done_callback(lambda f: future.set_exception(f.exception()) if f.exception()
                                else future.set_result(f.result()))

    def result(self, name: str) -> Run:
        return self._jobs[name].result(timeout=WAIT_S)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _compile(model: str, out: str, *extra: str) -> list[str]:
    return ["compile", model, "-o", out, *extra]


ERRORS = {
    "not_onnx": ("random.onnx", ["--calibration-data", "random"]),
    "truncated": ("cut.onnx", ["--calibration-data", "random"]),
    "float_without_calibration": ("model.onnx", []),
    "opset10": ("opset10.onnx", ["--calibration-data", "random"]),
    "opset22": ("opset22.onnx", ["--calibration-data", "random"]),
    "external_data_escape": ("sub/escape.onnx", ["--calibration-data", "random"]),
    "dynamic_dim": ("dynamic.onnx", ["--calibration-data", "random"]),
    "config_bad_key": ("model.onnx", ["--calibration-data", "random", "--compiler-config", "bad_key.yaml"]),
}


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    d = tmp_path_factory.mktemp("cli")
    _write_models(d)
    run_dir = Path(tempfile.mkdtemp(prefix="npcc-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NPUSIM_", "OTEL_")) and k not in ("PYTEST_CURRENT_TEST", "FORCE_COLOR")}
    env.update(NPUSIM_CACHE_DIR=str(d / "cache"), NPUSIM_RUN_DIR=str(run_dir), NO_COLOR="1", COLUMNS="220",
               TERM="dumb")
    c = Cli(d, env)
    main = ["--target-npu", "warboy", "--batch-size", "4", "--calibration-data", "random"]
    c.start("main", _compile("model.onnx", "main.enf", *main),
            then={"explain": ["explain", "main.enf"], "explain_json": ["explain", "--json", "main.enf"],
                  "again": _compile("model.onnx", "again.enf", *main)})
    c.start("permute", _compile("model.onnx", "permute.enf", "--calibration-data", "random",
                                "--compiler-config", "permute.yaml"))
    c.start("uint8_in", _compile("model.onnx", "uint8_in.enf", "--calibration-data", "random", "--no-with-quantize"))
    c.start("uint8_out", _compile("model.onnx", "uint8_out.enf", "--calibration-data", "random",
                                  "--normalized-pixel-outputs", "0"))
    c.start("calibration_dir", _compile("model.onnx", "caldir.enf", "--calibration-data", "calibration"))
    for name, (model, extra) in ERRORS.items():
        c.start(name, _compile(model, f"{name}.enf", *extra))
    c.start("explain_onnx", ["explain", "model.onnx"])
    try:
        yield c
    finally:
        c.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def _ok(run: Run) -> Run:
    assert run.rc == 0, f"npusim {' '.join(run.args)} failed ({run.rc}):\n{run.stderr}"
    return run


def _program(cli: Cli, name: str) -> Program:
    return Program.from_bytes((cli.dir / name).read_bytes())


# -- npusim compile -------------------------------------------------------------------------
def test_compile_writes_a_loadable_program(cli: Cli) -> None:
    _ok(cli.result("main"))
    program = _program(cli, "main.enf")
    assert program.target == "warboy"
    assert program.batch_size == 4
    assert [(s.name, s.dtype, s.shape) for s in program.inputs] == [("x", "float32", (4, 3, 4, 32))]
    assert [(s.name, s.dtype, s.shape) for s in program.outputs] == [("y", "float32", (4, 4, 4, 32))]
    assert [s.kind for s in program.steps] == ["op", "npu", "op"]


def test_compile_prints_progress_stage_by_stage(cli: Cli) -> None:
    run = _ok(cli.result("main"))
    assert "npusim compile model.onnx → main.enf (target warboy, batch 4)" in run.err
    lines = [line.strip() for line in run.stderr.splitlines() if line.strip().startswith("✓")]
    stages = [line.split()[1] for line in lines]
    assert stages[:4] == ["load", "optimize", "calibrate", "quantize"], lines
    assert stages[4:] and all(s.startswith(("partition", "cost")) for s in stages[4:]), lines
    assert all(line.endswith(" s") for line in lines)


def test_compile_prints_a_summary(cli: Cli) -> None:
    err = _ok(cli.result("main")).err
    for phrase in ("compiled program", "target warboy (one PE)", "batch 4", "inputs x float32[4, 3, 4, 32] NCHW",
                   "outputs y float32[4, 4, 4, 32] NCHW", "CPU operators Quantize, Dequantize", "NPU stages 1",
                   "estimated NPU time", "fits SRAM yes", "written main.enf"):
        assert phrase in err, phrase
    assert "warning: calibrated on 8 random" in err


def test_a_repeated_compile_is_served_from_the_cache(cli: Cli) -> None:
    first, again = _ok(cli.result("main")), _ok(cli.result("again"))
    assert "served from the program cache" in again.err
    assert "✓ optimize" not in again.stderr
    assert (cli.dir / "again.enf").read_bytes() == (cli.dir / "main.enf").read_bytes()
    assert "served from the program cache" not in first.err


def test_compiler_config_yaml_permute_input(cli: Cli) -> None:
    _ok(cli.result("permute"))
    program = _program(cli, "permute.enf")
    assert (program.inputs[0].shape, program.inputs[0].axes) == ((1, 4, 32, 3), "NHWC")
    assert "Lower" in [s.op for s in program.steps if isinstance(s, OpStep)]


def test_compiler_config_yaml_with_a_bad_key_names_it(cli: Cli) -> None:
    run = cli.result("config_bad_key")
    assert run.rc != 0
    assert "InvalidCompilerConfig" in run.error and "'remove_lowr'" in run.error
    assert "permute_input" in run.error  # ...and lists the keys there are
    assert not (cli.dir / "config_bad_key.enf").exists()


def test_no_with_quantize_gives_a_uint8_input(cli: Cli) -> None:
    _ok(cli.result("uint8_in"))
    program = _program(cli, "uint8_in.enf")
    assert program.inputs[0].dtype == "uint8"
    assert program.steps[0].op == "QuantizeUint8"
    assert program.outputs[0].dtype == "float32"


def test_normalized_pixel_outputs_gives_a_uint8_output(cli: Cli) -> None:
    _ok(cli.result("uint8_out"))
    program = _program(cli, "uint8_out.enf")
    assert program.outputs[0].dtype == "uint8"
    assert program.inputs[0].dtype == "float32"
    assert "Dequantize" not in [s.op for s in program.steps if isinstance(s, OpStep)]


def test_calibration_data_directory_of_npy_samples(cli: Cli) -> None:
    run = _ok(cli.result("calibration_dir"))
    assert "random" not in run.err  # no warning about random calibration
    program = _program(cli, "caldir.enf")
    quant = program.steps[0]
    assert isinstance(quant, OpStep) and quant.op == "Quantize"
    # The samples span exactly [0, 50]: asymmetric int8 over that range.
    assert quant.attrs["scale"] == pytest.approx(50.0 / 255, rel=1e-4)
    assert quant.attrs["zero_point"] == -128


# -- npusim explain -------------------------------------------------------------------------------
def test_explain_prints_steps_boundaries_costs_and_sram(cli: Cli) -> None:
    run = _ok(cli.result("explain"))
    out = " ".join(run.stdout.split())
    assert "main.enf: cli_conv for warboy, batch 4, 1 NPU stage(s)" in out
    assert "steps, in the order a worker runs them" in out
    lines = run.stdout.splitlines()
    assert any("Quantize" in line and "CPU" in line for line in lines)
    assert any("NPU stage 0" in line and "NPU" in line and "µs estimated" in line for line in lines)
    assert any("Dequantize" in line and "CPU" in line for line in lines)
    assert "tensors at the boundaries" in out
    assert any("program input" in line and "float32" in line and "[4, 3, 4, 32]" in line for line in lines)
    assert any("into NPU stage 0" in line and "int8" in line for line in lines)
    assert any("program output" in line and "[4, 4, 4, 32]" in line for line in lines)
    assert "NPU stage 0: estimated cycles per operator" in out
    conv = next(line for line in lines if "│ conv " in line or line.strip().startswith("│ conv"))
    assert "Conv" in conv and ("compute" in conv or "memory" in conv)
    assert any(line.strip().startswith("│ total") for line in lines)
    assert "SRAM: weights" in out and "→ fits" in out


def test_explain_json_prints_the_header(cli: Cli) -> None:
    run = _ok(cli.result("explain_json"))
    header = json.loads(run.stdout)
    assert header["format"] == "npusim-enf"
    assert header["target"] == "warboy" and header["batch_size"] == 4
    assert [s["kind"] for s in header["steps"]] == ["op", "npu", "op"]
    assert header["inputs"][0]["shape"] == [4, 3, 4, 32]
    assert header["stages"][0]["estimate"]["npu_ns"] > 0


def test_explain_refuses_a_file_that_is_not_a_program(cli: Cli) -> None:
    run = cli.result("explain_onnx")
    assert run.rc != 0
    assert "not an npusim program" in run.error


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("job, phrases", [
    ("not_onnx", ["InvalidModel", "cannot parse the model (4096 bytes)", "not an ONNX protobuf"]),
    ("truncated", ["InvalidModel", "cannot parse the model"]),
    ("float_without_calibration", ["InvalidModel", "float model", "quantize(model, ranges)", "--calibration-data"]),
    ("opset10", ["InvalidModel", "opset 10", "11–21", "opset_version=13"]),
    ("opset22", ["InvalidModel", "opset 22", "11–21"]),
    ("external_data_escape", ["InvalidModel", "'../escape.bin'", "outside the model's folder", "refusing"]),
    ("dynamic_dim", ["InvalidModel", "'x'", "dynamic dimension 2", "'height'"]),
])
def test_compile_errors_exit_non_zero_with_a_clear_message(cli: Cli, job: str, phrases: list[str]) -> None:
    run = cli.result(job)
    assert run.rc != 0
    assert "Traceback" not in run.stderr
    for phrase in phrases:
        assert phrase in run.error, f"{phrase!r} not in: {run.stderr}"
    assert not (cli.dir / f"{job}.enf").exists()


def test_a_truncated_model_is_called_truncated(cli: Cli) -> None:
    run = cli.result("truncated")
    assert run.rc != 0
    assert "truncated" in run.error
