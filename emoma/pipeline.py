"""The stages chained for `cv.py`: table -> subject normalisation -> fold plan -> CV -> report. Each finished
fold is kept on disk as it finishes, so an interrupted run continues with `emoma cv --resume OUT`."""

from __future__ import annotations

import functools
import json
import pickle
import time
from pathlib import Path

import pandas as pd

from emoma.config import Config, flatten, load_config, read_yaml, save_config
from emoma.context import check_context, normalise_subjects, order_notes, window_length
from emoma.cv import run_cv
from emoma.data import Table, load_table, table_from_frame
from emoma.errors import Interrupted, UserError, invoked_as
from emoma.files import atomic_path, unique_folder, write_atomic
from emoma.folds import make_plan, plan_key, smallest_top_k
from emoma.manifest import RUNTIME_KEYS, data_fingerprint, first_difference
from emoma.predict import bundle_of, write_bundle
from emoma.report.cv import write_cv_outputs
from emoma.results import CVResult, FoldResult

say = functools.partial(print, flush=True)  # progress lines reach logs and pipes as they happen
RUN_FILE = "run.json"  # cv.py: what defines the run (data fingerprint, plan key), for --resume
FOLDS_DIR = "folds"  # cv.py: one pickled FoldResult per finished fold (with its model)
MODEL_FILE = "model.pt"  # cv.py: the fold models averaged, for emoma predict
REPEATS_FILE = "repeats_run.json"  # cv.py --repeats: the number of seeds and whether baselines run, for --resume


def default_out_dir(kind: str, config: Config) -> Path:
    return Path("results") / kind / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def model_table(config: Config, frame: pd.DataFrame | None = None) -> Table:
    """The table as every model reads it: loaded (`data.path`, or `frame` when given), validated and
    subject-normalised (`data.subject_norm`)."""
    loaded = load_table(config.data) if frame is None else table_from_frame(frame, config.data, source="DataFrame")
    table = normalise_subjects(loaded, config.data)
    check_context(table, config.model.context)
    return table


def check_folds_flag(folds: int | None, config: Config) -> None:
    """--folds means K of a k-fold protocol; under leave-one-subject-out it would be silently ignored."""
    if folds is not None and config.cv.scheme == "loso":
        raise UserError(
            f"--folds {folds} does not apply to leave-one-subject-out (one fold per subject): use "
            f"--cv group-kfold --folds {folds} (or stratified-group-kfold), or drop --folds"
        )


# ---------------------------------------------------------------- cv.py


def cross_validate(
    config: Config,
    out_dir: str | Path | None = None,
    *,
    baselines: bool = False,
    progress: bool = True,
    verbose: bool = False,
    resume: bool = False,
    mlflow: str | None = None,
    log=say,
    frame: pd.DataFrame | None = None,
    keep_models: bool = False,
    save_model: bool = True,
) -> tuple[CVResult, Path]:
    """Cross-validate one configuration and write its report; returns the result and the output folder.

    Each finished fold is kept in `out_dir/folds/`; with `resume`, the folds already there are not run again.
    `frame` replaces `data.path` as the data (the Python API); `keep_models` keeps each fold's model in the
    result; `save_model` writes MODEL_FILE, the fold models averaged.
    """
    keep_models = keep_models or save_model
    table = model_table(config, frame)
    log(
        f"data: {table.source}: {len(table.y)} windows, {len(table.subjects)} subjects, "
        f"{len(table.feature_names)} features, classes {table.class_counts()}; time order {table.time_order}; "
        f"subject normalisation {table.normalisation}; context {config.model.context} window(s)"
    )
    smallest_k = smallest_top_k([config.model.n_features])
    run = {
        "data": data_fingerprint(table, config.data.path),
        "plan_key": plan_key(table, config.cv, config.seed, smallest_k),
        "baselines": baselines,
    }
    check_tracking(mlflow)
    if resume:
        out = Path(out_dir)
        recorded = json.loads((out / RUN_FILE).read_text())
        if recorded["data"]["sha256"] != run["data"]["sha256"]:
            raise UserError(
                f"--resume {out}: the data changed since the run started (sha256 "
                f"{recorded['data']['sha256'][:12]}... then, {run['data']['sha256'][:12]}... now)"
            )
        if baselines and not recorded["baselines"]:
            raise UserError(
                f"--resume {out}: the run started without --baselines and its finished folds have none: "
                "drop --baselines, or start a new run"
            )
        baselines = recorded["baselines"]
    else:
        out = new_out_dir(out_dir, config)
        save_config(config, out / "config.yaml")
        write_atomic(out / RUN_FILE, json.dumps(run, indent=2))
    done = _finished_folds(out)
    try:
        plan = make_plan(table, config.cv, config.seed, smallest_k)
        log(
            f"fold plan: {len(plan.folds)} {plan.scheme} folds "
            f"({'from cache' if plan.from_cache else f'scaler + RFE fitted per fold in {plan.seconds:.1f} s'})"
            + (f"; {len(done)} folds already finished" if done else "")
        )
        for note in plan.notes + order_notes(table, config.model.context, table.normalisation):
            log(f"WARNING: {note}")
        result = run_cv(
            table,
            plan,
            config,
            baselines=baselines,
            progress=progress,
            verbose=verbose,
            done=done,
            on_result=lambda fold: _keep_fold(out, fold),
            keep_models=keep_models,
        )
        write_cv_outputs(result, result.evaluate(table, config.seed), table, plan, config, out)
        if save_model:
            save_fold_models(result, table, plan, config, out / MODEL_FILE, log)
    except KeyboardInterrupt:
        raise Interrupted(
            f"cross-validation interrupted after {len(_finished_folds(out))} folds; continue it with: "
            f"{invoked_as('cv')} --resume {out}"
        ) from None
    if mlflow:
        log_cv_run(mlflow, out, config, result)
    return result, out


