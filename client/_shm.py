"""Shared-memory arenas between the client and each of its workers.

Every worker owns one arena: a file in ``/dev/shm`` (mode 0600) that both processes map.
It holds one slot per model input and one per output, laid out from the program, so a job
moves through the client↔worker hop as a header-only ZeroMQ message: the client copies
the inputs in, the worker computes straight from the mapping, writes the outputs back, and
the client copies them out. A worker runs one job at a time, so a slot is never shared.

The client unlinks the file as soon as the worker has mapped it, and a worker whose client
died removes the client's leftover arenas, so crashes leak nothing for long.
"""

from __future__ import annotations

import mmap
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npusim.services.layout import padded
from npusim.services.program import Program, TensorSpec

__all__ = ["Arena", "Layout", "layout_of", "SHM_DIR", "remove_leftovers"]

SHM_DIR = Path("/dev/shm")
_ALIGN = 64


@dataclass(frozen=True)
class Layout:
    inputs: list[tuple[int, TensorSpec]]
    outputs: list[tuple[int, TensorSpec]]
    size: int


def layout_of(program: Program) -> Layout:
    offset = 0
    slots: list[list[tuple[int, TensorSpec]]] = [[], []]
    for group, specs in zip(slots, (program.inputs, program.outputs)):
        for spec in specs:
            group.append((offset, spec))
            offset += padded(spec.size, _ALIGN)
    return Layout(slots[0], slots[1], max(offset, _ALIGN))


class Arena:
    """A mapped arena; ``inputs``/``outputs`` are numpy views of its slots."""

    def __init__(self, path: Path, layout: Layout, *, create: bool) -> None:
        self.path = path
        self.layout = layout
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                # Reserve the pages now: a sparse file on a full tmpfs would SIGBUS on first write.
                os.posix_fallocate(fd, 0, layout.size)
            elif os.fstat(fd).st_size < layout.size:
                raise ValueError(f"arena {path} is {os.fstat(fd).st_size} bytes, the program needs {layout.size}")
            self._map = mmap.mmap(fd, layout.size)
        except BaseException:
            if create:
                path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        self.inputs = [self._view(o, s) for o, s in layout.inputs]
        self.outputs = [self._view(o, s) for o, s in layout.outputs]

    def _view(self, offset: int, spec: TensorSpec) -> np.ndarray:
        dt = np.dtype(spec.dtype)
        return np.frombuffer(self._map, dtype=dt, count=spec.length, offset=offset).reshape(spec.shape)

    @classmethod
    def create(cls, program: Program, tag: str) -> Arena | None:
        """A new arena for ``program``, or None where /dev/shm is unavailable (frames are used)."""
        if not SHM_DIR.is_dir():
            return None
        path = SHM_DIR / f"npusim-{os.getpid()}-{tag}-{secrets.token_hex(4)}"
        try:
            return cls(path, layout_of(program), create=True)
        except OSError:
            return None

    def unlink(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def close(self) -> None:
        self.inputs = []
        self.outputs = []
        try:
            self._map.close()
        except BufferError:
            pass  # a view is still referenced (e.g. by a pending send); the GC unmaps it later


def remove_leftovers(client_pid: int) -> None:
    """Remove arenas a dead client left behind (its workers call this when orphaned)."""
    for path in SHM_DIR.glob(f"npusim-{client_pid}-*"):
        path.unlink(missing_ok=True)
