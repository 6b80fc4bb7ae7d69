"""The cost model (services/cost): the slice array, the SRAM plans, fusion, and the roofline.

Cycle counts here are exact: they follow from the spec sheet's array (32 lanes × 4 rows a
slice, 64 slices a PE) and SCALE-Sim's fold timing, worked out by hand in each test.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compiler_svc import CalibrationMethod, Calibrator, compile, optimize_model, quantize
from services import zoo
from services.cost import Gemm, estimate, fold_overhead, mac_cycles, op_work, vector_cycles
from services.hw import WARBOY, TimingParams, target, with_overrides

PEAK = TimingParams(stream_efficiency=1.0, runtime_overhead_ns=0.0)
RATE = WARBOY.dram_bytes_per_s / WARBOY.clock_hz  # DRAM bytes per cycle


# -- the slice array ---------------------------------------------------------------------------------
def test_a_fold_fills_and_drains_the_32_by_4_array_as_scalesim_says() -> None:
    assert fold_overhead(WARBOY) == 2 * 4 + 32 - 2


def test_a_layer_is_dealt_out_to_the_slices_in_folds() -> None:
    # 3x3 conv 64→64 on 56x56, one PE: 2 column tiles of 32 channels, each shared by 32 slices
    # (98 pixels each); 576 reduction terms are 144 folds of 4, one after another.
    cost = mac_cycles(Gemm(56, 56, 64, 576), 64, WARBOY)
    assert (cost.mapping, cost.split, cost.stream, cost.folds) == ("channels", 32, 98, 144)
    assert cost.cycles == 144 * (98 + 38)
    # the fused PE halves each slice's stream but not the folds' fill and drain
    fused = mac_cycles(Gemm(56, 56, 64, 576), 128, WARBOY)
    assert fused.cycles == 144 * (49 + 38)
    assert 1 < cost.cycles / fused.cycles < 2


def test_the_stream_rate_stretches_the_stream_not_the_fill() -> None:
    full = mac_cycles(Gemm(56, 56, 64, 576), 64, WARBOY, efficiency=1.0)
    half = mac_cycles(Gemm(56, 56, 64, 576), 64, WARBOY, efficiency=0.5)
    assert half.cycles == 144 * (98 / 0.5 + 38) and half.cycles < 2 * full.cycles


def test_a_depthwise_conv_takes_its_lanes_along_the_lowered_row() -> None:
    # 256 channels of one 3x3 filter each on 28x28: by channel it would fill 1 of 32 columns; along
    # the row it fills 28 of 32. 256 groups run as two convolutions of 128 groups.
    one = mac_cycles(Gemm(28, 28, 1, 9, 128), 64, WARBOY)
    assert one.mapping == "width" and one.cycles == 2 * 3 * (28 + 38)  # 2 channels a slice, 3 folds, 28 rows
    split = mac_cycles(Gemm(28, 28, 1, 9, 256), 64, WARBOY, pieces=2)
    assert split.cycles == 2 * one.cycles


def test_a_vector_pass_streams_every_lane_once() -> None:
    assert vector_cycles(64 * 32 * 10, 64, WARBOY) == 10 + 38
    assert vector_cycles(0, 64, WARBOY) == 0


# -- whole stages ------------------------------------------------------------------------------------
def _quantised(model: onnx.ModelProto) -> bytes:
    m = optimize_model(model)
    cal = Calibrator(m, CalibrationMethod.MIN_MAX_ASYM)
    shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    cal.collect_data([[rng.standard_normal(shape).astype(np.float32)]], progress=False)
    return quantize(m, cal.compute_range())


def _conv_relu_add(cin: int = 16, size: int = 32, wide: bool = False) -> onnx.ModelProto:
    """Relu(x) → Conv → Sigmoid → Conv → Add(x) → Sigmoid. The quantiser folds a Relu into the
    Conv before it, so the first Relu, which follows no Conv, stays a node of its own."""
    rng = np.random.default_rng(1)
    cout = 4096 if wide else cin
    w = helper.make_tensor("w", TensorProto.FLOAT, (cout, cin, 3, 3),
                           rng.normal(0, 0.1, (cout, cin, 3, 3)).astype(np.float32).ravel())
    w2 = helper.make_tensor("w2", TensorProto.FLOAT, (cin, cout, 1, 1),
                            rng.normal(0, 0.1, (cin, cout, 1, 1)).astype(np.float32).ravel())
    nodes = [helper.make_node("Relu", ["x"], ["rx"], name="lone_relu"),
             helper.make_node("Conv", ["rx", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Sigmoid", ["c"], ["r"], name="sigmoid"),
             helper.make_node("Conv", ["r", "w2"], ["c2"], name="conv2"),
             helper.make_node("Add", ["c2", "x"], ["s"], name="add"),
             helper.make_node("Sigmoid", ["s"], ["y"], name="sigmoid2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cin, size, size])], [w, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@functools.lru_cache(maxsize=None)
def _stage(wide: bool = False, target_name: str = "warboy") -> tuple[onnx.ModelProto, list]:
    program = compile(_quantised(_conv_relu_add(size=8 if wide else 32, wide=wide)), target_npu=target_name)
    (stage,) = program.stages
    return onnx.load_from_string(stage.graph), op_work(onnx.load_from_string(stage.graph))


def test_element_wise_operators_ride_on_the_convolution_before_them() -> None:
    graph, works = _stage()
    ops, _ = estimate(graph, target("warboy"), params=PEAK, works=works)
    by = {o["name"]: o for o in ops}
    assert by["sigmoid"]["bound"] == "fused" and by["sigmoid"]["fused_into"] == "conv"
    assert by["sigmoid"]["cycles"] == 0
    assert by["add"]["fused_into"] == "conv2" and by["sigmoid2"]["fused_into"] == "conv2"
    assert by["lone_relu"]["bound"] != "fused" and by["lone_relu"]["cycles"] > 0  # made by no MAC operator
    assert "fused into conv2's vector stage" == by["sigmoid2"]["note"]


def test_weights_stay_on_chip_when_they_fit_and_stream_when_they_do_not() -> None:
    graph, works = _stage()
    _, small = estimate(graph, target("warboy"), params=PEAK, works=works)
    assert small["weights_resident"] and small["dram_bytes"] == 0 and small["fits_sram"]
    tiny = target("warboy", with_overrides(WARBOY, ["sram_per_slice=256"]))  # type: ignore[arg-type]
    ops, streamed = estimate(graph, tiny, params=PEAK, works=works)
    assert not streamed["weights_resident"]
    weights = sum(w.weight_bytes for _, w in works)
    assert streamed["dram_bytes"] >= weights  # every weight read once a job at least
    conv = next(o for o in ops if o["name"] == "conv")
    assert conv["dram_bytes"] >= conv["weight_bytes"] > 0


def test_a_stage_is_priced_on_its_faster_sram_plan() -> None:
    graph, works = _stage(wide=True)  # 0.66 MB of weights
    total = sum(w.weight_bytes for _, w in works)
    for sram, resident in ((65536, True), (16384, False)):  # 4 MiB: they stay; 1 MiB: they cannot
        chip = target("warboy", with_overrides(WARBOY, [f"sram_per_slice={sram}"]))  # type: ignore[arg-type]
        _, est = estimate(graph, chip, params=PEAK, works=works)
        assert est["weights_resident"] is resident, sram
        assert est["dram_bytes"] == 0 if resident else est["dram_bytes"] >= total


def test_activations_that_do_not_fit_stream_through_dram() -> None:
    graph, works = _stage()
    chip = target("warboy", with_overrides(WARBOY, ["sram_per_slice=64"]))  # type: ignore[arg-type]
    ops, est = estimate(graph, chip, params=PEAK, works=works)
    assert not est["fits_sram"] and est["spilled_ops"] > 0
    conv = next(o for o in ops if o["name"] == "conv")
    assert conv["spills"] and conv["dram_bytes"] >= 2 * 16 * 32 * 32  # its input and output, through DRAM
    assert conv["cycles"] == max(conv["compute_cycles"], conv["memory_cycles"])


def test_a_tensor_off_chip_is_written_by_its_maker_and_read_back_by_its_readers() -> None:
    graph, works = _stage()  # 16 channels of 32×32 int8: 16 KiB a tensor, 32-wide rows need no padding
    chip = target("warboy", with_overrides(WARBOY, ["sram_per_slice=64"]))  # type: ignore[arg-type]
    ops, _ = estimate(graph, chip, params=PEAK, works=works)
    by = {o["name"]: o for o in ops}
    tensor = 16 * 32 * 32
    weights = {o["name"]: o["weight_bytes"] for o in ops}
    # conv reads the lone Relu's output, writes its own, and its fused Sigmoid writes one more
    assert by["conv"]["dram_bytes"] == weights["conv"] + 3 * tensor
    # conv2 reads the Sigmoid's output and x (the Add's other input), writes its own, and the
    # fused Add and Sigmoid write theirs (x was already read by the lone Relu from DRAM as well)
    assert by["conv2"]["dram_bytes"] == weights["conv2"] + 5 * tensor
    assert by["sigmoid"]["dram_bytes"] == 0 and by["add"]["dram_bytes"] == 0


def test_the_sram_holds_rows_padded_to_the_lane_width() -> None:
    narrow = compile(_quantised(_conv_relu_add(size=8)), target_npu="warboy").stages[0].estimate
    wide = compile(_quantised(_conv_relu_add(size=32)), target_npu="warboy").stages[0].estimate
    assert narrow["peak_activation_bytes"] * 4 == wide["peak_activation_bytes"] * 1  # 8 wide takes 32


def test_a_batch_repeats_one_images_schedule() -> None:
    q = _quantised(_conv_relu_add())
    one = compile(q, target_npu="warboy", batch_size=1).stages[0].estimate
    eight = compile(q, target_npu="warboy", batch_size=8).stages[0].estimate
    assert eight["compute_cycles"] == pytest.approx(8 * one["compute_cycles"])
    assert eight["sub_batch"] == 8 and eight["weights_resident"]


def test_sharing_dram_with_the_other_pe_slows_only_what_streams() -> None:
    graph, works = _stage()
    _, on_chip = estimate(graph, target("warboy"), params=PEAK, works=works)
    assert on_chip["npu_ns_shared"] == on_chip["npu_ns"]
    chip = target("warboy", with_overrides(WARBOY, ["sram_per_slice=64"]))  # type: ignore[arg-type]
    _, spilled = estimate(graph, chip, params=PEAK, works=works)
    assert spilled["npu_ns_shared"] > spilled["npu_ns"]


# -- the roofline, on every fast zoo model -----------------------------------------------------------
@pytest.mark.parametrize("name", ["small_cnn", "mnist", "mobilenet_v2", "mobilenet_v1", "yolov5n_like",
                                  "ops_gallery", "denoiser"])
def test_no_operator_is_faster_than_its_compute_or_dram_bound(name: str) -> None:
    m = optimize_model(zoo.build(name))
    cal = Calibrator(m, CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data(zoo.sample_inputs(m, 1), progress=False)
    q = quantize(m, cal.compute_range())
    for tgt in ("warboy", "warboy-2pe"):
        t = target(tgt)
        for stage in compile(q, target_npu=tgt).stages:
            for o in stage.ops:
                if not o.get("cycles"):
                    continue
                bound = max(o.get("macs", 0) / t.macs_per_cycle, o.get("dram_bytes", 0) / RATE)
                assert o["cycles"] >= bound * (1 - 1e-12), (tgt, o)
                if o.get("macs"):
                    assert 0 < o["array_fill"] <= 1


def test_the_stage_totals_are_the_sum_of_its_operators() -> None:
    graph, works = _stage()
    ops, est = estimate(graph, target("warboy-2pe"), params=PEAK, works=works)
    assert est["npu_cycles"] == pytest.approx(sum(o["cycles"] for o in ops))
    assert est["npu_ns"] == pytest.approx(est["npu_cycles"] / WARBOY.clock_hz * 1e9)
    assert est["macs"] == sum(o["macs"] for o in ops) and est["ideal_ns"] <= est["npu_ns"]
    assert math.isclose(est["job_overhead_ns"], WARBOY.pcie_latency_ns)
