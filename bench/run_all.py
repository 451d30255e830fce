"""Run every benchmark in bench/ (bench_*.py), each in its own process; `make bench`.

Arguments are passed to every benchmark, e.g. `python bench/run_all.py --scale 0.25`
(each benchmark takes --scale: the fraction of its full, paper-sized workload)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"== {script.name} {' '.join(sys.argv[1:])}", flush=True)
        if subprocess.run([sys.executable, str(script), *sys.argv[1:]]).returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
