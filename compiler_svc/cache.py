"""Content-addressed program cache: a key (:func:`npusim.compiler_svc.pipeline.cache_key`) → .enf bytes.

The key is a sha256 over everything a program depends on — the model bytes, the compile
options, the npusim/onnx/onnxruntime versions, the hardware and timing constants, the
program format version, and :func:`compiler_digest` of the compiler's own source — so an
upgraded compiler (even an unreleased edit) never serves a program an older one made.

Entries are files named by their key; a read refreshes the file's mtime, and when the
directory outgrows its limit the least recently used entries go first. An entry that no
longer parses (cut off, or written by another program format) is deleted and counts as a
miss, so the caller compiles again instead of failing.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path

from npusim.services.config import env_int
from npusim.services.errors import ConfigError
from npusim.services.program import Program

__all__ = ["ProgramCache", "compiler_digest", "default_cache_dir"]

log = logging.getLogger("npusim.compiler")

ENV_CACHE_DIR = "NPUSIM_CACHE_DIR"
ENV_CACHE_MAX = "NPUSIM_CACHE_MAX_BYTES"


@functools.cache
def compiler_digest() -> str:
    """sha256 of the compiler's source: every .py file under compiler_svc/ and services/cost/, and
    the services modules a program's content depends on (its format, the layouts, the hardware
    constants and fitted parameters' code, the timing engine).

    The version number only moves on a release; hashing the source makes any change to a pass,
    the partitioner or the cost model a new cache key. Computed once per process.
    """
    package = Path(__file__).resolve().parent
    root = package.parent
    services = root / "services"
    files = (sorted(package.rglob("*.py")) + sorted((services / "cost").rglob("*.py"))
             + [services / name for name in ("program.py", "layout.py", "hw.py", "timing.py")])
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


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

    def load(self, key: str) -> tuple[bytes, Program] | None:
        """The entry and its program, or None; an entry that does not parse is deleted (a miss)."""
        data = self.get(key)
        if data is None:
            return None
        try:
            program = Program.from_bytes(data)
        except Exception as e:  # noqa: BLE001 - whatever is wrong with the file, compiling again fixes it
            log.warning("deleting unreadable program cache entry %s: %s", self._path(key), e)
            self.discard(key)
            self.hits -= 1
            self.misses += 1
            return None
        return data, program

    def discard(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as e:
            log.warning("could not delete program cache entry %s: %s", self._path(key), e.strerror)

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
