"""What the whole-process benchmarks share: timing one process, and the table of median times against a reference.

Imported by the scripts beside it (run as ``python benchmarks/<script>.py``, which puts this folder on the path).
"""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path


def wall_seconds(command: list[str], cwd: Path | None = None) -> float:
    """Wall time of one process; exits with the end of its stderr if it fails."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command[:5])} ... failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def print_median_table(seconds: dict[str, list[float]], reference: str, first_column: str, digits: int = 1) -> None:
    """A markdown table: each row's median seconds and its ratio to the median of row ``reference``."""
    base = statistics.median(seconds[reference])
    print(f"| {first_column} | seconds | / {reference} |")
    print("|---|---:|---:|")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.{digits}f} | {median / base:.2f} |")
