"""Every selection rule scored by nested CV and by BBC-CV from one nested search (`search.py --outer loso`).

A nested search keeps, in each outer fold, every trial's out-of-fold predictions on its inner folds. So every
rule (best, one-se, guard, ensemble) can make its own choice there afterwards; this script retrains each
rule's choice at the configuration's own settings on that outer fold's search subjects (as search.py does;
choices already retrained by the run, or shared by rules, are trained once) and scores it on the outer
subject. Per rule it reports the nested estimate (mean over outer subjects of accuracy and macro-F1), the mean
of the outer folds' own BBC-CV estimates of that rule beside it, and paired Wilcoxon tests over subjects of
each rule against the base configuration and the same-input baselines (Holm-corrected over the comparisons).

Usage: python bench/compare_rules.py results/search/NESTED [--out results/bench/rules-NESTED.json]
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emoma.config import SELECTION_RULES, from_dict  # noqa: E402
from emoma.holdout import combine, retrain_and_score  # noqa: E402
from emoma.manifest import Manifest  # noqa: E402
from emoma.metrics import holm, paired_wilcoxon, per_subject  # noqa: E402
from emoma.search import prepare_experiment  # noqa: E402
from emoma.select import OOFStore, TrialJudge  # noqa: E402
from emoma.space import space_from_dict  # noqa: E402
from emoma.watch import read_trials  # noqa: E402

METRICS = ("accuracy", "macro_f1")


def outer_fold(folder: Path) -> dict:
    """Each rule's choice in one outer fold, retrained and scored on its held-out subject."""
    manifest = Manifest.from_json((folder / "manifest.json").read_text(), str(folder))
    config, seed_config = from_dict(manifest.config), from_dict(manifest.seed_config)
    space = space_from_dict(manifest.space, config)
    exp = prepare_experiment(config, space, seed_config, folder.parent, folder.name, True, lambda *a: None)
    trials = list(read_trials(folder / "trials.csv").values())
    store = OOFStore.load(folder)
    table = next(iter(exp.search_tables.values()))
    judge = TrialJudge(store, exp.trial_configs(config), exp.base_point, exp.seed_point, config.search,
                       len(table.feature_names), config.seed)
    choices = {rule: judge.choice(trials, rule) for rule in SELECTION_RULES}
    params = {t.trial_id: t.params for t in trials}
    configs = {f"{rule} {t}": exp.trial_configs(config)(params[t]) for rule, w in choices.items() for t in w}
    held = retrain_and_score(exp.tables, exp.holdout, configs, config)
    n_classes = len(table.class_names)
    scored = {}
    for rule, weights in choices.items():
        final = combine([held[f"{rule} {t}"] for t in weights], list(weights.values()), n_classes)
        scored[rule] = per_subject(final.groups, final.y, final.result.y_pred, n_classes)
    reference = pd.read_csv(folder / "holdout_predictions.csv", dtype={"subject": str})
    y, groups = reference["true"].to_numpy(), reference["subject"].to_numpy()
    for name in dict.fromkeys(c.split("|")[0] for c in reference.columns if "|" in c):
        if name.startswith("CNN-LSTM (final)"):
            continue
        proba = reference[[f"{name}|{c}" for c in table.class_names]].to_numpy()
        scored[name] = per_subject(groups, y, proba.argmax(1), n_classes)
    bbc = json.loads((folder / "search_metrics.json").read_text())["rules"]
    return {"subject": manifest.holdout_subjects[0], "choices": choices, "scores": scored,
            "bbc_cv": {rule: bbc[rule]["bbc_cv"] for rule in SELECTION_RULES}}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("nested", type=Path, help="the folder of a nested search (search.py --outer loso)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    folds = sorted(args.nested.glob("outer-*"), key=lambda f: f.name)
    rows = []
    for folder in folds:
        rows.append(outer_fold(folder))
        print(f"{folder.name}: " + ", ".join(f"{r} {len(w)} trial(s)" for r, w in rows[-1]["choices"].items()),
              flush=True)
    metric = json.loads((folds[0] / "search_metrics.json").read_text())["metric"]
    subjects = [r["subject"] for r in rows]
    models = list(rows[0]["scores"])
    score = {name: {m: np.array([next(iter(r["scores"][name].values()))[m] for r in rows]) for m in METRICS}
             for name in models}
    summary = {}
    print(f"\n{len(rows)} outer subjects; nested estimate = mean over outer subjects; BBC-CV = mean of the outer "
          f"folds' own estimates ({metric}); p: paired Wilcoxon over subjects, Holm over the comparisons of a rule\n")
    print("| rule | nested accuracy | nested macro-F1 | mean BBC-CV | BBC-CV - nested | distinct choices "
          "| against base: p (Holm) | against LDA / LR / RF: p (Holm) |")
    print("|---|---|---|---|---|---|---|---|")
    references = [n for n in models if n not in SELECTION_RULES and "seed" not in n]
    for rule in SELECTION_RULES:
        estimate = float(np.mean([r["bbc_cv"][rule][metric]["estimate"] for r in rows]))
        tests = {n: paired_wilcoxon(score[rule]["macro_f1"], score[n]["macro_f1"]) for n in references}
        corrected = dict(zip(tests, holm([t["p_value"] for t in tests.values()])))
        distinct = len({json.dumps(r["choices"][rule], sort_keys=True) for r in rows})
        summary[rule] = {"accuracy": float(score[rule]["accuracy"].mean()),
                         "macro_f1": float(score[rule]["macro_f1"].mean()), "bbc_cv": estimate,
                         "tests": {n: {**t, "p_holm": corrected[n]} for n, t in tests.items()}}
        base = next(n for n in references if "base" in n)
        others = " / ".join(f"{corrected[n]:.3f}" for n in references if n != base)
        print(f"| {rule} | {summary[rule]['accuracy']:.3f} | {summary[rule]['macro_f1']:.3f} | {estimate:.3f} | "
              f"{estimate - score[rule][metric].mean():+.3f} | {distinct} | {corrected[base]:.3f} | {others} |")
    for name in models:
        if name not in SELECTION_RULES:
            print(f"| ({name}) | {score[name]['accuracy'].mean():.3f} | {score[name]['macro_f1'].mean():.3f} | | | | | |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"subjects": subjects, "summary": summary, "outer_folds": rows}, indent=2,
                                       default=str))


if __name__ == "__main__":
    main()
