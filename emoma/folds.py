"""Stage 2: a Table -> a FoldPlan: splits, inner validation rows, and the in-fold scaler and RFE ranking.

Everything fitted here sees only the training rows of its fold. Plans are cached on disk by a hash of
the data and the settings, so repeated runs and every trial of a search reuse one plan.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_selection import RFE
from sklearn.model_selection import (
    GroupKFold,
    GroupShuffleSplit,
    KFold,
    LeaveOneGroupOut,
    StratifiedGroupKFold,
    train_test_split,
)
from sklearn.preprocessing import StandardScaler

from emoma.config import CVConfig
from emoma.data import Table
from emoma.errors import UserError

PLAN_VERSION = 3  # bump when the plan's content or meaning changes, to invalidate caches
ROW_WISE_WARNING = (
    "kfold splits rows, not subjects: windows of one subject are on both sides of each fold (and a training "
    "window's context may hold test windows), so scores are optimistic and do not measure generalisation to new "
    "people"
)


@dataclass
class Fold:
    """One fold: row indices and what was fitted on its training rows."""

    train: np.ndarray  # (n_train,) rows that fit the scaler, RFE and the model weights
    val: np.ndarray  # (n_val,) rows for early stopping, disjoint subjects from train (subject-wise schemes)
    test: np.ndarray  # (n_test,) rows scored once
    mean: np.ndarray  # (n_features,) scaler mean of the training rows
    scale: np.ndarray  # (n_features,) scaler standard deviation of the training rows
    ranking: np.ndarray  # (n_features,) feature indices, best first (RFE on the training rows; set-aside last)
    exact_from: int = 1  # every top-k with k >= exact_from is the full RFE ranking's (RFE stopped early below)
    set_aside: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # columns constant or
    # duplicated on the training rows: read as 0 by every model of the fold, as if dropped (the width stays the
    # table's, so the folds of one configuration still train as one batched model)

    def selected(self, k: int) -> np.ndarray:
        """Indices of the top-k features, in column order (k=0 or k >= n_features: all)."""
        if 0 < k < self.exact_from:
            raise ValueError(
                f"this fold plan ranks features for top-k with k >= {self.exact_from}, not {k}: "
                "make the plan with smallest_k <= k"
            )
        k = len(self.ranking) if k <= 0 else min(k, len(self.ranking))
        return np.sort(self.ranking[:k])

    def used(self, k: int) -> np.ndarray:
        """The top-k features that carry values (`selected(k)` without the set-aside columns)."""
        cols = self.selected(k)
        return cols[~np.isin(cols, self.set_aside)]

    def scaled(self, X: np.ndarray, k: int) -> np.ndarray:
        """(n_windows, k') float32: every window's top-k features, scaled with this fold's training statistics;
        set-aside columns are 0."""
        cols = self.selected(k)
        scaled = ((X[:, cols] - self.mean[cols]) / self.scale[cols]).astype(np.float32)
        scaled[:, np.isin(cols, self.set_aside)] = 0.0
        return scaled

    def samples(
        self, X: np.ndarray, y: np.ndarray, context: tuple[np.ndarray, np.ndarray], k: int
    ) -> dict[str, Samples]:
        """{"train", "val", "test"}: each part's samples over the scaled top-k features of every window.

        `context` is (index, mask) of `emoma.context.context_index` for the whole table.
        """
        scaled = self.scaled(X, k)
        index, mask = context
        return {
            part: Samples(scaled, index[rows], mask[rows], y[rows])
            for part, rows in (("train", self.train), ("val", self.val), ("test", self.test))
        }


@dataclass
class Samples:
    """What a model reads for a set of windows: each sample is its k context windows of the matrix X."""

    X: np.ndarray  # (n_windows, n_inputs) float32: every window a sample may read (shared by the parts)
    index: np.ndarray  # (n_samples, k) rows of X, oldest first; column k-1 is the sample's own window
    mask: np.ndarray  # (n_samples, k) bool, False for padding before the start of a run of windows
    y: np.ndarray  # (n_samples,) int64 class indices

    def __len__(self) -> int:
        return len(self.y)

    @property
    def padded(self) -> bool:
        """Whether any sample has padding (the model then needs the mask)."""
        return not self.mask.all()

    def plus(self, other: Samples) -> Samples:
        """These samples followed by `other`'s, over the same window matrix (a fold's training + validation)."""
        if other.X is not self.X:
            raise ValueError("samples of different window matrices cannot be joined")
        return Samples(
            self.X,
            np.concatenate([self.index, other.index]),
            np.concatenate([self.mask, other.mask]),
            np.concatenate([self.y, other.y]),
        )

    def flat(self) -> np.ndarray:
        """(n_samples, k * n_inputs): the context windows concatenated, oldest first (for classical models;
        padding repeats the run's first window)."""
        return self.X[self.index].reshape(len(self.index), -1)


@dataclass
class FoldPlan:
    """Every fold of one protocol with its fitted scaler and RFE ranking, computed once per table and settings and
    shared by every model, trial and baseline (cached by `key`)."""

    scheme: str
    folds: list[Fold]
    key: str  # content hash of data + settings; names the cache file
    seconds: float  # time to compute the plan (0 when read from cache)
    from_cache: bool = False
    notes: list[str] = field(default_factory=list)  # warnings to show with every result (e.g. row-wise CV)

    @property
    def subject_wise(self) -> bool:
        """True unless the protocol is row-wise kfold (then a subject's windows are on both sides of a fold)."""
        return self.scheme != "kfold"


def make_plan(table: Table, cfg: CVConfig, seed: int, smallest_k: int = 0) -> FoldPlan:
    """Split `table`, hold out inner validation rows and fit each fold's scaler and RFE ranking.

    `smallest_k` is the smallest top-k any user of the plan takes (0: any k): RFE stops as soon as every such
    top-k is settled, so the selected features are those of the full ranking, with fewer rounds.
    Returns the cached plan when one with the same key exists in `cfg.cache_dir`.
    """
    key = plan_key(table, cfg, seed, smallest_k)
    cache = Path(cfg.cache_dir).expanduser() / f"{key}.pkl" if cfg.cache_dir else None
    if cache is not None and cache.is_file():
        try:
            with cache.open("rb") as f:
                plan = pickle.load(f)
            plan.from_cache, plan.seconds = True, 0.0
            return plan
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError):
            pass  # unreadable cache: recompute and overwrite
    start = time.perf_counter()
    splits = outer_splits(table, cfg, seed)
    jobs = min(resolve_jobs(cfg.jobs), len(splits))
    folds = Parallel(n_jobs=jobs)(
        delayed(fit_fold)(table.X, table.y, table.groups, train, test, cfg, seed + i, smallest_k)
        for i, (train, test) in enumerate(splits)
    )
    notes = [] if cfg.scheme != "kfold" else [ROW_WISE_WARNING]
    plan = FoldPlan(cfg.scheme, folds, key, time.perf_counter() - start, notes=notes)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            pickle.dump(plan, f)
        os.replace(tmp, cache)
    return plan


