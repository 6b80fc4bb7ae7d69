"""``npusim advise``: the seed's checklist applied to the user's own model, ranked.

The seed lists knobs (input and output types, layout, patches, batch, PE mode, workers, async
depth) and says to find the right setting by experiment. ``advise`` runs each experiment on the
user's model instead: it compiles the variant, times its host operators here with the real
kernels, predicts its chip-scale latency and throughput in virtual time (the engine of
``npusim plan``), measures its accuracy against the float model, and ranks the changes for the
chosen target, the one to make first on top.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from npusim.compiler_svc.advise.checks import CHECKS
from npusim.compiler_svc.advise.context import AdviseConfig, Context
from npusim.compiler_svc.advise.recommendation import Recommendation, Skip, gain
from npusim.services.errors import ConfigError
from npusim.services.hostprofile import host_profile
from npusim.services.modelfile import model_source

__all__ = ["AdviseConfig", "advise", "advise_cmd", "CHECKS"]


def advise(cfg: AdviseConfig, data: bytes, *, step_costs: Callable[..., Any] | None, only: tuple[str, ...] = (),
           model_name: str = "", status: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every check on the model; one dict (what ``--json`` prints), recommendations best first."""
    unknown = set(only) - set(CHECKS)
    if unknown:
        raise ConfigError(f"unknown check(s) {', '.join(sorted(unknown))}; choose from {', '.join(CHECKS)}")
    say = status or (lambda _: None)
    say("calibrating …")
    ctx = Context(data, cfg, host_profile("this", step_costs=step_costs))
    found: list[Recommendation] = []
    skipped: list[Skip] = []
    for name, fn in CHECKS.items():
        if only and name not in only:
            continue
        say(f"{name} …")
        r = fn(ctx)
        (found if isinstance(r, Recommendation) else skipped).append(r)
    found.sort(key=lambda r: gain(r.before, r.after, cfg.target), reverse=True)
    base = ctx.predict(ctx.base)
    return {
        "model": model_name or ctx.model.graph.name, "target": cfg.target, "devices": cfg.devices,
        "workers": cfg.workers, "host": {"name": ctx.profile.name, "cores": ctx.cores,
                                         "runtime_overhead_ns": ctx.profile.runtime_overhead_ns},
        "time_scale": cfg.time_scale, "baseline": base, "baseline_accuracy": ctx.accuracy(ctx.base),
        "recommendations": [r.to_json(cfg.target) for r in found],
        "checked": [s.to_json() for s in skipped],
    }


def advise_cmd(cfg: AdviseConfig, *, model: str, step_costs: Callable[..., Any] | None, only: tuple[str, ...] = (),
               json_out: bool = False, report_path: Path | None = None) -> dict[str, Any]:
    from rich.console import Console

    from npusim.compiler_svc.advise.report import advise_page, print_report

    given = model_source(model)
    err = Console(stderr=True)
    with contextlib.nullcontext() if json_out or not err.is_terminal else err.status("advise …") as st:
        result = advise(cfg, given.data, step_costs=step_costs, only=only, model_name=given.name,
                        status=(lambda m: st.update(f"[bold]advise[/bold]: {m}")) if st is not None else None)
    if report_path is not None:
        report_path.write_text(advise_page(result))
    if json_out:
        print(json.dumps(result, default=float))
    else:
        print_report(result)
    if report_path is not None:
        err.print(f"wrote the report {report_path}")
    return result