def fold_ensemble(result: CVResult, table: Table, plan, config: Config) -> dict | None:
    """The fold models as one equal-weight ensemble bundle (`emoma.predict.bundle_of`), each with its own fold's
    scaler and features: the models the CV scored, averaged, with no training beyond the CV's. None when some
    fold kept no model (it finished in a run that kept none)."""
    if any(f.model is None for f in result.folds):
        return None
    members = [(f.model, config, plan.folds[f.index], 1 / len(result.folds)) for f in result.folds]
    return bundle_of(members, table.feature_names, table.class_names, window_length(table, config.data.window_s))


def save_fold_models(result: CVResult, table: Table, plan, config: Config, path: Path, log=say) -> None:
    """Write `fold_ensemble` to `path` (`emoma predict --model model.pt`)."""
    bundle = fold_ensemble(result, table, plan, config)
    if bundle is None:
        missing = [f.index + 1 for f in result.folds if f.model is None]
        log(
            f"note: {MODEL_FILE} not written: folds {', '.join(map(str, missing))} finished in a run that kept no "
            "models"
        )
        return
    write_bundle(path, bundle)


def check_tracking(mlflow: str | None) -> None:
    """Fail before any work when --mlflow cannot be used (the default store is made in the output folder)."""
    if mlflow:
        from emoma.tracking import Tracker, require_mlflow

        require_mlflow()
        if mlflow != "default":
            Tracker(mlflow, "emoma-cv")


def log_cv_run(mlflow: str, out: Path, config: Config, result: CVResult) -> None:
    """One MLflow run: the configuration, per-fold metrics (step = fold), the summary, the confusion matrix."""
    from emoma.tracking import Tracker, default_uri

    tracker = Tracker(default_uri(out) if mlflow == "default" else mlflow, "emoma-cv")
    run = tracker.start_run(out.name, flatten(config.to_dict()), tags={"emoma.kind": "cv", "emoma.out": str(out)})
    for fold in result.folds:
        tracker.log_metrics(run, {f"fold_{m}": v for m, v in fold.metrics.items()}, step=fold.index + 1)
    tracker.log_metrics(run, {f"{m}_{k}": v for m, s in result.summary().items() for k, v in s.items()})
    tracker.log_artifacts(run, [out / f for f in ("confusion_matrix.png", "report.md", "metrics.json", "config.yaml")])
    tracker.end(run)


def new_out_dir(out_dir, config: Config) -> Path:
    """The given folder (which must be empty), or a new unique one: two runs never share a folder."""
    if out_dir is None:
        return unique_folder(default_out_dir("cv", config))
    out = Path(out_dir)
    if (out / "report.md").is_file():
        raise UserError(f"--out {out} holds a finished run: give a new folder (or leave out --out for a new one)")
    if out.exists() and any(out.iterdir()):
        raise UserError(
            f"--out {out} already holds files: give a new folder, or --resume {out} to continue the "
            "interrupted run there"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def _keep_fold(out: Path, fold: FoldResult) -> None:
    folder = out / FOLDS_DIR
    folder.mkdir(exist_ok=True)
    with atomic_path(folder / f"fold-{fold.index:03d}.pkl") as tmp, tmp.open("wb") as f:
        pickle.dump(fold, f)


def _finished_folds(out: Path) -> dict[int, FoldResult]:
    done = {}
    for path in sorted((out / FOLDS_DIR).glob("fold-*.pkl")):
        with path.open("rb") as f:
            fold = pickle.load(f)
        done[fold.index] = fold
    return done


def resume_cv_config(out: str | Path, overrides: list[str], flags: dict) -> Config:
    """The configuration of the interrupted run in `out`; options that contradict it stop with one line."""
    out = Path(out)
    if not (out / "config.yaml").is_file() or not ((out / RUN_FILE).is_file() or (out / REPEATS_FILE).is_file()):
        raise UserError(f"--resume {out}: not a {invoked_as('cv')} output folder (no config.yaml and {RUN_FILE})")
    raw = read_yaml(out / "config.yaml")
    # a run written before cv.baselines existed fitted its baselines at library defaults: it continues so
    raw.setdefault("cv", {}).setdefault("baselines", "default")
    recorded = load_config(None, base=raw)
    given = load_config(None, overrides, flags=flags, base=recorded.to_dict())
    diff = first_difference(flatten(recorded.to_dict()), flatten(given.to_dict()), ignore=RUNTIME_KEYS)
    if diff:
        key, a, b = diff
        raise UserError(
            f"--resume: {key} was {a!r} when the run in {out} started, the command line gives {b!r}: "
            "drop the option to continue it"
        )
    return given
