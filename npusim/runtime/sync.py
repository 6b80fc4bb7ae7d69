"""The SDK's ``furiosa.runtime.sync``: the blocking twins of ``create_runner`` and ``create_queue``."""

from npusim.client.sync import create_queue, create_runner

__all__ = ["create_queue", "create_runner"]
