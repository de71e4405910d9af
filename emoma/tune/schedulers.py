"""Ray Tune pieces that decide a trial's fate: Optuna told the truth, pruning over folds, user errors.

Trials share one fold order, so after each fold a trial can be compared with the best trial on exactly the
same folds. `WilcoxonFoldPruner` does that with a one-sided Wilcoxon signed-rank test (the idea of Optuna's
WilcoxonPruner); `BaselineKeepingASHA` is Tune's ASHA over folds done. Neither ever stops the base or the
seed configuration, and winners are chosen among trials that completed every fold.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import numpy as np
import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch
from scipy import stats

from emoma.files import write_atomic
from emoma.space import same_params

logger = logging.getLogger(__name__)


def protected(config: dict, points: list[dict]) -> bool:
    """Whether a trial runs one of the configurations no pruner may stop (the base and the seed)."""
    return any(same_params(config, point) for point in points)


class TruthfulOptunaSearch(OptunaSearch):
    """OptunaSearch records trials that a scheduler stopped as COMPLETE with their partial score; this one tells
    Optuna they were PRUNED (and a trial stopped by a user error FAILED), so TPE and the stored study see what
    really happened."""

    def on_trial_result(self, trial_id, result):
        if result.get("user_error"):
            return
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # Optuna has its end already: the driver died before Tune saved it, and Tune reruns the trial

    def on_trial_complete(self, trial_id, result=None, error=False):
        if trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        told = self._ot_study._storage.get_trial(ot_trial._trial_id)
        if trial_id in self._completed_trials or told.state.is_finished():
            # Optuna has this trial's end already (it failed and --resume reran it, or the driver died after
            # telling Optuna, before Tune saved the trial's end): Optuna keeps that end, and learns a complete
            # rerun's value too
            if result and not error and result.get("folds_done") == result.get("folds_total"):
                self._add_completed(told, result[self.metric])
            self._completed_trials.add(trial_id)
            return
        state = None
        if result and result.get("user_error"):
            state = optuna.trial.TrialState.FAIL
        elif result and not error and result.get("folds_done", 0) < result.get("folds_total", 0):
            state = optuna.trial.TrialState.PRUNED
        if state is None:
            return super().on_trial_complete(trial_id, result, error)
        self._ot_study.tell(ot_trial, state=state)
        self._completed_trials.add(trial_id)

    def _add_completed(self, frozen: optuna.trial.FrozenTrial, value: float) -> None:
        if frozen.state in (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED):
            self._ot_study.add_trial(
                optuna.trial.create_trial(
                    params=frozen.params,
                    distributions=frozen.distributions,
                    value=value,
                    user_attrs={"rerun_of": frozen.number},
                )
            )


class StopReasons:
    """Why each stopped trial was stopped, kept in a small JSON file of the experiment (trials.csv reads it);
    earlier runs' reasons in the file are kept."""

    def __init__(self, path):
        self.path, self.reasons = str(path), {}

    def record(self, trial_id: str, reason: str) -> None:
        self.reasons = {**read_stop_reasons(self.path), **self.reasons, trial_id: reason}
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(self.reasons, indent=1))
        except OSError as err:  # a note for trials.csv must never stop the search
            logger.warning("could not record why trial %s stopped: %s", trial_id, err)


def read_stop_reasons(path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


class BaselineKeepingASHA(ASHAScheduler):
    """ASHA over folds done that never stops the base and seed configurations: their scores still set the bar
    for the other trials, and selection and the report can always compare with their full CV."""

    def __init__(self, keep: list[dict], reasons: StopReasons, **kwargs):
        super().__init__(**kwargs)
        self.keep, self.reasons = keep, reasons

    def on_trial_result(self, tune_controller, trial, result):
        if not result.get("decide", True):  # the trial's next folds are already trained: stopping saves nothing
            return TrialScheduler.CONTINUE
        action = super().on_trial_result(tune_controller, trial, result)
        if protected(trial.config, self.keep):
            return TrialScheduler.CONTINUE
        if action == TrialScheduler.STOP and result.get("folds_done", 0) < result.get("folds_total", 0):
            self.reasons.record(trial.trial_id, f"asha: below the rung cutoff after {result['folds_done']} folds")
        return action


class WilcoxonFoldPruner(FIFOScheduler):
    """Stop a trial when, on the folds it has run, it is worse than the best complete trial on the same folds:
    one-sided Wilcoxon signed-rank test (zero differences split, as Optuna's WilcoxonPruner), p < `p_threshold`,
    after at least `min_folds` folds. A trial whose mean is above the best's on those folds is never stopped."""

    def __init__(
        self,
        keep: list[dict],
        reasons: StopReasons,
        *,
        min_folds: int,
        p_threshold: float,
        folds_total: int,
        earlier: dict[str, dict[int, float]] | None = None,
    ):
        super().__init__()
        self.keep, self.reasons = keep, reasons
        self.min_folds, self.p_threshold, self.folds_total = min_folds, p_threshold, folds_total
        self.scores: dict[str, dict[int, float]] = {}  # trial id -> fold -> score
        self.complete: set[str] = set()
        self.remember(earlier or {})

    def remember(self, trials: dict[str, dict[int, float]]) -> None:
        """Fold scores of trials from earlier runs of the experiment (a resume, an extension): the bar to beat."""
        for trial_id, scores in trials.items():
            self.scores.setdefault(trial_id, dict(scores))
            if len(scores) == self.folds_total:
                self.complete.add(trial_id)

    def on_trial_result(self, tune_controller, trial, result):
        if "fold_scores" not in result:
            return TrialScheduler.CONTINUE
        mine = {int(f): float(v) for f, v in json.loads(result["fold_scores"]).items()}
        self.scores[trial.trial_id] = mine
        if len(mine) == self.folds_total:
            self.complete.add(trial.trial_id)
            return TrialScheduler.CONTINUE
        if len(mine) < self.min_folds or not result.get("decide", True) or protected(trial.config, self.keep):
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
            self.reasons.record(
                trial.trial_id,
                f"wilcoxon: worse than trial {best} on the same {len(folds)} folds "
                f"(one-sided p={p:.3f} < {self.p_threshold})",
            )
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def best_complete(self) -> str | None:
        if not self.complete:
            return None
        return max(self.complete, key=lambda t: np.mean(list(self.scores[t].values())))


class StopOnUserError(tune.Callback):
    """A trial that hits a user error (a bad sampled value, a missing device) reports it; the search is then
    interrupted at once, as Ctrl-C does (Tune saves every trial as it is, so --resume continues the others once
    the command is fixed), instead of retrying trials that can only fail again."""

    def __init__(self):
        self.sent = False

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("user_error") and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)  # Tune's own handler ends the run cleanly
