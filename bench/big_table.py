"""Big tables: the WESAD paper's protocol (60 s windows every 0.25 s, ~120k rows) built from synthetic raw
recordings of 15 subjects, through cv.py and an 8-trial search, against the 1k-row table.

Usage: python bench/big_table.py [--work DIR] [--epochs 2] [--folds 4] [--skip-cv | --skip-search]
Prints time per fold-epoch (training only, and the whole CV), the fold plan's time, peak RSS of the largest
process of each run, for the big table and the default 1k-row synthetic table under the same command.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBJECTS = "2,3,4,5,6,7,8,9,10,11,13,14,15,16,17"


def run(command, cwd=ROOT) -> tuple[float, float]:
    """Wall seconds and the peak RSS (MB) of the largest process the command ran."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) / 1024


def cv_row(label: str, data: list[str], args, work: Path) -> None:
    out = work / f"cv-{label}"
    command = [
        sys.executable,
        str(ROOT / "cv.py"),
        *data,
        "--cv",
        "group-kfold",
        "--folds",
        str(args.folds),
        "--epochs",
        str(args.epochs),
        "--set",
        "train.patience=0",
        "--no-progress",
        "--out",
        str(out),
        "--set",
        f"cv.cache_dir={work}/cache-{label}",
    ]
    wall, peak = run(command)
    metrics = json.loads((out / "metrics.json").read_text())
    rows, folds = metrics["data"]["windows"], len(metrics["folds"])
    fold_epochs = folds * args.epochs
    train_s = sum(f["seconds"] for f in metrics["folds"])
    print(
        f"| cv.py, {label}, {rows:,} rows | plan {metrics['seconds']['fold_plan']:.1f} s | CV "
        f"{metrics['seconds']['cv']:.1f} s "
        f"= {metrics['seconds']['cv'] / fold_epochs:.3f} s per fold-epoch "
        f"({train_s / fold_epochs * 1e3 / rows * 1000:.2f} ms "
        f"per fold-epoch per 1k rows, training) | whole process {wall:.0f} s | peak RSS {peak:.0f} MB |",
        flush=True,
    )


def search_row(label: str, data: list[str], args, work: Path) -> None:
    command = [
        sys.executable,
        str(ROOT / "search.py"),
        *data,
        "--num-samples",
        "8",
        "--epochs",
        str(args.epochs),
        "--cv",
        "group-kfold",
        "--folds",
        str(args.folds),
        "--storage-path",
        str(work),
        "--name",
        f"search-{label}",
        "--set",
        f"cv.cache_dir={work}/cache-search-{label}",
        "--no-prune",
    ]
    wall, peak = run(command)
    trials = __import__("pandas").read_csv(work / f"search-{label}" / "trials.csv")
    print(
        f"| search.py, 8 trials, {label} | whole process {wall:.0f} s, trials {trials['seconds'].sum():.0f} s of trial "
        f"time | peak RSS {peak:.0f} MB |",
        flush=True,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/emoma-big")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--folds", type=int, default=4)
    skip = p.add_mutually_exclusive_group()
    skip.add_argument("--skip-cv", action="store_true", help="run only the 8-trial searches")
    skip.add_argument("--skip-search", action="store_true", help="run only cv.py")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    big = work / "paper.csv"
    if not big.is_file():
        raw = work / "WESAD"
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "emoma.prepare.synthetic", str(raw), "--subjects", SUBJECTS],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        made = time.perf_counter() - start
        wall, peak = run(
            [
                sys.executable,
                "-m",
                "emoma.prepare",
                "--wesad-dir",
                str(raw),
                "--out",
                str(big),
                "--window-s",
                "60",
                "--shift-s",
                "0.25",
                "--jobs",
                "2",
                "--no-progress",
            ]
        )
        print(
            f"| synthetic raw recordings of 15 subjects | {made:.0f} s | prepare --window-s 60 --shift-s 0.25 | "
            f"{wall:.0f} s, peak RSS {peak:.0f} MB |",
            flush=True,
        )
    if not args.skip_cv:
        for label, data in (("1k-row synthetic", []), ("paper protocol", ["--data", str(big)])):
            cv_row(label, data, args, work)
    if not args.skip_search:
        for label, data in (("1k-row synthetic", []), ("paper protocol", ["--data", str(big)])):
            search_row(label, data, args, work)


if __name__ == "__main__":
    main()
