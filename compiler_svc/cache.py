"""Content-addressed program cache: sha256(npusim version, options, model bytes) → .enf bytes.

Entries are files named by their key; a read refreshes the file's mtime, and when the
directory outgrows its limit the least recently used entries go first.
"""

from __future__ import annotations

import os
from pathlib import Path

from services.config import env_int
from services.errors import ConfigError

__all__ = ["ProgramCache", "default_cache_dir"]

ENV_CACHE_DIR = "NPUSIM_CACHE_DIR"
ENV_CACHE_MAX = "NPUSIM_CACHE_MAX_BYTES"


def default_cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "npusim" / "programs"


class ProgramCache:
    def __init__(self, directory: Path | None = None, *, max_bytes: int | None = None) -> None:
        self.directory = directory or default_cache_dir()
        self.max_bytes = max_bytes if max_bytes is not None else env_int(ENV_CACHE_MAX, 1 << 30, minimum=0)
        self.enabled = self.max_bytes > 0
        if self.enabled:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"cannot create the program cache {self.directory}: {e.strerror}; set "
                                  f"{ENV_CACHE_DIR} to a writable directory or {ENV_CACHE_MAX}=0") from None
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.enf"

    def get(self, key: str) -> bytes | None:
        if not self.enabled:
            return None
        path = self._path(key)
        try:
            data = path.read_bytes()
            os.utime(path)
        except OSError:
            self.misses += 1
            return None
        self.hits += 1
        return data

    def put(self, key: str, data: bytes) -> None:
        if not self.enabled or len(data) > self.max_bytes:
            return
        tmp = self.directory / f".{key}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self._path(key))
        self._evict()

    def _evict(self) -> None:
        entries = []
        for p in self.directory.glob("*.enf"):
            try:
                st = p.stat()
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries):
            if total <= self.max_bytes:
                break
            p.unlink(missing_ok=True)
            total -= size

    def info(self) -> dict[str, object]:
        return {"dir": str(self.directory), "max_bytes": self.max_bytes, "hits": self.hits, "misses": self.misses}
