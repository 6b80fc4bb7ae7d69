"""Every network the zoo builds runs on the NPU in one piece: one NPU stage, host operators only
at its edges (Quantize/Lower in, Unlower/Slice/Dequantize out). MobileNets' depthwise convs of
more than 128 channels run split on the NPU, and YOLO's channel Concats are NPU memory
operations (docs/partitioning.md); none of these models has an operator the chip lacks.
"""

from __future__ import annotations

import pytest

from npusim.compiler_svc import CalibrationMethod, Calibrator, compile, optimize_model, quantize
from npusim.services import zoo
from npusim.services.program import NpuStep, OpStep

pytestmark = pytest.mark.timeout(300)

EDGE_IN = {"Quantize", "QuantizeUint8", "Lower", "Pad"}
EDGE_OUT = {"Unlower", "Slice", "Dequantize"}


@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_a_zoo_network_compiles_to_one_npu_stage_with_host_operators_only_at_its_edges(name: str) -> None:
    m = optimize_model(zoo.build(name))
    cal = Calibrator(m, CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data(zoo.sample_inputs(m, 1), progress=False)
    program = compile(quantize(m, cal.compute_range()), target_npu="warboy-2pe")
    assert len(program.stages) == 1, [s.kind for s in program.steps]
    kinds = [s.kind for s in program.steps]
    assert "cpu" not in kinds, [o for s in program.steps if s.kind == "cpu" for o in s.ops]
    npu = kinds.index("npu")
    assert all(isinstance(s, OpStep) and s.op in EDGE_IN for s in program.steps[:npu])
    assert all(isinstance(s, OpStep) and s.op in EDGE_OUT for s in program.steps[npu + 1:])
    assert isinstance(program.steps[npu], NpuStep)
    if name in ("mobilenet_v1", "mobilenet_v2", "ssd_mobilenet_v1"):
        assert any(o.get("pieces", 1) > 1 for o in program.stages[0].ops), "a depthwise conv beyond 128 groups"
    if name.startswith(("yolov5", "yolov8", "yolox")):
        assert any(o["op_type"] == "Concat" for o in program.stages[0].ops)
