"""Stage 5: results -> files a researcher reads (metrics.json, folds.csv, report.md, ...). Reads results and
writes files only (figures in emoma.plots); every file is written to a temporary name, then renamed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from emoma.config import Config, save_config
from emoma.cv import METRICS, CVResult
from emoma.data import Table
from emoma.files import atomic_path, write_atomic
from emoma.folds import FoldPlan
from emoma.metrics import evaluate, paired_wilcoxon
from emoma.plots import plot_confusion, plot_importances, plot_learning_curves, plot_search_history
from emoma.space import describe

if TYPE_CHECKING:
    from emoma.search import SearchResult

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
    plot_confusion(result.confusion, result.class_names, out / "confusion_matrix.png",
                   title=f"{config.name}: pooled over {len(result.folds)} {result.scheme} test folds")
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
        "protocol": {"scheme": result.scheme, "description": PROTOCOLS[result.scheme], "folds": len(result.folds),
                     "subject_wise": plan.subject_wise, "notes": result.notes, "plan_key": plan.key,
                     "early_stopping_metric": config.train.metric, "refit": config.train.refit},
        "summary": result.summary(),
        "evaluation": evaluation,
        "confusion_matrix": result.confusion.tolist(),
        "class_names": result.class_names,
        "folds": [{"fold": f.index + 1, "test_subjects": f.test_subjects, **f.metrics, "epochs_run": f.epochs_run,
                   "best_epoch": f.best_epoch, "seconds": f.seconds, "baselines": f.baselines}
                  for f in result.folds],
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
    context = ("the current window only" if k == 1 else
               f"the current window and the {k - 1} before it of the same subject, never across a time gap of more "
               "than two window lengths; before the start of a run the missing windows are masked out of the "
               "CNN-LSTM (classical baselines see the run's first window repeated)")
    normalisation = NORMALISATION[table.normalisation]
    if table.normalisation == "causal":
        normalisation += f"; warm-up: z-scores shrunk by n/{config.data.norm_warmup} while they rest on n windows"
    s = config.model.smooth
    smoothing = ("none" if s == 1 else
                 f"each window's predicted probabilities averaged with those of the {s - 1} test windows before it of "
                 "the same subject and run (causal), for the CNN-LSTM and the baselines alike; the best epoch is "
                 "chosen on unsmoothed validation windows")
    n = config.model.ensemble
    ensemble = ("one CNN-LSTM per fold" if n == 1 else
                f"{n} CNN-LSTMs per fold, each trained from its own seed (each with its own best epoch); their class "
                "probabilities averaged")
    return {"time_order": table.time_order, "context_windows": k, "context": context,
            "subject_normalisation": table.normalisation, "normalisation": normalisation,
            "smooth_windows": s, "smoothing": smoothing, "ensemble_members": n, "ensemble": ensemble}


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
        rows = table.row_ids[f.test_rows] if table.row_ids is not None else f.test_rows
        frame = pd.DataFrame({"row": rows, "subject": table.groups[f.test_rows], "fold": f.index + 1,
                              "true": np.array(table.class_names)[table.y[f.test_rows]],
                              "predicted": np.array(table.class_names)[f.y_pred]})
        for c, name in enumerate(table.class_names):
            frame[f"p_{name}"] = f.proba[:, c]
        frames.append(frame)
    return pd.concat(frames).sort_values("row")


REFIT = ("; then each model trained again from its seed on the training and validation rows for its best epoch "
         "count (refit), the baselines fitted on the same rows")


def _search_refit(result, config: Config) -> str:
    if "train.refit" in result.space:
        return "; whether each model is refit on training + validation rows is searched (train.refit)"
    if not config.train.refit:
        return ""
    seed = "" if result.seed_config.train.refit else " (not the seed trial: it trains as the seed configuration)"
    return ("; each sampled trial's models refit on their fold's training + validation rows for their best epoch "
            f"count{seed}")


def _seed_refit(result) -> str:
    refit = result.seed_config.train.refit
    if refit == result.best_config.train.refit:
        return ""
    return f" (the seed configuration {'with' if refit else 'without'} the refit)"


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


def markdown_report(result: CVResult, table: Table, plan: FoldPlan, config: Config, evaluation: dict) -> str:
    data = data_summary(table)
    inputs = inputs_summary(table, config)
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
        *[f"- **WARNING: {note}**" for note in result.notes],
        "",
        "## Result (mean ± std over folds)",
        "",
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


def evaluation_sections(evaluation: dict, class_names: list[str], heading: str = "##") -> list[str]:
    """Markdown of `emoma.metrics.evaluate`: over subjects with CIs, paired tests, AUCs, per class, per subject."""
    models = evaluation["models"]
    n = next(iter(models.values()))["ci"]["accuracy"]["n"]
    auc_keys = list(next(iter(models.values()))["auc"])
    head = "| model | " + " | ".join(f"{m} (95 % CI)" for m in METRICS) + " | " + " | ".join(auc_keys) + " |"
    rows = [head, "|---|" + "---|" * (len(METRICS) + len(auc_keys))]
    for name, model in models.items():
        cis = [f"{c['mean']:.3f} ({c['ci_low']:.3f}-{c['ci_high']:.3f})" for c in (model["ci"][m] for m in METRICS)]
        rows.append(f"| {name} | " + " | ".join(cis) + " | " + " | ".join(f"{model['auc'][k]:.3f}" for k in auc_keys)
                    + " |")
    reference = evaluation["wilcoxon"]["reference"]
    tests = ["| against | metric | median difference | W | p | subjects (non-zero differences) |",
             "|---|---|---|---|---|---|"]
    for name, by_metric in evaluation["wilcoxon"]["against"].items():
        for m, t in by_metric.items():
            tests.append(f"| {name} | {m} | {t['median_diff']:+.3f} | {t['statistic']:.1f} | {t['p_value']:.4f} | "
                         f"{t['n']} ({t['n_nonzero']}) |")
    per_class_rows = ["| model | " + " | ".join(f"{c} F1 / recall" for c in class_names) + " |",
                      "|---|" + "---|" * len(class_names)]
    for name, model in models.items():
        per_class_rows.append(f"| {name} | " + " | ".join(
            f"{model['per_class'][c]['f1']:.3f} / {model['per_class'][c]['recall']:.3f}" for c in class_names) + " |")
    subjects = list(next(iter(models.values()))["subjects"])
    per_subject_rows = ["| subject | " + " | ".join(f"{name} acc / F1" for name in models) + " |",
                        "|---|" + "---|" * len(models)]
    for s in subjects:
        per_subject_rows.append(f"| {s} | " + " | ".join(
            f"{m['subjects'][s]['accuracy']:.3f} / {m['subjects'][s]['macro_f1']:.3f}" for m in models.values()) + " |")
    return [
        f"{heading} Over subjects ({n}): mean with bootstrap 95 % CI; pooled AUCs",
        "",
        "A subject's score is computed over its own test windows (macro-F1 over the classes that subject shows or is "
        "predicted); the CI is scipy's BCa bootstrap of the mean over subjects; ROC-AUC and PR-AUC pool every test "
        "window (binary: the positive class; more classes: one-vs-rest macro ROC-AUC); roc_auc_subject_mean is the "
        "mean of each subject's own ROC-AUC (binary, subjects with both classes).",
        "",
        *rows,
        "",
        f"{heading} Paired Wilcoxon signed-rank tests over subjects: {reference} against each other model",
        "",
        "Two-sided, subjects with equal scores dropped (scipy's zero_method='wilcox'); a positive difference means "
        f"{reference} scored higher. No correction for the several comparisons: read each p-value on its own.",
        "",
        *tests,
        "",
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
    """Write best_config.yaml, trials.csv, holdout_metrics.json, holdout_predictions.csv, confusion_matrix.png,
    search_history.png, param_importance.png and report.md into the experiment's local folder; returns it.
    (The caller saves the model.)"""
    out = result.folder
    save_config(result.best_config, out / "best_config.yaml")
    trials = trials_frame(result)
    write_csv(trials, out / "trials.csv")
    best, seed = result.held["best"], result.held["seed"]
    evaluation = holdout_evaluation([holdout_predictions(result)], result.class_names)
    write_atomic(out / "holdout_metrics.json", json.dumps({
        "subjects": [str(s) for s in result.holdout_subjects], "windows": best.result.n_test,
        "metrics": best.result.metrics, "confusion_matrix": best.result.confusion.tolist(),
        "class_names": result.class_names, "baselines": best.result.baselines, "seed_config": seed.result.metrics,
        "features": best.result.features, "epochs_run": best.result.epochs_run,
        "best_epoch": best.result.best_epoch, "cv_best": result.best.mean, "best_params": result.best.params,
        "evaluation": evaluation, "best_vs_seed_cv": best_vs_seed_cv(result)}, indent=2, default=str))
    write_csv(holdout_predictions(result), out / "holdout_predictions.csv")
    plot_confusion(best.result.confusion, result.class_names, out / "confusion_matrix.png",
                   title=f"best configuration on held-out subjects {', '.join(map(str, result.holdout_subjects))}")
    plot_search_history(trials, result.metric, out / "search_history.png")
    if result.importances:
        plot_importances(result.importances, out / "param_importance.png")
    write_atomic(out / "report.md", search_markdown(result, config, trials, evaluation))
    return out


BEST, SEED = "CNN-LSTM (best)", "CNN-LSTM (seed config)"


def holdout_predictions(result: SearchResult) -> pd.DataFrame:
    """One row per held-out window: subject, true class index, and each model's class probabilities."""
    best, seed = result.held["best"], result.held["seed"]
    frame = pd.DataFrame({"subject": [str(s) for s in best.groups], "true": best.y})
    probas = {BEST: best.result.proba, SEED: seed.result.proba, **best.result.baseline_proba}
    for name, proba in probas.items():
        for c, cls in enumerate(result.class_names):
            frame[f"{name}|{cls}"] = proba[:, c]
    return frame


