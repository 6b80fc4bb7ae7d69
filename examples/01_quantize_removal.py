"""Seed sample 1 (Quantize 연산 최적화): ResNet-50 with ``quantize(..., with_quantize=False)``.

The seed's code with only its imports and its model-building lines changed (see
docs/seed-examples.md for the diff). Run it with ``python examples/01_quantize_removal.py``;
nothing needs to be started by hand. It writes resnet50.onnx and trace_1.json.
"""
import time
import numpy as np
import onnx
import torch

from npusim.optimizer import optimize_model
from npusim.quantizer import quantize, Calibrator, CalibrationMethod
import npusim.runtime.session
from npusim.runtime.profiler import profile
from npusim.services.zoo import resnet50


onnx.save(resnet50(), "resnet50.onnx")  # npusim: replaces torchvision.models.resnet50 + torch.onnx.export

onnx_model = onnx.load_model("resnet50.onnx")
onnx_model = optimize_model(onnx_model)

calibrator = Calibrator(onnx_model, CalibrationMethod.MIN_MAX_ASYM)
calibrator.collect_data([[torch.randn(1, 3, 224, 224).numpy()]])
ranges = calibrator.compute_range()

#graph = quantize(onnx_model, ranges)
graph = quantize(onnx_model, ranges, with_quantize=False)

with open("trace_1.json", "w") as trace:
    with profile(file=trace) as profiler:
        with npusim.runtime.session.create(graph) as session:
            image = torch.randint(256, (1, 3, 224, 224), dtype=torch.uint8)
            with profiler.record("pre"):
                image = image.numpy()
            with profiler.record("inf"):
                outputs = session.run(image)
            with profiler.record("post"):
                prediction = np.argmax(outputs[0].numpy(), axis=1)

# npusim: added to show the result
import json
print("CPU operators:", session.compile_info["cpu_ops"])
print("input:", session.program.inputs[0])
print("output:", session.program.outputs[0])
print("outputs[0]:", outputs[0].dtype, outputs[0].shape, "min", outputs[0].min(), "max", outputs[0].max())
print("prediction:", prediction)
profiler.print_external_operators()
spans = [e for e in json.load(open("trace_1.json"))["traceEvents"] if e["ph"] == "X"]
print(f"trace_1.json: {len(spans)} spans (category, name, duration)")
for e in spans:
    print(f"  {e['cat']:8s} {e['name']:24s} {e['dur']:>9.0f} µs")
# The seed's commented-out default, quantize(onnx_model, ranges), for comparison: a float32 input
# that the host quantises. Five runs of each graph: a worker's first call also pays one-time set-up.
graph_float = quantize(onnx_model, ranges)
for label, g, x in (("uint8 input, with_quantize=False", graph, image),
                    ("float32 input, default", graph_float, torch.randn(1, 3, 224, 224).numpy())):
    with profile() as p, npusim.runtime.session.create(g) as s:
        for _ in range(5):
            s.run(x)
    print(f"{label:34s} CPU operators {s.compile_info['cpu_ops']}, Quantize run by run (µs):",
          [round((r["end"] - r["start"]) / 1e3) for r in p.records() if r["name"] == "cpu.Quantize"])
