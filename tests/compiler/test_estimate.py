"""``npusim estimate``: per-operator costs and per-mode predictions, from an .onnx or an .enf.

A few invocations run the real console script (started together on a small pool: each costs a
second of interpreter start-up); the rest call the command's body in-process.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import pytest

from npusim.client.hostcost import measure_steps
from npusim.compiler_svc.estimate import MODES, estimate_cmd, estimate_program, stage_timing
from npusim.compiler_svc.pipeline import CompileOptions, compile_model
from npusim.services.cost import recost_stage
from npusim.services.errors import ConfigError, InvalidInput
from npusim.services.hw import WARBOY, timing_params
from npusim.services.program import Program
from npusim.services.timing import single_stream, throughput
from npusim.services.zoo import mnist, small_cnn
from tests.helpers import short_dir

pytestmark = pytest.mark.timeout(120)

_candidate = Path(sys.executable).with_name("npusim")
NPUSIM = str(_candidate) if _candidate.exists() else (shutil.which("npusim") or "npusim")
RUNS = {
    "json": ["estimate", "mnist.onnx", "--json"],
    "table": ["estimate", "mnist.onnx", "--target-npu", "warboy", "-b", "1", "-b", "4"],
    "enf_wrong_target": ["estimate", "mnist.enf", "--target-npu", "warboy-2pe"],
    "bad_knob": ["estimate", "mnist.onnx", "--hw", "sram_per_slize=1"],
}


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with short_dir("npe-") as d:
        onnx.save(mnist(), d / "mnist.onnx")
        program, _ = compile_model((d / "mnist.onnx").read_bytes(), CompileOptions(target_npu="warboy", batch_size=2))
        (d / "mnist.enf").write_bytes(program.to_bytes())
        onnx.save(small_cnn(), d / "small_cnn.onnx")
        yield d


@pytest.fixture(scope="module")
def cli(workdir: Path) -> Iterator[dict[str, cf.Future[subprocess.CompletedProcess[str]]]]:
    with cf.ThreadPoolExecutor(2) as pool:
        yield {name: pool.submit(subprocess.run, [NPUSIM, *args], cwd=workdir, capture_output=True, text=True,
                                 timeout=100, stdin=subprocess.DEVNULL) for name, args in RUNS.items()}


def _done(cli: dict[str, cf.Future[subprocess.CompletedProcess[str]]], name: str) -> subprocess.CompletedProcess[str]:
    return cli[name].result(timeout=110)


# -- the console script -----------------------------------------------------------------------------
def test_json_is_one_object_with_every_target_and_default_batch(cli: Any) -> None:
    run = _done(cli, "json")
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["source"] == "onnx" and report["hw"] == {}
    got = {(p["target"], p["batch_size"]): set(p["modes"]) for p in report["programs"]}
    assert got == {("warboy", 1): {"pe0", "pe0+pe1"}, ("warboy", 8): {"pe0", "pe0+pe1"},
                   ("warboy-2pe", 1): {"pe0-1"}, ("warboy-2pe", 8): {"pe0-1"}}
    for p in report["programs"]:
        op = p["stages"][0]["ops"][0]
        assert {"name", "op_type", "macs", "compute_cycles", "memory_cycles", "bound", "array_fill",
                "dram_bytes"} <= set(op)
        assert p["npu_ns"] > 0 and p["dma"]["h2d_ns"] > 0 and p["dma"]["h2d_bytes"] > 0
        for mode, m in p["modes"].items():
            assert m["throughput_per_s"] > 0
            assert (m["latency_ns"] is None) == (m["device_latency_ns"] is None) == (mode == "pe0+pe1")
            if m["latency_ns"] is not None:
                e = m["end_to_end"]
                assert e["host"] == "mlperf" and e["host_pre_ns"] == e["host_post_ns"] == 0
                assert m["host_bound_per_s"] is None  # the harness's workers hide the host's share
                assert m["latency_ns"] == pytest.approx(e["runtime_ns"] + m["device_latency_ns"])
                assert m["device_latency_ns"] >= e["h2d_ns"] + e["exec_ns"] + e["d2h_ns"]
    assert report["host"]["name"] == "mlperf" and report["host"]["runtime_overhead_ns"] > 0


def test_table_shows_operators_times_and_modes(cli: Any) -> None:
    run = _done(cli, "table")
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    for phrase in ("warboy, batch 1: cost per operator", "warboy, batch 4: cost per operator", "compute cyc",
                   "memory cyc", "bound by", "array fill", "mapping", "DRAM bytes", "SRAM:", "Conv", "MaxPool",
                   "NPU time", "job overhead", "DMA over PCIe", "host→device", "device→host", "host profile mlperf",
                   "runtime", "latency", "device path", "samples/s", "pe0+pe1"):
        assert phrase in out, f"{phrase!r} missing from:\n{out}"
    assert "warboy-2pe" not in out and "pe0-1 " not in out


def test_enf_refuses_another_target_with_a_clear_message(cli: Any) -> None:
    run = _done(cli, "enf_wrong_target")
    assert run.returncode == 2, (run.stdout, run.stderr)
    err = " ".join(run.stderr.split())
    assert "InvalidInput" in err and "compiled for warboy, not warboy-2pe" in err, err
    assert "estimate the .onnx model" in err and "drop --target-npu" in err, err


def test_unknown_hardware_knob_lists_the_knobs(cli: Any) -> None:
    run = _done(cli, "bad_knob")
    assert run.returncode == 2
    err = " ".join(run.stderr.split())
    assert "unknown hardware knob 'sram_per_slize'" in err and "sram_per_slice" in err, err


# -- in-process ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def programs() -> dict[str, Program]:
    data = small_cnn().SerializeToString()
    return {t: compile_model(data, CompileOptions(target_npu=t, calibration_samples=1))[0]
            for t in ("warboy", "warboy-2pe")}


def test_predictions_are_the_timing_engines(programs: dict[str, Program]) -> None:
    for target, program in programs.items():
        est = estimate_program(program)
        st = stage_timing(program.stages[0], program.stages[0].estimate, WARBOY)
        assert set(est.modes) == set(MODES[target])
        for m in est.modes.values():
            assert m["throughput_per_s"] == throughput(m["pes"], st, program.batch_size)
            if len(m["pes"]) == 1:
                assert m["device_latency_ns"] == single_stream(m["pes"][0], st)
                assert m["latency_ns"] == timing_params().runtime_overhead_ns + single_stream(m["pes"][0], st)
        assert est.as_dict()["dma"]["h2d_ns"] == st.h2d_ns and est.as_dict()["exec_ns"] == st.exec_ns


def test_recosting_on_the_same_hardware_reproduces_the_compiler(programs: dict[str, Program]) -> None:
    for target, program in programs.items():
        stage = program.stages[0]
        assert any(o["op_type"] == "Lower" for o in stage.ops), "the layout passes are part of the cost"
        ops, est = recost_stage(stage, target, WARBOY)
        assert ops == stage.ops and est == stage.estimate


def test_what_if_hardware_reaches_cost_model_and_dma(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = estimate_cmd(model=workdir / "mnist.enf", json_out=True)["programs"][0]
    slow = estimate_cmd(model=workdir / "mnist.enf", hw=["pcie_bytes_per_s=7.875e9", "sram_per_slice=64"],
                        json_out=True)
    capsys.readouterr()
    assert slow["hw"] == {"pcie_bytes_per_s": "7.875e9", "sram_per_slice": "64"}
    assert slow["hardware"]["sram_per_slice"] == 64
    p = slow["programs"][0]
    latency = WARBOY.pcie_latency_ns  # a transfer's round trip, then its bytes at the link's rate
    assert p["dma"]["h2d_ns"] - latency == pytest.approx(2 * (base["dma"]["h2d_ns"] - latency), abs=2)
    est = p["stages"][0]["estimate"]
    assert not est["weights_resident"] and not est["fits_sram"] and base["fits_sram"]
    assert est["dram_bytes"] > base["stages"][0]["estimate"]["dram_bytes"]
    assert p["modes"]["pe0"]["latency_ns"] > base["modes"]["pe0"]["latency_ns"]
    assert p["modes"]["pe0"]["throughput_per_s"] < base["modes"]["pe0"]["throughput_per_s"]


def test_enf_uses_its_own_target_and_batch(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = estimate_cmd(model=workdir / "mnist.enf", batch_size=[2], target_npu="warboy", json_out=True)
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(report))
    assert report["source"] == "enf"
    ((p),) = report["programs"]
    assert (p["target"], p["batch_size"], set(p["modes"])) == ("warboy", 2, {"pe0", "pe0+pe1"})
    program = Program.from_bytes((workdir / "mnist.enf").read_bytes())
    assert p["stages"][0]["estimate"] == program.stages[0].estimate


def test_enf_refuses_another_batch(workdir: Path) -> None:
    with pytest.raises(InvalidInput, match=r"compiled for batch 2, not 8.*--batch-size 8"):
        estimate_cmd(model=workdir / "mnist.enf", batch_size=[2, 8])


@pytest.mark.parametrize(("kwargs", "phrase"), [
    ({"target_npu": "warboy3"}, "unknown --target-npu 'warboy3'; choose one of warboy, warboy-2pe or all"),
    ({"batch_size": [0]}, "--batch-size 0: must be from 1 to"),
    ({"hw": ["clock_hz"]}, "write KEY=VALUE"),
    ({"hw": ["slices_per_pe=-1"]}, "must be positive"),
])
def test_bad_options_are_named(workdir: Path, kwargs: dict[str, Any], phrase: str) -> None:
    with pytest.raises(ConfigError) as e:
        estimate_cmd(model=workdir / "mnist.onnx", **kwargs)
    assert phrase in str(e.value)


def test_table_for_an_onnx_in_process(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = estimate_cmd(model=workdir / "small_cnn.onnx", target_npu="warboy-2pe", batch_size=[1])
    out = capsys.readouterr().out
    assert [(p["target"], p["batch_size"]) for p in report["programs"]] == [("warboy-2pe", 1)]
    assert "warboy-2pe, batch 1: cost per operator" in out and "pe0-1" in out and "pe0+pe1" not in out
    assert "calibrated on 1 random sample" in out


def test_the_this_host_profile_times_the_host_operators_around_the_npu(workdir: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    report = estimate_cmd(model=workdir / "mnist.enf", host="this", step_costs=measure_steps, json_out=True)
    capsys.readouterr()
    assert report["host"]["name"] == "this"
    m = report["programs"][0]["modes"]["pe0"]
    e = m["end_to_end"]
    assert e["host"] == "this" and e["host_pre_ns"] > 0 and e["host_post_ns"] > 0  # Quantize+Pad, Unlower+Dequantize
    assert e["host_between_ns"] == 0
    assert m["latency_ns"] == pytest.approx(e["runtime_ns"] + e["host_pre_ns"] + m["device_latency_ns"]
                                            + e["host_post_ns"])
    assert m["host_bound_per_s"] == pytest.approx(2 * 1e9 / (e["runtime_ns"] + e["host_pre_ns"] + e["host_post_ns"]))


def test_measured_host_steps_are_the_programs_host_steps(workdir: Path) -> None:
    program = Program.from_bytes((workdir / "mnist.enf").read_bytes())
    costs = measure_steps(program, repeats=3)
    assert len(costs) == len(program.steps)
    for step, ns in zip(program.steps, costs):
        assert (ns is None) == (step.kind == "npu")
        assert ns is None or ns > 0


def test_an_unknown_host_profile_is_named(workdir: Path) -> None:
    with pytest.raises(ConfigError, match="unknown host profile 'laptop'; choose one of mlperf, this"):
        estimate_cmd(model=workdir / "mnist.enf", host="laptop")
    with pytest.raises(ConfigError, match="npusim estimate --host this"):
        estimate_cmd(model=workdir / "mnist.enf", host="this")
