"""The fold-batched trainer equals the sequential reference (without dropout, up to float rounding), for the
single-window and the context-window model, and a fold's result never depends on the folds beside it."""

import numpy as np
import pytest
import torch

import emoma.batched
from emoma.batched import FoldBatchedForward, Layout, _pool, _Stack, _stack_windows, _validate
from emoma.config import ModelConfig, apply_overrides
from emoma.context import normalise_subjects
from emoma.cv import run_cv, run_fold, run_folds_batched, table_context
from emoma.folds import Samples, make_plan
from emoma.model import build_model

VARIANTS = {
    "plain": {"model.context": 1},
    "context": {"model.context": 4, "model.bidirectional": True, "model.lstm_layers": 2, "data.subject_norm": "causal"},
    "context, avg pool, no attention": {
        "model.context": 3,
        "model.pool": "avg",
        "model.attention": False,
        "model.cbam": False,
        "model.fc": 0,
        "model.kernel_size": 5,
    },
    "bidirectional, no attention": {"model.context": 2, "model.bidirectional": True, "model.attention": False},
    "LSTM over windows": {
        "model.context": 4,
        "model.lstm_over": "windows",
        "model.lstm_layers": 2,
        "model.bidirectional": True,
        "data.subject_norm": "subject",
    },
    "ensemble members with refit": {"model.context": 2, "model.ensemble": 3, "train.refit": True},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_batched_forward_equals_the_model(variant):
    overrides = {k.split(".")[1]: v for k, v in VARIANTS[variant].items() if k.startswith("model.")}
    cfg = ModelConfig(**{"conv_channels": [4, 8], "lstm_hidden": 6, "fc": 5, "dropout": 0.0, **overrides})
    models = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        models.append(build_model(cfg, 7, 3).eval())
    layout = Layout(models[0])
    params = layout.views(layout.rows(models))
    T = cfg.context
    x = torch.randn(3, 5, T, 7)
    mask = torch.ones(3, 5, T, dtype=torch.bool)
    if T > 1:
        mask[:, 1, : T - 1] = False  # a sample at the start of a run: only its own window is real
        mask[:, 2, :1] = False
    got = FoldBatchedForward(models[0], cfg)(params, x, mask, None)
    for k, model in enumerate(models):
        torch.testing.assert_close(got[k], model(x[k], mask[k]), atol=2e-6, rtol=1e-5)
        assert all(
            torch.equal(a, b)
            for a, b in zip(layout.state_dict(layout.rows(models)[k], model).values(), model.state_dict().values())
        )


@pytest.mark.parametrize("length", [8, 7])
def test_pair_max_pool_has_max_pools_values_and_gradient(length):
    """Ties included: the first of two equal values takes the gradient, as in max pooling; an odd last position
    is pooled alone (ceil mode)."""
    h = torch.randn(2, 3, length, 4)
    h[0, 1, 3], h[1, 2, 5] = h[0, 1, 2], h[1, 2, 4]
    h.requires_grad_()
    weight = torch.randn(2, 3, (length + 1) // 2, 4)
    ours = _pool(h, "max")
    (ours_grad,) = torch.autograd.grad((ours * weight).sum(), h)
    reference = torch.nn.functional.max_pool1d(h.flatten(0, 1).transpose(1, 2), 2, ceil_mode=True)
    reference = reference.transpose(1, 2).unflatten(0, (2, 3))
    (reference_grad,) = torch.autograd.grad((reference * weight).sum(), h)
    assert torch.equal(ours, reference) and torch.equal(ours_grad, reference_grad)


def test_validation_reads_each_distinct_window_once_and_scores_every_sample(monkeypatch):
    """The CNN runs on the distinct windows only; the scores equal those of the model run sample by sample (two
    folds of different sizes, each over its own window matrix, with padded context windows, in chunks)."""
    monkeypatch.setattr(emoma.batched, "EVAL_CHUNK", 4)
    cfg = ModelConfig(conv_channels=[4, 8], lstm_hidden=6, fc=5, dropout=0.0, context=3, lstm_over="windows")
    rng = np.random.default_rng(0)
    parts = []
    for n in (9, 6):
        index = np.stack([np.maximum(np.arange(n) - lag, 0) for lag in (2, 1, 0)], axis=1)
        mask = np.stack([np.arange(n) >= lag for lag in (2, 1, 0)], axis=1)
        parts.append(Samples(rng.standard_normal((n, 7)).astype(np.float32), index, mask, rng.integers(0, 3, n)))
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(build_model(cfg, 7, 3).eval())
    layout = Layout(models[0])
    params = layout.views(layout.rows(models))
    forward = FoldBatchedForward(models[0], cfg)
    windows, source = _stack_windows(parts, "cpu")
    stack = _Stack(parts, windows, source)
    windows, where = stack.distinct_windows(0, 9)
    assert windows.shape == (2, 9, 7) and where.shape == (2, 9, 3)  # 9 windows, not 9 samples x 3 positions
    got = _validate(forward, params, stack, torch.ones(2, 3), 3)
    for k, (part, model) in enumerate(zip(parts, models)):
        with torch.no_grad():
            logits = model(torch.as_tensor(part.X[part.index]), torch.as_tensor(part.mask))
        y = torch.as_tensor(part.y)
        loss = torch.nn.functional.cross_entropy(logits, y)
        accuracy = (logits.argmax(1) == y).float().mean()
        torch.testing.assert_close(got[k, :2], torch.stack([loss, accuracy]), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_batched_folds_match_sequential(small_table, smoke_config, variant):
    config = apply_overrides(
        smoke_config,
        {
            "model.dropout": 0.0,
            "train.epochs": 15,
            "train.patience": 2,
            "train.lr": 0.02,
            "train.class_weights": True,
            "train.grad_clip": 1.0,
            "train.weight_decay": 1e-3,
            "train.batch_size": 16,
            "cv.scheme": "loso",
            **VARIANTS[variant],
        },
    )  # loso: folds of different sizes, so some folds skip steps
    table = normalise_subjects(small_table, config.data)
    plan = make_plan(table, config.cv, config.seed)
    context = table_context(table, config)
    indices = list(range(len(plan.folds)))
    batched = run_folds_batched(table, plan.folds, indices, config, context)
    stopped_early = 0
    for i, b in zip(indices, batched):
        s = run_fold(table, plan.folds[i], i, config, context)
        assert (b.best_epoch, b.epochs_run) == (s.best_epoch, s.epochs_run)
        stopped_early += b.epochs_run < config.train.epochs
        for hb, hs in zip(b.history, s.history):  # float rounding (which differs by CPU) grows over 15 epochs
            for key in ("train_loss", "val_loss", "val_macro_f1", "train_accuracy"):
                assert hb[key] == pytest.approx(hs[key], rel=1e-2, abs=1e-3), key
        np.testing.assert_allclose(b.proba, s.proba, atol=2e-3)
        np.testing.assert_array_equal(b.y_pred, s.y_pred)
    assert stopped_early, "expected patience to stop a fold, so that folds leave the batch"


@pytest.mark.slow
def test_a_folds_result_does_not_depend_on_its_batch_neighbours(small_table, smoke_config):
    """With dropout, LOSO folds of different sizes (so different steps per epoch), neighbours that stop early."""
    config = apply_overrides(
        smoke_config,
        {
            "model.dropout": 0.3,
            "train.epochs": 10,
            "train.patience": 1,
            "model.context": 2,
            "cv.scheme": "loso",
            "train.batch_size": 2,
        },
    )
    plan = make_plan(small_table, config.cv, config.seed)
    assert len({len(f.train) for f in plan.folds}) > 1
    context = table_context(small_table, config)
    together = run_folds_batched(small_table, plan.folds, list(range(len(plan.folds))), config, context)
    assert len({r.epochs_run for r in together}) > 1, "expected some folds to stop before others"
    for i in (0, len(plan.folds) - 1):
        alone = run_folds_batched(small_table, plan.folds[i : i + 1], [i], config, context)[0]
        np.testing.assert_allclose(together[i].proba, alone.proba, atol=1e-5)
        assert len(together[i].history) == len(alone.history)
        for a, b in zip(together[i].history, alone.history):
            assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.parametrize("lstm_over", ["positions", "windows"])
def test_dropout_everywhere_trains_and_scores(small_table, smoke_config, lstm_over):
    """The batched trainer's dropout sites (head and between LSTM layers) with several layers and directions."""
    config = apply_overrides(
        smoke_config,
        {
            "model.dropout": 0.4,
            "model.lstm_layers": 3,
            "model.bidirectional": True,
            "model.context": 3,
            "train.epochs": 3,
            "model.lstm_over": lstm_over,
        },
    )
    plan = make_plan(small_table, config.cv, config.seed)
    results = run_folds_batched(small_table, plan.folds, [0, 1, 2], config, table_context(small_table, config))
    for r in results:
        assert r.epochs_run == 3 and np.isfinite(r.proba).all()
        assert r.history[-1]["train_loss"] != r.history[0]["train_loss"]


@pytest.mark.slow
def test_run_cv_trainers_agree(small_table, smoke_config):
    config = apply_overrides(smoke_config, {"model.dropout": 0.0, "cv.jobs": 2})
    plan = make_plan(small_table, config.cv, config.seed)
    batched = run_cv(small_table, plan, config, progress=False)
    sequential = run_cv(small_table, plan, apply_overrides(config, {"cv.trainer": "sequential"}), progress=False)
    assert [f.index for f in batched.folds] == [0, 1, 2]
    for a, b in zip(batched.folds, sequential.folds):
        np.testing.assert_allclose(a.proba, b.proba, atol=1e-4)