def holdout_evaluation(frames: list[pd.DataFrame], class_names: list[str]) -> dict:
    """`emoma.metrics.evaluate` of held-out predictions (one frame per search, e.g. per outer fold of a nested
    search): the retrained best, the retrained seed configuration and the baselines, tested against the best."""
    frame = pd.concat(frames, ignore_index=True)
    models = list(dict.fromkeys(c.split("|")[0] for c in frame.columns if "|" in c))
    probas = {m: frame[[f"{m}|{c}" for c in class_names]].to_numpy() for m in models}
    return evaluate(frame["subject"].to_numpy(), frame["true"].to_numpy(), probas, class_names, reference=BEST)


def best_vs_seed_cv(result: SearchResult) -> dict | None:
    """Paired Wilcoxon test of the best against the seed configuration on the search's own CV folds
    (optimistic for the best: it was chosen on these folds)."""
    seed = result.seed_trial
    if seed is None or seed.status != "completed" or seed is result.best:
        return None
    folds = sorted(result.best.fold_scores)
    return paired_wilcoxon([result.best.fold_scores[f] for f in folds], [seed.fold_scores[f] for f in folds])


def trials_frame(result: SearchResult) -> pd.DataFrame:
    seed = result.seed_trial.trial_id if result.seed_trial else None
    return trials_table(result.trials, len(result.plan.folds), seed)


