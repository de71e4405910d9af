"""The Python API, for notebooks and scripts: a DataFrame (or a merged.csv path) in, result objects out; no files
unless an output folder is given.

    import emoma
    cv = emoma.cross_validate(df, config="context", baselines=True, train__lr=5e-4)
    cv.metrics          # DataFrame: mean and std over folds, one row per model
    cv.predictions      # DataFrame: every test window's fold, subject, true and predicted class, probabilities
    cv.confusion        # DataFrame: the pooled confusion matrix (rows true, columns predicted)
    cv.model.predict(new_df)   # the fold models averaged (each with its fold's scaler), as model.pt
    found = emoma.search(df, num_samples=20)   # a SearchResult: trials, the final choice, held-out scores
    found.final_model.predict(new_df)          # the final choice retrained, as final_model.pt

Config keys are given as keyword arguments with `__` for the dot (`train__lr=5e-4` is `--set train.lr=0.0005`),
or as a dict: `overrides={"train.lr": 5e-4}`.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from emoma.config import Config, apply_overrides, load_config
from emoma.errors import Interrupted, UserError
from emoma.predict import TrainedModel
from emoma.results import CVResult


@dataclass
class CrossValidation:
    """What `cross_validate` returns."""

    config: Config  # the resolved configuration
    result: CVResult  # per-fold results (scores, predictions, histories; models with keep_models=True)
    evaluation: dict  # over subjects: intervals, paired tests, AUCs, per class, per subject (as report.md)
    metrics: pd.DataFrame  # one row per model (CNN-LSTM, baselines); mean and std of each metric over folds
    folds: pd.DataFrame  # one row per fold: its subjects, sizes, scores, epochs
    predictions: pd.DataFrame  # one row per test window: row, subject, fold, true, predicted, p_CLASS
    confusion: pd.DataFrame  # pooled over test folds, rows true, columns predicted
    warnings: list[str]  # protocol notes and signs of a degenerate model, one line each
    out: Path | None  # the output folder, when one was given
    model: TrainedModel | None  # the fold models averaged, as model.pt; None with keep_models=False

    @property
    def fold_models(self) -> list:
        """Each fold's trained model (torch modules; an ensemble's members averaged), with keep_models=True."""
        if any(f.model is None for f in self.result.folds):
            raise ValueError("the fold models were not kept: call cross_validate(..., keep_models=True)")
        return [f.model for f in self.result.folds]


def cross_validate(
    data: pd.DataFrame | str | Path | None = None,
    config: str | Path | Config = "default",
    *,
    baselines: bool = False,
    out: str | Path | None = None,
    keep_models: bool = True,
    progress: bool = False,
    overrides: dict | None = None,
    **keys,
) -> CrossValidation:
    """Cross-validate one configuration, as `emoma cv` does.

    Parameters
    ----------
    data : a merged.csv-layout DataFrame, a path to one, or None for the embedded synthetic table.
    config : a shipped config's name (`default`, `context`, `smoke`, ...), a YAML path, or a Config.
    baselines : also score the tuned same-input baselines on the same folds.
    out : a folder to write the usual outputs to (report.md, metrics.json, model.pt unless keep_models=False,
        ...); None writes nothing.
    keep_models : keep each fold's trained model (`CrossValidation.fold_models`) and their average
        (`CrossValidation.model`); False frees them.
    progress : print the data summary and a progress bar.
    overrides, **keys : config keys, dotted in `overrides`, with `__` for the dot as keywords.

    Returns
    -------
    CrossValidation
    """
    from emoma.cv import run_cv
    from emoma.folds import make_plan, smallest_top_k
    from emoma.pipeline import MODEL_FILE, fold_ensemble, model_table
    from emoma.pipeline import cross_validate as write_cross_validation
    from emoma.report.cv import folds_frame, predictions_frame

    frame, cfg = _resolve(data, config, overrides, keys)
    table = model_table(cfg, frame)
    if out is not None:
        log = print if progress else (lambda *args, **kwargs: None)
        try:
            result, out = write_cross_validation(
                cfg,
                out,
                baselines=baselines,
                progress=progress,
                log=log,
                frame=frame,
                keep_models=keep_models,
                save_model=keep_models,
            )
        except Interrupted:
            if frame is None:
                raise
            raise Interrupted(
                "cross-validation interrupted; it read a DataFrame, which `emoma cv --resume` cannot "
                "read again: call cross_validate again (the fold plan is cached)"
            ) from None
        out = Path(out)
        model = TrainedModel.load(out / MODEL_FILE) if keep_models else None
    else:
        plan = make_plan(table, cfg.cv, cfg.seed, smallest_top_k([cfg.model.n_features]))
        result = run_cv(table, plan, cfg, baselines=baselines, progress=progress, keep_models=keep_models)
        model = TrainedModel(fold_ensemble(result, table, plan, cfg)) if keep_models else None
    evaluation = result.evaluate(table, cfg.seed)
    rows = {"CNN-LSTM": result.summary(), **result.baseline_summary()}
    metrics = pd.DataFrame(
        {name: {f"{m}_{k}": v for m, s in summary.items() for k, v in s.items()} for name, summary in rows.items()}
    ).T
    confusion = pd.DataFrame(
        result.confusion,
        index=pd.Index(result.class_names, name="true"),
        columns=pd.Index(result.class_names, name="predicted"),
    )
    return CrossValidation(
        cfg,
        result,
        evaluation,
        metrics,
        folds_frame(result),
        predictions_frame(result, table).reset_index(drop=True),
        confusion,
        result.notes + result.degenerate_notes(cfg.train.metric),
        out,
        model,
    )


def search(
    data: pd.DataFrame | str | Path | None = None,
    config: str | Path = "context",
    *,
    space: str | Path = "search_space",
    seed_config: str | Path = "seed",
    num_samples: int = 20,
    storage_path: str | Path | None = None,
    name: str | None = None,
    address: str | None = None,
    overrides: dict | None = None,
    **keys,
):
    """Search many configurations on Ray Tune with Optuna, as `emoma search` does, and return its SearchResult
    (trials, the final choice and its BBC-CV estimate, held-out scores of the final, base and seed models).

    Parameters
    ----------
    data : a merged.csv-layout DataFrame, a path to one, or None for the embedded synthetic table. The driver
        reads a DataFrame from a CSV copy (trials get the table through Ray's object store): beside the
        experiment in a local `storage_path`, so the experiment can be resumed, else in a temporary folder.
    config, space, seed_config : the base config, the search space and the reference configuration evaluated
        second: shipped names or YAML paths.
    storage_path : where the experiment is kept (a folder or s3://...); None keeps it in a temporary folder
        removed when the search returns (the result is all in memory).
    name, address : the experiment's name (default: search-TIMESTAMP-XXXX) and the Ray cluster to join.
    overrides, **keys : config keys (as `--set`); a searched key given here is fixed and leaves the space.

    Returns
    -------
    emoma.tune.search.SearchResult
    """
    import secrets
    import time

    from emoma.cli import SEARCH_DEFAULTS, RaisingParser, parse_search_args
    from emoma.experiment import search as run_search
    from emoma.experiment import search_settings

    flat = _dotted(overrides, keys)
    name = name or f"search-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    with tempfile.TemporaryDirectory(prefix="emoma-search-") as scratch:
        local = storage_path is not None and "://" not in str(storage_path)
        copy = (Path(storage_path) if local else Path(scratch)) / f"{name}-data.csv"
        frame = data if isinstance(data, pd.DataFrame) else None
        if frame is not None:
            data = copy
        argv = [
            "--config",
            str(config),
            "--space",
            str(space),
            "--seed-config",
            str(seed_config),
            "--num-samples",
            str(num_samples),
            *(["--data", str(data)] if data is not None else []),
            *[item for k, v in flat.items() for item in ("--set", f"{k}={json.dumps(v)}")],
        ]
        args = parse_search_args(argv, prog="emoma.search", parser=RaisingParser)
        if frame is not None:
            if copy.exists():
                raise UserError(f"experiment {name!r} already has a data copy {copy}: give another name")
            copy.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(copy, index=False)
        try:
            settings = search_settings(
                args, SEARCH_DEFAULTS, name, str(storage_path) if storage_path is not None else scratch
            )
        except UserError:
            if frame is not None:
                copy.unlink()  # nothing started: the name stays free
            raise
        try:
            return run_search(settings, address=address, log=lambda *args, **kwargs: None)
        except Interrupted:
            if storage_path is not None:
                raise
            raise Interrupted(
                "search interrupted; its temporary experiment went with it: give storage_path= to keep "
                "one that `emoma search --resume` can continue"
            ) from None


def _resolve(data, config, overrides: dict | None, keys: dict) -> tuple[pd.DataFrame | None, Config]:
    cfg = config if isinstance(config, Config) else load_config(config)
    flat = _dotted(overrides, keys)
    frame = data if isinstance(data, pd.DataFrame) else None
    if frame is not None:
        flat["data.path"] = None  # the DataFrame is the data
    elif data is not None:
        flat["data.path"] = str(data)
    return frame, apply_overrides(cfg, flat) if flat else cfg


def _dotted(overrides: dict | None, keys: dict) -> dict:
    """Config keys from a dict of dotted keys and keyword arguments with `__` for the dot."""
    return {**(overrides or {}), **{k.replace("__", "."): v for k, v in keys.items()}}
