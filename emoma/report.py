"""Stage 5: results -> files a researcher reads (metrics.json, folds.csv, plots, report.md). Reads only."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from emoma.config import Config, save_config  # noqa: E402
from emoma.cv import METRICS, CVResult  # noqa: E402
from emoma.data import Table  # noqa: E402
from emoma.folds import FoldPlan  # noqa: E402

PROTOCOLS = {
    "loso": "leave-one-subject-out: each fold tests one subject never seen in training",
    "group-kfold": "subject-wise k-fold: each subject's windows are all in one fold",
    "stratified-group-kfold": "subject-wise k-fold, folds balanced by class",
    "kfold": "row-wise shuffled k-fold (the original EmoMA-Net protocol)",
}


def write_cv_outputs(result: CVResult, table: Table, plan: FoldPlan, config: Config, out_dir: str | Path) -> Path:
    """Write config.yaml, metrics.json, folds.csv, history.csv, predictions.csv, confusion_matrix.png,
    learning_curves.png and report.md into `out_dir`; returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    (out / "metrics.json").write_text(json.dumps(metrics_dict(result, table, plan, config), indent=2))
    folds_frame(result).to_csv(out / "folds.csv", index=False)
    history_frame(result).to_csv(out / "history.csv", index=False)
    predictions_frame(result, table).to_csv(out / "predictions.csv", index=False)
    plot_confusion(result.confusion, result.class_names, out / "confusion_matrix.png",
                   title=f"{config.name}: pooled over {len(result.folds)} {result.scheme} test folds")
    plot_learning_curves(result, out / "learning_curves.png")
    (out / "report.md").write_text(markdown_report(result, table, plan, config))
    return out


def metrics_dict(result: CVResult, table: Table, plan: FoldPlan, config: Config) -> dict:
    return {
        "name": config.name,
        "data": data_summary(table),
        "protocol": {"scheme": result.scheme, "description": PROTOCOLS[result.scheme], "folds": len(result.folds),
                     "subject_wise": plan.subject_wise, "notes": result.notes, "plan_key": plan.key},
        "summary": result.summary(),
        "confusion_matrix": result.confusion.tolist(),
        "class_names": result.class_names,
        "folds": [{"fold": f.index + 1, "test_subjects": f.test_subjects, **f.metrics, "epochs_run": f.epochs_run,
                   "best_epoch": f.best_epoch, "seconds": f.seconds, "baselines": f.baselines}
                  for f in result.folds],
        "baselines": result.baseline_summary(),
        "seconds": {"fold_plan": plan.seconds, "cv": result.seconds},
    }


def data_summary(table: Table) -> dict:
    return {"source": table.source, "windows": int(len(table.y)), "subjects": int(len(table.subjects)),
            "classes": table.class_counts(), "features": table.feature_names,
            "dropped_columns": table.dropped_columns, "dropped_rows": table.dropped_rows}


def folds_frame(result: CVResult) -> pd.DataFrame:
    rows = []
    for f in result.folds:
        row = {"fold": f.index + 1, "test_subjects": " ".join(map(str, f.test_subjects)), "n_train": f.n_train,
               "n_val": f.n_val, "n_test": f.n_test, **f.metrics, "epochs_run": f.epochs_run,
               "best_epoch": f.best_epoch, "seconds": round(f.seconds, 3)}
        for name, metrics in f.baselines.items():
            row.update({f"{name}_{m}": v for m, v in metrics.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def history_frame(result: CVResult) -> pd.DataFrame:
    return pd.DataFrame([{"fold": f.index + 1, **h} for f in result.folds for h in f.history])


def predictions_frame(result: CVResult, table: Table) -> pd.DataFrame:
    frames = []
    for f in result.folds:
        frame = pd.DataFrame({"row": f.test_rows, "subject": table.groups[f.test_rows], "fold": f.index + 1,
                              "true": np.array(table.class_names)[table.y[f.test_rows]],
                              "predicted": np.array(table.class_names)[f.y_pred]})
        for c, name in enumerate(table.class_names):
            frame[f"p_{name}"] = f.proba[:, c]
        frames.append(frame)
    return pd.concat(frames).sort_values("row")


def format_summary(result: CVResult) -> str:
    """A few lines for the terminal: mean ± std per metric, baselines, the pooled confusion matrix."""
    lines = [f"{len(result.folds)} {result.scheme} folds in {result.seconds:.1f} s"]
    lines += [f"WARNING: {note}" for note in result.notes]
    lines.append("CNN-LSTM      " + _metric_line(result.summary()))
    for name, summary in result.baseline_summary().items():
        lines.append(f"{name:<13} " + _metric_line(summary))
    width = max(len(n) for n in result.class_names)
    lines.append("pooled confusion matrix (rows true, columns predicted):")
    for name, row in zip(result.class_names, result.confusion):
        lines.append(f"  {name:>{width}}  " + " ".join(f"{v:5d}" for v in row))
    return "\n".join(lines)


def markdown_report(result: CVResult, table: Table, plan: FoldPlan, config: Config) -> str:
    data = data_summary(table)
    classes = ", ".join(f"{k} {v}" for k, v in data["classes"].items())
    dropped = "\n".join(f"- `{k}`: {v}" for k, v in table.dropped_columns.items()) or "- none"
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
        "## Protocol",
        f"- {PROTOCOLS[result.scheme]}; {len(result.folds)} folds",
        f"- scaler and RFE fitted on each fold's training rows only; early stopping on "
        f"{'held-out training subjects' if plan.subject_wise else 'held-out training rows'}; "
        "each test fold scored once",
        *[f"- **WARNING: {note}**" for note in result.notes],
        "",
        "## Result (mean ± std over folds)",
        "",
        "| model | " + " | ".join(METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
        "| CNN-LSTM | " + " | ".join(_pm(result.summary()[m]) for m in METRICS) + " |",
        *[f"| {name} | " + " | ".join(_pm(s[m]) for m in METRICS) + " |"
          for name, s in result.baseline_summary().items()],
        "",
        "## Pooled confusion matrix (sum over test folds)",
        "",
        "| true \\ predicted | " + " | ".join(result.class_names) + " |",
        "|---|" + "---|" * len(result.class_names),
        *[f"| {name} | " + " | ".join(str(v) for v in row) + " |"
          for name, row in zip(result.class_names, result.confusion)],
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


def plot_confusion(confusion: np.ndarray, class_names: list[str], path: Path, title: str = "") -> None:
    """Counts and row-normalised rates in each cell."""
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 1.3 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(j, i, f"{confusion[i, j]}\n{rates[i, j]:.0%}", ha="center", va="center",
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="row rate")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_learning_curves(result: CVResult, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for f in result.folds:
        epochs = [h["epoch"] for h in f.history]
        for ax, key in zip(axes, ("loss", "acc")):
            ax.plot(epochs, [h[f"train_{key}"] for h in f.history], color="tab:blue", alpha=0.3, lw=1)
            ax.plot(epochs, [h[f"val_{key}"] for h in f.history], color="tab:orange", alpha=0.3, lw=1)
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.plot([], [], color="tab:blue", label="train")
        ax.plot([], [], color="tab:orange", label="validation (inner split)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.legend()
    fig.suptitle("per-fold learning curves")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pm(s: dict[str, float]) -> str:
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def _metric_line(summary: dict) -> str:
    return "  ".join(f"{m} {_pm(summary[m])}" for m in METRICS)


def markdown_table(frame: pd.DataFrame) -> str:
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)]
    header = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns)
    return header + "".join("\n| " + " | ".join(row) + " |" for row in cells)
