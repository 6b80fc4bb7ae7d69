"""``npusim advise``: the seed's own claims on zoo models, the ranking and JSON shape, the report,
and the errors a user can cause."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from npusim.client.hostcost import measure_steps
from npusim.compiler_svc.advise import CHECKS, AdviseConfig, advise
from npusim.compiler_svc.advise.report import advise_page
from npusim.compiler_svc.estimate import compile_programs
from npusim.services.errors import ConfigError, InvalidInput
from npusim.services.zoo import build, denoiser
from tests.htmlcheck import check_report

pytestmark = pytest.mark.timeout(300)

_candidate = Path(sys.executable).with_name("npusim")
NPUSIM = str(_candidate) if _candidate.exists() else (shutil.which("npusim") or "npusim")


def _advise(name: str | bytes, only: tuple[str, ...] = (), **cfg: Any) -> dict[str, Any]:
    data = build(name).SerializeToString() if isinstance(name, str) else name
    return advise(AdviseConfig(requests=300, **cfg), data, step_costs=measure_steps, only=only)


def _knobs(r: dict[str, Any]) -> list[str]:
    return [x["knob"] for x in r["recommendations"]]


@pytest.fixture(scope="module")
def yolox() -> dict[str, Any]:
    return _advise("yolox_like")


def test_a_yolox_l_sized_detector_drops_its_float_quantize_first(yolox: dict[str, Any]) -> None:
    top = yolox["recommendations"][0]
    assert top["knob"] == "with_quantize"
    ops = top["measured"]["host_ops_us"]
    assert "Quantize" in ops["before"] and "Quantize" not in ops["after"] and "QuantizeUint8" in ops["after"]
    assert ops["after"]["QuantizeUint8"] < ops["before"]["Quantize"]
    assert top["measured"]["host_us_after"] < top["measured"]["host_us_before"]
    assert top["predicted"]["latency_us"] < top["predicted"]["before"]["latency_us"]
    assert top["accuracy"]["after"]["value"] == pytest.approx(top["accuracy"]["before"]["value"], abs=0.5)


def test_every_check_answers_once_and_the_ranking_is_by_gain(yolox: dict[str, Any]) -> None:
    answered = _knobs(yolox) + [c["knob"] for c in yolox["checked"]]
    assert len(answered) == len(CHECKS)
    gains = [x["predicted"]["gain_pct"] for x in yolox["recommendations"]]
    assert gains == sorted(gains, reverse=True) and all(g > 0 for g in gains)
    for rec in yolox["recommendations"]:
        assert {"knob", "change", "code", "predicted", "measured", "accuracy"} <= set(rec)
        assert {"latency_us", "throughput_per_s"} <= set(rec["predicted"])
    assert all(c["reason"] for c in yolox["checked"])
    json.dumps(yolox)


def test_the_report_shows_the_ranked_table_and_a_plot_per_change(yolox: dict[str, Any]) -> None:
    p = check_report(advise_page(yolox))
    assert len(p.tables[0]) == 1 + len(yolox["recommendations"])
    assert len(p.images) == len(yolox["recommendations"])


def test_an_nhwc_model_is_told_to_permute_its_input() -> None:
    r = _advise("yolox_like_nhwc", only=("layout",))
    (rec,) = r["recommendations"]
    assert rec["knob"] == "permute_input" and "[0, 3, 1, 2]" in rec["code"]
    ops = rec["measured"]["host_ops_us"]
    assert "Lower" in ops["before"] and "Lower" not in ops["after"]


def test_mnist_is_told_to_batch_for_throughput_but_not_for_latency() -> None:
    r = _advise("mnist", only=("batch_size",), target="throughput")
    (rec,) = r["recommendations"]
    assert rec["knob"] == "batch_size" and rec["predicted"]["gain_pct"] > 50
    assert rec["predicted"]["latency_us"] >= rec["predicted"]["before"]["latency_us"]
    r = _advise("mnist", only=("batch_size",), target="latency")
    assert r["recommendations"] == [] and "latency" in r["checked"][0]["reason"]


@pytest.mark.parametrize(("target", "devices", "advice"), [
    ("latency", "warboy(1)*2", "warboy(2)*1"), ("throughput", "warboy(2)*1", "warboy(1)*2")])
def test_resnet50_fused_for_latency_single_pes_for_throughput(target: str, devices: str, advice: str) -> None:
    r = _advise("resnet50", only=("pe_mode",), target=target, devices=devices)
    (rec,) = r["recommendations"]
    assert advice in rec["change"] and rec["predicted"]["gain_pct"] > 3
    assert "2×" in rec["why"]


def test_a_large_image_to_image_model_is_told_its_patch_size() -> None:
    r = _advise(denoiser(height=768, width=768).SerializeToString(), only=("patch_size",), target="throughput")
    (rec,) = r["recommendations"]
    sweep = rec["details"]["sweep"]
    assert f"{rec['details']['sweep'][0]['halo']} px" in rec["change"]
    assert max(sweep, key=lambda p: p["throughput_per_s"])["patch"] == int(rec["change"].split("×")[0].split()[-1])
    small = _advise("mnist", only=("patch_size",))
    assert small["recommendations"] == [] and "small enough" in small["checked"][0]["reason"]


def test_an_image_output_comes_back_as_pixels() -> None:
    r = _advise(denoiser(height=64, width=64).SerializeToString(), only=("normalized_pixel_outputs",))
    (rec,) = r["recommendations"]
    ops = rec["measured"]["host_ops_us"]
    assert "Dequantize" in ops["before"] and "Dequantize" not in ops["after"]
    assert rec["accuracy"]["after"]["metric"].startswith("SQNR")


def test_user_errors_say_what_to_do() -> None:
    mnist = build("mnist").SerializeToString()
    with pytest.raises(ConfigError, match="latency or throughput"):
        advise(AdviseConfig(target="fast"), mnist, step_costs=measure_steps)
    with pytest.raises(ConfigError, match="choose from"):
        advise(AdviseConfig(), mnist, step_costs=measure_steps, only=("turbo",))
    (program,), _ = compile_programs(mnist, ["warboy-2pe"], [1])
    with pytest.raises(InvalidInput, match="float ONNX model"):
        advise(AdviseConfig(), program.to_bytes(), step_costs=measure_steps)


def test_the_console_script_prints_json_and_a_message_on_error() -> None:
    ok = subprocess.run([NPUSIM, "advise", "zoo:mnist", "--check", "batch_size", "--target", "throughput", "-n", "200",
                         "--json"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    r = json.loads(ok.stdout)
    assert r["target"] == "throughput" and _knobs(r) == ["batch_size"]
    bad = subprocess.run([NPUSIM, "advise", "zoo:mnist", "--target", "fast"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode != 0 and "latency or throughput" in bad.stderr and "Traceback" not in bad.stderr
