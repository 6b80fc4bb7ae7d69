"""The partitioner on unusual graphs: a device tensor that is also read by a CPU step, tensors
passed NPU to NPU, outputs that are inputs, constants or listed twice, rank-5 and scalar
tensors, unnamed nodes. Every program runs its steps in order with nothing missing, reproduces
its quantised model exactly, and the layout options (remove_lower / remove_unlower) keep the
numbers; ``Program.validate``, ``toposort`` and ``GraphIndex`` refuse or survive what the
partitioner relies on. (The partitioner's rules one by one are in ``test_partition.py``.)"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from npusim.client.ops import load_op
from npusim.compiler_svc import (
    CalibrationMethod,
    Calibrator,
    compile,
    optimize_model,
    quantize,
)
from npusim.compiler_svc.graph import GraphIndex, toposort
from npusim.npu_daemon.execute import to_device, to_graph
from npusim.services.errors import InvalidCompilerConfig, InvalidModel
from npusim.services.program import CpuStep, NpuStep, OpStep, Program
from tests.programs import run_program, session

pytestmark = pytest.mark.timeout(120)
F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits=(), opset=13):
    ins = [helper.make_tensor_value_info(n, F, s) for n, s in inputs]
    outs = [helper.make_tensor_value_info(n, t, None) for n, t in outputs]
    return helper.make_model(helper.make_graph(nodes, "g", ins, outs, list(inits)),
                             opset_imports=[helper.make_opsetid("", opset)])


def _w(name, shape, seed=0):
    return numpy_helper.from_array((np.random.default_rng(seed).standard_normal(shape) * 0.5).astype(np.float32), name)


def _conv(x, w, y):
    return helper.make_node("Conv", [x, w], [y], pads=[1, 1, 1, 1])


def _qz(m, **kw) -> bytes:
    m = optimize_model(m)
    rng = np.random.default_rng(0)
    shapes = [[d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in m.graph.input]
    cal = Calibrator(m, CalibrationMethod.MIN_MAX_ASYM)
    cal.collect_data([[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3)], progress=False)
    return quantize(m, cal.compute_range(), **kw)


def _inputs(p: Program) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.standard_normal(s.shape).astype(np.float32) if s.dtype == "float32"
            else rng.integers(-128, 128, s.shape).astype(s.dtype) for s in p.inputs]


def _reference(q: bytes, xs: list[np.ndarray]) -> list[np.ndarray]:
    s = session(q, exact=True)
    return s.run(None, {i.name: x for i, x in zip(s.get_inputs(), xs)})


def _exact(q: bytes, p: Program) -> None:
    xs = _inputs(p)
    for got, want in zip(run_program(p, xs, exact=True), _reference(q, xs)):
        assert got.dtype == want.dtype and np.array_equal(got, want)


def _env(p: Program, xs: list[np.ndarray]) -> dict[str, np.ndarray]:
    env = {spec.name: x for spec, x in zip(p.inputs, xs)}
    for step in p.steps:
        if isinstance(step, OpStep):
            env[step.output] = load_op(step.op, step.attrs).run(env[step.input])
        elif isinstance(step, CpuStep):
            env.update(zip(step.outputs, session(step.graph, exact=True).run(
                step.outputs, {n: env[n] for n in step.inputs})))
        else:
            st = p.stages[step.stage]
            feeds = {g.name: to_graph(env[n], d, g) for n, d, g in zip(step.inputs, st.device_inputs, st.graph_inputs)}
            outs = session(st.graph, exact=True).run([g.name for g in st.graph_outputs], feeds)
            env.update((n, to_device(o, g, d)) for n, o, g, d in zip(step.outputs, outs, st.graph_outputs,
                                                                      st.device_outputs))
    return env


def _where(p: Program, name: str, side: str) -> tuple[int, int]:
    for k, st in enumerate(p.stages):
        for i, d in enumerate(st.device_inputs if side == "in" else st.device_outputs):
            if d.name == name:
                return k, i
    raise KeyError(name)


def _same_as_full(q: bytes, config: dict) -> Program:
    """The program with ``config`` computes what the full program's device tensors hold."""
    full, cut = compile(q, target_npu="warboy"), compile(q, target_npu="warboy", compiler_config=config)
    xs = _inputs(full)
    ref = _env(full, xs)
    feed = []
    for s, x in zip(cut.inputs, xs):
        if s.layout != "logical" or s.dtype != x.dtype.name:
            k, i = _where(cut, s.name, "in")
            feed.append(ref[full.stages[k].device_inputs[i].name])
        else:
            feed.append(x)
    got = _env(cut, feed)
    for s in cut.outputs:
        if config.get("remove_unlower") and s.dtype == "int8":
            k, i = _where(cut, s.name, "out")
            want = ref[full.stages[k].device_outputs[i].name]
        else:
            want = ref[s.name]
        assert np.array_equal(got[s.name], want), s.name
    return cut


