import numpy as np
import torch

import emoma.train
from emoma.config import ModelConfig, TrainConfig
from emoma.train import predict_proba, train_fold

MODEL = ModelConfig(conv_channels=[4], lstm_hidden=8, fc=8, dropout=0.0)


def separable(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    X[:, 0] += 3 * y  # one informative feature
    return X, y.astype(np.int64)


def test_loss_falls_and_beats_chance():
    X, y = separable(300, 0)
    Xv, yv = separable(100, 1)
    fit = train_fold(X, y, Xv, yv, n_classes=2, model_cfg=MODEL,
                     train_cfg=TrainConfig(epochs=15, batch_size=32, lr=3e-3), seed=0)
    losses = [h["train_loss"] for h in fit.history]
    assert losses[-1] < 0.6 * losses[0]
    Xt, yt = separable(200, 2)
    assert (predict_proba(fit.model, Xt).argmax(1) == yt).mean() > 0.85


def test_best_epoch_weights_are_restored():
    X, y = separable(200, 0)
    Xv, yv = separable(80, 1)
    fit = train_fold(X, y, Xv, yv, n_classes=2, model_cfg=MODEL,
                     train_cfg=TrainConfig(epochs=12, batch_size=32, lr=3e-3), seed=0)
    best = max(fit.history, key=lambda h: (h["val_acc"], -h["val_loss"]))
    assert fit.best_epoch == best["epoch"]
    val_acc = (predict_proba(fit.model, Xv).argmax(1) == yv).mean()
    assert abs(val_acc - best["val_acc"]) < 1e-6


def test_patience_stops_early_and_seed_repeats():
    X, y = separable(200, 0)
    Xv, yv = separable(80, 1)
    cfg = TrainConfig(epochs=200, patience=3, batch_size=50, lr=1e-2, class_weights=True, grad_clip=1.0)
    a = train_fold(X, y, Xv, yv, n_classes=2, model_cfg=MODEL, train_cfg=cfg, seed=5)
    b = train_fold(X, y, Xv, yv, n_classes=2, model_cfg=MODEL, train_cfg=cfg, seed=5)
    assert a.epochs_run < 200 and a.epochs_run - a.best_epoch == 3
    assert a.history == b.history
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)


def test_scoring_in_chunks_equals_one_pass(monkeypatch):
    X, y = separable(200, 0)
    fit = train_fold(X, y, X[:50], y[:50], n_classes=2, model_cfg=MODEL,
                     train_cfg=TrainConfig(epochs=2, batch_size=32), seed=0)
    whole = predict_proba(fit.model, X)
    monkeypatch.setattr(emoma.train, "EVAL_CHUNK", 7)
    assert np.allclose(predict_proba(fit.model, X), whole, atol=1e-6)
