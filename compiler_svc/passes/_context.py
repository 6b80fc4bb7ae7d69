from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class PassContext:
    opset_version: int = 13
    input_shapes: dict[str, Sequence[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what a pass could not do, for the compile warnings
