"""The emulated chip: Warboy-class constants, read by the compiler's cost model and the daemon.

Every constant is a field so a what-if study can change it (``dataclasses.replace``);
the defaults are the public spec sheet (../shared/research/hardware.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.errors import ConfigError

__all__ = ["Hardware", "WARBOY", "TimingParams", "TIMING", "TARGETS", "Target", "target"]


@dataclass(frozen=True)
class Hardware:
    clock_hz: float = 2.0e9
    pes: int = 2
    slices_per_pe: int = 64
    macs_per_slice: int = 128  # 32 x 4 int8 MAC lanes per cycle
    sram_per_slice: int = 256 * 1024
    dram_bytes_per_s: float = 66e9  # LPDDR4X-4266, shared by both PEs
    pcie_bytes_per_s: float = 15.75e9  # Gen4 x8, per direction
    io_alignment: int = 64
    vector_lanes_per_slice: int = 32  # int8 elements per cycle for non-MAC work


WARBOY = Hardware()


@dataclass(frozen=True)
class TimingParams:
    """The timing model's free parameters: at most three, fitted on ResNet-50 only.

    The defaults are priors until the fit (``benchmarks/fidelity.py``) replaces them.
    """

    mac_efficiency: float = 0.5  # fraction of peak MAC/cycle a well-shaped layer reaches
    op_overhead_cycles: float = 2000.0  # per NPU operator: instruction issue, pipeline fill
    job_overhead_ns: float = 20_000.0  # per job: doorbell, descriptor set-up, completion interrupt


TIMING = TimingParams()


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
