"""Stage 3, fold-batched (the default trainer): the K fold models of one configuration trained together.

Every layer is a batched matmul with the folds as its batch dimension (Conv1d = unfold + baddbmm, the LSTM =
one input matmul and a loop of baddbmm over its steps), so a step's fixed per-operation cost is paid once
for K folds. Each fold keeps what `emoma.train.train_fold` gives it: its own initial weights (same seeds),
its own mini-batches (same permutations), its own Adam state and step count, its own early stopping and best
epoch (`emoma.metrics.EpochSelector`). Folds that stop leave the batch. Dropout masks come from one random
stream per fold (not the sequential trainer's), so a fold's result does not depend on which folds share its
batch.

The parameters of all folds live in one flat (K, P) buffer, one contiguous row per fold; the optimiser is one
fused Adam call (the public functional `torch.optim.adam.adam`, fused=True) over the rows of the folds that
have rows in the step. The step loop never waits for the device: losses, accuracies and validation metrics are
read once per epoch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.adam import adam

from emoma.config import ModelConfig, TrainConfig
from emoma.folds import Samples
from emoma.metrics import EpochSelector, confusion_tensor, metrics_from_confusion
from emoma.model import CNNLSTM, ChannelAttention, SpatialAttention, build_model
from emoma.train import EVAL_CHUNK, FoldFit, class_weights, epoch_line, resolve_device

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as in train_fold
HISTORY_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1")
DROPOUT_FOLD_BYTES = 1 << 22  # each fold draws its dropout masks for as many steps at once as fit in 4 MB (max 32)


def _tanh(x):
    return 2 * torch.sigmoid(2 * x) - 1  # tanh, several times faster than torch.tanh on CPU


class Layout:
    """Where each parameter of a CNNLSTM lives in a fold's row of the flat buffer, in matmul layout.

    Linear weights are stored (in, out), Conv1d weights (c_in * kernel, c_out), biases (1, out), so that a
    layer is one baddbmm over the folds.
    """

    def __init__(self, model: CNNLSTM):
        self.shapes: dict[str, tuple[int, ...]] = {}
        for name, p in model.named_parameters():
            self.shapes[name] = tuple(_to_matmul(name, p.detach()).shape)
        self.offsets, total = {}, 0
        for name, shape in self.shapes.items():
            self.offsets[name] = total
            total += math.prod(shape)
        self.size = total

    def rows(self, models: list[CNNLSTM]) -> torch.Tensor:
        """(K, P) the models' parameters, one row each."""
        return torch.stack(
            [torch.cat([_to_matmul(n, p.detach()).reshape(-1) for n, p in m.named_parameters()]) for m in models]
        )

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """{name: (K, *shape) view of `flat`}."""
        out = {}
        for name, shape in self.shapes.items():
            a = self.offsets[name]
            out[name] = flat[:, a : a + math.prod(shape)].view(flat.shape[0], *shape)
        return out

    def state_dict(self, row: torch.Tensor, model: CNNLSTM) -> dict[str, torch.Tensor]:
        """One fold's parameters (P,) back in `model`'s own layout."""
        reference = dict(model.named_parameters())
        out = {}
        for name, shape in self.shapes.items():
            a = self.offsets[name]
            value = row[a : a + math.prod(shape)].view(shape)
            out[name] = _from_matmul(name, value, reference[name].shape)
        return out


def _to_matmul(name: str, p: torch.Tensor) -> torch.Tensor:
    if p.dim() == 3:  # Conv1d (c_out, c_in, k) -> (c_in * k, c_out), matching unfold's (channel, tap) order
        return p.permute(1, 2, 0).reshape(-1, p.shape[0])
    if p.dim() == 2:  # Linear / LSTM (out, in) -> (in, out)
        return p.t()
    return p.reshape(1, -1)  # bias (out,) -> (1, out)