def plan_key(table: Table, cfg: CVConfig, seed: int, smallest_k: int = 0) -> str:
    """The 16-hex content hash of the table (features, labels, subjects) and every setting a fold plan depends on: it
    names the plan's cache file, so a changed input never reuses a plan."""
    h = hashlib.sha256()
    for array in (table.X, table.y, table.groups.astype(str)):
        h.update(np.ascontiguousarray(array).tobytes())
    settings = (
        PLAN_VERSION,
        table.feature_names,
        cfg.scheme,
        cfg.folds,
        cfg.val_subjects,
        cfg.val_fraction,
        cfg.rfe_trees,
        cfg.rfe_step,
        cfg.rfe_max_samples,
        seed,
        rfe_stop(len(table.feature_names), cfg.rfe_step, smallest_k),
    )
    h.update(repr(settings).encode())
    return h.hexdigest()[:16]


def outer_splits(table: Table, cfg: CVConfig, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train+val rows, test rows) per fold, from scikit-learn's splitters."""
    n_subjects = len(table.subjects)
    if cfg.scheme == "kfold":
        if cfg.folds > len(table.y):
            raise UserError(f"cv.folds={cfg.folds} is more than the {len(table.y)} rows: lower --folds")
        splitter = KFold(cfg.folds, shuffle=True, random_state=seed)
    else:
        test_subjects = 1 if cfg.scheme == "loso" else -(-n_subjects // cfg.folds)
        needed = test_subjects + cfg.val_subjects + 1
        if cfg.scheme != "loso" and cfg.folds > n_subjects:
            raise UserError(
                f"cv.folds={cfg.folds} is more than the {n_subjects} subjects: lower --folds or use --cv loso"
            )
        if n_subjects < needed:
            raise UserError(
                f"{cfg.scheme} with cv.val_subjects={cfg.val_subjects} needs at least {needed} subjects "
                f"(test + validation + training), the table has {n_subjects}: add subjects or lower cv.val_subjects"
            )
        splitter = {
            "loso": LeaveOneGroupOut(),
            "group-kfold": GroupKFold(cfg.folds, shuffle=True, random_state=seed),
            "stratified-group-kfold": StratifiedGroupKFold(cfg.folds, shuffle=True, random_state=seed),
        }[cfg.scheme]
    groups = None if cfg.scheme == "kfold" else table.groups
    return list(splitter.split(table.X, table.y, groups))


def inner_split(y: np.ndarray, groups: np.ndarray, rows: np.ndarray, cfg: CVConfig, seed: int):
    """Split a fold's non-test `rows` into (train, val): whole subjects, or rows for kfold."""
    if cfg.scheme == "kfold":
        strata = y[rows] if np.bincount(y[rows]).min(initial=2) >= 2 else None
        train, val = train_test_split(rows, test_size=cfg.val_fraction, random_state=seed, stratify=strata)
        return np.sort(train), np.sort(val)
    splitter = GroupShuffleSplit(n_splits=1, test_size=cfg.val_subjects, random_state=seed)
    train, val = next(splitter.split(rows, groups=groups[rows]))
    return rows[train], rows[val]


def smallest_top_k(ks) -> int:
    """The smallest top-k among model.n_features values (0 means every feature: no ranking needed for it)."""
    positive = [int(k) for k in ks if k > 0]
    return min(positive) if positive else 1 << 30


def rfe_stop(n_features: int, step: int, smallest_k: int) -> int:
    """Features RFE must keep so that every top-k with k >= smallest_k equals the full ranking's: the first
    count of RFE's path (n, n - step, ...) below smallest_k (1, the full ranking, when smallest_k <= 1)."""
    if smallest_k <= 1:
        return 1
    return next((n for n in range(n_features, 0, -step) if n < smallest_k), 1)


def uninformative_columns(X: np.ndarray) -> np.ndarray:
    """Indices of the columns of `X` (a fold's training rows) that are constant there or equal there to an
    earlier column: what `emoma.data.drop_uninformative` drops from the whole table, decided on these rows alone."""
    aside, kept = [], []
    for j in range(X.shape[1]):
        column = X[:, j]
        if np.all(column == column[0]) or any(np.array_equal(X[:, i], column) for i in kept):
            aside.append(j)
        else:
            kept.append(j)
    return np.array(aside, dtype=np.int64)


def rank_features(X: np.ndarray, y: np.ndarray, cfg: CVConfig, seed: int, smallest_k: int = 0) -> np.ndarray:
    """RFE ranking of the columns of `X` (n_rows, n_features): feature indices, best first.

    Features eliminated in the same RFE round are ordered by the first forest's importances. RFE stops at
    `rfe_stop(..., smallest_k)` features (tied, in the same order): every top-k with k >= smallest_k is the
    full ranking's.
    """
    first_importances = []

    def importances(forest):
        if not first_importances:
            first_importances.append(forest.feature_importances_)
        return forest.feature_importances_

    stop = rfe_stop(X.shape[1], cfg.rfe_step, smallest_k)
    if stop >= X.shape[1]:
        return np.arange(X.shape[1], dtype=np.int64)  # every top-k asked for keeps every feature
    # On big tables each tree grows on a bootstrap subsample: RFE time stops growing with the rows.
    max_samples = cfg.rfe_max_samples if 0 < cfg.rfe_max_samples < len(y) else None
    forest = RandomForestClassifier(n_estimators=cfg.rfe_trees, max_samples=max_samples, random_state=seed, n_jobs=1)
    rfe = RFE(forest, n_features_to_select=stop, step=cfg.rfe_step, importance_getter=importances).fit(X, y)
    return np.lexsort((-first_importances[0], rfe.ranking_)).astype(np.int64)


def resolve_jobs(jobs: int) -> int:
    """Worker processes for `cv.jobs`: the number given, or one per CPU this process may use when 0."""
    return jobs if jobs > 0 else len(os.sched_getaffinity(0))


def fit_fold(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    train_val: np.ndarray,
    test: np.ndarray,
    cfg: CVConfig,
    seed: int,
    smallest_k: int = 0,
) -> Fold:
    """Split `train_val` rows into training and validation rows; on the training rows, set aside the columns
    constant or duplicated there and fit the scaler and the RFE ranking of the others."""
    train, val = inner_split(y, groups, train_val, cfg, seed)
    scaler = StandardScaler().fit(X[train])
    set_aside = uninformative_columns(X[train])
    kept = np.setdiff1d(np.arange(X.shape[1]), set_aside)
    ranking = kept[rank_features(scaler.transform(X[train])[:, kept], y[train], cfg, seed, smallest_k)]
    stop = rfe_stop(len(kept), cfg.rfe_step, smallest_k)
    return Fold(
        train=train,
        val=val,
        test=np.sort(test),
        mean=scaler.mean_,
        scale=scaler.scale_,
        ranking=np.concatenate([ranking, set_aside]),
        exact_from=1 if stop == 1 else min(stop + 1, len(kept)),
        set_aside=set_aside,
    )
