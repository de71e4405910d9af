"""Watching a search: the live trials.csv and report, --status, MLflow runs, the Optuna journal."""

import json
import os
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest

from emoma.errors import UserError

from conftest import ROOT

SMOKE = ROOT / "configs" / "smoke.yaml"
SMOKE_SPACE = ROOT / "configs" / "smoke_space.yaml"
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
mlflow = pytest.importorskip("mlflow")


def runs_of(uri, experiment):
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client, client.search_runs([found.experiment_id]) if found else []


def test_a_running_search_can_be_watched_and_is_tracked(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [
        sys.executable,
        str(ROOT / "search.py"),
        "--config",
        str(SMOKE),
        "--space",
        str(SMOKE_SPACE),
        "--seed-config",
        str(SMOKE),
        "--storage-path",
        str(tmp_path),
        "--name",
        "w",
        "--num-samples",
        "4",
        "--max-concurrent",
        "1",
        "--set",
        f"cv.cache_dir={tmp_path}/cache",
        "--set",
        "train.epochs=12",
        "--mlflow",
        uri,
    ]
    proc = subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    live = tmp_path / "w" / "trials.csv"
    watched = False
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not watched:
        if live.is_file():
            rows = pd.read_csv(live)  # always a whole file: written under another name, then renamed
            if 1 <= len(rows) < 4:
                assert "(in progress)" in (tmp_path / "w" / "report.md").read_text()
                status = subprocess.run(
                    [
                        sys.executable,
                        str(ROOT / "search.py"),
                        "--status",
                        "--name",
                        "w",
                        "--storage-path",
                        str(tmp_path),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert status.returncode == 0 and "not finished" in status.stdout, status.stderr
                assert "of 4 trials finished" in status.stdout and rows["trial"].iloc[0] in status.stdout
                if (rows["status"] == "completed").any():  # the selection so far, in the report and --status
                    assert "so far, final choice (guard)" in status.stdout
                    assert "BBC-CV estimate" in (tmp_path / "w" / "report.md").read_text()
                    assert json.loads((tmp_path / "w" / "search_metrics.json").read_text())["partial"]
                watched = True
        time.sleep(0.2)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert watched, "the running search was never seen with 1-3 finished trials"
    trials = pd.read_csv(live)
    assert len(trials) == 4 and "(in progress)" not in (tmp_path / "w" / "report.md").read_text()

    client, runs = runs_of(uri, "emoma-search")
    parents = [r for r in runs if r.data.tags.get("emoma.kind") == "search"]
    assert len(parents) == 1
    parent = parents[0]
    assert "holdout_final_macro_f1" in parent.data.metrics and parent.data.params["train.epochs"] == "12"
    assert {"bbc_cv_estimate", "bbc_cv_ci_low", "bbc_cv_accuracy_estimate"} <= set(parent.data.metrics)
    live = client.get_metric_history(parent.info.run_id, "bbc_cv_estimate")  # logged after every finished trial
    assert len({m.step for m in live}) >= 2 and max(m.step for m in live) == 4
    assert parent.data.tags["selection.rule"] == "guard" and json.loads(parent.data.tags["selection.final"])
    assert len(parent.data.tags["data.sha256"]) == 64
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.md", "confusion_matrix.png", "final_model.pt", "trials.csv", "search_metrics.json"} <= artifacts
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["trial_id"] for r in children) == sorted(trials["trial"])
    for child in children:
        row = trials[trials["trial"] == child.data.tags["trial_id"]].iloc[0]
        assert child.data.tags["status"] == row["status"] and child.info.status == "FINISHED"
        history = client.get_metric_history(child.info.run_id, "fold_macro_f1")
        assert [m.step for m in history] == list(range(1, row["folds_done"] + 1))
        assert child.data.metrics["mean_macro_f1"] == pytest.approx(row["mean"])

    # the Optuna journal (what optuna-dashboard reads) holds every trial with its state
    study = optuna.load_study(
        study_name="w",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "w" / "optuna_study.log"))
        ),
    )
    states = {"completed": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED}
    assert sorted(t.state for t in study.trials) == sorted(states[s] for s in trials["status"])


def test_an_unreachable_tracking_uri_stops_before_the_search(tmp_path):
    command = [
        sys.executable,
        str(ROOT / "search.py"),
        "--config",
        str(SMOKE),
        "--space",
        str(SMOKE_SPACE),
        "--seed-config",
        str(SMOKE),
        "--storage-path",
        str(tmp_path),
        "--name",
        "x",
        "--mlflow",
        "http://127.0.0.1:9",
    ]
    proc = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: --mlflow http://127.0.0.1:9: cannot use the tracking store")
        and "Traceback" not in proc.stderr
    )
    assert not (tmp_path / "x" / "manifest.json").exists()


@pytest.mark.slow
def test_a_tracking_failure_is_reported_once_and_never_stops_the_run(tmp_path, capsys, monkeypatch):
    from emoma.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}", "t")
    run = tracker.start_run("r", {"a": 1})
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(tracker.client, "log_batch", broken)
    for step in range(5):
        tracker.log_metrics(run, {"x": step}, step=step)
    tracker.end(run)
    err = capsys.readouterr().err
    assert err.count("warning: MLflow tracking failed (tracking server went away)") == 1 and len(calls) == 1


@pytest.mark.slow
def test_cv_run_is_tracked_and_mlflow_is_optional(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'cv.db'}"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "cv.py"),
            "--config",
            str(SMOKE),
            "--no-progress",
            "--out",
            str(tmp_path / "out"),
            "--set",
            f"cv.cache_dir={tmp_path}/cache",
            "--mlflow",
            uri,
        ],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    client, runs = runs_of(uri, "emoma-cv")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["model.n_features"] == "6" and "accuracy_mean" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "fold_accuracy")] == [1, 2, 3]
    assert {"confusion_matrix.png", "report.md"} <= {a.path for a in client.list_artifacts(run.info.run_id)}

    from emoma.tracking import require_mlflow

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    with pytest.raises(UserError, match=r"--mlflow needs MLflow: pip install -e '.\[mlflow\]'"):
        require_mlflow()


def test_the_progress_line_counts_a_resumed_experiments_finished_trials(capsys):
    from types import SimpleNamespace

    from emoma.tune.watch import ProgressLine

    def trial(trial_id, status, **result):
        return SimpleNamespace(trial_id=trial_id, status=status, last_result=result)

    line = ProgressLine(num_samples=50)
    earlier = [
        trial("a", "TERMINATED", score=0.86, folds_done=12, folds_total=12),
        trial("b", "TERMINATED", score=0.90, folds_done=12, folds_total=12),
        trial("c", "TERMINATED", score=0.95, folds_done=4, folds_total=12),  # pruned: not a best
        trial("d", "ERROR"),
        trial("e", "PENDING"),
    ]
    line.on_step_begin(0, earlier)
    line.on_step_begin(1, earlier)  # counted once
    new = trial("f", "TERMINATED", score=0.41, folds_done=12, folds_total=12)
    line.on_trial_result(2, earlier + [new], new, new.last_result)
    line.on_trial_complete(2, earlier + [new], new)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == "trials 5/50 finished (3 completed, 1 pruned, 1 errored), 0 running; best 0.9000"
    assert len(lines) == 2
