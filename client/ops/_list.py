"""Registry of host (CPU) operators: the names a program's op steps (``OpStep.op``) may use."""

from __future__ import annotations

from typing import Any

from npusim.client.ops.base import CpuOperator
from npusim.client.ops.dequantize import Dequantize
from npusim.client.ops.lower import Lower
from npusim.client.ops.pad import Pad
from npusim.client.ops.quantize import Quantize
from npusim.client.ops.quantize_uint8 import QuantizeUint8
from npusim.client.ops.slice import Slice
from npusim.client.ops.unlower import Unlower
from npusim.services.errors import InvalidModel

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
