"""Run the benchmarks in bench/ (bench_*.py), each in its own process; `make bench`.

python bench/run_all.py                        # every benchmark (`make bench` sizes)
python bench/run_all.py reduce --scale 0.25    # one benchmark (bench_reduce.py), with
                                               # these arguments (see its --help)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# `make bench` (no arguments) runs these smaller than their own defaults, to stay within
# 15 minutes on 2 cores; the README's table gives the full-size commands.
MAKE_BENCH_ARGS = {
    "bench_e2e": ["--scale", "0.02"],  # 1,600 steps, not 4,000 (the full sweep: ~21 min)
}


def main(argv: list[str]) -> int:
    every = sorted(HERE.glob("bench_*.py"))
    scripts, extra = every, []
    if argv:
        name, *extra = argv
        scripts = [s for s in every if s.stem in (name, f"bench_{name}")]
        if not scripts:
            known = ", ".join(s.stem.removeprefix("bench_") for s in every)
            print(f"no benchmark {name!r}; there are: {known}")
            return 2
    failed = []
    for script in scripts:
        args = extra if argv else MAKE_BENCH_ARGS.get(script.stem, [])
        print(f"== {script.name} {' '.join(args)}", flush=True)
        if subprocess.run([sys.executable, str(script), *args]).returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
