"""Stage 3: train one fold's model on tensors, early-stopped on the fold's inner validation rows."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from emoma.config import ModelConfig, TrainConfig
from emoma.errors import UserError
from emoma.model import build_model


@dataclass
class FoldFit:
    model: nn.Module  # weights of the best validation epoch, in eval mode
    best_epoch: int  # 1-based epoch whose weights were kept
    epochs_run: int
    history: list[dict] = field(default_factory=list)  # per epoch: train_loss, train_acc, val_loss, val_acc


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA device is available: use --device cpu or auto")
    return torch.device(name)


def train_fold(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, *,
               n_classes: int, model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int,
               log=None) -> FoldFit:
    """Train a fresh CNN-LSTM with Adam on (X_train, y_train); keep the epoch best on (X_val, y_val).

    Parameters
    ----------
    X_train, X_val : (n_rows, n_inputs) float32 scaled features.
    y_train, y_val : (n_rows,) int64 class indices.
    log : optional callable taking one line of text per epoch (``-v``).

    Returns
    -------
    FoldFit with the best-validation-accuracy weights restored (ties: lower validation loss).
    """
    device = resolve_device(train_cfg.device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_model(model_cfg, X_train.shape[1], n_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    Xt, yt = torch.as_tensor(X_train, device=device), torch.as_tensor(y_train, device=device)
    Xv, yv = torch.as_tensor(X_val, device=device), torch.as_tensor(y_val, device=device)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(y_train, n_classes, device) if train_cfg.class_weights else None)

    n = len(yt)
    best = (-1.0, float("inf"))
    best_state, best_epoch, history = None, 0, []
    for epoch in range(1, train_cfg.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for start in range(0, n, train_cfg.batch_size):
            idx = order[start:start + train_cfg.batch_size]
            logits = model(Xt[idx])
            loss = loss_fn(logits, yt[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train_cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.argmax(1) == yt[idx]).sum()
        val_loss, val_acc = evaluate(model, Xv, yv, loss_fn)
        row = {"epoch": epoch, "train_loss": loss_sum.item() / n, "train_acc": correct.item() / n,
               "val_loss": val_loss, "val_acc": val_acc}
        history.append(row)
        if log is not None:
            log(f"epoch {epoch:3d}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}  "
                f"val loss {val_loss:.4f} acc {val_acc:.3f}")
        if (val_acc, -val_loss) > (best[0], -best[1]):
            best, best_epoch = (val_acc, val_loss), epoch
            best_state = copy.deepcopy(model.state_dict())
        elif train_cfg.patience and epoch - best_epoch >= train_cfg.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    return FoldFit(model=model, best_epoch=best_epoch, epochs_run=len(history), history=history)


EVAL_CHUNK = 2048  # rows per forward pass when scoring: bounds activation memory on big tables


@torch.no_grad()
def logits_of(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """(n_rows, n_classes) logits of `model` in eval mode, EVAL_CHUNK rows at a time."""
    model.eval()
    return torch.cat([model(chunk) for chunk in X.split(EVAL_CHUNK)])


def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, loss_fn) -> tuple[float, float]:
    """(mean loss, accuracy) of `model` in eval mode on (X, y)."""
    logits = logits_of(model, X)
    return loss_fn(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def predict_proba(model: nn.Module, X: np.ndarray) -> np.ndarray:
    """(n_rows, n_classes) class probabilities for scaled features X (n_rows, n_inputs)."""
    device = next(model.parameters()).device
    return torch.softmax(logits_of(model, torch.as_tensor(X, device=device)), dim=1).cpu().numpy()


def class_weights(y: np.ndarray, n_classes: int, device) -> torch.Tensor:
    """(n_classes,) inverse class frequencies of `y`, as scikit-learn's "balanced"."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    weights = len(y) / (n_classes * np.maximum(counts, 1))
    return torch.as_tensor(weights, dtype=torch.float32, device=device)