def _ops(p: Program) -> list[str]:
    return [s.op if isinstance(s, OpStep) else ("npu" if isinstance(s, NpuStep) else "cpu") for s in p.steps]


# a: Conv; x → Concat(a, x) on the host (not along height) → Conv → out2; a is also an output
_SHARED = _model([_conv("x", "w1", "a"), helper.make_node("Concat", ["a", "x"], ["c"], axis=1),
                  _conv("c", "w2", "out2")], [("x", [1, 4, 8, 20])], [("a", F), ("out2", F)],
                 [_w("w1", (4, 4, 3, 3)), _w("w2", (4, 8, 3, 3), 1)])


def test_remove_unlower_output_also_read_by_a_cpu_step():
    p = _same_as_full(_qz(_SHARED), {"remove_unlower": True})
    assert [o.dtype for o in p.outputs] == ["int8", "int8"]
    assert "Dequantize" not in _ops(p)


def test_remove_lower_input_also_read_by_a_cpu_step():
    p = _same_as_full(_qz(_SHARED), {"remove_lower": True})
    assert p.inputs[0].layout == "padded" and p.inputs[0].dtype == "int8"
    assert _ops(p)[0] == "npu"  # no Quantize, no Pad: the caller gave the device tensor


def test_npu_to_npu_tensor_skips_the_host_layout_ops():
    m = _model([_conv("x", "w1", "a"), _conv("x", "w3", "b"), helper.make_node("Erf", ["b"], ["e"]),
                _conv("e", "w2", "d"), helper.make_node("Add", ["d", "a"], ["y"])], [("x", [1, 4, 8, 20])],
               [("y", F)], [_w("w1", (4, 4, 3, 3)), _w("w2", (4, 4, 3, 3), 1), _w("w3", (4, 4, 3, 3), 2)])
    q = _qz(m)
    p = compile(q, target_npu="warboy")
    _exact(q, p)
    first, second = [s for s in p.steps if isinstance(s, NpuStep)]
    assert set(first.outputs) & set(second.inputs)  # `a` goes from stage 0 to stage 1 in device layout
    assert _ops(p).count("Slice") == 2  # `b` for the host Erf, and the final output


def test_output_that_is_an_input_and_a_duplicated_output():
    m = _model([_conv("x", "w1", "y")], [("x", [1, 4, 8, 32])], [("y", F), ("x", F)], [_w("w1", (4, 4, 3, 3))])
    q = _qz(m)
    p = compile(q, target_npu="warboy")
    _exact(q, p)
    with pytest.raises(InvalidCompilerConfig, match="remove_lower"):
        compile(q, target_npu="warboy", compiler_config={"remove_lower": True})


def test_constant_output_gets_a_step_that_makes_it():
    g = onnx.load_from_string(_qz(_model([_conv("x", "w1", "y")], [("x", [1, 4, 8, 32])], [("y", F)],
                                         [_w("w1", (4, 4, 3, 3))])))
    g.graph.initializer.append(numpy_helper.from_array(np.arange(6, dtype=np.float32), "table"))
    g.graph.output.append(helper.make_tensor_value_info("table", F, [6]))
    g.graph.node.append(helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.ones(3, np.float32))))
    g.graph.output.append(helper.make_tensor_value_info("k", F, [3]))
    q = g.SerializeToString()
    p = compile(q, target_npu="warboy")
    _exact(q, p)
    assert run_program(p, _inputs(p))[1].tolist() == list(range(6))


