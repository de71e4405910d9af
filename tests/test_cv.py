import numpy as np
import pytest

from emoma.config import apply_overrides
from emoma.cv import run_cv, run_fold, table_context
from emoma.data import Table
from emoma.folds import make_plan


def test_cv_result_shapes_and_pooled_confusion(small_table, smoke_config):
    plan = make_plan(small_table, smoke_config.cv, smoke_config.seed)
    result = run_cv(small_table, plan, smoke_config, baselines=True, progress=False)
    assert len(result.folds) == 3
    assert [f.index for f in result.folds] == [0, 1, 2]
    assert result.confusion.sum() == len(small_table.y)  # every window tested exactly once
    assert result.confusion.shape == (2, 2)
    summary = result.summary()
    assert set(summary) == {"accuracy", "balanced_accuracy", "macro_f1"}
    assert np.isclose(summary["accuracy"]["mean"], np.mean([f.metrics["accuracy"] for f in result.folds]))
    assert set(result.baseline_summary()) == {"LDA", "LogisticRegression", "RandomForest"}
    assert all(len(f.features) == smoke_config.model.n_features for f in result.folds)


@pytest.mark.parametrize("trainer", ["batched", "sequential"])
def test_same_seed_same_metrics_whatever_the_workers(small_table, smoke_config, trainer):
    config = apply_overrides(smoke_config, {"cv.trainer": trainer, "model.context": 2})
    plan = make_plan(small_table, config.cv, config.seed)
    one = run_cv(small_table, plan, config, progress=False)
    two = run_cv(small_table, plan, apply_overrides(config, {"cv.jobs": 2}), progress=False)
    for a, b in zip(one.folds, two.folds):  # equal up to float rounding (batched matmuls of another size)
        assert a.metrics == b.metrics
        for ha, hb in zip(a.history, b.history, strict=True):
            assert ha == pytest.approx(hb, abs=1e-6)
        np.testing.assert_allclose(a.proba, b.proba, atol=1e-6)


def test_test_fold_not_used_for_training_or_early_stopping(small_table, smoke_config):
    config = apply_overrides(smoke_config, {"train.epochs": 4})
    plan = make_plan(small_table, config.cv, config.seed)
    fold = plan.folds[1]
    X, y = small_table.X.copy(), small_table.y.copy()
    X[fold.test] = 0.0
    y[fold.test] = 1 - y[fold.test]
    altered = Table(X=X, y=y, groups=small_table.groups, feature_names=small_table.feature_names,
                    class_names=small_table.class_names, source="altered")
    a = run_fold(small_table, fold, 1, config, table_context(small_table, config))
    b = run_fold(altered, fold, 1, config, table_context(altered, config))
    assert a.history == b.history and a.best_epoch == b.best_epoch
