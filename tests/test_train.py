import numpy as np
import pytest
import torch

import emoma.train
from emoma.config import ModelConfig, TrainConfig
from emoma.folds import Samples
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
    fit = train_fold(
        separable(300, 0),
        separable(100, 1),
        n_classes=2,
        model_cfg=MODEL,
        train_cfg=TrainConfig(epochs=15, batch_size=32, lr=3e-3),
        seed=0,
    )
    losses = [h["train_loss"] for h in fit.history]
    assert losses[-1] < 0.6 * losses[0]
    test = separable(200, 2)
    assert (predict_proba(fit.model, test).argmax(1) == test.y).mean() > 0.85


# Validation scores per epoch where the metrics disagree: accuracy peaks at epoch 2, macro-F1 at epoch 4,
# balanced accuracy ties at epochs 3 and 5 (the lower validation loss, epoch 5, wins).
SCRIPT = [
    {"val_loss": 0.70, "val_accuracy": 0.60, "val_balanced_accuracy": 0.50, "val_macro_f1": 0.40},
    {"val_loss": 0.65, "val_accuracy": 0.80, "val_balanced_accuracy": 0.55, "val_macro_f1": 0.45},
    {"val_loss": 0.60, "val_accuracy": 0.70, "val_balanced_accuracy": 0.70, "val_macro_f1": 0.60},
    {"val_loss": 0.62, "val_accuracy": 0.65, "val_balanced_accuracy": 0.65, "val_macro_f1": 0.70},
    {"val_loss": 0.58, "val_accuracy": 0.60, "val_balanced_accuracy": 0.70, "val_macro_f1": 0.50},
    {"val_loss": 0.59, "val_accuracy": 0.60, "val_balanced_accuracy": 0.60, "val_macro_f1": 0.50},
]
BEST = {"accuracy": 2, "macro_f1": 4, "balanced_accuracy": 5}


@pytest.mark.parametrize("metric", list(BEST))
def test_best_epoch_and_early_stopping_follow_the_configured_metric(metric, monkeypatch):
    import emoma.batched
    import emoma.metrics

    selector = emoma.metrics.EpochSelector(patience=0)
    for epoch, row in enumerate(SCRIPT, 1):
        selector.update(epoch, row[f"val_{metric}"], row["val_loss"])
    assert selector.best_epoch == BEST[metric]
    train_cfg = TrainConfig(epochs=6, batch_size=64, metric=metric, patience=2)

    # the sequential trainer: its validation scores replaced by the script
    epochs = iter(SCRIPT)
    monkeypatch.setattr(emoma.train, "validation_scores", lambda *a: dict(next(epochs)))
    fit = train_fold(separable(100, 0), separable(40, 1), n_classes=2, model_cfg=MODEL, train_cfg=train_cfg, seed=0)
    assert fit.best_epoch == BEST[metric] and fit.epochs_run == min(6, BEST[metric] + 2)

    # the fold-batched trainer, two folds on the same script
    keys = ["val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1"]
    rows = iter(SCRIPT)

    def scripted(forward, leaves, va, class_w, n_classes):
        row = next(rows)
        return torch.tensor([[row[k] for k in keys]] * len(va.counts))

    monkeypatch.setattr(emoma.batched, "_validate", scripted)
    fits = emoma.batched.train_folds(
        [separable(100, 0)] * 2, [separable(40, 1)] * 2, n_classes=2, model_cfg=MODEL, train_cfg=train_cfg, seeds=[0, 1]
    )
    assert [f.best_epoch for f in fits] == [BEST[metric]] * 2
    assert [f.epochs_run for f in fits] == [min(6, BEST[metric] + 2)] * 2


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
    fit = train_fold(
        data, separable(50, 1), n_classes=2, model_cfg=MODEL, train_cfg=TrainConfig(epochs=2, batch_size=32), seed=0
    )
    whole = predict_proba(fit.model, data)
    monkeypatch.setattr(emoma.train, "EVAL_CHUNK", 7)
    assert np.allclose(predict_proba(fit.model, data), whole, atol=1e-6)
