"""Stage 5: results -> files a researcher reads (metrics.json, folds.csv, report.md, ...). Reads results and
writes files only (figures in emoma.plots); every file is written to a temporary name, then renamed."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import yaml

from emoma.config import METRICS, Config, save_config
from emoma.data import Table
from emoma.files import atomic_path, write_atomic
from emoma.folds import FoldPlan
from emoma.metrics import MIN_HOLDOUT_SUBJECTS, MIN_TEST_SUBJECTS, evaluate, per_subject
from emoma.plots import plot_bbc_curve, plot_confusion, plot_importances, plot_learning_curves, plot_search_history
from emoma.results import BASE, FINAL, HELD_NAMES, CVResult
from emoma.select import describe_choice
from emoma.space import describe

if TYPE_CHECKING:
    from emoma.results import SearchResult

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
    evaluation = cv_evaluation(result, table, config)
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


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def cv_evaluation(result: CVResult, table: Table, config: Config) -> dict:
    """`emoma.metrics.evaluate` of the pooled test predictions of the CNN-LSTM and the baselines."""
    rows, probas = result.pooled()
    return evaluate(table.groups[rows], table.y[rows], probas, result.class_names, seed=config.seed)


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


def _trial_fidelity(result, config: Config) -> str:
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


def format_summary(result: CVResult, metric: str) -> str:
    """A few lines for the terminal: mean ± std per metric, baselines, the pooled confusion matrix."""
    lines = [f"{len(result.folds)} {result.scheme} folds in {result.seconds:.1f} s"]
    lines += [f"WARNING: {note}" for note in result.notes + result.degenerate_notes(metric)]
    lines.append("CNN-LSTM      " + _metric_line(result.summary()))
    for name, summary in result.baseline_summary().items():
        lines.append(f"{name:<13} " + _metric_line(summary))
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
                f"{_p(t['p_value'])} | {_p(t['p_holm'])}{' *' if t['p_holm'] < 0.05 else ''} | "
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


def _pm(s: dict[str, float]) -> str:
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def _metric_line(summary: dict) -> str:
    return "  ".join(f"{m} {_pm(summary[m])}" for m in METRICS)


def metrics_table(rows: dict[str, dict]) -> str:
    """Markdown rows of models x METRICS; a cell is a float or {"mean", "std"}."""

    def cell(v):
        return _pm(v) if isinstance(v, dict) else f"{v:.3f}"

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


def write_search_outputs(result: SearchResult, config: Config) -> Path:
    """Write best_config.yaml, final_config.yaml, trials.csv, search_metrics.json, holdout_metrics.json,
    holdout_predictions.csv, confusion_matrix.png, search_history.png, bbc_curve.png, param_importance.png and
    report.md into the experiment's local folder; returns it. (The caller saves the model.)"""
    out = result.folder
    save_config(result.best_config, out / "best_config.yaml")
    write_atomic(out / "final_config.yaml", final_config_yaml(result))
    trials = result.trials_frame
    write_csv(trials, out / "trials.csv")
    metrics = search_metrics(result)
    write_atomic(out / "search_metrics.json", json.dumps(metrics, indent=2, default=str))
    predictions = result.holdout_predictions
    held = holdout_metrics(result, predictions)
    write_atomic(out / "holdout_metrics.json", json.dumps(held, indent=2, default=str))
    write_csv(predictions, out / "holdout_predictions.csv")
    plot_confusion(
        result.held["final"].result.confusion,
        result.class_names,
        out / "confusion_matrix.png",
        title=f"final model on held-out subjects {', '.join(map(str, result.holdout_subjects))}",
    )
    plot_search_history(trials, result.metric, out / "search_history.png")
    plot_bbc_curve(result.curve, result.metric, result.selection.rule, out / "bbc_curve.png")
    if result.importances:
        plot_importances(result.importances, out / "param_importance.png")
    write_atomic(out / "report.md", search_markdown(result, config, trials, metrics, held))
    return out


