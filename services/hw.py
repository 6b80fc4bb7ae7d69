"""The emulated chip: Warboy-class constants, read by the compiler's cost model and the daemon.

Every constant is a field so a what-if study can change it (``dataclasses.replace``);
the defaults are the public spec sheet (../shared/research/hardware.md).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from npusim.services.errors import ConfigError

__all__ = ["Hardware", "WARBOY", "TimingParams", "TARGETS", "Target", "target", "timing_params",
           "with_overrides", "FITTED"]

FITTED = Path(__file__).with_name("timing.json")
"""The fitted timing parameters: plain config, written by ``benchmarks/fidelity.py --fit``."""


@dataclass(frozen=True)
class Hardware:
    """The chip and its host link. Each default is from a public source (docs/timing-model.md
    lists them): the spec sheet and published NPU configs in research/hardware.md, and for the
    PCIe latency the pcie-bench measurements."""

    clock_hz: float = 2.0e9
    slices_per_pe: int = 64
    macs_per_slice: int = 128  # 32 lanes x 4 rows of int8 MACs
    lanes_per_slice: int = 32  # the array's columns, and the lowered row's width unit
    sram_per_slice: int = 256 * 1024
    dram_bytes_per_s: float = 66e9  # LPDDR4X-4266, shared by both PEs
    pcie_bytes_per_s: float = 15.75e9  # Gen4 x8, per direction
    pcie_latency_ns: float = 1_000.0  # a DMA read's round trip (pcie-bench, docs/timing-model.md)


WARBOY = Hardware()


@dataclass(frozen=True)
class TimingParams:
    """The timing model's free parameters: two, fitted on ResNet-50 only (benchmarks/fidelity.py).

    The defaults are the physical ceiling (peak rate, no overhead) until the fit replaces them."""

    stream_efficiency: float = 1.0  # operand vectors a slice streams per cycle in a fold's steady state
    runtime_overhead_ns: float = 0.0  # per query, on the host: the runtime's submit and completion


@cache
def timing_params() -> TimingParams:
    """The fitted parameters (``services/timing.json``), or the priors when no fit exists."""
    try:
        data = json.loads(FITTED.read_text())
    except FileNotFoundError:
        return TimingParams()
    return TimingParams(**{f.name: float(data["params"][f.name]) for f in dataclasses.fields(TimingParams)
                           if f.name in data.get("params", {})})



def with_overrides(base: dataclasses.DataclassInstance, items: list[str] | dict[str, object]) -> object:
    """``base`` with ``KEY=VALUE`` overrides (``--hw sram_per_slice=131072``), for what-if studies."""
    pairs = items.items() if isinstance(items, dict) else [_split(i) for i in items]
    known = {f.name: f.type for f in dataclasses.fields(base)}
    changes: dict[str, object] = {}
    for key, value in pairs:
        if key not in known:
            raise ConfigError(f"unknown hardware knob {key!r}; knobs: {', '.join(known)}")
        kind = type(getattr(base, key))
        try:
            changes[key] = kind(float(value)) if kind is int else kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"hardware knob {key}={value!r}: expected a {kind.__name__}") from None
        if changes[key] <= 0:  # type: ignore[operator]
            raise ConfigError(f"hardware knob {key}={value!r} must be positive")
    return dataclasses.replace(base, **changes)


def _split(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep:
        raise ConfigError(f"hardware override {item!r}: write KEY=VALUE, e.g. sram_per_slice=131072")
    return key.strip(), value.strip()


@dataclass(frozen=True)
class Target:
    """What a program is compiled for: one PE, or both fused into one."""

    name: str
    pes: int
    hw: Hardware = WARBOY

    @property
    def slices(self) -> int:
        return self.pes * self.hw.slices_per_pe

    @property
    def macs_per_cycle(self) -> int:
        return self.slices * self.hw.macs_per_slice

    @property
    def sram_bytes(self) -> int:
        return self.slices * self.hw.sram_per_slice

    @property
    def pe_kind(self) -> str:
        """The device-file family a program for this target opens on."""
        return "fused" if self.pes == 2 else "single"


TARGETS = {"warboy": Target("warboy", 1), "warboy-2pe": Target("warboy-2pe", 2)}


def target(name: str, hw: Hardware = WARBOY) -> Target:
    try:
        t = TARGETS[name]
    except KeyError:
        raise ConfigError(f"unknown target_npu {name!r}; choose one of {', '.join(TARGETS)}") from None
    return t if hw is WARBOY else Target(t.name, t.pes, hw)
