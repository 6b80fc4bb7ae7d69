"""The slice array: how many cycles one image's MAC or vector operator keeps the slices busy.

Each slice is a small weight-stationary array of ``lanes_per_slice`` columns and
``macs_per_slice / lanes_per_slice`` rows (32 x 4, research/hardware.md). A *fold* loads a tile
of weights and streams ``T`` operand vectors through it; SCALE-Sim's analytical model gives a
fold ``2·rows + columns + T − 2`` cycles (Samajdar et al., "A systematic methodology for
characterizing scalability of DNN accelerators using SCALE-Sim", ISPASS 2020). The reduction
runs down the rows, so an output takes ⌈depth / rows⌉ folds in one slice, one after another.

Two ways to fill the 32 columns, and the compiler keeps the faster for each operator:

- ``channels``: one output channel per column; a fold streams the pixels of its share.
- ``width``: 32 neighbouring pixels of a lowered row per column (the layout pads the width to
  32 for this, services/layout.py), one output channel's weights broadcast; a fold streams rows.

The steady state streams ``stream_efficiency`` operand vectors a cycle (the one fitted
property of the array, services/hw.py), so a fold takes ``T / efficiency + 2·rows + columns − 2``.
The work is dealt out to the slices in units (a column tile of channels or one channel, times
a share of the pixels); the slowest slice sets the time. An output's reduction stays in one
slice, whose accumulators hold its partial sums: the spec publishes no path that adds partial
sums across slices. A batch repeats one image's schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from npusim.services.cost.work import Gemm
from npusim.services.hw import Hardware

__all__ = ["ArrayCost", "fold_overhead", "mac_cycles", "vector_cycles"]


@dataclass(frozen=True)
class ArrayCost:
    cycles: float  # one image, every piece, on the given slices
    mapping: str  # "channels" | "width"
    split: int  # slices one unit's pixels are shared over
    folds: int  # folds the busiest slice runs
    stream: int  # operand vectors per fold (T)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def array_rows(hw: Hardware) -> int:
    return max(hw.macs_per_slice // hw.lanes_per_slice, 1)


def fold_overhead(hw: Hardware) -> int:
    """SCALE-Sim's fill and drain of one weight-stationary fold: ``2·rows + columns − 2``."""
    return 2 * array_rows(hw) + hw.lanes_per_slice - 2


@lru_cache(maxsize=4096)
def _piece(g: Gemm, groups: int, slices: int, hw: Hardware, efficiency: float) -> ArrayCost:
    lanes, over = hw.lanes_per_slice, fold_overhead(hw)
    depth_folds = _cdiv(g.depth, array_rows(hw))
    chunks = g.rows * _cdiv(g.width, lanes)  # lowered rows of 32 pixels
    best: ArrayCost | None = None
    for mapping, tiles, stream in (("channels", groups * _cdiv(g.cout, lanes), g.pixels),
                                   ("width", groups * g.cout, chunks)):
        for split in range(1, min(slices, stream) + 1):
            t = _cdiv(stream, split)
            if split > 1 and _cdiv(stream, split - 1) == t:
                continue  # the same stream per slice as a smaller split, with more units
            folds = _cdiv(tiles * split, slices) * depth_folds
            cycles = folds * (t / efficiency + over)
            if best is None or cycles < best.cycles:
                best = ArrayCost(cycles, mapping, split, folds, t)
    assert best is not None
    return best


def mac_cycles(g: Gemm, slices: int, hw: Hardware, pieces: int = 1, efficiency: float = 1.0) -> ArrayCost:
    """One image of a MAC operator; a Conv split into ``pieces`` runs its pieces one after another."""
    if pieces <= 1:
        return _piece(g, g.groups, slices, hw, efficiency)
    per = _cdiv(g.groups, pieces)
    full = _piece(g, per, slices, hw, efficiency)
    last_groups = g.groups - per * (pieces - 1)
    last = full if last_groups == per else _piece(g, last_groups, slices, hw, efficiency)
    return ArrayCost(full.cycles * (pieces - 1) + last.cycles, full.mapping, full.split,
                     full.folds * (pieces - 1) + last.folds, full.stream)


def vector_cycles(ops: int, slices: int, hw: Hardware, efficiency: float = 1.0) -> float:
    """One image of a vector operator: its element-operations streamed over every lane in one
    pass, which fills and drains the slice's pipeline once, as a fold does."""
    if ops <= 0:
        return 0.0
    return _cdiv(ops, slices * hw.lanes_per_slice) / efficiency + fold_overhead(hw)
