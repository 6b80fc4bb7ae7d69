"""``npusim compile`` called as a function, with every option at its default unless given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from npusim.compiler_svc.cli import compile_cmd


def compile_cli(model: Path, out: Path, **kw: Any) -> Path:
    args: dict[str, Any] = {"model": model, "output": out, "target_npu": "warboy", "batch_size": 1,
                            "compiler_config": None, "calibration_method": "MIN_MAX_ASYM", "calibration_data": "random",
                            "calibration_samples": 1, "with_quantize": True, "normalized_pixel_outputs": [],
                            "no_cache": False}
    args.update(kw)
    return compile_cmd(**args)
