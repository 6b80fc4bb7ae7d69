"""Registry of calibration observers: method family name → observer class.

Every class is built as ``cls(symmetric=..., percentage=...)`` (the ``_ASYM``/``_SYM`` variant
is the ``symmetric`` flag) and has ``update(x)`` and ``range() -> (lo, hi)``; see ``base.py``.
"""

from __future__ import annotations

from npusim.compiler_svc.calibrate.entropy import EntropyObserver
from npusim.compiler_svc.calibrate.minmax import MinMaxObserver
from npusim.compiler_svc.calibrate.mse import MSEObserver
from npusim.compiler_svc.calibrate.percentile import PercentileObserver
from npusim.compiler_svc.calibrate.sqnr import SQNRObserver

OBSERVERS = {
    "MIN_MAX": MinMaxObserver,
    "ENTROPY": EntropyObserver,
    "PERCENTILE": PercentileObserver,
    "MSE": MSEObserver,
    "SQNR": SQNRObserver,
}
