"""Result types, Ray-free: what one fold, one cross-validation, one retraining, one trial and one search
produced, and the out-of-fold store the search's final choice is made from. Data and the tables derived from
them; rendering is emoma.report's, training emoma.cv's and emoma.holdout's, Ray emoma.tune's."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from emoma.config import METRICS
from emoma.context import run_starts, smooth_probabilities
from emoma.files import atomic_path
from emoma.metrics import degenerate_notes, evaluate, score

if TYPE_CHECKING:
    import torch

    from emoma.config import Config
    from emoma.data import Table
    from emoma.folds import Fold, FoldPlan
    from emoma.predict import TrainedModel
    from emoma.select import Selection
    from emoma.storage import ExperimentStorage

OOF_DIR = "oof"  # in the experiment folder
OOF_FILE = "oof.npz"  # in a trial's checkpoint


# ---------------------------------------------------------------- one configuration's cross-validation


@dataclass
class FoldResult:
    """One test fold scored once: its sizes, features, metrics, confusion matrix, epochs, predictions and
    probabilities, the baselines' scores on the same rows, and the model when kept."""

    index: int
    test_subjects: list  # subject ids in the test fold (row-wise kfold: all subjects present there)
    n_train: int
    n_val: int
    n_test: int
    features: list[str]  # the fold's selected features that carry values (set-aside columns not among them)
    metrics: dict[str, float]  # accuracy, balanced_accuracy, macro_f1 on the test rows
    confusion: np.ndarray  # (n_classes, n_classes) rows = true class, columns = predicted
    epochs_run: int  # ensembles: the most any member ran
    best_epoch: int  # ensembles: the median over members
    seconds: float
    history: list[dict]  # per epoch (ensembles: the first member's)
    test_rows: np.ndarray  # (n_test,) row indices of the table
    y_pred: np.ndarray  # (n_test,)
    proba: np.ndarray  # (n_test, n_classes)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> metrics on the same fold
    baseline_proba: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (n_test, n_classes)
    model: torch.nn.Module | None = None  # the trained model, when asked for


