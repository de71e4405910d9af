"""The search's final test, without Ray: which subjects are held out of the whole search, and the chosen
configurations retrained on every search subject and scored once on the held-out subjects."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from emoma.config import Config, SearchConfig
from emoma.cv import run_fold, table_context
from emoma.data import Table
from emoma.errors import UserError
from emoma.folds import Fold, fit_fold, smallest_top_k
from emoma.metrics import score
from emoma.results import HeldOut


def choose_holdout(table: Table, cfg: SearchConfig, seed: int) -> list:
    """Held-out subject ids: the given ones, or `cfg.holdout` drawn with the seed so every class is present."""
    subjects = list(table.subjects)
    if cfg.holdout_subjects:
        wanted = [str(s) for s in cfg.holdout_subjects]
        by_name = {str(s): s for s in subjects}
        missing = [s for s in wanted if s not in by_name]
        if missing:
            raise UserError(
                f"held-out subjects {', '.join(missing)} are not in the table "
                f"(subjects: {', '.join(map(str, subjects))}): fix --holdout-subjects"
            )
        if len(wanted) >= len(subjects) - 2:
            raise UserError(f"holding out {len(wanted)} of the {len(subjects)} subjects leaves too few to search on")
        return sorted((by_name[s] for s in wanted), key=str)
    if cfg.holdout == 0:
        raise UserError("search.holdout=0 leaves no subjects for the final test: hold out at least 1")
    if cfg.holdout >= len(subjects) - 2:
        raise UserError(
            f"--holdout {cfg.holdout} leaves too few of the {len(subjects)} subjects to search on: lower it"
        )
    rng = np.random.default_rng(seed)
    n_classes = len(table.class_names)
    for _ in range(1000):
        chosen = list(rng.choice(subjects, size=cfg.holdout, replace=False))
        if len(np.unique(table.y[np.isin(table.groups, chosen)])) == n_classes:
            return sorted(chosen)
    return sorted(chosen)  # no draw covers every class (too few subjects per class): use the last


def subset(table: Table, rows: np.ndarray) -> Table:
    """The table's rows `rows` (in order), with everything that is per row."""
    return replace(
        table,
        X=table.X[rows],
        y=table.y[rows],
        groups=table.groups[rows],
        time_s=None if table.time_s is None else table.time_s[rows],
        row_ids=None if table.row_ids is None else table.row_ids[rows],
    )


def retrain_and_score(
    tables: dict[str, Table],
    holdout: list,
    configs: dict[str, Config],
    experiment: Config,
    *,
    baselines_for: str | None = None,
    keep_models_for: tuple[str, ...] = (),
    threads: int = 1,
) -> dict[str, HeldOut]:
    """Retrain each of `configs` (name -> config) on every search subject, early-stopped on held-out search
    subjects, and score it once on the `holdout` subjects; names with the same configuration share one run.

    `tables` holds the table per subject normalisation; the split, scaler and RFE of the retraining use the
    experiment's cv settings and seed and are fitted once per normalisation.
    """
    folds: dict[str, Fold] = {}
    runs: dict[str, HeldOut] = {}
    out = {}
    smallest_k = smallest_top_k([c.model.n_features for c in configs.values()])
    kept = {_run_key(configs[n]) for n in keep_models_for}
    for name, config in configs.items():
        key = _run_key(config)
        if key in runs and (name != baselines_for or runs[key].result.baselines):
            out[name] = runs[key]
            continue
        norm = config.data.subject_norm
        table = tables[norm]
        is_held = np.isin(table.groups, holdout)
        if norm not in folds:
            folds[norm] = fit_fold(
                table.X,
                table.y,
                table.groups,
                np.flatnonzero(~is_held),
                np.flatnonzero(is_held),
                experiment.cv,
                experiment.seed,
                smallest_k,
            )
        result = run_fold(
            table,
            folds[norm],
            0,
            config,
            table_context(table, config),
            baselines=name == baselines_for,
            keep_model=key in kept,
            threads=threads,
        )
        runs[key] = out[name] = HeldOut(result, folds[norm], table.groups[result.test_rows], table.y[result.test_rows])
    return out


def _run_key(config: Config) -> str:
    """What makes two retrainings the same: every setting but the label."""
    return json.dumps({**config.to_dict(), "name": None}, sort_keys=True, default=str)


def combine(members: list[HeldOut], weights: list[float], n_classes: int) -> HeldOut:
    """The weighted average of several models' held-out probabilities (their windows in the same order), scored
    as one model; a single member is returned as it is."""
    if len(members) == 1:
        return members[0]
    first = members[0]
    proba = sum(w * m.result.proba for w, m in zip(weights, members))
    metrics, confusion = score(first.y, proba.argmax(1), n_classes)
    result = replace(
        first.result,
        proba=proba,
        y_pred=proba.argmax(1),
        metrics=metrics,
        confusion=confusion,
        baselines={},
        baseline_proba={},
        model=None,
    )
    return HeldOut(result, first.fold, first.groups, first.y)
