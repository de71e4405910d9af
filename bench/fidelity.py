"""Does the ranking of trials survive their cheap fidelity? Trials of a finished search run again at full
fidelity (the configuration's own ensemble and refit) on the same folds.

A search's trials train at `search.fidelity: low` (one model per fold, no refit). This script takes some of
its completed trials (the base and seed configurations, the best few by their low-fidelity mean and others
spread over the ranking), runs each one's CV again at full fidelity on the experiment's own fold plan, and
compares: Spearman's rank correlation of the two means, where the low-fidelity winner ranks at full fidelity,
and the mean gain from full fidelity.

Usage: python bench/fidelity.py results/search/NAME [--trials 8] [--out results/bench/fidelity-NAME.json]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emoma.config import from_dict  # noqa: E402
from emoma.cv import run_cv  # noqa: E402
from emoma.folds import make_plan  # noqa: E402
from emoma.manifest import Manifest  # noqa: E402
from emoma.space import same_params, space_from_dict  # noqa: E402
from emoma.tune.search import prepare_experiment  # noqa: E402
from emoma.tune.watch import read_trials  # noqa: E402


def chosen_trials(trials: list, points: list[dict], n: int) -> list:
    """The base and seed trials, the best three, and the rest of `n` spread evenly over the ranking."""
    ranked = sorted((t for t in trials if t.status == "completed"), key=lambda t: -t.mean)
    first = [t for t in ranked if any(same_params(t.params, p) for p in points)]
    picked = {t.trial_id: t for t in first + ranked[:3]}
    rest = [t for t in ranked if t.trial_id not in picked]
    spread = [rest[int(round(i))] for i in np.linspace(0, len(rest) - 1, max(0, n - len(picked)))] if rest else []
    return list({t.trial_id: t for t in [*picked.values(), *spread]}.values())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", type=Path)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    folder = args.experiment
    manifest = Manifest.from_json((folder / "manifest.json").read_text(), str(folder))
    config, seed_config = from_dict(manifest.config), from_dict(manifest.seed_config)
    exp = prepare_experiment(
        config, space_from_dict(manifest.space, config), seed_config, folder.parent, folder.name, True, print
    )
    trials = chosen_trials(list(read_trials(folder / "trials.csv").values()), exp.first_points, args.trials)
    configs = exp.trial_configs(config)
    order = manifest.fold_order
    rows = []
    for trial in trials:
        full = configs(trial.params)
        table = exp.search_tables[full.data.subject_norm]
        plan = make_plan(table, full.cv, full.seed, exp.smallest_k)
        start = time.perf_counter()
        result = run_cv(table, plan, full, progress=False)
        scores = [f.metrics[config.search.metric] for f in sorted(result.folds, key=lambda f: f.index)]
        low = [trial.fold_scores[i] for i in range(len(order))]
        rows.append(
            {
                "trial": trial.trial_id,
                "low": float(np.mean(low)),
                "full": float(np.mean(scores)),
                "low_folds": low,
                "full_folds": scores,
                "seconds": time.perf_counter() - start,
                "ensemble": full.model.ensemble,
                "refit": full.train.refit,
            }
        )
        print(
            f"trial {trial.trial_id}: low {rows[-1]['low']:.4f}, full {rows[-1]['full']:.4f} "
            f"({rows[-1]['seconds']:.0f} s)",
            flush=True,
        )
    low, full = np.array([r["low"] for r in rows]), np.array([r["full"] for r in rows])
    rho = stats.spearmanr(low, full)
    winner = int(np.argmax(low))
    rank_at_full = int((full > full[winner]).sum()) + 1
    print(
        f"\n{len(rows)} trials of {folder.name}, {config.search.metric}: Spearman rho {rho.statistic:.3f} "
        f"(p {rho.pvalue:.3f}); the low-fidelity winner ranks {rank_at_full} of {len(rows)} at full fidelity; "
        f"full - low: mean {np.mean(full - low):+.4f}, min {np.min(full - low):+.4f}, max {np.max(full - low):+.4f}"
    )
    print("\n| trial | low fidelity | full fidelity | full - low |\n|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -r["low"]):
        print(f"| {r['trial']} | {r['low']:.4f} | {r['full']:.4f} | {r['full'] - r['low']:+.4f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {"spearman": rho.statistic, "p_value": rho.pvalue, "winner_rank_at_full": rank_at_full, "trials": rows},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
