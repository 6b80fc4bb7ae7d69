"""The SDK's ``furiosa.server``: the serving framework's model objects live in ``npusim.server.model``."""

__all__: list[str] = []
