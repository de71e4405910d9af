"""How much of a context model's score rests on windows whose context crosses a change of condition.

On a table without time_s, row order is taken as time order; the published WESAD table lists baseline, stress,
amusement for every subject, so the first k-1 windows of each block read windows of the previous condition in
an order fixed by the labels. This scores a cv.py run on those windows and on all the others (an analysis
that reads labels; nothing here feeds back into training).

Usage: python bench/boundary_windows.py RESULTS_FOLDER [--context 4]
"""

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--context", type=int, help="windows per sample (default: the run's model.context)")
    args = p.parse_args()
    folder = Path(args.folder)
    predictions = pd.read_csv(folder / "predictions.csv").sort_values("row").reset_index(drop=True)
    metrics = json.loads((folder / "metrics.json").read_text())
    k = args.context or metrics["inputs"]["context_windows"]
    print(f"{folder}: context {k}")
    for label, scores in boundary_scores(predictions, k).items():
        print(f"  {label:<50} n={scores['n']:4d}  accuracy {scores['accuracy']:.3f}  macro-F1 {scores['macro_f1']:.3f}")


def boundary_scores(predictions: pd.DataFrame, k: int, conditions: np.ndarray | None = None) -> dict[str, dict]:
    """Accuracy and macro-F1 of a run's predictions (sorted by row, index 0..n-1) on the windows whose context of
    k crosses a condition change, on all the others, and on all. Conditions: each prediction's condition where
    the task's classes merge some (binary), else its true class."""
    near = np.zeros(len(predictions), dtype=bool)
    condition = predictions["true"].to_numpy() if conditions is None else np.asarray(conditions)
    for _, rows in predictions.groupby("subject", sort=False):  # rows of a subject, in table (time) order
        labels = condition[rows.index]
        for start in np.flatnonzero(labels[1:] != labels[:-1]) + 1:  # the first window of each new block
            near[rows.index[start : start + k - 1]] = True
    out = {}
    for label, part in (
        ("windows whose context crosses a condition change", near),
        ("all other windows", ~near),
        ("all windows", np.ones_like(near)),
    ):
        rows = predictions[part]
        out[label] = {
            "n": int(len(rows)),
            "accuracy": float(accuracy_score(rows["true"], rows["predicted"])),
            "macro_f1": float(f1_score(rows["true"], rows["predicted"], average="macro")),
        }
    return out


if __name__ == "__main__":
    main()
