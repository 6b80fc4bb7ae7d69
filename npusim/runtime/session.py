"""The SDK's ``furiosa.runtime.session``: the legacy blocking session and the async submitter/queue pair."""

from npusim.client.session import create, create_async

__all__ = ["create", "create_async"]