def trials_table(trials: list, n_folds: int, seed_trial: str | None) -> pd.DataFrame:
    """One row per trial (TrialRecord): status, the rule that stopped it, mean ± std, parameters, fold scores."""
    rows = []
    for t in trials:
        row = {"trial": t.trial_id, "status": t.status, "stopped_by": t.stopped_by,
               "seed_config": t.trial_id == seed_trial, "mean": t.mean, "std": t.std,
               "folds_done": len(t.fold_scores), "seconds": round(t.seconds, 2), "node": t.node,
               **{f"param.{k}": v for k, v in sorted(t.params.items())}}
        row.update({f"fold_{i + 1}": t.fold_scores.get(i) for i in range(n_folds)})
        rows.append(row)
    return pd.DataFrame(rows)


def live_report(name: str, metric: str, trials: pd.DataFrame, num_samples: int) -> str:
    """The report while a search runs: trials so far, best so far, the history plot."""
    completed = trials[trials["status"] == "completed"].sort_values("mean", ascending=False)
    params = [c for c in trials.columns if c.startswith("param.")]
    top = completed[["trial", "mean", "std", *params]].head(10).rename(columns=lambda c: c.removeprefix("param."))
    best = (f"{completed['mean'].iloc[0]:.4f} ± {completed['std'].iloc[0]:.4f} (trial {completed['trial'].iloc[0]})"
            if len(completed) else "none yet (no trial has run every fold)")
    return "\n".join([
        f"# Search report: {name} (in progress)",
        "",
        f"Refreshed after every finished or pruned trial; the full report replaces this page when the search ends. "
        f"{len(trials)} of {num_samples} trials finished: {len(completed)} completed, "
        f"{int((trials['status'] == 'pruned').sum())} pruned, {int((trials['status'] == 'error').sum())} errored.",
        "",
        f"Best so far (mean {metric} over every fold): {best}",
        "",
        markdown_table(top) if len(top) else "",
        "",
        "![search history](search_history.png)",
        "",
    ])


