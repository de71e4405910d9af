"""Benchmark, run by hand: python bench/prepare_wesad.py [--repeats 3] [--scale 1.0]

Writes one synthetic subject of full WESAD length (scale 1: ~100 minutes, emoma.prepare.synthetic) and times
`python -m emoma.prepare` on it, each setting in its own process: wall time (median of repeats, including
the interpreter start and imports) and that process's peak resident memory (VmHWM). Figures go to stdout as
Markdown rows; copy them into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from emoma.prepare.synthetic import write_subject

SETTINGS = {
    "default (wrist + resp, 30 s windows)": [],
    "--compat-bugs": ["--compat-bugs"],
    "--signals all": ["--signals", "all"],
    "--signals all --window-s 60 --shift-s 0.25 (WESAD paper protocol)": [
        "--signals",
        "all",
        "--window-s",
        "60",
        "--shift-s",
        "0.25",
    ],
}


def run_once(wesad: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one prepare process."""
    start = time.perf_counter()
    # VmHWM, not getrusage: ru_maxrss would include this parent's RSS at the fork
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from emoma.prepare.features import main\n"
            "try:\n    main(sys.argv[1:])\nfinally:\n"
            "    print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0], file=sys.stderr)",
            "--wesad-dir",
            str(wesad),
            "--out",
            str(out),
            "--jobs",
            "1",
            "--no-progress",
            *extra,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - start
    return wall, int(proc.stderr.strip().splitlines()[-1]) / 1024


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scale", type=float, default=1.0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wesad = Path(tmp) / "WESAD"
        folder = write_subject(wesad, 2, scale=args.scale)
        size_mb = (folder / "S2.pkl").stat().st_size / 2**20
        print(f"one synthetic subject: scale {args.scale}, pickle {size_mb:.0f} MB\n")
        print("| setting | windows | wall s (median) | peak RSS MB |\n|---|---|---|---|")
        for name, extra in SETTINGS.items():
            out = Path(tmp) / "merged.csv"
            runs = [run_once(wesad, out, extra) for _ in range(args.repeats)]
            windows = len(pd.read_csv(out))
            print(
                f"| {name} | {windows} | {statistics.median(r[0] for r in runs):.1f} | {max(r[1] for r in runs):.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
