"""A search's files: trials.csv, search_metrics.json, holdout_metrics.json, holdout_predictions.csv, the final
config, report.md and the figures; the live report of a running search; the console summary."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import yaml

from emoma.config import METRICS, Config, save_config
from emoma.files import write_atomic
from emoma.metrics import MIN_HOLDOUT_SUBJECTS, MIN_TEST_SUBJECTS, evaluate, per_subject
from emoma.plots import plot_bbc_curve, plot_confusion, plot_importances, plot_search_history
from emoma.results import BASE, FINAL, HELD_NAMES
from emoma.select import describe_choice
from emoma.space import describe

if TYPE_CHECKING:
    from emoma.results import SearchResult
from emoma.report.common import (
    BASELINE_TEXT,
    PROTOCOLS,
    REFIT,
    confusion_table,
    evaluation_sections,
    markdown_table,
    metrics_table,
    p_text,
    trial_fidelity,
    write_csv,
)


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
        f"every trial; folds in one order for every trial{trial_fidelity(result, config)}",
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
            f"{o['ci_high']:+.3f}) | {p_text(o['p_value'])} | {p_text(o['p_holm'])}{verdict} |"
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
