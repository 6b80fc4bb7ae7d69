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

from npusim.compiler_svc import CalibrationMethod, Calibrator, compile, optimize_model, quantize
from npusim.compiler_svc.support import NPU_OPS
from npusim.services import zoo
from npusim.services.cost import Gemm, estimate, fold_overhead, mac_cycles, op_work, vector_cycles
from npusim.services.cost._list import RULES
from npusim.services.errors import CompileError
from npusim.services.hw import WARBOY, TimingParams, target, with_overrides

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
    graph, works = _stage(wide=True)  # 0.66 MB of weights, 1.05 MB of live activations at most
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
    # conv's pass reads the lone Relu's output and writes its fused Sigmoid's: the convolution's own
    # output goes straight to the Sigmoid and never lands in memory
    assert by["conv"]["dram_bytes"] == weights["conv"] + 2 * tensor
    # conv2's pass reads the Sigmoid's output and x (its fused Add's other input) and writes the
    # stage's output; the Add's result goes straight to the fused Sigmoid
    assert by["conv2"]["dram_bytes"] == weights["conv2"] + 3 * tensor
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


# -- the rules ----------------------------------------------------------------------------------------
def _graph(nodes: list[onnx.NodeProto], inputs: dict[str, list[int]], outputs: dict[str, list[int]],
           weights: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    inits = [helper.make_tensor(n, TensorProto.INT8, s, np.zeros(math.prod(s), np.int8).tobytes(), raw=True)
             for n, s in weights.items()]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.INT8, s) for n, s in inputs.items()],
                          [helper.make_tensor_value_info(n, TensorProto.INT8, s) for n, s in outputs.items()], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))


def test_a_matrix_product_streams_its_rows_through_the_shared_weights() -> None:
    m = _graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], {"x": [128, 768]}, {"y": [128, 768]},
               {"w": (768, 768)})
    ((_, w),) = op_work(m)
    assert (w.images, w.gemm) == (1, Gemm(128, 1, 768, 768, 1)) and w.macs == 128 * 768 * 768
    assert w.weight_bytes == 768 * 768
    ((_, w8),) = op_work(m, batch=8)  # 8 images of 16 rows each
    assert (w8.images, w8.gemm) == (8, Gemm(16, 1, 768, 768, 1)) and w8.macs == w.macs


def test_per_head_products_are_groups_with_their_own_tiles() -> None:
    m = _graph([helper.make_node("MatMul", ["q", "k"], ["s"], name="scores")],
               {"q": [1, 12, 128, 64], "k": [1, 12, 64, 128]}, {"s": [1, 12, 128, 128]}, {})
    ((_, w),) = op_work(m)
    assert w.gemm == Gemm(128, 1, 128, 64, 12) and w.weight_bytes == 0 and w.macs == 12 * 128 * 128 * 64
    assert w.in_bytes == 2 * 12 * 128 * 64


def test_a_weight_on_the_left_of_a_product_is_a_weight() -> None:
    m = _graph([helper.make_node("MatMul", ["w", "x"], ["y"], name="mm")], {"x": [1, 64, 32]}, {"y": [1, 16, 32]},
               {"w": (16, 64)})
    ((_, w),) = op_work(m)
    assert w.weight_bytes == 16 * 64 and w.in_bytes == 64 * 32


def test_a_gemm_with_transposed_a_reduces_over_its_rows() -> None:
    m = _graph([helper.make_node("Gemm", ["x", "w"], ["y"], transA=1, name="g")], {"x": [256, 4]}, {"y": [4, 10]},
               {"w": (256, 10)})
    ((_, w),) = op_work(m)
    assert w.gemm.depth == 256 and w.macs == 4 * 10 * 256


def test_a_transposed_convolution_counts_every_input_once_per_tap() -> None:
    m = _graph([helper.make_node("ConvTranspose", ["x", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2], name="up")],
               {"x": [1, 8, 16, 16]}, {"y": [1, 4, 33, 33]}, {"w": (8, 4, 3, 3)})
    ((_, w),) = op_work(m)
    assert w.macs == 8 * 16 * 16 * 4 * 9  # exact, though the array sees an average depth


def test_a_convolution_counts_its_bias_among_its_weights() -> None:
    m = _graph([helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[1, 1], name="c")],
               {"x": [1, 8, 4, 32]}, {"y": [1, 16, 4, 32]}, {"w": (16, 8, 1, 1), "b": (16,)})
    ((_, w),) = op_work(m)
    assert w.weight_bytes == 16 * 8 + 16


def test_an_empty_tensor_is_refused_with_a_reason() -> None:
    m = _graph([helper.make_node("Relu", ["x"], ["y"], name="r")], {"x": [1, 0, 4, 4]}, {"y": [1, 0, 4, 4]}, {})
    with pytest.raises(CompileError, match="makes an empty tensor"):
        op_work(m)