def format_search_summary(result: SearchResult) -> str:
    best, seed = result.held["best"].result, result.held["seed"].result
    completed = result.completed
    lines = [
        f"{len(result.trials)} trials ({len(completed)} completed, "
        f"{sum(t.status == 'pruned' for t in result.trials)} pruned, "
        f"{sum(t.status == 'error' for t in result.trials)} errored) in {result.seconds:.0f} s",
        f"best CV {result.metric}: {result.best.mean:.4f} ± {result.best.std:.4f} (trial {result.best.trial_id})",
    ]
    if result.seed_trial is not None and result.seed_trial.status == "completed":
        lines.append(f"seed configuration CV {result.metric}: {result.seed_trial.mean:.4f} ± {result.seed_trial.std:.4f}")
    subjects = ", ".join(map(str, result.holdout_subjects))
    lines.append(f"held-out subjects {subjects}, best: " + "  ".join(f"{m} {v:.4f}" for m, v in best.metrics.items()))
    lines.append(f"held-out subjects {subjects}, seed configuration: "
                 + "  ".join(f"{m} {v:.4f}" for m, v in seed.metrics.items()))
    return "\n".join(lines + [f"WARNING: {n}" for n in result.notes if "kfold" in n])


def search_markdown(result: SearchResult, config: Config, trials: pd.DataFrame, evaluation: dict) -> str:
    best, seed_held = result.held["best"].result, result.held["seed"].result
    completed = trials[trials["status"] == "completed"].sort_values("mean", ascending=False)
    params = [c for c in trials.columns if c.startswith("param.")]
    top = completed[["trial", "mean", "std", *params]].head(10).rename(columns=lambda c: c.removeprefix("param."))
    seed = result.seed_trial
    space = "\n".join(f"- `{k}`: {describe(d)}" for k, d in result.space.items())
    importances = "\n".join(f"| {k} | {v:.3f} |" for k, v in result.importances.items())
    pruning = {"wilcoxon": f"trials stopped early by a one-sided Wilcoxon signed-rank test against the best "
                           f"complete trial on the same folds (p < {config.search.wilcoxon_p}, after "
                           f"{config.search.grace_folds} folds); ",
               "asha": f"ASHA over folds (grace {config.search.grace_folds} folds); ", "none": ""}[result.pruner]
    lines = [
        f"# Search report: {result.name}",
        "",
        "## Data and protocol",
        f"- source: `{config.data.path or 'synthetic'}`; "
        f"task {config.data.task}; classes {', '.join(result.class_names)}",
        f"- held out of the whole search (never seen by any trial): subjects "
        f"{', '.join(map(str, result.holdout_subjects))}",
        f"- search subjects: {', '.join(map(str, result.search_subjects))}",
        f"- each trial: {PROTOCOLS[result.plan.scheme]}, {len(result.plan.folds)} folds over the search subjects; "
        "scaler and RFE fitted on each fold's training rows; one fold plan per subject normalisation shared by "
        f"every trial; folds in one order for every trial{_search_refit(result, config)}",
        f"- objective: mean {result.metric} over folds (also the early-stopping metric); {pruning}the best is "
        "chosen among trials that completed every fold",
        *[f"- note: {n}" for n in result.notes],
        "",
        "## Search space",
        space,
        "",
        "## Trials",
        f"{len(result.trials)} trials: {len(completed)} completed, {int((trials['status'] == 'pruned').sum())} "
        f"pruned, {int((trials['status'] == 'error').sum())} errored; {result.seconds:.0f} s in all. "
        "Every trial is in `trials.csv` (`stopped_by` says which rule stopped a pruned trial).",
        "",
        "- seed configuration: " + (f"{seed.mean:.4f} ± {seed.std:.4f} ({seed.status})" if seed else "not run"),
        f"- best: {result.best.mean:.4f} ± {result.best.std:.4f} (trial {result.best.trial_id})",
        "",
        "### Top 10 completed trials",
        "",
        markdown_table(top),
        "",
        "![search history](search_history.png)",
        "",
        "### Parameter importance (Optuna's default evaluator)",
        "",
        ("| parameter | importance |\n|---|---|\n" + importances) if importances else "too few completed trials",
        "",
        "## Best and seed configurations, retrained on all search subjects, scored once on the held-out subjects",
        "",
        f"Early stopping on held-out search subjects; the best ran {best.epochs_run} epochs, best epoch "
        f"{best.best_epoch}{REFIT if result.best_config.train.refit else ''}"
        f"{_seed_refit(result)}. Configuration: `best_config.yaml`; model: `best_model.pt` "
        "(`python -m emoma.predict --model best_model.pt --data new.csv --out predictions.csv`); every held-out "
        "window's probabilities: `holdout_predictions.csv`.",
        "",
        metrics_table({BEST: best.metrics, SEED: seed_held.metrics, **best.baselines}),
        "",
        confusion_table(result.class_names, best.confusion),
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        *evaluation_sections(evaluation, result.class_names, heading="###"),
        *_best_vs_seed_lines(result),
    ]
    return "\n".join(lines)


