"""The SDK's ``furiosa.runtime``: runners and queues on asyncio; ``sync`` has their blocking twins,
``session`` the legacy session API and ``profiler`` the profiler."""

from npusim.client._runtime import create_queue, create_runner
from npusim.runtime import sync

__all__ = ["create_queue", "create_runner", "sync"]
