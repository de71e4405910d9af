"""What the CV, search and nested reports share: the protocol and training texts, markdown tables, the
evaluation sections, CSV writing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from emoma.config import METRICS, Config
from emoma.files import atomic_path
from emoma.metrics import MIN_TEST_SUBJECTS

if TYPE_CHECKING:
    pass


PROTOCOLS = {
    "loso": "leave-one-subject-out: each fold tests one subject never seen in training",
    "group-kfold": "subject-wise k-fold: each subject's windows are all in one fold",
    "stratified-group-kfold": "subject-wise k-fold, folds balanced by class",
    "kfold": "row-wise shuffled k-fold (the original EmoMA-Net protocol)",
}


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


BASELINE_TEXT = {
    "tuned": "tuned on each fold's training rows only: LDA's shrinkage (none or Ledoit-Wolf), logistic regression's C "
    "and the random forest's depth chosen from small grids by inner subject-wise 3-fold CV "
    "(`cv.baselines: tuned`)",
    "default": "scikit-learn defaults, untuned (`cv.baselines: default`)",
}


REFIT = (
    "; then each model trained again from its seed on the training and validation rows for its best epoch "
    "count (refit), the baselines fitted on the same rows"
)


def trial_fidelity(result, config: Config) -> str:
    """How trials trained, against the models retrained at the end."""
    if result.fidelity == "low":
        return (
            "; trials at low fidelity: one model per fold, no refit (`search.fidelity: low`); the final model and "
            "the base and seed configurations are retrained at their own settings"
        )
    if "train.refit" in result.space:
        return "; whether each model is refit on training + validation rows is searched (train.refit)"
    if not config.train.refit:
        return ""
    seed = "" if result.seed_config.train.refit else " (not the seed trial: it trains as the seed configuration)"
    return (
        "; each sampled trial's models refit on their fold's training + validation rows for their best epoch "
        f"count{seed}"
    )


def evaluation_sections(
    evaluation: dict, class_names: list[str], heading: str = "##", scores_only_hint: str = ""
) -> list[str]:
    """Markdown of `emoma.metrics.evaluate`: over subjects with CIs, paired tests, AUCs, per class, per subject."""
    models = evaluation["models"]
    n = next(iter(models.values()))["ci"]["accuracy"]["n"]
    auc_keys = list(next(iter(models.values()))["auc"])
    head = "| model | " + " | ".join(f"{m} (95 % CI)" for m in METRICS) + " | " + " | ".join(auc_keys) + " |"
    rows = [head, "|---|" + "---|" * (len(METRICS) + len(auc_keys))]
    for name, model in models.items():
        cis = [
            f"{c['mean']:.3f}" + ("" if math.isnan(c["ci_low"]) else f" ({c['ci_low']:.3f}-{c['ci_high']:.3f})")
            for c in (model["ci"][m] for m in METRICS)
        ]
        rows.append(
            f"| {name} | " + " | ".join(cis) + " | " + " | ".join(f"{model['auc'][k]:.3f}" for k in auc_keys) + " |"
        )
    reference = evaluation["wilcoxon"]["reference"]
    tests = [
        "| against | metric | mean difference (95 % CI) | median difference | W | p | p (Holm) | subjects "
        "(non-zero differences) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, by_metric in evaluation["wilcoxon"]["against"].items():
        for m, t in by_metric.items():
            effect = f"{t['mean_diff']:+.3f} ({t['diff_ci_low']:+.3f} to {t['diff_ci_high']:+.3f})"
            if not t["n_nonzero"]:  # the same score on every subject (e.g. the final model is that model)
                tests.append(
                    f"| {name} | {m} | {effect} | {t['median_diff']:+.3f} | - | - (equal on every "
                    f"subject) | - | {t['n']} (0) |"
                )
                continue
            tests.append(
                f"| {name} | {m} | {effect} | {t['median_diff']:+.3f} | {t['statistic']:.1f} | "
                f"{p_text(t['p_value'])} | {p_text(t['p_holm'])}{' *' if t['p_holm'] < 0.05 else ''} | "
                f"{t['n']} ({t['n_nonzero']}) |"
            )
    per_class_rows = [
        "| model | " + " | ".join(f"{c} F1 / recall" for c in class_names) + " |",
        "|---|" + "---|" * len(class_names),
    ]
    for name, model in models.items():
        per_class_rows.append(
            f"| {name} | "
            + " | ".join(
                f"{model['per_class'][c]['f1']:.3f} / {model['per_class'][c]['recall']:.3f}" for c in class_names
            )
            + " |"
        )
    subjects = list(next(iter(models.values()))["subjects"])
    per_subject_rows = [
        "| subject | " + " | ".join(f"{name} acc / F1" for name in models) + " |",
        "|---|" + "---|" * len(models),
    ]
    for s in subjects:
        per_subject_rows.append(
            f"| {s} | "
            + " | ".join(
                f"{m['subjects'][s]['accuracy']:.3f} / {m['subjects'][s]['macro_f1']:.3f}" for m in models.values()
            )
            + " |"
        )
    if evaluation.get("tests", True) and not evaluation["wilcoxon"]["against"]:
        test_lines = [
            "No other model was scored on the same subjects, so there is no paired test (`--baselines` adds three).",
            "",
        ]
        over = f"{heading} Over subjects ({n}): mean with bootstrap 95 % CI; AUCs"
    elif evaluation.get("tests", True):
        test_lines = [
            f"{heading} {reference} against each other model, paired over subjects: the difference, then the test",
            "",
            "Mean difference: of the paired per-subject scores, with its BCa 95 % CI over subjects. Wilcoxon "
            "signed-rank test: two-sided, subjects with equal scores dropped (scipy's zero_method='wilcox'); a "
            "positive difference "
            f"means {reference} scored higher. p (Holm): corrected for the several models compared, per metric; a "
            "difference is a tie unless its corrected p < 0.05 (marked *).",
            "",
            *tests,
            "",
        ]
        over = f"{heading} Over subjects ({n}): mean with bootstrap 95 % CI; AUCs"
    else:
        test_lines = [
            f"Scores only: {n} subjects are too few for intervals and paired tests (this report needs "
            f"{evaluation['min_subjects']}; a two-sided Wilcoxon signed-rank test needs {MIN_TEST_SUBJECTS} "
            f"to reach p < 0.05 at all).{scores_only_hint}",
            "",
        ]
        over = f"{heading} Over subjects ({n}): mean; AUCs"
    return [
        over,
        "",
        "A subject's score is computed over its own test windows (macro-F1 over the classes that subject shows or is "
        "predicted); the CI is scipy's BCa bootstrap of the mean over subjects; roc_auc_subject_mean (binary) is the "
        "mean of each subject's own ROC-AUC (subjects with both classes); roc_auc and pr_auc pool every test window "
        "(binary: the positive class; more classes: one-vs-rest macro ROC-AUC), mixing the calibrations of "
        "different fold models, so they come second.",
        "",
        *rows,
        "",
        *test_lines,
        f"{heading} Per class (pooled test windows)",
        "",
        *per_class_rows,
        "",
        f"{heading} Per subject",
        "",
        *per_subject_rows,
        "",
    ]


def plus_minus(s: dict[str, float]) -> str:
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def metric_line(summary: dict) -> str:
    return "  ".join(f"{m} {plus_minus(summary[m])}" for m in METRICS)


def metrics_table(rows: dict[str, dict]) -> str:
    """Markdown rows of models x METRICS; a cell is a float or {"mean", "std"}."""

    def cell(v):
        return plus_minus(v) if isinstance(v, dict) else f"{v:.3f}"

    lines = ["| model | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    lines += [f"| {name} | " + " | ".join(cell(m[k]) for k in METRICS) + " |" for name, m in rows.items()]
    return "\n".join(lines)


def confusion_table(class_names: list[str], confusion: np.ndarray) -> str:
    lines = ["| true \\ predicted | " + " | ".join(class_names) + " |", "|---|" + "---|" * len(class_names)]
    lines += [f"| {name} | " + " | ".join(str(v) for v in row) + " |" for name, row in zip(class_names, confusion)]
    return "\n".join(lines)


def markdown_table(frame: pd.DataFrame) -> str:
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)]
    header = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns)
    return header + "".join("\n| " + " | ".join(row) + " |" for row in cells)


def p_text(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"
