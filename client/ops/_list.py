"""Registry of host (CPU) operators: the names a program's op steps (``OpStep.op``) may use."""

from __future__ import annotations

from typing import Any

from client.ops.base import CpuOperator
from client.ops.dequantize import Dequantize
from client.ops.lower import Lower
from client.ops.pad import Pad
from client.ops.quantize import Quantize
from client.ops.quantize_uint8 import QuantizeUint8
from client.ops.slice import Slice
from client.ops.unlower import Unlower
from services.errors import InvalidModel

OPERATORS: dict[str, type[CpuOperator]] = {
    cls.name: cls for cls in (Quantize, QuantizeUint8, Dequantize, Lower, Unlower, Pad, Slice)
}


def load_op(name: str, attrs: dict[str, Any]) -> CpuOperator:
    try:
        cls = OPERATORS[name]
    except KeyError:
        raise InvalidModel(f"the program uses CPU operator {name!r}, which this npusim does not have "
                           f"(known: {', '.join(OPERATORS)}); upgrade npusim or recompile") from None
    return cls(**attrs)
