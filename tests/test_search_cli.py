"""search.py's command line, run in this process (one shared Ray): resume from the manifest, flags that mean
what they say, refused resources; and (in a process of its own) a user error inside a trial."""

import importlib.util
import json
import os
import subprocess
import sys

import optuna
import pandas as pd
import pytest
import yaml

from conftest import ROOT, run_in_process

SMOKE = ROOT / "configs" / "smoke.yaml"
SMOKE_SPACE = ROOT / "configs" / "smoke_space.yaml"
_spec = importlib.util.spec_from_file_location("search_cli", ROOT / "search.py")
search_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(search_cli)


@pytest.fixture(scope="module", autouse=True)
def shared_ray(ray_session):
    yield


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `python search.py ARGS` in this process; returns (exit code, stdout, stderr)."""

    def run(*args):
        argv = [str(a) for a in args]
        monkeypatch.setattr(sys, "argv", ["search.py", *argv])
        return run_in_process(search_cli.main, argv, capsys)

    return run


def search(cli, tmp_path, *args):
    return cli(
        "--config",
        SMOKE,
        "--space",
        SMOKE_SPACE,
        "--seed-config",
        SMOKE,
        "--storage-path",
        tmp_path,
        "--set",
        f"cv.cache_dir={tmp_path}/cache",
        *args,
    )


def resume(cli, tmp_path, name, *args):
    """--resume as a user types it: only the name and what changes (no --config, --space, --seed-config)."""
    return cli("--resume", "--name", name, "--storage-path", tmp_path, *args)


def one_error_line(proc, message):
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 3-trial search named e."""
    tmp_path = tmp_path_factory.mktemp("exp")
    argv = [
        "--config",
        SMOKE,
        "--space",
        SMOKE_SPACE,
        "--seed-config",
        SMOKE,
        "--storage-path",
        tmp_path,
        "--set",
        f"cv.cache_dir={tmp_path}/cache",
        "--name",
        "e",
        "--num-samples",
        3,
        "--cv",
        "group-kfold",
        "--folds",
        2,
        "--seed",
        1,
    ]
    saved = sys.argv
    sys.argv = ["search.py", *map(str, argv)]
    try:
        search_cli.main([str(a) for a in argv])
    finally:
        sys.argv = saved
    return tmp_path


def test_manifest_records_the_experiment(finished):
    manifest = json.loads((finished / "e" / "manifest.json").read_text())
    assert manifest["config"]["seed"] == 1 and manifest["config"]["cv"]["scheme"] == "group-kfold"
    assert manifest["num_samples"] == 3 and len(manifest["fold_order"]) == 2
    assert len(manifest["holdout_subjects"]) == 3 and manifest["data"]["rows"] > 1000
    assert set(manifest["space"]) == {"train.lr", "model.n_features", "model.lstm_hidden"}
    assert {"torch", "ray", "optuna"} <= set(manifest["versions"]) and "--num-samples" in manifest["command"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seed", 9], "--resume: seed was 1 when experiment e started, the command line gives 9"),
        (
            ["--cv", "loso"],
            "--resume: cv.scheme was 'group-kfold' when experiment e started, the command line gives 'loso'",
        ),
        (["--set", "model.fc=3"], "--resume: model.fc was 8"),
        (["--num-samples", 2], "--num-samples 2 is fewer than the experiment's 3"),
        (["--outer", "loso"], "was a single search: drop --outer loso"),
    ],
)
def test_a_resume_that_contradicts_the_manifest_stops(cli, finished, args, message):
    one_error_line(resume(cli, finished, "e", *args), message)


def test_resume_extends_explicitly_and_never_loops(cli, finished):
    again = resume(cli, finished, "e")  # finished: nothing to run, nothing to re-run
    assert again.returncode == 0, again.stderr
    assert len(pd.read_csv(finished / "e" / "trials.csv")) == 3
    more = resume(cli, finished, "e", "--num-samples", 4)
    assert more.returncode == 0, more.stderr
    assert "extending the search from 3 to 4 trials" in more.stdout
    trials = pd.read_csv(finished / "e" / "trials.csv")
    assert len(trials) == 4 and trials["trial"].is_unique
    study = optuna.load_study(
        study_name="e",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(finished / "e" / "optuna_study.log"))
        ),
    )
    assert len(study.trials) == 4  # the extension continued the same Optuna study
    assert json.loads((finished / "e" / "manifest.json").read_text())["num_samples"] == 4
    assert resume(cli, finished, "e").returncode == 0  # and it resumes again without repeating --num-samples


def test_a_resume_may_change_how_the_final_choice_is_made(cli, finished):
    again = resume(cli, finished, "e", "--select", "ensemble")
    assert again.returncode == 0, again.stderr
    assert "search.select='ensemble' for the final choice (the experiment started with 'guard')" in again.stdout
    assert json.loads((finished / "e" / "search_metrics.json").read_text())["rule"] == "ensemble"
    assert "final choice (ensemble)" in again.stdout


