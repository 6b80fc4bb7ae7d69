"""Host (CPU) operators around the NPU part: one file per operator, registered in ``_list``."""

from client.ops._list import OPERATORS, load_op
from client.ops.base import CpuOperator

__all__ = ["OPERATORS", "CpuOperator", "load_op"]
