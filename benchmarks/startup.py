"""How long `vdistill` commands take to start, next to `python -c "import lightning.pytorch"`.

Whole processes, side by side in one run (machines here are noisy, so ratios matter), each the median of
--repeats: the import of Lightning alone, then `vdistill --help` and the data commands' `--help` (which should
import neither torch nor Lightning), then `vdistill fit --help` (which must import Lightning to list its options).
Target (#11): `vdistill --help` and convert/synth/inspect within 1.5x the Lightning import.

    python benchmarks/startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import sys

from timing import print_median_table, wall_seconds

IMPORT = "`import lightning.pytorch`"
COMMANDS = {
    IMPORT: ["-c", "import lightning.pytorch"],
    "`vdistill --help`": ["-m", "lightning_distill.cli.main", "--help"],
    "`vdistill convert --help`": ["-m", "lightning_distill.cli.main", "convert", "--help"],
    "`vdistill synth --help`": ["-m", "lightning_distill.cli.main", "synth", "--help"],
    "`vdistill inspect --help`": ["-m", "lightning_distill.cli.main", "inspect", "--help"],
    "`vdistill fit --help`": ["-m", "lightning_distill.cli.main", "fit", "--help"],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="processes per command; the median is shown")
    args = parser.parse_args(argv)
    # Interleaved rounds, so a slow spell of the machine falls on every command alike.
    seconds: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            seconds[name].append(wall_seconds([sys.executable, *command]))
    print(f"whole processes, median of {args.repeats}; {IMPORT} is `python -c \"import lightning.pytorch\"`\n")
    print_median_table(seconds, IMPORT, "command", digits=2)


if __name__ == "__main__":
    main()
