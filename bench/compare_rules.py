"""Every selection rule scored on held-out subjects and by BBC-CV, from one finished search or a nested one.

A search keeps every trial's out-of-fold predictions, so every rule (best, one-se, guard, ensemble) can make
its own choice afterwards; this script retrains each rule's choice at the configuration's own settings on the
search subjects (as search.py does; choices shared by rules are trained once) and scores it on the held-out
subjects. Given a nested search (`search.py --outer loso`) it does so in every outer fold: the nested estimate
of each rule. Per rule it reports the mean over held-out subjects of accuracy and macro-F1, the mean of the
searches' own BBC-CV estimates of that rule beside it, and paired Wilcoxon tests over subjects against the base
configuration and the same-input baselines (Holm-corrected over the comparisons; only with 6 or more subjects).

Usage: python bench/compare_rules.py results/search/NAME [--out results/bench/rules-NAME.json]
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emoma.config import SELECTION_RULES, from_dict  # noqa: E402
from emoma.holdout import combine, retrain_and_score  # noqa: E402
from emoma.manifest import Manifest  # noqa: E402
from emoma.metrics import MIN_TEST_SUBJECTS, holm, paired_wilcoxon, score  # noqa: E402
from emoma.results import OOFStore  # noqa: E402
from emoma.select import TrialJudge  # noqa: E402
from emoma.space import space_from_dict  # noqa: E402
from emoma.tune.search import prepare_experiment  # noqa: E402
from emoma.tune.watch import read_trials  # noqa: E402

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def outer_fold(folder: Path) -> dict:
    """Each rule's choice in one search (an outer fold), retrained and scored on its held-out subjects."""
    manifest = Manifest.from_json((folder / "manifest.json").read_text(), str(folder))
    config, seed_config = from_dict(manifest.config), from_dict(manifest.seed_config)
    space = space_from_dict(manifest.space, config)
    exp = prepare_experiment(config, space, seed_config, folder.parent, folder.name, True, lambda *a: None)
    trials = list(read_trials(folder / "trials.csv").values())
    store = OOFStore.load(folder)
    table = next(iter(exp.search_tables.values()))
    judge = TrialJudge(
        store,
        exp.trial_configs(config),
        exp.base_point,
        exp.seed_point,
        config.search,
        len(table.feature_names),
        config.seed,
    )
    choices = {rule: judge.choice(trials, rule) for rule in SELECTION_RULES}
    params = {t.trial_id: t.params for t in trials}
    configs = {f"{rule} {t}": exp.trial_configs(config)(params[t]) for rule, w in choices.items() for t in w}
    held = retrain_and_score(exp.tables, exp.holdout, configs, config)
    n_classes = len(table.class_names)
    scored = {}
    for rule, weights in choices.items():
        final = combine([held[f"{rule} {t}"] for t in weights], list(weights.values()), n_classes)
        scored[rule] = subject_scores(final.groups, final.y, final.result.y_pred, n_classes)
    reference = pd.read_csv(folder / "holdout_predictions.csv", dtype={"subject": str})
    y, groups = reference["true"].to_numpy(), reference["subject"].to_numpy()
    for name in dict.fromkeys(c.split("|")[0] for c in reference.columns if "|" in c):
        if name.startswith("CNN-LSTM (final)"):
            continue
        proba = reference[[f"{name}|{c}" for c in table.class_names]].to_numpy()
        scored[name] = subject_scores(groups, y, proba.argmax(1), n_classes)
    bbc = json.loads((folder / "search_metrics.json").read_text())["rules"]
    return {"choices": choices, "scores": scored, "bbc_cv": {rule: bbc[rule]["bbc_cv"] for rule in SELECTION_RULES}}


def subject_scores(groups: np.ndarray, y: np.ndarray, pred: np.ndarray, n_classes: int) -> dict[str, dict]:
    """{subject: metrics} by the search's own definition (`emoma.metrics.score`: macro-F1 over every class), so
    that held-out scores and BBC-CV estimates compare like with like."""
    return {str(s): score(y[groups == s], pred[groups == s], n_classes)[0] for s in np.unique(groups)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", type=Path, help="a finished search, or a nested one (search.py --outer loso)")
    p.add_argument("--out", type=Path)
    p.add_argument("--jobs", type=int, default=2, help="outer folds retrained at once (one process each)")
    args = p.parse_args()
    folds = sorted(args.experiment.glob("outer-*"), key=lambda f: f.name) or [args.experiment]
    rows = Parallel(n_jobs=args.jobs)(delayed(outer_fold)(folder) for folder in folds)
    for folder, row in zip(folds, rows):
        print(f"{folder.name}: " + ", ".join(f"{r} {len(w)} trial(s)" for r, w in row["choices"].items()), flush=True)
    metric = json.loads((folds[0] / "search_metrics.json").read_text())["metric"]
    models = list(rows[0]["scores"])
    subjects = [s for r in rows for s in r["scores"][models[0]]]
    score = {
        name: {m: np.array([v[m] for r in rows for v in r["scores"][name].values()]) for m in METRICS}
        for name in models
    }
    tests = len(subjects) >= MIN_TEST_SUBJECTS
    summary = {}
    print(
        f"\n{len(rows)} search(es), {len(subjects)} held-out subjects; score = mean over held-out subjects; BBC-CV "
        f"= mean of the searches' own estimates ({metric}); p: paired Wilcoxon over subjects of macro-F1, Holm over "
        "the comparisons of a rule\n"
    )
    print(
        "| rule | accuracy | macro-F1 | mean BBC-CV | BBC-CV - held-out | distinct choices "
        "| against base: p (Holm) | against LDA / LR / RF: p (Holm) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    references = [n for n in models if n not in SELECTION_RULES and "seed" not in n]
    base = next(n for n in references if "base" in n)
    for rule in SELECTION_RULES:
        estimate = float(np.mean([r["bbc_cv"][rule][metric]["estimate"] for r in rows]))
        compared = (
            {n: paired_wilcoxon(score[rule]["macro_f1"], score[n]["macro_f1"]) for n in references} if tests else {}
        )
        corrected = dict(zip(compared, holm([t["p_value"] for t in compared.values()])))
        distinct = len({json.dumps(r["choices"][rule], sort_keys=True) for r in rows})
        summary[rule] = {
            "accuracy": float(score[rule]["accuracy"].mean()),
            "macro_f1": float(score[rule]["macro_f1"].mean()),
            "bbc_cv": estimate,
            "tests": {n: {**t, "p_holm": corrected[n]} for n, t in compared.items()},
        }
        others = " / ".join(f"{corrected[n]:.3f}" for n in references if n != base) if tests else "-"
        print(
            f"| {rule} | {summary[rule]['accuracy']:.3f} | {summary[rule]['macro_f1']:.3f} | {estimate:.3f} | "
            f"{estimate - score[rule][metric].mean():+.3f} | {distinct} | "
            f"{f'{corrected[base]:.3f}' if tests else '-'} | {others} |"
        )
    for name in models:
        if name not in SELECTION_RULES:
            print(
                f"| ({name}) | {score[name]['accuracy'].mean():.3f} | {score[name]['macro_f1'].mean():.3f} | | | | | |"
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"subjects": subjects, "summary": summary, "searches": rows}, indent=2, default=str)
        )


if __name__ == "__main__":
    main()
