"""Scores: the metrics of one set of predictions, per-subject scores, and the statistics a paper needs
(bootstrap confidence intervals over subjects, paired Wilcoxon signed-rank tests, ROC and PR AUC).

The validation metrics used for early stopping are computed on tensors from a confusion matrix, so the
sequential and the fold-batched trainers pick best epochs by the same rule (`EpochSelector`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    recall_score,
    roc_auc_score,
)

from emoma.config import METRICS

BOOTSTRAP_RESAMPLES = 10_000
CONFIDENCE = 0.95
MIN_TEST_SUBJECTS = 6  # the fewest subjects with which a two-sided Wilcoxon signed-rank test can reach p < 0.05
MIN_HOLDOUT_SUBJECTS = 8  # a search's hold-out below this gets scores only: over so few subjects a BCa interval is
# unstable and a Wilcoxon test barely reaches p < 0.05 (nested CV gives intervals instead)


def score(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[dict[str, float], np.ndarray]:
    """(metrics, confusion matrix (n_classes, n_classes)) of predictions against the truth."""
    labels = list(range(n_classes))
    metrics = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }
    return metrics, confusion_matrix(y_true, y_pred, labels=labels)


def per_class(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict[str, dict[str, float]]:
    """{class: {"f1", "recall"}} over the given predictions."""
    labels = list(range(len(class_names)))
    f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {name: {"f1": float(f), "recall": float(r)} for name, f, r in zip(class_names, f1, recall)}


def auc_scores(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Binary: ROC-AUC and PR-AUC (average precision) of the positive class; more classes: one-vs-rest macro
    ROC-AUC. NaN where the truth has a single class."""
    if len(np.unique(y_true)) < 2:
        return {"roc_auc": math.nan, "pr_auc": math.nan} if proba.shape[1] == 2 else {"roc_auc": math.nan}
    if proba.shape[1] == 2:
        return {
            "roc_auc": float(roc_auc_score(y_true, proba[:, 1])),
            "pr_auc": float(average_precision_score(y_true, proba[:, 1])),
        }
    present = np.unique(y_true)
    if len(present) < proba.shape[1]:
        return {"roc_auc": math.nan}
    return {"roc_auc": float(roc_auc_score(y_true, proba, multi_class="ovr", average="macro"))}


