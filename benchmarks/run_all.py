"""Run every benchmark; ``--json`` prints one JSON object keyed by benchmark name.

    python benchmarks/run_all.py [--smoke] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = sorted(p.stem for p in HERE.glob("*.py") if p.stem not in ("run_all",) and not p.stem.startswith("_"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results, failed = {}, []
    for name in BENCHMARKS:
        cmd = [sys.executable, str(HERE / f"{name}.py")] + (["--smoke"] if args.smoke else [])
        if args.json:
            proc = subprocess.run(cmd + ["--json"], capture_output=True, text=True)
            if proc.returncode == 0:
                results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            else:
                failed.append(name)
                results[name] = {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
        else:
            print(f"== {name}", flush=True)
            if subprocess.run(cmd).returncode != 0:
                failed.append(name)
    if args.json:
        print(json.dumps(results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
