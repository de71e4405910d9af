"""Watching a search while it runs (Ray Tune callbacks, in the driver): the progress line, the live
trials.csv and partial report.md refreshed after every finished or pruned trial, and one MLflow child run per
trial. Each trial is followed as a TrialRecord; the final report reads the same records."""

from __future__ import annotations

import json
import math
import sys

from ray import tune

from emoma.files import write_atomic
from emoma.results import OOFStore, TrialRecord, read_trial_oof, trials_table

UNFINISHED = "stopped before its last fold by the time budget or a user error"


def finished_status(result: dict | None, error: bool = False) -> str:
    result = result or {}
    if error or result.get("user_error"):
        return "error"
    return "completed" if result.get("folds_done") == result.get("folds_total") else "pruned"


class ProgressLine(tune.Callback):
    """Trials done/running/pruned/errored and the best so far: one live line on a terminal, a plain line per
    finished trial otherwise (logs, CI, nohup)."""

    def __init__(self, num_samples: int):
        self.num_samples = num_samples  # no stream kept: the Tuner pickles its callbacks
        self.best, self.states = None, {}

    def on_step_begin(self, iteration, trials, **info):
        # a resumed experiment's finished trials fire no callback again: count them from Tune's list of trials
        earlier = [t for t in trials if t.trial_id not in self.states and t.status in ("TERMINATED", "ERROR")]
        for trial in earlier:
            self._score(trial.last_result or {})
            self._finish(trial, error=trial.status == "ERROR")
        if earlier:
            self._draw()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.states[trial.trial_id] = "running"
        self._score(result)
        if sys.stderr.isatty():
            self._draw()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial)
        self._draw()

    def _score(self, result: dict) -> None:
        if "score" in result and result.get("folds_done") == result.get("folds_total") and not result.get("user_error"):
            if self.best is None or result["score"] > self.best:
                self.best = result["score"]

    def _finish(self, trial, error: bool = False) -> None:
        status = finished_status(trial.last_result, error)
        self.states[trial.trial_id] = "done" if status == "completed" else status

    def on_trial_error(self, iteration, trials, trial, **info):
        self.states[trial.trial_id] = "error"
        self._draw()

    def on_experiment_end(self, trials, **info):
        if sys.stderr.isatty():
            print(file=sys.stderr)

    def _draw(self):
        counts = {s: sum(v == s for v in self.states.values()) for s in ("done", "running", "pruned", "error")}
        best = "-" if self.best is None else f"{self.best:.4f}"
        finished = counts["done"] + counts["pruned"] + counts["error"]
        line = (
            f"trials {finished}/{self.num_samples} finished ({counts['done']} completed, {counts['pruned']} "
            f"pruned, {counts['error']} errored), {counts['running']} running; best {best}"
        )
        if sys.stderr.isatty():
            print(f"\r{line}   ", end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


class LiveResults(tune.Callback):
    """trials.csv, each trial's out-of-fold predictions, the selection so far (search_metrics.json), a partial
    report.md and the search-history plot, rewritten (atomically, then uploaded for object storage) after every
    finished or pruned trial."""

    def __init__(
        self,
        storage,
        name: str,
        metric: str,
        n_folds: int,
        num_samples: int,
        judge,
        reasons_file: str,
        also_upload: tuple = (),
    ):
        self.storage, self.name, self.metric = storage, name, metric
        self.n_folds, self.num_samples, self.judge, self.reasons_file = n_folds, num_samples, judge, reasons_file
        self.also_upload = also_upload  # the Optuna journal and stop reasons, to object storage after each trial
        self.records: dict[str, TrialRecord] = {}

    def setup(self, **info):
        self.records.update(read_trials(self.storage.local / "trials.csv"))  # earlier runs and interrupted ones
        saved = OOFStore.load(self.storage.local)
        if saved is not None:
            self.judge.store.trials.update(saved.trials)
            self.judge.store.baselines.update(saved.baselines)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        record = self._record(trial)
        if "fold_scores" in result:
            record.fold_scores = {int(f): float(v) for f, v in json.loads(result["fold_scores"]).items()}
        record.seconds, record.node = float(result.get("time_total_s", math.nan)), str(result.get("node", ""))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, finished_status(trial.last_result))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "error")

    def _record(self, trial) -> TrialRecord:
        if trial.trial_id not in self.records:
            self.records[trial.trial_id] = TrialRecord(trial.trial_id, dict(trial.config))
        return self.records[trial.trial_id]

    def _finish(self, trial, status: str) -> None:
        from emoma.plots import plot_search_history
        from emoma.report.common import write_csv
        from emoma.report.search import live_report
        from emoma.tune.schedulers import read_stop_reasons

        record = self._record(trial)
        record.status = status
        if status == "pruned":
            record.stopped_by = read_stop_reasons(self.reasons_file).get(trial.trial_id, UNFINISHED)
        store = self.judge.store
        base, _ = self._first_trials()
        store.add_trial(trial.trial_id, checkpoint_oof(trial.checkpoint), baselines=trial.trial_id == base)
        written = store.save(self.storage.local, [t for t in [trial.trial_id] if t in store.trials])
        selection = self._selection()
        finished = [r for r in self.records.values() if r.status != "running"]
        table = trials_table(finished, self.n_folds, *self._first_trials())
        plot_search_history(table, self.metric, self.storage.local / "search_history.png")
        write_atomic(
            self.storage.local / "report.md", live_report(self.name, self.metric, table, self.num_samples, selection)
        )
        write_csv(table, self.storage.local / "trials.csv")  # last: the report exists once trials.csv does
        self.storage.upload(
            "search_history.png", "report.md", "search_metrics.json", "trials.csv", *written, *self.also_upload
        )

    def _first_trials(self) -> tuple[str | None, str | None]:
        """The base and seed configurations' trial ids (None until they started)."""
        from emoma.space import same_params

        return tuple(
            next((t for t, r in self.records.items() if same_params(r.params, point)), None)
            for point in (self.judge.base_point, self.judge.seed_point)
        )

    def _selection(self) -> dict | None:
        """The selection rule applied to the trials completed so far (None before the first), written to
        search_metrics.json as a partial result."""
        records = list(self.records.values())
        if not any(r.status == "completed" and self.judge.store.complete(r.trial_id) for r in records):
            return None
        selection, _ = self.judge.select(records, live=True)
        summary = {"partial": True, **selection.summary}
        write_atomic(self.storage.local / "search_metrics.json", json.dumps(summary, indent=2))
        return summary


