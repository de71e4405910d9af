"""The final choice and its estimate, on out-of-fold predictions made up to know the answer (no training, no
Ray): the store, per-subject scores, each selection rule, BBC-CV on a table with no signal and on one with a
known best configuration."""

import numpy as np
import pytest

from emoma.metrics import holm, score
from emoma.results import OOFStore
from emoma.select import Candidates, Subjects, bbc_cv, choose, guard_test, select, trials_curve

N_SUBJECTS, WINDOWS = 12, 40


def empty_store(seed=0, n_classes=2, subjects=N_SUBJECTS):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(subjects) + 2, WINDOWS)
    y = rng.integers(0, n_classes, len(groups))  # labels with no relation to anything
    folds = [np.flatnonzero(groups == s) for s in np.unique(groups)]  # leave-one-subject-out
    return OOFStore.for_plan(groups, y, folds, [f"c{i}" for i in range(n_classes)]), rng


def proba_with_skill(store, rng, skill, per_subject=None):
    """(n, C) probabilities whose argmax is the truth with probability `skill` (per subject if given)."""
    n, C = len(store.y), len(store.class_names)
    p = rng.random((n, C))
    if per_subject is not None:
        skill = np.asarray(per_subject)[np.unique(store.subjects, return_inverse=True)[1]]
    right = rng.random(n) < skill
    p[right, store.y[right]] = 2.0
    return p / p.sum(1, keepdims=True)


