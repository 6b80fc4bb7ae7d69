"""``npusim compile`` and ``npusim explain``: the compiler from the command line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from npusim.compiler_svc.cache import ProgramCache
from npusim.services.cost.memory import sram_summary
from npusim.compiler_svc.pipeline import CompileOptions, Stages, cache_key, compile_model, program_info
from npusim.services.errors import InvalidCompilerConfig, InvalidInput, InvalidModel
from npusim.services.hw import WARBOY
from npusim.services.modelfile import model_source
from npusim.services.program import CpuStep, NpuStep, OpStep, Program, is_program

__all__ = ["compile_cmd", "explain", "load_calibration_data", "load_compiler_config"]

console = Console(stderr=True)


def load_compiler_config(path: Path | None) -> dict[str, Any]:
    """A compiler_config from YAML (or JSON) — the same keys as ``compiler_config=``."""
    if path is None:
        return {}
    try:
        text = path.read_text()
    except OSError as e:
        raise InvalidCompilerConfig(f"cannot read {path}: {e.strerror}") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - yaml/json raise many types
        raise InvalidCompilerConfig(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from None
    if not isinstance(data, dict):
        raise InvalidCompilerConfig(f"{path} must hold a mapping of compiler_config keys")
    return data


def load_calibration_data(source: str, input_names: list[str]) -> list[list[np.ndarray]] | None:
    """``random`` → None (random samples); a directory → one sample per ``.npy`` (single-input
    models) or ``.npz`` file (arrays named after the model's inputs), in file-name order."""
    if source == "random":
        return None
    d = Path(source)
    if not d.is_dir():
        raise InvalidInput(f"--calibration-data {source!r} is neither 'random' nor a directory of .npy/.npz samples")
    files = sorted(p for p in d.iterdir() if p.suffix in (".npy", ".npz"))
    if not files:
        raise InvalidInput(f"{d} holds no .npy or .npz samples")
    samples = []
    for f in files:
        if f.suffix == ".npy":
            if len(input_names) != 1:
                raise InvalidInput(f"{f.name}: the model has {len(input_names)} inputs; use .npz files with arrays "
                                   f"named {input_names}")
            samples.append([np.load(f, allow_pickle=False)])
        else:
            with np.load(f, allow_pickle=False) as z:
                missing = [n for n in input_names if n not in z]
                if missing:
                    raise InvalidInput(f"{f.name} lacks arrays for inputs {missing}")
                samples.append([z[n] for n in input_names])
    return samples


class _ProgressStages(Stages):
    """Stages that also show which one is running."""

    def __init__(self, status: Any) -> None:
        super().__init__()
        self.status = status

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.status.update(f"[bold]compiling[/bold]: {name} …")
        with super().stage(name):
            yield
        console.print(f"  [green]✓[/green] {name:<14} {self.seconds[name]:7.2f} s")


def parse_input_shapes(items: list[str]) -> dict[str, list[int]]:
    """``NAME=1,3,224,224`` items → {NAME: [1, 3, 224, 224]}."""
    shapes = {}
    for item in items:
        name, sep, dims = item.partition("=")
        try:
            shapes[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            sep = ""
        if not sep or not name or not shapes.get(name):
            raise InvalidInput(f"--input-shape {item!r}: write NAME=D0,D1,... e.g. input=1,3,224,224")
    return shapes


def compile_cmd(*, model: str | Path, output: Path | None, target_npu: str, batch_size: int,
                compiler_config: Path | None, calibration_method: str, calibration_data: str | None,
                calibration_samples: int, with_quantize: bool, normalized_pixel_outputs: list[int], no_cache: bool,
                input_shape: list[str] | None = None) -> Path:
    """``npusim compile``: ``model`` an .onnx path or ``zoo:NAME``; the program goes to ``output``
    (default: beside the model, or NAME.enf here for a zoo model)."""
    source = model_source(model)
    data = source.data
    if is_program(data):
        raise InvalidModel(f"{model} is already compiled (.enf): there is nothing to compile — pass it to "
                           f"session.create or `npusim explain {model}` directly")
    out = output or (source.path.with_suffix(".enf") if source.path else Path(f"{source.name}.enf"))
    options = CompileOptions(target_npu=target_npu, batch_size=batch_size,
                             compiler_config=load_compiler_config(compiler_config),
                             calibration_method=calibration_method, calibration_samples=calibration_samples,
                             with_quantize=with_quantize, normalized_pixel_outputs=list(normalized_pixel_outputs),
                             auto_quantize=calibration_data == "random",
                             input_shapes=parse_input_shapes(input_shape or []))
    options.validate()
    samples = None
    if calibration_data not in (None, "random"):
        import onnx

        from npusim.compiler_svc.editor import get_pure_input_names

        samples = load_calibration_data(calibration_data, get_pure_input_names(onnx.load_from_string(data)))
    cache = None if no_cache else ProgramCache()
    key = cache_key(data, options) if samples is None else None
    hit = cache.load(key) if cache is not None and key is not None else None  # an unreadable entry is a miss
    console.print(f"[bold]npusim compile[/bold] {model} → {out} (target {target_npu}, batch {batch_size})")
    if hit is not None:
        blob, program = hit
        info = dict(program_info(program), stages={})
        console.print("  [green]✓[/green] served from the program cache")
    else:
        with console.status("compiling …") as status:
            program, info = compile_model(data, options, calibration_data=samples, stages=_ProgressStages(status))
        blob = program.to_bytes()
        if cache is not None and key is not None:
            cache.put(key, blob)
    out.write_bytes(blob)
    _summary(program, info, out, len(blob))
    return out


def _summary(program: Program, info: dict[str, Any], out: Path, size: int) -> None:
    est = program.estimate
    t = Table(title="compiled program", show_header=False)
    t.add_row("target", f"{program.target} ({'fused pe0-1' if program.target == 'warboy-2pe' else 'one PE'})")
    t.add_row("batch", str(program.batch_size))
    t.add_row("inputs", ", ".join(f"{s.name} {s.dtype}{list(s.shape)} {s.axes}" for s in program.inputs))
    t.add_row("outputs", ", ".join(f"{s.name} {s.dtype}{list(s.shape)} {s.axes}" for s in program.outputs))
    t.add_row("CPU operators", ", ".join(info.get("cpu_ops", [])) or "none")
    t.add_row("NPU stages", str(len(program.stages)))
    t.add_row("estimated NPU time", f"{est['npu_ns'] / 1e3:.1f} µs + {est['job_overhead_ns'] / 1e3:.1f} µs job "
              f"overhead ({est['macs'] / 1e9:.2f} GMAC)")
    t.add_row("fits SRAM", "yes" if est["fits_sram"] else "no: some activations stream through DRAM")
    t.add_row("written", f"{out} ({size / 1e6:.2f} MB)")
    console.print(t)
    for w in info.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {w}")


def explain(*, program_path: Path, json_out: bool) -> None:
    """The program as tables: every step, where it runs and why, boundaries, NPU costs."""
    try:
        program = Program.from_bytes(program_path.read_bytes())
    except OSError as e:
        raise InvalidInput(f"cannot read {program_path}: {e.strerror}") from None
    if json_out:
        print(json.dumps(program.header(), default=str))
        return
    out = Console()
    out.print(f"[bold]{program_path}[/bold]: {program.meta.get('model', '?')} for {program.target}, batch "
              f"{program.batch_size}, {len(program.stages)} NPU stage(s), compiled by {program.meta.get('compiler')}")
    steps = Table(title="steps, in the order a worker runs them")
    for col in ("#", "operator", "runs on", "input → output", "why"):
        steps.add_column(col, overflow="fold")
    for i, st in enumerate(program.steps):
        if isinstance(st, OpStep):
            steps.add_row(str(i), st.op, "CPU", f"{st.input} → {st.output}", st.reason)
        elif isinstance(st, CpuStep):
            ops = ", ".join(o["op_type"] for o in st.ops)
            why = "; ".join(sorted({o["reason"] for o in st.ops if o["reason"]}))
            steps.add_row(str(i), f"fallback: {ops}", "CPU", f"{', '.join(st.inputs)} → {', '.join(st.outputs)}", why)
        else:
            assert isinstance(st, NpuStep)
            stage = program.stages[st.stage]
            steps.add_row(str(i), f"NPU stage {st.stage} ({len(stage.ops)} operators)", "NPU",
                          f"{', '.join(st.inputs)} → {', '.join(st.outputs)}",
                          f"{stage.estimate.get('npu_ns', 0) / 1e3:.1f} µs estimated")
    out.print(steps)
    tensors = Table(title="tensors at the boundaries")
    for col in ("tensor", "where", "dtype", "shape", "axes", "layout"):
        tensors.add_column(col, overflow="fold")
    for s in program.inputs:
        tensors.add_row(s.name, "program input", s.dtype, str(list(s.shape)), s.axes, s.layout)
    for k, stage in enumerate(program.stages):
        for s in stage.device_inputs:
            tensors.add_row(s.name, f"into NPU stage {k}", s.dtype, str(list(s.shape)), s.axes, s.layout)
        for s in stage.device_outputs:
            tensors.add_row(s.name, f"out of NPU stage {k}", s.dtype, str(list(s.shape)), s.axes, s.layout)
    for s in program.outputs:
        tensors.add_row(s.name, "program output", s.dtype, str(list(s.shape)), s.axes, s.layout)
    out.print(tensors)
    for k, stage in enumerate(program.stages):
        ops = Table(title=f"NPU stage {k}: estimated cycles per operator")
        for col in ("operator", "type", "MACs", "cycles", "µs", "bound by", "note"):
            ops.add_column(col, justify="right" if col in ("MACs", "cycles", "µs") else "left", overflow="fold")
        clock = WARBOY.clock_hz
        for o in stage.ops:
            ops.add_row(o["name"], o["op_type"], f"{o.get('macs', 0):,}", f"{o['cycles']:,.0f}",
                        f"{o['cycles'] / clock * 1e6:.2f}", o.get("bound", ""), o.get("note", ""))
        e = stage.estimate
        ops.add_row("total", "", f"{e.get('macs', 0):,}", f"{e.get('npu_cycles', 0):,.0f}",
                    f"{e.get('npu_ns', 0) / 1e3:.2f}", "", "")
        out.print(ops)
        out.print(f"  SRAM: {sram_summary(e)}")
    for note in program.meta.get("notes", []) + program.meta.get("warnings", []):
        out.print(f"[yellow]note:[/yellow] {note}")
