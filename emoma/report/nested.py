"""A nested search's files (`emoma search --outer loso`): every outer fold's held-out predictions pooled into
nested_metrics.json, nested_predictions.csv and report.md, with each outer fold's BBC-CV estimate against its
outer score."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from emoma.config import METRICS
from emoma.files import write_atomic
from emoma.plots import plot_confusion

if TYPE_CHECKING:
    pass
from emoma.report.common import evaluation_sections, markdown_table, plus_minus
from emoma.report.search import holdout_evaluation


def write_nested_outputs(outer_folders: list[Path], out_dir: str | Path) -> Path:
    """nested_metrics.json, confusion_matrix.png and report.md over the outer folds of a nested search, read from
    each outer fold's holdout_metrics.json, search_metrics.json and holdout_predictions.csv."""
    out = Path(out_dir)
    held = [json.loads((f / "holdout_metrics.json").read_text()) for f in outer_folders]
    searched = [json.loads((f / "search_metrics.json").read_text()) for f in outer_folders]
    class_names, metric = held[0]["class_names"], searched[0]["metric"]
    rows = [
        {
            "subject": h["subjects"][0],
            **h["models"]["final"],
            **{f"base_{m}": h["models"]["base"][m] for m in METRICS},
            **{f"seed_{m}": h["models"]["seed"][m] for m in METRICS},
            "naive_best_cv": s["bbc_cv"]["naive_best_cv"],
            "bbc_cv": s["bbc_cv"]["estimate"],
            "base_cv": math.nan if s.get("base_cv") is None else s["base_cv"],
        }
        for h, s in zip(held, searched)
    ]
    frame = pd.DataFrame(rows)
    confusion = np.sum([h["confusion_matrix"] for h in held], axis=0)
    summary = {m: {"mean": float(frame[m].mean()), "std": float(frame[m].std(ddof=0))} for m in METRICS}
    evaluation = holdout_evaluation(
        [pd.read_csv(f / "holdout_predictions.csv", dtype={"subject": str}) for f in outer_folders], class_names
    )
    chosen = pd.DataFrame(
        [
            {
                "subject": h["subjects"][0],
                "rule": h["final"]["rule"],
                "members": len(h["final"]["members"]),
                **max(h["final"]["members"], key=lambda m: m["weight"])["params"],
            }
            for h in held
        ]
    )
    calibration = bbc_vs_outer(frame, metric)
    write_atomic(
        out / "nested_metrics.json",
        json.dumps(
            {
                "outer_folds": rows,
                "summary": summary,
                "metric": metric,
                "bbc_vs_outer": calibration,
                "confusion_matrix": confusion.tolist(),
                "class_names": class_names,
                "chosen": chosen.to_dict(orient="records"),
                "evaluation": evaluation,
            },
            indent=2,
            default=str,
        ),
    )
    plot_confusion(
        confusion,
        class_names,
        out / "confusion_matrix.png",
        title=f"nested LOSO: pooled over {len(held)} held-out subjects",
    )
    write_atomic(
        out / "report.md",
        "\n".join(
            [
                "# Nested cross-validation report",
                "",
                "Each outer fold holds one subject out of the whole search (search, final choice, retraining) and "
                "scores "
                "the final model on it once: the mean below estimates how the whole procedure generalises to a new "
                "person, "
                "at this budget: each outer fold's search sampled with its own seed (`search.sampler_seed` in its "
                "manifest) "
                f"and completed {_span([s['trials_completed'] for s in searched])} trials.",
                "",
                "| metric | mean ± std over outer folds |",
                "|---|---|",
                *[f"| {m} | {plus_minus(v)} |" for m, v in summary.items()],
                "",
                markdown_table(frame),
                "",
                "![confusion matrix](confusion_matrix.png)",
                "",
                "## How far the cheap estimate is from the nested one",
                "",
                f"Each outer fold's own BBC-CV estimate of its final model ({metric}, from its inner search alone) "
                "against "
                f"that model's score on the outer subject: mean difference (estimate - outer) "
                f"{calibration['mean_difference']:+.3f}, mean absolute difference "
                f"{calibration['mean_abs_difference']:.3f} "
                f"over {len(held)} outer folds. The mean difference says whether the estimate is biased; the "
                "absolute one "
                "mostly measures how much a single subject's score varies. The estimate scores the inner trials as "
                "they "
                f"trained (fidelity {searched[0]['fidelity']}, inner folds); the outer score, the final model "
                "retrained at "
                "its own settings on every search subject: part of any difference is that gap."
                + (
                    " The base configuration, which no choice touched, shows that part alone: its inner CV minus "
                    "its outer "
                    f"score, {calibration['base_mean_difference']:+.3f} on average."
                    if calibration["base_mean_difference"] is not None
                    else ""
                ),
                "",
                "The final model each outer fold chose (the parameters of its largest member):",
                "",
                markdown_table(chosen),
                "",
                "The base and seed configurations and the baselines below were retrained on the same search subjects "
                "of each "
                "outer fold (baselines on the base configuration's inputs) and scored on the same held-out subject.",
                "",
                *evaluation_sections(evaluation, class_names),
            ]
        ),
    )
    return out


def _span(values: list[int]) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"


def bbc_vs_outer(frame: pd.DataFrame, metric: str) -> dict:
    """Each outer fold's BBC-CV estimate against its outer score: {mean_difference, mean_abs_difference,
    base_mean_difference (the base configuration's inner CV against its outer score), per_subject: {subject:
    {bbc_cv, outer, difference}}}."""
    difference = frame["bbc_cv"] - frame[metric]
    base = (frame["base_cv"] - frame[f"base_{metric}"]).dropna()
    return {
        "metric": metric,
        "mean_difference": float(difference.mean()),
        "mean_abs_difference": float(difference.abs().mean()),
        "base_mean_difference": float(base.mean()) if len(base) else None,
        "per_subject": {
            str(r.subject): {"bbc_cv": float(r.bbc_cv), "outer": float(getattr(r, metric)), "difference": float(d)}
            for r, d in zip(frame.itertuples(), difference)
        },
    }
