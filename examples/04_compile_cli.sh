#!/usr/bin/env bash
# Seed sample 4 (텐서의 크기가 작은 모델의 최적화 / Single PE vs Fusion PE): the compiler from the shell.
#
# The seed's three command lines with `furiosa` replaced by `npusim` (see docs/seed-examples.md).
# They compile quantised graphs (.dfg in the SDK); npusim's quantize() writes an int8 ONNX graph,
# which the model-building lines below save under the seed's file names.
# Run it with `bash examples/04_compile_cli.sh` (python and npusim from the venv on PATH).
set -euo pipefail

# npusim: model-building lines — mnist.dfg and resnet50.dfg, quantised graphs of the built-in models
python - <<'PY'
import numpy as np
from npusim.optimizer import optimize_model
from npusim.quantizer import quantize, Calibrator, CalibrationMethod
from npusim.services.zoo import mnist, resnet50

for name, build, shape in (("mnist", mnist, (1, 1, 28, 28)), ("resnet50", resnet50, (1, 3, 224, 224))):
    model = optimize_model(build())
    calibrator = Calibrator(model, CalibrationMethod.MIN_MAX_ASYM)
    calibrator.collect_data([[np.random.default_rng(0).standard_normal(shape).astype(np.float32)]])
    with open(f"{name}.dfg", "wb") as f:
        f.write(quantize(model, calibrator.compute_range()))
PY

npusim compile --batch-size 32 --target-npu warboy mnist.dfg -o mnist.enf

npusim compile --target-npu warboy resnet50.dfg -o resnet50.enf
npusim compile --target-npu warboy-2pe resnet50.dfg -o resnet50_2pe.enf

# npusim: added to show the result — mnist at batch 1, to compare the time per sample with batch 32
npusim compile --target-npu warboy mnist.dfg -o mnist_b1.enf
ls -l mnist.enf mnist_b1.enf resnet50.enf resnet50_2pe.enf