def checkpoint_oof(checkpoint) -> dict:
    """The out-of-fold predictions in a trial's (latest) Tune checkpoint ({} when it has none)."""
    from pathlib import Path

    if checkpoint is None:
        return {}
    with checkpoint.as_directory() as folder:
        return read_trial_oof(Path(folder))


def read_trials(path) -> dict[str, TrialRecord]:
    """TrialRecords back from a trials.csv (to go on after a resume)."""
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError):
        return {}
    records = {}
    for row in frame.to_dict(orient="records"):
        params = {k.removeprefix("param."): v for k, v in row.items() if k.startswith("param.")}
        folds = {
            int(k.removeprefix("fold_")) - 1: float(v)
            for k, v in row.items()
            if k.startswith("fold_") and not k.startswith("folds") and isinstance(v, float) and math.isfinite(v)
        }
        records[str(row["trial"])] = TrialRecord(
            str(row["trial"]),
            params,
            folds,
            str(row["status"]),
            float(row["seconds"]),
            str(row.get("node", "")),
            str(row.get("stopped_by", "") if isinstance(row.get("stopped_by"), str) else ""),
        )
    return records


class MlflowTrials(tune.Callback):
    """One MLflow child run per trial under the search's parent run: its parameters, its per-fold scores as a
    step series, its mean and its status (completed / pruned / error); on the parent run, the selection so far
    (`search_metrics.json` as LiveResults wrote it) with the completed trials as the step."""

    def __init__(self, tracker, parent_run: str | None, metric: str, folder):
        self.tracker, self.parent_run, self.metric, self.folder = tracker, parent_run, metric, folder
        self.runs: dict[str, str | None] = {}

    def _run(self, trial) -> str | None:
        if trial.trial_id not in self.runs:
            run = self.tracker.find_run("trial_id", trial.trial_id, self.parent_run)  # after a resume, the same run
            self.runs[trial.trial_id] = run or self.tracker.start_run(
                f"trial_{trial.trial_id}", dict(trial.config), tags={"trial_id": trial.trial_id}, parent=self.parent_run
            )
        return self.runs[trial.trial_id]

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "fold" in result:
            self.tracker.log_metrics(
                self._run(trial),
                {
                    f"fold_{self.metric}": result["fold_score"],
                    f"running_mean_{self.metric}": result["score"],
                    "fold": result["fold"],
                },
                step=int(result["folds_done"]),
            )

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, finished_status(trial.last_result))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "error")

    def _end(self, trial, status: str) -> None:
        run = self._run(trial)
        last = trial.last_result or {}
        if "score" in last and status != "error":
            self.tracker.log_metrics(
                run, {f"mean_{self.metric}": last["score"], "folds_done": last.get("folds_done", 0)}
            )
        self.tracker.set_tags(run, {"status": status})
        self.tracker.end(run, "FAILED" if status == "error" else "FINISHED")
        try:
            summary = json.loads((self.folder / "search_metrics.json").read_text())
        except (OSError, ValueError):
            return
        from emoma.tracking import log_selection

        log_selection(self.tracker, self.parent_run, summary)
