"""python -m emoma.prepare on tiny synthetic recordings in the raw WESAD format."""

import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from emoma.config import DataConfig
from emoma.data import load_table
from emoma.errors import UserError
from emoma.layout import MERGED_COLUMNS
from emoma.prepare.features import (
    ACC_FIR,
    PrepareOptions,
    decompose_eda,
    peak_frequency,
    plan_windows,
    prepare,
    slope,
    window_stats,
)
from emoma.prepare.synthetic import main as synthetic_wesad_main
from emoma.prepare.synthetic import write_subject

from conftest import REAL_DATA, ROOT

# Seconds per segment, in WESAD's order: baseline 130, amusement 70, meditation 2 x 45, stress 100.
TINY = ((0, 20), (1, 130), (0, 10), (3, 70), (0, 10), (4, 45), (0, 10), (2, 100), (0, 10), (4, 45), (6, 10))
SUBJECTS = (2, 3, 4, 5)


def windows_in(seconds, window, shift):
    return int((seconds - window) // shift) + 1 if seconds >= window else 0


@pytest.fixture(scope="module")
def wesad_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("WESAD")
    for subject in SUBJECTS:
        write_subject(root, subject, seed=7, protocol=TINY)
    return root


@pytest.fixture(scope="module")
def prepared(wesad_dir):
    return prepare(wesad_dir, PrepareOptions(), jobs=1, progress=False).table


def run_prepare(*args):
    return subprocess.run(
        [sys.executable, "-m", "emoma.prepare", "--no-progress", *map(str, args)],
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def copy_wesad(wesad_dir, tmp_path):
    return shutil.copytree(wesad_dir, tmp_path / "WESAD")


def test_columns_labels_and_order_match_merged_csv(prepared):
    assert list(prepared.columns) == MERGED_COLUMNS + ["time_s"]
    if REAL_DATA.is_file():
        assert list(pd.read_csv(REAL_DATA, index_col=0, nrows=1).columns) == MERGED_COLUMNS
    for _, rows in prepared.groupby("subject", sort=False):
        # baseline (1), then stress (2), then amusement (0), as in merged.csv
        assert rows["label"].tolist() == [1] * 4 + [2] * 3 + [0] * 2
    assert prepared["subject"].tolist() == sorted(prepared["subject"])
    assert set(prepared["subject"]) == set(SUBJECTS)


def test_time_s_gives_the_true_order_and_gaps(prepared):
    starts = {1: 20, 3: 160, 2: 295}  # segment starts in TINY: baseline, amusement, stress
    for _, rows in prepared.groupby("subject", sort=False):
        for code, label in ((1, 1), (3, 0), (2, 2)):
            times = rows.loc[rows["label"] == label, "time_s"].to_numpy()
            np.testing.assert_allclose(times, starts[code] + 30.0 * np.arange(len(times)))
    table = load_table(DataConfig())  # the synthetic default has no time column
    assert table.time_s is None
    from emoma.context import run_starts
    from emoma.data import table_from_frame

    prepared_table = table_from_frame(prepared, DataConfig(), "prepared")
    assert prepared_table.time_order == "by the time_s column"
    # rows in time order: baseline, amusement, stress. Context runs are cut by gaps of more than two window
    # lengths (60 s): not between baseline (last window 110 s) and amusement (160 s), but before stress (295 s)
    first = prepared_table.groups == SUBJECTS[0]
    assert prepared_table.y[first].tolist() == [0] * 4 + [0] * 2 + [1] * 3
    assert run_starts(prepared_table)[first].tolist() == [True] + [False] * 5 + [True, False, False]


@pytest.mark.parametrize("window, shift", [(30, None), (20, 5), (60, 0.25)])
def test_window_counts_follow_durations(wesad_dir, window, shift):
    opts = PrepareOptions(
        window_s=window, shift_s=shift, conditions=("baseline", "stress", "amusement", "meditation"), signals=("resp",)
    )
    table = prepare(wesad_dir, opts, subjects=[2], jobs=1, progress=False).table
    step = shift or window
    expected = {
        1: windows_in(130, window, step),
        2: windows_in(100, window, step),
        0: windows_in(70, window, step),
        3: 2 * windows_in(45, window, step),
    }  # meditation: two segments, windows never span the gap
    counts = table["label"].value_counts().to_dict()
    assert {k: counts.get(k, 0) for k in expected} == expected


def test_features_are_physiologically_plausible(prepared):
    assert prepared["BVP_peak_freq"].between(0.7, 3.0).all()  # heart rate 42-180 bpm
    assert prepared["TEMP_mean"].between(25, 40).all() and prepared["EDA_mean"].gt(0).all()
    assert not prepared.isna().any().any()
    # the ACC fix: every axis filtered along time, so y and z differ and all are in 1/64 g (|g| ~ 64)
    assert not np.allclose(prepared["ACC_y_mean"], prepared["ACC_z_mean"])
    assert prepared["net_acc_mean"].between(40, 90).all()
    stress, baseline = prepared[prepared.label == 2], prepared[prepared.label == 1]
    assert stress["BVP_peak_freq"].mean() > baseline["BVP_peak_freq"].mean()
    assert stress["EDA_phasic_mean"].mean() > baseline["EDA_phasic_mean"].mean()


def test_compat_bugs_reproduce_the_published_table(wesad_dir, prepared):
    compat = prepare(wesad_dir, PrepareOptions(compat_bugs=True), subjects=[2], jobs=1, progress=False).table
    assert np.array_equal(compat["ACC_y_mean"], compat["ACC_z_mean"])
    assert np.allclose(compat["ACC_y_mean"] / compat["ACC_x_mean"], ACC_FIR[0])  # as in merged.csv
    fixed = prepared[prepared.subject == 2]
    assert compat["BVP_peak_freq"].median() == pytest.approx(fixed["BVP_peak_freq"].median() / 8, rel=0.1)
    if REAL_DATA.is_file():
        real = pd.read_csv(REAL_DATA, index_col=0)
        assert np.allclose(real["ACC_y_mean"] / real["ACC_x_mean"], ACC_FIR[0])
    # 21,000 rows of the original's joined frame are 27.6 s: a 20-minute baseline gives 43 windows, not 40
    baseline = np.ones(1200 * 700, dtype=np.int8)
    assert len(plan_windows(baseline, PrepareOptions(compat_bugs=True)).start_s) == 43
    assert len(plan_windows(baseline, PrepareOptions()).start_s) == 40


def test_parallel_subjects_give_the_same_table(wesad_dir, prepared):
    parallel = prepare(wesad_dir, PrepareOptions(), jobs=2, progress=False).table
    pd.testing.assert_frame_equal(parallel, prepared)


def test_chest_signals(wesad_dir):
    table = prepare(wesad_dir, PrepareOptions(signals=("all",)), subjects=[3], jobs=1, progress=False).table
    assert list(table.columns[:46]) == MERGED_COLUMNS[:46]
    extra = [c for c in table.columns if c.startswith("chest_")]
    assert len(extra) == 4 * 8 and "chest_ECG_std" in extra and "chest_Temp_mean" in extra
    chest_only = prepare(wesad_dir, PrepareOptions(signals=("chest",)), subjects=[3], jobs=1, progress=False).table
    assert chest_only.columns[0] == "Resp_mean" and "EDA_mean" not in chest_only


def test_window_features_equal_brute_force():
    rng = np.random.default_rng(0)
    x = 33 + np.cumsum(rng.normal(0, 0.01, 5000))
    first, n = np.array([0, 7, 100, 101, 4000, 5000 - 64]), 64
    stats = window_stats(x, first, n)
    windows = np.stack([x[i : i + n] for i in first])
    assert np.allclose(stats["mean"], windows.mean(1), rtol=1e-12)
    assert np.allclose(stats["std"], windows.std(1), rtol=1e-7)
    assert np.array_equal(stats["min"], windows.min(1)) and np.array_equal(stats["max"], windows.max(1))
    assert np.allclose(slope(x, first, n), [np.polyfit(np.arange(n), w, 1)[0] for w in windows])
    tone = np.sin(2 * np.pi * 1.25 * np.arange(6400) / 64)
    assert np.allclose(peak_frequency(tone, np.array([0, 640, 3200]), 2048, fs=64), 1.25)  # on the 1/32 Hz grid


def test_windows_stay_inside_one_condition_segment():
    label = np.repeat([0, 1, 0, 1, 2], [700, 700 * 50, 700, 700 * 25, 700 * 31]).astype(np.int8)
    windows = plan_windows(label, PrepareOptions(window_s=20, shift_s=10, conditions=("baseline", "stress")))
    starts = windows.start_s
    assert windows.label.tolist() == [1] * 4 + [1] * 1 + [2] * 2
    assert np.allclose(starts[:5], [1, 11, 21, 31, 52])  # the second baseline segment starts at 52 s


@pytest.mark.slow
def test_prepared_table_feeds_cv_unchanged(prepared, tmp_path):
    csv = tmp_path / "merged.csv"
    prepared.to_csv(csv)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "cv.py"),
            "--config",
            str(ROOT / "configs/smoke.yaml"),
            "--data",
            str(csv),
            "--no-progress",
            "--out",
            str(tmp_path / "out"),
            "--set",
            f"cv.cache_dir={tmp_path / 'cache'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "CNN-LSTM" in proc.stdout and (tmp_path / "out" / "metrics.json").is_file()


@pytest.mark.slow
def test_cli_writes_the_table(wesad_dir, tmp_path, prepared):
    out = tmp_path / "merged.csv"
    proc = run_prepare("--wesad-dir", wesad_dir, "--out", out, "--jobs", 2)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "S5: 9 windows" in proc.stderr
    pd.testing.assert_frame_equal(pd.read_csv(out, index_col=0), prepared, check_dtype=False)


def damage(root, kind):
    s3 = root / "S3"
    if kind == "no readme":
        (s3 / "S3_readme.txt").unlink()
    elif kind == "no pickle":
        (s3 / "S3.pkl").unlink()
    elif kind == "truncated":
        data = (s3 / "S3.pkl").read_bytes()
        (s3 / "S3.pkl").write_bytes(data[: len(data) // 2])
    elif kind == "labels":
        with open(s3 / "S3.pkl", "rb") as f:
            recording = pickle.load(f)
        recording["label"][:100] = 9
        with open(s3 / "S3.pkl", "wb") as f:
            pickle.dump(recording, f)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, message",
    [
        ("no readme", "S3: readme"),
        ("no pickle", "S3: pickle"),
        ("truncated", "S3: "),
        ("labels", "S3: label codes 9"),
    ],
)
def test_bad_subjects_stop_with_one_line_or_are_skipped(wesad_dir, tmp_path, kind, message):
    root = copy_wesad(wesad_dir, tmp_path)
    damage(root, kind)
    proc = run_prepare("--wesad-dir", root, "--out", tmp_path / "m.csv", "--subjects", "2,3")
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]  # after the progress lines of subjects that finished
    assert last.startswith(f"error: {message}") and "--skip-bad" in last and "Traceback" not in proc.stderr
    if kind == "truncated":
        assert "truncated or not a WESAD pickle" in last
    proc = run_prepare("--wesad-dir", root, "--out", tmp_path / "m.csv", "--subjects", "2,3", "--skip-bad")
    assert proc.returncode == 0, proc.stderr
    assert "skipped S3" in proc.stderr
    assert set(pd.read_csv(tmp_path / "m.csv")["subject"]) == {2}


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--wesad-dir", "nowhere"], "WESAD folder nowhere does not exist"),
        (["--conditions", "baseline,joy"], "--conditions: unknown joy"),
        (["--signals", "wrist,feet"], "--signals: unknown feet"),
        (["--window-s", "0"], "--window-s must be positive"),
        (["--subjects", "2,99"], "--subjects names S99"),
    ],
)
def test_bad_arguments(wesad_dir, tmp_path, args, message):
    base = {"--wesad-dir": wesad_dir, "--out": tmp_path / "m.csv"}
    base.update(dict(zip(args[::2], args[1::2])))
    proc = run_prepare(*[x for kv in base.items() for x in kv])
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {message}"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_missing_cvxeda_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cvxeda", None)
    with pytest.raises(UserError, match=r"pip install -e '\.\[prepare\]'"):
        decompose_eda(np.linspace(1, 2, 100))


def test_all_subjects_bad_is_an_error(wesad_dir, tmp_path):
    root = copy_wesad(wesad_dir, tmp_path)
    for subject in SUBJECTS:
        (root / f"S{subject}" / f"S{subject}.pkl").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="no subject"):
        prepare(root, PrepareOptions(), jobs=1, skip_bad=True, progress=False)


def test_synthetic_wesad_cli_writes_the_raw_layout(tmp_path):
    synthetic_wesad_main([str(tmp_path), "--subjects", "2,3", "--scale", "0.05"])
    for subject in (2, 3):
        with open(tmp_path / f"S{subject}" / f"S{subject}.pkl", "rb") as f:
            recording = pickle.load(f, encoding="latin1")
        assert recording["signal"]["wrist"]["BVP"].shape == (len(recording["label"]) * 64 // 700, 1)
        assert recording["signal"]["wrist"]["ACC"].shape[1] == 3
        assert "Age:" in (tmp_path / f"S{subject}" / f"S{subject}_readme.txt").read_text()
