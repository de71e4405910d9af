"""The CNN-LSTM: Conv1d blocks (optional CBAM) over the feature vector, an LSTM over the CNN's positions,
attention pooling over the LSTM outputs, and a dense head producing logits."""
from __future__ import annotations

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
        weights = torch.sigmoid(self.mlp(x.mean(dim=2)) + self.mlp(x.amax(dim=2)))  # (B, C)
        return x * weights.unsqueeze(2)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: a conv over the channel-wise average and max at each position."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv1d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x):  # x: (B, C, L)
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # (B, 2, L)
        return x * torch.sigmoid(self.conv(pooled))  # (B, 1, L) broadcast over channels


class ConvBlock(nn.Module):
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
        return self.layers(x)


class AttentionPool(nn.Module):
    """Softmax-weighted sum over the sequence, one learned score per position."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, h):  # h: (B, L, D)
        weights = torch.softmax(self.score(h), dim=1)  # (B, L, 1)
        return (weights * h).sum(dim=1)  # (B, D)


class CNNLSTM(nn.Module):
    def __init__(self, n_inputs: int, n_classes: int, *, conv_channels=(16, 32), kernel_size=3, pool="max",
                 cbam=True, cbam_reduction=4, lstm_hidden=50, lstm_layers=1, bidirectional=False,
                 attention=True, fc=128, dropout=0.5):
        super().__init__()
        channels = [1, *conv_channels]
        self.cnn = nn.Sequential(*[
            ConvBlock(c_in, c_out, kernel_size=kernel_size, pool=pool, cbam=cbam, cbam_reduction=cbam_reduction)
            for c_in, c_out in zip(channels[:-1], channels[1:])
        ])
        self.lstm = nn.LSTM(channels[-1], lstm_hidden, num_layers=lstm_layers, batch_first=True,
                            bidirectional=bidirectional, dropout=dropout if lstm_layers > 1 else 0.0)
        out_dim = lstm_hidden * (2 if bidirectional else 1)
        self.pool = AttentionPool(out_dim) if attention else None
        head = [nn.Dropout(dropout)]
        if fc:
            head += [nn.Linear(out_dim, fc), nn.ReLU(), nn.Dropout(dropout)]
        head.append(nn.Linear(fc or out_dim, n_classes))
        self.head = nn.Sequential(*head)
        self.n_inputs = n_inputs

    def forward(self, x):  # x: (B, n_inputs) scaled features
        h = self.cnn(x.unsqueeze(1))  # (B, 1, F) -> (B, C, L): the features as a 1-channel sequence
        h, _ = self.lstm(h.transpose(1, 2))  # (B, L, C) -> (B, L, D)
        h = self.pool(h) if self.pool is not None else h[:, -1]  # (B, D)
        return self.head(h)  # (B, n_classes) logits


def build_model(cfg: ModelConfig, n_inputs: int, n_classes: int) -> CNNLSTM:
    return CNNLSTM(n_inputs, n_classes, conv_channels=tuple(cfg.conv_channels), kernel_size=cfg.kernel_size,
                   pool=cfg.pool, cbam=cfg.cbam, cbam_reduction=cfg.cbam_reduction, lstm_hidden=cfg.lstm_hidden,
                   lstm_layers=cfg.lstm_layers, bidirectional=cfg.bidirectional, attention=cfg.attention,
                   fc=cfg.fc, dropout=cfg.dropout)
