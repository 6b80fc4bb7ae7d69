"""The SDK's ``furiosa.server.model``: a model object for asyncio services (``await load()``, ``await predict(x)``)."""

from npusim.client.serving import NuxModel, NuxModelConfig

__all__ = ["NuxModel", "NuxModelConfig"]
