"""emoma export: the ONNX, torch.export and TorchScript graphs give the probabilities `emoma predict` gives
(same members, feature columns, scalers and weights), for a cv run's fold ensemble and for a single saved model."""

import json

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch

from emoma.cli import main
from emoma.config import load_config
from emoma.pipeline import cross_validate
from emoma.predict import load_model, predict_frame
from emoma.synthetic import make_frame

from conftest import run_in_process

CONTEXT = 2


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A smoke cv run with context windows on the synthetic table: its model.pt and the table."""
    tmp = tmp_path_factory.mktemp("export")
    frame = make_frame(seed=3, windows_scale=0.5)
    config = load_config("smoke", [f"cv.cache_dir={tmp / 'cache'}", f"model.context={CONTEXT}"])
    cross_validate(config, tmp / "run", progress=False, frame=frame, log=lambda *a: None)
    return tmp / "run" / "model.pt", frame


def _windows(frame, features):
    """Each row's window and the one before it (same subject); rows whose context is complete."""
    values = frame[features].to_numpy(np.float32)
    same = np.r_[False, frame["subject"].to_numpy()[1:] == frame["subject"].to_numpy()[:-1]]
    rows = np.flatnonzero(same)
    return np.stack([values[rows - 1], values[rows]], axis=1), rows


@torch.no_grad()
def _run(exported, fmt, windows):
    if fmt == "onnx":
        return onnxruntime.InferenceSession(str(exported)).run(["probabilities"], {"windows": windows})[0]
    if fmt == "pt2":
        return torch.export.load(str(exported)).module()(torch.as_tensor(windows)).numpy()
    with pytest.warns(DeprecationWarning):  # torch.jit.load: PyTorch's own deprecation
        return torch.jit.load(str(exported))(torch.as_tensor(windows)).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "pt2", "torchscript"])
def test_exported_fold_ensemble_matches_predict(saved, tmp_path, capsys, fmt):
    model_path, frame = saved
    out = tmp_path / f"model.{fmt}"
    proc = run_in_process(main, ["export", str(model_path), "--format", fmt, "--out", str(out)], capsys)
    assert proc.returncode == 0, proc.stderr
    contract = json.loads(out.with_name(out.name + ".json").read_text())
    assert contract["context"] == CONTEXT and contract["class_names"] == ["non-stress", "stress"]
    windows, rows = _windows(frame, contract["features"])
    model, bundle = load_model(model_path)
    expected = predict_frame(model, bundle, frame)[["p_non-stress", "p_stress"]].to_numpy()[rows]
    np.testing.assert_allclose(_run(out, fmt, windows), expected, atol=1e-5)


@pytest.mark.slow
def test_a_single_saved_model_exports_too(saved, tmp_path):
    model_path, frame = saved
    single = torch.load(model_path, weights_only=True)["members"][1]  # one member, as a one-model search saves
    torch.save(single, tmp_path / "single.pt")
    from emoma.export import export_model

    contract = export_model(tmp_path / "single.pt", "onnx", tmp_path / "single.onnx")
    assert contract["features"] == single["features"]
    windows, rows = _windows(frame, contract["features"])
    model, bundle = load_model(tmp_path / "single.pt")
    expected = predict_frame(model, bundle, frame)[["p_non-stress", "p_stress"]].to_numpy()[rows]
    np.testing.assert_allclose(_run(tmp_path / "single.onnx", "onnx", windows), expected, atol=1e-5)


def test_export_errors_are_one_line(tmp_path, capsys):
    proc = run_in_process(
        main, ["export", str(tmp_path / "none.pt"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")], capsys
    )
    assert proc.returncode == 2 and "model file" in proc.stderr and "does not exist" in proc.stderr
    proc = run_in_process(main, ["export", str(tmp_path / "none.pt"), "--format", "tflite", "--out", "m"], capsys)
    assert proc.returncode == 2 and "invalid choice: 'tflite'" in proc.stderr


def _causal_z(frame, features, warmup):
    """The contract's causal normalisation, written from its text: running z-scores over each subject's windows so
    far (ddof 0, a constant feature reads 0), shrunk by n / norm_warmup while n < norm_warmup."""
    out = []
    for _, block in frame.groupby("subject", sort=False)[features]:
        values = block.to_numpy(np.float64)
        n = np.arange(1, len(values) + 1)[:, None]
        mean = np.cumsum(values, 0) / n
        std = np.sqrt(np.maximum(np.cumsum(values**2, 0) / n - mean**2, 0))
        z = np.divide(values - mean, std, out=np.zeros_like(values), where=std > 1e-6 * (1 + np.abs(mean)))
        out.append(z * np.minimum(n / warmup, 1))
    return pd.DataFrame(np.concatenate(out), columns=features, index=frame.index).assign(subject=frame["subject"])


@pytest.mark.slow
def test_a_causally_normalised_model_exports_with_what_a_caller_needs(tmp_path):
    """The contract names the normalisation, its warm-up and the time rule; windows normalised as its text says
    give the probabilities emoma predict gives."""
    from emoma.export import export_model

    frame = make_frame(seed=3, windows_scale=0.5)
    config = load_config(
        "smoke",
        [
            f"cv.cache_dir={tmp_path / 'cache'}",
            f"model.context={CONTEXT}",
            "data.subject_norm=causal",
            "data.norm_warmup=4",
        ],
    )
    cross_validate(config, tmp_path / "run", progress=False, frame=frame, log=lambda *a: None)
    contract = export_model(tmp_path / "run" / "model.pt", "onnx", tmp_path / "m.onnx")
    assert contract["subject_norm"] == "causal" and contract["norm_warmup"] == 4
    assert contract["subject_column"] == "subject" and contract["time_column"] == "time_s"
    assert contract["max_gap_windows"] == 2.0 and contract["window_s"] is None  # no time column: row order
    windows, rows = _windows(_causal_z(frame, contract["features"], contract["norm_warmup"]), contract["features"])
    model, bundle = load_model(tmp_path / "run" / "model.pt")
    expected = predict_frame(model, bundle, frame)[["p_non-stress", "p_stress"]].to_numpy()[rows]
    np.testing.assert_allclose(_run(tmp_path / "m.onnx", "onnx", windows), expected, atol=1e-4)
