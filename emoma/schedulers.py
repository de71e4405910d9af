"""Ray Tune pieces that decide a trial's fate: Optuna told the truth, pruning over folds, user errors.

Trials share one fold order, so after each fold a trial can be compared with the best trial on exactly the
same folds. `WilcoxonFoldPruner` does that with a one-sided Wilcoxon signed-rank test (the idea of Optuna's
WilcoxonPruner); `BaselineKeepingASHA` is Tune's ASHA over folds done. Neither ever stops the seed
configuration, and winners are chosen among trials that completed every fold.
"""
from __future__ import annotations

import json
import math

import numpy as np
import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch
from scipy import stats

from emoma.files import write_atomic


def same_params(a: dict, b: dict) -> bool:
    return all(k in a and (a[k] == b[k] or (isinstance(b[k], float) and math.isclose(a[k], b[k]))) for k in b)


class TruthfulOptunaSearch(OptunaSearch):
    """OptunaSearch records trials that a scheduler stopped as COMPLETE with their partial score; this one tells
    Optuna they were PRUNED (and a trial stopped by a user error FAILED), so TPE and the stored study see what
    really happened."""

    def on_trial_complete(self, trial_id, result=None, error=False):
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        state = None
        if result and result.get("user_error"):
            state = optuna.trial.TrialState.FAIL
        elif result and not error and result.get("folds_done", 0) < result.get("folds_total", 0):
            state = optuna.trial.TrialState.PRUNED
        if state is None:
            return super().on_trial_complete(trial_id, result, error)
        self._ot_study.tell(self._ot_trials[trial_id], state=state)
        self._completed_trials.add(trial_id)


class StopReasons:
    """Why each stopped trial was stopped, kept in a small JSON file of the experiment (trials.csv reads it)."""

    def __init__(self, path):
        self.path, self.reasons = str(path), {}

    def record(self, trial_id: str, reason: str) -> None:
        self.reasons[trial_id] = reason
        write_atomic(self.path, json.dumps(self.reasons, indent=1))


def read_stop_reasons(path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


class BaselineKeepingASHA(ASHAScheduler):
    """ASHA over folds done that never stops the baseline (seed) configuration: its score still sets the bar
    for the other trials, and the report can always compare the best against its full CV."""

    def __init__(self, baseline: dict, reasons: StopReasons, **kwargs):
        super().__init__(**kwargs)
        self.baseline, self.reasons = baseline, reasons

    def on_trial_result(self, tune_controller, trial, result):
        action = super().on_trial_result(tune_controller, trial, result)
        if same_params(trial.config, self.baseline):
            return TrialScheduler.CONTINUE
        if action == TrialScheduler.STOP and result.get("folds_done", 0) < result.get("folds_total", 0):
            self.reasons.record(trial.trial_id, f"asha: below the rung cutoff after {result['folds_done']} folds")
        return action


class WilcoxonFoldPruner(FIFOScheduler):
    """Stop a trial when, on the folds it has run, it is worse than the best complete trial on the same folds:
    one-sided Wilcoxon signed-rank test (zero differences split, as Optuna's WilcoxonPruner), p < `p_threshold`,
    after at least `min_folds` folds. A trial whose mean is above the best's on those folds is never stopped."""

    def __init__(self, baseline: dict, reasons: StopReasons, *, min_folds: int, p_threshold: float,
                 folds_total: int):
        super().__init__()
        self.baseline, self.reasons = baseline, reasons
        self.min_folds, self.p_threshold, self.folds_total = min_folds, p_threshold, folds_total
        self.scores: dict[str, dict[int, float]] = {}  # trial id -> fold -> score
        self.complete: set[str] = set()

    def on_trial_result(self, tune_controller, trial, result):
        if "fold_scores" not in result:
            return TrialScheduler.CONTINUE
        mine = {int(f): float(v) for f, v in json.loads(result["fold_scores"]).items()}
        self.scores[trial.trial_id] = mine
        if len(mine) == self.folds_total:
            self.complete.add(trial.trial_id)
            return TrialScheduler.CONTINUE
        if len(mine) < self.min_folds or same_params(trial.config, self.baseline):
            return TrialScheduler.CONTINUE
        best = self.best_complete()
        if best is None or best == trial.trial_id:
            return TrialScheduler.CONTINUE
        folds = sorted(mine)
        ours = np.array([mine[f] for f in folds])
        theirs = np.array([self.scores[best][f] for f in folds])
        if ours.mean() >= theirs.mean() or np.all(ours == theirs):
            return TrialScheduler.CONTINUE
        p = stats.wilcoxon(theirs, ours, alternative="greater", zero_method="zsplit").pvalue
        if p < self.p_threshold:
            self.reasons.record(trial.trial_id, f"wilcoxon: worse than trial {best} on the same {len(folds)} folds "
                                                f"(one-sided p={p:.3f} < {self.p_threshold})")
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def best_complete(self) -> str | None:
        if not self.complete:
            return None
        return max(self.complete, key=lambda t: np.mean(list(self.scores[t].values())))


class UserErrorStopper(tune.Stopper):
    """A trial that hits a user error (a bad sampled value, a missing device) reports it; the whole search
    stops at once instead of retrying a trial that can only fail again."""

    def __init__(self):
        self.message = None

    def __call__(self, trial_id, result):
        if result.get("user_error"):
            self.message = result["user_error"]
            return True
        return False

    def stop_all(self):
        return self.message is not None
