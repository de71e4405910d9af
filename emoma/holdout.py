"""The search's final test, without Ray: which subjects are held out of the whole search, and the chosen
configurations retrained on every search subject and scored once on the held-out subjects."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from emoma.config import Config, SearchConfig
from emoma.cv import FoldResult, run_fold, table_context
from emoma.data import Table
from emoma.errors import UserError
from emoma.folds import Fold, fit_fold, smallest_top_k


def choose_holdout(table: Table, cfg: SearchConfig, seed: int) -> list:
    """Held-out subject ids: the given ones, or `cfg.holdout` drawn with the seed so every class is present."""
    subjects = list(table.subjects)
    if cfg.holdout_subjects:
        wanted = [str(s) for s in cfg.holdout_subjects]
        by_name = {str(s): s for s in subjects}
        missing = [s for s in wanted if s not in by_name]
        if missing:
            raise UserError(f"held-out subjects {', '.join(missing)} are not in the table "
                            f"(subjects: {', '.join(map(str, subjects))}): fix --holdout-subjects")
        if len(wanted) >= len(subjects) - 2:
            raise UserError(f"holding out {len(wanted)} of the {len(subjects)} subjects leaves too few to search on")
        return sorted((by_name[s] for s in wanted), key=str)
    if cfg.holdout == 0:
        raise UserError("search.holdout=0 leaves no subjects for the final test: hold out at least 1")
    if cfg.holdout >= len(subjects) - 2:
        raise UserError(f"--holdout {cfg.holdout} leaves too few of the {len(subjects)} subjects to search on: lower it")
    rng = np.random.default_rng(seed)
    n_classes = len(table.class_names)
    for _ in range(1000):
        chosen = list(rng.choice(subjects, size=cfg.holdout, replace=False))
        if len(np.unique(table.y[np.isin(table.groups, chosen)])) == n_classes:
            return sorted(chosen)
    return sorted(chosen)  # no draw covers every class (too few subjects per class): use the last


def subset(table: Table, rows: np.ndarray) -> Table:
    """The table's rows `rows` (in order), with everything that is per row."""
    return replace(table, X=table.X[rows], y=table.y[rows], groups=table.groups[rows],
                   time_s=None if table.time_s is None else table.time_s[rows],
                   row_ids=None if table.row_ids is None else table.row_ids[rows])


@dataclass
class HeldOut:
    """One configuration retrained on the search subjects and scored on the held-out subjects."""

    result: FoldResult  # scores, probabilities (and the model when kept) on the held-out windows
    fold: Fold  # the retraining split (search subjects: train + validation) and its scaler and RFE
    groups: np.ndarray  # (n_held,) subject of each held-out window, in result order
    y: np.ndarray  # (n_held,) true class of each held-out window


def retrain_and_score(tables: dict[str, Table], holdout: list, configs: dict[str, Config], experiment: Config,
                      *, baselines_for: str | None = None, keep_model_for: str | None = None,
                      threads: int = 1) -> dict[str, HeldOut]:
    """Retrain each of `configs` (name -> config) on every search subject, early-stopped on held-out search
    subjects, and score it once on the `holdout` subjects.

    `tables` holds the table per subject normalisation; the split, scaler and RFE of the retraining use the
    experiment's cv settings and seed and are fitted once per normalisation.
    """
    folds: dict[str, Fold] = {}
    out = {}
    smallest_k = smallest_top_k([c.model.n_features for c in configs.values()])
    for name, config in configs.items():
        norm = config.data.subject_norm
        table = tables[norm]
        is_held = np.isin(table.groups, holdout)
        if norm not in folds:
            folds[norm] = fit_fold(table.X, table.y, table.groups, np.flatnonzero(~is_held), np.flatnonzero(is_held),
                                   experiment.cv, experiment.seed, smallest_k)
        result = run_fold(table, folds[norm], 0, config, table_context(table, config),
                          baselines=name == baselines_for, keep_model=name == keep_model_for, threads=threads)
        out[name] = HeldOut(result, folds[norm], table.groups[result.test_rows], table.y[result.test_rows])
    return out
