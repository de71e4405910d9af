"""Fold-batched training equals training the folds one by one (without dropout, up to float rounding)."""
import numpy as np
import pytest
import torch
from torch import nn

from emoma.batched import MatmulLSTM
from emoma.config import apply_overrides
from emoma.cv import run_cv, run_fold, run_folds_batched
from emoma.folds import make_plan


@pytest.mark.parametrize("bidirectional, layers", [(False, 1), (True, 2)])
def test_matmul_lstm_equals_nn_lstm(bidirectional, layers):
    lstm = nn.LSTM(8, 12, num_layers=layers, batch_first=True, bidirectional=bidirectional)
    x = torch.randn(5, 4, 8)
    torch.testing.assert_close(MatmulLSTM(lstm)(x)[0], lstm(x)[0], atol=1e-6, rtol=1e-5)


def test_batched_folds_match_sequential(small_table, smoke_config):
    config = apply_overrides(smoke_config, {
        "model.dropout": 0.0, "model.bidirectional": True, "train.epochs": 6, "train.patience": 2,
        "train.class_weights": True, "train.grad_clip": 1.0, "train.weight_decay": 1e-3, "train.batch_size": 16,
        "cv.scheme": "loso"})  # loso: folds of different sizes, so some folds skip steps
    plan = make_plan(small_table, config.cv, config.seed)
    indices = list(range(len(plan.folds)))
    batched = run_folds_batched(small_table, plan.folds, indices, config)
    for i, b in zip(indices, batched):
        s = run_fold(small_table, plan.folds[i], i, config)
        assert (b.best_epoch, b.epochs_run) == (s.best_epoch, s.epochs_run)
        for hb, hs in zip(b.history, s.history):
            assert hb["val_loss"] == pytest.approx(hs["val_loss"], abs=1e-4)
            assert hb["train_loss"] == pytest.approx(hs["train_loss"], abs=1e-4)
        np.testing.assert_allclose(b.proba, s.proba, atol=1e-3)


def test_run_cv_with_batch_folds(small_table, smoke_config):
    config = apply_overrides(smoke_config, {"model.dropout": 0.0, "cv.jobs": 2})
    plan = make_plan(small_table, config.cv, config.seed)
    one = run_cv(small_table, plan, config, progress=False)
    many = run_cv(small_table, plan, apply_overrides(config, {"cv.batch_folds": True}), progress=False)
    assert [f.index for f in many.folds] == [0, 1, 2]
    for a, b in zip(one.folds, many.folds):
        np.testing.assert_allclose(a.proba, b.proba, atol=1e-3)
