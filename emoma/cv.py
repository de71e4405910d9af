"""Stage 4: one configuration's cross-validation over a FoldPlan -> CVResult (per fold, per subject, pooled)."""

from __future__ import annotations

import functools
import sys
import time
from dataclasses import replace

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedKFold
from tqdm.auto import tqdm

from emoma.batched import train_folds
from emoma.config import Config
from emoma.context import context_index, order_notes, run_starts, smooth_probabilities
from emoma.data import Table
from emoma.folds import Fold, FoldPlan, Samples, resolve_jobs
from emoma.metrics import score
from emoma.model import Ensemble
from emoma.results import CVResult, FoldResult
from emoma.train import FoldFit, predict_proba, resolve_device, train_fold

# Classical models given exactly the CNN-LSTM's inputs: the fold's scaled RFE features of the (subject-
# normalised) table, the k context windows concatenated.
BASELINES = {
    "LDA": lambda seed: LinearDiscriminantAnalysis(),
    "LogisticRegression": lambda seed: LogisticRegression(max_iter=2000),
    "RandomForest": lambda seed: RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1),
}
# cv.baselines=tuned: each chooses from its grid by inner subject-wise CV on the fold's training rows only, scored
# by the early-stopping metric (LDA: with or without Ledoit-Wolf shrinkage of its covariance)
TUNED_GRIDS = {
    "LDA": {"solver": ["lsqr"], "shrinkage": [None, "auto"]},
    "LogisticRegression": {"C": [0.01, 0.1, 1.0, 10.0]},
    "RandomForest": {"max_depth": [4, 8, None]},
}
INNER_FOLDS = 3
SKLEARN_SCORING = {"macro_f1": "f1_macro", "balanced_accuracy": "balanced_accuracy", "accuracy": "accuracy"}


class Progress:
    """Folds done: a live bar on a terminal; elsewhere (logs, CI, nohup) a plain line per update."""

    def __init__(self, total: int, desc: str, enabled: bool, initial: int = 0):
        self.total, self.desc, self.enabled, self.done = total, desc, enabled, initial
        self.bar = (
            tqdm(total=total, initial=initial, desc=desc, unit="fold", leave=False)
            if enabled and sys.stderr.isatty()
            else None
        )

    def update(self, n: int, note: str) -> None:
        """Count `n` more folds done, with `note` (the latest fold's score) beside the count."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix_str(note)
        elif self.enabled:
            print(f"{self.desc}: {self.done}/{self.total} folds, {note}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Remove the live bar (plain lines need no closing)."""
        if self.bar is not None:
            self.bar.close()


