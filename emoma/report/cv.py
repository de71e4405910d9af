"""A cross-validation's files (`emoma cv`): metrics.json, folds.csv, history.csv, predictions.csv, report.md and
the figures, every one written to a temporary name, then renamed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from emoma.config import Config, save_config
from emoma.data import Table
from emoma.files import write_atomic
from emoma.folds import FoldPlan
from emoma.plots import plot_confusion, plot_learning_curves
from emoma.results import CVResult

if TYPE_CHECKING:
    pass
from emoma.report.common import (
    BASELINE_TEXT,
    PROTOCOLS,
    REFIT,
    confusion_table,
    evaluation_sections,
    markdown_table,
    metric_line,
    metrics_table,
    write_csv,
)


def write_cv_outputs(
    result: CVResult, evaluation: dict, table: Table, plan: FoldPlan, config: Config, out_dir: str | Path
) -> Path:
    """Write config.yaml, metrics.json, folds.csv, history.csv, predictions.csv, confusion_matrix.png,
    learning_curves.png and report.md into `out_dir`, every number from `result` and its `evaluation`
    (`CVResult.evaluate`); returns `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    write_atomic(out / "metrics.json", json.dumps(metrics_dict(result, table, plan, config, evaluation), indent=2))
    write_csv(folds_frame(result), out / "folds.csv")
    write_csv(history_frame(result), out / "history.csv")
    write_csv(predictions_frame(result, table), out / "predictions.csv")
    plot_confusion(
        result.confusion,
        result.class_names,
        out / "confusion_matrix.png",
        title=f"{config.name}: pooled over {len(result.folds)} {result.scheme} test folds",
    )
    plot_learning_curves(result, out / "learning_curves.png")
    write_atomic(out / "report.md", markdown_report(result, table, plan, config, evaluation))
    return out


def metrics_dict(result: CVResult, table: Table, plan: FoldPlan, config: Config, evaluation: dict) -> dict:
    return {
        "name": config.name,
        "data": data_summary(table),
        "inputs": inputs_summary(table, config),
        "protocol": {
            "scheme": result.scheme,
            "description": PROTOCOLS[result.scheme],
            "folds": len(result.folds),
            "subject_wise": plan.subject_wise,
            "notes": result.notes,
            "plan_key": plan.key,
            "early_stopping_metric": config.train.metric,
            "refit": config.train.refit,
            "baselines": config.cv.baselines,
        },
        "summary": result.summary(),
        "warnings": result.degenerate_notes(config.train.metric),
        "evaluation": evaluation,
        "confusion_matrix": result.confusion.tolist(),
        "class_names": result.class_names,
        "folds": [
            {
                "fold": f.index + 1,
                "test_subjects": f.test_subjects,
                **f.metrics,
                "epochs_run": f.epochs_run,
                "best_epoch": f.best_epoch,
                "seconds": f.seconds,
                "baselines": f.baselines,
            }
            for f in result.folds
        ],
        "baselines": result.baseline_summary(),
        "seconds": {"fold_plan": plan.seconds, "cv": result.seconds},
    }


NORMALISATION = {
    "none": "none: raw feature levels",
    "subject": "each subject's features standardised by the mean and std of all that subject's windows "
    "(label-free but transductive: a test subject's own unlabelled windows are read)",
    "causal": "each window standardised by the running mean and std of its subject's windows up to and including "
    "it (causal, usable on a live stream)",
}


def inputs_summary(table: Table, config: Config) -> dict:
    """What a sample holds: time order, context windows and subject normalisation."""
    k = config.model.context
    context = (
        "the current window only"
        if k == 1
        else f"the current window and the {k - 1} before it of the same subject, never across a time gap of more "
        "than two window lengths; before the start of a run the missing windows are masked out of the "
        "CNN-LSTM (classical baselines see the run's first window repeated)"
    )
    normalisation = NORMALISATION[table.normalisation]
    if table.normalisation == "causal":
        normalisation += f"; warm-up: z-scores shrunk by n/{config.data.norm_warmup} while they rest on n windows"
    s = config.model.smooth
    smoothing = (
        "none"
        if s == 1
        else f"each window's predicted probabilities averaged with those of the {s - 1} test windows before it of "
        "the same subject and run (causal), for the CNN-LSTM and the baselines alike; the best epoch is "
        "chosen on unsmoothed validation windows"
    )
    n = config.model.ensemble
    ensemble = (
        "one CNN-LSTM per fold"
        if n == 1
        else f"{n} CNN-LSTMs per fold, each trained from its own seed (each with its own best epoch); their class "
        "probabilities averaged"
    )
    return {
        "time_order": table.time_order,
        "context_windows": k,
        "context": context,
        "subject_normalisation": table.normalisation,
        "normalisation": normalisation,
        "smooth_windows": s,
        "smoothing": smoothing,
        "ensemble_members": n,
        "ensemble": ensemble,
    }


def data_summary(table: Table) -> dict:
    return {
        "source": table.source,
        "windows": int(len(table.y)),
        "subjects": int(len(table.subjects)),
        "classes": table.class_counts(),
        "features": table.feature_names,
        "dropped_columns": table.dropped_columns,
        "dropped_rows": table.dropped_rows,
    }


def folds_frame(result: CVResult) -> pd.DataFrame:
    rows = []
    for f in result.folds:
        row = {
            "fold": f.index + 1,
            "test_subjects": " ".join(map(str, f.test_subjects)),
            "n_train": f.n_train,
            "n_val": f.n_val,
            "n_test": f.n_test,
            **f.metrics,
            "epochs_run": f.epochs_run,
            "best_epoch": f.best_epoch,
            "seconds": round(f.seconds, 3),
        }
        for name, metrics in f.baselines.items():
            row.update({f"{name}_{m}": v for m, v in metrics.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def history_frame(result: CVResult) -> pd.DataFrame:
    return pd.DataFrame([{"fold": f.index + 1, **h} for f in result.folds for h in f.history])


def predictions_frame(result: CVResult, table: Table) -> pd.DataFrame:
    frames = []
    for f in result.folds:
        rows = table.row_ids[f.test_rows] if table.row_ids is not None else f.test_rows
        frame = pd.DataFrame(
            {
                "row": rows,
                "subject": table.groups[f.test_rows],
                "fold": f.index + 1,
                "true": np.array(table.class_names)[table.y[f.test_rows]],
                "predicted": np.array(table.class_names)[f.y_pred],
            }
        )
        for c, name in enumerate(table.class_names):
            frame[f"p_{name}"] = f.proba[:, c]
        frames.append(frame)
    return pd.concat(frames).sort_values("row")


def format_summary(result: CVResult, metric: str) -> str:
    """A few lines for the terminal: mean ± std per metric, baselines, the pooled confusion matrix."""
    lines = [f"{len(result.folds)} {result.scheme} folds in {result.seconds:.1f} s"]
    lines += [f"WARNING: {note}" for note in result.notes + result.degenerate_notes(metric)]
    lines.append("CNN-LSTM      " + metric_line(result.summary()))
    for name, summary in result.baseline_summary().items():
        lines.append(f"{name:<13} " + metric_line(summary))
    width = max(len(n) for n in result.class_names)
    lines.append("pooled confusion matrix (rows true, columns predicted):")
    for name, row in zip(result.class_names, result.confusion):
        lines.append(f"  {name:>{width}}  " + " ".join(f"{v:5d}" for v in row))
    return "\n".join(lines)


def markdown_report(result: CVResult, table: Table, plan: FoldPlan, config: Config, evaluation: dict) -> str:
    data = data_summary(table)
    inputs = inputs_summary(table, config)
    classes = ", ".join(f"{k} {v}" for k, v in data["classes"].items())
    dropped = "\n".join(f"  - `{k}`: {v}" for k, v in table.dropped_columns.items()) or "  - none"
    lines = [
        f"# Cross-validation report: {config.name}",
        "",
        "## Data",
        f"- source: `{table.source}`",
        f"- {data['windows']} windows, {data['subjects']} subjects; classes: {classes}",
        f"- {len(table.feature_names)} candidate features; model reads the top {config.model.n_features or 'all'} "
        "of each fold's RFE ranking",
        f"- rows dropped: {table.dropped_rows}",
        "- columns not used as features:",
        dropped,
        "",
        "## Inputs",
        f"- time order: {inputs['time_order']}",
        f"- context: {inputs['context']}",
        f"- subject normalisation: {inputs['normalisation']}",
        f"- probability smoothing: {inputs['smoothing']}",
        f"- model: {inputs['ensemble']}",
        "",
        "## Protocol",
        f"- {PROTOCOLS[result.scheme]}; {len(result.folds)} folds",
        f"- scaler and RFE fitted on each fold's training rows only; best epoch and early stopping by validation "
        f"{config.train.metric} on {'held-out training subjects' if plan.subject_wise else 'held-out training rows'}"
        f"{REFIT if config.train.refit else ''}; each test fold scored once",
        *(
            [f"- baselines on the CNN-LSTM's inputs: {BASELINE_TEXT[config.cv.baselines]}"]
            if result.baseline_summary()
            else []
        ),
        *[f"- **WARNING: {note}**" for note in result.notes],
        "",
        "## Result (mean ± std over folds)",
        "",
        *[f"**WARNING: {note}**\n" for note in result.degenerate_notes(config.train.metric)],
        metrics_table({"CNN-LSTM": result.summary(), **result.baseline_summary()}),
        "",
        *evaluation_sections(evaluation, result.class_names),
        "## Pooled confusion matrix (sum over test folds)",
        "",
        confusion_table(result.class_names, result.confusion),
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "## Per fold",
        "",
        markdown_table(folds_frame(result)),
        "",
        "![learning curves](learning_curves.png)",
        "",
        f"Fold plan `{plan.key}` ({'from cache' if plan.from_cache else f'{plan.seconds:.1f} s'}); "
        f"cross-validation {result.seconds:.1f} s. Resolved configuration: `config.yaml`.",
        "",
    ]
    return "\n".join(lines)
