"""The degenerate-model notes: a model that collapsed to one class, one no better than the majority class, one
below a same-input baseline."""

import numpy as np
import pytest

from emoma.metrics import degenerate_notes

NAMES = ["non-stress", "stress"]
HEALTHY = np.array([[70, 10], [5, 15]])


def test_a_healthy_model_gets_no_note():
    assert degenerate_notes([HEALTHY, HEALTHY], NAMES, "macro_f1", baselines={"LDA": 0.5}) == []


def test_one_class_in_every_fold_is_named():
    folds = [np.array([[80, 0], [20, 0]]), np.array([[0, 70], [0, 30]]), HEALTHY]
    notes = degenerate_notes(folds, NAMES, "macro_f1")
    assert len(notes) == 1
    assert "predicts a single class for 95% or more of the windows in 2 of 3 test folds" in notes[0]
    assert "train.class_weights: true" in notes[0]
    (held_out,) = degenerate_notes([np.array([[80, 1], [19, 0]])], NAMES, "accuracy", what="the final model")
    assert held_out.startswith("the final model predicts 'non-stress' for 99% of the windows")


def test_a_table_of_one_class_is_not_a_collapse():
    assert degenerate_notes([np.array([[99, 0], [0, 1]])], NAMES, "macro_f1") == []


def test_no_better_than_the_majority_class():
    (note,) = degenerate_notes([np.array([[40, 40], [10, 10]])], NAMES, "accuracy")  # 0.50 against always 0.80
    assert note == (
        "the CNN-LSTM scores no better than always predicting the scored windows' most frequent class "
        "(accuracy 0.500 against 0.800)"
    )
    (note,) = degenerate_notes([np.array([[40, 40], [10, 10]])] * 2, NAMES, "accuracy")
    assert "each test fold's most frequent class" in note


@pytest.mark.parametrize("baseline, expected", [(0.9, 1), (0.5, 0)])
def test_below_the_best_same_input_baseline(baseline, expected):
    notes = degenerate_notes([HEALTHY], NAMES, "balanced_accuracy", baselines={"LDA": 0.1, "RandomForest": baseline})
    assert len(notes) == expected
    if expected:
        assert notes[0].startswith(
            "the CNN-LSTM scores below RandomForest, a baseline on the same inputs "
            "(balanced_accuracy 0.812 against 0.900)"
        )
