"""Wilcoxon against ASHA pruning over folds: the same search budget, the same seed, one after the other.

Usage: python bench/pruners.py --data ../shared/data/wesad_merged.csv [--num-samples 30] [--also-none]
Each search runs as a user types it (search.py in a fresh process) into a temporary folder; the table gives
wall time, trials completed and pruned, the best CV score and the held-out score of the retrained best.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data")
    p.add_argument("--num-samples", type=int, default=30)
    p.add_argument("--also-none", action="store_true", help="also a search without pruning")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more search.py options")
    args = p.parse_args()
    runs = [["--pruner", "wilcoxon"], ["--pruner", "asha"]] + ([["--no-prune"]] if args.also_none else [])
    print("| pruning | wall | trials completed / pruned | best CV macro-F1 | held-out macro-F1 (final) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for i, flags in enumerate(runs):
            name = f"p{i}"
            command = [
                sys.executable,
                str(ROOT / "search.py"),
                "--num-samples",
                str(args.num_samples),
                "--storage-path",
                tmp,
                "--name",
                name,
                *flags,
                *(["--data", args.data] if args.data else []),
                *args.extra,
            ]
            start = time.perf_counter()
            subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
            wall = time.perf_counter() - start
            trials = pd.read_csv(Path(tmp) / name / "trials.csv")
            held = json.loads((Path(tmp) / name / "holdout_metrics.json").read_text())
            done = trials[trials["status"] == "completed"]
            print(
                f"| {' '.join(flags)} | {wall / 60:.1f} min | {len(done)} / {int((trials['status'] == 'pruned').sum())}"
                f" | {done['mean'].max():.4f} | {held['models']['final']['macro_f1']:.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
