"""Registry of calibration observers: method family name → observer class."""

from __future__ import annotations

from compiler_svc.calibrate.minmax import MinMaxObserver

OBSERVERS = {
    "MIN_MAX": MinMaxObserver,
}
