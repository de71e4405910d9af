import numpy as np
import pytest

from emoma.config import CVConfig
from emoma.context import context_index, run_starts
from emoma.data import Table
from emoma.errors import UserError
from emoma.folds import make_plan, outer_splits, rank_features


def cv_config(tmp_path=None, **kw):
    base = dict(rfe_trees=5, rfe_step=3, jobs=1, cache_dir=str(tmp_path / "cache") if tmp_path else None)
    return CVConfig(**{**base, **kw})


@pytest.mark.parametrize("scheme, folds", [("loso", 0), ("group-kfold", 3), ("stratified-group-kfold", 3)])
def test_no_subject_on_two_sides(small_table, scheme, folds):
    cfg = cv_config(scheme=scheme, folds=folds or 10, val_subjects=1)
    plan = make_plan(small_table, cfg, seed=0)
    g = small_table.groups
    assert len(plan.folds) == (6 if scheme == "loso" else 3)
    tested = []
    for fold in plan.folds:
        train, val, test = set(g[fold.train]), set(g[fold.val]), set(g[fold.test])
        assert not train & test and not val & test and not train & val
        assert len(val) == 1
        # every row of the table is in exactly one part
        rows = np.concatenate([fold.train, fold.val, fold.test])
        assert np.array_equal(np.sort(rows), np.arange(len(g)))
        tested += sorted(test)
    assert sorted(tested) == sorted(set(g))  # each subject tested exactly once


def test_kfold_is_row_wise_and_says_so(small_table):
    plan = make_plan(small_table, cv_config(scheme="kfold", folds=4), seed=0)
    assert not plan.subject_wise and "windows of one subject are on both sides" in plan.notes[0]
    fold = plan.folds[0]
    assert set(small_table.groups[fold.train]) & set(small_table.groups[fold.test])


def test_fitted_state_ignores_test_rows(small_table):
    cfg = cv_config(scheme="loso")
    plan = make_plan(small_table, cfg, seed=0)
    test = plan.folds[2].test
    X = small_table.X.copy()
    X[test] = np.random.default_rng(0).normal(100, 50, size=X[test].shape)
    y = small_table.y.copy()
    y[test] = 1 - y[test]
    altered = Table(
        X=X,
        y=y,
        groups=small_table.groups,
        feature_names=small_table.feature_names,
        class_names=small_table.class_names,
        source="altered",
    )
    fold, fold_altered = plan.folds[2], make_plan(altered, cfg, seed=0).folds[2]
    assert np.array_equal(fold.train, fold_altered.train) and np.array_equal(fold.val, fold_altered.val)
    np.testing.assert_array_equal(fold.mean, fold_altered.mean)
    np.testing.assert_array_equal(fold.scale, fold_altered.scale)
    np.testing.assert_array_equal(fold.ranking, fold_altered.ranking)
    np.testing.assert_array_equal(fold.set_aside, fold_altered.set_aside)


def test_scaler_fitted_on_train_rows_only(small_table):
    fold = make_plan(small_table, cv_config(scheme="loso"), seed=0).folds[0]
    np.testing.assert_allclose(fold.mean, small_table.X[fold.train].mean(axis=0), rtol=1e-5, atol=1e-8)
    parts = fold.samples(small_table.X, small_table.y, context_index(run_starts(small_table), 1), 5)
    train, test = parts["train"].flat(), parts["test"].flat()
    assert train.shape == (len(fold.train), 5) and test.shape == (len(fold.test), 5)
    np.testing.assert_allclose(train.mean(axis=0), 0, atol=1e-4)
    assert sorted(fold.ranking) == list(range(small_table.X.shape[1]))
    assert list(fold.selected(3)) == sorted(fold.ranking[:3])
    assert len(fold.selected(0)) == small_table.X.shape[1]


@pytest.mark.slow
def test_plan_is_cached_and_parallel_gives_the_same(small_table, tmp_path):
    cfg = cv_config(tmp_path, scheme="group-kfold", folds=3)
    first = make_plan(small_table, cfg, seed=0)
    again = make_plan(small_table, cfg, seed=0)
    assert not first.from_cache and again.from_cache and again.key == first.key
    parallel = make_plan(small_table, cv_config(scheme="group-kfold", folds=3, jobs=2), seed=0)
    for a, b in zip(first.folds, parallel.folds):
        np.testing.assert_array_equal(a.ranking, b.ranking)
        np.testing.assert_array_equal(a.test, b.test)
    other_seed = make_plan(small_table, cfg, seed=1)
    assert other_seed.key != first.key and not other_seed.from_cache


def test_too_few_subjects(small_table):
    with pytest.raises(UserError, match="cv.folds=10 is more than the 6 subjects"):
        outer_splits(small_table, cv_config(scheme="group-kfold", folds=10), seed=0)
    with pytest.raises(UserError, match="needs at least 7 subjects"):
        outer_splits(small_table, cv_config(scheme="loso", val_subjects=5), seed=0)


def test_rfe_subsamples_only_big_folds(small_table):
    X, y = small_table.X, small_table.y
    full = rank_features(X, y, cv_config(rfe_max_samples=0), seed=0)
    assert np.array_equal(rank_features(X, y, cv_config(rfe_max_samples=len(y)), seed=0), full)
    capped = rank_features(X, y, cv_config(rfe_max_samples=40), seed=0)
    assert sorted(capped) == list(range(X.shape[1])) and not np.array_equal(capped, full)


@pytest.mark.slow
@pytest.mark.parametrize("step", [1, 3])
def test_rfe_stops_early_without_changing_the_selected_features(small_table, step):
    cfg = cv_config(scheme="group-kfold", folds=3, rfe_step=step)
    full = make_plan(small_table, cfg, seed=0)
    n = small_table.X.shape[1]
    for k in (4, 10, 20):
        early = make_plan(small_table, cfg, seed=0, smallest_k=k)
        assert early.key != full.key
        for a, b in zip(full.folds, early.folds):
            assert b.exact_from <= k
            for top in [0, *range(k, n + 1)]:
                np.testing.assert_array_equal(a.selected(top), b.selected(top))
            assert b.exact_from > 1  # it did stop early
            with pytest.raises(ValueError, match="make the plan with smallest_k"):
                b.selected(b.exact_from - 1)
