"""int8 quantisation: per-channel symmetric weights, per-tensor int8 activations, as QDQ.

onnxruntime's QDQ quantiser does the graph surgery from our calibrated ranges; the result
is an ordinary ONNX model in which every quantised tensor passes through a
QuantizeLinear/DequantizeLinear pair, and which onnxruntime runs with int8 kernels.
Operators the chip does not run (:mod:`npusim.compiler_svc.support`) stay in float: they will be
CPU operators of the program.

Two options change the program's boundaries:

- ``with_quantize=False`` (or ``ModelEditor.convert_input_type(name, UINT8)``) makes an input
  uint8. Its calibrated range is spread over 0..255 with the int8 scale, so ``u8 = i8 + 128``
  exactly and the host's Quantize becomes a shift, not a float conversion.
- ``normalized_pixel_outputs=[i]`` (or ``convert_output_type(name, UINT8)``) makes output
  ``i`` uint8 over [0, 1] — the NPU requantises to uint8 and no Dequantize runs on the host.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import QuantType
from onnxruntime.quantization.calibrate import CalibrationMethod as OrtMethod
from onnxruntime.quantization.calibrate import TensorData, TensorsData
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

from npusim.compiler_svc.editor import _KEY as _EDITOR_KEY
from npusim.compiler_svc.editor import edits_of, get_output_names, get_pure_input_names
from npusim.compiler_svc.graph import toposort
from npusim.compiler_svc.support import NPU_OPS, GraphInfo, npu_reason
from npusim.services.errors import CalibrationError, InvalidModel

__all__ = ["quantize", "is_quantized"]

_QDQ = {"QuantizeLinear", "DequantizeLinear"}


QUANTIZED_KEY = "npusim.quantized"


def is_quantized(model: onnx.ModelProto) -> bool:
    """QDQ nodes, or our marker (a model none of whose operators runs on the NPU has no QDQ)."""
    return any(p.key == QUANTIZED_KEY for p in model.metadata_props) or any(
        n.op_type in _QDQ or n.op_type.startswith("QLinear") for n in model.graph.node)


def quantize(model: onnx.ModelProto | bytes, ranges: Mapping[str, Sequence[float]], *, with_quantize: bool = True,
             normalized_pixel_outputs: Sequence[int] | None = None) -> bytes:
    """Quantise ``model`` with ``ranges`` (``{tensor: (min, max)}`` from a Calibrator) to int8.

    Returns the serialised quantised graph, which ``compile()`` and ``session.create`` accept.
    """
    if isinstance(model, (bytes, bytearray)):
        model = onnx.load_from_string(bytes(model))
    if is_quantized(model):
        raise InvalidModel("the model is already quantised")
    edits = edits_of(model)
    uint8_inputs = set(get_pure_input_names(model)) if not with_quantize else set(edits["inputs"])
    outputs = get_output_names(model)
    out_types: dict[str, dict[str, object]] = dict(edits["outputs"])  # type: ignore[arg-type]
    for i in normalized_pixel_outputs or []:
        if not isinstance(i, int) or not 0 <= i < len(outputs):
            raise InvalidModel(f"normalized_pixel_outputs: {i!r} is not an output index (the model has "
                               f"{len(outputs)} outputs: {outputs})")
        out_types[outputs[i]] = {"type": "uint8", "range": [0.0, 1.0]}

    m = onnx.shape_inference.infer_shapes(model)
    data = _tensor_ranges(m, ranges)
    declared = _detach_outputs(m)
    info = GraphInfo.of(m)
    excluded = [n.name for n in m.graph.node if npu_reason(n, info) is not None]
    if any(not n.name for n in m.graph.node):
        raise InvalidModel("every node needs a name: run optimize_model() before calibrating and quantising")
    # onnxruntime deletes Relu/Clip under asymmetric activations, trusting each range to start at 0;
    # symmetric ranges (the _SYM methods) clip nothing, so it must keep them.
    symmetric = all(np.isclose(-float(d.range_value[0]), float(d.range_value[1])) for d in data.values())
    quantizer = QDQQuantizer(
        m, True, False, QuantType.QInt8, QuantType.QInt8, TensorsData(OrtMethod.MinMax, data),
        [], excluded, sorted(NPU_OPS - {"BatchNormalization"}),
        {"ActivationSymmetric": symmetric, "WeightSymmetric": True},
    )
    q = quantizer.quantize_model()
    for name in uint8_inputs:
        _uint8_input(q, name)
    for name, spec in out_types.items():
        _typed_output(q, name, str(spec["type"]), spec.get("range"))  # type: ignore[arg-type]
    _restore_outputs(q, declared)
    toposort(q.graph)
    q.producer_name = "npusim.quantizer"
    keep = [(p.key, p.value) for p in q.metadata_props if p.key not in (_EDITOR_KEY, QUANTIZED_KEY)]
    del q.metadata_props[:]
    for key, value in keep + [(QUANTIZED_KEY, "1")]:
        q.metadata_props.add(key=key, value=value)
    try:
        onnx.checker.check_model(q, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise InvalidModel(f"the quantised model is not valid ONNX: {e}. Run optimize_model() on the float model "
                           "first; if it was, the float model is malformed there") from None
    return q.SerializeToString()


def _detach_outputs(m: onnx.ModelProto) -> list[str]:
    """Leave each output once, and only outputs some node makes; return the declared output names.

    onnxruntime's quantiser renames a graph input it quantises and then loses track of it when
    the input is also an output, and it fails on an output listed twice. Both are the quantiser's
    business only for outputs that nodes make; :func:`_restore_outputs` puts the list back.
    """
    declared = [o.name for o in m.graph.output]
    inputs = {vi.name for vi in m.graph.input}
    made = {o for n in m.graph.node for o in n.output}
    keep, seen = [], set()
    for vo in m.graph.output:
        if vo.name in seen or (vo.name in inputs and vo.name not in made):
            continue
        seen.add(vo.name)
        keep.append(vo)
    if len(keep) != len(declared):
        del m.graph.output[:]
        m.graph.output.extend(keep)
    return declared


def _restore_outputs(q: onnx.ModelProto, declared: Sequence[str]) -> None:
    """Re-list the outputs as the float model declared them: an output that is a graph input
    takes the input's (possibly now uint8) type; a repeated output repeats the first's."""
    g = q.graph
    have = {vo.name: vo for vo in g.output}
    have.update((vi.name, vi) for vi in g.input if vi.name not in have)
    missing = [n for n in declared if n not in have]
    if missing:
        raise InvalidModel(f"outputs {missing} are neither made by a node nor graph inputs after quantisation")
    if [vo.name for vo in g.output] == list(declared):
        return
    outs = []
    for name in declared:
        vo = onnx.ValueInfoProto()
        vo.CopyFrom(have[name])
        outs.append(vo)
    del g.output[:]
    g.output.extend(outs)


def _tensor_ranges(m: onnx.ModelProto, ranges: Mapping[str, Sequence[float]]) -> dict[str, TensorData]:
    data = {}
    for name, rng in ranges.items():
        try:
            lo, hi = float(rng[0]), float(rng[1])
        except (TypeError, ValueError, IndexError):
            raise CalibrationError(f"range of {name!r} must be (min, max), got {rng!r}") from None
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
            raise CalibrationError(f"range of {name!r} is not a finite (min <= max) pair: {rng!r}")
        data[name] = TensorData(lowest=np.float32(min(lo, 0.0)), highest=np.float32(max(hi, 0.0)))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(m.graph.input) + list(m.graph.output)}
    floats = [n for n in get_pure_input_names(m) + get_output_names(m) if types.get(n) == onnx.TensorProto.FLOAT]
    missing = [n for n in floats if n not in data]
    if missing:
        raise CalibrationError(f"ranges lack the graph inputs/outputs {missing}; pass the ranges "
                               "Calibrator.compute_range() returned for this model")
    return data


def _init(q: onnx.ModelProto, name: str) -> np.ndarray:
    for i in q.graph.initializer:
        if i.name == name:
            return numpy_helper.to_array(i)
    raise InvalidModel(f"quantised graph lacks initialiser {name!r}")


def _uint8_input(q: onnx.ModelProto, name: str) -> None:
    """input(float) → [Transpose →] Q(s, zp) becomes input(uint8) → [Transpose →] DQ(s, zp+128) → Q(s, zp),
    so Q(DQ(u)) = u − 128 exactly (a leading layout Transpose works on uint8 as well)."""
    g = q.graph
    t = name
    while True:
        users = [n for n in g.node if t in n.input]
        if len(users) == 1 and users[0].op_type == "Transpose":
            t = users[0].output[0]
            continue
        break
    if len(users) != 1 or users[0].op_type != "QuantizeLinear":
        raise InvalidModel(f"input {name!r} is not quantised by one QuantizeLinear (it feeds "
                           f"{[n.op_type for n in users]}): it cannot take uint8")
    qn = users[0]
    zp = int(_init(q, qn.input[2]).reshape(()))
    u8_zp = f"{name}_uint8_zero_point"
    g.initializer.append(numpy_helper.from_array(np.array(zp + 128, dtype=np.uint8), u8_zp))
    as_float = f"{name}_from_uint8"
    g.node.append(helper.make_node("DequantizeLinear", [t, qn.input[1], u8_zp], [as_float],
                                   name=f"{name}_uint8_DequantizeLinear"))
    qn.input[0] = as_float
    for vi in g.input:
        if vi.name == name:
            vi.type.tensor_type.elem_type = onnx.TensorProto.UINT8
    del g.value_info[:]  # the Transposes in between now carry uint8


def _typed_output(q: onnx.ModelProto, name: str, kind: str, rng: Sequence[float] | None) -> None:
    """Drop the output's Dequantize: the graph returns the quantised tensor (uint8 or int8)."""
    g = q.graph
    dq = next((n for n in g.node if name in n.output), None)
    if dq is None or dq.op_type != "DequantizeLinear":
        raise InvalidModel(f"output {name!r} is not produced by a DequantizeLinear; it cannot be "
                           f"returned as {kind}")
    qn = next((n for n in g.node if dq.input[0] in n.output and n.op_type == "QuantizeLinear"), None)
    if qn is None:
        raise InvalidModel(f"output {name!r} has no QuantizeLinear before its DequantizeLinear")
    if any(name in n.input for n in g.node):  # later operators read it too: they keep a float copy
        inner = f"{name}_float"
        for n in g.node:
            for i, t in enumerate(n.input):
                if t == name:
                    n.input[i] = inner
        dq.output[0] = inner
    else:
        g.node.remove(dq)
    if kind == "int8" and rng is None:
        g.node.append(helper.make_node("Identity", [dq.input[0]], [name], name=f"{name}_int8"))
    else:
        lo, hi = (0.0, 1.0) if rng is None else (float(rng[0]), float(rng[1]))
        scale = (max(hi, 0.0) - min(lo, 0.0)) / 255.0 or 1.0
        if kind == "uint8":
            zp = np.array(np.clip(round(-min(lo, 0.0) / scale), 0, 255), dtype=np.uint8)
        else:
            zp = np.array(np.clip(round(-128 - min(lo, 0.0) / scale), -128, 127), dtype=np.int8)
        s_name, z_name = f"{name}_{kind}_scale", f"{name}_{kind}_zero_point"
        g.initializer.extend([numpy_helper.from_array(np.array(scale, dtype=np.float32), s_name),
                              numpy_helper.from_array(zp, z_name)])
        g.node.append(helper.make_node("QuantizeLinear", [qn.input[0], s_name, z_name], [name],
                                       name=f"{name}_{kind}_QuantizeLinear"))
    elem = onnx.TensorProto.UINT8 if kind == "uint8" else onnx.TensorProto.INT8
    for vo in g.output:
        if vo.name == name:
            vo.type.tensor_type.elem_type = elem
