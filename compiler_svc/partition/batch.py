"""``batch_size``: multiply dim 0 of every input and output.

Reshape targets written for batch 1 (``[1, -1]`` from an exporter) would pin the batch, so
a leading 1 in a constant Reshape shape becomes 0 ("copy this dim from the input"); a
Resize to fixed ``sizes`` gets the new batch in its first size.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from npusim.services.errors import InvalidModel


def apply_batch(m: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    if batch == 1:
        return m
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    for n in g.node:
        if n.op_type == "Reshape" and n.input[1] in inits:
            slot, shape = 1, numpy_helper.to_array(inits[n.input[1]]).copy()
            if not (shape.size and shape[0] == 1):
                continue
            shape[0] = 0  # "copy dim 0 from the input"
        elif n.op_type == "Resize" and len(n.input) > 3 and n.input[3] in inits:
            slot, shape = 3, numpy_helper.to_array(inits[n.input[3]]).copy()
            if not (shape.size and shape[0] == 1):
                continue
            shape[0] = batch  # a fixed output size names the batch too
        else:
            continue
        new = f"{n.input[slot]}_batch_{n.name}"
        g.initializer.append(numpy_helper.from_array(shape.astype(np.int64), new))
        n.input[slot] = new
    for vi in list(g.input) + list(g.output):
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            dims[0].dim_value = dims[0].dim_value * batch
    for vo in g.output:
        vo.type.tensor_type.ClearField("shape")
    del g.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(m, strict_mode=True)
    except Exception as e:  # noqa: BLE001
        raise InvalidModel(f"cannot compile for batch {batch}: the graph does not scale its first dimension "
                           f"({e}); export the model with a dynamic or per-sample batch") from None
