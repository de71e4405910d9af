import numpy as np
import pytest
import torch

import emoma.train
from emoma.config import ModelConfig, TrainConfig
from emoma.folds import Samples
from emoma.metrics import score
from emoma.train import predict_proba, train_fold

MODEL = ModelConfig(conv_channels=[4], lstm_hidden=8, fc=8, dropout=0.0)


def separable(n, seed):
    """Samples of one window each: one informative feature of 6."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(np.int64)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    X[:, 0] += 3 * y
    return Samples(X, np.arange(n)[:, None], np.ones((n, 1), dtype=bool), y)


def test_loss_falls_and_beats_chance():
    fit = train_fold(separable(300, 0), separable(100, 1), n_classes=2, model_cfg=MODEL,
                     train_cfg=TrainConfig(epochs=15, batch_size=32, lr=3e-3), seed=0)
    losses = [h["train_loss"] for h in fit.history]
    assert losses[-1] < 0.6 * losses[0]
    test = separable(200, 2)
    assert (predict_proba(fit.model, test).argmax(1) == test.y).mean() > 0.85


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1", "balanced_accuracy"])
def test_best_epoch_is_chosen_on_the_configured_metric(metric):
    val = separable(80, 1)
    val.y[:60] = 0  # imbalanced validation set: accuracy and macro-F1 disagree on the best epoch more often
    fit = train_fold(separable(200, 0), val, n_classes=2, model_cfg=MODEL,
                     train_cfg=TrainConfig(epochs=12, batch_size=32, lr=3e-3, metric=metric), seed=0)
    best = max(fit.history, key=lambda h: (h[f"val_{metric}"], -h["val_loss"]))
    assert fit.best_epoch == best["epoch"]
    pred = predict_proba(fit.model, val).argmax(1)
    assert score(val.y, pred, 2)[0][metric] == pytest.approx(best[f"val_{metric}"], abs=1e-6)


def test_patience_stops_early_and_seed_repeats():
    train, val = separable(200, 0), separable(80, 1)
    cfg = TrainConfig(epochs=200, patience=3, batch_size=50, lr=1e-2, class_weights=True, grad_clip=1.0)
    a = train_fold(train, val, n_classes=2, model_cfg=MODEL, train_cfg=cfg, seed=5)
    b = train_fold(train, val, n_classes=2, model_cfg=MODEL, train_cfg=cfg, seed=5)
    assert a.epochs_run < 200 and a.epochs_run - a.best_epoch == 3
    assert a.history == b.history
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)


def test_scoring_in_chunks_equals_one_pass(monkeypatch):
    data = separable(200, 0)
    fit = train_fold(data, separable(50, 1), n_classes=2, model_cfg=MODEL,
                     train_cfg=TrainConfig(epochs=2, batch_size=32), seed=0)
    whole = predict_proba(fit.model, data)
    monkeypatch.setattr(emoma.train, "EVAL_CHUNK", 7)
    assert np.allclose(predict_proba(fit.model, data), whole, atol=1e-6)
