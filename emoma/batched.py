"""Stage 3, fold-batched: train the K fold models of one configuration together as one vmapped model.

Each fold keeps its own initial weights (same seeds as `train.train_fold`), its own mini-batches (same
permutations), its own Adam state and its own early stopping; only the arithmetic is batched, so per-step
overhead is paid once for K folds. Without dropout the results equal sequential training up to float
rounding; with dropout the masks come from another random stream (same distribution).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from emoma.config import ModelConfig, TrainConfig
from emoma.model import build_model
from emoma.train import FoldFit, class_weights, resolve_device

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as in train_fold


class MatmulLSTM(nn.Module):
    """nn.LSTM's math from matmuls, under nn.LSTM's parameter names, so that vmap can batch it
    (torch has no vmap rule for aten::lstm)."""

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        self.layers, self.hidden, self.dropout = lstm.num_layers, lstm.hidden_size, lstm.dropout
        self.directions = 2 if lstm.bidirectional else 1
        for name, p in lstm.named_parameters():
            self.register_parameter(name, nn.Parameter(p.detach().clone()))

    def forward(self, x):  # x: (B, L, D) -> ((B, L, H * directions), None)
        for layer in range(self.layers):
            if layer and self.dropout and self.training:
                x = nn.functional.dropout(x, self.dropout, True)
            x = torch.cat([self._direction(x, layer, reverse) for reverse in (False, True)[:self.directions]], dim=2)
        return x, None

    def _direction(self, x, layer: int, reverse: bool):
        suffix = f"_l{layer}" + ("_reverse" if reverse else "")
        w_hh = getattr(self, "weight_hh" + suffix)
        gates_x = x @ getattr(self, "weight_ih" + suffix).T + getattr(self, "bias_ih" + suffix) \
            + getattr(self, "bias_hh" + suffix)  # (B, L, 4H), gate order i, f, g, o
        h = c = x.new_zeros(x.shape[0], self.hidden)
        out = [None] * x.shape[1]
        for t in (reversed(range(x.shape[1])) if reverse else range(x.shape[1])):
            i, f, g, o = (gates_x[:, t] + h @ w_hh.T).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            out[t] = h
        return torch.stack(out, dim=1)


def _pad(arrays: list[np.ndarray], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ragged per-fold arrays: (K, n_max, ...) zero-padded, and the row counts (K,)."""
    n_max = max(len(a) for a in arrays)
    out = np.zeros((len(arrays), n_max, *arrays[0].shape[1:]), dtype=arrays[0].dtype)
    for k, a in enumerate(arrays):
        out[k, :len(a)] = a
    return torch.as_tensor(out, device=device), torch.as_tensor([len(a) for a in arrays], device=device)