def _from_matmul(name: str, value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if len(shape) == 3:
        c_out, c_in, k = shape
        return value.reshape(c_in, k, c_out).permute(2, 0, 1).contiguous()
    if len(shape) == 2:
        return value.t().contiguous()
    return value.reshape(shape).clone()


class FoldBatchedForward:
    """The CNNLSTM's forward pass for K folds at once, reading parameters from (K, ...) views."""

    def __init__(self, model: CNNLSTM, cfg: ModelConfig):
        self.cfg = cfg
        self.blocks = []  # per conv block: (conv prefix, kernel, channel-attention prefix, spatial prefix, pool)
        for i, block in enumerate(model.cnn):
            layers = dict(block.layers.named_children())
            conv = f"cnn.{i}.layers.0"
            channel = next((f"cnn.{i}.layers.{k}" for k, m in layers.items() if isinstance(m, ChannelAttention)), None)
            spatial = next((f"cnn.{i}.layers.{k}" for k, m in layers.items() if isinstance(m, SpatialAttention)), None)
            spatial_kernel = block.layers[int(spatial.rsplit(".", 1)[1])].conv.kernel_size[0] if spatial else 0
            self.blocks.append((conv, block.layers[0].kernel_size[0], channel, spatial, spatial_kernel, cfg.pool))
        self.lstm_layers, self.hidden = model.lstm.num_layers, model.lstm.hidden_size
        self.directions = 2 if model.lstm.bidirectional else 1
        self.lstm_dropout = model.lstm.dropout
        self.attention = model.pool is not None
        self.per_window = model.lstm_over == "windows"
        self.head = [f"head.{i}" for i, m in enumerate(model.head) if isinstance(m, nn.Linear)]
        self.dropout = cfg.dropout

    def __call__(self, p: dict, x: torch.Tensor, mask: torch.Tensor | None, drop: list | None) -> torch.Tensor:
        """Logits (K, B, n_classes) of x (K, B, T, F) with mask (K, B, T) or None; `drop` holds this step's
        dropout keep-masks (None in eval mode)."""
        K, B, T, n_in = x.shape
        return self.sequence(p, self.windows(p, x.reshape(K, B * T, n_in)).unflatten(1, (B, T)), mask, drop)

    def windows(self, p: dict, x: torch.Tensor) -> torch.Tensor:
        """The CNN of every window on its own: x (K, N, F) -> (K, N, L, C) channel-last."""
        K, N, n_in = x.shape
        h = x.reshape(K, N, n_in, 1)  # each window a 1-channel sequence
        for conv, kernel, channel, spatial, spatial_kernel, pool in self.blocks:
            h = torch.relu(_conv(h, p[f"{conv}.weight"], p[f"{conv}.bias"], kernel))
            if channel:
                h = _channel_attention(h, p, channel)
            if spatial:
                s = torch.cat([h.mean(3, keepdim=True), h.max(3, keepdim=True).values], dim=3)  # (K, N, L, 2)
                h = h * torch.sigmoid(_conv(s, p[f"{spatial}.conv.weight"], p[f"{spatial}.conv.bias"], spatial_kernel))
            if pool != "none":
                h = _pool(h, pool)
        return h

    def sequence(self, p: dict, h: torch.Tensor, mask: torch.Tensor | None, drop: list | None) -> torch.Tensor:
        """Logits (K, B, n_classes) from the windows' CNN outputs h (K, B, T, L, C) and mask (K, B, T) or None."""
        K, B, T, L, _ = h.shape
        if self.per_window:
            h, L = h.reshape(K, B, T, -1), 1  # (K, B, T, L*C): one step per window
        else:
            h = h.reshape(K, B, T * L, -1)  # (K, B, S, C): the windows' positions in time order
        pos_mask = None if mask is None else mask.repeat_interleave(L, dim=2)  # (K, B, S)
        h, last = self._lstm(p, h, pos_mask, drop)
        if self.attention:
            D = h.shape[3]
            scores = torch.baddbmm(p["pool.score.bias"], h.reshape(K, -1, D), p["pool.score.weight"]).view(K, B, -1)
            if pos_mask is not None:
                scores = scores.masked_fill(~pos_mask, float("-inf"))
            weights = torch.softmax(scores, dim=2)  # (K, B, S)
            h = (weights.unsqueeze(3) * h).sum(2)  # (K, B, D)
        else:
            h = last
        for i, name in enumerate(self.head):
            if drop is not None:
                h = h * drop[i]
            h = torch.baddbmm(p[f"{name}.bias"], h, p[f"{name}.weight"])
            if i < len(self.head) - 1:
                h = torch.relu(h)
        return h

    def _lstm(self, p, x, mask, drop):
        """Masked LSTM over (K, B, S, D_in): padded positions leave the state unchanged (as packing does).
        Returns outputs (K, B, S, H * directions) and the last position's output (K, B, H * directions)."""
        K, B, S, _ = x.shape
        H = self.hidden
        gate_scale = x.new_ones(4 * H)
        gate_scale[2 * H : 3 * H] = 2  # the g gate's tanh as 2 * sigmoid(2x) - 1: one sigmoid for all four gates
        for layer in range(self.lstm_layers):
            if layer and drop is not None and self.lstm_dropout:
                x = x * drop[len(self.head) + layer - 1]
            outs = []
            for reverse in (False, True)[: self.directions]:
                sfx = f"_l{layer}" + ("_reverse" if reverse else "")
                bias = p[f"lstm.bias_ih{sfx}"] + p[f"lstm.bias_hh{sfx}"]  # (K, 1, 4H)
                xp = torch.baddbmm(bias, x.reshape(K, B * S, -1), p[f"lstm.weight_ih{sfx}"]).view(K, B, S, 4 * H)
                xp = xp * gate_scale  # scaled once here, not at every position
                w_hh = p[f"lstm.weight_hh{sfx}"] * gate_scale  # (K, H, 4H)
                h = c = x.new_zeros(K, B, H)
                out = [None] * S
                for t in range(S - 1, -1, -1) if reverse else range(S):
                    gates = torch.sigmoid(torch.baddbmm(xp[:, :, t], h, w_hh))
                    i, f, g, o = gates.chunk(4, dim=2)
                    c_new = f * c + i * (2 * g - 1)
                    h_new = o * _tanh(c_new)
                    if mask is not None:
                        m = mask[:, :, t, None]
                        c, h = torch.where(m, c_new, c), torch.where(m, h_new, h)
                    else:
                        c, h = c_new, h_new
                    out[t] = h_new
                outs.append(torch.stack(out, dim=2))
            x = torch.cat(outs, dim=3) if self.directions == 2 else outs[0]
        return x, x[:, :, -1]

    def dropout_shapes(self, B: int, S: int, model: CNNLSTM) -> list[tuple[int, ...]]:
        """Shapes (per fold) of a step's dropout masks: one per head Linear's input, one per inner LSTM layer."""
        D = self.hidden * self.directions
        shapes = [(B, D)] + [(B, model.head[int(n.split(".")[1])].in_features) for n in self.head[1:]]
        return shapes + [(B, S, D)] * (self.lstm_layers - 1)


def _conv(h, weight, bias, kernel):
    """Conv1d (padding kernel // 2) on channel-last h (K, N, L, C) -> (K, N, L, C_out)."""
    K, N, L, C = h.shape
    pad = kernel // 2
    if kernel > 1:
        h = F.pad(h, (0, 0, pad, pad))
    cols = h.unfold(2, kernel, 1).reshape(K, N * L, C * kernel)  # (K, N*L, C*kernel), (channel, tap) order
    return torch.baddbmm(bias, cols, weight).view(K, N, L, -1)


def _channel_attention(h, p, prefix):
    """CBAM channel attention, the shared MLP run once on the average- and max-pooled positions stacked."""
    K, N = h.shape[:2]
    pooled = torch.cat([h.mean(2), h.max(2).values], dim=1)  # (K, 2N, C)
    hidden = torch.relu(torch.baddbmm(p[f"{prefix}.mlp.0.bias"], pooled, p[f"{prefix}.mlp.0.weight"]))
    out = torch.baddbmm(p[f"{prefix}.mlp.2.bias"], hidden, p[f"{prefix}.mlp.2.weight"])  # (K, 2N, C)
    return h * torch.sigmoid(out[:, :N] + out[:, N:]).unsqueeze(2)


def _pool(h, kind):
    """Pool pairs of positions (ceil mode: an odd last position is pooled alone), channel-last."""
    K, N, L, C = h.shape
    if L % 2:
        h = F.pad(h, (0, 0, 0, 1), value=float("-inf") if kind == "max" else 0.0)
    if kind == "max":
        return _PairMax.apply(h)
    counts = h.new_full(((L + 1) // 2, 1), 2.0)
    if L % 2:
        counts[-1] = 1.0
    return h.view(K, N, (L + 1) // 2, 2, C).sum(3) / counts


class _PairMax(torch.autograd.Function):
    """The larger of each pair of positions of (K, N, 2L, C), with max(dim)'s gradient (to the first of equal
    values): max(dim) over the pairs and its index-scatter backward cost several times more on CPU."""

    @staticmethod
    def forward(ctx, h):
        even, odd = h[:, :, 0::2], h[:, :, 1::2]
        ctx.save_for_backward(even >= odd)
        return torch.maximum(even, odd)

    @staticmethod
    def backward(ctx, grad):
        (first,) = ctx.saved_tensors
        zero = grad.new_zeros(())
        return torch.stack([torch.where(first, grad, zero), torch.where(first, zero, grad)], dim=3).flatten(2, 3)


def _stack_windows(parts: list[Samples], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, n_windows, F) the distinct scaled window matrices of the parts, zero-padded (a fold's train and val
    samples, and every ensemble member of a fold, read the same one), and (K,) each part's matrix."""
    slot = {}  # id of a distinct matrix -> its place in X
    source = [slot.setdefault(id(s.X), len(slot)) for s in parts]
    matrices = list({id(s.X): s.X for s in parts}.values())  # in order of first appearance, as `slot`
    X = np.zeros((len(matrices), max(len(M) for M in matrices), matrices[0].shape[1]), dtype=np.float32)
    for u, M in enumerate(matrices):
        X[u, : len(M)] = M
    return torch.as_tensor(X, device=device), torch.as_tensor(source, device=device)


class _Stack:
    """Per-fold samples stacked and padded, over the window matrices X (U, N, F) of `_stack_windows`:
    index (K, n_max, k), mask, y (K, n_max), and each row's matrix."""

    def __init__(self, parts: list[Samples], X: torch.Tensor, source: torch.Tensor):
        K = len(parts)
        n_max = max(len(s) for s in parts)
        k = parts[0].index.shape[1]
        index = np.zeros((K, n_max, k), dtype=np.int64)
        mask = np.ones((K, n_max, k), dtype=bool)  # padding rows: all real, so their (unused) outputs stay finite
        y = np.zeros((K, n_max), dtype=np.int64)
        for f, s in enumerate(parts):
            index[f, : len(s)], mask[f, : len(s)], y[f, : len(s)] = s.index, s.mask, s.y
        device = X.device
        self.padded = any(s.padded for s in parts)
        self.X, self.index = X, torch.as_tensor(index, device=device)
        self.host_index = index  # for distinct_windows, without waiting for the device
        self.mask = torch.as_tensor(mask, device=device) if self.padded else None
        self.y = torch.as_tensor(y, device=device)
        self.counts = [len(s) for s in parts]
        self.n = torch.as_tensor(self.counts, device=device)
        self.fold = torch.arange(K, device=device)[:, None]  # (K, 1): each row's fold in gathers
        self.source = source[:, None]  # (K, 1): each row's window matrix in gathers

    def keep(self, local: list[int]) -> None:
        """Only the folds `local` (rows of the batch) stay."""
        ix = torch.as_tensor(local, device=self.index.device)
        self.index, self.y, self.n, self.source = self.index[ix], self.y[ix], self.n[ix], self.source[ix]
        self.host_index = self.host_index[local]
        self.mask = None if self.mask is None else self.mask[ix]
        self.counts = [self.counts[i] for i in local]
        self.fold = self.fold[: len(local)]

    def batch(self, rows: torch.Tensor):
        """rows (K, B) per-fold sample numbers -> x (K, B, T, F), mask (K, B, T) or None, y (K, B)."""
        index = self.index[self.fold, rows]  # (K, B, T)
        x = self.X[self.source[:, :, None], index]  # (K, B, T, F)
        return x, None if self.mask is None else self.mask[self.fold, rows], self.y[self.fold, rows]

    def distinct_windows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For samples start..stop of each fold: x (K, R, F) the distinct windows they read (neighbouring samples
        share all but one of their context windows), zero-padded, and (K, stop - start, T) where each sample's
        windows are in them."""
        index = self.host_index[:, start:stop]
        found = [np.unique(rows, return_inverse=True) for rows in index]
        distinct = np.zeros((len(index), max(len(u) for u, _ in found)), dtype=np.int64)
        where = np.zeros_like(index)
        for f, (u, inverse) in enumerate(found):
            distinct[f, : len(u)], where[f] = u, inverse.reshape(index.shape[1:])
        device = self.index.device
        return self.X[self.source, torch.as_tensor(distinct, device=device)], torch.as_tensor(where, device=device)


def train_folds(
    train: list[Samples],
    val: list[Samples] | None,
    *,
    n_classes: int,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    seeds: list[int],
    epochs: list[int] | None = None,
    log=None,
) -> list[FoldFit]:
    """`emoma.train.train_fold` for K folds at once (one Samples per fold; every fold has the same n_inputs).
    With val None (a refit), fold f runs `epochs[f]` epochs and keeps its last weights.

    Returns one FoldFit per fold, its best epoch's weights restored in a plain CNNLSTM.
    """
    if (val is None) != (epochs is not None) or (epochs is not None and (len(epochs) != len(seeds) or min(epochs) < 1)):
        raise ValueError(
            "give validation samples, or (a refit) no validation samples and one epoch count >= 1 per fold"
        )
    device = resolve_device(train_cfg.device)
    K, n_inputs = len(seeds), train[0].X.shape[1]
    models = []
    for seed in seeds:  # same initial weights as train_fold with this seed
        torch.manual_seed(seed)
        models.append(build_model(model_cfg, n_inputs, n_classes))
    layout = Layout(models[0])
    forward = FoldBatchedForward(models[0], model_cfg)
    flat = layout.rows(models).to(device)  # (K, P) parameters
    grad = torch.zeros_like(flat)
    m, v = torch.zeros_like(flat), torch.zeros_like(flat)
    steps = torch.zeros(K, device=device)
    best = flat.clone()  # rows by original fold number
    windows, source = _stack_windows(train, device)
    tr = _Stack(train, windows, source)
    va = None if val is None else _Stack(val, windows, source)
    class_w = torch.stack(
        [
            class_weights(s.y, n_classes, device) if train_cfg.class_weights else torch.ones(n_classes, device=device)
            for s in train
        ]
    )  # (K, C)
    dropout_gen = [torch.Generator(device=device).manual_seed(seed + 1) for seed in seeds]
    batch_gen = [torch.Generator().manual_seed(seed) for seed in seeds]  # the permutations of train_fold
    selectors = [EpochSelector(train_cfg.patience) for _ in seeds]
    histories: list[list[dict]] = [[] for _ in seeds]
    alive = list(range(K))  # original fold number of each row of the batch
    bs = train_cfg.batch_size
    p_drop = model_cfg.dropout if model_cfg.dropout > 0 else 0.0
    drop_shapes = forward.dropout_shapes(bs, tr.index.shape[2] * models[0].steps_per_window, models[0])
    chunk = max(1, min(32, DROPOUT_FOLD_BYTES // (4 * sum(math.prod(shape) for shape in drop_shapes))))

    def rebind():
        params = layout.views(flat)
        leaves = {n: t.detach().requires_grad_() for n, t in params.items()}
        grads = layout.views(grad)
        rows = [(flat[i], grad[i], m[i], v[i], steps[i : i + 1].view(())) for i in range(len(alive))]
        return leaves, [grads[n] for n in leaves], rows

    leaves, grad_views, fold_rows = rebind()
    for epoch in range(1, (train_cfg.epochs if va is not None else max(epochs)) + 1):
        counts = tr.counts
        n_steps = -(-max(counts) // bs)
        order = torch.zeros(len(alive), n_steps * bs, dtype=torch.long)
        for j, (f, n) in enumerate(zip(alive, counts)):
            order[j, :n] = torch.randperm(n, generator=batch_gen[f])
        order = order.to(device)
        valid = (torch.arange(n_steps * bs, device=device)[None] < tr.n[:, None]).float()  # (K, n_steps*bs)
        loss_sum = torch.zeros(len(alive), device=device)
        correct = torch.zeros(len(alive), device=device)
        own_steps = [-(-n // bs) for n in counts]
        drop_masks = None
        for s in range(n_steps):
            if p_drop and s % chunk == 0:
                drop_masks = _draw_dropout(
                    drop_shapes, [dropout_gen[f] for f in alive], own_steps, s, chunk, p_drop, device
                )
            rows, weight = order[:, s * bs : (s + 1) * bs], valid[:, s * bs : (s + 1) * bs]  # (K, bs)
            x, mask, y = tr.batch(rows)
            drop = None if not p_drop else [d[:, s % chunk] for d in drop_masks]
            logits = forward(leaves, x, mask, drop)  # (K, bs, C)
            per_row = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # (K, bs)
            w = class_w.gather(1, y) * weight
            fold_loss = (per_row * w).sum(1) / w.sum(1).clamp_min(1e-12)  # (K,) each fold's weighted mean
            grads = torch.autograd.grad(fold_loss.sum(), list(leaves.values()))
            for view, g in zip(grad_views, grads):
                view.copy_(g)
            active = [j for j, n in enumerate(counts) if n > s * bs]  # folds with rows left in this epoch
            _adam(fold_rows, active, grad, train_cfg)
            with torch.no_grad():
                loss_sum += fold_loss.detach() * weight.sum(1)
                correct += ((logits.argmax(2) == y).float() * weight).sum(1)
        train_scores = torch.stack([loss_sum / tr.n, correct / tr.n], dim=1)  # (K, 2)
        if va is not None:
            train_scores = torch.cat([train_scores, _validate(forward, leaves, va, class_w, n_classes)], dim=1)
        table = train_scores.tolist()
        improved, stopped = [], []
        for j, f in enumerate(alive):
            keys = HISTORY_KEYS if va is not None else HISTORY_KEYS[:2]
            row = {"epoch": epoch, **dict(zip(keys, table[j], strict=True))}
            histories[f].append(row)
            if log is not None:
                log(f, epoch_line(row, train_cfg.metric))
            if va is None:  # a refit keeps its last epoch
                if epoch == epochs[f]:
                    improved.append(j)
                    stopped.append(j)
            elif selectors[f].update(epoch, row[f"val_{train_cfg.metric}"], row["val_loss"]):
                improved.append(j)
            elif selectors[f].should_stop(epoch):
                stopped.append(j)
        if improved:
            local = torch.as_tensor(improved, device=device)
            best[torch.as_tensor([alive[j] for j in improved], device=device)] = flat[local]
        if stopped:  # stopped folds leave the batch: compact every per-fold tensor
            keep = [j for j in range(len(alive)) if j not in stopped]
            if not keep:
                break
            ix = torch.as_tensor(keep, device=device)
            flat, grad, m, v, steps, class_w = flat[ix], grad[ix], m[ix], v[ix], steps[ix], class_w[ix]
            tr.keep(keep)
            if va is not None:
                va.keep(keep)
            alive = [alive[j] for j in keep]
            leaves, grad_views, fold_rows = rebind()
    fits = []
    for f, model in enumerate(models):
        model.load_state_dict(layout.state_dict(best[f].cpu(), model))
        model.to(device).eval()
        best_epoch = selectors[f].best_epoch if va is not None else epochs[f]
        fits.append(FoldFit(model=model, best_epoch=best_epoch, epochs_run=len(histories[f]), history=histories[f]))
    return fits


def _draw_dropout(shapes, generators, own_steps, start, chunk, p, device):
    """Keep-masks scaled by 1/(1-p) for steps start..start+chunk, per dropout site (K, chunk, ...). Each fold's
    come from its own generator, drawn for its own steps only (steps past its rows keep everything), so what a
    fold draws never depends on the folds that share its batch or on when they stop."""
    out = []
    for shape in shapes:
        per_fold = []
        for generator, own in zip(generators, own_steps):
            keep = torch.ones((chunk, *shape), device=device)
            n = min(chunk, own - start)
            if n > 0:
                keep[:n] = torch.rand((n, *shape), generator=generator, device=device) >= p
            per_fold.append(keep)
        out.append(torch.stack(per_fold) / (1 - p))
    return out


@torch.no_grad()
def _adam(fold_rows, active, grad, cfg: TrainConfig) -> None:
    """torch.optim.Adam (L2 weight decay, optional per-fold gradient clipping) on the active folds' rows."""
    if cfg.grad_clip:  # clip_grad_norm_ per fold: one norm over all of its parameters
        norms = grad.norm(dim=1, keepdim=True)
        grad.mul_((cfg.grad_clip / (norms + 1e-6)).clamp(max=1.0))
    rows = [fold_rows[j] for j in active]
    params, grads, m, v, steps = (list(t) for t in zip(*rows))
    adam(
        params,
        grads,
        m,
        v,
        [],
        steps,
        fused=True,
        lr=cfg.lr,
        beta1=BETAS[0],
        beta2=BETAS[1],
        weight_decay=cfg.weight_decay,
        eps=EPS,
        amsgrad=False,
        maximize=False,
    )  # increments each fold's step


@torch.no_grad()
def _validate(forward, leaves, va: _Stack, class_w, n_classes) -> torch.Tensor:
    """(K, 4): validation loss (class-weighted mean), accuracy, balanced accuracy, macro-F1 per fold. The CNN
    runs once per distinct window, not once per sample and context position."""
    K, n_max = va.y.shape
    device = va.y.device
    loss_sum = torch.zeros(K, device=device)
    weight_sum = torch.zeros(K, device=device)
    confusion = torch.zeros(K, n_classes, n_classes, device=device)
    all_rows = torch.arange(n_max, device=device).expand(K, n_max)
    for start in range(0, n_max, EVAL_CHUNK):
        rows = all_rows[:, start : start + EVAL_CHUNK]
        windows, where = va.distinct_windows(start, start + EVAL_CHUNK)
        h = forward.windows(leaves, windows)[va.fold[:, :, None], where]  # (K, b, T, L, C)
        mask = None if va.mask is None else va.mask[va.fold, rows]
        y = va.y[va.fold, rows]
        real = (rows < va.n[:, None]).float()
        logits = forward.sequence(leaves, h, mask, None)
        w = class_w.gather(1, y) * real
        loss_sum += (F.cross_entropy(logits.transpose(1, 2), y, reduction="none") * w).sum(1)
        weight_sum += w.sum(1)
        confusion += confusion_tensor(logits.argmax(2), y, n_classes, real)
    metrics = metrics_from_confusion(confusion)
    return torch.stack(
        [loss_sum / weight_sum, metrics["accuracy"], metrics["balanced_accuracy"], metrics["macro_f1"]], dim=1
    )