def test_every_operator_the_chip_runs_has_a_cost_rule() -> None:
    missing = set(NPU_OPS) - set(RULES) - {"BatchNormalization"}  # runs only folded into its Conv
    assert not missing


@pytest.mark.parametrize("groups, expect", [(129, (65, 64)), (200, (100, 100)), (256, (128, 128))])
def test_a_split_convolution_runs_its_pieces_one_after_another(groups: int, expect: tuple[int, int]) -> None:
    whole = mac_cycles(Gemm(28, 28, 1, 9, groups), 64, WARBOY, pieces=2)
    parts = [mac_cycles(Gemm(28, 28, 1, 9, g), 64, WARBOY) for g in expect]
    assert whole.cycles == sum(p.cycles for p in parts)


def test_a_vector_pass_counts_its_taps_and_reductions() -> None:
    m = _graph([helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1],
                                 name="pool"),
                helper.make_node("Softmax", ["p"], ["y"], axis=1, name="sm")],
               {"x": [1, 8, 4, 32]}, {"y": [1, 8, 4, 32]}, {})
    (_, pool), (_, sm) = op_work(m)
    assert pool.vector_ops == 8 * 4 * 32 * 9 and sm.vector_ops == 3 * 8 * 4 * 32


# -- fusion, sub-batches, plans ----------------------------------------------------------------------
def test_a_residual_add_rides_on_the_last_convolution_whatever_its_input_order() -> None:
    def block(order: tuple[str, str]) -> onnx.ModelProto:
        conv = [helper.make_node("Conv", [i, f"w{k}"], [o], kernel_shape=[1, 1], name=f"conv{k}")
                for k, (i, o) in enumerate((("x", "a"), ("a", "b"), ("b", "c")))]
        add = helper.make_node("Add", list(order), ["y"], name="add")
        return _graph([*conv, add], {"x": [1, 8, 4, 32]}, {"y": [1, 8, 4, 32]}, {f"w{k}": (8, 8, 1, 1) for k in range(3)})

    for order in (("a", "c"), ("c", "a")):
        ops, _ = estimate(block(order), target("warboy"), params=PEAK)
        assert {o["name"]: o.get("fused_into") for o in ops}["add"] == "conv2", order


def test_an_element_wise_operator_after_another_pass_runs_on_its_own() -> None:
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1], name="conv"),
             helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[1, 1], name="pool"),
             helper.make_node("Add", ["c", "p"], ["y"], name="add")]
    m = _graph(nodes, {"x": [1, 8, 4, 32]}, {"y": [1, 8, 4, 32]}, {"w": (8, 8, 1, 1)})
    ops, _ = estimate(m, target("warboy"), params=PEAK)
    add = next(o for o in ops if o["name"] == "add")
    assert add["bound"] != "fused" and add["cycles"] > 0  # the pool ran in between


def test_weights_stream_once_per_sub_batch_when_a_batch_does_not_fit() -> None:
    q = _quantised(_conv_relu_add(wide=True, size=8))
    chip = with_overrides(WARBOY, ["sram_per_slice=16384"])  # 1 MiB: the weights cannot stay
    program = compile(q, target_npu="warboy", batch_size=4)
    (stage,) = program.stages
    from npusim.services.cost import recost_stage
    ops, est = recost_stage(stage, "warboy", chip, PEAK, batch=4)  # type: ignore[arg-type]
    assert not est["weights_resident"] and 1 <= est["sub_batch"] < 4
    runs = -(-4 // est["sub_batch"])
    conv = next(o for o in ops if o["name"] == "conv")
    assert conv["dram_bytes"] >= runs * conv["weight_bytes"]
    assert est["compute_cycles"] == pytest.approx(4 * recost_stage(stage, "warboy", chip, PEAK, batch=4)[1]
                                                  ["compute_cycles"] / 4)


def test_a_resident_plan_needs_room_for_one_images_activations() -> None:
    graph, works = _stage(wide=True)  # 0.66 MB of weights; one image's live set peaks at 1.05 MB
    chip = target("warboy", with_overrides(WARBOY, ["sram_per_slice=24576"]))  # type: ignore[arg-type]
    _, est = estimate(graph, chip, params=PEAK, works=works)  # 1.5 MiB: weights fit, but not beside 1.05 MB
    assert est["peak_activation_bytes"] == 4096 * 8 * 32 + 16 * 8 * 32  # the Sigmoid's output and x
    assert not est["weights_resident"]


def test_the_stages_of_a_program_share_the_sram_for_resident_weights() -> None:
    graph, works = _stage()
    own = sum(w.weight_bytes for _, w in works)
    chip = target("warboy", with_overrides(WARBOY, ["sram_per_slice=2048"]))  # type: ignore[arg-type]
    assert estimate(graph, chip, params=PEAK, works=works)[1]["weights_resident"]
    together = estimate(graph, chip, params=PEAK, works=works, program_weights=own + chip.sram_bytes)[1]
    assert not together["weights_resident"]
