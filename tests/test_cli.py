"""End-to-end runs of cv.py as a user types them: in a subprocess, and (for the many error cases) its main()
in this process, which is the same code without the interpreter's start-up."""

import importlib.util
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT, run_in_process

_spec = importlib.util.spec_from_file_location("cv_cli", ROOT / "cv.py")
cv_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cv_cli)

OUTPUTS = {
    "config.yaml",
    "metrics.json",
    "folds.csv",
    "history.csv",
    "predictions.csv",
    "confusion_matrix.png",
    "learning_curves.png",
    "report.md",
}


def run_cv(*args, cwd=ROOT, tmp_path=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cache = ["--set", f"cv.cache_dir={tmp_path / 'cache'}"] if tmp_path else []
    return subprocess.run(
        [sys.executable, str(ROOT / "cv.py"), "--no-progress", *cache, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def cli(capsys):
    """`python cv.py ARGS` run in this process: (exit code, stdout, stderr)."""

    def run(*args, tmp_path=None):
        cache = ["--set", f"cv.cache_dir={tmp_path / 'cache'}"] if tmp_path else []
        return run_in_process(cv_cli.main, ["--no-progress", *cache, *map(str, args)], capsys)

    return run


@pytest.mark.slow
def test_smoke_run_writes_every_output(tmp_path):
    out = tmp_path / "out"
    proc = run_cv("--config", str(ROOT / "configs/smoke.yaml"), "--baselines", "--out", str(out), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert OUTPUTS <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"]["scheme"] == "group-kfold" and metrics["data"]["source"] == "synthetic"
    assert len(metrics["folds"]) == 3 and set(metrics["baselines"]) == {"LDA", "LogisticRegression", "RandomForest"}
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["data"]["windows"]
    assert len(pd.read_csv(out / "predictions.csv")) == metrics["data"]["windows"]
    assert "CNN-LSTM" in proc.stdout and "pooled confusion matrix" in proc.stdout
    report = (out / "report.md").read_text()
    assert "subject-wise k-fold" in report and "| LDA |" in report
    assert "- columns not used as features:\n  - `" in report  # a nested list, not flat bullets


def test_row_wise_protocol_is_labelled(cli, tmp_path):
    out = tmp_path / "out"
    proc = cli(
        "--config",
        str(ROOT / "configs/smoke.yaml"),
        "--cv",
        "kfold",
        "--out",
        str(out),
        "--task",
        "3class",
        "--set",
        "train.refit=true",
        "-v",
        tmp_path=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "WARNING: kfold splits rows, not subjects" in proc.stdout
    assert "(refit)" in proc.stdout  # the refit's epochs ran
    report = (out / "report.md").read_text()
    assert "WARNING: kfold splits rows" in report and "validation rows for its best epoch count (refit)" in report
    assert json.loads((out / "metrics.json").read_text())["protocol"]["refit"] is True
    assert json.loads((out / "metrics.json").read_text())["class_names"] == ["amusement", "baseline", "stress"]


@pytest.mark.slow
def test_repeats_summarise_whole_runs_over_seeds(cli, tmp_path):
    out = tmp_path / "out"
    proc = cli(
        "--config",
        ROOT / "configs/smoke.yaml",
        "--repeats",
        2,
        "--seed",
        3,
        "--baselines",
        "--out",
        out,
        tmp_path=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "repeats.json").read_text())
    runs = [json.loads((out / f"seed-{s}" / "metrics.json").read_text())["evaluation"]["models"] for s in (3, 4)]
    assert summary["seeds"] == [3, 4] and summary["tests"]
    ours = summary["models"]["CNN-LSTM"]["macro_f1"]
    assert ours["per_seed"] == [run["CNN-LSTM"]["ci"]["macro_f1"]["mean"] for run in runs]
    assert ours["per_seed"][0] != ours["per_seed"][1]  # another seed is another run
    subject = next(iter(runs[0]["CNN-LSTM"]["subjects"]))
    assert summary["subjects"]["LDA"][subject]["accuracy"] == pytest.approx(
        sum(run["LDA"]["subjects"][subject]["accuracy"] for run in runs) / 2
    )
    assert set(summary["comparisons"]) == {"LDA", "LogisticRegression", "RandomForest"}
    assert "over 2 seeds" in proc.stdout and "Holm-corrected" in (out / "report.md").read_text()

    # interrupted in the second seed (its outputs not written yet): --resume keeps the first and finishes it
    for name in ("metrics.json", "report.md"):
        (out / "seed-4" / name).unlink()
    (out / "repeats.json").unlink()
    again = cli("--resume", out)
    assert again.returncode == 0, again.stderr
    assert (
        "seed 3 (1/2)" not in again.stdout
        and "seed 4 (2/2)" in again.stdout
        and "3 folds already finished" in again.stdout
    )
    assert json.loads((out / "repeats.json").read_text()) == summary


@pytest.mark.parametrize(
    "args, message",
    [
        (["--repeats", 2, "--mlflow"], "--mlflow tracks one run"),
        (["--repeats", 0], "--repeats 0: give 2 or more seeds"),
    ],
)
def test_repeats_refuses_what_it_cannot_honour(cli, tmp_path, args, message):
    proc = cli("--config", ROOT / "configs/smoke.yaml", "--out", tmp_path / "o", *args, tmp_path=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture
def nan_csv(tmp_path, small_frame):
    frame = small_frame.copy()
    frame.loc[[1, 2], "EDA_mean"] = float("nan")
    path = tmp_path / "nan.csv"
    frame.to_csv(path)
    return path


def user_error_cases(tmp_path, small_frame, nan_csv):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train: [\n")
    no_subject = tmp_path / "no_subject.csv"
    small_frame.drop(columns="subject").to_csv(no_subject)
    duplicated_time = tmp_path / "duplicated_time.csv"
    small_frame.assign(time_s=30.0 * (small_frame.groupby("subject").cumcount() // 2)).to_csv(duplicated_time)
    text_time = tmp_path / "text_time.csv"
    small_frame.assign(time_s="noon").to_csv(text_time)
    return [
        (["--set", "model.context=0"], "config model.context=0 is invalid: it must be at least 1"),
        (["--set", "model.context=500"], "model.context=500 is longer than subject"),
        (
            ["--set", "data.subject_norm=zscore"],
            "data.subject_norm='zscore' is invalid: it must be one of none, subject",
        ),
        (["--data", str(duplicated_time)], "has two windows at time_s=0"),
        (["--data", str(text_time)], "time column 'time_s' holds non-numeric values such as 'noon'"),
        (["--data", str(tmp_path / "missing.csv")], "does not exist"),
        (["--data", str(no_subject)], "has no subject column 'subject'"),
        (["--data", str(nan_csv)], "2 rows have NaN or infinite values in EDA_mean"),
        (["--config", str(bad_yaml)], "is not valid YAML"),
        (["--set", "model.lstm_hiden=3"], "unknown config key 'model.lstm_hiden'"),
        (["--cv", "group-kfold", "--folds", "40"], "cv.folds=40 is more than the 15 subjects"),
    ]


def test_user_errors_exit_2_with_one_line(cli, tmp_path, small_frame, nan_csv):
    for i, (args, message) in enumerate(user_error_cases(tmp_path, small_frame, nan_csv)):
        proc = cli(
            "--config", str(ROOT / "configs/smoke.yaml"), *args, "--out", str(tmp_path / f"o{i}"), tmp_path=tmp_path
        )
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_drop_nan_flag(cli, tmp_path, nan_csv):
    out = tmp_path / "out"
    proc = cli(
        "--config",
        str(ROOT / "configs/smoke.yaml"),
        "--data",
        str(nan_csv),
        "--drop-nan",
        "--out",
        str(out),
        tmp_path=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "metrics.json").read_text())["data"]["dropped_rows"] == 2


def test_default_config_on_real_table_binary_loso(tmp_path, real_data):
    """The README's claim: binary LOSO with configs/default.yaml on real WESAD reaches accuracy >= 0.85."""
    out = tmp_path / "out"
    proc = run_cv("--data", str(real_data), "--out", str(out), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["accuracy"]["mean"] >= 0.85, summary
