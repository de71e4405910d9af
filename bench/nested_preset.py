"""Choose configs/context.yaml without scoring it on the subjects it is reported on: nested selection.

A few candidate settings, fixed before any real-table score was seen, are compared. For each outer subject,
every candidate is cross-validated (subject-wise k-fold) on the other subjects, binary and 3-class; the
candidate with the best mean inner macro-F1 over both tasks is retrained on those subjects and scored once on
the outer subject, on both tasks, beside the same-input baselines. The mean over outer subjects estimates the
whole procedure (selection included) on a new person, and the choices show whether the real table would pick
another candidate than A (configs/context.yaml, chosen on synthetic tables only). The JSON is rewritten after
every outer subject, so a partial run keeps what it measured; --outers runs some subjects only.

Usage: python bench/nested_preset.py --data ../shared/data/wesad_merged.csv [--inner-folds 5] [--outers 15 16]
"""
import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from emoma.config import apply_overrides, load_config
from emoma.context import normalise_subjects
from emoma.cv import run_cv
from emoma.data import load_table
from emoma.folds import make_plan
from emoma.holdout import retrain_and_score, subset
from emoma.metrics import evaluate

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("binary", "3class")
# Fixed before any real-table score of them was seen; "A" is configs/context.yaml as chosen on synthetic tables.
CANDIDATES = {
    "A": {},
    "A + class weights": {"train.class_weights": True},
    "A + all features": {"model.n_features": 0},
    "A + 6 windows": {"model.context": 6},
}


def inner_score(table, config) -> float:
    plan = make_plan(table, config.cv, config.seed)
    return run_cv(table, plan, config, progress=False).summary()["macro_f1"]["mean"]


def choose(tables: dict, configs: dict) -> tuple[str, dict]:
    """The candidate with the best mean inner macro-F1 over the tasks; every candidate's scores."""
    scores = {name: {task: inner_score(tables[task], configs[task][name]) for task in TASKS} for name in CANDIDATES}
    best = max(scores, key=lambda name: np.mean(list(scores[name].values())))
    return best, scores


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--inner-folds", type=int, default=5)
    p.add_argument("--out", default="results/bench/nested_preset.json")
    p.add_argument("--outers", nargs="+", help="outer subjects to run (default: all)")
    args = p.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    base = load_config(ROOT / "configs" / "context.yaml", [f"data.path={args.data}", "cv.scheme=group-kfold",
                                                           f"cv.folds={args.inner_folds}"])
    configs = {task: {name: apply_overrides(base, {"data.task": task, **overrides})
                      for name, overrides in CANDIDATES.items()} for task in TASKS}
    tables = {task: normalise_subjects(load_table(replace(base.data, task=task)), base.data) for task in TASKS}
    subjects = [s for s in tables["binary"].subjects if not args.outers or str(s) in args.outers]
    outer, predictions = [], {task: [] for task in TASKS}
    for s in subjects:
        inner_tables = {task: subset(t, np.flatnonzero(t.groups != s)) for task, t in tables.items()}
        chosen, scores = choose(inner_tables, configs)
        row = {"subject": str(s), "chosen": chosen, "inner": scores}
        for task in TASKS:
            held = retrain_and_score({base.data.subject_norm: tables[task]}, [s], {"chosen": configs[task][chosen]},
                                     configs[task][chosen], baselines_for="chosen")["chosen"]
            row[task] = {"CNN-LSTM": held.result.metrics, **held.result.baselines}
            predictions[task].append((held.groups, held.y, {"CNN-LSTM": held.result.proba,
                                                            **held.result.baseline_proba}))
        outer.append(row)
        Path(args.out).write_text(json.dumps({"candidates": CANDIDATES, "outer": outer}, indent=2, default=str))
        print(f"outer {s}: chose {chosen}; binary {row['binary']['CNN-LSTM']['macro_f1']:.3f}, "
              f"3-class {row['3class']['CNN-LSTM']['macro_f1']:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    evaluation = {}
    for task in TASKS:
        groups = np.concatenate([g for g, _, _ in predictions[task]])
        y = np.concatenate([y for _, y, _ in predictions[task]])
        probas = {m: np.concatenate([p[m] for _, _, p in predictions[task]]) for m in predictions[task][0][2]}
        evaluation[task] = evaluate(groups, y, probas, tables[task].class_names)
    favourite, scores = choose(tables, configs)
    result = {"candidates": CANDIDATES, "inner_folds": args.inner_folds, "outer": outer, "evaluation": evaluation,
              "all_subjects_choice": favourite, "all_subjects_inner": scores, "seconds": time.perf_counter() - start}
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    for task in TASKS:
        models = evaluation[task]["models"]
        print(f"\n{task}: nested estimate over {len(subjects)} outer subjects (mean, 95 % CI)")
        for name, model in models.items():
            ci = {m: model["ci"][m] for m in ("accuracy", "macro_f1")}
            tests = evaluation[task]["wilcoxon"]["against"].get(name, {}).get("macro_f1")
            test = f"  Wilcoxon vs CNN-LSTM p={tests['p_value']:.3f}" if tests else ""
            print(f"  {name:<20} accuracy {ci['accuracy']['mean']:.3f} ({ci['accuracy']['ci_low']:.3f}-"
                  f"{ci['accuracy']['ci_high']:.3f})  macro-F1 {ci['macro_f1']['mean']:.3f} "
                  f"({ci['macro_f1']['ci_low']:.3f}-{ci['macro_f1']['ci_high']:.3f}){test}")
    print(f"\nthe same selection on all subjects picks: {favourite} (inner scores: {scores}); "
          f"{result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
