"""``python -m npusim.compiler_svc``: the compiler service (what ``npusim up`` spawns)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import zmq

from npusim.services.errors import NpusimError


def main(argv: list[str] | None = None) -> int:
    from npusim.compiler_svc.cache import ProgramCache
    from npusim.compiler_svc.server import CompilerService
    from npusim.services.runner import common_args, prepare, serve, service_kwargs

    p = argparse.ArgumentParser(prog="python -m npusim.compiler_svc", description=__doc__)
    common_args(p, default_name="compiler")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--cache-max-bytes", type=int, default=None)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    try:
        rdir, endpoint = prepare(args, kind="compiler")
        cache = ProgramCache(Path(args.cache_dir) if args.cache_dir else None, max_bytes=args.cache_max_bytes)
        service = CompilerService(args.name, endpoint, cache=cache, workers=args.workers, **service_kwargs(args))
    except (NpusimError, zmq.ZMQError) as e:
        print(f"npusim compiler: {e}", file=sys.stderr)
        return 2
    return serve(service, kind="compiler", rdir=rdir, ephemeral=args.ephemeral)


if __name__ == "__main__":
    sys.exit(main())
