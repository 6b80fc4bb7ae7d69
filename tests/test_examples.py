"""The seed's code samples, ported in examples/: each runs as a user would run it and says what it should.

Every example runs in a subprocess with ``sys.executable`` (the shell one with ``bash``, the
venv's ``python`` and ``npusim`` first on PATH), in a fresh working directory, with a run
directory where no stack is registered — so ``session.create`` starts an embedded stack, as
for a user who started nothing — and a program cache shared by the whole file.
docs/seed-examples.md shows the same runs' output.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from npusim.services.program import Program

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT_S = 300
# Examples 1–3 keep the seed's torch.randn / torch.randint lines; torch is the `torch` extra (CI installs it).
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="the seed's sample uses torch: pip install -e '.[torch]'")


@dataclass
class Ran:
    cwd: Path
    stdout: str
    stderr: str
    seconds: float

    def spans(self, trace: str) -> list[dict]:
        """The complete events ("X") of a Chrome trace the example wrote."""
        events = json.loads((self.cwd / trace).read_text())["traceEvents"]
        return [e for e in events if e.get("ph") == "X"]


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("examples-program-cache")


def run_example(name: str, tmp_path: Path, cache: Path) -> Ran:
    script = EXAMPLES / name
    cwd = tmp_path / "work"
    cwd.mkdir()
    env = dict(os.environ)
    env.update({
        "NPUSIM_CACHE_DIR": str(cache),
        "NPUSIM_RUN_DIR": str(tmp_path / "run"),  # nothing registered there: an embedded stack starts
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "120",
    })
    cmd = ["bash", str(script)] if script.suffix == ".sh" else [sys.executable, str(script)]
    t0 = time.monotonic()
    # Its own process group: on a timeout the example's embedded services go with it.
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{name} did not finish within {TIMEOUT_S} s\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}")
    ran = Ran(cwd, out, err, time.monotonic() - t0)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    return ran


def _line(ran: Ran, prefix: str) -> str:
    lines = [ln for ln in ran.stdout.splitlines() if ln.startswith(prefix)]
    assert lines, f"no line starting with {prefix!r} in:\n{ran.stdout}"
    return lines[0]


def _ints_after(line: str, marker: str) -> list[int]:
    return [int(v) for v in re.findall(r"\d+", line.split(marker, 1)[1])]


def _seed_profile(ran: Ran, trace: str) -> list[str]:
    """The seed's trace file: its three records, the request inside "inf", the device's work."""
    names = [e["name"] for e in ran.spans(trace)]
    for want in ("pre", "inf", "post", "Inference", "cpu.Quantize", "npu.exec"):
        assert want in names, f"{trace} lacks {want!r}: {names}"
    return names


@needs_torch
@pytest.mark.timeout(TIMEOUT_S + 30)
def test_01_quantize_removal(tmp_path: Path, shared_cache: Path) -> None:
    ran = run_example("01_quantize_removal.py", tmp_path, shared_cache)
    assert (ran.cwd / "resnet50.onnx").stat().st_size > 90e6  # ResNet-50's 25.6 M float weights
    assert _line(ran, "CPU operators:") == "CPU operators: ['QuantizeUint8', 'Unlower', 'Dequantize']"
    assert "dtype='uint8', shape=(1, 3, 224, 224)" in _line(ran, "input:")
    assert "dtype='float32', shape=(1, 1000)" in _line(ran, "output:")
    assert _line(ran, "prediction:").startswith("prediction: [")
    names = _seed_profile(ran, "trace_1.json")
    assert "cpu.Dequantize" in names
    # the comparison with the seed's commented-out default: five profiled runs of each graph
    uint8 = _line(ran, "uint8 input, with_quantize=False")
    assert "['QuantizeUint8', 'Unlower', 'Dequantize']" in uint8 and len(_ints_after(uint8, "(µs):")) == 5
    float32 = _line(ran, "float32 input, default")
    assert "['Quantize', 'Unlower', 'Dequantize']" in float32 and len(_ints_after(float32, "(µs):")) == 5


@needs_torch
@pytest.mark.timeout(TIMEOUT_S + 30)
def test_02_dequantize_removal(tmp_path: Path, shared_cache: Path) -> None:
    ran = run_example("02_dequantize_removal.py", tmp_path, shared_cache)
    assert _line(ran, "CPU operators:") == "CPU operators: ['QuantizeUint8', 'Unlower']"
    assert "dtype='uint8', shape=(1, 1000)" in _line(ran, "output:")
    assert _line(ran, "outputs[0]:").startswith("outputs[0]: uint8 (1, 1000)")
    names = _seed_profile(ran, "trace_2.json")
    assert "cpu.Dequantize" not in names
    # the comparison with the same graph without normalized_pixel_outputs
    assert _line(ran, "uint8 output, normalized_pixel_outputs=[0]").endswith("Dequantize run by run (µs): []")
    assert len(_ints_after(_line(ran, "float32 output, without it"), "(µs):")) == 5
    m = re.search(r"(\d+)/(\d+) logits ≥ 1 give 255, (\d+)/(\d+) negative logits give 0", _line(ran, "uint8 output:"))
    assert m and m[1] == m[2] and m[3] == m[4], ran.stdout


@needs_torch
@pytest.mark.timeout(TIMEOUT_S + 30)
def test_03_permute_input(tmp_path: Path, shared_cache: Path) -> None:
    ran = run_example("03_permute_input.py", tmp_path, shared_cache)
    assert _line(ran, "model_nhwc.onnx input:") == "model_nhwc.onnx input: [1, 512, 512, 3]"
    permuted = _line(ran, "with permute_input:")
    assert "input uint8 [1, 3, 512, 512] NCHW" in permuted and "'Lower'" not in permuted
    plain = _line(ran, "without permute_input:")
    assert "input uint8 [1, 512, 512, 3] NHWC" in plain and "'Lower': 1" in plain
    assert _line(ran, "same outputs for the same image:").endswith("True")
    assert len(_ints_after(_line(ran, "Lower, run by run"), "(µs):")) == 4
    names = _seed_profile(ran, "trace_lower.json")
    assert "cpu.Lower" not in names


@pytest.mark.timeout(TIMEOUT_S + 30)
def test_04_compile_cli(tmp_path: Path, shared_cache: Path) -> None:
    ran = run_example("04_compile_cli.sh", tmp_path, shared_cache)
    programs = {name: Program.from_bytes((ran.cwd / f"{name}.enf").read_bytes())
                for name in ("mnist", "mnist_b1", "resnet50", "resnet50_2pe")}
    assert (programs["mnist"].target, programs["mnist"].batch_size) == ("warboy", 32)
    assert tuple(programs["mnist"].inputs[0].shape) == (32, 1, 28, 28)
    assert (programs["mnist_b1"].target, programs["mnist_b1"].batch_size) == ("warboy", 1)
    assert (programs["resnet50"].target, programs["resnet50"].batch_size) == ("warboy", 1)
    assert (programs["resnet50_2pe"].target, programs["resnet50_2pe"].batch_size) == ("warboy-2pe", 1)
    # one PE has half the fused pair's slices: the same program needs more time on it
    assert programs["resnet50"].estimate["npu_ns"] > programs["resnet50_2pe"].estimate["npu_ns"]
    for line in ("npusim compile mnist.dfg → mnist.enf (target warboy, batch 32)",
                 "npusim compile resnet50.dfg → resnet50.enf (target warboy, batch 1)",
                 "npusim compile resnet50.dfg → resnet50_2pe.enf (target warboy-2pe, batch 1)"):
        assert line in ran.stderr, ran.stderr


@pytest.mark.timeout(TIMEOUT_S + 30)
def test_05_sync_session(tmp_path: Path, shared_cache: Path) -> None:
    ran = run_example("05_sync_session.py", tmp_path, shared_cache)
    assert _line(ran, "device:") == "device: npu0pe0-1"  # the embedded stack's device, fused PE
    assert 'TensorDesc(name="input", shape=(1, 1, 28, 28), dtype=FLOAT32' in ran.stdout
    assert 'TensorDesc(name="logits", shape=(1, 10), dtype=FLOAT32' in ran.stdout
    assert _line(ran, "outputs[0]:").startswith("outputs[0]: [[")


@pytest.mark.timeout(TIMEOUT_S + 30)
def test_06_async_queue(tmp_path: Path, shared_cache: Path) -> None:
    ran = run_example("06_async_queue.py", tmp_path, shared_cache)
    assert (ran.cwd / "mnist.onnx").is_file()
    # five printed (1, 10) arrays, one per request received
    assert ran.stdout.count("[[") == 5 and ran.stdout.count("]]") == 5, ran.stdout


@pytest.mark.timeout(TIMEOUT_S + 30)
def test_07_nux_model(tmp_path: Path, shared_cache: Path) -> None:
    ran = run_example("07_nux_model.py", tmp_path, shared_cache)
    assert (ran.cwd / "mnist.onnx").is_file()
    assert _line(ran, "model:") == "model: MNIST ready: True"
    assert _line(ran, "result:").startswith("result: [array([[")
