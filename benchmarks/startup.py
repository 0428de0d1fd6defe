"""How long `engine --help` takes, whole process, and which data libraries it loads.

    uv run python -m benchmarks.startup [--runs 20]

Runs the installed `engine` console script (the one `uv run engine` starts) `--runs` times
after one warm-up, and prints the fastest, the median and the slowest wall time.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

DATA_LIBRARIES = ("polars", "duckdb", "connectorx", "pyarrow", "adbc_driver_manager", "numpy")


def time_help(engine: str, runs: int) -> list[float]:
    subprocess.run([engine, "--help"], check=True, capture_output=True)  # warm the page cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([engine, "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def data_libraries_loaded() -> list[str]:
    script = ("import sys; sys.argv = ['engine', '--help']\nfrom engine.cli import main\n"
              "try:\n    main()\nexcept SystemExit:\n    pass\n"
              f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(DATA_LIBRARIES)!r}))")
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    engine = shutil.which("engine") or str(Path(sys.executable).parent / "engine")
    times = time_help(engine, args.runs)
    print(f"engine --help, whole process, {args.runs} runs: fastest {min(times):.3f} s · "
          f"median {statistics.median(times):.3f} s · slowest {max(times):.3f} s")
    print(f"data libraries loaded: {data_libraries_loaded()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
