"""Faults a long search meets, each survived with nothing lost: a trial worker killed mid-fold, Ctrl-C during
the fold plan, the trials or the final retraining, Ctrl-C or SIGTERM (a batch scheduler's preemption) during
cv.py, an interrupted nested search, and experiments on S3-compatible object storage."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest

from emoma.config import load_config
from emoma.errors import exit_on_user_error, sigterm_as_ctrl_c
from emoma.experiment import outer_sampler_seed
from emoma.synthetic import make_frame
from emoma.tune.watch import read_trials

from conftest import ROOT, interruptible

SMOKE = ROOT / "configs" / "smoke.yaml"
SMOKE_SPACE = ROOT / "configs" / "smoke_space.yaml"
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}


def search_command(tmp_path, name, *args):
    return [
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
        name,
        "--set",
        f"cv.cache_dir={tmp_path}/cache",
        *map(str, args),
    ]


def wait_for(condition, proc, seconds=240):
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(
        f"condition not met (process {'ended: ' + str(proc.communicate()) if proc.poll() is not None else 'running'})"
    )


def result_lines(folder):
    """trial folder -> its result.json lines."""
    return {
        p.parent.name: [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        for p in folder.glob("trial_*/result.json")
    }


def interrupted(proc):
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, (out, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: ") and "Traceback" not in err, err
    return last


def test_a_trial_worker_killed_mid_fold_resumes_from_its_last_fold(tmp_path):
    command = search_command(
        tmp_path,
        "k",
        "--num-samples",
        2,
        "--max-concurrent",
        1,
        "--cv",
        "group-kfold",
        "--folds",
        4,
        "--set",
        "train.epochs=25",
        "--set",
        "search.fold_batch=1",
        "--set",
        "search.prune=false",
    )
    proc = subprocess.Popen(
        interruptible(command), cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )

    def mid_cv():
        for trial, lines in result_lines(tmp_path / "k").items():
            if lines and 1 <= lines[-1]["folds_done"] < lines[-1]["folds_total"]:
                return trial, lines[-1]

    trial, last = wait_for(mid_cv, proc)
    os.kill(last["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err
    folds = [line["fold"] for line in result_lines(tmp_path / "k")[trial] if "fold" in line]
    assert len(folds) == len(set(folds))  # no fold ran twice: the trial went on from its last checkpoint
    assert json.loads(result_lines(tmp_path / "k")[trial][-1]["fold_scores"]).keys() == {"0", "1", "2", "3"}
    trials = pd.read_csv(tmp_path / "k" / "trials.csv")
    assert len(trials) == 2 and (trials["status"] == "completed").all() and (trials["folds_done"] == 4).all()


def test_ctrl_c_during_the_plan_and_the_retraining_loses_nothing(tmp_path):
    slow_plan = ["--set", "cv.rfe_trees=100", "--set", "cv.rfe_step=1"]  # seconds: Ctrl-C lands inside it
    command = search_command(
        tmp_path, "c", "--num-samples", 2, "--cv", "group-kfold", "--folds", 2, *slow_plan, "--set", "train.epochs=40"
    )
    proc = subprocess.Popen(
        interruptible(command), cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: "fitting the scaler and RFE" in proc.stdout.readline(), proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # during the fold plan
    assert f"--resume --name c --storage-path {tmp_path}" in interrupted(proc)
    assert not list((tmp_path / "c").glob("trial_*"))

    resume = [sys.executable, str(ROOT / "search.py"), "--resume", "--name", "c", "--storage-path", str(tmp_path)]
    proc = subprocess.Popen(
        interruptible(resume), cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines = []

    def retraining():
        lines.append(proc.stdout.readline())
        return "retraining" in lines[-1]

    wait_for(retraining, proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # during the final retraining
    interrupted(proc)
    before = {t: len(v) for t, v in result_lines(tmp_path / "c").items()}
    assert len(before) == 2

    done = subprocess.run(resume, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    assert {t: len(v) for t, v in result_lines(tmp_path / "c").items()} == before  # no trial ran again
    assert (tmp_path / "c" / "final_model.pt").is_file() and (tmp_path / "c" / "report.md").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_during_cv_keeps_finished_folds(tmp_path, stop):
    out = tmp_path / "run"
    command = [
        sys.executable,
        str(ROOT / "cv.py"),
        "--config",
        str(SMOKE),
        "--out",
        str(out),
        "--no-progress",
        "--cv",
        "group-kfold",
        "--folds",
        3,
        "--set",
        f"cv.cache_dir={tmp_path}/cache",
        "--set",
        "cv.trainer=sequential",
        "--set",
        "cv.jobs=1",
        "--set",
        "train.epochs=60",
    ]
    proc = subprocess.Popen(
        interruptible(command), cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    first = wait_for(lambda: sorted((out / "folds").glob("fold-*.pkl")), proc)[0]
    proc.send_signal(stop)
    assert f"python {ROOT / 'cv.py'} --resume {out}" in interrupted(proc)  # the script as it was typed
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "folds").glob("fold-*.pkl")}
    assert first.name in kept and len(kept) < 3 and not (out / "metrics.json").exists()

    done = subprocess.run(
        [sys.executable, str(ROOT / "cv.py"), "--resume", str(out), "--no-progress"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr
    assert f"{len(kept)} folds already finished" in done.stdout
    for name, mtime in kept.items():  # the kept folds were not run again
        assert (out / "folds" / name).stat().st_mtime_ns == mtime
    assert len(json.loads((out / "metrics.json").read_text())["folds"]) == 3


def test_sigterm_takes_the_ctrl_c_path_and_is_restored_after(capsys):
    @exit_on_user_error
    def main():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)

    before = signal.getsignal(signal.SIGTERM)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        with pytest.raises(SystemExit) as exit_:
            main()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert exit_.value.code == 130 and capsys.readouterr().err.startswith("interrupted")
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("sigint", [signal.SIG_IGN, "custom"])
def test_sigterm_reaches_the_sigint_handler_in_place_even_where_sigint_is_ignored(sigint):
    seen = []  # a custom SIGINT handler stands for Tune's, which ends a search with its state saved
    previous = signal.signal(signal.SIGINT, (lambda sig, frame: seen.append(sig)) if sigint == "custom" else sigint)
    try:
        with sigterm_as_ctrl_c():
            if sigint == "custom":
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.1)
            else:
                with pytest.raises(KeyboardInterrupt):
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(30)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == ([signal.SIGINT] if sigint == "custom" else [])


def test_an_interrupted_nested_search_resumes_where_it_stopped(tmp_path):
    csv = tmp_path / "four.csv"
    make_frame(seed=3, subjects=(2, 3, 4, 5), windows_scale=0.3).to_csv(csv)
    command = search_command(
        tmp_path, "n", "--outer", "loso", "--num-samples", 2, "--data", csv, "--set", "train.epochs=30"
    )
    proc = subprocess.Popen(
        interruptible(command), cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: (tmp_path / "n" / "outer-3" / "manifest.json").is_file(), proc)
    proc.send_signal(signal.SIGINT)  # outer fold 2 finished, outer fold 3 started
    last = interrupted(proc)
    assert f"python {ROOT / 'search.py'} --outer loso --resume --name n" in last
    finished = (tmp_path / "n" / "outer-2" / "holdout_predictions.csv").stat().st_mtime_ns
    assert not (tmp_path / "n" / "outer-4").exists()

    done = subprocess.run(
        command[:2] + ["--outer", "loso", "--resume", "--name", "n", "--storage-path", str(tmp_path)],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "outer fold 2: finished earlier, kept" in done.stdout
    assert "outer fold 3 (2/4): resuming" in done.stdout and "outer fold 4 (3/4): starting" in done.stdout
    assert (tmp_path / "n" / "outer-2" / "holdout_predictions.csv").stat().st_mtime_ns == finished
    nested = json.loads((tmp_path / "n" / "nested_metrics.json").read_text())
    assert [row["subject"] for row in nested["outer_folds"]] == ["2", "3", "4", "5"]
    # each outer fold searches with its own sampler seed (kept on resume), so their sampled trials differ
    seeds = {
        s: json.loads((tmp_path / "n" / f"outer-{s}" / "manifest.json").read_text())["config"]["search"]["sampler_seed"]
        for s in "2345"
    }
    assert seeds == {s: outer_sampler_seed(0, s) for s in "2345"} and len(set(seeds.values())) == 4
    sampled = [
        {t.params["train.lr"] for t in read_trials(tmp_path / "n" / f"outer-{s}" / "trials.csv").values()}
        - {load_config(SMOKE).train.lr}
        for s in "2345"
    ]  # the base trial is the same everywhere
    assert [len(lrs) for lrs in sampled] == [1] * 4 and len(set.union(*sampled)) == 4
    assert (
        "sampled with its own seed (`search.sampler_seed` in its manifest) and completed 2 trials"
        in (tmp_path / "n" / "report.md").read_text()
    )


@pytest.fixture
def s3(monkeypatch):
    """A local S3-compatible server (moto), found through the standard AWS_ENDPOINT_URL."""
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3")
    client.create_bucket(Bucket="lab")
    yield client, {**ENV, **env}
    server.stop()


def test_an_experiment_on_object_storage(tmp_path, s3):
    client, env = s3
    command = search_command(tmp_path, "o", "--num-samples", 2, "--cv", "group-kfold", "--folds", 2)
    command[command.index("--storage-path") + 1] = "s3://lab/experiments"
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="lab", Prefix="experiments/o/")["Contents"]}
    for name in (
        "manifest.json",
        "optuna_study.log",
        "trials.csv",
        "report.md",
        "final_model.pt",
        "search_metrics.json",
        "holdout_metrics.json",
        "tuner.pkl",
        "oof/windows.csv",
    ):
        assert f"experiments/o/{name}" in keys, sorted(keys)
    assert any("/checkpoint_" in k for k in keys)  # Tune's trial checkpoints
    trials = client.get_object(Bucket="lab", Key="experiments/o/trials.csv")["Body"].read().decode()
    assert len(trials.strip().splitlines()) == 3
    # resumed from another machine: the manifest and the study come back from the bucket
    again = subprocess.run(
        [
            sys.executable,
            str(ROOT / "search.py"),
            "--resume",
            "--name",
            "o",
            "--storage-path",
            "s3://lab/experiments",
            "--num-samples",
            "3",
        ],
        cwd=tmp_path,
        env={**env, "HOME": str(tmp_path / "elsewhere")},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert again.returncode == 0, again.stderr
    assert "extending the search from 2 to 3 trials" in again.stdout
    trials = client.get_object(Bucket="lab", Key="experiments/o/trials.csv")["Body"].read().decode()
    assert len(trials.strip().splitlines()) == 4
    command[command.index("--name") + 1] = "o2"
    bad = subprocess.run(
        command,
        cwd=tmp_path,
        env={**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
        "error: cannot reach s3://lab/experiments/o2"
    )