def final_config_yaml(result: SearchResult) -> str:
    """The final model's configuration: one complete config (run it with emoma cv --config), or for an ensemble
    each member's weight, trial and complete config."""
    if len(result.final_configs) == 1:
        return yaml.safe_dump(next(iter(result.final_configs.values())).to_dict(), sort_keys=False)
    members = [
        {"trial": t, "weight": result.selection.weights[t], "config": c.to_dict()}
        for t, c in result.final_configs.items()
    ]
    return yaml.safe_dump({"ensemble": members}, sort_keys=False)


def search_metrics(result: SearchResult) -> dict:
    """search_metrics.json: the selection (rule, members, naive best CV, BBC-CV estimates, gains, the other
    rules' choices), the estimate against the number of trials, the trials' fidelity, parameter importances."""
    return {
        "name": result.name,
        "partial": False,
        **result.selection.summary,
        "curve": result.curve,
        "fidelity": result.fidelity,
        "importances": result.importances,
    }


def holdout_metrics(result: SearchResult, predictions: pd.DataFrame) -> dict:
    """holdout_metrics.json: every model scored on the same held-out subjects (final, base, seed, baselines),
    the final model's members, the final-minus-base difference per subject and its noise, the evaluation."""
    final = result.held["final"].result
    models = {k: result.held[k].result.metrics for k in HELD_NAMES} | result.held["base"].result.baselines
    evaluation = holdout_evaluation([predictions], result.class_names, MIN_HOLDOUT_SUBJECTS)
    members = [
        {
            "trial": t,
            "weight": w,
            "params": next(r.params for r in result.trials if r.trial_id == t),
            "epochs_run": result.held[f"final {t}"].result.epochs_run,
            "best_epoch": result.held[f"final {t}"].result.best_epoch,
            "features": result.held[f"final {t}"].result.features,
        }
        for t, w in result.selection.weights.items()
    ]
    return {
        "subjects": [str(s) for s in result.holdout_subjects],
        "windows": final.n_test,
        "class_names": result.class_names,
        "models": models,
        "final": {"rule": result.selection.rule, "members": members},
        "confusion_matrix": final.confusion.tolist(),
        "final_vs_base": paired_noise(evaluation["models"][FINAL]["subjects"], evaluation["models"][BASE]["subjects"]),
        "naive_best": {"trial": result.best.trial_id, "cv": result.best.mean, "params": result.best.params},
        "bbc_cv": result.selection.summary["bbc_cv"],
        "warnings": result.degenerate_notes(),
        "evaluation": evaluation,
    }


def paired_noise(a: dict, b: dict) -> dict:
    """{metric: {mean_difference, standard_error, n, per_subject}} of per-subject scores a - b: the standard
    error over subjects is the noise a hold-out of that many subjects carries (NaN with one subject)."""
    out = {}
    for m in METRICS:
        diff = {s: a[s][m] - b[s][m] for s in a}
        values = np.array(list(diff.values()))
        se = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else math.nan
        out[m] = {"mean_difference": float(values.mean()), "standard_error": se, "n": len(values), "per_subject": diff}
    return out


def holdout_evaluation(
    frames: list[pd.DataFrame], class_names: list[str], min_subjects: int = MIN_TEST_SUBJECTS
) -> dict:
    """`emoma.metrics.evaluate` of held-out predictions (one frame per search, e.g. per outer fold of a nested
    search): the final model, the base and seed configurations and the baselines, tested against the final.
    A single search's hold-out asks for MIN_HOLDOUT_SUBJECTS; a nested search holds every subject out once,
    as leave-one-subject-out CV does."""
    frame = pd.concat(frames, ignore_index=True)
    models = list(dict.fromkeys(c.split("|")[0] for c in frame.columns if "|" in c))
    probas = {m: frame[[f"{m}|{c}" for c in class_names]].to_numpy() for m in models}
    return evaluate(
        frame["subject"].to_numpy(),
        frame["true"].to_numpy(),
        probas,
        class_names,
        reference=FINAL,
        min_subjects=min_subjects,
    )


