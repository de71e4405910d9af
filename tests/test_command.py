"""The installed `emoma` command (here `python -m emoma`, the same entry point): subcommands, shipped configs
found by name from any folder, one-line errors."""

import json
import os
import subprocess
import sys

import pytest

from emoma.cli import main
from emoma.config import find_yaml, load_config, shipped_yaml_names
from emoma.errors import UserError
from emoma.space import load_space

from conftest import ROOT, run_in_process


def emoma(*args, cwd):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "emoma", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_cv_runs_from_any_folder_with_a_shipped_config_by_name(tmp_path):
    proc = emoma(
        "cv", "--config", "smoke", "--no-progress", "--set", f"cv.cache_dir={tmp_path / 'cache'}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    (out,) = (tmp_path / "results" / "cv").iterdir()  # written where the user stands, not in the package
    assert json.loads((out / "metrics.json").read_text())["protocol"]["scheme"] == "group-kfold"
    assert "CNN-LSTM" in proc.stdout


def test_shipped_names_resolve_and_a_local_file_wins(tmp_path, monkeypatch):
    assert {"context", "default", "seed", "smoke", "search_space", "smoke_space"} <= set(shipped_yaml_names())
    assert find_yaml("context") == find_yaml("context.yaml") == ROOT / "configs" / "context.yaml"
    assert load_config("context").model.context == 4
    assert "train.lr" in load_space("smoke_space", load_config("smoke"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "context.yaml").write_text("name: mine\n")
    assert load_config("context.yaml").name == "mine"  # a file the user names is the file they mean
    assert load_config("context").name == "context"  # a bare name without .yaml that is no file: the shipped one


@pytest.mark.parametrize("given", ["nope", "configs/nope.yaml", "elsewhere/context.yaml"])
def test_a_missing_config_is_one_line_naming_the_shipped_ones(tmp_path, monkeypatch, given):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"does not exist: give a YAML file or a shipped name \(context, default"):
        find_yaml(given)


@pytest.mark.parametrize(
    "argv, code, text",
    [
        ([], 2, "emoma: error: no command: give one of cv, search, status, predict, export, prepare"),
        (["train"], 2, "emoma: error: unknown command 'train'"),
        (["--help"], 0, "commands:"),
        (["--version"], 0, "emoma 0."),
        (["status"], 2, "the following arguments are required: --name"),
        (["cv", "--config", "nope"], 2, "error: config file nope does not exist"),
    ],
)
def test_command_line_errors_and_help(capsys, argv, code, text):
    proc = run_in_process(main, argv, capsys)
    assert proc.returncode == code
    assert text in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_installed_version_is_the_package_version(capsys):
    import importlib.metadata

    import emoma as package

    assert importlib.metadata.version("emoma") == package.__version__
    assert run_in_process(main, ["--version"], capsys).stdout == f"emoma {package.__version__}\n"


def test_status_of_a_missing_experiment_is_one_line(tmp_path, capsys):
    proc = run_in_process(main, ["status", "--name", "none", "--storage-path", str(tmp_path)], capsys)
    assert proc.returncode == 2 and "no experiment 'none'" in proc.stderr


@pytest.mark.slow
def test_the_smoke_preset_learns_and_a_collapsed_model_is_named(tmp_path):
    cache = ["--set", f"cv.cache_dir={tmp_path / 'cache'}"]
    good = emoma("cv", "--config", "smoke", "--no-progress", "--out", tmp_path / "good", *cache, cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    metrics = json.loads((tmp_path / "good" / "metrics.json").read_text())
    assert metrics["summary"]["balanced_accuracy"]["mean"] > 0.6 and metrics["warnings"] == []
    assert "WARNING" not in good.stdout
    bad = emoma(
        "cv",
        "--config",
        "smoke",
        "--no-progress",
        "--out",
        tmp_path / "bad",
        "--epochs",
        "1",
        "--set",
        "train.lr=0.0001",
        "--set",
        "train.class_weights=false",
        *cache,
        cwd=tmp_path,
    )
    assert bad.returncode == 0, bad.stderr
    assert "WARNING: the CNN-LSTM predicts a single class" in bad.stdout
    assert json.loads((tmp_path / "bad" / "metrics.json").read_text())["warnings"]
    assert "**WARNING: the CNN-LSTM predicts a single class" in (tmp_path / "bad" / "report.md").read_text()


@pytest.mark.slow
def test_cv_saves_the_fold_models_for_predict(tmp_path):
    from emoma.synthetic import make_frame

    frame = make_frame()  # the table the smoke preset learns on
    data = tmp_path / "merged.csv"
    frame.to_csv(data, index=False)
    cache = ["--set", f"cv.cache_dir={tmp_path / 'cache'}"]
    proc = emoma(
        "cv", "--config", "smoke", "--data", data, "--no-progress", "--out", tmp_path / "run", *cache, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    import torch

    bundle = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert len(bundle["members"]) == 3 and bundle["weights"] == pytest.approx([1 / 3] * 3)
    predicted = emoma(
        "predict",
        "--model",
        tmp_path / "run" / "model.pt",
        "--data",
        data,
        "--out",
        tmp_path / "predictions.csv",
        cwd=tmp_path,
    )
    assert predicted.returncode == 0, predicted.stderr
    import pandas as pd

    out = pd.read_csv(tmp_path / "predictions.csv")
    assert len(out) == len(frame)
    assert (out[["p_non-stress", "p_stress"]].sum(axis=1) - 1).abs().max() < 1e-5
    assert out["predicted"].nunique() == 2  # the averaged fold models are not a majority-class predictor
    off = emoma(
        "cv",
        "--config",
        "smoke",
        "--data",
        data,
        "--no-progress",
        "--out",
        tmp_path / "off",
        "--no-save-model",
        *cache,
        cwd=tmp_path,
    )
    assert off.returncode == 0 and not (tmp_path / "off" / "model.pt").exists()


def test_a_clone_that_is_not_installed_still_finds_the_shipped_configs(monkeypatch):
    import importlib.resources

    def not_installed(package):
        raise ModuleNotFoundError(package)

    monkeypatch.setattr(importlib.resources, "files", not_installed)
    assert find_yaml("context") == ROOT / "configs" / "context.yaml"
    with pytest.raises(UserError, match=r"shipped name \(context, default"):
        find_yaml("nope")


@pytest.mark.parametrize(
    "saved",
    [
        {"weight": [1.0]},
        [1, 2],
        {"members": [{"config": {}}]},
        "an ensemble without weights",
        "weights that do not fit the config",
    ],
    ids=["a state dict", "a list", "a bundle without weights", "no ensemble weights", "wrong shapes"],
)
@pytest.mark.parametrize("command", ["predict", "export"])
def test_a_torch_file_emoma_did_not_write_is_one_line(tmp_path, capsys, saved, command):
    import torch

    from emoma.predict import MODEL_KEYS

    member = {k: None for k in MODEL_KEYS} | {
        "config": {},
        "features": ["a"],
        "class_names": ["x", "y"],
        "state_dict": {"weight": torch.zeros(1)},
    }
    saved = (
        {
            "an ensemble without weights": {"members": [member], "class_names": ["x", "y"]},
            "weights that do not fit the config": member,
        }.get(saved, saved)
        if isinstance(saved, str)
        else saved
    )
    torch.save(saved, tmp_path / "other.pt")
    argv = {
        "predict": ["predict", "--model", str(tmp_path / "other.pt"), "--data", "x.csv", "--out", "p.csv"],
        "export": ["export", str(tmp_path / "other.pt"), "--format", "pt2", "--out", str(tmp_path / "m.pt2")],
    }
    proc = run_in_process(main, argv[command], capsys)
    assert proc.returncode == 2 and "is not an EmoMA model file" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv0, command",
    [
        ("cv.py", "python cv.py"),
        ("../repo/cv.py", "python ../repo/cv.py"),
        ("/env/bin/emoma", "emoma cv"),
        ("/env/lib/emoma/__main__.py", "python -m emoma cv"),
    ],
)
def test_continue_lines_name_the_command_the_user_ran(monkeypatch, argv0, command):
    from emoma.errors import invoked_as

    monkeypatch.setattr(sys, "argv", [argv0, "--resume", "x"])
    assert invoked_as("cv") == command
