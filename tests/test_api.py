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


def test_a_path_and_its_dataframe_give_the_same_result(small_frame, tmp_path):
    path = tmp_path / "merged.csv"
    small_frame.to_csv(path, index=False)
    by_frame, by_path = _cv(small_frame, tmp_path), _cv(path, tmp_path)
    pd.testing.assert_frame_equal(by_frame.metrics, by_path.metrics)
    with pytest.raises(ValueError, match="keep_models=True"):
        by_frame.fold_models


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
    found = emoma.search(small_frame, config="smoke", space="smoke_space", seed_config="smoke", num_samples=2,
                         cv__folds=2, search__holdout=2,
                         cv__cache_dir=str(tmp_path / "cache"), seed=0)
    assert len(found.trials) == 2 and found.best is not None
    assert set(found.held) >= {"final", "base", "seed"}
    assert np.isfinite(found.selection.summary["bbc_cv"]["estimate"])
    assert not found.folder.exists()  # the temporary experiment is gone; the result is in memory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_emoma_search_is_the_function_and_old_experiment_state_still_loads():
    import pickle

    import emoma.tuning

    assert callable(emoma.search) and emoma.search.__module__ == "emoma.api"
    assert pickle.loads(b"cemoma.search\nSearchResult\n.") is emoma.tuning.SearchResult  # state saved before 0.2
