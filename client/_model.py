"""What a model takes and gives, as the SDK describes it (``Runner.model``, ``Session.inputs()``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from npusim.client._tensor import TensorDesc, check_inputs
from npusim.services.errors import InvalidDtype, InvalidInput
from npusim.services.program import Program

__all__ = ["Model", "Described", "pick_inputs"]


class Model:
    """The inputs and outputs of a compiled program (batch included)."""

    def __init__(self, program: Program, check: Callable[[], None] = lambda: None) -> None:
        self.program = program
        self._check = check
        self._inputs = [TensorDesc.of(s) for s in program.inputs]
        self._outputs = [TensorDesc.of(s) for s in program.outputs]

    def inputs(self) -> list[TensorDesc]:
        self._check()
        return list(self._inputs)

    def outputs(self) -> list[TensorDesc]:
        self._check()
        return list(self._outputs)

    def input(self, i: int) -> TensorDesc:
        return self.inputs()[i]

    def output(self, i: int) -> TensorDesc:
        return self.outputs()[i]

    @property
    def input_num(self) -> int:
        return len(self.inputs())

    @property
    def output_num(self) -> int:
        return len(self.outputs())

    def summary(self) -> str:
        ins = ", ".join(f"{i}: {d!r}" for i, d in enumerate(self.inputs()))
        outs = ", ".join(f"{i}: {d!r}" for i, d in enumerate(self.outputs()))
        return f"Inputs:\n{{{ins}}}\nOutputs:\n{{{outs}}}"

    def print_summary(self) -> None:
        print(self.summary(), file=sys.stderr)  # the legacy SDK prints it to stderr

    def allocate(self) -> list[np.ndarray]:
        """Fresh zeroed input arrays of the right shapes and dtypes."""
        self._check()
        return [np.zeros(s.shape, np.dtype(s.dtype)) for s in self.program.inputs]

    def check(self, inputs: Any) -> list[np.ndarray]:
        self._check()
        return check_inputs(inputs, self.program.inputs)


class Described:
    """``inputs()``, ``outputs()``, ``summary()``... on an object that has a ``model``."""

    model: Model

    def inputs(self) -> list[TensorDesc]:
        return self.model.inputs()

    def outputs(self) -> list[TensorDesc]:
        return self.model.outputs()

    def input(self, i: int) -> TensorDesc:
        return self.model.input(i)

    def output(self, i: int) -> TensorDesc:
        return self.model.output(i)

    @property
    def input_num(self) -> int:
        return self.model.input_num

    @property
    def output_num(self) -> int:
        return self.model.output_num

    def summary(self) -> str:
        return self.model.summary()

    def print_summary(self) -> None:
        self.model.print_summary()


def pick_inputs(model: Model, outputs: Any, inputs: Any) -> tuple[list[np.ndarray], list[int]]:
    """``run_with(outputs, inputs)``: the input arrays in model order and the output indices asked."""
    if not isinstance(outputs, (list, tuple)):
        raise InvalidDtype(f"outputs must be a list of output names, got {type(outputs).__name__}")
    if not isinstance(inputs, dict):
        raise InvalidDtype(f"inputs must be a dict of input name -> array, got {type(inputs).__name__}")
    names = [s.name for s in model.program.inputs]
    if set(inputs) != set(names):
        raise InvalidInput(f"run_with needs exactly the inputs {names}; got {sorted(map(str, inputs))}")
    out_names = [s.name for s in model.program.outputs]
    bad = [o for o in outputs if o not in out_names]
    if bad or not outputs:
        raise InvalidInput(f"unknown output name(s) {bad}; the model's outputs are {out_names}" if bad else
                           f"ask for at least one output; the model's outputs are {out_names}")
    return model.check([inputs[n] for n in names]), [out_names.index(o) for o in outputs]
