"""Seed sample 2 (Dequantize 연산 최적화): ResNet-50 with ``normalized_pixel_outputs=[0]``.

The seed's code with only its imports and its model-building lines changed (see
docs/seed-examples.md for the diff). Run it with ``python examples/02_dequantize_removal.py``;
nothing needs to be started by hand. It writes resnet50.onnx and trace_2.json.
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
graph = quantize(onnx_model, ranges, with_quantize=False, normalized_pixel_outputs=[0])


with open("trace_2.json", "w") as trace:
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
spans = [e for e in json.load(open("trace_2.json"))["traceEvents"] if e["ph"] == "X"]
print(f"trace_2.json: {len(spans)} spans (category, name, duration)")
for e in spans:
    print(f"  {e['cat']:8s} {e['name']:24s} {e['dur']:>9.0f} µs")
# The same graph without normalized_pixel_outputs, for comparison: float32 logits, Dequantize on the
# host. Five runs of each graph: a worker's first call also pays one-time set-up.
graph_float_out = quantize(onnx_model, ranges, with_quantize=False)
results = {}
for label, g in (("uint8 output, normalized_pixel_outputs=[0]", graph),
                 ("float32 output, without it", graph_float_out)):
    with profile() as p, npusim.runtime.session.create(g) as s:
        for _ in range(5):
            results[label] = s.run(image)[0].numpy()
    print(f"{label:42s} CPU operators {s.compile_info['cpu_ops']}, Dequantize run by run (µs):",
          [round((r["end"] - r["start"]) / 1e3) for r in p.records() if r["name"] == "cpu.Dequantize"])
u8, f32 = results.values()
print("uint8 output: a logit read as a pixel in [0, 1] and scaled to 0..255 —",
      f"{np.sum(u8[f32 >= 1] == 255)}/{np.sum(f32 >= 1)} logits ≥ 1 give 255,",
      f"{np.sum(u8[f32 < 0] == 0)}/{np.sum(f32 < 0)} negative logits give 0;",
      "top-1 uint8", np.argmax(u8, axis=1), "float32", np.argmax(f32, axis=1))