def top_trials(trials: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The n completed trials with the best mean, their parameters without the `param.` prefix."""
    completed = trials[trials["status"] == "completed"].sort_values("mean", ascending=False)
    params = [c for c in trials.columns if c.startswith("param.")]
    return completed[["trial", "mean", "std", *params]].head(n).rename(columns=lambda c: c.removeprefix("param."))


def estimate_line(selection: dict) -> str:
    """The BBC-CV estimate of the final choice beside the naive best CV, in one line."""
    b = selection["bbc_cv"]
    return (
        f"final choice ({selection['rule']}): {describe_choice(selection['final']['weights'])}; BBC-CV estimate of "
        f"{b['metric']} on new subjects "
        f"{b['estimate']:.4f} (95 % interval {b['ci_low']:.4f}-{b['ci_high']:.4f}, {b['n_bootstrap']} subject "
        f"resamples, {selection['trials_completed']} completed trials); naive best CV {b['naive_best_cv']:.4f} "
        "(optimistic: the best of many noisy scores)"
    )


def live_report(name: str, metric: str, trials: pd.DataFrame, num_samples: int, selection: dict | None = None) -> str:
    """The report while a search runs: trials so far, best so far, the selection so far, the history plot."""
    completed = trials[trials["status"] == "completed"].sort_values("mean", ascending=False)
    best = (
        f"{completed['mean'].iloc[0]:.4f} ± {completed['std'].iloc[0]:.4f} (trial {completed['trial'].iloc[0]})"
        if len(completed)
        else "none yet (no trial has run every fold)"
    )
    top = top_trials(trials)
    return "\n".join(
        [
            f"# Search report: {name} (in progress)",
            "",
            f"Refreshed after every finished or pruned trial; the full report replaces this page when the search ends. "
            f"{len(trials)} of {num_samples} trials finished: {len(completed)} completed, "
            f"{int((trials['status'] == 'pruned').sum())} pruned, {int((trials['status'] == 'error').sum())} errored.",
            "",
            f"Best so far (mean {metric} over every fold): {best}",
            "",
            f"So far, {estimate_line(selection)}." if selection else "",
            "",
            markdown_table(top) if len(top) else "",
            "",
            "![search history](search_history.png)",
            "",
        ]
    )


def format_search_summary(result: SearchResult) -> str:
    s = result.selection.summary
    subjects = ", ".join(map(str, result.holdout_subjects))
    noise = paired_noise(
        *(
            per_subject(result.held[k].groups, result.held[k].y, result.held[k].result.y_pred, len(result.class_names))
            for k in ("final", "base")
        )
    )[result.metric]
    lines = [
        f"{len(result.trials)} trials ({len(result.completed)} completed, "
        f"{sum(t.status == 'pruned' for t in result.trials)} pruned, "
        f"{sum(t.status == 'error' for t in result.trials)} errored) in {result.seconds:.0f} s",
        f"naive best CV {result.metric}: {result.best.mean:.4f} ± {result.best.std:.4f} (trial "
        f"{result.best.trial_id}; optimistic)",
        estimate_line(s),
    ]
    for key, trial in (("base", result.base_trial), ("seed", result.seed_trial)):
        if trial is not None and trial.status == "completed":
            lines.append(f"{key} configuration CV {result.metric}: {trial.mean:.4f} ± {trial.std:.4f}")
    for key in HELD_NAMES:
        lines.append(
            f"held-out subjects {subjects}, {key}: "
            + "  ".join(f"{m} {v:.4f}" for m, v in result.held[key].result.metrics.items())
        )
    lines.append(
        f"held-out final - base {result.metric}: {noise['mean_difference']:+.4f} per subject, standard error "
        f"{noise['standard_error']:.4f} over {noise['n']} subjects (the hold-out's noise)"
    )
    notes = [n for n in result.notes if "kfold" in n] + result.degenerate_notes()
    return "\n".join(lines + [f"WARNING: {n}" for n in notes])


def search_markdown(result: SearchResult, config: Config, trials: pd.DataFrame, metrics: dict, held: dict) -> str:
    final = result.held["final"].result
    space = "\n".join(f"- `{k}`: {describe(d)}" for k, d in result.space.items())
    importances = "\n".join(f"| {k} | {v:.3f} |" for k, v in result.importances.items())
    pruning = {
        "wilcoxon": f"trials stopped early by a one-sided Wilcoxon signed-rank test against the best "
        f"complete trial on the same folds (p < {config.search.wilcoxon_p}, after "
        f"{config.search.grace_folds} folds); ",
        "asha": f"ASHA over folds (grace {config.search.grace_folds} folds); ",
        "none": "",
    }[result.pruner]
    first = ", ".join(
        f"{k} configuration {t.mean:.4f} ± {t.std:.4f} ({t.status}, trial {t.trial_id})"
        for k, t in (("base", result.base_trial), ("seed", result.seed_trial))
        if t is not None
    )
    noise = held["final_vs_base"][result.metric]
    lines = [
        f"# Search report: {result.name}",
        "",
        "## Data and protocol",
        f"- source: `{config.data.path or 'synthetic'}`; "
        f"task {config.data.task}; classes {', '.join(result.class_names)}",
        f"- held out of the whole search (never seen by any trial or by the final choice): subjects "
        f"{', '.join(map(str, result.holdout_subjects))}",
        f"- search subjects: {', '.join(map(str, result.search_subjects))}",
        f"- each trial: {PROTOCOLS[result.plan.scheme]}, {len(result.plan.folds)} folds over the search subjects; "
        "scaler and RFE fitted on each fold's training rows; one fold plan per subject normalisation shared by "
        f"every trial; folds in one order for every trial{_trial_fidelity(result, config)}",
        f"- objective: mean {result.metric} over folds (also the early-stopping metric); {pruning}the base "
        "configuration runs first and the seed configuration second, neither is ever stopped; the final model is "
        f"chosen among trials that completed every fold by the rule `{result.selection.rule}` "
        f"({RULE_TEXT[result.selection.rule]})",
        *[f"- note: {n}" for n in result.notes],
        "",
        "## Search space",
        space,
        "",
        *selection_sections(result, metrics),
        "## Trials",
        f"{len(result.trials)} trials: {len(result.completed)} completed, "
        f"{int((trials['status'] == 'pruned').sum())} pruned, {int((trials['status'] == 'error').sum())} errored; "
        f"{result.seconds:.0f} s in all. Every trial is in `trials.csv` (`stopped_by` says which rule stopped a "
        "pruned trial) and its out-of-fold probabilities in `oof/`.",
        "",
        f"- {first}" if first else "- base and seed configurations: not run",
        f"- naive best: {result.best.mean:.4f} ± {result.best.std:.4f} (trial {result.best.trial_id}; optimistic)",
        "",
        "### Top 10 completed trials",
        "",
        markdown_table(top_trials(trials)),
        "",
        "![search history](search_history.png)",
        "",
        "### Parameter importance (Optuna's fANOVA over the completed trials)",
        "",
        ("| parameter | importance |\n|---|---|\n" + importances + "\n\n![parameter importance](param_importance.png)")
        if importances
        else "too few completed trials",
        "",
        "## Final model, base and seed configurations: retrained on all search subjects, scored once on the "
        "held-out subjects",
        "",
        f"Early stopping on held-out search subjects{REFIT if config.train.refit else ''}. The final model: "
        f"{_members_text(result, held)}. Configuration: `final_config.yaml`; model: `final_model.pt` "
        "(`emoma predict --model final_model.pt --data new.csv --out predictions.csv`); every held-out "
        "window's probabilities: `holdout_predictions.csv`. The baselines get the base configuration's inputs and "
        f"are {BASELINE_TEXT[config.cv.baselines]}.",
        "",
        *[f"**WARNING: {note}**\n" for note in result.degenerate_notes()],
        metrics_table(
            {HELD_NAMES[k]: v for k, v in held["models"].items() if k in HELD_NAMES}
            | {k: v for k, v in held["models"].items() if k not in HELD_NAMES}
        ),
        "",
        f"Final minus base on these {noise['n']} subjects ({result.metric}, mean of per-subject differences): "
        f"{noise['mean_difference']:+.3f}, standard error {noise['standard_error']:.3f}: the noise of a hold-out "
        "this small; the BBC-CV gain above is the steadier answer.",
        "",
        confusion_table(result.class_names, final.confusion),
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        *evaluation_sections(
            held["evaluation"],
            result.class_names,
            heading="###",
            scores_only_hint=" For intervals and paired tests on new subjects, nest the search "
            "(`--outer loso`: every subject held out once).",
        ),
    ]
    return "\n".join(lines)


def _p(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


RULE_TEXT = {
    "best": "the trial with the best mean",
    "one-se": "the cheapest trial within one standard error of the best mean, cheapest = fewest weights x context "
    "windows per prediction",
    "guard": "the best trial only where its mean paired gain over the base configuration on the same subjects "
    "is significant (one-sided paired t, search.guard_alpha Bonferroni-corrected over the candidates), "
    "else the base configuration",
    "ensemble": "ensemble selection (Caruana et al. 2004): greedy forward selection with replacement over the "
    "trials' out-of-fold probabilities, the best prefix kept; its members retrained and averaged",
}


def _members_text(result: SearchResult, held: dict) -> str:
    parts = []
    for member in held["final"]["members"]:
        cfg = result.final_configs[member["trial"]]
        weight = f"weight {member['weight']:.2f}, " if len(held["final"]["members"]) > 1 else ""
        parts.append(
            f"trial {member['trial']} ({weight}{cfg.model.ensemble} model(s), refit "
            f"{'yes' if cfg.train.refit else 'no'}, ran {member['epochs_run']} epochs, best epoch "
            f"{member['best_epoch']})"
        )
    return "; ".join(parts)


def _guard_lines(metrics: dict) -> list[str]:
    """The guard's test on every search subject, whatever the rule: would the best mean have replaced the base?"""
    g = metrics.get("guard")
    if g is None:
        return []
    verdict = "replaces the base" if g["replaced"] else "does not replace the base"
    return [
        "",
        f"Guard's test: the best mean (trial {g['best']}) against the base on the same subjects, gain "
        f"{g['gain']:+.3f} (SE {g['se']:.3f}), t = {g['t']:.2f} against {g['critical']:.2f} (one-sided, alpha "
        f"{g['alpha']} Bonferroni-corrected over {g['candidates']} candidates): it {verdict}.",
    ]


def selection_sections(result: SearchResult, metrics: dict) -> list[str]:
    """The final choice, its BBC-CV estimate, the other rules, and whether the search helped."""
    m = result.metric
    b, acc = metrics["bbc_cv"], metrics.get("bbc_cv_accuracy")
    rules = ["| rule | choice | BBC-CV " + m + " (95 % interval) |", "|---|---|---|"]
    for rule, r in metrics["rules"].items():
        choice = describe_choice(r["weights"])
        e = r["bbc_cv"][m]
        rules.append(
            f"| {rule}{' (this search)' if rule == result.selection.rule else ''} | {choice} | "
            f"{e['estimate']:.3f} ({e['ci_low']:.3f}-{e['ci_high']:.3f}) |"
        )
    gains = [
        "| against | BBC-CV gain (95 % interval) | out-of-fold mean difference (95 % CI) | p | p (Holm) |",
        "|---|---|---|---|---|",
    ]
    oof = metrics["out_of_fold"]["against"]
    for name, g in metrics["gain_bbc_cv"].items():
        o = oof[name][m]
        verdict = " *" if o["p_holm"] < 0.05 else ""
        gains.append(
            f"| {HELD_NAMES.get(name, name)} | {g[m]['mean']:+.3f} ({g[m]['ci_low']:+.3f} to "
            f"{g[m]['ci_high']:+.3f}) | {o['mean_difference']:+.3f} ({o['ci_low']:+.3f} to "
            f"{o['ci_high']:+.3f}) | {_p(o['p_value'])} | {_p(o['p_holm'])}{verdict} |"
        )
    per_subject = metrics["out_of_fold"]["per_subject"]
    names = list(per_subject)
    subjects = ["| subject | " + " | ".join(HELD_NAMES.get(n, n) for n in names) + " |", "|---|" + "---|" * len(names)]
    subjects += [
        f"| {s} | " + " | ".join(f"{per_subject[n][m][s]:.3f}" for n in names) + " |" for s in per_subject["final"][m]
    ]
    curve = ["| completed trials | naive best CV | BBC-CV estimate (95 % interval) |", "|---|---|---|"]
    curve += [
        f"| {c['trials']} | {c['naive_best_cv']:.3f} | {c['estimate']:.3f} ({c['ci_low']:.3f}-{c['ci_high']:.3f}) |"
        for c in result.curve
    ]
    accuracy = (
        f" Accuracy of the same choice: {acc['estimate']:.3f} ({acc['ci_low']:.3f}-{acc['ci_high']:.3f}), "
        f"naive {acc['naive_best_cv']:.3f}."
        if acc
        else ""
    )
    return [
        "## Final choice and an honest estimate of it",
        "",
        f"**BBC-CV estimate of the final model's {m} on new subjects: {b['estimate']:.3f} (95 % interval "
        f"{b['ci_low']:.3f}-{b['ci_high']:.3f})**, against the naive best CV {b['naive_best_cv']:.3f}, which is "
        f"optimistic (the best of {metrics['trials_completed']} noisy means).{accuracy} BBC-CV (Tsamardinos et al. "
        f"2018) at the subject level: {b['n_bootstrap']} resamples of the {metrics['subjects']} search subjects; in "
        "each, the rule chooses on the drawn subjects' out-of-fold predictions and the choice is scored on the "
        "subjects not drawn. "
        + (
            "It scores the choice at the trials' fidelity (one model per fold, no refit); the final model, retrained "
            "at its own settings (below), may score differently. "
            if result.fidelity == "low"
            else "It scores the choice at the trials' fidelity, the configuration's own settings. "
        )
        + "It corrects for the choice among the trials, not for how they came to be: the sampler proposed and the "
        "pruner removed configurations having seen every search subject, so the estimate may still lean "
        "optimistic; a nested search (`--outer loso`) measures how far (its report's BBC-CV against outer scores).",
        *_guard_lines(metrics),
        *(
            [
                f"**Note: the base configuration's trial did not complete, so `{result.selection.rule}` had no base to "
                "keep and took the best mean.**"
            ]
            if metrics["base"] is None and result.selection.rule == "guard"
            else []
        ),
        "",
        "What each rule would have chosen from the same trials:",
        "",
        *rules,
        "",
        "### Did the search help?",
        "",
        "The final choice against the base and seed configurations and the same-input baselines on the search "
        "subjects. BBC-CV gain: the out-of-bag difference on the subjects the choice did not see (honest). Out-of-fold "
        "difference and paired Wilcoxon tests over subjects: on every search subject, optimistic for the final "
        "choice, which was made on them; p-values Holm-corrected over the comparisons; a difference is a tie "
        "unless its corrected p < 0.05 (marked *).",
        "",
        *gains,
        "",
        f"Per search subject ({m}, out of fold; the final choice's scores are optimistic):",
        "",
        *subjects,
        "",
        "### The estimate against the number of trials",
        "",
        f"The first t completed trials (in the order they started), the same rule; {result.curve[-1]['n_bootstrap']} "
        "resamples per point. Where the BBC-CV estimate stops rising, more trials stop paying.",
        "",
        *curve,
        "",
        "![BBC-CV against trials](bbc_curve.png)",
        "",
    ]


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
                *[f"| {m} | {_pm(v)} |" for m, v in summary.items()],
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
