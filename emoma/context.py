"""Time and the person: each window's predecessors (context) and subject normalisation, both table-level.

A Table's rows are sorted by subject, then time (`emoma.data`), so "the window before" is the previous row of
the same subject unless a time gap cuts the run. Nothing here reads labels, and nothing reads another
subject's rows.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from emoma.config import DataConfig
from emoma.data import Table
from emoma.errors import UserError

TINY = 1e-12  # a feature whose spread within a subject is below this (relative) is constant there: z = 0
MAX_GAP_WINDOWS = 2.0  # context never spans a time gap longer than this many window lengths
ROW_ORDER_NOTE = (
    "the table has no time_s column, so each subject's row order is taken as its time order: context windows "
    "and causal normalisation follow it, and no time gap can cut a run. Tables sorted by condition (the published "
    "WESAD merged.csv lists baseline, stress, amusement for every subject, though half of them did amusement "
    "first) then put context across condition boundaries in a label-determined order; prefer a table made by "
    "emoma.prepare, which writes time_s"
)


def window_length(table: Table, window_s: float | None = None) -> float | None:
    """The window length for the gap rule: `window_s`, else the median step between consecutive windows of
    the same subject over the whole table (None without a time column)."""
    if window_s is not None or table.time_s is None:
        return window_s
    steps = np.diff(table.time_s)[table.groups[1:] == table.groups[:-1]]
    return float(np.median(steps)) if len(steps) else 1.0


def run_starts(table: Table, window_s: float | None = None) -> np.ndarray:
    """(n_windows,) bool: True where a window has no usable predecessor (a subject's first window, or the
    first after a time gap longer than MAX_GAP_WINDOWS window lengths, `window_length(table, window_s)`)."""
    new_subject = np.r_[True, table.groups[1:] != table.groups[:-1]]
    if table.time_s is None:
        return new_subject
    step = np.r_[np.inf, np.diff(table.time_s)]
    return new_subject | (step > MAX_GAP_WINDOWS * window_length(table, window_s))


def order_notes(table: Table, k: int, norm: str) -> list[str]:
    """What a reader must know when time order rests on row order."""
    return [ROW_ORDER_NOTE] if table.time_s is None and (k > 1 or norm == "causal") else []


def context_index(starts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each window's k-window context: rows of the k-1 windows before it and itself, oldest first.

    Parameters
    ----------
    starts : (n_windows,) bool, True where a run of consecutive windows starts (`run_starts`).
    k : windows per sample.

    Returns
    -------
    index : (n_windows, k) int64 table rows; column k-1 is the window itself. Before a run's start there
        is no window: those slots repeat the run's first window (so a flattened context has the shape of a
        full one).
    mask : (n_windows, k) bool, False in those padded slots; the CNN-LSTM skips them.
    """
    n = len(starts)
    run_first = np.maximum.accumulate(np.where(starts, np.arange(n), 0))  # (n,) first row of each row's run
    lag = np.arange(k - 1, -1, -1)  # (k,) how far back each column looks
    wanted = np.arange(n)[:, None] - lag[None, :]  # (n, k)
    mask = wanted >= run_first[:, None]
    return np.where(mask, wanted, run_first[:, None]).astype(np.int64), mask


def smooth_probabilities(proba: np.ndarray, rows: np.ndarray, starts: np.ndarray, k: int) -> np.ndarray:
    """Each window's class probabilities averaged with those of the k-1 windows before it (causal).

    Parameters
    ----------
    proba : (n, n_classes) probabilities of the table rows `rows`.
    rows : (n,) table rows whose probabilities are known; only these are averaged (a test fold's windows:
        a training window's prediction would carry the label the model learnt).
    starts : (n_windows,) bool run starts of the whole table (`run_starts`): never across a subject or a
        time gap.
    k : windows averaged; 1 returns `proba` unchanged.

    Returns
    -------
    (n, n_classes) the mean over each window and its predecessors in `rows`, in the same run, at most k.
    """
    if k <= 1:
        return proba
    index, mask = context_index(starts, k)
    position = np.full(len(starts), -1)
    position[rows] = np.arange(len(rows))
    known = position[index[rows]]  # (n, k) position in `proba` of each slot's window, -1 where unknown
    use = mask[rows] & (known >= 0)  # the window itself is always used
    total = (proba[known] * use[..., None]).sum(axis=1)
    return total / use.sum(axis=1, keepdims=True)


def check_context(table: Table, k: int) -> None:
    """A context longer than a subject's recording cannot be filled: say so before anything runs."""
    if k <= 1:
        return
    subjects, counts = np.unique(table.groups, return_counts=True)
    shortest = int(np.argmin(counts))
    if counts[shortest] < k:
        raise UserError(
            f"model.context={k} is longer than subject {subjects[shortest]}'s {counts[shortest]} "
            f"windows: lower model.context to at most {counts[shortest]}"
        )


def normalise_subjects(table: Table, cfg: DataConfig) -> Table:
    """Standardise each subject's features by that subject's own windows (`cfg.subject_norm`).

    - ``subject``: mean and std of all the subject's windows (label-free, but transductive: a test subject's
      own unlabelled windows are read);
    - ``causal``: running mean and std of the subject's windows up to and including the current one, in time
      order; while they rest on n < ``cfg.norm_warmup`` windows the z-scores are shrunk by n / norm_warmup
      (the first window of a subject is 0), so a live stream can be normalised as it arrives;
    - ``none``: the table unchanged.

    The statistics are those of the subject's windows in the table (after data.drop_labels and drop_nan).
    """
    if cfg.subject_norm == "none":
        return table
    X = table.X.astype(np.float64)
    out = np.empty_like(X)
    bounds = np.flatnonzero(np.r_[True, table.groups[1:] != table.groups[:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:]):  # rows are sorted by subject: one block each
        block = X[a:b]
        if cfg.subject_norm == "subject":
            mean, std = block.mean(axis=0), block.std(axis=0)
            out[a:b] = np.divide(block - mean, std, out=np.zeros_like(block), where=std > TINY * (1 + np.abs(mean)))
        else:
            out[a:b] = _running_z(block, cfg.norm_warmup)
    return replace(table, X=out.astype(np.float32), normalisation=cfg.subject_norm)


def _running_z(block: np.ndarray, warmup: int) -> np.ndarray:
    """(n, p) z-scores of each row against rows 0..t of `block` (expanding window, ddof 0)."""
    shifted = block - block[0]  # centre on the first window (already seen) to keep the running sums small
    n = np.arange(1, len(block) + 1, dtype=np.float64)[:, None]
    mean = np.cumsum(shifted, axis=0) / n
    var = np.maximum(np.cumsum(shifted**2, axis=0) / n - mean**2, 0.0)
    std = np.sqrt(var)
    z = np.divide(shifted - mean, std, out=np.zeros_like(block), where=std > TINY * (1 + np.abs(mean)))
    return z * np.minimum(n / warmup, 1.0)