def train_folds(X_train: list[np.ndarray], y_train: list[np.ndarray], X_val: list[np.ndarray],
                y_val: list[np.ndarray], *, n_classes: int, model_cfg: ModelConfig, train_cfg: TrainConfig,
                seeds: list[int], log=None) -> list[FoldFit]:
    """`train.train_fold` for K folds at once. Inputs are per-fold lists; every fold has the same n_inputs.

    Returns one FoldFit per fold, with the best-validation weights restored in a plain CNNLSTM.
    """
    device = resolve_device(train_cfg.device)
    K, n_inputs = len(seeds), X_train[0].shape[1]
    models = []
    for seed in seeds:  # same initial weights as train_fold with this seed
        torch.manual_seed(seed)
        models.append(build_model(model_cfg, n_inputs, n_classes))
    base = copy.deepcopy(models[0])
    base.lstm = MatmulLSTM(base.lstm)
    base = base.to(device)
    params, buffers = stack_module_state([_with_matmul_lstm(m) for m in models])
    params = {k: v.to(device).detach().requires_grad_() for k, v in params.items()}
    buffers = {k: v.to(device) for k, v in buffers.items()}
    forward = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), randomness="different")

    Xt, nt = _pad(X_train, device)
    yt, _ = _pad(y_train, device)
    Xv, nv = _pad(X_val, device)
    yv, _ = _pad(y_val, device)
    class_w = torch.stack([class_weights(y, n_classes, device) if train_cfg.class_weights
                           else torch.ones(n_classes, device=device) for y in y_train])  # (K, C)
    val_mask = (torch.arange(Xv.shape[1], device=device)[None] < nv[:, None]).float()  # (K, nv_max)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    m = {k: torch.zeros_like(v) for k, v in params.items()}
    v2 = {k: torch.zeros_like(v) for k, v in params.items()}
    steps = torch.zeros(K, device=device)
    bs = train_cfg.batch_size
    n_steps = int(-(-nt.max().item() // bs))
    best = [(-1.0, float("inf"))] * K
    best_epoch, stopped = [0] * K, [False] * K
    best_params = {k: v.detach().clone() for k, v in params.items()}
    histories: list[list[dict]] = [[] for _ in range(K)]
    fold_index = torch.arange(K, device=device)[:, None]
    for epoch in range(1, train_cfg.epochs + 1):
        base.train()
        # each fold's permutation (as in train_fold), padded to n_steps * bs; mask marks real rows
        order = torch.zeros(K, n_steps * bs, dtype=torch.long)
        for k, (n, g) in enumerate(zip(nt.tolist(), generators)):
            order[k, :n] = torch.randperm(n, generator=g)
        order = order.to(device)
        valid = (torch.arange(n_steps * bs, device=device)[None] < nt[:, None]).float()
        running = ~torch.tensor(stopped, device=device)
        loss_sum = torch.zeros(K, device=device)
        correct = torch.zeros(K, device=device)
        for s in range(n_steps):
            idx, mask = order[:, s * bs:(s + 1) * bs], valid[:, s * bs:(s + 1) * bs]  # (K, bs)
            active = (mask.sum(1) > 0) & running
            xb, yb = Xt[fold_index, idx], yt[fold_index, idx]  # (K, bs, F), (K, bs)
            logits = forward(params, buffers, xb)  # (K, bs, C)
            per_row = nn.functional.cross_entropy(logits.transpose(1, 2), yb, reduction="none")  # (K, bs)
            weight = class_w[fold_index, yb] * mask
            fold_loss = (per_row * weight).sum(1) / weight.sum(1).clamp_min(1e-12)  # (K,) weighted means
            grads = torch.autograd.grad(fold_loss.sum(), list(params.values()))
            _adam_step(params, dict(zip(params, grads)), m, v2, steps, active, train_cfg)
            with torch.no_grad():
                loss_sum += fold_loss.detach() * mask.sum(1)
                correct += ((logits.argmax(2) == yb).float() * mask).sum(1)
        base.eval()
        with torch.no_grad():
            logits = forward(params, buffers, Xv)
            per_row = nn.functional.cross_entropy(logits.transpose(1, 2), yv, reduction="none")
            weight = class_w[fold_index, yv] * val_mask
            val_loss = ((per_row * weight).sum(1) / weight.sum(1)).tolist()
            val_acc = (((logits.argmax(2) == yv).float() * val_mask).sum(1) / nv).tolist()
        for k in range(K):
            if stopped[k]:
                continue
            row = {"epoch": epoch, "train_loss": loss_sum[k].item() / nt[k].item(),
                   "train_acc": correct[k].item() / nt[k].item(), "val_loss": val_loss[k], "val_acc": val_acc[k]}
            histories[k].append(row)
            if log is not None:
                log(k, f"epoch {epoch:3d}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}  "
                       f"val loss {val_loss[k]:.4f} acc {val_acc[k]:.3f}")
            if (val_acc[k], -val_loss[k]) > (best[k][0], -best[k][1]):
                best[k], best_epoch[k] = (val_acc[k], val_loss[k]), epoch
                for name, value in params.items():
                    best_params[name][k] = value.detach()[k]
            elif train_cfg.patience and epoch - best_epoch[k] >= train_cfg.patience:
                stopped[k] = True
        if all(stopped):
            break
    fits = []
    for k, model in enumerate(models):
        model.load_state_dict({name: value[k].cpu() for name, value in best_params.items()})
        model.to(device).eval()
        fits.append(FoldFit(model=model, best_epoch=best_epoch[k], epochs_run=len(histories[k]),
                            history=histories[k]))
    return fits


def _with_matmul_lstm(model: nn.Module) -> nn.Module:
    copy_ = copy.deepcopy(model)
    copy_.lstm = MatmulLSTM(model.lstm)
    return copy_


@torch.no_grad()
def _adam_step(params, grads, m, v, steps, active, cfg: TrainConfig) -> None:
    """torch.optim.Adam (L2 weight decay), per fold; folds not `active` are left untouched."""
    steps += active.float()
    if cfg.grad_clip:
        norms = torch.sqrt(sum(g.pow(2).flatten(1).sum(1) for g in grads.values()))  # (K,) per-fold norm
        scale = (cfg.grad_clip / (norms + 1e-6)).clamp(max=1.0)
    b1, b2 = BETAS
    for name, p in params.items():
        g = grads[name]
        shape = (-1,) + (1,) * (p.dim() - 1)  # broadcast (K,) over the parameter's own dimensions
        if cfg.grad_clip:
            g = g * scale.view(shape)
        if cfg.weight_decay:
            g = g + cfg.weight_decay * p
        on = active.view(shape)
        m[name] = torch.where(on, b1 * m[name] + (1 - b1) * g, m[name])
        v[name] = torch.where(on, b2 * v[name] + (1 - b2) * g * g, v[name])
        t = steps.clamp_min(1).view(shape)
        denom = v[name].sqrt() / torch.sqrt(1 - b2**t) + EPS
        p.sub_(torch.where(on, cfg.lr / (1 - b1**t) * m[name] / denom, torch.zeros_like(p)))
