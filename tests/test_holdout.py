"""The search's final retraining without Ray: configurations retrained once each, models kept where asked,
an ensemble of configurations scored as one model; the final configuration's file for an ensemble."""

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import yaml

from emoma.config import apply_overrides
from emoma.context import normalise_subjects
from emoma.holdout import combine, retrain_and_score
from emoma.metrics import MIN_HOLDOUT_SUBJECTS, score
from emoma.report.common import evaluation_sections
from emoma.report.search import holdout_evaluation
from emoma.results import FINAL


def test_retraining_shares_runs_keeps_models_and_combines_members(small_table, smoke_config):
    config = apply_overrides(smoke_config, {"train.epochs": 2})
    other = apply_overrides(config, {"model.n_features": 4, "data.subject_norm": "subject"})
    tables = {"none": small_table, "subject": normalise_subjects(small_table, other.data)}
    configs = {"base": config, "seed": other, "final a": apply_overrides(config, {"name": "renamed"}), "final b": other}
    held = retrain_and_score(
        tables, [2, 3], configs, config, baselines_for="base", keep_models_for=("final a", "final b")
    )
    assert held["final a"] is held["base"] and held["final b"] is held["seed"]  # one run per configuration
    assert held["base"].result.baselines and held["base"].result.model is not None
    assert held["seed"].result.model is not None and set(np.unique(held["seed"].groups)) == {2, 3}
    final = combine([held["final a"], held["final b"]], [0.25, 0.75], len(small_table.class_names))
    expected = 0.25 * held["base"].result.proba + 0.75 * held["seed"].result.proba
    np.testing.assert_allclose(final.result.proba, expected)
    assert final.result.metrics == score(final.y, expected.argmax(1), 2)[0] and not final.result.baselines
    assert combine([held["seed"]], [1.0], 2) is held["seed"]


def test_the_final_configuration_of_an_ensemble_names_each_member(smoke_config):
    from emoma.report.search import final_config_yaml

    other = apply_overrides(smoke_config, {"model.context": 2})
    result = SimpleNamespace(
        final_configs={"a": smoke_config, "b": other}, selection=SimpleNamespace(weights={"a": 0.6, "b": 0.4})
    )
    members = yaml.safe_load(final_config_yaml(result))["ensemble"]
    assert [(m["trial"], m["weight"], m["config"]["model"]["context"]) for m in members] == [
        ("a", 0.6, 1),
        ("b", 0.4, 2),
    ]
    single = SimpleNamespace(final_configs={"a": smoke_config}, selection=SimpleNamespace(weights={"a": 1.0}))
    assert yaml.safe_load(final_config_yaml(single)) == smoke_config.to_dict()


def test_a_hold_out_of_fewer_than_8_subjects_gets_scores_only():
    rng = np.random.default_rng(0)

    def held_out_frame(n_subjects):
        rows = 20 * n_subjects
        frame = pd.DataFrame(
            {"subject": np.repeat([str(s) for s in range(n_subjects)], 20), "true": rng.integers(0, 2, rows)}
        )
        for model in (FINAL, "LDA"):
            p = rng.random(rows)
            frame[f"{model}|a"], frame[f"{model}|b"] = p, 1 - p
        return frame

    small, enough = (holdout_evaluation([held_out_frame(n)], ["a", "b"], MIN_HOLDOUT_SUBJECTS) for n in (7, 8))
    assert not small["tests"] and not small["wilcoxon"]["against"]
    assert math.isnan(small["models"][FINAL]["ci"]["macro_f1"]["ci_low"])
    effect = enough["wilcoxon"]["against"]["LDA"]["macro_f1"]
    assert (
        enough["tests"]
        and "p_holm" in effect
        and effect["diff_ci_low"] <= effect["mean_diff"] <= effect["diff_ci_high"]
    )
    assert "| LDA | macro_f1 | " + f"{effect['mean_diff']:+.3f} ({effect['diff_ci_low']:+.3f} to" in "\n".join(
        evaluation_sections(enough, ["a", "b"])
    )  # the effect with its interval, before the test
    text = "\n".join(evaluation_sections(small, ["a", "b"], scores_only_hint=" Nest it."))
    assert "Scores only: 7 subjects are too few for intervals and paired tests (this report needs 8" in text
    assert "Nest it." in text and "p (Holm)" not in text
    assert holdout_evaluation([held_out_frame(7)], ["a", "b"])["tests"]  # a nested search's hold-out: as LOSO