def test_rank_five_runs_on_the_host_and_scalars_cross_as_they_are():
    m = _model([_conv("x", "w1", "c"), helper.make_node("Reshape", ["c", "sh"], ["y"])], [("x", [1, 4, 8, 32])],
               [("y", F)], [_w("w1", (4, 4, 3, 3)), numpy_helper.from_array(np.array([1, 2, 2, 8, 32]), "sh")])
    q = _qz(m)
    p = compile(q, target_npu="warboy")
    _exact(q, p)
    cpu = [s for s in p.steps if isinstance(s, CpuStep)]
    assert any("rank 5" in op["reason"] for s in cpu for op in s.ops)
    m = _model([_conv("x", "w1", "c"), helper.make_node("Reshape", ["c", "sh"], ["y"])], [("x", [1, 1, 1, 1])],
               [("y", F)], [_w("w1", (1, 1, 3, 3)), numpy_helper.from_array(np.array([], np.int64), "sh")])
    q = _qz(m)
    p = compile(q, target_npu="warboy")
    _exact(q, p)
    assert p.stages[0].device_outputs[0].shape == () and p.stages[0].device_outputs[0].layout == "logical"


def test_unnamed_nodes_are_named_before_partitioning():
    m = _model([_conv("x", "w1", "a"), helper.make_node("Erf", ["a"], ["e"]), _conv("e", "w2", "y")],
               [("x", [1, 4, 8, 32])], [("y", F)], [_w("w1", (4, 4, 3, 3)), _w("w2", (4, 4, 3, 3), 1)])
    g = onnx.load_from_string(_qz(m))
    for n in g.graph.node:
        n.name = ""
    q = g.SerializeToString()
    p = compile(q, target_npu="warboy")
    _exact(q, p)
    names = [op["name"] for st in p.stages for op in st.ops]
    assert all(names) and len(set(names)) == len(names)


def test_validate_refuses_a_step_reading_a_missing_tensor():
    q = _qz(_model([_conv("x", "w1", "y")], [("x", [1, 4, 8, 32])], [("y", F)], [_w("w1", (4, 4, 3, 3))]))
    p = compile(q, target_npu="warboy")
    p.validate()
    p.steps.insert(0, OpStep("Slice", {"length": 3}, "nowhere", "z"))
    with pytest.raises(InvalidModel, match="nowhere"):
        p.validate()
    with pytest.raises(InvalidModel, match="nowhere"):
        Program.from_bytes(p.to_bytes())


def test_toposort_is_stable_and_reports_cycles():
    g = helper.make_graph([helper.make_node("Relu", ["b"], ["c"], name="late"),
                           helper.make_node("Relu", ["x"], ["a"], name="one"),
                           helper.make_node("Relu", ["a"], ["b"], name="two"),
                           helper.make_node("Relu", ["x"], ["d"], name="side")],
                          "g", [helper.make_tensor_value_info("x", F, [1])], [])
    toposort(g)
    assert [n.name for n in g.node] == ["one", "two", "late", "side"]
    g.node[0].input[0] = "c"
    with pytest.raises(InvalidModel, match="cycle"):
        toposort(g)


def test_graph_index_knows_zero_points_after_the_boundary_is_cut():
    q = onnx.load_from_string(_qz(_model([_conv("x", "w1", "y")], [("x", [1, 4, 8, 32])], [("y", F)],
                                         [_w("w1", (4, 4, 3, 3))])))
    idx = GraphIndex.of(q)
    qn = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    zp = int(numpy_helper.to_array(next(i for i in q.graph.initializer if i.name == qn.input[2])))
    q.graph.node.remove(qn)
    idx.refresh(q)
    assert idx.zero_point(qn.output[0]) == zp
