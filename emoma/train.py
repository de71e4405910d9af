"""Stage 3, the reference trainer: one fold's model at a time, early-stopped on the fold's inner validation
subjects by the configured metric. `emoma.batched` trains many folds at once and is compared against this."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from emoma.config import ModelConfig, TrainConfig
from emoma.errors import UserError
from emoma.folds import Samples
from emoma.metrics import EpochSelector, confusion_tensor, metrics_from_confusion
from emoma.model import build_model

EVAL_CHUNK = 2048  # samples per forward pass when scoring: bounds activation memory on big tables


@dataclass
class FoldFit:
    """One trained fold model: the weights kept, their epoch, the epochs run and the per-epoch history."""

    model: nn.Module  # weights of the best validation epoch (or of the refit), in eval mode
    best_epoch: int  # 1-based epoch whose weights were kept
    epochs_run: int
    history: list[dict] = field(default_factory=list)  # per epoch: train loss/accuracy, validation loss and metrics


def resolve_device(name: str) -> torch.device:
    """The torch device for `train.device` (auto: CUDA when available); cuda without a GPU is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA device is available: use --device cpu or auto")
    return torch.device(name)


@dataclass
class SampleTensors:
    """Samples on a device: a batch is X[index[rows]] (B, k, F) with mask[rows] (None: no padding anywhere)."""

    X: torch.Tensor  # (n_windows, F)
    index: torch.Tensor  # (n, k)
    mask: torch.Tensor | None  # (n, k) bool
    y: torch.Tensor  # (n,)

    @classmethod
    def of(cls, samples: Samples, device) -> SampleTensors:
        """`samples` (features, context index, mask, labels) as tensors on `device`."""
        mask = torch.as_tensor(samples.mask, device=device) if samples.padded else None
        return cls(
            torch.as_tensor(samples.X, device=device),
            torch.as_tensor(samples.index, device=device),
            mask,
            torch.as_tensor(samples.y, device=device),
        )

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The windows (B, k, F) and mask (B, k) or None of the samples at `rows`."""
        return self.X[self.index[rows]], None if self.mask is None else self.mask[rows]


def train_fold(
    train: Samples,
    val: Samples | None,
    *,
    n_classes: int,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    seed: int,
    log=None,
) -> FoldFit:
    """Train a fresh CNN-LSTM with Adam on `train`; keep the epoch best on `val` by `train_cfg.metric`.

    Parameters
    ----------
    train, val : the fold's samples (k context windows each over its scaled features); val None (a refit):
        run all `train_cfg.epochs` epochs and keep the last.
    log : optional callable taking one line of text per epoch (``-v``).

    Returns
    -------
    FoldFit with the best epoch's weights restored (ties: lower validation loss).
    """
    device = resolve_device(train_cfg.device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_model(model_cfg, train.X.shape[1], n_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    tr = SampleTensors.of(train, device)
    va = None if val is None else SampleTensors.of(val, device)
    weights = class_weights(train.y, n_classes, device) if train_cfg.class_weights else None
    loss_fn = nn.CrossEntropyLoss(weight=weights)

    n = len(train)
    selector = EpochSelector(train_cfg.patience)
    best_state, history = None, []
    for epoch in range(1, train_cfg.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for start in range(0, n, train_cfg.batch_size):
            rows = order[start : start + train_cfg.batch_size]
            logits = model(*tr.batch(rows))
            loss = loss_fn(logits, tr.y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train_cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            optimizer.step()
            loss_sum += loss.detach() * len(rows)
            correct += (logits.argmax(1) == tr.y[rows]).sum()
        row = {"epoch": epoch, "train_loss": loss_sum.item() / n, "train_accuracy": correct.item() / n}
        if va is not None:
            row.update(validation_scores(model, va, loss_fn, n_classes))
        history.append(row)
        if log is not None:
            log(epoch_line(row, train_cfg.metric))
        if va is None:
            continue
        if selector.update(epoch, row[f"val_{train_cfg.metric}"], row["val_loss"]):
            best_state = copy.deepcopy(model.state_dict())
        elif selector.should_stop(epoch):
            break
    if va is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FoldFit(
        model=model,
        best_epoch=selector.best_epoch if va is not None else len(history),
        epochs_run=len(history),
        history=history,
    )


def epoch_line(row: dict, metric: str) -> str:
    """One epoch's training (and validation) loss and scores as a log line (`-v`)."""
    line = f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}"
    if "val_loss" not in row:  # a refit: no validation rows
        return line + "  (refit)"
    return line + f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f} {metric} {row[f'val_{metric}']:.3f}"


@torch.no_grad()
def logits_of(model: nn.Module, samples: SampleTensors) -> torch.Tensor:
    """(n, n_classes) logits of `model` in eval mode, EVAL_CHUNK samples at a time."""
    model.eval()
    rows = torch.arange(len(samples.y), device=samples.y.device)
    return torch.cat([model(*samples.batch(chunk)) for chunk in rows.split(EVAL_CHUNK)])


def validation_scores(model: nn.Module, samples: SampleTensors, loss_fn, n_classes: int) -> dict[str, float]:
    """{"val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1"} of `model` on `samples`."""
    logits = logits_of(model, samples)
    metrics = metrics_from_confusion(confusion_tensor(logits.argmax(1), samples.y, n_classes))
    values = torch.stack([loss_fn(logits, samples.y), *metrics.values()]).tolist()
    return dict(zip(["val_loss", *(f"val_{m}" for m in metrics)], values))


def predict_proba(model: nn.Module, samples: Samples) -> np.ndarray:
    """(n_samples, n_classes) class probabilities."""
    device = next(model.parameters()).device
    return torch.softmax(logits_of(model, SampleTensors.of(samples, device)), dim=1).cpu().numpy()


def class_weights(y: np.ndarray, n_classes: int, device) -> torch.Tensor:
    """(n_classes,) inverse class frequencies of `y`, as scikit-learn's "balanced"."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    weights = len(y) / (n_classes * np.maximum(counts, 1))
    return torch.as_tensor(weights, dtype=torch.float32, device=device)
