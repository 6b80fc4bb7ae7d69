"""Run a compiled Program in-process (host operators, NPU stages, fallback graphs) for tests.

``exact=True`` runs every graph with onnxruntime's optimisations off: quantisation is then
exact fake-quant arithmetic, and a program must reproduce its quantised model bit for bit.
With optimisations on (what the daemon does) onnxruntime's fused int8 kernels may differ
from fake-quant by a few units in the last place.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from npusim.client.ops import load_op
from npusim.npu_daemon.execute import to_device, to_graph
from npusim.services.program import CpuStep, NpuStep, OpStep, Program


def session(graph: bytes, *, exact: bool) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if exact
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    return ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])


def run_program(program: Program, inputs: list[np.ndarray], *, exact: bool = False) -> list[np.ndarray]:
    env = {spec.name: x for spec, x in zip(program.inputs, inputs)}
    for step in program.steps:
        if isinstance(step, OpStep):
            env[step.output] = load_op(step.op, step.attrs).run(env[step.input])
        elif isinstance(step, CpuStep):
            outs = session(step.graph, exact=exact).run(step.outputs, {n: env[n] for n in step.inputs})
            env.update(zip(step.outputs, outs))
        else:
            assert isinstance(step, NpuStep)
            st = program.stages[step.stage]
            feeds = {g.name: to_graph(env[n], d, g) for n, d, g in zip(step.inputs, st.device_inputs, st.graph_inputs)}
            outs = session(st.graph, exact=exact).run([g.name for g in st.graph_outputs], feeds)
            env.update((n, to_device(o, g, d)) for n, o, g, d in zip(step.outputs, outs, st.graph_outputs,
                                                                      st.device_outputs))
    return [env[spec.name] for spec in program.outputs]