def test_the_store_places_saves_and_loads_every_window(tmp_path):
    store, rng = empty_store()
    half = store.rows[: len(store.rows) // 2]
    proba = rng.random((len(half), 2))
    store.add_trial("t1", {"rows": half[::-1], "proba": proba[::-1], "baseline_LDA": proba[::-1]}, baselines=True)
    assert np.allclose(store.trials["t1"][: len(half)], proba) and np.isnan(store.trials["t1"][len(half) :]).all()
    assert not store.complete("t1") and not store.baselines  # baselines only from a base trial that ran every fold
    whole = rng.random((len(store.rows), 2))
    store.add_trial("t2", {"rows": store.rows, "proba": whole, "baseline_LDA": whole}, baselines=True)
    store.add_trial("t3", {"rows": store.rows, "proba": whole, "baseline_LDA": 1 - whole})  # not the base trial
    store.add_trial("never-ran", {})
    assert store.complete("t2") and "never-ran" not in store.trials and np.allclose(store.baselines["LDA"], whole)
    with pytest.raises(ValueError, match="not windows of this store"):
        store.place(np.array([10_000]), whole[:1])
    store.save(tmp_path)
    back = OOFStore.load(tmp_path)
    assert back.class_names == store.class_names and (back.subjects == store.subjects).all()
    assert set(back.trials) == {"t1", "t2", "t3"} and np.array_equal(
        back.trials["t1"], store.trials["t1"], equal_nan=True
    )
    assert set(back.baselines) == {"LDA"}
    assert OOFStore.load(tmp_path / "nothing-here") is None


@pytest.mark.parametrize("n_classes", [2, 3])
def test_a_subjects_score_is_the_search_metric_on_its_windows(n_classes):
    store, rng = empty_store(n_classes=n_classes)
    probas = np.stack([proba_with_skill(store, rng, s) for s in (0.2, 0.6, 0.9)])
    subjects = Subjects.of(store)
    scores = subjects.scores(probas, ("accuracy", "balanced_accuracy", "macro_f1"))
    for t in range(3):
        for i, name in enumerate(subjects.names):
            rows = store.subjects == name
            expected = score(store.y[rows], probas[t][rows].argmax(1), n_classes)[0]
            for metric, value in expected.items():
                assert scores[metric][t, i] == pytest.approx(value)


def candidates(store, probas, costs=None, base=0, metric="accuracy", **kw):
    for i, p in enumerate(probas):
        store.trials[f"t{i}"] = p
    ids = [f"t{i}" for i in range(len(probas))]
    return Candidates.of(store, ids, costs if costs is not None else np.arange(len(ids)), ids[base], metric, **kw)


def scored(rows, costs=None, base=0):
    """Candidates with these per-subject scores (T, S) of the metric."""
    rows = np.asarray(rows, dtype=float)
    store, _ = empty_store(subjects=rows.shape[1])
    subjects = Subjects.of(store)
    return Candidates(
        [f"t{i}" for i in range(len(rows))],
        np.zeros((len(rows), len(store.y), 2)),
        {"accuracy": rows},
        np.asarray(costs if costs is not None else range(len(rows)), dtype=float),
        base,
        subjects,
        "accuracy",
    )


def test_best_takes_the_best_mean_and_one_se_the_cheapest_within_one_standard_error():
    spread = np.tile([-0.1, 0.1], N_SUBJECTS // 2)  # standard error of a mean: 0.1 * sqrt(12 / 11) / sqrt(12) = 0.03
    c = scored([0.8 + spread, 0.9 + spread, 0.88 + spread, 0.7 + spread], costs=[1, 9, 3, 2])
    assert np.flatnonzero(choose(c, "best")) == [1]
    # trial 2 is within one standard error of the best and cheaper; trials 0 and 3 are cheaper, far behind
    assert np.flatnonzero(choose(c, "one-se")) == [2]
    w = np.zeros(N_SUBJECTS)
    w[:2] = 6  # a resample of two subjects only: the rules choose on those
    assert np.flatnonzero(choose(c, "best", w)) == [1]


def test_guard_keeps_the_base_unless_a_candidate_beats_it_on_the_same_subjects():
    base = 0.8 + np.random.default_rng(0).normal(0, 0.1, N_SUBJECTS)
    alternate = np.tile([-1.0, 1.0], N_SUBJECTS // 2)
    lucky = base + 0.02 + 0.1 * alternate  # ahead on average by less than one standard error (0.03)
    steady = base + 0.01 + 0.005 * alternate  # a smaller gain, but on every subject
    c = scored([base, lucky])
    assert np.flatnonzero(choose(c, "best")) == [1] and np.flatnonzero(choose(c, "guard")) == [0]
    assert np.flatnonzero(choose(scored([base, steady]), "guard")) == [1]
    lenient = scored([base, lucky])
    lenient.guard_alpha = 0.5
    assert np.flatnonzero(choose(lenient, "guard")) == [1]


def test_guard_is_corrected_for_the_number_of_candidates():
    # 40 trials no better than the base: the best of them beats it by well over one standard error by chance
    rng = np.random.default_rng(1)
    base = 0.8 + rng.normal(0, 0.1, N_SUBJECTS)
    rows = [base] + [base + rng.normal(0, 0.05, N_SUBJECTS) for _ in range(40)]
    c = scored(rows)
    best = int(np.flatnonzero(choose(c, "best"))[0])
    gain = rows[best] - base
    assert gain.mean() > 2 * gain.std(ddof=1) / np.sqrt(N_SUBJECTS)
    assert np.flatnonzero(choose(c, "guard")) == [0]
    assert np.flatnonzero(choose(scored([base, rows[best]]), "guard")) == [1]  # alone, the same gain would pass


def test_guard_inside_a_resample_replaces_the_base_no_more_often_than_its_level():
    # 20 candidates exactly as good as the base in truth: in resamples of the subjects, the guard's test (on the
    # distinct subjects drawn) must replace the base at about alpha or less, not count a subject drawn twice twice
    rng = np.random.default_rng(2)
    replaced, runs = 0, 300
    for _ in range(runs):
        base = 0.8 + rng.normal(0, 0.1, N_SUBJECTS)
        c = scored([base] + [base + rng.normal(0, 0.05, N_SUBJECTS) for _ in range(20)])
        w = np.bincount(rng.integers(0, N_SUBJECTS, N_SUBJECTS), minlength=N_SUBJECTS).astype(float)
        replaced += choose(c, "guard", w)[0] == 0
    assert replaced / runs <= 2 * c.guard_alpha


def test_guard_records_its_decision():
    base = 0.8 + np.random.default_rng(0).normal(0, 0.1, N_SUBJECTS)
    steady = base + 0.01 + 0.005 * np.tile([-1.0, 1.0], N_SUBJECTS // 2)
    test = guard_test(scored([base, steady]))
    assert test["best"] == "t1" and test["replaced"] and test["candidates"] == 1
    assert test["gain"] == pytest.approx(0.01) and test["t"] > test["critical"]
    assert guard_test(scored([steady, base])) is None  # the base is the best: nothing to test


def test_ensemble_selection_averages_trials_that_are_right_on_different_subjects():
    store, rng = empty_store()
    first_half = (np.arange(N_SUBJECTS) < N_SUBJECTS // 2).astype(float)
    # each trial is sure and right on its half of the subjects, unsure and mostly wrong on the other half
    a = proba_with_skill(store, rng, None, per_subject=0.98 * first_half + 0.3 * (1 - first_half))
    b = proba_with_skill(store, rng, None, per_subject=0.98 * (1 - first_half) + 0.3 * first_half)
    a[np.isin(store.subjects, np.unique(store.subjects)[N_SUBJECTS // 2 :])] = 0.5 + rng.normal(0, 0.01, (1, 2))
    b[np.isin(store.subjects, np.unique(store.subjects)[: N_SUBJECTS // 2])] = 0.5 + rng.normal(0, 0.01, (1, 2))
    c = candidates(store, [proba_with_skill(store, rng, 0.7), a, b])
    weights = choose(c, "ensemble")
    assert weights[1] > 0 and weights[2] > 0 and weights.sum() == pytest.approx(1)
    mixed = c.subjects.scores(np.tensordot(weights, c.proba, axes=1), ("accuracy",))["accuracy"].mean()
    assert mixed > c.scores["accuracy"].mean(1).max() + 0.1


@pytest.mark.slow
def test_bbc_cv_stays_at_chance_on_a_table_with_no_signal_while_the_naive_best_does_not():
    store, rng = empty_store(seed=3)
    probas = [proba_with_skill(store, rng, 0.0) for _ in range(30)]  # random guesses: balanced accuracy 0.5
    c = candidates(store, probas, metric="balanced_accuracy")
    naive = c.scores["balanced_accuracy"].mean(1).max()
    base = c.scores["balanced_accuracy"][c.base].mean()  # one guesser scores 0.54 on these 480 windows
    for rule in ("best", "one-se", "guard", "ensemble"):
        estimate = bbc_cv(c, rule, 300, 0, ("balanced_accuracy",))["estimate"]["balanced_accuracy"]
        # no candidate significantly beats the base, so guard keeps it: its estimate is its own score, unselected
        truth = base if rule == "guard" else 0.5
        assert abs(estimate["estimate"] - truth) < 0.02, rule
        assert estimate["ci_low"] < 0.5 < estimate["ci_high"], rule
    assert naive > 0.53


def test_bbc_cv_finds_a_known_best_configuration_and_estimates_it():
    store, rng = empty_store(seed=4)
    probas = [proba_with_skill(store, rng, s) for s in (0.3, 0.4, 0.9, 0.35, 0.4)]  # trial 2 is the best
    c = candidates(store, probas, metric="accuracy")
    truth = c.scores["accuracy"][2].mean()
    for rule in ("best", "one-se", "guard", "ensemble"):
        assert choose(c, rule)[2] >= (0.5 if rule == "ensemble" else 1.0), rule  # an ensemble may add a weak trial
        estimate = bbc_cv(c, rule, 300, 0, ("accuracy",))["estimate"]["accuracy"]["estimate"]
        assert estimate == pytest.approx(truth, abs=0.02), rule


@pytest.mark.slow
def test_select_reports_every_rule_the_gains_and_the_curve():
    store, rng = empty_store(seed=5)
    probas = [proba_with_skill(store, rng, s) for s in (0.6, 0.62, 0.7, 0.55, 0.65)]
    for i, p in enumerate(probas):
        store.trials[f"t{i}"] = p
    store.baselines["LDA"] = proba_with_skill(store, rng, 0.5)
    ids = list(store.trials)
    selection = select(
        store,
        ids,
        list(range(5)),
        "t0",
        "best",
        "macro_f1",
        n_bootstrap=200,
        seed=0,
        references={"base": "t0", "seed": "t1"},
    )
    s = selection.summary
    assert selection.weights == {"t2": 1.0} and s["naive_best"]["trial"] == "t2"
    assert set(s["rules"]) == {"best", "one-se", "guard", "ensemble"}
    assert s["bbc_cv"]["metric"] == "macro_f1" and s["bbc_cv_accuracy"]["metric"] == "accuracy"
    assert s["bbc_cv"]["estimate"] < s["bbc_cv"]["naive_best_cv"] and s["bbc_cv"]["n_bootstrap"] == 200
    assert set(s["gain_bbc_cv"]) == {"base", "seed", "LDA"} == set(s["out_of_fold"]["against"])
    assert s["gain_bbc_cv"]["LDA"]["macro_f1"]["mean"] > 0
    tests = s["out_of_fold"]["against"]
    assert all(t["macro_f1"]["p_holm"] >= t["macro_f1"]["p_value"] for t in tests.values())
    curve = trials_curve(store, ids, list(range(5)), "t0", "best", "macro_f1", n_bootstrap=100, seed=0)
    assert [p["trials"] for p in curve][-1] == 5 and curve[0]["naive_best_cv"] <= curve[-1]["naive_best_cv"]


def test_holm_adjusts_in_steps_and_keeps_nan():
    assert holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(holm([0.01, float("nan")])[1]) and holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])
