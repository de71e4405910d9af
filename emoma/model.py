"""The CNN-LSTM: Conv1d blocks (optional CBAM) encode each window's feature vector, an LSTM runs over the
sample's windows in time order, attention pools over its outputs, a dense head gives logits.

A sample is k context windows (the current one and the k-1 before it, `emoma.context`). What the LSTM steps
over (`lstm_over`): `positions`, every CNN position of every window, time-major (with k = 1 the single-window
model of EmoMA-Net: the LSTM runs over one window's CNN positions); `windows`, one step per window, its CNN
output (positions x channels) flattened into one vector.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from emoma.config import ModelConfig


class ChannelAttention(nn.Module):
    """CBAM channel attention (Woo et al. 2018): a shared MLP over average- and max-pooled positions."""

    def __init__(self, channels: int, *, reduction: int):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, x):  # x: (B, C, L)
        """(B, C, L) -> (B, C, L): each channel scaled by its attention weight."""
        weights = torch.sigmoid(self.mlp(x.mean(dim=2)) + self.mlp(x.amax(dim=2)))  # (B, C)
        return x * weights.unsqueeze(2)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: a conv over the channel-wise average and max at each position."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv1d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x):  # x: (B, C, L)
        """(B, C, L) -> (B, C, L): each position scaled by its attention weight."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # (B, 2, L)
        return x * torch.sigmoid(self.conv(pooled))  # (B, 1, L) broadcast over channels


