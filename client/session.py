"""``from client import session``: the SDK's legacy session module, for code written against it."""

from client._session import Session, create

__all__ = ["Session", "create"]
