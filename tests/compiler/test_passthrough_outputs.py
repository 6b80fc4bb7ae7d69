"""Graph outputs that are graph inputs (passed straight through), or that are listed twice,
survive ``optimize_model`` and ``quantize``: the names, order and types of the outputs are kept,
a passed-through input comes out bit for bit (uint8 too, with ``with_quantize=False``), and
both copies of a twice-listed output agree. Models are built here with ``onnx.helper``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from npusim.compiler_svc import optimize_model
from tests.compiler.graphs import FLOAT, SHAPE
from tests.compiler.graphs import conv as _conv
from tests.compiler.graphs import minmax_quantize as _quantize
from tests.compiler.graphs import model as _model
from tests.compiler.graphs import run as _run
from tests.compiler.graphs import sample as _x
from tests.compiler.graphs import weight as _weight

pytestmark = pytest.mark.timeout(60)



# -- outputs that are inputs, outputs listed twice -------------------------------------------
def _passthrough_model(output_shape: list[int] | None) -> onnx.ModelProto:
    return _model([_conv("x", "w1", "out")], [("x", SHAPE, FLOAT)],
                  [("out", output_shape, FLOAT), ("x", output_shape, FLOAT)], [_weight("w1")])


@pytest.mark.parametrize("output_shape", [None, SHAPE], ids=["bare_outputs", "typed_outputs"])
def test_an_output_that_is_an_input_survives_optimize_and_quantize(output_shape: list[int] | None) -> None:
    out = optimize_model(_passthrough_model(output_shape))
    assert [o.name for o in out.graph.output] == ["out", "x"]
    assert out.graph.output[1].type == out.graph.input[0].type
    q = _quantize(out)
    qm = onnx.load_from_string(q)
    assert [o.name for o in qm.graph.output] == ["out", "x"]
    assert qm.graph.output[1].type == qm.graph.input[0].type
    x = _x(0)  # a calibration sample: nothing clips
    res = _run(q, {"x": x}, exact=True)
    np.testing.assert_array_equal(res[1], x)
    np.testing.assert_allclose(res[0], _run(out, {"x": x})[0], atol=0.3)


def test_an_output_that_is_a_uint8_input_is_uint8_too() -> None:
    q = onnx.load_from_string(_quantize(optimize_model(_passthrough_model(None)), with_quantize=False))
    assert q.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert q.graph.output[1].name == "x" and q.graph.output[1].type == q.graph.input[0].type
    u = np.random.default_rng(0).integers(0, 256, SHAPE).astype(np.uint8)
    np.testing.assert_array_equal(_run(q, {"x": u}, exact=True)[1], u)


def test_quantize_keeps_an_output_that_is_an_input_without_optimize_model() -> None:
    m = onnx.shape_inference.infer_shapes(_passthrough_model(SHAPE))
    m.graph.node[0].name = "conv"
    qm = onnx.load_from_string(_quantize(m))
    assert [o.name for o in qm.graph.output] == ["out", "x"]


def test_an_output_listed_twice_survives_optimize_and_quantize() -> None:
    m = _model([_conv("x", "w1", "y")], [("x", SHAPE, FLOAT)], [("y", None, FLOAT), ("y", None, FLOAT)],
               [_weight("w1")])
    out = optimize_model(m)
    assert [o.name for o in out.graph.output] == ["y", "y"]
    assert out.graph.output[0].type == out.graph.output[1].type
    assert [d.dim_value for d in out.graph.output[1].type.tensor_type.shape.dim] == SHAPE
    qm = onnx.load_from_string(_quantize(out))
    assert [o.name for o in qm.graph.output] == ["y", "y"]
    a, b = _run(qm, {"x": _x()}, exact=True)
    np.testing.assert_array_equal(a, b)
