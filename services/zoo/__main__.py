"""``python -m npusim.services.zoo``: build every registered model and print its shapes, cost and build time."""

from __future__ import annotations

import sys
import time

from . import MODELS, build, macs, params


def _shape(vi: object) -> str:
    return "×".join(str(d.dim_value) for d in vi.type.tensor_type.shape.dim)  # type: ignore[attr-defined]


def main(names: list[str]) -> None:
    for name in names or list(MODELS):
        t = time.perf_counter()
        m = build(name)
        dt = time.perf_counter() - t
        ins = ", ".join(f"{i.name} {_shape(i)}" for i in m.graph.input)
        outs = ", ".join(f"{o.name} {_shape(o)}" for o in m.graph.output)
        print(f"{name:16s} {macs(m) / 1e9:7.3f} GMAC {params(m) / 1e6:8.3f} M params  built in {dt:5.2f} s"
              f"   {ins} → {outs}")


if __name__ == "__main__":
    main(sys.argv[1:])
