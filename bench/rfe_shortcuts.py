"""Would a cheaper RFE keep the same features? Fewer rounds (a larger step) or fewer trees, per fold.

The fold plan of `cv.py --config configs/seed.yaml --cv kfold --folds 10` ranks features by RFE with 100-tree
forests at step 1; the model reads the top `model.n_features` in ranking order (the Conv1d sees that order).
For each cheaper setting this fits every fold's RFE again and counts the folds whose top-k list (in order) and
top-k set equal the reference's and the features the lists share, with the wall time on `--jobs` workers.

Usage: python bench/rfe_shortcuts.py --data ../shared/data/wesad_merged.csv [--config configs/seed.yaml]
"""

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from sklearn.preprocessing import StandardScaler

from emoma.config import load_config
from emoma.folds import inner_split, outer_splits, rank_features
from emoma.pipeline import model_table

ROOT = Path(__file__).resolve().parents[1]
# (rfe_step, rfe_trees, forest seed offset), the reference first; the last row is the reference's own seed noise
SETTINGS = [(1, 100, 0), (2, 100, 0), (3, 100, 0), (5, 100, 0), (10, 100, 0), (1, 50, 0), (1, 100, 1000)]


def top_k(table, cfg, seed: int, train_val: np.ndarray, k: int, forest_seed: int) -> np.ndarray:
    train, _ = inner_split(table.y, table.groups, train_val, cfg, seed)
    X = StandardScaler().fit(table.X[train]).transform(table.X[train])
    return rank_features(X, table.y[train], cfg, forest_seed, k)[:k]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--config", default=str(ROOT / "configs" / "seed.yaml"))
    p.add_argument("--cv", default="kfold")
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    config = load_config(args.config, [f"data.path={args.data}", f"cv.scheme={args.cv}", f"cv.folds={args.folds}"])
    table = model_table(config)
    k = config.model.n_features
    splits = outer_splits(table, config.cv, config.seed)
    print(f"{len(table.y)} rows, {len(table.feature_names)} features, top {k}, {len(splits)} folds ({args.cv})\n")
    print(
        "| RFE step | trees | forest seed | wall (10 rankings) | folds with the same top-k list | same top-k set "
        "| mean shared features |"
    )
    print("|---|---|---|---|---|---|---|")
    reference = None
    for step, trees, offset in SETTINGS:
        cfg = replace(config.cv, rfe_step=step, rfe_trees=trees)
        start = time.perf_counter()
        tops = Parallel(n_jobs=args.jobs)(
            delayed(top_k)(table, cfg, config.seed + i, train_val, k, config.seed + i + offset)
            for i, (train_val, _) in enumerate(splits)
        )
        wall = time.perf_counter() - start
        reference = reference or tops
        same_list = sum(np.array_equal(a, b) for a, b in zip(reference, tops))
        same_set = sum(set(a) == set(b) for a, b in zip(reference, tops))
        shared = np.mean([len(set(a) & set(b)) for a, b in zip(reference, tops)])
        seed = "the plan's" if offset == 0 else f"+{offset}"
        print(
            f"| {step} | {trees} | {seed} | {wall:.1f} s | {same_list} / {len(splits)} | {same_set} / {len(splits)} "
            f"| {shared:.1f} of {k} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
