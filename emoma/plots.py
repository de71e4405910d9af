"""Figures of the reports: confusion matrices, learning curves, search history, parameter importances.
Each is written to a temporary file and renamed, so a reader never opens half a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from emoma.files import atomic_path  # noqa: E402

if TYPE_CHECKING:
    from emoma.results import CVResult


def save(fig, path: Path, dpi: int) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)


def plot_confusion(confusion: np.ndarray, class_names: list[str], path: Path, title: str = "") -> None:
    """Counts and row-normalised rates in each cell."""
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 1.3 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(
                j,
                i,
                f"{confusion[i, j]}\n{rates[i, j]:.0%}",
                ha="center",
                va="center",
                color="white" if rates[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="row rate")
    fig.tight_layout()
    save(fig, path, dpi=120)


def plot_learning_curves(result: CVResult, path: Path) -> None:
    """Per-fold train and validation loss and accuracy by epoch."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for f in result.folds:
        epochs = [h["epoch"] for h in f.history]
        for ax, key in zip(axes, ("loss", "accuracy")):
            ax.plot(epochs, [h[f"train_{key}"] for h in f.history], color="tab:blue", alpha=0.3, lw=1)
            ax.plot(epochs, [h[f"val_{key}"] for h in f.history], color="tab:orange", alpha=0.3, lw=1)
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.plot([], [], color="tab:blue", label="train")
        ax.plot([], [], color="tab:orange", label="validation (inner split)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_ylabel(key)
        ax.legend()
    fig.suptitle("per-fold learning curves")
    fig.tight_layout()
    save(fig, path, dpi=110)


def plot_search_history(trials: pd.DataFrame, metric: str, path: Path) -> None:
    """Each trial's mean CV score in trial order, and the best so far among trials that ran every fold."""
    fig, ax = plt.subplots(figsize=(7, 4))
    order = np.arange(1, len(trials) + 1)
    done = trials["status"] == "completed"
    ax.scatter(order[done], trials["mean"][done], label="completed", color="tab:blue")
    ax.scatter(order[~done], trials["mean"][~done], label="pruned / errored (partial)", color="tab:gray", marker="x")
    best = trials["mean"].where(done).cummax()
    ax.step(order, best, where="post", color="tab:orange", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"mean CV {metric}")
    ax.legend()
    fig.tight_layout()
    save(fig, path, dpi=110)


def plot_importances(importances: dict[str, float], path: Path) -> None:
    """Optuna's parameter importances as horizontal bars."""
    names, values = list(importances)[::-1], list(importances.values())[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1))
    ax.barh(names, values, color="tab:blue")
    ax.set_xlabel("importance (fANOVA)")
    fig.tight_layout()
    save(fig, path, dpi=110)


def plot_bbc_curve(curve: list[dict], metric: str, rule: str, path: Path) -> None:
    """The naive best CV and the BBC-CV estimate (with its interval) against the number of completed trials."""
    trials = [c["trials"] for c in curve]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(trials, [c["naive_best_cv"] for c in curve], marker="o", color="tab:gray", label="naive best CV")
    ax.plot(
        trials,
        [c["estimate"] for c in curve],
        marker="o",
        color="tab:blue",
        label=f"BBC-CV estimate of the final choice ({rule})",
    )
    ax.fill_between(
        trials,
        [c["ci_low"] for c in curve],
        [c["ci_high"] for c in curve],
        color="tab:blue",
        alpha=0.15,
        label="95 % interval",
    )
    ax.set_xlabel("completed trials")
    ax.set_ylabel(f"{metric} on new subjects")
    ax.legend()
    fig.tight_layout()
    save(fig, path, dpi=110)
