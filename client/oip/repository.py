"""The served models: one npusim session (an :class:`~npusim.client._engine.Engine` and its worker
pool) per loaded model, loaded and unloaded live. Opening a session compiles and claims PEs, so
it runs in a thread and a model is ready only once its session is open."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from npusim.client._engine import Engine
from npusim.services.errors import ConfigError, InvalidInput, NpusimError
from npusim.services.modelfile import model_source

__all__ = ["ModelConfig", "Repository", "load_model_config"]

_KEYS = {"name", "model", "version", "npu_device", "batch_size", "worker_num", "compiler_config", "description",
         "platform", "input_queue_size"}


@dataclass(frozen=True)
class ModelConfig:
    """One entry of furiosa-server's ``model_config_list``."""

    name: str
    model: str
    version: str | None = None
    npu_device: str | None = None
    batch_size: int | None = None
    worker_num: int | None = None
    compiler_config: dict[str, Any] | None = None
    input_queue_size: int | None = None  # npusim's: requests waiting beyond it are answered 503 at once


def load_model_config(path: Path) -> list[ModelConfig]:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"--model-config {path}: {e}") from None
    entries = (doc or {}).get("model_config_list") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"--model-config {path}: expected a 'model_config_list' of models (name, model, "
                          "version, npu_device, batch_size, worker_num, compiler_config)")
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) or "model" not in e:
            raise ConfigError(f"--model-config {path}: entry {i} needs 'name' and 'model'")
        unknown = set(e) - _KEYS
        if unknown:
            raise ConfigError(f"--model-config {path}: entry {e['name']!r} has unknown key(s) "
                              f"{', '.join(sorted(unknown))}")
        model = str(e["model"])
        if not model.startswith("zoo:") and not Path(model).is_absolute():
            model = str(path.parent / model)
        out.append(ModelConfig(e["name"], model, None if e.get("version") is None else str(e["version"]),
                               e.get("npu_device"), e.get("batch_size"), e.get("worker_num"),
                               e.get("compiler_config"), e.get("input_queue_size")))
    return out


@dataclass
class Served:
    config: ModelConfig
    engine: Engine | None = None
    state: str = "UNAVAILABLE"  # READY, LOADING, UNAVAILABLE
    reason: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.state == "READY"


class Repository:
    def __init__(self, configs: list[ModelConfig]) -> None:
        names = [c.name for c in configs]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"model name(s) {', '.join(sorted(dup))} appear more than once")
        self.models = {c.name: Served(c) for c in configs}

    def get(self, name: str, version: str | None = None) -> Served:
        m = self.models.get(name)
        if m is None:
            raise KeyError(f"no model {name!r}; served models: {', '.join(self.models) or 'none'}")
        if version is not None and (m.config.version or "1") != version:
            raise KeyError(f"model {name!r} has no version {version!r}; it serves version {m.config.version or '1'}")
        return m

    async def load(self, name: str) -> None:
        m = self.get(name)
        async with m.lock:
            if m.engine is not None:
                return
            m.state = "LOADING"
            c = m.config
            try:
                data = model_source(c.model).data
                m.engine = await asyncio.to_thread(
                    Engine, data, device=c.npu_device, worker_num=c.worker_num, batch_size=c.batch_size,
                    compiler_config=c.compiler_config, input_queue_size=c.input_queue_size, name=f"serve:{c.name}")
            except NpusimError as e:
                m.state, m.reason = "UNAVAILABLE", str(e)
                raise
            m.state, m.reason = "READY", ""

    async def unload(self, name: str) -> None:
        m = self.get(name)
        async with m.lock:
            engine, m.engine = m.engine, None
            m.state, m.reason = "UNAVAILABLE", "unloaded"
            if engine is not None:
                await asyncio.to_thread(engine.close, drain=True)

    async def close(self) -> None:
        for name in self.models:
            await self.unload(name)

    def index(self) -> list[dict[str, Any]]:
        return [{"name": n, "version": m.config.version or "1", "state": m.state, "reason": m.reason}
                for n, m in self.models.items()]

    @staticmethod
    def check_name(name: str) -> str:
        if not name or "/" in name or name in (".", ".."):
            raise InvalidInput(f"{name!r} is not a model name")
        return name