def subject_auc(groups: np.ndarray, y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Binary: the mean over subjects of each subject's own ROC-AUC (subjects with both classes), which,
    unlike the pooled AUC, does not mix the calibrations of different fold models."""
    if proba.shape[1] != 2:
        return {}
    aucs = [
        roc_auc_score(y_true[groups == s], proba[groups == s, 1])
        for s in np.unique(groups)
        if len(np.unique(y_true[groups == s])) == 2
    ]
    return {"roc_auc_subject_mean": float(np.mean(aucs)) if aucs else math.nan}


def per_subject(groups: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict:
    """{subject: metrics} over each subject's windows. Macro-F1 averages the classes present in that subject's
    truth or predictions (a class the subject never shows is not counted as a failure)."""
    out = {}
    for subject in np.unique(groups):
        rows = groups == subject
        metrics = score(y_true[rows], y_pred[rows], n_classes)[0]
        metrics["macro_f1"] = float(f1_score(y_true[rows], y_pred[rows], average="macro", zero_division=0))
        out[_key(subject)] = metrics
    return out


def bootstrap_ci(values, seed: int = 0) -> dict[str, float]:
    """Mean of `values` (one per subject) and its BCa bootstrap 95 % CI over subjects (scipy.stats.bootstrap)."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean()) if len(values) else math.nan
    if len(values) < 3:  # too few subjects for a bootstrap: no interval
        return {"mean": mean, "ci_low": math.nan, "ci_high": math.nan, "n": int(len(values))}
    if np.all(values == values[0]):
        return {"mean": mean, "ci_low": mean, "ci_high": mean, "n": int(len(values))}
    result = stats.bootstrap(
        (values,),
        np.mean,
        confidence_level=CONFIDENCE,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="BCa",
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):  # BCa undefined (e.g. a degenerate jackknife)
        result = stats.bootstrap(
            (values,),
            np.mean,
            confidence_level=CONFIDENCE,
            n_resamples=BOOTSTRAP_RESAMPLES,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        low, high = result.confidence_interval
    return {"mean": mean, "ci_low": float(low), "ci_high": float(high), "n": int(len(values))}


def paired_wilcoxon(a, b) -> dict[str, float]:
    """Two-sided Wilcoxon signed-rank test of paired per-subject scores a vs b (scipy; zero differences
    dropped). Returns the median difference a - b, the statistic, the p-value and the pairs used."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = a - b
    nonzero = int(np.count_nonzero(diff))
    out = {
        "median_diff": float(np.median(diff)) if len(diff) else math.nan,
        "n": int(len(diff)),
        "n_nonzero": nonzero,
        "statistic": math.nan,
        "p_value": math.nan,
    }
    if nonzero >= 1:
        test = stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
        out.update(statistic=float(test.statistic), p_value=float(test.pvalue))
    return out


def paired_difference(a, b, seed: int = 0) -> dict[str, float]:
    """The effect first: mean of the paired per-subject differences a - b with its BCa 95 % CI
    (`mean_diff`, `diff_ci_low`, `diff_ci_high`), then `paired_wilcoxon`'s test."""
    ci = bootstrap_ci(np.subtract(a, b), seed)
    return {
        "mean_diff": ci["mean"],
        "diff_ci_low": ci["ci_low"],
        "diff_ci_high": ci["ci_high"],
        **paired_wilcoxon(a, b),
    }


def compare_paired(reference: dict, others: dict[str, dict], seed: int = 0) -> dict[str, dict[str, dict]]:
    """{name: {metric: paired_difference(reference, other) + p_holm}}: per-subject scores ({subject: {metric:
    value}}) of a reference model against each other model, p-values Holm-corrected over the others per metric."""
    subjects = list(reference)
    against = {
        name: {
            m: paired_difference([reference[s][m] for s in subjects], [scores[s][m] for s in subjects], seed)
            for m in METRICS
        }
        for name, scores in others.items()
    }
    for m in METRICS:
        for name, p_holm in zip(against, holm([against[n][m]["p_value"] for n in against])):
            against[name][m]["p_holm"] = p_holm
    return against


def holm(p_values) -> list[float]:
    """Holm's step-down adjustment of p-values for several comparisons (NaN stays NaN, not counted)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(len(p), math.nan)
    valid = np.flatnonzero(np.isfinite(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        out[i] = running
    return out.tolist()


def _key(subject) -> str:
    return str(subject.item() if hasattr(subject, "item") else subject)


# ---------------------------------------------------------------- validation metrics on tensors


def confusion_tensor(
    pred: torch.Tensor, y: torch.Tensor, n_classes: int, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """(..., C, C) confusion counts of predictions (..., n) against the truth (..., n); rows true.

    `weight` (..., n) counts each row (0 for padding rows of a batched fold)."""
    cells = y * n_classes + pred  # (..., n)
    ones = torch.ones_like(cells, dtype=torch.float32) if weight is None else weight.float()
    counts = torch.zeros(*cells.shape[:-1], n_classes * n_classes, device=cells.device)
    return counts.scatter_add_(-1, cells, ones).unflatten(-1, (n_classes, n_classes))


def metrics_from_confusion(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """accuracy, balanced_accuracy and macro_f1 (as `score`) of (..., C, C) confusion counts, each (...)."""
    tp = confusion.diagonal(dim1=-2, dim2=-1)  # (..., C)
    true = confusion.sum(-1)
    pred = confusion.sum(-2)
    total = true.sum(-1)
    present = true > 0
    recall = tp / true.clamp_min(1)
    f1 = 2 * tp / (true + pred).clamp_min(1)
    return {
        "accuracy": tp.sum(-1) / total.clamp_min(1),
        "balanced_accuracy": (recall * present).sum(-1) / present.sum(-1).clamp_min(1),
        "macro_f1": f1.mean(-1),
    }


ONE_CLASS_SHARE = 0.95  # a model that predicts one class for this share of windows or more has collapsed


def degenerate_notes(
    confusions: list[np.ndarray],
    class_names: list[str],
    metric: str,
    what: str = "the CNN-LSTM",
    baselines: dict[str, float] | None = None,
) -> list[str]:
    """One line per sign that a model learned little: it predicts one class for (nearly) every window of a test
    fold; it scores no better than always predicting each test fold's most frequent class (the best any constant
    prediction could score there, so a strict reference); it scores below a same-input baseline (by any margin:
    the report's corrected paired test says whether that is more than noise).

    Parameters
    ----------
    confusions : one (C, C) count matrix per test fold (rows true, columns predicted); one for a hold-out.
    metric : the metric compared (accuracy, balanced_accuracy or macro_f1), as a mean over the folds.
    baselines : {name: mean `metric` over the same folds} of the same-input baselines.
    """
    folds = torch.as_tensor(np.asarray(confusions, dtype=np.float64))  # (n, C, C)
    predicted, true = folds.sum(1), folds.sum(2)  # (n, C)
    total = true.sum(1, keepdim=True)
    top = predicted.argmax(1, keepdim=True)
    collapsed = (predicted.gather(1, top) >= ONE_CLASS_SHARE * total) & (true.gather(1, top) < ONE_CLASS_SHARE * total)
    always = torch.zeros_like(folds)  # each fold's majority class predicted for every window
    always.scatter_(2, true.argmax(1)[:, None, None].expand(-1, folds.shape[1], 1), true[:, :, None])
    model = float(metrics_from_confusion(folds)[metric].mean())
    chance = float(metrics_from_confusion(always)[metric].mean())
    balanced = float(metrics_from_confusion(folds)["balanced_accuracy"].mean())
    notes = []
    if collapsed.any():
        n, k = len(folds), int(collapsed.sum())
        where = (
            f"for {float(predicted.max() / total.sum()):.0%} of the windows"
            if n == 1
            else f"for {ONE_CLASS_SHARE:.0%} or more of the windows in {k} of {n} test folds"
        )
        one = f"{class_names[int(top[collapsed.squeeze(1)][0])]!r}" if n == 1 else "a single class"
        notes.append(
            f"{what} predicts {one} {where} (balanced accuracy {balanced:.3f}): it learned little beyond "
            "the class frequencies; give it more epochs or a higher train.lr, or set train.class_weights: true"
        )
    elif model <= chance + 1e-9:
        reference = "each test fold's" if len(folds) > 1 else "the scored windows'"
        notes.append(
            f"{what} scores no better than always predicting {reference} most frequent class "
            f"({metric} {model:.3f} against {chance:.3f})"
        )
    if baselines:
        name = max(baselines, key=baselines.get)
        if baselines[name] > model + 1e-9:
            notes.append(
                f"{what} scores below {name}, a baseline on the same inputs ({metric} {model:.3f} against "
                f"{baselines[name]:.3f}); the paired test over subjects in the report says whether the gap "
                "is more than noise"
            )
    return notes


class EpochSelector:
    """The best epoch of one fold by its validation metric (ties: lower validation loss), and early stopping
    after `patience` epochs without a new best (0 = never stop). Shared by every trainer."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best = (-math.inf, math.inf)  # (metric, loss)
        self.best_epoch = 0

    def update(self, epoch: int, metric: float, loss: float) -> bool:
        """Record an epoch; True when it is the new best (its weights should be kept)."""
        if (metric, -loss) > (self.best[0], -self.best[1]):
            self.best, self.best_epoch = (metric, loss), epoch
            return True
        return False

    def should_stop(self, epoch: int) -> bool:
        """True once `patience` epochs have passed without a new best (never when patience is 0)."""
        return bool(self.patience) and epoch - self.best_epoch >= self.patience


def evaluate(
    groups: np.ndarray,
    y_true: np.ndarray,
    probas: dict[str, np.ndarray],
    class_names: list[str],
    reference: str = "CNN-LSTM",
    seed: int = 0,
    min_subjects: int = MIN_TEST_SUBJECTS,
) -> dict:
    """Everything a paper reports of one set of test predictions per model, and paired tests over subjects.

    Parameters
    ----------
    groups, y_true : (n,) subject and true class of each test window.
    probas : {model: (n, n_classes) probabilities}, the same windows in the same order.
    reference : the model compared (paired Wilcoxon over subjects) against every other one.

    Returns
    -------
    {"models": {name: {"pooled", "confusion_matrix", "per_class", "auc", "subjects", "ci"}},
     "wilcoxon": {"reference": reference, "against": {name: {metric: test}}}, "tests": bool, "min_subjects": int}

    With fewer than `min_subjects` subjects there are scores only: no intervals (NaN) and no tests. The
    tests' p-values are Holm-corrected over the models compared (`p_holm`).
    """
    n_classes = len(class_names)
    tests = len(np.unique(groups)) >= min_subjects
    models = {}
    for name, proba in probas.items():
        pred = proba.argmax(1)
        pooled, confusion = score(y_true, pred, n_classes)
        subjects = per_subject(groups, y_true, pred, n_classes)
        models[name] = {
            "pooled": pooled,
            "confusion_matrix": confusion.tolist(),
            "per_class": per_class(y_true, pred, class_names),
            "auc": {**subject_auc(groups, y_true, proba), **auc_scores(y_true, proba)},
            "subjects": subjects,
            "ci": {
                m: bootstrap_ci([s[m] for s in subjects.values()], seed)
                if tests
                else {
                    "mean": float(np.mean([s[m] for s in subjects.values()])),
                    "ci_low": math.nan,
                    "ci_high": math.nan,
                    "n": len(subjects),
                }
                for m in METRICS
            },
        }
    others = {name: model["subjects"] for name, model in models.items() if name != reference}
    against = compare_paired(models[reference]["subjects"], others, seed) if reference in models and tests else {}
    return {
        "models": models,
        "wilcoxon": {"reference": reference, "against": against},
        "tests": tests,
        "min_subjects": min_subjects,
    }
