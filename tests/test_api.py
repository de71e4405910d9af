"""The Python API (`emoma.cross_validate`, `emoma.search`): a DataFrame in, result objects out, no result files
unless an output folder is given."""

import numpy as np
import pandas as pd
import pytest
import torch

import emoma
from emoma.errors import UserError


def _cv(frame, tmp_path, **kwargs):
    return emoma.cross_validate(frame, config="smoke", cv__cache_dir=str(tmp_path / "cache"), **kwargs)


@pytest.mark.slow
def test_cross_validate_a_dataframe_without_writing_results(small_frame, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cv = _cv(small_frame, tmp_path, baselines=True, keep_models=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # the fold-plan cache only
    assert list(cv.metrics.index) == ["CNN-LSTM", "LDA", "LogisticRegression", "RandomForest"]
    assert {"accuracy_mean", "accuracy_std", "macro_f1_mean"} <= set(cv.metrics.columns)
    assert len(cv.predictions) == len(small_frame) == int(cv.confusion.to_numpy().sum())
    assert list(cv.confusion.index) == list(cv.confusion.columns) == ["non-stress", "stress"]
    assert len(cv.folds) == len(cv.fold_models) == 3 and cv.out is None
    assert cv.metrics.loc["CNN-LSTM", "accuracy_mean"] == pytest.approx(cv.folds["accuracy"].mean())
    fold = cv.result.folds[0]
    assert isinstance(cv.fold_models[0], torch.nn.Module) and fold.proba.shape == (fold.n_test, 2)


def test_the_returned_model_predicts_as_the_saved_model_pt(small_frame, tmp_path):
    """cv.model is model.pt in memory: the same probabilities from the object and from the file it saves, with
    and without an output folder."""
    from emoma.predict import TrainedModel

    in_memory = _cv(small_frame, tmp_path).model
    written = _cv(small_frame, tmp_path, out=tmp_path / "out")
    predicted = in_memory.predict(small_frame)
    assert list(predicted.columns) == ["subject", "label", "predicted", "p_non-stress", "p_stress"]
    pd.testing.assert_frame_equal(predicted, TrainedModel.load(written.out / "model.pt").predict(small_frame))
    pd.testing.assert_frame_equal(predicted, written.model.predict(small_frame))
    in_memory.save(tmp_path / "saved.pt")
    pd.testing.assert_frame_equal(predicted, TrainedModel.load(tmp_path / "saved.pt").predict(small_frame))
    assert _cv(small_frame, tmp_path, keep_models=False).model is None


def test_a_path_and_its_dataframe_give_the_same_result(small_frame, tmp_path):
    path = tmp_path / "merged.csv"
    small_frame.to_csv(path, index=False)
    by_frame, by_path = _cv(small_frame, tmp_path), _cv(path, tmp_path)
    pd.testing.assert_frame_equal(by_frame.metrics, by_path.metrics)
    with pytest.raises(ValueError, match="keep_models=True"):
        _ = _cv(small_frame, tmp_path, keep_models=False).fold_models


def test_overrides_as_keywords_or_a_dict_and_bad_keys(small_frame, tmp_path):
    cv = _cv(small_frame, tmp_path, overrides={"train.epochs": 1}, model__lstm_hidden=4)
    assert cv.config.train.epochs == 1 and cv.config.model.lstm_hidden == 4
    assert (cv.folds["epochs_run"] == 1).all()
    with pytest.raises(UserError, match="nope"):
        _cv(small_frame, tmp_path, train__nope=1)


def test_an_output_folder_gets_the_usual_files(small_frame, tmp_path):
    cv = _cv(small_frame, tmp_path, out=tmp_path / "out")
    assert cv.out == tmp_path / "out"
    assert {"report.md", "metrics.json", "predictions.csv", "config.yaml"} <= {p.name for p in cv.out.iterdir()}
    assert "source: `DataFrame`" in (cv.out / "report.md").read_text()


def test_search_a_dataframe_in_a_temporary_experiment(ray_session, small_frame, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    found = emoma.search(
        small_frame,
        config="smoke",
        space="smoke_space",
        seed_config="smoke",
        num_samples=2,
        cv__folds=2,
        search__holdout=2,
        cv__cache_dir=str(tmp_path / "cache"),
        seed=0,
    )
    assert len(found.trials) == 2 and found.best is not None
    assert set(found.held) >= {"final", "base", "seed"}
    assert np.isfinite(found.selection.summary["bbc_cv"]["estimate"])
    assert not found.folder.exists()  # the temporary experiment is gone; the result is in memory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    predicted = found.final_model.predict(small_frame)  # final_model.pt, kept in memory
    assert len(predicted) == len(small_frame) and np.allclose(predicted.filter(like="p_").sum(axis=1), 1, atol=1e-5)
    assert isinstance(found.degenerate_notes(), list)
    assert len(found.trials_frame) == 2 and "mean" in found.trials_frame
    scores = found.holdout_scores
    assert {"LDA", "LogisticRegression", "RandomForest"} <= set(scores.index) and "macro_f1" in scores
    assert len(scores) == 6  # final, base, seed and three baselines
    assert int(found.confusion.to_numpy().sum()) == len(found.holdout_predictions)


def test_search_refuses_a_reused_name_before_touching_its_data_copy(small_frame, tmp_path):
    copy = tmp_path / "taken-data.csv"
    copy.write_text("theirs")
    with pytest.raises(UserError, match="already has a data copy"):
        emoma.search(small_frame, storage_path=tmp_path, name="taken")
    assert copy.read_text() == "theirs"


def test_bad_search_arguments_raise_with_the_reason_and_leave_the_name_free(small_frame, tmp_path):
    with pytest.raises(UserError, match="emoma.search: argument --num-samples: invalid int value: '2.5'"):
        emoma.search(small_frame, num_samples=2.5, storage_path=tmp_path, name="bad")
    with pytest.raises(UserError, match="nope"):
        emoma.search(small_frame, storage_path=tmp_path, name="bad", train__nope=1)
    assert list(tmp_path.iterdir()) == []  # no data copy left to block the name


def test_emoma_search_is_the_function_and_old_experiment_state_still_loads():
    import pickle

    import emoma.results
    import emoma.tune.schedulers
    import emoma.tune.watch

    assert callable(emoma.search) and emoma.search.__module__ == "emoma.api"
    # Tune's saved state names classes by the module they lived in when the experiment began
    for old in ("emoma.search", "emoma.tuning"):
        assert pickle.loads(f"c{old}\nSearchResult\n.".encode()) is emoma.results.SearchResult
    assert pickle.loads(b"cemoma.schedulers\nTruthfulOptunaSearch\n.") is emoma.tune.schedulers.TruthfulOptunaSearch
    assert pickle.loads(b"cemoma.watch\nLiveResults\n.") is emoma.tune.watch.LiveResults


def test_the_readme_example_runs_as_written(ray_session, tmp_path, monkeypatch):
    """The README's notebook example, executed from its text (in a scratch folder: it writes no results)."""
    import re

    from conftest import ROOT

    (block,) = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # the fold-plan cache goes to the scratch folder
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["cv"].model is not None and namespace["found"].final_model is not None
    assert not (tmp_path / "results").exists()