def fold_seed(seed: int, fold: int, member: int = 0) -> int:
    """A distinct, reproducible seed per (config seed, fold, ensemble member); member 0 keeps the seed a
    single model has."""
    entropy = [seed, fold] if member == 0 else [seed, fold, member]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def table_context(table: Table, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """(index, mask) of every window's `model.context` windows, built once per table and configuration."""
    return context_index(run_starts(table, config.data.window_s), config.model.context)


def run_cv(
    table: Table,
    plan: FoldPlan,
    config: Config,
    *,
    baselines: bool = False,
    progress: bool = True,
    verbose: bool = False,
    done: dict[int, FoldResult] | None = None,
    on_result=None,
    keep_models: bool = False,
) -> CVResult:
    """Train and score one configuration on every fold of `plan` (but those in `done`, already finished).

    Folds run in parallel worker processes (``config.cv.jobs``), one torch thread each; with the batched
    trainer each worker trains its share of the folds as one model. `on_result` is called with each
    FoldResult as soon as it is finished (to keep it on disk); `keep_models` puts each fold's trained model
    (an Ensemble of its members) in its FoldResult.
    """
    start = time.perf_counter()
    on_gpu = resolve_device(config.train.device).type == "cuda"
    todo = [i for i in range(len(plan.folds)) if i not in (done or {})]
    jobs = max(1, 1 if on_gpu else min(resolve_jobs(config.cv.jobs), len(todo)))
    context = table_context(table, config)
    if config.cv.trainer == "batched":  # each worker trains its share of the folds as one batched model
        groups = [todo[w::jobs] for w in range(jobs) if todo[w::jobs]]
        args = [(table, [plan.folds[i] for i in g], g, config, context, baselines, verbose) for g in groups]
        task = functools.partial(run_folds_batched, keep_models=keep_models)
    else:
        args = [(table, plan.folds[i], i, config, context, baselines, verbose) for i in todo]
        task = functools.partial(run_fold, keep_model=keep_models)
    if jobs == 1:
        stream = (task(*a) for a in args)
    else:
        stream = Parallel(n_jobs=jobs, return_as="generator_unordered")(delayed(task)(*a) for a in args)
    results = list((done or {}).values())
    bar = Progress(len(plan.folds), f"{config.name} {plan.scheme}", progress, initial=len(results))
    for result in stream:
        finished = result if isinstance(result, list) else [result]
        for fold in finished:
            if on_result is not None:
                on_result(fold)
        results.extend(finished)
        bar.update(len(finished), f"accuracy {np.mean([r.metrics['accuracy'] for r in results]):.3f}")
    bar.close()
    results.sort(key=lambda r: r.index)
    notes = list(plan.notes) + order_notes(table, config.model.context, table.normalisation)
    return CVResult(
        plan.scheme, table.class_names, results, time.perf_counter() - start, notes=notes, smooth=config.model.smooth
    )


def run_fold(
    table: Table,
    fold: Fold,
    index: int,
    config: Config,
    context: tuple[np.ndarray, np.ndarray],
    baselines: bool = False,
    verbose: bool = False,
    threads: int = 1,
    keep_model: bool = False,
) -> FoldResult:
    """Train on the fold's training rows, early-stop on its validation rows, score its test rows once (with
    `train.refit`, the kept model is trained again on training + validation rows for the best epoch count).

    `context` is `table_context(table, config)`; `threads` fixes torch's CPU threads (results depend on it
    only in the last bits); `keep_model` puts the trained model in the result.
    """
    start = time.perf_counter()
    torch.set_num_threads(threads)
    parts = fold.samples(table.X, table.y, context, config.model.n_features)
    fits = []
    for member in range(config.model.ensemble):
        name = f"fold {index + 1:2d}" + (f" member {member + 1}" if config.model.ensemble > 1 else "")
        log = (lambda line, name=name: print(f"{name} {line}", flush=True)) if verbose else None
        seed = fold_seed(config.seed, index, member)
        fit = train_fold(
            parts["train"],
            parts["val"],
            n_classes=len(table.class_names),
            model_cfg=config.model,
            train_cfg=config.train,
            seed=seed,
            log=log,
        )
        if config.train.refit:
            refit = train_fold(
                parts["train"].plus(parts["val"]),
                None,
                n_classes=len(table.class_names),
                model_cfg=config.model,
                train_cfg=replace(config.train, epochs=fit.best_epoch),
                seed=seed,
                log=log,
            )
            fit = replace(fit, model=refit.model)
        fits.append(fit)
    return fold_result(table, fold, index, config, parts, fits, time.perf_counter() - start, baselines, keep_model)


def run_folds_batched(
    table: Table,
    folds: list[Fold],
    indices: list[int],
    config: Config,
    context: tuple[np.ndarray, np.ndarray],
    baselines: bool = False,
    verbose: bool = False,
    threads: int = 1,
    keep_models: bool = False,
) -> list[FoldResult]:
    """`run_fold` for several folds at once, their models trained together (emoma.batched)."""
    start = time.perf_counter()
    torch.set_num_threads(threads)
    parts = [fold.samples(table.X, table.y, context, config.model.n_features) for fold in folds]
    n = config.model.ensemble  # every member of every fold is one row of the batched model
    names = [f"fold {i + 1:2d}" + (f" member {j + 1}" if n > 1 else "") for i in indices for j in range(n)]
    log = (lambda k, line: print(f"{names[k]} {line}", flush=True)) if verbose else None
    seeds = [fold_seed(config.seed, i, j) for i in indices for j in range(n)]
    fits = train_folds(
        [p["train"] for p in parts for _ in range(n)],
        [p["val"] for p in parts for _ in range(n)],
        n_classes=len(table.class_names),
        model_cfg=config.model,
        train_cfg=config.train,
        seeds=seeds,
        log=log,
    )
    if config.train.refit:  # every member again on training + validation rows, for its own best epoch count
        refits = train_folds(
            [p["train"].plus(p["val"]) for p in parts for _ in range(n)],
            None,
            n_classes=len(table.class_names),
            model_cfg=config.model,
            train_cfg=config.train,
            seeds=seeds,
            epochs=[fit.best_epoch for fit in fits],
            log=log,
        )
        fits = [replace(fit, model=refit.model) for fit, refit in zip(fits, refits)]
    seconds = (time.perf_counter() - start) / len(folds)  # shared training time, split evenly
    return [
        fold_result(table, fold, i, config, p, fits[k * n : (k + 1) * n], seconds, baselines, keep_models)
        for k, (fold, i, p) in enumerate(zip(folds, indices, parts))
    ]


def fold_result(
    table: Table,
    fold: Fold,
    index: int,
    config: Config,
    parts: dict[str, Samples],
    fits: list[FoldFit],
    seconds: float,
    baselines: bool = False,
    keep_model: bool = False,
) -> FoldResult:
    """Score a fold's trained model (its ensemble members' mean) once on its test rows, and the baselines on
    the same inputs."""
    n_classes = len(table.class_names)
    test = parts["test"]
    model = fits[0].model if len(fits) == 1 else Ensemble([fit.model for fit in fits])
    starts = run_starts(table, config.data.window_s) if config.model.smooth > 1 else None
    smooth = functools.partial(smooth_probabilities, rows=fold.test, starts=starts, k=config.model.smooth)
    proba = smooth(predict_proba(model, test))
    y_pred = proba.argmax(1)
    baseline_metrics, baseline_proba = {}, {}
    if baselines:
        fitted_on = parts["train"].plus(parts["val"]) if config.train.refit else parts["train"]  # as the model
        train_inputs, test_inputs = fitted_on.flat(), test.flat()
        train_groups = table.groups[fitted_on.index[:, -1]]  # a sample's own window is its last
        for name in BASELINES:
            baseline = fit_baseline(
                name, config, fold_seed(config.seed, index), train_inputs, fitted_on.y, train_groups
            )
            raw = np.zeros((len(test), n_classes))
            raw[:, baseline.classes_] = baseline.predict_proba(test_inputs)  # classes seen in training
            baseline_proba[name] = smooth(raw)  # smoothed as the CNN-LSTM's
            baseline_metrics[name] = score(test.y, baseline_proba[name].argmax(1), n_classes)[0]
    metrics, confusion = score(test.y, y_pred, n_classes)
    return FoldResult(
        index=index,
        test_subjects=sorted(np.unique(table.groups[fold.test]).tolist()),
        n_train=len(fold.train),
        n_val=len(fold.val),
        n_test=len(fold.test),
        features=[table.feature_names[j] for j in fold.used(config.model.n_features)],
        metrics=metrics,
        confusion=confusion,
        epochs_run=max(fit.epochs_run for fit in fits),
        best_epoch=int(np.median([fit.best_epoch for fit in fits])),
        seconds=seconds,
        history=fits[0].history,
        test_rows=fold.test,
        y_pred=y_pred,
        proba=proba,
        baselines=baseline_metrics,
        baseline_proba=baseline_proba,
        model=model if keep_model else None,
    )


def fit_baseline(name: str, config: Config, seed: int, X: np.ndarray, y: np.ndarray, groups: np.ndarray):
    """A baseline fitted on a fold's training samples: library defaults (`cv.baselines: default`), or tuned
    on those samples alone, by inner CV over their subjects (over rows where they hold one subject)."""
    if config.cv.baselines == "default" or name not in TUNED_GRIDS:
        return BASELINES[name](seed).fit(X, y)
    n_groups = len(np.unique(groups))
    inner = (
        GroupKFold(min(INNER_FOLDS, n_groups))
        if n_groups >= 2
        else StratifiedKFold(INNER_FOLDS, shuffle=True, random_state=seed)
    )
    search = GridSearchCV(
        BASELINES[name](seed), TUNED_GRIDS[name], cv=inner, scoring=SKLEARN_SCORING[config.train.metric], n_jobs=1
    )
    return search.fit(X, y, groups=groups if n_groups >= 2 else None)
