"""Context windows and subject normalisation: causal, within a subject, label-free, order-free."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import GridSearchCV, GroupKFold

import emoma.cv
from emoma.config import DataConfig, apply_overrides
from emoma.context import check_context, context_index, normalise_subjects, run_starts, smooth_probabilities
from emoma.cv import TUNED_GRIDS, run_cv, run_fold, table_context
from emoma.data import table_from_frame
from emoma.errors import UserError
from emoma.folds import make_plan
from emoma.layout import MERGED_SIGNAL_COLUMNS
from emoma.metrics import bootstrap_ci, paired_wilcoxon
from emoma.predict import predict_frame
from emoma.train import predict_proba


def timed(frame: pd.DataFrame, gap_after: int | None = None) -> pd.DataFrame:
    """The frame with a time_s column: 30 s windows per subject, and a 10-minute gap after row `gap_after`
    of each subject."""
    frame = frame.copy()
    position = frame.groupby("subject").cumcount().to_numpy()
    frame["time_s"] = 30.0 * position + (600.0 * (position > gap_after) if gap_after is not None else 0.0)
    return frame


def test_context_is_causal_within_a_subject_and_cut_at_gaps(small_frame):
    table = table_from_frame(timed(small_frame, gap_after=9), DataConfig(), "t")
    index, mask = context_index(run_starts(table), 4)
    rows = np.arange(len(table.y))
    assert (index[:, -1] == rows).all() and mask[:, -1].all()  # the last slot is the window itself
    for j in range(4):  # never a later window, never another subject's window
        assert (index[:, j] <= rows).all()
        assert (table.groups[index[:, j]] == table.groups).all()
    real_step = np.diff(index, axis=1)[mask[:, 1:] & mask[:, :-1]]
    assert (real_step == 1).all()  # real slots are consecutive windows, oldest first
    span = np.where(mask, table.time_s[index], np.nan)
    assert np.nanmax(table.time_s[:, None] - span) <= 3 * 30  # nothing across the 10-minute gap
    first = np.flatnonzero(run_starts(table))  # each subject's first window and the first after its gap
    assert len(first) == 2 * len(table.subjects)
    assert (mask[first].sum(1) == 1).all()  # only itself is real; the padded slots repeat it
    assert (index[first] == first[:, None]).all()
    after = first + 1
    assert (mask[after] == [False, False, True, True]).all()


def test_row_order_across_subjects_changes_nothing(small_frame, smoke_config):
    frame = timed(small_frame)
    shuffled = frame.sample(frac=1.0, random_state=0)  # subjects interleaved, each subject's windows shuffled too
    config = apply_overrides(smoke_config, {"model.context": 3, "data.subject_norm": "causal", "train.epochs": 2})
    a = normalise_subjects(table_from_frame(frame, config.data, "t"), config.data)
    b = normalise_subjects(table_from_frame(shuffled, config.data, "t"), config.data)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.groups, b.groups)
    np.testing.assert_array_equal(a.row_ids, b.row_ids)  # each window keeps its row in the file
    ra = run_cv(a, make_plan(a, config.cv, config.seed), config, progress=False)
    rb = run_cv(b, make_plan(b, config.cv, config.seed), config, progress=False)
    for fa, fb in zip(ra.folds, rb.folds):
        np.testing.assert_array_equal(fa.proba, fb.proba)


def interleave(frame: pd.DataFrame) -> pd.DataFrame:
    """The subjects' rows taken in turn (round robin), each subject's own rows in their order."""
    position = frame.groupby("subject").cumcount()
    return frame.iloc[np.lexsort((frame["subject"].to_numpy(), position.to_numpy()))]


def test_without_time_column_row_order_within_a_subject_is_time(small_frame):
    interleaved = interleave(small_frame)
    assert interleaved["subject"].iloc[0] != interleaved["subject"].iloc[1]
    a, b = (table_from_frame(f, DataConfig(), "t") for f in (small_frame, interleaved))
    assert b.time_order == "by row order within each subject"
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.row_ids, b.row_ids)


@pytest.mark.parametrize("norm", ["subject", "causal"])
def test_normalisation_is_label_free_and_within_subject(small_table, norm):
    cfg = DataConfig(subject_norm=norm)
    base = normalise_subjects(small_table, cfg)
    relabelled = normalise_subjects(replace(small_table, y=np.random.default_rng(0).permutation(small_table.y)), cfg)
    np.testing.assert_array_equal(base.X, relabelled.X)
    others = small_table.groups != small_table.subjects[0]
    X = small_table.X.copy()
    X[others] = np.random.default_rng(1).normal(50, 9, size=X[others].shape)  # every other subject's rows
    changed = normalise_subjects(replace(small_table, X=X), cfg)
    np.testing.assert_array_equal(base.X[~others], changed.X[~others])
    mine = base.X[~others]
    if norm == "subject":
        np.testing.assert_allclose(mine.mean(0), 0, atol=1e-5)


def test_causal_normalisation_never_looks_ahead(small_table):
    cfg = DataConfig(subject_norm="causal", norm_warmup=4)
    base = normalise_subjects(small_table, cfg)
    rows = np.flatnonzero(small_table.groups == small_table.subjects[1])
    later = rows[10:]
    X = small_table.X.copy()
    X[later] *= 3.0
    changed = normalise_subjects(replace(small_table, X=X), cfg)
    np.testing.assert_array_equal(base.X[rows[:10]], changed.X[rows[:10]])
    assert not np.allclose(base.X[later], changed.X[later])
    # the first window has nothing to compare with; the warm-up shrinks the next ones
    assert (base.X[rows[0]] == 0).all()
    block = small_table.X[rows[:3]].astype(np.float64)
    z = (block[2] - block.mean(0)) / block.std(0)
    np.testing.assert_allclose(base.X[rows[2]], z * 3 / 4, rtol=1e-4, atol=1e-6)


def test_causal_predictions_of_earlier_windows_ignore_later_ones(small_frame, smoke_config):
    config = apply_overrides(smoke_config, {"model.context": 3, "data.subject_norm": "causal", "train.epochs": 2})
    frame = timed(small_frame)
    table = normalise_subjects(table_from_frame(frame, config.data, "t"), config.data)
    plan = make_plan(table, config.cv, config.seed)
    fold = plan.folds[0]
    result = run_fold(table, fold, 0, config, table_context(table, config), keep_model=True)
    subject = table.groups[fold.test][0]
    rows = np.flatnonzero(table.groups == subject)
    altered_frame = frame.copy()
    late = altered_frame.index[(altered_frame["subject"] == subject).to_numpy()][15:]
    altered_frame.loc[late, MERGED_SIGNAL_COLUMNS] *= 5.0
    altered = normalise_subjects(table_from_frame(altered_frame, config.data, "t"), config.data)
    samples = fold.samples(altered.X, altered.y, table_context(altered, config), config.model.n_features)["test"]
    proba = predict_proba(result.model, samples)
    in_test = np.searchsorted(fold.test, rows[:15])
    np.testing.assert_allclose(proba[in_test], result.proba[in_test], atol=1e-6)
    assert not np.allclose(
        proba[np.searchsorted(fold.test, rows[15:])], result.proba[np.searchsorted(fold.test, rows[15:])]
    )


def test_smoothing_averages_known_earlier_windows_of_the_same_run():
    starts = np.array([True, False, False, False, True, False, True])  # runs: rows 0-3, 4-5, 6
    rows = np.array([0, 1, 3, 4, 5, 6])  # row 2 unknown (e.g. a training window)
    proba = np.array([[1.0, 0], [0, 1], [0, 1], [1, 0], [0, 1], [0.5, 0.5]])
    out = smooth_probabilities(proba, rows, starts, k=3)
    # row 3 averages rows 1 and 3 (row 2 is unknown); row 4 starts a run: itself only
    np.testing.assert_allclose(out, [[1, 0], [0.5, 0.5], [0, 1], [1, 0], [0.5, 0.5], [0.5, 0.5]])
    assert smooth_probabilities(proba, rows, starts, k=1) is proba
    changed = proba.copy()
    changed[2] = [1, 0]  # row 3 changes: the earlier windows' smoothed values do not
    np.testing.assert_array_equal(smooth_probabilities(changed, rows, starts, k=3)[:2], out[:2])


@pytest.mark.slow
def test_smoothing_changes_only_the_scored_probabilities(small_table, smoke_config):
    config = apply_overrides(smoke_config, {"model.context": 2, "data.subject_norm": "subject", "train.epochs": 2})
    table = normalise_subjects(small_table, config.data)
    fold = make_plan(table, config.cv, config.seed).folds[0]
    plain = run_fold(table, fold, 0, config, table_context(table, config), baselines=True)
    smoothed = run_fold(
        table, fold, 0, apply_overrides(config, {"model.smooth": 4}), table_context(table, config), baselines=True
    )
    starts = run_starts(table)
    np.testing.assert_allclose(smoothed.proba, smooth_probabilities(plain.proba, fold.test, starts, 4), atol=1e-6)
    assert smoothed.best_epoch == plain.best_epoch  # training and the best epoch are untouched
    for name, proba in plain.baseline_proba.items():  # the baselines are smoothed alike
        np.testing.assert_allclose(smoothed.baseline_proba[name], smooth_probabilities(proba, fold.test, starts, 4))
    assert not np.allclose(smoothed.proba, plain.proba)
    with pytest.raises(UserError, match="model.smooth=4 is invalid: it must be 1 under cv.scheme=kfold"):
        apply_overrides(config, {"model.smooth": 4, "model.context": 1, "cv.scheme": "kfold"})
    with pytest.raises(UserError, match="model.context=4 is invalid: it must be 1 under cv.scheme=kfold"):
        apply_overrides(config, {"model.context": 4, "cv.scheme": "kfold"})


@pytest.mark.slow
@pytest.mark.parametrize("mode, refit", [("tuned", False), ("tuned", True), ("default", False)])
def test_tuned_baselines_choose_on_the_folds_training_subjects_only(
    small_table, smoke_config, monkeypatch, mode, refit
):
    config = apply_overrides(
        smoke_config, {"train.epochs": 1, "cv.baselines": mode, "train.refit": refit, "model.context": 3}
    )
    plan = make_plan(small_table, config.cv, config.seed)
    fitted = []

    def recording(name, cfg, seed, X, y, groups):
        model = real_fit(name, cfg, seed, X, y, groups)
        fitted.append((name, groups, model))
        return model

    real_fit = emoma.cv.fit_baseline
    monkeypatch.setattr(emoma.cv, "fit_baseline", recording)
    fold = plan.folds[0]
    run_fold(small_table, fold, 0, config, table_context(small_table, config), baselines=True)
    assert [name for name, _, _ in fitted] == ["LDA", "LogisticRegression", "RandomForest"]
    rows = np.concatenate([fold.train, fold.val]) if refit else fold.train  # the rows the model trains on
    for name, groups, model in fitted:
        np.testing.assert_array_equal(groups, small_table.groups[rows])  # each sample's own subject, no test one
        if mode == "tuned":
            assert isinstance(model, GridSearchCV)
            assert all(model.best_params_[k] in values for k, values in TUNED_GRIDS[name].items())
            assert model.cv.get_n_splits() == 3 and isinstance(model.cv, GroupKFold)
        else:
            assert not isinstance(model, GridSearchCV)


def test_baselines_read_exactly_the_models_inputs(small_table, smoke_config, monkeypatch):
    config = apply_overrides(smoke_config, {"model.context": 3, "data.subject_norm": "subject", "train.epochs": 1})
    table = normalise_subjects(small_table, config.data)
    plan = make_plan(table, config.cv, config.seed)
    seen = []

    class Recorder:
        def __init__(self, seed):
            self.classes_ = np.arange(2)

        def fit(self, X, y):
            seen.append((X, y))
            return self

        def predict_proba(self, X):
            seen.append((X, None))
            return np.full((len(X), 2), 0.5)

    monkeypatch.setattr(emoma.cv, "BASELINES", {"recorder": Recorder})
    context = table_context(table, config)
    run_fold(table, plan.folds[0], 0, config, context, baselines=True)
    X, y = seen[0]
    fold = plan.folds[0]
    index, _ = context
    scaled = fold.scaled(table.X, config.model.n_features)  # the fold's RFE features, scaled in-fold
    expected = scaled[index[fold.train]].reshape(len(fold.train), -1)
    np.testing.assert_array_equal(X, expected)
    assert X.shape == (len(fold.train), 3 * config.model.n_features)
    np.testing.assert_array_equal(y, table.y[fold.train])
    test_inputs = seen[1][0]  # scored on the test windows' contexts, the same way
    np.testing.assert_array_equal(test_inputs, scaled[index[fold.test]].reshape(len(fold.test), -1))


def test_leakage_rules_hold_with_context_and_normalisation(small_table, smoke_config):
    config = apply_overrides(
        smoke_config, {"model.context": 3, "data.subject_norm": "subject", "train.epochs": 3, "cv.scheme": "loso"}
    )
    plan = make_plan(normalise_subjects(small_table, config.data), config.cv, config.seed)
    fold = plan.folds[1]
    X, y = small_table.X.copy(), small_table.y.copy()
    X[fold.test] = np.random.default_rng(0).normal(100, 50, size=X[fold.test].shape)
    y[fold.test] = 1 - y[fold.test]
    altered = normalise_subjects(replace(small_table, X=X, y=y), config.data)
    fold_altered = make_plan(altered, config.cv, config.seed).folds[1]
    np.testing.assert_array_equal(fold.mean, fold_altered.mean)
    np.testing.assert_array_equal(fold.ranking, fold_altered.ranking)
    table = normalise_subjects(small_table, config.data)
    a = run_fold(table, fold, 1, config, table_context(table, config))
    b = run_fold(altered, fold, 1, config, table_context(altered, config))
    assert a.history == b.history and a.best_epoch == b.best_epoch


def test_bad_context_and_time_inputs(small_frame):
    table = table_from_frame(small_frame, DataConfig(), "t")
    shortest = min(np.unique(table.groups, return_counts=True)[1])
    check_context(table, shortest)
    with pytest.raises(UserError, match=f"model.context={shortest + 1} is longer than subject .* {shortest} windows"):
        check_context(table, shortest + 1)
    frame = timed(small_frame)
    for value, message in [("soon", "non-numeric values such as 'soon'"), (np.nan, "missing or infinite in 1 rows")]:
        bad = frame.astype({"time_s": object})
        bad.loc[bad.index[3], "time_s"] = value
        with pytest.raises(UserError, match=message):
            table_from_frame(bad, DataConfig(), "t")
    bad = frame.copy()
    bad.loc[bad.index[4], "time_s"] = bad.loc[bad.index[3], "time_s"]
    with pytest.raises(UserError, match="has two windows at time_s=90"):
        table_from_frame(bad, DataConfig(), "t")


def test_statistics_agree_with_scipy():
    from scipy import stats

    a = np.array([0.91, 0.85, 0.78, 0.96, 0.88, 0.70, 0.93, 0.81])
    b = np.array([0.89, 0.80, 0.80, 0.90, 0.84, 0.65, 0.93, 0.75])
    ci = bootstrap_ci(a, seed=3)
    reference = stats.bootstrap((a,), np.mean, n_resamples=10_000, method="BCa", rng=np.random.default_rng(3))
    assert ci["mean"] == pytest.approx(a.mean())
    assert (ci["ci_low"], ci["ci_high"]) == pytest.approx(tuple(reference.confidence_interval))
    assert ci["ci_low"] < a.mean() < ci["ci_high"]
    test = paired_wilcoxon(a, b)
    expected = stats.wilcoxon(a, b, zero_method="wilcox")
    assert test["statistic"] == expected.statistic and test["p_value"] == pytest.approx(expected.pvalue)
    assert test["n"] == 8 and test["n_nonzero"] == 7 and test["median_diff"] == pytest.approx(np.median(a - b))
    # by hand: differences 0.5, 2, 3, 4, -2 rank 1, 2.5, 4, 5, 2.5: W+ = 12.5, W- = 2.5, W = min = 2.5
    small = paired_wilcoxon([1, 2, 3, 4, 5], [0.5, 0, 0, 0, 7])
    assert small["statistic"] == 2.5 and small["median_diff"] == 2
    assert bootstrap_ci([0.8, 0.9])["ci_low"] != bootstrap_ci([0.8, 0.9])["ci_low"]  # two subjects: no CI (NaN)


def test_predict_rebuilds_normalisation_and_context(small_frame, smoke_config, tmp_path):
    from emoma.predict import bundle_of, write_bundle

    config = apply_overrides(
        smoke_config, {"model.context": 3, "data.subject_norm": "causal", "train.epochs": 2, "model.smooth": 3}
    )
    table = normalise_subjects(table_from_frame(small_frame, config.data, "t"), config.data)
    plan = make_plan(table, config.cv, config.seed)
    fold = plan.folds[0]
    result = run_fold(table, fold, 0, config, table_context(table, config), keep_model=True)
    write_bundle(
        tmp_path / "m.pt", bundle_of([(result.model, config, fold, 1.0)], table.feature_names, table.class_names)
    )
    from emoma.predict import load_model

    model, bundle = load_model(tmp_path / "m.pt")
    test_rows = table.row_ids[fold.test]
    shuffled = interleave(small_frame)  # subjects interleaved: the same predictions per row
    predicted = predict_frame(model, bundle, shuffled).set_index(shuffled.index)
    np.testing.assert_allclose(
        predicted.loc[small_frame.index[test_rows], ["p_non-stress", "p_stress"]].to_numpy(), result.proba, atol=1e-5
    )
    with pytest.raises(UserError, match="has no 'subject' column"):
        predict_frame(model, bundle, small_frame.drop(columns="subject"))


def test_columns_constant_or_duplicated_on_training_rows_are_set_aside_by_the_fold(small_frame, smoke_config, tmp_path):
    """The table keeps a column that varies somewhere; a fold whose training rows hold it constant (or equal to an
    earlier column) reads it as 0 everywhere, in training, scoring, baselines and the saved model."""
    from emoma.predict import bundle_of, load_model, write_bundle

    config = apply_overrides(smoke_config, {"train.epochs": 2, "model.n_features": 0})  # every feature
    table = table_from_frame(small_frame, config.data, "t")
    train = make_plan(table, config.cv, config.seed).folds[0].train  # splits depend on subjects only
    first, second, third = table.feature_names[:3]
    frame = small_frame.copy()
    on_train = np.isin(np.arange(len(frame)), table.row_ids[train])
    frame.loc[on_train, first] = 1.5  # constant on the fold's training rows, varying elsewhere
    frame.loc[on_train, third] = frame.loc[on_train, second]  # a duplicate there only
    table = table_from_frame(frame, config.data, "t")
    assert table.feature_names[:3] == [first, second, third]  # the table-wide rule keeps both
    fold = make_plan(table, config.cv, config.seed).folds[0]
    assert fold.set_aside.tolist() == [0, 2] and sorted(fold.ranking[-2:].tolist()) == [0, 2]
    assert len(fold.selected(0)) == len(table.feature_names) and 0 not in fold.used(0) and 2 not in fold.used(0)
    scaled = fold.scaled(table.X, 0)
    assert not scaled[:, [0, 2]].any() and scaled[:, 1].any()
    result = run_fold(table, fold, 0, config, table_context(table, config), keep_model=True, baselines=True)
    assert first not in result.features and third not in result.features and second in result.features
    write_bundle(
        tmp_path / "m.pt", bundle_of([(result.model, config, fold, 1.0)], table.feature_names, table.class_names)
    )
    model, bundle = load_model(tmp_path / "m.pt")
    assert bundle["set_aside"] == [first, third]
    predicted = predict_frame(model, bundle, frame)
    np.testing.assert_allclose(
        predicted[["p_non-stress", "p_stress"]].to_numpy()[table.row_ids[fold.test]], result.proba, atol=1e-5
    )


def test_an_ensemble_of_configurations_predicts_with_each_members_own_inputs(small_frame, smoke_config, tmp_path):
    """The final model of ensemble selection: members of different normalisation, context and features, saved
    with their weights; predict averages each member's own predictions."""
    from emoma.predict import bundle_of, load_model, write_bundle

    configs = [
        apply_overrides(smoke_config, {"train.epochs": 2, "model.n_features": 4}),
        apply_overrides(
            smoke_config, {"train.epochs": 2, "model.n_features": 6, "model.context": 2, "data.subject_norm": "subject"}
        ),
    ]
    members, alone = [], []
    for i, config in enumerate(configs):
        table = normalise_subjects(table_from_frame(small_frame, config.data, "t"), config.data)
        fold = make_plan(table, config.cv, config.seed).folds[0]
        result = run_fold(table, fold, 0, config, table_context(table, config), keep_model=True)
        members.append((result.model, config, fold, [0.75, 0.25][i]))
        write_bundle(
            tmp_path / f"alone{i}.pt",
            bundle_of([(result.model, config, fold, 1.0)], table.feature_names, table.class_names),
        )
        alone.append(predict_frame(*load_model(tmp_path / f"alone{i}.pt"), small_frame))
    write_bundle(tmp_path / "ensemble.pt", bundle_of(members, table.feature_names, table.class_names))
    model, bundle = load_model(tmp_path / "ensemble.pt")
    assert len(model) == 2 and bundle["weights"] == [0.75, 0.25]
    assert [len(m["features"]) for m in bundle["members"]] == [4, 6]
    predicted = predict_frame(model, bundle, small_frame)
    columns = ["p_non-stress", "p_stress"]
    np.testing.assert_allclose(
        predicted[columns].to_numpy(),
        0.75 * alone[0][columns].to_numpy() + 0.25 * alone[1][columns].to_numpy(),
        atol=1e-6,
    )
    assert (predicted["predicted"] == np.array(bundle["class_names"])[predicted[columns].to_numpy().argmax(1)]).all()
    needed = bundle["members"][1]["features"][-1]
    with pytest.raises(UserError, match=f"lacks features the model needs: {needed}"):
        predict_frame(model, bundle, small_frame.drop(columns=needed))
