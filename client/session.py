"""``from client import session``: the SDK's legacy session module, for code written against it."""

from npusim.client._session import AsyncSession, CompletionQueue, Session, create, create_async

__all__ = ["AsyncSession", "CompletionQueue", "Session", "create", "create_async"]
