"""The SDK's device-string grammar: which PEs of which emulated devices a session wants.

    warboy(2)*1        one fused pe0-1 on any free device (warboy*N == warboy(1)*N)
    warboy(1)*2        two single PEs anywhere
    npu:0:0  npu:0:0-1  npu:0      PE 0 of npu0, its fused pair, the whole device (= fused)
    npu0pe1  npu0pe0-1  npu0       the same in device-file form
    npu:0:0,npu:1:0    comma lists; named entries are allocated before implicit ones
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from npusim.services.errors import ConfigError

__all__ = ["NamedPe", "AnyPe", "DeviceSpec", "parse_devices", "target_of", "assign_pes", "PE_NAMES", "DEFAULT_DEVICES"]

PE_NAMES = ("pe0", "pe1", "pe0-1")
DEFAULT_DEVICES = "warboy(2)*1"

_ANY = re.compile(r"^warboy(?:\((\d+)\))?\*(\d+)$")
_COLON = re.compile(r"^npu:(\d+)(?::(\d+)(?:-(\d+))?)?$")
_FILE = re.compile(r"^npu(\d+)(?:pe(\d+)(?:-(\d+))?)?$")

_GRAMMAR = ("expected warboy(1)*N, warboy(2)*N, npu:X, npu:X:Y, npu:X:Y-Z, npuX, npuXpeY or npuXpeY-Z "
            "(comma-separated)")


@dataclass(frozen=True)
class NamedPe:
    """One device file: ``npu{device}{pe}``."""

    device: int
    pe: str  # "pe0" | "pe1" | "pe0-1"

    @property
    def device_name(self) -> str:
        return f"npu{self.device}"

    def __str__(self) -> str:
        return f"npu{self.device}{self.pe}"


@dataclass(frozen=True)
class AnyPe:
    """``warboy(pes)*count``: any free PEs of that kind."""

    pes: int
    count: int

    @property
    def pe(self) -> str:
        return "pe0-1" if self.pes == 2 else "pe0"

    def __str__(self) -> str:
        return f"warboy({self.pes})*{self.count}"


DeviceSpec = NamedPe | AnyPe


def _pe(first: str | None, last: str | None, item: str) -> str:
    if first is None:
        return "pe0-1"
    a = int(first)
    if last is None:
        if a > 1:
            raise ConfigError(f"{item!r}: a Warboy has PEs 0 and 1 only")
        return f"pe{a}"
    if (a, int(last)) != (0, 1):
        raise ConfigError(f"{item!r}: the only fused PE of a Warboy is 0-1")
    return "pe0-1"


def parse_devices(text: str) -> list[DeviceSpec]:
    """Parse a device string; named entries come first in the result, as allocation wants."""
    items = [x.strip() for x in str(text).split(",")]
    if not text or not all(items):
        raise ConfigError(f"empty device in {text!r}; {_GRAMMAR}")
    named: list[DeviceSpec] = []
    implicit: list[DeviceSpec] = []
    for item in items:
        if m := _ANY.match(item):
            pes, count = int(m.group(1) or 1), int(m.group(2))
            if pes not in (1, 2) or count < 1:
                raise ConfigError(f"{item!r}: warboy(X)*Y needs X in 1..2 and Y >= 1")
            implicit.append(AnyPe(pes, count))
        elif (m := _COLON.match(item)) or (m := _FILE.match(item)):
            named.append(NamedPe(int(m.group(1)), _pe(m.group(2), m.group(3), item)))
        else:
            raise ConfigError(f"cannot parse device {item!r}; {_GRAMMAR}")
    seen: set[tuple[int, str]] = set()
    for spec in named:
        assert isinstance(spec, NamedPe)
        key = (spec.device, spec.pe)
        overlapping = {(spec.device, p) for p in PE_NAMES if p == spec.pe or "pe0-1" in (p, spec.pe)}
        if seen & overlapping:
            raise ConfigError(f"{text!r} names overlapping PEs of npu{spec.device}")
        seen.add(key)
    return named + implicit


def target_of(specs: list[DeviceSpec]) -> str:
    """The compile target all of a session's PEs share, or ConfigError for a mix."""
    kinds = {s.pe == "pe0-1" for s in specs}
    if len(kinds) > 1:
        asked = ", ".join(str(s) for s in specs)
        raise ConfigError(f"device {asked!r} mixes fused (pe0-1) and single PEs; a session runs one program, so "
                          "ask for all fused (e.g. 'warboy(2)*2') or all single (e.g. 'warboy(1)*2')")
    return "warboy-2pe" if kinds.pop() else "warboy"


def _overlap(a: tuple[int, str], b: tuple[int, str]) -> bool:
    return a[0] == b[0] and (a[1] == b[1] or "pe0-1" in (a[1], b[1]))


def assign_pes(specs: list[DeviceSpec]) -> list[tuple[int, str]]:
    """The (device, PE) each wanted PE gets when every device is free and there are as many as
    needed, in the order the client opens them: named ones as named, then each ``warboy(X)*Y``
    takes the first free PE of its kind, device by device (``warboy(1)*2`` is npu0's pe0 and pe1)."""
    taken: list[tuple[int, str]] = []
    for spec in specs:
        if isinstance(spec, NamedPe):
            taken.append((spec.device, spec.pe))
            continue
        for _ in range(spec.count):
            kinds = ["pe0-1"] if spec.pes == 2 else ["pe0", "pe1"]
            device = 0
            while True:
                free = [pe for pe in kinds if not any(_overlap((device, pe), t) for t in taken)]
                if free:
                    taken.append((device, free[0]))
                    break
                device += 1
    return taken