def _best_vs_seed_lines(result: SearchResult) -> list[str]:
    test = best_vs_seed_cv(result)
    if test is None:
        return []
    return ["### Best against the seed configuration on the search's CV folds", "",
            f"Paired Wilcoxon signed-rank over the {test['n']} folds of {result.metric}: median difference "
            f"{test['median_diff']:+.3f}, W = {test['statistic']:.1f}, p = {test['p_value']:.4f}. Optimistic for the "
            "best, which was chosen on these folds; the held-out comparison above is the honest one.", ""]


def write_nested_outputs(outer_folders: list[Path], out_dir: str | Path) -> Path:
    """nested_metrics.json, confusion_matrix.png and report.md over the outer folds of a nested search, read from
    each outer fold's holdout_metrics.json and holdout_predictions.csv."""
    out = Path(out_dir)
    held = [json.loads((f / "holdout_metrics.json").read_text()) for f in outer_folders]
    class_names = held[0]["class_names"]
    rows = [{"subject": h["subjects"][0], "cv_best": h["cv_best"], **h["metrics"],
             **{f"seed_{m}": h["seed_config"][m] for m in METRICS}} for h in held]
    frame = pd.DataFrame(rows)
    confusion = np.sum([h["confusion_matrix"] for h in held], axis=0)
    summary = {m: {"mean": float(frame[m].mean()), "std": float(frame[m].std(ddof=0))} for m in METRICS}
    evaluation = holdout_evaluation([pd.read_csv(f / "holdout_predictions.csv", dtype={"subject": str})
                                     for f in outer_folders], class_names)
    chosen = pd.DataFrame([{"subject": h["subjects"][0], **h["best_params"]} for h in held])
    write_atomic(out / "nested_metrics.json", json.dumps(
        {"outer_folds": rows, "summary": summary, "confusion_matrix": confusion.tolist(), "class_names": class_names,
         "chosen": chosen.to_dict(orient="records"), "evaluation": evaluation}, indent=2, default=str))
    plot_confusion(confusion, class_names, out / "confusion_matrix.png",
                   title=f"nested LOSO: pooled over {len(held)} held-out subjects")
    write_atomic(out / "report.md", "\n".join([
        "# Nested cross-validation report",
        "",
        "Each outer fold holds one subject out of the whole search (search, selection, retraining) and scores "
        "the retrained best configuration on it once: the mean below estimates how the whole procedure "
        "generalises to a new person.",
        "",
        "| metric | mean ± std over outer folds |",
        "|---|---|",
        *[f"| {m} | {_pm(v)} |" for m, v in summary.items()],
        "",
        markdown_table(frame),
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "The configuration each outer fold chose:",
        "",
        markdown_table(chosen),
        "",
        "The seed configuration and the baselines below were retrained on the same search subjects of each outer "
        "fold (baselines on the best configuration's inputs) and scored on the same held-out subject.",
        "",
        *evaluation_sections(evaluation, class_names),
    ]))
    return out
