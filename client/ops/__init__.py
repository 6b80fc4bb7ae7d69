"""Host (CPU) operators around the NPU part: one file per operator, registered in ``_list``."""

from npusim.client.ops._list import OPERATORS, load_op
from npusim.client.ops.base import CpuOperator

__all__ = ["OPERATORS", "CpuOperator", "load_op"]
