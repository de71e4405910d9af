"""Choose configs/context.yaml without scoring it on the subjects it is reported on: nested selection.

A few candidate settings, fixed before any real-table score was seen, are compared. For each outer subject,
every candidate is cross-validated (subject-wise k-fold) on the other subjects, binary and 3-class; the
candidate with the best mean inner macro-F1 over both tasks is retrained on those subjects and scored once on
the outer subject, on both tasks, beside the same-input baselines. The mean over outer subjects estimates the
whole procedure (selection included) on a new person, and the choices show whether the real table would pick
another candidate than A (the preset chosen on synthetic tables only). The JSON is rewritten after
every outer subject, so a partial run keeps what it measured; --outers runs some subjects only.

`--smooth 1 3 5` makes every candidate a family: the candidate with its probabilities smoothed over that many
windows (model.smooth), all scored from the same inner run (smoothing does not change training); the chosen
candidate and smoothing are retrained and scored together. `--candidates A` limits the candidates.

`--select-only` runs the inner selections only (every outer subject's choice and the choice on all subjects);
`bench/nested_from_runs.py` then scores each choice from LOSO runs of the candidates (the same "trained on the
other subjects, scored on this one", without retraining per choice).

`--inner-set model.ensemble=1 train.refit=false` makes the inner selection cheaper (a single model, no refit);
the chosen candidate is still retrained and scored on the outer subject as the preset would train it.

Usage: python bench/nested_preset.py --data ../shared/data/wesad_merged.csv [--inner-folds 5] [--outers 15 16]
       [--candidates A] [--smooth 1 3 5] [--inner-set KEY=VALUE ...] [--select-only]
"""

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from emoma.config import apply_overrides, load_config, parse_yaml
from emoma.context import normalise_subjects
from emoma.cv import run_cv
from emoma.data import load_table
from emoma.folds import make_plan
from emoma.holdout import retrain_and_score, subset
from emoma.metrics import evaluate

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("binary", "3class")
# Fixed before any real-table score of them was seen. "A" is configs/context.yaml as chosen on synthetic tables
# (before 2026-11-26's fifth session: 20 RFE features, the LSTM over CNN positions, no class weights); each
# candidate is written as overrides of today's context.yaml.
A = {"model.n_features": 20, "model.lstm_over": "positions", "train.class_weights": False}
CANDIDATES = {
    "A": A,
    "A + class weights": {**A, "train.class_weights": True},
    "A + all features": {**A, "model.n_features": 0},
    "A + 6 windows": {**A, "model.context": 6},
    # Added 2026-11-26 (fifth session) before any real-table score of it: the reference probe feeds every
    # signal feature to a class-weighted loss.
    "A + all features + class weights": {**A, "model.n_features": 0, "train.class_weights": True},
    # Added the same way: the LSTM steps over the k windows, not over their CNN positions.
    "A + LSTM over windows": {**A, "model.lstm_over": "windows"},
    # Added the same way: over windows, every feature widens a step instead of lengthening the sequence; with the
    # probe's class-weighted loss. The inner selection on all 15 real subjects preferred it to A: today's preset.
    "A + LSTM over windows + all features + class weights": {
        "model.lstm_over": "windows",
        "model.n_features": 0,
        "train.class_weights": True,
    },
}


def inner_scores(table, config, smooth: list[int], inner_set: dict) -> dict[int, float]:
    """{smooth: mean inner macro-F1} from one subject-wise CV of `config` (with `inner_set`) on `table`."""
    config = apply_overrides(config, inner_set)
    result = run_cv(table, make_plan(table, config.cv, config.seed), config, progress=False)
    return {k: result.smoothed_summary(table, k, config.data.window_s)["macro_f1"]["mean"] for k in smooth}


def choose(tables: dict, configs: dict, smooth: list[int], inner_set: dict) -> tuple[str, dict]:
    """The (candidate, smooth) with the best mean inner macro-F1 over the tasks, named "NAME / smooth K";
    every one's scores."""
    by_task = {
        task: {name: inner_scores(tables[task], configs[task][name], smooth, inner_set) for name in configs[task]}
        for task in TASKS
    }
    scores = {
        f"{name} / smooth {k}": {task: by_task[task][name][k] for task in TASKS}
        for name in configs[TASKS[0]]
        for k in smooth
    }
    best = max(scores, key=lambda key: np.mean(list(scores[key].values())))
    return best, scores


