"""The nested estimate of a candidate selection, scored from LOSO runs of the candidates.

`bench/nested_preset.py --select-only` records, for every outer subject, the candidate that inner CV on the
other subjects chose. A LOSO run of a candidate (`cv.py ... --baselines`) already holds, for every subject, that
candidate trained on the other subjects and scored on it, beside the same-input baselines. So the nested
estimate takes each subject's scores from the run of the candidate chosen for it: the CNN-LSTM's and its
baselines' per-subject accuracy and macro-F1, their mean with a bootstrap 95 % CI over subjects, and the paired
Wilcoxon test of the CNN-LSTM against each baseline. Each run's configuration is checked against its
candidate (as `bench/nested_preset.py` writes it today).

Usage: python bench/nested_from_runs.py --choices select.json --runs "A=results/cv/BIN,results/cv/3CLASS"
       "A + all features + class weights=results/cv/BIN2,results/cv/3CLASS2"
"""

import argparse
import json
from pathlib import Path

import pandas as pd
import yaml
from nested_preset import CANDIDATES

from emoma.config import apply_overrides, flatten, from_dict, load_config
from emoma.manifest import RUNTIME_KEYS, first_difference
from emoma.metrics import auc_scores, bootstrap_ci, paired_wilcoxon

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("binary", "3class")
METRICS = ("accuracy", "macro_f1")


def check_run(run: Path, candidate: dict, task: str) -> None:
    """Stop unless the run trained `configs/context.yaml` with the candidate's overrides on `task`, LOSO, with
    the baselines."""
    ran = from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    want = apply_overrides(
        load_config(ROOT / "configs" / "context.yaml"),
        {**candidate, "data.task": task, "data.path": ran.data.path, "cv.scheme": "loso"},
    )
    diff = first_difference(flatten(want.to_dict()), flatten(ran.to_dict()), ignore=RUNTIME_KEYS)
    if diff:
        raise SystemExit(f"{run}: {diff[0]} is {diff[2]!r}, the candidate's is {diff[1]!r}")
    if not json.loads((run / "metrics.json").read_text())["folds"][0].get("baselines"):
        raise SystemExit(f"{run}: run without --baselines; rerun it with them")


def per_subject(run: Path) -> dict[str, dict]:
    """{subject: {"CNN-LSTM": metrics, baseline: metrics}} from a LOSO run's metrics.json."""
    folds = json.loads((run / "metrics.json").read_text())["folds"]
    return {
        str(f["test_subjects"][0]): {
            "CNN-LSTM": {m: f[m] for m in METRICS},
            **{b: {m: s[m] for m in METRICS} for b, s in f["baselines"].items()},
        }
        for f in folds
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--choices", required=True, help="JSON of bench/nested_preset.py --select-only")
    p.add_argument("--runs", nargs="+", required=True, metavar="NAME=BINARY_RUN,3CLASS_RUN")
    p.add_argument("--out", default="results/bench/nested_from_runs.json")
    args = p.parse_args()
    choices = json.loads(Path(args.choices).read_text())
    runs = {
        name: dict(zip(TASKS, map(Path, dirs.split(",")), strict=True))
        for name, _, dirs in (item.partition("=") for item in args.runs)
    }
    chosen = {row["subject"]: row["chosen"].rsplit(" / smooth ", 1) for row in choices["outer"]}
    if any(k != "1" for _, k in chosen.values()):
        raise SystemExit("a choice with model.smooth > 1: score it with bench/nested_preset.py (no LOSO run holds it)")
    chosen = {subject: name for subject, (name, _) in chosen.items()}
    if missing := set(chosen.values()) - set(runs):
        raise SystemExit(f"no --runs for the chosen {sorted(missing)}")
    result = {"choices": chosen}
    for task in TASKS:
        scores, frames = {}, []
        for name in set(chosen.values()):
            check_run(runs[name][task], CANDIDATES[name], task)
        by_run = {name: per_subject(runs[name][task]) for name in set(chosen.values())}
        for subject, name in chosen.items():
            scores[subject] = by_run[name][subject]
            frame = pd.read_csv(runs[name][task] / "predictions.csv", dtype={"subject": str})
            frames.append(frame[frame["subject"] == subject])
        pooled = pd.concat(frames)
        classes = [c.removeprefix("p_") for c in pooled.columns if c.startswith("p_")]
        y = pooled["true"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        models = list(next(iter(scores.values())))
        summary = {m: {k: bootstrap_ci([scores[s][m][k] for s in scores]) for k in METRICS} for m in models}
        tests = {
            m: paired_wilcoxon(
                [scores[s]["CNN-LSTM"]["macro_f1"] for s in scores], [scores[s][m]["macro_f1"] for s in scores]
            )
            for m in models
            if m != "CNN-LSTM"
        }
        auc = auc_scores(y, pooled[[f"p_{c}" for c in classes]].to_numpy())
        result[task] = {"subjects": scores, "summary": summary, "wilcoxon_macro_f1": tests, "cnn_lstm_auc": auc}
        print(
            f"\n{task}: nested estimate over {len(scores)} outer subjects (mean, 95 % CI); "
            f"CNN-LSTM pooled ROC-AUC {auc['roc_auc']:.3f}"
        )
        for m in models:
            a, f = summary[m]["accuracy"], summary[m]["macro_f1"]
            test = f"  Wilcoxon vs CNN-LSTM p={tests[m]['p_value']:.3f}" if m in tests else ""
            print(
                f"  {m:<20} accuracy {a['mean']:.3f} ({a['ci_low']:.3f}-{a['ci_high']:.3f})  "
                f"macro-F1 {f['mean']:.3f} ({f['ci_low']:.3f}-{f['ci_high']:.3f}){test}"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
