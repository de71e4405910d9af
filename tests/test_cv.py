import numpy as np
import pytest
import yaml

from emoma.config import apply_overrides, save_config
from emoma.cv import fold_seed, run_cv, run_fold, table_context
from emoma.data import Table
from emoma.folds import make_plan
from emoma.pipeline import RUN_FILE, resume_cv_config


@pytest.mark.slow
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


@pytest.mark.slow
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
    altered = Table(
        X=X,
        y=y,
        groups=small_table.groups,
        feature_names=small_table.feature_names,
        class_names=small_table.class_names,
        source="altered",
    )
    a = run_fold(small_table, fold, 1, config, table_context(small_table, config))
    b = run_fold(altered, fold, 1, config, table_context(altered, config))
    assert a.history == b.history and a.best_epoch == b.best_epoch


def test_an_ensemble_averages_members_trained_from_their_own_seeds(small_frame, smoke_config, tmp_path):
    from emoma.cv import run_folds_batched
    from emoma.data import table_from_frame
    from emoma.model import Ensemble
    from emoma.predict import bundle_of, load_model, predict_frame, write_bundle
    from emoma.train import predict_proba

    config = apply_overrides(smoke_config, {"train.epochs": 3, "model.dropout": 0.0})
    table = table_from_frame(small_frame, config.data, "t")
    fold = make_plan(table, config.cv, config.seed).folds[0]
    context = table_context(table, config)
    single = run_fold(table, fold, 0, config, context)
    ensemble_config = apply_overrides(config, {"model.ensemble": 3})
    ensemble = run_fold(table, fold, 0, ensemble_config, context, keep_model=True, baselines=True)
    assert isinstance(ensemble.model, Ensemble)  # the kept model is the CNN-LSTMs', not a baseline's
    test = fold.samples(table.X, table.y, context, config.model.n_features)["test"]
    members = [predict_proba(m, test) for m in ensemble.model.members]
    np.testing.assert_allclose(members[0], single.proba, atol=1e-6)  # member 0 is the single model
    assert not np.allclose(members[1], members[0], atol=1e-3)  # the others start from their own seeds
    np.testing.assert_allclose(ensemble.proba, np.mean(members, axis=0), atol=1e-6)
    batched = run_folds_batched(table, [fold], [0], ensemble_config, context)[0]  # members as rows of one batch
    np.testing.assert_allclose(batched.proba, ensemble.proba, atol=2e-3)
    write_bundle(
        tmp_path / "m.pt",
        bundle_of([(ensemble.model, ensemble_config, fold, 1.0)], table.feature_names, table.class_names),
    )
    model, bundle = load_model(tmp_path / "m.pt")
    predicted = predict_frame(model, bundle, small_frame)
    np.testing.assert_allclose(
        predicted[["p_non-stress", "p_stress"]].to_numpy()[table.row_ids[fold.test]], ensemble.proba, atol=1e-5
    )


@pytest.mark.slow
def test_refit_retrains_on_training_and_validation_rows_for_the_best_epoch(small_table, smoke_config, monkeypatch):
    import emoma.cv
    from emoma.cv import run_folds_batched
    from emoma.train import predict_proba, train_fold

    config = apply_overrides(
        smoke_config,
        {
            "train.epochs": 12,
            "train.patience": 3,
            "train.lr": 0.02,
            "model.dropout": 0.0,
            "model.context": 2,
            "cv.scheme": "loso",
        },
    )
    refit_config = apply_overrides(config, {"train.refit": True})
    plan = make_plan(small_table, config.cv, config.seed)
    fold = plan.folds[0]
    context = table_context(small_table, config)
    plain = run_fold(small_table, fold, 0, config, context)
    refit = run_fold(small_table, fold, 0, refit_config, context, keep_model=True)
    assert refit.best_epoch == plain.best_epoch and refit.history == plain.history  # chosen on validation rows
    assert 1 <= plain.best_epoch < config.train.epochs  # so running every epoch would be another model
    parts = fold.samples(small_table.X, small_table.y, context, config.model.n_features)
    both = parts["train"].plus(parts["val"])
    assert len(both) == len(fold.train) + len(fold.val)

    def trained_for(epochs):
        fit = train_fold(
            both,
            None,
            n_classes=2,
            model_cfg=config.model,
            seed=fold_seed(config.seed, 0),
            train_cfg=apply_overrides(config, {"train.epochs": epochs}).train,
        )
        assert fit.epochs_run == epochs
        return predict_proba(fit.model, parts["test"])

    np.testing.assert_allclose(refit.proba, trained_for(plain.best_epoch), atol=1e-6)
    assert not np.allclose(refit.proba, trained_for(config.train.epochs), atol=1e-3)
    assert not np.allclose(refit.proba, plain.proba, atol=1e-3)

    # every member of every fold refits for its own epoch count, as rows of one batched model
    ensemble = apply_overrides(refit_config, {"model.ensemble": 2})
    indices = list(range(len(plan.folds)))
    batched = run_folds_batched(small_table, plan.folds, indices, ensemble, context)
    sequential = [run_fold(small_table, plan.folds[i], i, ensemble, context) for i in indices]
    assert len({r.best_epoch for r in sequential}) > 1
    for b, s in zip(batched, sequential):
        assert b.best_epoch == s.best_epoch
        np.testing.assert_allclose(b.proba, s.proba, atol=2e-3)

    seen = []  # the baselines are fitted on the same rows as the refit model
    monkeypatch.setattr(emoma.cv, "BASELINES", {"rows": lambda seed: _Recorder(seen)})
    run_fold(small_table, fold, 0, apply_overrides(refit_config, {"train.epochs": 1}), context, baselines=True)
    np.testing.assert_array_equal(seen[0], both.y)


class _Recorder:
    classes_ = np.arange(2)

    def __init__(self, seen):
        self.seen = seen

    def fit(self, X, y):
        self.seen.append(y)
        return self

    def predict_proba(self, X):
        return np.full((len(X), 2), 0.5)


def test_a_run_from_before_tuned_baselines_resumes_with_its_untuned_ones(tmp_path, smoke_config):
    save_config(smoke_config, tmp_path / "config.yaml")
    (tmp_path / RUN_FILE).write_text("{}")
    assert resume_cv_config(tmp_path, [], {}).cv.baselines == "tuned"
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del raw["cv"]["baselines"]  # as written before cv.baselines existed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    assert resume_cv_config(tmp_path, [], {}).cv.baselines == "default"
