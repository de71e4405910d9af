"""The result types: CVResult's summaries, pooled predictions and its evaluation computed once; TrialRecord's
scores; SearchResult's tables built from its data."""

from types import SimpleNamespace

import numpy as np
import pytest

from emoma.metrics import score
from emoma.results import CVResult, FoldResult, TrialRecord, trials_table


def fold(index, rows, y, proba, baseline_proba):
    pred = proba.argmax(1)
    metrics, confusion = score(y, pred, 2)
    return FoldResult(
        index=index,
        test_subjects=[index],
        n_train=10,
        n_val=2,
        n_test=len(rows),
        features=["f"],
        metrics=metrics,
        confusion=confusion,
        epochs_run=5,
        best_epoch=3,
        seconds=1.0,
        history=[],
        test_rows=np.asarray(rows),
        y_pred=pred,
        proba=proba,
        baselines={"LDA": score(y, baseline_proba.argmax(1), 2)[0]},
        baseline_proba={"LDA": baseline_proba},
    )


@pytest.fixture
def cv_result():
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 12)
    groups = np.repeat(np.arange(6), 4)
    folds = []
    for s in range(6):
        rows = np.flatnonzero(groups == s)[::-1]  # a fold's rows in any order
        proba = rng.dirichlet([1, 1], len(rows))
        proba[:, y[rows]] += 0.5 * (s % 2)  # right on every other subject
        folds.append(fold(s, rows, y[rows], proba / proba.sum(1, keepdims=True), rng.dirichlet([1, 1], len(rows))))
    return CVResult("loso", ["a", "b"], folds, 6.0), SimpleNamespace(groups=groups, y=y)


def test_summary_is_the_mean_and_population_std_over_folds(cv_result):
    result, _ = cv_result
    accuracy = [f.metrics["accuracy"] for f in result.folds]
    assert result.summary()["accuracy"] == pytest.approx({"mean": np.mean(accuracy), "std": np.std(accuracy)})
    assert set(result.baseline_summary()) == {"LDA"}
    assert (result.confusion == sum(f.confusion for f in result.folds)).all() and result.confusion.sum() == 24


def test_pooled_keeps_rows_and_every_models_probabilities_aligned(cv_result):
    result, table = cv_result
    rows, proba = result.pooled()
    assert sorted(rows) == list(range(24)) and set(proba) == {"CNN-LSTM", "LDA"}
    for f in result.folds:
        at = [list(rows).index(r) for r in f.test_rows]
        np.testing.assert_array_equal(proba["CNN-LSTM"][at], f.proba)
        np.testing.assert_array_equal(proba["LDA"][at], f.baseline_proba["LDA"])


def test_the_evaluation_is_computed_once_per_seed(cv_result, monkeypatch):
    import emoma.results

    result, table = cv_result
    calls = []
    real = emoma.results.evaluate
    monkeypatch.setattr(emoma.results, "evaluate", lambda *a, **k: calls.append(k["seed"]) or real(*a, **k))
    first = result.evaluate(table, seed=0)
    assert result.evaluate(table, seed=0) is first and calls == [0]
    assert set(first["models"]) == {"CNN-LSTM", "LDA"} and set(first["models"]["CNN-LSTM"]["subjects"]) == set("012345")
    result.evaluate(table, seed=1)
    assert calls == [0, 1]


def test_a_trial_records_scores_and_the_trials_table():
    fresh = TrialRecord("t0", {"train.lr": 0.01})
    assert np.isnan(fresh.mean) and np.isnan(fresh.std)
    done = TrialRecord("t1", {"train.lr": 0.001}, {0: 0.8, 1: 0.6}, status="completed", seconds=3.0)
    assert done.mean == pytest.approx(0.7) and done.std == pytest.approx(0.1)
    frame = trials_table([fresh, done], n_folds=3, base_trial="t1", seed_trial=None)
    assert frame["trial"].tolist() == ["t0", "t1"] and frame["base_config"].tolist() == [False, True]
    assert frame.loc[1, ["fold_1", "fold_2"]].tolist() == [0.8, 0.6] and frame.loc[1, "fold_3"] is None
    assert frame["param.train.lr"].tolist() == [0.01, 0.001] and frame["folds_done"].tolist() == [0, 2]
