"""One configuration cross-validated with several seeds (`emoma cv --repeats N`): the spread a single run hides.

Each seed is a whole `cv.py` run in its own folder (`OUT/seed-S/`: the seed changes the validation subjects,
the RFE forests, the weight initialisation and the batch order; subject-wise test folds stay the same). The
summary gives every model's score as mean and spread over seeds, and compares the CNN-LSTM with the baselines
on per-subject scores averaged over seeds: mean paired difference with its BCa interval first, then paired
Wilcoxon tests over subjects, Holm-corrected over the baselines.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from emoma.config import METRICS, Config, apply_overrides, save_config
from emoma.errors import Interrupted, UserError, invoked_as
from emoma.files import write_atomic
from emoma.metrics import MIN_TEST_SUBJECTS, compare_paired
from emoma.pipeline import REPEATS_FILE, RUN_FILE, cross_validate, new_out_dir, say

REFERENCE = "CNN-LSTM"
SUMMARY_FILE = "repeats.json"


def repeat_cv(
    config: Config,
    repeats: int | None,
    out_dir: str | Path | None = None,
    *,
    baselines: bool = False,
    progress: bool = True,
    verbose: bool = False,
    resume: bool = False,
    save_model: bool = True,
    log=say,
) -> tuple[dict, Path]:
    """Cross-validate `config` with seeds seed, seed+1, ..., each run in OUT/seed-S; returns the summary (also
    written to OUT/repeats.json and OUT/report.md; each seed's degenerate-model notes under "warnings") and OUT.
    With `resume`, OUT's finished seeds are kept, an interrupted one continues and the rest start (`repeats`
    None: as recorded)."""
    if resume:
        out = Path(out_dir)
        if not (out / REPEATS_FILE).is_file():
            raise UserError(f"--resume {out}: a single {invoked_as('cv')} run, not a --repeats one: drop --repeats")
        recorded = json.loads((out / REPEATS_FILE).read_text())
        if repeats is not None and repeats != recorded["repeats"]:
            raise UserError(f"--resume {out}: the run has {recorded['repeats']} seeds, not {repeats}: drop --repeats")
        if baselines and not recorded["baselines"]:
            raise UserError(
                f"--resume {out}: the run started without --baselines: drop --baselines, or start a new run"
            )
        repeats, baselines = recorded["repeats"], recorded["baselines"]
    else:
        if repeats < 2:
            raise UserError(f"--repeats {repeats}: give 2 or more seeds (one run is a plain {invoked_as('cv')})")
        out = new_out_dir(out_dir, config)
        save_config(config, out / "config.yaml")
        write_atomic(out / REPEATS_FILE, json.dumps({"repeats": repeats, "baselines": baselines}))
    runs, warnings = {}, {}
    for seed in range(config.seed, config.seed + repeats):
        folder = out / f"seed-{seed}"
        if not (folder / "metrics.json").is_file():
            log(f"seed {seed} ({seed - config.seed + 1}/{repeats})")
            try:
                cross_validate(
                    apply_overrides(config, {"seed": seed}),
                    folder,
                    baselines=baselines,
                    progress=progress,
                    verbose=verbose,
                    resume=(folder / RUN_FILE).is_file(),
                    log=log,
                    save_model=save_model,
                )
            except Interrupted:
                raise Interrupted(
                    f"--repeats interrupted in seed {seed}; continue it with: {invoked_as('cv')} --resume {out}"
                ) from None
        metrics = json.loads((folder / "metrics.json").read_text())
        runs[seed], warnings[seed] = metrics["evaluation"], metrics.get("warnings", [])
    summary = {**summarise_repeats(runs), "warnings": {str(s): w for s, w in warnings.items() if w}}
    write_atomic(out / SUMMARY_FILE, json.dumps(summary, indent=2))
    write_atomic(out / "report.md", repeats_report(summary, config))
    return summary, out


def summarise_repeats(runs: dict[int, dict]) -> dict:
    """{seeds, models: {name: {metric: {per_seed, mean, std, min, max}}}, subjects: {name: {subject: {metric}}},
    comparisons: {name: {metric: emoma.metrics.compare_paired's}}, tests: bool} from
    each seed's `emoma.metrics.evaluate` output. A model's score in a seed is its mean over subjects."""
    seeds = sorted(runs)
    names = list(runs[seeds[0]]["models"])
    subjects = list(runs[seeds[0]]["models"][names[0]]["subjects"])
    models, averaged = {}, {}
    for name in names:
        models[name] = {}
        for m in METRICS:
            per_seed = [runs[s]["models"][name]["ci"][m]["mean"] for s in seeds]
            models[name][m] = {
                "per_seed": per_seed,
                "mean": float(np.mean(per_seed)),
                "std": float(np.std(per_seed, ddof=1)),
                "min": min(per_seed),
                "max": max(per_seed),
            }
        averaged[name] = {
            subject: {
                m: float(np.mean([runs[s]["models"][name]["subjects"][subject][m] for s in seeds])) for m in METRICS
            }
            for subject in subjects
        }
    tests = len(subjects) >= MIN_TEST_SUBJECTS
    comparisons = (
        compare_paired(averaged[REFERENCE], {n: s for n, s in averaged.items() if n != REFERENCE})
        if REFERENCE in averaged and tests
        else {}
    )
    return {"seeds": seeds, "models": models, "subjects": averaged, "comparisons": comparisons, "tests": tests}


def repeats_report(summary: dict, config: Config) -> str:
    seeds = summary["seeds"]
    lines = [
        f"# Cross-validation over {len(seeds)} seeds: {config.name}",
        "",
        f"Seeds {', '.join(map(str, seeds))}, one `emoma cv` run each in `seed-S/` (its own report there); "
        f"protocol {config.cv.scheme}, subject normalisation {config.data.subject_norm}. A seed changes the "
        "validation subjects, the RFE forests, the weights' initialisation and the batch order. A model's "
        "score in one seed is its mean over subjects.",
        "",
        "| model | " + " | ".join(f"{m}: mean over seeds ± SD (min-max)" for m in METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for name, by_metric in summary["models"].items():
        lines.append(
            f"| {name} | "
            + " | ".join(
                f"{s['mean']:.3f} ± {s['std']:.3f} ({s['min']:.3f}-{s['max']:.3f})" for s in by_metric.values()
            )
            + " |"
        )
    n = len(next(iter(summary["subjects"].values())))
    lines.append("")
    lines += [
        f"**WARNING (seed {seed}): {note}**\n" for seed, notes in summary.get("warnings", {}).items() for note in notes
    ]
    if summary["comparisons"]:
        lines += [
            f"{REFERENCE} against each baseline on per-subject scores averaged over the seeds ({n} subjects): "
            "mean paired difference with its BCa 95 % interval, then a two-sided paired Wilcoxon test, p "
            "Holm-corrected over the baselines per metric; a difference is a tie unless its corrected p < 0.05 "
            "(marked *).",
            "",
            "| against | metric | mean difference (95 % CI) | p | p (Holm) |",
            "|---|---|---|---|---|",
        ]
        for name, by_metric in summary["comparisons"].items():
            for m, c in by_metric.items():
                effect = f"{c['mean_diff']:+.3f} ({c['diff_ci_low']:+.3f} to {c['diff_ci_high']:+.3f})"
                mark = " *" if c["p_holm"] < 0.05 else ""
                lines.append(f"| {name} | {m} | {effect} | {_p(c['p_value'])} | {_p(c['p_holm'])}{mark} |")
    elif REFERENCE in summary["subjects"] and len(summary["subjects"]) > 1:
        lines.append(
            f"No tests: {n} subjects are too few (a two-sided Wilcoxon signed-rank test needs "
            f"{MIN_TEST_SUBJECTS} to reach p < 0.05)."
        )
    else:
        lines.append("No baselines to compare with (add --baselines).")
    return "\n".join(lines) + "\n"


def format_repeats(summary: dict) -> str:
    """Console lines: each model's macro-F1 and accuracy over seeds."""
    lines = [f"WARNING (seed {seed}): {note}" for seed, notes in summary.get("warnings", {}).items() for note in notes]
    lines.append(f"over {len(summary['seeds'])} seeds (mean ± SD of the per-seed means over subjects):")
    for name, by_metric in summary["models"].items():
        lines.append(
            f"  {name}: accuracy {by_metric['accuracy']['mean']:.3f} ± {by_metric['accuracy']['std']:.3f}, "
            f"macro-F1 {by_metric['macro_f1']['mean']:.3f} ± {by_metric['macro_f1']['std']:.3f}"
        )
    for name, by_metric in summary["comparisons"].items():
        c = by_metric["macro_f1"]
        lines.append(
            f"  {REFERENCE} - {name} (macro-F1, seed-averaged subjects): {c['mean_diff']:+.3f} "
            f"({c['diff_ci_low']:+.3f} to {c['diff_ci_high']:+.3f}), p (Holm) {_p(c['p_holm'])}"
        )
    return "\n".join(lines)


def _p(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.4f}"