def chosen_config(configs: dict, task: str, key: str):
    name, k = key.rsplit(" / smooth ", 1)
    return apply_overrides(configs[task][name], {"model.smooth": int(k)})


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--inner-folds", type=int, default=5)
    p.add_argument("--out", default="results/bench/nested_preset.json")
    p.add_argument("--outers", nargs="+", help="outer subjects to run (default: all)")
    p.add_argument("--candidates", nargs="+", help="candidate names to compare (default: all)")
    p.add_argument("--smooth", type=int, nargs="+", default=[1], help="model.smooth values to compare (default: 1)")
    p.add_argument("--select-only", action="store_true", help="inner selections only; no outer retraining")
    p.add_argument("--threads", type=int, help="torch threads for the outer retraining (default 2)")
    p.add_argument(
        "--inner-set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="overrides for the inner selection runs only, e.g. model.ensemble=1 train.refit=false",
    )
    args = p.parse_args()
    if args.select_only and args.threads is not None:
        p.error("--threads sets the outer retraining, which --select-only skips: drop one of them")
    if bad := [item for item in args.inner_set if "=" not in item]:
        p.error(f"--inner-set {bad[0]!r}: expected KEY=VALUE, e.g. model.ensemble=1")
    inner_set = {k: parse_yaml(v) for k, _, v in (item.partition("=") for item in args.inner_set)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    base = load_config(
        ROOT / "configs" / "context.yaml",
        [f"data.path={args.data}", "cv.scheme=group-kfold", f"cv.folds={args.inner_folds}"],
    )
    candidates = {n: o for n, o in CANDIDATES.items() if not args.candidates or n in args.candidates}
    configs = {
        task: {name: apply_overrides(base, {"data.task": task, **overrides}) for name, overrides in candidates.items()}
        for task in TASKS
    }
    tables = {task: normalise_subjects(load_table(replace(base.data, task=task)), base.data) for task in TASKS}
    subjects = [s for s in tables["binary"].subjects if not args.outers or str(s) in args.outers]
    outer, predictions = [], {task: [] for task in TASKS}
    for s in subjects:
        inner_tables = {task: subset(t, np.flatnonzero(t.groups != s)) for task, t in tables.items()}
        chosen, scores = choose(inner_tables, configs, args.smooth, inner_set)
        row = {"subject": str(s), "chosen": chosen, "inner": scores}
        for task in () if args.select_only else TASKS:
            config = chosen_config(configs, task, chosen)
            held = retrain_and_score(
                {base.data.subject_norm: tables[task]},
                [s],
                {"chosen": config},
                config,
                baselines_for="chosen",
                threads=args.threads or 2,
            )["chosen"]
            row[task] = {"CNN-LSTM": held.result.metrics, **held.result.baselines}
            predictions[task].append(
                (held.groups, held.y, {"CNN-LSTM": held.result.proba, **held.result.baseline_proba})
            )
        outer.append(row)
        Path(args.out).write_text(
            json.dumps({"candidates": candidates, "smooth": args.smooth, "outer": outer}, indent=2, default=str)
        )
        scored = (
            ""
            if args.select_only
            else (
                f"; binary {row['binary']['CNN-LSTM']['macro_f1']:.3f}, "
                f"3-class {row['3class']['CNN-LSTM']['macro_f1']:.3f}"
            )
        )
        print(f"outer {s}: chose {chosen}{scored} ({time.perf_counter() - start:.0f} s)", flush=True)
    if args.select_only:
        favourite, scores = choose(tables, configs, args.smooth, inner_set)
        Path(args.out).write_text(
            json.dumps(
                {
                    "candidates": candidates,
                    "smooth": args.smooth,
                    "inner_set": inner_set,
                    "inner_folds": args.inner_folds,
                    "outer": outer,
                    "all_subjects_choice": favourite,
                    "all_subjects_inner": scores,
                    "seconds": time.perf_counter() - start,
                },
                indent=2,
                default=str,
            )
        )
        print(
            f"the same selection on all subjects picks: {favourite} (inner scores: {scores}); "
            f"{time.perf_counter() - start:.0f} s"
        )
        return
    evaluation = {}
    for task in TASKS:
        groups = np.concatenate([g for g, _, _ in predictions[task]])
        y = np.concatenate([y for _, y, _ in predictions[task]])
        probas = {m: np.concatenate([p[m] for _, _, p in predictions[task]]) for m in predictions[task][0][2]}
        evaluation[task] = evaluate(groups, y, probas, tables[task].class_names)
    favourite, scores = choose(tables, configs, args.smooth, inner_set)
    result = {
        "candidates": candidates,
        "smooth": args.smooth,
        "inner_set": inner_set,
        "inner_folds": args.inner_folds,
        "outer": outer,
        "evaluation": evaluation,
        "all_subjects_choice": favourite,
        "all_subjects_inner": scores,
        "seconds": time.perf_counter() - start,
    }
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    for task in TASKS:
        models = evaluation[task]["models"]
        print(f"\n{task}: nested estimate over {len(subjects)} outer subjects (mean, 95 % CI)")
        for name, model in models.items():
            ci = {m: model["ci"][m] for m in ("accuracy", "macro_f1")}
            tests = evaluation[task]["wilcoxon"]["against"].get(name, {}).get("macro_f1")
            test = f"  Wilcoxon vs CNN-LSTM p={tests['p_value']:.3f}" if tests else ""
            print(
                f"  {name:<20} accuracy {ci['accuracy']['mean']:.3f} ({ci['accuracy']['ci_low']:.3f}-"
                f"{ci['accuracy']['ci_high']:.3f})  macro-F1 {ci['macro_f1']['mean']:.3f} "
                f"({ci['macro_f1']['ci_low']:.3f}-{ci['macro_f1']['ci_high']:.3f}){test}"
            )
    print(
        f"\nthe same selection on all subjects picks: {favourite} (inner scores: {scores}); {result['seconds']:.0f} s"
    )


if __name__ == "__main__":
    main()
