"""``NuxModel``: the serving framework's model object, for code written against furiosa-server.

    model = NuxModel(NuxModelConfig(name="mnist", model="mnist.onnx", worker_num=2))
    await model.load()
    outputs = await model.predict(x)
    await model.unload()

It wraps an asyncio :class:`~client._runtime.Runner`; ``npu_device`` takes the SDK's device
strings (a comma list spreads requests over several PEs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from npusim.client._runtime import Runner, create_runner
from npusim.services.errors import SessionClosed

__all__ = ["NuxModel", "NuxModelConfig", "FuriosaRTModel", "FuriosaRTModelConfig"]


@dataclass
class NuxModelConfig:
    name: str
    model: str | bytes | Any
    version: str | None = None
    description: str | None = None
    npu_device: str | None = None
    batch_size: int | None = None
    worker_num: int | None = None
    compiler_config: dict[str, Any] | None = None
    platform: str = "nux"
    inputs: list[Any] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)


class NuxModel:
    """A named model that loads onto the NPU, predicts, and unloads."""

    def __init__(self, config: NuxModelConfig) -> None:
        if not isinstance(config, NuxModelConfig):
            raise TypeError(f"NuxModel takes a NuxModelConfig, got {type(config).__name__}")
        self.config = config
        self._runner: Runner | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def ready(self) -> bool:
        return self._runner is not None

    async def load(self) -> bool:
        if self._runner is None:
            c = self.config
            self._runner = await create_runner(c.model, device=c.npu_device, worker_num=c.worker_num,
                                               batch_size=c.batch_size, compiler_config=c.compiler_config)
        return True

    async def predict(self, payload: np.ndarray | list[np.ndarray]) -> list[np.ndarray]:
        if self._runner is None:
            raise SessionClosed(f"model {self.name!r} is not loaded; await model.load() first")
        return await self._runner.run(payload)

    async def unload(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.close()


FuriosaRTModelConfig = NuxModelConfig
FuriosaRTModel = NuxModel