class ConvBlock(nn.Module):
    """Conv1d and ReLU, CBAM attention when asked, then pooling that halves the length (ceil)."""

    def __init__(self, c_in: int, c_out: int, *, kernel_size: int, pool: str, cbam: bool, cbam_reduction: int):
        super().__init__()
        layers = [nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2), nn.ReLU()]
        if cbam:
            layers += [ChannelAttention(c_out, reduction=cbam_reduction), SpatialAttention()]
        if pool != "none":
            # ceil_mode keeps a length-1 input at length 1, so any number of features works
            layers.append((nn.MaxPool1d if pool == "max" else nn.AvgPool1d)(2, ceil_mode=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):  # (B, c_in, L) -> (B, c_out, ceil(L / 2) or L)
        """(B, c_in, L) -> (B, c_out, ceil(L / 2)), or (B, c_out, L) without pooling."""
        return self.layers(x)


class AttentionPool(nn.Module):
    """Softmax-weighted sum over the sequence, one learned score per position; masked positions get none."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, h, mask=None):  # h: (B, L, D), mask: (B, L) bool or None
        """h (B, L, D) and mask (B, L) bool or None -> (B, D): the attention-weighted sum over positions."""
        scores = self.score(h)  # (B, L, 1)
        if mask is not None:
            scores = scores.masked_fill(~mask.unsqueeze(2), float("-inf"))
        weights = torch.softmax(scores, dim=1)  # (B, L, 1)
        return (weights * h).sum(dim=1)  # (B, D)


class CNNLSTM(nn.Module):
    """The EmoMA-Net CNN-LSTM: Conv1d/CBAM blocks over each window's features, an LSTM over positions or context
    windows, attention pooling, a dense head (`ModelConfig` documents each setting)."""

    def __init__(
        self,
        n_inputs: int,
        n_classes: int,
        *,
        conv_channels=(16, 32),
        kernel_size=3,
        pool="max",
        cbam=True,
        cbam_reduction=4,
        lstm_hidden=50,
        lstm_layers=1,
        bidirectional=False,
        attention=True,
        fc=128,
        dropout=0.5,
        lstm_over="positions",
    ):
        super().__init__()
        channels = [1, *conv_channels]
        self.cnn = nn.Sequential(
            *[
                ConvBlock(c_in, c_out, kernel_size=kernel_size, pool=pool, cbam=cbam, cbam_reduction=cbam_reduction)
                for c_in, c_out in zip(channels[:-1], channels[1:])
            ]
        )
        self.lstm_over = lstm_over
        positions = cnn_positions(n_inputs, len(conv_channels), pool)
        self.steps_per_window = 1 if lstm_over == "windows" else positions
        step = channels[-1] * (positions if lstm_over == "windows" else 1)
        self.lstm = nn.LSTM(
            step,
            lstm_hidden,
            num_layers=lstm_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if lstm_layers > 1 else 0.0,
        )
        out_dim = lstm_hidden * (2 if bidirectional else 1)
        self.pool = AttentionPool(out_dim) if attention else None
        head = [nn.Dropout(dropout)]
        if fc:
            head += [nn.Linear(out_dim, fc), nn.ReLU(), nn.Dropout(dropout)]
        head.append(nn.Linear(fc or out_dim, n_classes))
        self.head = nn.Sequential(*head)
        self.n_inputs = n_inputs

    def forward(self, x, mask=None):
        """Logits (B, n_classes) of x: (B, F) one window, or (B, T, F) T context windows, oldest first.

        mask: (B, T) bool, False for padded windows (they must come first: a run starts inside the context);
        None = every window is real.
        """
        if x.dim() == 2:
            x = x.unsqueeze(1)  # (B, 1, F)
        B, T, F = x.shape
        h = self.cnn(x.reshape(B * T, 1, F))  # (B*T, C, L): each window's features as a 1-channel sequence
        L = h.shape[2]
        h = h.reshape(B, T, -1, L).transpose(2, 3)  # (B, T, L, C)
        if self.lstm_over == "windows":
            h, L = h.reshape(B, T, -1), 1  # (B, T, L*C): one step per window
        else:
            h = h.reshape(B, T * L, -1)  # (B, T*L, C), time-major
        if mask is None:
            h, _ = self.lstm(h)  # (B, steps, D)
            last = h[:, -1]
        else:
            h, last, mask = self._masked_lstm(h, mask.repeat_interleave(L, dim=1))
        h = self.pool(h, mask) if self.pool is not None else last  # (B, D)
        return self.head(h)  # (B, n_classes) logits

    def _masked_lstm(self, h, mask):
        """nn.LSTM over the real positions only (packed): left padding moved to the right first.

        Returns outputs (B, S, D) with real positions first, the last real output (B, D) and their mask.
        """
        B, S, _ = h.shape
        lengths = mask.sum(1)  # (B,)
        source = (torch.arange(S, device=h.device)[None] + (S - lengths)[:, None]).clamp(max=S - 1)  # (B, S)
        h = h.gather(1, source.unsqueeze(2).expand_as(h))  # real positions first
        packed = nn.utils.rnn.pack_padded_sequence(h, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = nn.utils.rnn.pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=S)
        last = out[torch.arange(B, device=h.device), lengths - 1]  # (B, D)
        return out, last, torch.arange(S, device=h.device)[None] < lengths[:, None]


def cnn_positions(n_inputs: int, n_blocks: int, pool: str) -> int:
    """CNN output positions of one window of n_inputs features (each pooling halves them, ceil)."""
    return n_inputs if pool == "none" else math.ceil(n_inputs / 2**n_blocks)


class Ensemble(nn.Module):
    """CNN-LSTMs of one fold trained from different seeds. Its output is the log of the members' mean class
    probabilities, so its softmax is their average and it predicts like any single model."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x, mask=None):
        """(B, F) or (B, T, F), mask (B, T) or None -> (B, n_classes): the log of the members' mean class
        probabilities."""
        log_p = torch.stack([m(x, mask).log_softmax(dim=-1) for m in self.members])
        return torch.logsumexp(log_p, dim=0) - math.log(len(self.members))  # finite where a softmax underflows


def build_predictor(cfg: ModelConfig, n_inputs: int, n_classes: int) -> nn.Module:
    """The trained model's shape, to load saved weights into: one CNN-LSTM, or an Ensemble of `cfg.ensemble`."""
    if cfg.ensemble == 1:
        return build_model(cfg, n_inputs, n_classes)
    return Ensemble([build_model(cfg, n_inputs, n_classes) for _ in range(cfg.ensemble)])


def build_model(cfg: ModelConfig, n_inputs: int, n_classes: int) -> CNNLSTM:
    """A fresh CNN-LSTM of `cfg`'s shape for `n_inputs` features and `n_classes` classes."""
    return CNNLSTM(
        n_inputs,
        n_classes,
        conv_channels=tuple(cfg.conv_channels),
        kernel_size=cfg.kernel_size,
        pool=cfg.pool,
        cbam=cfg.cbam,
        cbam_reduction=cfg.cbam_reduction,
        lstm_hidden=cfg.lstm_hidden,
        lstm_layers=cfg.lstm_layers,
        bidirectional=cfg.bidirectional,
        attention=cfg.attention,
        fc=cfg.fc,
        dropout=cfg.dropout,
        lstm_over=cfg.lstm_over,
    )


def prediction_cost(cfg: ModelConfig, n_inputs: int, n_classes: int) -> int:
    """Weights times windows read per prediction: how the one-standard-error rule ranks models from cheap to
    costly (every weight is used once per context window)."""
    return sum(p.numel() for p in build_model(cfg, n_inputs, n_classes).parameters()) * cfg.context