def test_epochs_and_set_fix_a_searched_key(cli, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(
        "train.epochs: {choice: [20, 30]}\ntrain.lr: {float: [1e-3, 1e-2], log: true}\n"
        "model.n_features: {int: [3, 8]}\ndata.subject_norm: {choice: [none, subject, causal]}\n"
    )
    proc = search(
        cli,
        tmp_path,
        "--name",
        "f",
        "--space",
        space,
        "--num-samples",
        2,
        "--epochs",
        1,
        "--cv",
        "group-kfold",
        "--folds",
        2,
        "--set",
        "train.lr=3e-3",
        "--set",
        "data.subject_norm=causal",
        "--select",
        "one-se",
        "--fidelity",
        "low",
    )
    assert proc.returncode == 0, proc.stderr
    assert "train.epochs fixed at 1 by the command line: not searched" in proc.stdout
    assert "train.lr fixed at 0.003" in proc.stdout
    assert "data.subject_norm fixed at 'causal'" in proc.stdout and "subject normalisation causal (" in proc.stdout
    # 2 folds, no more than the grace folds: ASHA (the default) could stop nothing, and says so
    assert "note: no pruning: every trial runs its 2 folds, no more than search.grace_folds (4)" in proc.stdout
    trials = pd.read_csv(tmp_path / "f" / "trials.csv")
    assert not [c for c in trials.columns if c in ("param.train.epochs", "param.train.lr", "param.data.subject_norm")]
    assert yaml.safe_load((tmp_path / "f" / "best_config.yaml").read_text())["train"]["epochs"] == 1
    held = json.loads((tmp_path / "f" / "holdout_metrics.json").read_text())
    assert [m["epochs_run"] for m in held["final"]["members"]] == [1] * len(held["final"]["members"])
    metrics = json.loads((tmp_path / "f" / "search_metrics.json").read_text())
    assert metrics["rule"] == "one-se" and metrics["fidelity"] == "low" and held["final"]["rule"] == "one-se"
    assert "final choice (one-se)" in proc.stdout


def test_folds_without_a_k_fold_protocol_is_an_error(cli, tmp_path):
    one_error_line(
        search(cli, tmp_path, "--cv", "loso", "--folds", 3), "--folds 3 does not apply to leave-one-subject-out"
    )
    proc = subprocess.run(
        [sys.executable, str(ROOT / "cv.py"), "--config", str(SMOKE), "--cv", "loso", "--folds", "3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    one_error_line(proc, "use --cv group-kfold --folds 3")


def test_context_under_row_wise_folds_is_refused(cli, tmp_path):
    # neighbouring windows share their context: row-wise folds would put a test window's context in training
    one_error_line(
        search(cli, tmp_path, "--cv", "kfold", "--folds", 3, "--set", "model.context=3"),
        "model.context=3 is invalid: it must be 1 under cv.scheme=kfold",
    )
    space = tmp_path / "space.yaml"
    space.write_text("model.context: {choice: [1, 3]}\n")
    one_error_line(
        cli(
            "--config",
            SMOKE,
            "--space",
            space,
            "--seed-config",
            SMOKE,
            "--storage-path",
            tmp_path,
            "--cv",
            "kfold",
            "--folds",
            3,
            "--name",
            "k",
        ),
        "model.context: value 3 is not allowed (config model.context=3 is invalid: it must be 1 under cv.scheme=kfold",
    )
    assert not list((tmp_path / "k").glob("trial_*"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gpus-per-trial", 1], "--gpus-per-trial 1 cannot be met: no node of the cluster has a GPU"),
        (["--cpus-per-trial", 64], "--cpus-per-trial 64 is more than any node of the cluster has"),
    ],
)
def test_impossible_resources_are_refused_before_any_trial(cli, tmp_path, args, message):
    one_error_line(search(cli, tmp_path, "--name", "r", *args), message)
    assert not list((tmp_path / "r").glob("trial_*"))


def process(tmp_path, *args):
    """search.py in a process of its own (the search interrupts itself on a user error)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "search.py"), *map(str, args)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=400,
    )


def test_a_user_error_inside_a_trial_ends_the_search_without_retries(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    common = ["--storage-path", tmp_path, "--name", "u"]
    proc = process(
        tmp_path,
        "--config",
        SMOKE,
        "--space",
        SMOKE_SPACE,
        "--seed-config",
        SMOKE,
        *common,
        "--set",
        f"cv.cache_dir={tmp_path}/cache",
        "--device",
        "cuda",
        "--num-samples",
        3,
        "--max-concurrent",
        1,
    )
    one_error_line(proc, "train.device=cuda but no CUDA device is available")
    results = list((tmp_path / "u").glob("trial_*/result.json"))
    assert len(results) == 1  # the first trial reported the error; no other trial started
    assert len(results[0].read_text().strip().splitlines()) == 1  # and it was not retried
    fixed = process(tmp_path, "--resume", *common, "--device", "cpu")  # where trials run may change on resume
    assert fixed.returncode == 0, fixed.stderr
    trials = pd.read_csv(tmp_path / "u" / "trials.csv")
    # the interrupted trial runs again on the CPU (or, if it had already ended, stays marked as an error)
    assert len(trials) == 3 and (trials["status"] == "completed").sum() >= 2 and "pruned" not in set(trials["status"])