@dataclass
class CVResult:
    """One configuration's cross-validation: every FoldResult, the protocol, class names and notes."""

    scheme: str
    class_names: list[str]
    folds: list[FoldResult]
    seconds: float
    notes: list[str] = field(default_factory=list)
    smooth: int = 1  # model.smooth of the run: its fold probabilities are already smoothed when > 1
    evaluation: dict | None = None  # what evaluate() computed, kept so that every report renders the same numbers
    evaluation_seed: int | None = None  # the bootstrap seed it was computed with

    def evaluate(self, table: Table, seed: int) -> dict:
        """`emoma.metrics.evaluate` of the pooled test predictions of the CNN-LSTM and the baselines (per-subject
        scores, intervals, paired tests): computed once per seed, then the same dictionary for metrics.json,
        report.md and the API.

        Parameters
        ----------
        table : the table the folds index (its groups and labels).
        seed : the bootstrap's seed.

        Returns
        -------
        dict
            `emoma.metrics.evaluate`'s dictionary.
        """
        if self.evaluation is None or self.evaluation_seed != seed:
            rows, probas = self.pooled()
            self.evaluation = evaluate(table.groups[rows], table.y[rows], probas, self.class_names, seed=seed)
            self.evaluation_seed = seed
        return self.evaluation

    def summary(self) -> dict[str, dict[str, float]]:
        """{metric: {"mean": ..., "std": ...}} over folds (population std)."""
        return _mean_std([f.metrics for f in self.folds])

    def smoothed_summary(self, table: Table, k: int, window_s: float | None = None) -> dict[str, dict[str, float]]:
        """`summary()` of a run without smoothing had its CNN-LSTM probabilities been smoothed over k windows
        (`model.smooth` does not change training, so every value can be scored from one run)."""
        if self.smooth != 1:
            raise ValueError(f"this run's probabilities are already smoothed over {self.smooth} windows")
        starts = run_starts(table, window_s)
        return _mean_std(
            [
                score(
                    table.y[f.test_rows],
                    smooth_probabilities(f.proba, f.test_rows, starts, k).argmax(1),
                    len(table.class_names),
                )[0]
                for f in self.folds
            ]
        )

    def baseline_summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """{baseline: {metric: {"mean", "std"}}} over folds (population std), as `summary()`."""
        names = self.folds[0].baselines.keys() if self.folds else []
        return {name: _mean_std([f.baselines[name] for f in self.folds]) for name in names}

    def degenerate_notes(self, metric: str) -> list[str]:
        """`emoma.metrics.degenerate_notes` of the CNN-LSTM: collapsed to one class, no better than the majority
        class, or below a same-input baseline."""
        baselines = {name: s[metric]["mean"] for name, s in self.baseline_summary().items()}
        return degenerate_notes([f.confusion for f in self.folds], self.class_names, metric, baselines=baselines)

    @property
    def confusion(self) -> np.ndarray:
        """Pooled confusion matrix: the sum over folds."""
        return np.sum([f.confusion for f in self.folds], axis=0)

    def pooled(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Test rows of every fold (n,) and {model: (n, n_classes) probabilities}: the CNN-LSTM and each
        baseline, rows in the same order."""
        rows = np.concatenate([f.test_rows for f in self.folds])
        proba = {"CNN-LSTM": np.concatenate([f.proba for f in self.folds])}
        for name in self.folds[0].baseline_proba if self.folds else []:
            proba[name] = np.concatenate([f.baseline_proba[name] for f in self.folds])
        return rows, proba


def _mean_std(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        m: {"mean": float(np.mean([r[m] for r in rows])), "std": float(np.std([r[m] for r in rows]))} for m in METRICS
    }


# ---------------------------------------------------------------- the search

FINAL, BASE, SEED = "CNN-LSTM (final)", "CNN-LSTM (base config)", "CNN-LSTM (seed config)"
HELD_NAMES = {"final": FINAL, "base": BASE, "seed": SEED}


@dataclass
class HeldOut:
    """One configuration retrained on the search subjects and scored on the held-out subjects."""

    result: FoldResult  # scores, probabilities (and the model when kept) on the held-out windows
    fold: Fold  # the retraining split (search subjects: train + validation) and its scaler and RFE
    groups: np.ndarray  # (n_held,) subject of each held-out window, in result order
    y: np.ndarray  # (n_held,) true class of each held-out window


@dataclass
class TrialRecord:
    """One trial of a search as the driver follows it: parameters, the score of every finished fold, status."""

    trial_id: str
    params: dict
    fold_scores: dict[int, float] = field(default_factory=dict)  # fold index -> score of the search metric
    status: str = "running"  # running | completed | pruned | error
    seconds: float = math.nan
    node: str = ""
    stopped_by: str = ""  # the pruning rule that stopped it (pruned trials)

    @property
    def mean(self) -> float:
        """The mean of its fold scores (NaN before its first fold): its CV score once completed."""
        return float(np.mean(list(self.fold_scores.values()))) if self.fold_scores else math.nan

    @property
    def std(self) -> float:
        """The population standard deviation of its fold scores (NaN before its first fold)."""
        return float(np.std(list(self.fold_scores.values()))) if self.fold_scores else math.nan


@dataclass
class SearchResult:
    """A finished search: every trial, the final choice and its BBC-CV estimate, and the final, base and seed
    configurations retrained on the search subjects and scored on the held-out subjects (what `emoma.search`
    returns; its DataFrame views are what trials.csv and the holdout files hold)."""

    name: str
    storage: ExperimentStorage  # the experiment's folder (its local side holds EmoMA's outputs)
    metric: str
    holdout_subjects: list
    search_subjects: list
    plan: FoldPlan
    trials: list[TrialRecord]
    base_trial: TrialRecord | None  # the base configuration's trial
    seed_trial: TrialRecord | None  # the seed configuration's trial
    best: TrialRecord  # the completed trial with the best mean (the naive choice)
    best_config: Config
    base_config: Config  # the base configuration (what the final retraining of "base" runs)
    seed_config: Config  # what the seed trial ran
    selection: Selection  # the final choice (rule, trials and weights) and its BBC-CV estimate
    final_configs: dict[str, Config]  # trial id -> configuration of each member of the final model
    curve: list[dict]  # best-so-far CV and BBC-CV estimate against the number of completed trials
    held: dict[
        str, HeldOut
    ]  # "final", "base" (with baselines), "seed" and "final TRIAL" per member, on held-out subjects
    feature_names: list[str]
    class_names: list[str]
    space: dict
    importances: dict[str, float]  # Optuna's fANOVA parameter importances ({} with too few completed trials)
    seconds: float
    pruner: str
    fidelity: str  # what trials trained: low (one model per fold, no refit) or full
    notes: list[str] = field(default_factory=list)
    window_s: float | None = None  # the window length of the time-gap rule (None: no time column)

    @property
    def folder(self) -> Path:
        """The experiment's local folder (EmoMA's outputs)."""
        return self.storage.local

    @property
    def completed(self) -> list[TrialRecord]:
        """The trials that ran every fold, in trial order."""
        return [t for t in self.trials if t.status == "completed"]

    @property
    def trials_frame(self) -> pd.DataFrame:
        """One row per trial: status, the rule that stopped it, mean ± std, parameters, fold scores (trials.csv)."""
        ids = [t.trial_id if t else None for t in (self.base_trial, self.seed_trial)]
        return trials_table(self.trials, len(self.plan.folds), *ids)

    @property
    def holdout_scores(self) -> pd.DataFrame:
        """One row per model scored on the held-out subjects (final, base, seed, the baselines), one column per
        metric, pooled over the held-out windows (holdout_metrics.json's models)."""
        rows = {HELD_NAMES[k]: self.held[k].result.metrics for k in HELD_NAMES} | self.held["base"].result.baselines
        return pd.DataFrame(rows).T

    @property
    def holdout_predictions(self) -> pd.DataFrame:
        """One row per held-out window: subject, true class index, each model's class probabilities (as
        holdout_predictions.csv)."""
        final = self.held["final"]
        frame = pd.DataFrame({"subject": [str(s) for s in final.groups], "true": final.y})
        probas = {HELD_NAMES[k]: self.held[k].result.proba for k in HELD_NAMES}
        probas.update(self.held["base"].result.baseline_proba)
        for name, proba in probas.items():
            for c, cls in enumerate(self.class_names):
                frame[f"{name}|{cls}"] = proba[:, c]
        return frame

    @property
    def confusion(self) -> pd.DataFrame:
        """The final model's confusion matrix on the held-out windows, rows true, columns predicted."""
        return pd.DataFrame(
            self.held["final"].result.confusion,
            index=pd.Index(self.class_names, name="true"),
            columns=pd.Index(self.class_names, name="predicted"),
        )

    @property
    def final_model(self) -> TrainedModel:
        """The final choice retrained on the search subjects (an ensemble's members with their weights), in
        memory: what final_model.pt holds (`.predict(frame)`, `.save(path)`)."""
        members = [
            (self.held[f"final {t}"].result.model, self.final_configs[t], self.held[f"final {t}"].fold, w)
            for t, w in self.selection.weights.items()
        ]
        from emoma.predict import TrainedModel, bundle_of

        return TrainedModel(bundle_of(members, self.feature_names, self.class_names, self.window_s))

    def degenerate_notes(self) -> list[str]:
        """`emoma.metrics.degenerate_notes` of the final model on the held-out subjects, against the base
        configuration's same-input baselines there."""
        final, base = self.held["final"].result, self.held["base"].result
        return degenerate_notes(
            [final.confusion],
            self.class_names,
            self.metric,
            what="the final model",
            baselines={name: m[self.metric] for name, m in base.baselines.items()},
        )


def trials_table(trials: list, n_folds: int, base_trial: str | None, seed_trial: str | None) -> pd.DataFrame:
    """One row per trial (TrialRecord): status, the rule that stopped it, mean ± std, parameters, fold scores."""
    rows = []
    for t in trials:
        row = {
            "trial": t.trial_id,
            "status": t.status,
            "stopped_by": t.stopped_by,
            "base_config": t.trial_id == base_trial,
            "seed_config": t.trial_id == seed_trial,
            "mean": t.mean,
            "std": t.std,
            "folds_done": len(t.fold_scores),
            "seconds": round(t.seconds, 2),
            "node": t.node,
            **{f"param.{k}": v for k, v in sorted(t.params.items())},
        }
        row.update({f"fold_{i + 1}": t.fold_scores.get(i) for i in range(n_folds)})
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the out-of-fold store


@dataclass
class OOFStore:
    """Every scored window of a search and each trial's class probabilities for it."""

    rows: np.ndarray  # (n,) the window's row in the search table
    subjects: np.ndarray  # (n,) its subject (as str)
    folds: np.ndarray  # (n,) the fold that scored it
    y: np.ndarray  # (n,) its true class index
    class_names: list[str]
    trials: dict[str, np.ndarray] = field(default_factory=dict)  # trial id -> (n, C); NaN rows: fold not run
    baselines: dict[str, np.ndarray] = field(default_factory=dict)  # same-input baselines, the base trial's folds

    @classmethod
    def for_plan(
        cls, groups: np.ndarray, y: np.ndarray, fold_tests: list[np.ndarray], class_names: list[str]
    ) -> OOFStore:
        """The windows of a fold plan's test folds (each row of the search table is tested once)."""
        folds = np.full(len(y), -1)
        for i, test in enumerate(fold_tests):
            folds[test] = i
        rows = np.flatnonzero(folds >= 0)
        return cls(rows, np.asarray(groups)[rows].astype(str), folds[rows], np.asarray(y)[rows], list(class_names))

    def place(self, rows: np.ndarray, proba: np.ndarray) -> np.ndarray:
        """(n, C) with `proba` (m, C) at the windows of table rows `rows` (m,), NaN elsewhere."""
        rows = np.asarray(rows, dtype=int)
        position = np.full(max(int(self.rows.max()), int(rows.max(initial=0))) + 1, -1)
        position[self.rows] = np.arange(len(self.rows))
        if (position[rows] < 0).any():
            raise ValueError(f"rows {rows[position[rows] < 0][:5].tolist()} are not windows of this store")
        out = np.full((len(self.rows), len(self.class_names)), np.nan)
        out[position[rows]] = proba
        return out

    def add_trial(self, trial_id: str, arrays: dict[str, np.ndarray], baselines: bool = False) -> None:
        """A trial's out-of-fold arrays as its checkpoint keeps them: `rows` (m,), `proba` (m, C) and `baseline_NAME`
        (m, C) where it scored the baselines, kept with `baselines` (the base trial's, when it scored every window).
        A trial with no finished fold adds nothing."""
        if "rows" not in arrays:
            return
        self.trials[trial_id] = self.place(arrays["rows"], arrays["proba"])
        if baselines and self.complete(trial_id):
            for key, proba in arrays.items():
                if key.startswith("baseline_"):
                    self.baselines[key.removeprefix("baseline_")] = self.place(arrays["rows"], proba)

    def complete(self, trial_id: str) -> bool:
        """Whether trial `trial_id` scored every window (ran every fold)."""
        return trial_id in self.trials and not np.isnan(self.trials[trial_id]).any()

    def save(self, folder: Path, trials: list[str] | None = None) -> list[str]:
        """Write windows.csv, classes.txt, the baselines and one .npy per trial (`trials`, default all) into
        `folder/oof`; returns the files written, relative to `folder`."""
        out = Path(folder) / OOF_DIR
        out.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame({"row": self.rows, "subject": self.subjects, "fold": self.folds, "true": self.y})
        with atomic_path(out / "windows.csv") as tmp:
            frame.to_csv(tmp, index=False)
        with atomic_path(out / "classes.txt") as tmp:
            tmp.write_text("\n".join(self.class_names) + "\n")
        arrays = {f"baseline_{k}": v for k, v in self.baselines.items()}
        arrays |= {f"trial_{t}": self.trials[t] for t in (self.trials if trials is None else trials)}
        for name, array in arrays.items():
            with atomic_path(out / f"{name}.npy") as tmp, tmp.open("wb") as f:
                np.save(f, array)
        return [f"{OOF_DIR}/{name}" for name in ("windows.csv", "classes.txt", *(f"{a}.npy" for a in arrays))]

    @classmethod
    def load(cls, folder: Path) -> OOFStore | None:
        """The store saved in `folder/oof`, or None when there is none."""
        out = Path(folder) / OOF_DIR
        if not (out / "windows.csv").is_file():
            return None
        frame = pd.read_csv(out / "windows.csv", dtype={"subject": str})
        class_names = (out / "classes.txt").read_text().split("\n")[:-1]
        store = cls(
            frame["row"].to_numpy(),
            frame["subject"].to_numpy(),
            frame["fold"].to_numpy(),
            frame["true"].to_numpy(),
            class_names,
        )
        for path in sorted(out.glob("trial_*.npy")):
            store.trials[path.stem.removeprefix("trial_")] = np.load(path)
        for path in sorted(out.glob("baseline_*.npy")):
            store.baselines[path.stem.removeprefix("baseline_")] = np.load(path)
        return store


def write_trial_oof(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    """A trial's out-of-fold predictions in its checkpoint: `rows` (m,) of the search table, `proba` (m, C),
    and `baseline_NAME` (m, C) where the trial scored the baselines."""
    np.savez(folder / OOF_FILE, **arrays)


def read_trial_oof(folder: Path) -> dict[str, np.ndarray]:
    """The arrays `write_trial_oof` wrote into a checkpoint folder ({} when it holds none)."""
    path = folder / OOF_FILE
    if not path.is_file():
        return {}
    with np.load(path) as saved:
        return {k: saved[k] for k in saved.files}
