"""What a program's host steps cost on this machine, measured with the real kernels.

``npusim estimate --host this`` prices the CPU operators around the NPU part this way: each
host step runs on a tensor of the shape it will see (random values: the kernels' time does not
depend on them) a few times, and its median time is the step's cost. NPU steps are not run;
their outputs are zero tensors of the device shapes, which is all the next host step needs.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from npusim.client._worker import _run_graph, _runner
from npusim.services.program import CpuStep, NpuStep, OpStep, Program

__all__ = ["measure_steps"]


def _random(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dt)


def measure_steps(program: Program, repeats: int = 9, seed: int = 0) -> list[float | None]:
    """The median wall time in ns of each host step of ``program`` (None for an NPU step)."""
    rng = np.random.default_rng(seed)
    env = {t.name: _random(t.dtype, t.shape, rng) for t in program.inputs}
    costs: list[float | None] = []
    for step in program.steps:
        if isinstance(step, NpuStep):
            stage = program.stages[step.stage]
            env.update((n, np.zeros(t.shape, np.dtype(t.dtype))) for n, t in zip(step.outputs, stage.device_outputs))
            costs.append(None)
            continue
        runner = _runner(step)
        if isinstance(step, OpStep):
            runner.warm()

            def once(step: OpStep = step, runner: object = runner) -> None:
                env[step.output] = runner.run(env[step.input])  # type: ignore[attr-defined]
        else:
            assert isinstance(step, CpuStep)

            def once(step: CpuStep = step, runner: object = runner) -> None:
                env.update(_run_graph(runner, step, env))
        once()  # the first call builds caches; it is not a steady-state cost
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            once()
            samples.append(time.perf_counter_ns() - t0)
        costs.append(float(statistics.median(samples)))
    return costs
