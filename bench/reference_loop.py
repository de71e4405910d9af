"""The original EmoMA-Net training loop, re-implemented for timing comparisons (run by hand, not by tests).

A Dataset that reads one pandas row per item (`df.iloc[i].values`), a DataLoader with batch 25 (evaluation
batch 5), Adam 1e-3, CrossEntropyLoss, the best epoch tracked on validation accuracy. The model is EmoMA's
build of the seed configuration (conv 16/32 with CBAM, LSTM 50, attention, fc 128), so only the loop differs.
"""

from __future__ import annotations

import copy

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from emoma.config import ModelConfig
from emoma.model import build_model


class RowDataset(Dataset):
    """As in the original: one `iloc` row per item, converted with torch.Tensor."""

    def __init__(self, frame: pd.DataFrame):
        self.labels = frame["label"].values
        self.frame = frame.drop(columns="label")

    def __len__(self):
        return len(self.frame)

    def __getitem__(self, idx):
        return torch.Tensor(self.frame.iloc[idx].values), self.labels[idx]


def train_reference(
    train: pd.DataFrame,
    val: pd.DataFrame,
    features: list[str],
    n_classes: int,
    model_cfg: ModelConfig,
    epochs: int,
    seed: int = 0,
) -> tuple[nn.Module, float]:
    """Train as the original script did; returns (best model, best validation accuracy)."""
    torch.manual_seed(seed)
    model = build_model(model_cfg, len(features), n_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    train_loader = DataLoader(RowDataset(train[features + ["label"]]), batch_size=25, shuffle=True)
    val_loader = DataLoader(RowDataset(val[features + ["label"]]), batch_size=5)  # the original's test batch
    best_acc, best_state = -1.0, None
    for _ in range(epochs):
        model.train()
        for x, y in train_loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += (model(x).argmax(1) == y).sum().item()
        acc = correct / len(val)
        if acc > best_acc:
            best_acc, best_state = acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model, best_acc
