"""Seed sample 3 (입력 텐서의 축 순서 변경): an NHWC model compiled with ``permute_input``.

The seed's code with only its imports and its model-building line changed (see
docs/seed-examples.md for the diff). Run it with ``python examples/03_permute_input.py``;
nothing needs to be started by hand. It writes model_nhwc.onnx and trace_lower.json.
"""
import time

import numpy as np
import onnx
import torch

from npusim.optimizer import optimize_model
from npusim.quantizer import quantize, Calibrator, CalibrationMethod
import npusim.runtime.session
from npusim.runtime.profiler import profile
from npusim.services.zoo import yolox_like


onnx.save(yolox_like(height=512, width=512, nhwc=True), "model_nhwc.onnx")  # npusim: the seed's model file

onnx_model = onnx.load_model("model_nhwc.onnx")
onnx_model = optimize_model(onnx_model)

calibrator = Calibrator(onnx_model, CalibrationMethod.MIN_MAX_ASYM)
calibrator.collect_data([[torch.randn(1, 512, 512, 3).numpy()]])
ranges = calibrator.compute_range()

graph = quantize(onnx_model, ranges, with_quantize=False)

compiler_config = { "permute_input": [[0, 3, 1, 2]] }

with open("trace_lower.json", "w") as trace:
    with profile(file=trace) as profiler:
        with npusim.runtime.session.create(graph, compiler_config=compiler_config) as session:
            image = torch.randint(256, (1, 3, 512, 512), dtype=torch.uint8)
            with profiler.record("pre"):
                image = image.numpy()
            with profiler.record("inf"):
                outputs = session.run(image)
            with profiler.record("post"):
                prediction = outputs[0].numpy()

# npusim: added to show the result
import collections
import json
print("model_nhwc.onnx input:", [d.dim_value for d in onnx_model.graph.input[0].type.tensor_type.shape.dim])
print("with permute_input:    input", session.program.inputs[0].dtype, list(session.program.inputs[0].shape),
      session.program.inputs[0].axes, "| CPU operators:", dict(collections.Counter(session.compile_info["cpu_ops"])))
profiler.print_external_operators()
spans = [e for e in json.load(open("trace_lower.json"))["traceEvents"] if e["ph"] == "X"]
print(f"trace_lower.json: {len(spans)} spans, {sum(e['name'] == 'npu.job' for e in spans)} NPU jobs")
# the same graph without permute_input: it takes NHWC and the host lowers it (4 runs of the same image)
with profile() as profiler_nhwc:
    with npusim.runtime.session.create(graph) as session_nhwc:
        image_nhwc = np.ascontiguousarray(image.transpose(0, 2, 3, 1))
        outputs_nhwc = [session_nhwc.run(image_nhwc) for _ in range(4)][0]
print("without permute_input: input", session_nhwc.program.inputs[0].dtype, list(session_nhwc.program.inputs[0].shape),
      session_nhwc.program.inputs[0].axes, "| CPU operators:", dict(collections.Counter(session_nhwc.compile_info["cpu_ops"])))
profiler_nhwc.print_external_operators()
print("Lower, run by run (µs):", [round((r["end"] - r["start"]) / 1e3) for r in profiler_nhwc.records()
                                  if r["name"] == "cpu.Lower"])
print("same outputs for the same image:", all(np.array_equal(a, b) for a, b in zip(outputs, outputs_nhwc)))
