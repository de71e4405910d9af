"""One call per CLI: the stages chained for `cv.py` (table -> subject normalisation -> fold plan -> CV -> report)."""
from __future__ import annotations

import time
from pathlib import Path

from emoma.config import Config
from emoma.context import check_context, normalise_subjects
from emoma.cv import CVResult, run_cv
from emoma.data import Table, load_table
from emoma.folds import make_plan
from emoma.report import write_cv_outputs


def default_out_dir(kind: str, config: Config) -> Path:
    return Path("results") / kind / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def model_table(config: Config) -> Table:
    """The table as every model reads it: loaded, validated and subject-normalised (`data.subject_norm`)."""
    table = normalise_subjects(load_table(config.data), config.data)
    check_context(table, config.model.context)
    return table


def cross_validate(config: Config, out_dir: str | Path | None = None, *, baselines: bool = False,
                   progress: bool = True, verbose: bool = False, log=print) -> tuple[CVResult, Path]:
    """Cross-validate one configuration and write its report; returns the result and the output folder."""
    table = model_table(config)
    log(f"data: {table.source}: {len(table.y)} windows, {len(table.subjects)} subjects, "
        f"{len(table.feature_names)} features, classes {table.class_counts()}; time order {table.time_order}; "
        f"subject normalisation {table.normalisation}; context {config.model.context} window(s)")
    plan = make_plan(table, config.cv, config.seed)
    log(f"fold plan: {len(plan.folds)} {plan.scheme} folds "
        f"({'from cache' if plan.from_cache else f'scaler + RFE fitted per fold in {plan.seconds:.1f} s'})")
    for note in plan.notes:
        log(f"WARNING: {note}")
    result = run_cv(table, plan, config, baselines=baselines, progress=progress, verbose=verbose)
    out = write_cv_outputs(result, table, plan, config, out_dir or default_out_dir("cv", config))
    return result, out
