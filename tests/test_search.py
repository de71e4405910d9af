"""search.py on a real in-process Ray: outputs, selection under pruning, the truth told to Optuna, resume."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from emoma.config import load_config
from emoma.errors import UserError
from emoma.experiment import save_final_model
from emoma.predict import load_model, predict_frame
from emoma.report.search import write_search_outputs
from emoma.results import OOFStore
from emoma.space import load_space, params_to_overrides, space_point
from emoma.synthetic import make_frame
from emoma.tune.search import load_study, run_search

from conftest import ROOT, interruptible

SMOKE = ROOT / "configs" / "smoke.yaml"
SMOKE_SPACE = ROOT / "configs" / "smoke_space.yaml"


@pytest.fixture(scope="module")
def local_ray(ray_session):
    yield


def smoke(tmp_path, *sets):
    return load_config(SMOKE, [f"cv.cache_dir={tmp_path / 'cache'}", "cv.folds=2", *sets])


def test_local_search_outputs_are_consistent(local_ray, tmp_path):
    config = smoke(tmp_path, "search.num_samples=3")
    space = load_space(SMOKE_SPACE)
    result = run_search(config, space, config, storage_path=tmp_path / "exp", name="s", log=lambda *a: None)
    out = write_search_outputs(result, config)
    save_final_model(result)
    expected = {
        "best_config.yaml",
        "final_config.yaml",
        "trials.csv",
        "search_metrics.json",
        "holdout_metrics.json",
        "confusion_matrix.png",
        "search_history.png",
        "bbc_curve.png",
        "report.md",
        "final_model.pt",
        "optuna_study.log",
        "manifest.json",
        "holdout_predictions.csv",
        "oof",
    }
    assert expected <= {p.name for p in out.iterdir()}
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 3 and (trials["status"] == "completed").all()
    assert trials["seed_config"].sum() == 1 and trials["base_config"].sum() == 1  # both ran (one trial here)
    best = trials.loc[trials["mean"].idxmax()]
    assert best["trial"] == result.best.trial_id
    best_config = yaml.safe_load((out / "best_config.yaml").read_text())
    for key, value in result.best.params.items():
        section, name = key.split(".")
        assert best_config[section][name] == pytest.approx(value)
    held = json.loads((out / "holdout_metrics.json").read_text())
    assert len(held["subjects"]) == 3 and not set(held["subjects"]) & {str(s) for s in result.search_subjects}
    assert sum(map(sum, held["confusion_matrix"])) == held["windows"]
    assert set(held["models"]) == {"final", "base", "seed", "LDA", "LogisticRegression", "RandomForest"}
    assert all({"accuracy", "macro_f1"} <= set(m) for m in held["models"].values())
    metrics = json.loads((out / "search_metrics.json").read_text())
    assert set(metrics["bbc_cv"]) == {"metric", "estimate", "ci_low", "ci_high", "naive_best_cv", "n_bootstrap"}
    assert metrics["bbc_cv"]["naive_best_cv"] == pytest.approx(result.best.mean) and not metrics["partial"]
    assert metrics["bbc_cv_accuracy"]["metric"] == "accuracy" and metrics["fidelity"] == "full"
    store = OOFStore.load(out)
    assert {t.trial_id for t in result.completed} <= {t for t in store.trials if store.complete(t)}
    assert set(store.baselines) == {"LDA", "LogisticRegression", "RandomForest"}

    # the saved model predicts a new table; a missing feature is named
    model, bundle = load_model(out / "final_model.pt")
    frame = make_frame(seed=5, subjects=(2, 3))
    predictions = predict_frame(model, bundle, frame)
    assert len(predictions) == len(frame)
    assert predictions.filter(like="p_").sum(axis=1).round(5).eq(1).all()
    with pytest.raises(UserError, match=f"lacks features the model needs: {bundle['features'][0]}"):
        predict_frame(model, bundle, frame.drop(columns=bundle["features"][0]))

    # the same through the CLI
    frame.to_csv(tmp_path / "new.csv")
    cli = [sys.executable, "-m", "emoma.predict", "--model", str(out / "final_model.pt"), "--data"]
    proc = subprocess.run(
        cli + [str(tmp_path / "new.csv"), "--out", str(tmp_path / "p.csv")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_csv(tmp_path / "p.csv")) == len(frame)
    frame.drop(columns=bundle["features"][0]).to_csv(tmp_path / "bad.csv")
    proc = subprocess.run(
        cli + [str(tmp_path / "bad.csv"), "--out", str(tmp_path / "q.csv")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: the table lacks features")


def test_a_search_of_a_table_with_no_signal_is_estimated_at_chance(local_ray, tmp_path):
    frame = make_frame(seed=2, windows_scale=0.3)  # few windows per subject: noisy subject scores
    frame["label"] = np.random.default_rng(0).permutation(frame["label"].to_numpy())  # labels carry no signal
    csv = tmp_path / "noise.csv"
    frame.to_csv(csv)
    config = smoke(
        tmp_path,
        f"data.path={csv}",
        "cv.folds=3",
        "search.num_samples=20",
        "search.max_concurrent=1",
        "search.metric=balanced_accuracy",
        "train.metric=balanced_accuracy",
        "train.class_weights=true",
        "train.epochs=20",
        "model.dropout=0.0",
        "search.bbc_bootstrap=500",
        "search.select=best",
    )
    result = run_search(
        config, load_space(SMOKE_SPACE), config, storage_path=tmp_path / "exp", name="noise", log=lambda *a: None
    )
    # best: the rule whose naive figure is the most optimistic (every rule at chance: tests/test_select.py)
    estimate = result.selection.summary["bbc_cv"]  # balanced accuracy: chance is 0.5 whatever a model predicts
    assert len(result.completed) == 20
    assert estimate["naive_best_cv"] > 0.515 and estimate["naive_best_cv"] - estimate["estimate"] > 0.02
    assert abs(estimate["estimate"] - 0.5) < 0.02 and estimate["ci_low"] < 0.5 < estimate["ci_high"]


def test_searched_normalisation_gets_one_plan_each_and_held_out_statistics(local_ray, tmp_path, monkeypatch):
    import emoma.tune.search

    made = []
    real_make_plan = emoma.tune.search.make_plan

    def counting_make_plan(table, cfg, seed, smallest_k=0):
        made.append(table.normalisation)
        return real_make_plan(table, cfg, seed, smallest_k)

    monkeypatch.setattr(emoma.tune.search, "make_plan", counting_make_plan)
    space_file = tmp_path / "space.yaml"
    space_file.write_text("data.subject_norm: {choice: [none, subject, causal]}\nmodel.context: {choice: [1, 3]}\n")
    config = smoke(tmp_path, "search.num_samples=5", "search.prune=false")
    result = run_search(
        config, load_space(space_file), config, storage_path=tmp_path / "exp", name="norm", log=lambda *a: None
    )
    assert sorted(made) == ["causal", "none", "subject"]  # one plan per normalisation, before any trial
    assert {t.params["data.subject_norm"] for t in result.trials} > {"none"}
    assert result.best_config.data.subject_norm == result.best.params["data.subject_norm"]
    out = write_search_outputs(result, config)
    save_final_model(result)
    held = json.loads((out / "holdout_metrics.json").read_text())
    models = held["evaluation"]["models"]
    assert set(models) == {
        "CNN-LSTM (final)",
        "CNN-LSTM (base config)",
        "CNN-LSTM (seed config)",
        "LDA",
        "LogisticRegression",
        "RandomForest",
    }
    assert set(models["CNN-LSTM (final)"]["subjects"]) == {str(s) for s in result.holdout_subjects}
    assert not held["evaluation"]["tests"]  # 3 held-out subjects: scores only
    report = (out / "report.md").read_text()
    assert "Scores only: 3 subjects are too few" in report and "roc_auc" in report and "`--outer loso`" in report
    assert "BBC-CV estimate of the final model's macro_f1 on new subjects" in report
    guard = result.selection.summary["guard"]  # None where the base has the best mean
    if guard is not None:
        assert "Guard's test" in report and guard["replaced"] == (next(iter(result.selection.weights)) == guard["best"])
    model, bundle = load_model(out / "final_model.pt")
    final = result.final_configs[next(iter(result.selection.weights))]
    assert bundle["config"]["data"]["subject_norm"] == final.data.subject_norm
    assert len(predict_frame(model, bundle, make_frame(seed=5, subjects=(2, 3)))) > 0


def test_pruned_trials_never_win_and_optuna_hears_the_truth(local_ray, tmp_path):
    # lr 1e-7 cannot learn in 3 epochs: after the base (lr 0.01, 3 epochs) and seed (lr 0.01, 8 epochs) trials
    # set the bar at the first rung, ASHA stops such trials after their grace fold
    space_file = tmp_path / "space.yaml"
    space_file.write_text("train.lr: {choice: [0.01, 1.0e-7]}\nmodel.n_features: {int: [3, 8]}\n")
    config = smoke(
        tmp_path,
        "cv.folds=4",
        "search.num_samples=8",
        "search.prune=true",
        "search.grace_folds=1",
        "search.max_concurrent=1",
        "train.epochs=3",
        "train.lr=0.01",
        "model.n_features=5",
        "search.pruner=asha",
        "search.fold_batch=1",
    )
    seed = load_config(SMOKE, ["train.lr=0.01", "model.n_features=8", "train.epochs=8"])
    result = run_search(
        config, load_space(space_file), seed, storage_path=tmp_path / "exp", name="p", log=lambda *a: None
    )
    pruned = [t for t in result.trials if t.status == "pruned"]
    assert pruned, "expected ASHA to stop at least one trial"
    assert result.best.status == "completed" and len(result.best.fold_scores) == 4
    study = load_study(result.folder)
    assert all(t.stopped_by.startswith("asha") for t in pruned)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == len(pruned)
    assert states.count(optuna.trial.TrialState.COMPLETE) == len(result.completed)


def test_space_validation(tmp_path):
    space = load_space(ROOT / "configs" / "search_space.yaml")
    seed = load_config(ROOT / "configs" / "seed.yaml")
    point = space_point(seed, space)
    assert params_to_overrides(point)["model.conv_channels"] == seed.model.conv_channels
    bad = tmp_path / "bad.yaml"
    for text, message in [
        ("train.lrr: {float: [0.1, 1]}", "unknown config key 'train.lrr'"),
        ("train.lr: {float: [1, 0.1]}", "low < high"),
        ("train.lr: {float: [0, 1], log: true}", "log range needs low > 0"),
        ("train.lr: [1, 2]", "expected one of"),
        ("model.conv_blocks: {int: [1, 2]}", "go together"),
    ]:
        bad.write_text(text)
        with pytest.raises(UserError, match=message):
            load_space(bad)
    outside = load_config(ROOT / "configs" / "seed.yaml", ["train.lr=0.5"])
    with pytest.raises(UserError, match="seed config train.lr=0.5 lies outside the search space"):
        space_point(outside, space)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--space", "missing.yaml"], "search space missing.yaml does not exist"),
        (["--resume"], "--resume needs the --name"),
        (["--holdout-subjects", "2,99"], "held-out subjects 99 are not in the table"),
        (["--resume", "--name", "nothing"], "nothing to resume"),
    ],
)
def test_search_cli_user_errors(tmp_path, args, message):
    proc = subprocess.run(
        [
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
            *args,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1] and "Traceback" not in proc.stderr


def _finished_trials(folder: Path) -> dict[str, list[int]]:
    """trial folder -> folds_done of each line of its result.json, for trials that reported their last fold."""
    done = {}
    for result in folder.glob("trial_*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if lines and lines[-1]["folds_done"] == lines[-1]["folds_total"]:
            done[result.parent.name] = [line["folds_done"] for line in lines]
    return done


def test_interrupted_search_resumes_without_rerunning_finished_trials(tmp_path):
    args = [
        sys.executable,
        str(ROOT / "search.py"),
        "--config",
        str(SMOKE),
        "--space",
        str(SMOKE_SPACE),
        "--seed-config",
        str(SMOKE),
        "--num-samples",
        "4",
        "--max-concurrent",
        "1",
        "--name",
        "r",
        "--storage-path",
        str(tmp_path),
        "--set",
        f"cv.cache_dir={tmp_path / 'cache'}",
        "--set",
        "train.epochs=10",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        interruptible(args), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    progress = []  # stderr lines as they come: the progress line is printed as each trial ends

    def read():
        for line in iter(proc.stderr.readline, ""):
            progress.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and not any("trials 1/4" in x for x in list(progress)):
        time.sleep(0.05)
    assert proc.poll() is None and time.time() < deadline, "".join(progress)
    proc.send_signal(signal.SIGTERM)  # the second trial is running; a batch scheduler's stop takes Ctrl-C's path
    # (Ctrl-C inside Tune's run: the nested search test in test_faults.py)
    proc.wait(timeout=120)
    reader.join(timeout=30)
    err = "".join(progress)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: ") and "--resume --name r" in last and "Traceback" not in err, err
    finished = _finished_trials(tmp_path / "r")
    assert 1 <= len(finished) < 4

    resumed = subprocess.run(args + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr
    after = _finished_trials(tmp_path / "r")
    assert len(after) == 4
    for trial, reports in finished.items():  # no fold of a finished trial ran again
        assert after[trial][: len(reports)] == reports
        # Tune may log the final result once more when the restored trial ends; no new fold is reported
        assert set(after[trial][len(reports) :]) <= {reports[-1]}
    trials = pd.read_csv(tmp_path / "r" / "trials.csv")
    assert len(trials) == 4 and (trials["status"] == "completed").all()
    assert (tmp_path / "r" / "final_model.pt").is_file()
    store = OOFStore.load(tmp_path / "r")  # every trial's predictions, the interrupted ones' included
    assert sorted(t for t in store.trials if store.complete(t)) == sorted(trials["trial"])


def test_nested_search_holds_out_each_subject_once(local_ray, tmp_path):
    from emoma.experiment import SearchSettings, nested_search

    csv = tmp_path / "five.csv"
    make_frame(seed=3, subjects=(2, 3, 4, 5, 6), windows_scale=0.3).to_csv(csv)
    config = smoke(tmp_path, f"data.path={csv}", "search.num_samples=1")
    settings = SearchSettings(config, load_space(SMOKE_SPACE), config, "n", str(tmp_path), resume=False, outer="loso")
    nested_search(settings, log=lambda *a: None)
    nested = json.loads((tmp_path / "n" / "nested_metrics.json").read_text())
    assert [row["subject"] for row in nested["outer_folds"]] == ["2", "3", "4", "5", "6"]
    for subject in "23456":
        held = json.loads((tmp_path / "n" / f"outer-{subject}" / "holdout_metrics.json").read_text())
        assert held["subjects"] == [subject]
        manifest = json.loads((tmp_path / "n" / f"outer-{subject}" / "manifest.json").read_text())
        assert manifest["holdout_subjects"] == [subject]
    windows = sum(
        json.loads((tmp_path / "n" / f"outer-{s}" / "holdout_metrics.json").read_text())["windows"] for s in "23456"
    )
    assert sum(map(sum, nested["confusion_matrix"])) == windows
    assert set(nested["evaluation"]["models"]["CNN-LSTM (final)"]["subjects"]) == set("23456")
    calibration = nested["bbc_vs_outer"]
    assert set(calibration["per_subject"]) == set("23456") and calibration["metric"] == "macro_f1"
    differences = [v["bbc_cv"] - v["outer"] for v in calibration["per_subject"].values()]
    assert calibration["mean_difference"] == pytest.approx(np.mean(differences))
    assert calibration["mean_abs_difference"] == pytest.approx(np.mean(np.abs(differences)))


def test_asha_never_stops_the_base_or_the_seed_configuration(tmp_path):
    from types import SimpleNamespace

    from emoma.tune.schedulers import BaselineKeepingASHA, StopReasons

    scheduler = BaselineKeepingASHA(
        [{"train.lr": 0.5}, {"train.lr": 1e-7}],
        StopReasons(tmp_path / "r.json"),
        time_attr="folds_done",
        max_t=8,
        grace_period=1,
        reduction_factor=2,
    )
    scheduler.set_search_properties(metric="score", mode="max")
    good = SimpleNamespace(trial_id="good", config={"train.lr": 0.01})
    base = SimpleNamespace(trial_id="base", config={"train.lr": 0.5})
    seed = SimpleNamespace(trial_id="seed", config={"train.lr": 1e-7})
    other = SimpleNamespace(trial_id="other", config={"train.lr": 1e-3})
    for trial in (good, base, seed, other):
        scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, good, {"folds_done": 1, "score": 0.9}) == "CONTINUE"
    assert scheduler.on_trial_result(None, base, {"folds_done": 1, "score": 0.3}) == "CONTINUE"
    assert scheduler.on_trial_result(None, seed, {"folds_done": 1, "score": 0.3}) == "CONTINUE"
    # another configuration that scores worse is stopped at the same rung
    assert scheduler.on_trial_result(None, other, {"folds_done": 1, "score": 0.2, "decide": False}) == "CONTINUE"
    assert scheduler.on_trial_result(None, other, {"folds_done": 1, "score": 0.2}) == "STOP"


def test_wilcoxon_pruner_compares_like_with_like(tmp_path):
    from types import SimpleNamespace

    from emoma.tune.schedulers import StopReasons, WilcoxonFoldPruner

    reasons = StopReasons(tmp_path / "reasons.json")
    pruner = WilcoxonFoldPruner([{"train.lr": 1e-7}], reasons, min_folds=4, p_threshold=0.1, folds_total=8)

    def feed(trial, scores):  # one report per fold, each with every fold score so far
        return [
            pruner.on_trial_result(None, trial, {"fold_scores": json.dumps(dict(enumerate(scores[: n + 1])))})
            for n in range(len(scores))
        ]

    best = SimpleNamespace(trial_id="best", config={"train.lr": 0.01})
    feed(best, [0.90 + 0.01 * (fold % 3) for fold in range(8)])  # a complete trial sets the bar on every fold

    worse = SimpleNamespace(trial_id="worse", config={"train.lr": 1e-3})
    assert feed(worse, [0.80, 0.81, 0.79, 0.82, 0.80]) == ["CONTINUE"] * 3 + ["STOP", "STOP"]  # after min_folds
    assert reasons.reasons["worse"].startswith("wilcoxon: worse than trial best on the same")
    lucky = SimpleNamespace(trial_id="lucky", config={"train.lr": 2e-3})  # ahead on its folds: never stopped
    assert set(feed(lucky, [0.95, 0.96, 0.97, 0.95, 0.96])) == {"CONTINUE"}
    mixed = SimpleNamespace(trial_id="mixed", config={"train.lr": 3e-3})  # slightly behind, not significantly
    assert set(feed(mixed, [0.91, 0.89, 0.92, 0.88, 0.90])) == {"CONTINUE"}
    seed = SimpleNamespace(trial_id="seed", config={"train.lr": 1e-7})  # the seed configuration runs every fold
    assert set(feed(seed, [0.5] * 7)) == {"CONTINUE"}
    # a report in the middle of a trained group is never a stop: its next folds are trained already
    behind = SimpleNamespace(trial_id="behind", config={"train.lr": 4e-3})
    mid_group = {"fold_scores": json.dumps(dict(enumerate([0.80, 0.81, 0.79, 0.82, 0.80]))), "decide": False}
    assert pruner.on_trial_result(None, behind, mid_group) == "CONTINUE"
    assert pruner.on_trial_result(None, behind, {**mid_group, "decide": True}) == "STOP"


def test_a_trials_folds_are_trained_in_as_few_batched_models_as_pruning_allows():
    from emoma.config import SearchConfig
    from emoma.tune.search import fold_groups

    order = [4, 0, 3, 1, 2, 5]
    assert fold_groups(order, {}, SearchConfig(prune=False)) == [order]
    assert fold_groups(order, {}, SearchConfig(prune=True, grace_folds=4)) == [[4, 0, 3, 1], [2, 5]]
    assert fold_groups(order, {0: {}, 4: {}}, SearchConfig(prune=True, grace_folds=4)) == [[3, 1], [2, 5]]
    assert fold_groups(order, {}, SearchConfig(fold_batch=4)) == [[4, 0, 3, 1], [2, 5]]
    assert fold_groups(order, {}, SearchConfig(fold_batch=1)) == [[f] for f in order]
    # fold_batch cuts each part; the grace folds still end a group, where the pruner decides
    assert fold_groups(order, {}, SearchConfig(fold_batch=3)) == [[4, 0, 3], [1], [2, 5]]
    assert fold_groups(order, {}, SearchConfig(fold_batch=3, prune=False)) == [[4, 0, 3], [1, 2, 5]]


@pytest.mark.parametrize("told", [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE])
def test_a_rerun_of_a_trial_optuna_had_finished_keeps_optunas_end_and_learns_its_value(told):
    # the driver died after telling Optuna a trial's end and before Tune saved it: Tune reruns the trial
    from ray import tune

    from emoma.tune.schedulers import TruthfulOptunaSearch

    searcher = TruthfulOptunaSearch(
        space={"x": tune.uniform(0, 1)}, metric="score", mode="max", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    searcher.suggest("t")
    study = searcher._ot_study
    study.tell(searcher._ot_trials["t"], 0.1 if told == optuna.trial.TrialState.COMPLETE else None, state=told)
    searcher._completed_trials.clear()  # the searcher's state as restored, older than Optuna's journal

    searcher.on_trial_result("t", {"score": 0.5, "folds_done": 1, "folds_total": 2, "training_iteration": 1})
    searcher.on_trial_complete("t", {"score": 0.7, "folds_done": 2, "folds_total": 2, "training_iteration": 2})
    trials = study.get_trials(deepcopy=False)
    assert trials[0].state == told
    assert [t.value for t in trials[1:]] == ([] if told == optuna.trial.TrialState.COMPLETE else [0.7])


def test_search_report_says_how_trials_trained():
    from types import SimpleNamespace

    from emoma.config import apply_overrides
    from emoma.report.common import trial_fidelity

    base = load_config(ROOT / "configs" / "context.yaml", [])
    seed = load_config(ROOT / "configs" / "seed.yaml", [])
    result = SimpleNamespace(space={"train.lr": {}}, seed_config=seed, fidelity="full")
    assert "refit" in trial_fidelity(result, base) and "not the seed trial" in trial_fidelity(result, base)
    assert "not the seed trial" not in trial_fidelity(
        SimpleNamespace(space={}, seed_config=base, fidelity="full"), base
    )
    assert trial_fidelity(result, apply_overrides(base, {"train.refit": False})) == ""
    assert "is searched" in trial_fidelity(
        SimpleNamespace(space={"train.refit": {}}, seed_config=seed, fidelity="full"), base
    )
    low = trial_fidelity(SimpleNamespace(space={}, seed_config=seed, fidelity="low"), base)
    assert "one model per fold, no refit" in low
