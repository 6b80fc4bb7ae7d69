"""The registry the checks add themselves to (kept apart from ``checks/__init__``, which imports
them, so no check imports its own package)."""

from __future__ import annotations

from collections.abc import Callable

from npusim.compiler_svc.advise.context import Context
from npusim.compiler_svc.advise.recommendation import Recommendation, Skip

__all__ = ["CHECKS", "Check", "check"]

Check = Callable[[Context], Recommendation | Skip]
CHECKS: dict[str, Check] = {}


def check(name: str) -> Callable[[Check], Check]:
    def add(fn: Check) -> Check:
        CHECKS[name] = fn
        return fn

    return add
