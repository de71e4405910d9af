"""One call per CLI: the stages chained for `cv.py` (table -> subject normalisation -> fold plan -> CV -> report)
and `search.py` (settings from the command line or the experiment's manifest -> search -> report), with
resumable runs: finished folds and finished outer folds are kept on disk as they finish."""
from __future__ import annotations

import json
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

from emoma.config import Config, load_config
from emoma.context import check_context, normalise_subjects
from emoma.cv import CVResult, FoldResult, run_cv
from emoma.data import Table, load_table
from emoma.errors import Interrupted, UserError
from emoma.files import atomic_path, unique_folder, write_atomic
from emoma.folds import make_plan
from emoma.config import flatten
from emoma.manifest import RUNTIME_KEYS, first_difference
from emoma.report import write_cv_outputs

RUN_FILE = "run.json"  # cv.py: what defines the run (data fingerprint, plan key), for --resume
FOLDS_DIR = "folds"  # cv.py: one pickled FoldResult per finished fold


def default_out_dir(kind: str, config: Config) -> Path:
    return Path("results") / kind / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def model_table(config: Config) -> Table:
    """The table as every model reads it: loaded, validated and subject-normalised (`data.subject_norm`)."""
    table = normalise_subjects(load_table(config.data), config.data)
    check_context(table, config.model.context)
    return table


def check_folds_flag(folds: int | None, config: Config) -> None:
    """--folds means K of a k-fold protocol; under leave-one-subject-out it would be silently ignored."""
    if folds is not None and config.cv.scheme == "loso":
        raise UserError(f"--folds {folds} does not apply to leave-one-subject-out (one fold per subject): use "
                        f"--cv group-kfold --folds {folds} (or stratified-group-kfold), or drop --folds")


# ---------------------------------------------------------------- cv.py

def cross_validate(config: Config, out_dir: str | Path | None = None, *, baselines: bool = False,
                   progress: bool = True, verbose: bool = False, resume: bool = False, mlflow: str | None = None,
                   log=print) -> tuple[CVResult, Path]:
    """Cross-validate one configuration and write its report; returns the result and the output folder.

    Each finished fold is kept in `out_dir/folds/`; with `resume`, the folds already there are not run again.
    """
    table = model_table(config)
    log(f"data: {table.source}: {len(table.y)} windows, {len(table.subjects)} subjects, "
        f"{len(table.feature_names)} features, classes {table.class_counts()}; time order {table.time_order}; "
        f"subject normalisation {table.normalisation}; context {config.model.context} window(s)")
    from emoma.folds import plan_key, smallest_top_k
    from emoma.manifest import data_fingerprint

    smallest_k = smallest_top_k([config.model.n_features])
    run = {"data": data_fingerprint(table, config.data.path),
           "plan_key": plan_key(table, config.cv, config.seed, smallest_k), "baselines": baselines}
    if resume:
        out = Path(out_dir)
        recorded = json.loads((out / RUN_FILE).read_text())
        if recorded["data"]["sha256"] != run["data"]["sha256"]:
            raise UserError(f"--resume {out}: the data changed since the run started (sha256 "
                            f"{recorded['data']['sha256'][:12]}... then, {run['data']['sha256'][:12]}... now)")
        baselines = recorded["baselines"]
    else:
        check_tracking(mlflow)
        out = _new_out_dir(out_dir, config)
        from emoma.config import save_config

        save_config(config, out / "config.yaml")
        write_atomic(out / RUN_FILE, json.dumps(run, indent=2))
    done = _finished_folds(out)
    plan = make_plan(table, config.cv, config.seed, smallest_k)
    log(f"fold plan: {len(plan.folds)} {plan.scheme} folds "
        f"({'from cache' if plan.from_cache else f'scaler + RFE fitted per fold in {plan.seconds:.1f} s'})"
        + (f"; {len(done)} folds already finished" if done else ""))
    for note in plan.notes:
        log(f"WARNING: {note}")
    try:
        result = run_cv(table, plan, config, baselines=baselines, progress=progress, verbose=verbose, done=done,
                        on_result=lambda fold: _keep_fold(out, fold))
    except KeyboardInterrupt:
        raise Interrupted(f"cross-validation interrupted after {len(_finished_folds(out))} of {len(plan.folds)} "
                          f"folds; continue it with: python cv.py --resume {out}") from None
    write_cv_outputs(result, table, plan, config, out)
    if mlflow:
        log_cv_run(mlflow, out, config, result)
    return result, out


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

def _new_out_dir(out_dir, config: Config) -> Path:
    """The given folder (which must be empty), or a new unique one: two runs never share a folder."""
    if out_dir is None:
        return unique_folder(default_out_dir("cv", config))
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} already holds files: give a new folder, or --resume {out} to continue the "
                        "interrupted run there")
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
    if not (out / "config.yaml").is_file() or not (out / RUN_FILE).is_file():
        raise UserError(f"--resume {out}: not a cv.py output folder (no config.yaml and {RUN_FILE})")
    recorded = load_config(out / "config.yaml")
    given = load_config(None, overrides, flags=flags, base=recorded.to_dict())
    diff = first_difference(flatten(recorded.to_dict()), flatten(given.to_dict()), ignore=RUNTIME_KEYS)
    if diff:
        key, a, b = diff
        raise UserError(f"--resume: {key} was {a!r} when the run in {out} started, the command line gives {b!r}: "
                        "drop the option to continue it")
    return given


# ---------------------------------------------------------------- search.py

@dataclass
class SearchSettings:
    config: Config
    space: dict
    seed_config: Config
    name: str
    storage_path: str
    resume: bool
    outer: str | None = None
    notes: list[str] = field(default_factory=list)
    mlflow: str | None = None  # tracking URI ("default": a local store in the experiment folder)


def search_settings(args, defaults: dict, name: str, storage_path: str) -> SearchSettings:
    """The search's settings: from the command line, or (--resume) from the experiment's manifest with the
    command line's explicit options checked against it."""
    from emoma.manifest import Manifest, check_resume
    from emoma.space import load_space, space_from_dict, space_to_dict
    from emoma.storage import ExperimentStorage

    holdout_subjects = [s.strip() for s in args.holdout_subjects.split(",")] if args.holdout_subjects else None
    flags = {"data.path": args.data, "data.task": args.task, "cv.scheme": args.cv, "cv.folds": args.folds,
             "train.epochs": args.epochs, "seed": args.seed, "data.drop_nan": args.drop_nan or None,
             "search.num_samples": args.num_samples, "search.metric": args.metric, "train.metric": args.metric,
             "train.device": args.device, "search.cpus_per_trial": args.cpus_per_trial,
             "search.gpus_per_trial": args.gpus_per_trial, "search.max_concurrent": args.max_concurrent,
             "search.prune": args.prune, "search.pruner": args.pruner, "search.holdout": args.holdout,
             "search.holdout_subjects": holdout_subjects, "search.time_budget_s": args.time_budget_s}
    manifest = None
    if args.resume:
        from emoma.manifest import MANIFEST_FILE

        storage = ExperimentStorage(storage_path, name)
        storage.download(MANIFEST_FILE)
        path = storage.local / MANIFEST_FILE
        if not path.is_file():
            raise UserError(f"nothing to resume at {storage.uri}: no {MANIFEST_FILE} there (check --name and "
                            "--storage-path)")
        manifest = Manifest.from_json(path.read_text(), str(path))
        if bool(manifest.outer) != bool(args.outer):
            raise UserError(f"--resume: experiment {name} was {'a nested (--outer loso)' if manifest.outer else 'a single'}"
                            f" search: {'add' if manifest.outer else 'drop'} --outer loso")
    base = manifest.config if manifest else None
    config = load_config(args.config or (None if manifest else defaults["config"]), args.set, flags=flags, base=base)
    check_folds_flag(args.folds, config)
    if manifest:
        seed_config = load_config(args.seed_config) if args.seed_config else manifest.seed_configuration()
        space = load_space(args.space, config) if args.space else space_from_dict(manifest.space, config)
    else:
        seed_config = load_config(args.seed_config or defaults["seed_config"])
        space = load_space(args.space or defaults["space"], config)
    # a key fixed on the command line (--epochs, --set) is not searched: the flag means what it says
    fixed = {key for key in space if key in _set_keys(args.set) or (key == "train.epochs" and args.epochs)}
    notes = [f"{key} fixed at {config_value(config, key)!r} by the command line: not searched" for key in sorted(fixed)]
    space = {k: v for k, v in space.items() if k not in fixed}
    if not space:
        raise UserError("the command line fixes every key of the search space, so nothing is left to search: "
                        "drop a --set, or run the one configuration with cv.py")
    if fixed:  # the seed trial runs with the fixed values too
        seed_config = load_config(None, [], flags={k: config_value(config, k) for k in fixed},
                                  base=seed_config.to_dict())
    if manifest:
        check_resume(manifest, config, seed_config if args.seed_config else None,
                     space_to_dict(space) if args.space else None, None)
    return SearchSettings(config, space, seed_config, name, storage_path, bool(args.resume), args.outer, notes,
                          getattr(args, "mlflow", None))


def _set_keys(items: list[str]) -> set[str]:
    return {item.partition("=")[0].strip() for item in items}


def config_value(config: Config, key: str):
    from emoma.config import get_dotted

    return get_dotted(config, key)


def search(settings: SearchSettings, *, address=None, verbose=False, log=print):
    """One search: run it (or continue it), write its outputs into the experiment folder, print the summary."""
    from emoma.report import format_search_summary, write_search_outputs
    from emoma.search import run_search

    tracking = search_tracking(settings)
    for note in settings.notes:
        log(f"note: {note}")
    result = _interruptible(lambda: run_search(
        settings.config, settings.space, settings.seed_config, storage_path=settings.storage_path,
        name=settings.name, address=address, resume=settings.resume, verbose=verbose, log=log, tracking=tracking),
        settings, "")
    write_search_outputs(result, settings.config)
    save_best_model(result)
    if tracking is not None:
        log_search_run(tracking, result)
    result.storage.upload_all()
    log(format_search_summary(result))
    log(f"results written to {result.storage.uri}")
    return result


def search_tracking(settings: SearchSettings):
    """(Tracker, parent run id) for --mlflow, or None. The parent run is reused when the search is resumed."""
    if not settings.mlflow:
        return None
    from emoma.space import space_to_dict
    from emoma.storage import ExperimentStorage
    from emoma.tracking import Tracker, default_uri

    storage = ExperimentStorage(settings.storage_path, settings.name)
    uri = default_uri(storage.local) if settings.mlflow == "default" else settings.mlflow
    storage.download("mlflow.db", "mlflow_run.json")
    tracker = Tracker(uri, "emoma-search")
    known = storage.local / "mlflow_run.json"
    parent = json.loads(known.read_text())["parent_run"] if settings.resume and known.is_file() else None
    if parent is None:
        params = {**flatten(settings.config.to_dict()), **{f"space.{k}": v for k, v in
                                                           space_to_dict(settings.space).items()}}
        parent = tracker.start_run(settings.name, params, tags={"emoma.kind": "search",
                                                                "emoma.storage": storage.uri})
        write_atomic(known, json.dumps({"tracking_uri": uri, "parent_run": parent}))
        storage.upload("mlflow_run.json")
    return tracker, parent


def log_search_run(tracking, result) -> None:
    """The parent run's end: data hash, held-out metrics, the report, the confusion matrix and the best model."""
    tracker, parent = tracking
    manifest = json.loads((result.folder / "manifest.json").read_text())
    tracker.set_tags(parent, {"data.sha256": manifest["data"]["sha256"], "data.path": manifest["data"]["path"],
                              "holdout_subjects": ",".join(map(str, result.holdout_subjects))})
    best = result.held["best"].result
    tracker.log_metrics(parent, {**{f"holdout_{m}": v for m, v in best.metrics.items()},
                                 f"cv_best_{result.metric}": result.best.mean, "trials": len(result.trials),
                                 "trials_completed": len(result.completed)})
    tracker.log_artifacts(parent, [result.folder / f for f in ("report.md", "confusion_matrix.png",
                                                                "best_config.yaml", "best_model.pt", "trials.csv",
                                                                "holdout_metrics.json", "manifest.json")])
    tracker.end(parent)


def nested_search(settings: SearchSettings, *, address=None, verbose=False, log=print):
    """Nested CV: the whole search once per subject, that subject held out; each outer fold writes its outputs
    as soon as it finishes, and --resume skips finished outer folds, resumes the interrupted one, starts the rest."""
    from emoma.config import apply_overrides
    from emoma.manifest import MANIFEST_FILE, Manifest, data_fingerprint
    from emoma.report import write_nested_outputs, write_search_outputs
    from emoma.search import run_search
    from emoma.space import space_to_dict
    from emoma.storage import ExperimentStorage

    config = settings.config
    root = ExperimentStorage(settings.storage_path, settings.name)
    table = load_table(config.data)
    subjects = [str(s) for s in table.subjects]
    if not settings.resume:
        if root.exists(MANIFEST_FILE):
            raise UserError(f"an experiment named {settings.name!r} already exists in {root.parent}: use --resume "
                            "to continue it or another --name")
        manifest = Manifest(name=settings.name, config=config.to_dict(), seed_config=settings.seed_config.to_dict(),
                            space=space_to_dict(settings.space), data=data_fingerprint(table, config.data.path),
                            plan_keys={}, holdout_subjects=[], fold_order=[], seed=config.seed,
                            num_samples=config.search.num_samples, outer={"scheme": "loso", "subjects": subjects})
        write_atomic(root.local / MANIFEST_FILE, manifest.to_json())
        root.upload(MANIFEST_FILE)
    for note in settings.notes:
        log(f"note: {note}")
    finished = []
    for subject in subjects:
        outer = ExperimentStorage(root.uri, f"outer-{subject}")
        outer.download("holdout_predictions.csv", "holdout_metrics.json")
        if (outer.local / "holdout_predictions.csv").is_file():
            log(f"outer fold {subject}: finished earlier, kept")
            finished.append(outer.local)
            continue
        started = outer.exists(MANIFEST_FILE)
        log(f"outer fold {subject} ({len(finished) + 1}/{len(subjects)}): "
            f"{'resuming' if started else 'starting'} the search with subject {subject} held out")
        outer_config = apply_overrides(config, {"search.holdout_subjects": [subject]})
        result = _interruptible(lambda: run_search(
            outer_config, settings.space, settings.seed_config, storage_path=root.uri, name=f"outer-{subject}",
            address=address, resume=started, verbose=verbose, log=log), settings, "--outer loso ")
        write_search_outputs(result, outer_config)
        save_best_model(result)
        result.storage.upload_all()
        finished.append(outer.local)
    out = write_nested_outputs(finished, root.local)
    root.upload_all()
    log((out / "report.md").read_text())
    log(f"results written to {root.uri}")


def search_status(name: str, storage_path: str) -> str:
    """The trials table and best so far of a running or finished experiment, read without touching it."""
    import pandas as pd

    from emoma.manifest import MANIFEST_FILE
    from emoma.report import markdown_table
    from emoma.storage import ExperimentStorage, is_uri

    storage = ExperimentStorage(storage_path, name, create=is_uri(storage_path))  # staging only for object storage
    storage.download(MANIFEST_FILE, "trials.csv", "holdout_metrics.json")
    if not (storage.local / MANIFEST_FILE).is_file():
        raise UserError(f"no experiment {name!r} at {storage.uri}: check --name and --storage-path")
    manifest = json.loads((storage.local / MANIFEST_FILE).read_text())
    metric = manifest["config"]["search"]["metric"]
    state = ("finished" if (storage.local / "holdout_metrics.json").is_file() else
             "not finished (running, or interrupted: --resume continues it)")
    path = storage.local / "trials.csv"
    trials = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["trial", "status", "mean", "std"])
    counts = trials["status"].value_counts().to_dict()
    lines = [f"experiment {name} at {storage.uri}: {state}",
             f"{len(trials)} of {manifest['num_samples']} trials finished: {counts.get('completed', 0)} completed, "
             f"{counts.get('pruned', 0)} pruned, {counts.get('error', 0)} errored"]
    completed = trials[trials["status"] == "completed"].sort_values("mean", ascending=False)
    if len(completed):
        best = completed.iloc[0]
        params = ", ".join(f"{k.removeprefix('param.')}={v}" for k, v in best.items() if k.startswith("param."))
        lines.append(f"best so far: {metric} {best['mean']:.4f} ± {best['std']:.4f} (trial {best['trial']}): {params}")
    if len(trials):
        shown = trials.sort_values(["status", "mean"], ascending=[True, False])
        columns = ["trial", "status", "mean", "std", "folds_done", "stopped_by",
                   *[c for c in trials.columns if c.startswith("param.")]]
        lines += ["", markdown_table(shown[columns].fillna("").rename(columns=lambda c: c.removeprefix("param.")))]
    return "\n".join(lines)


def save_best_model(result) -> None:
    from emoma.predict import save_model

    best = result.held["best"]
    save_model(result.folder / "best_model.pt", best.result.model, result.best_config, best.fold,
               result.feature_names, result.class_names)


def _interruptible(run, settings: SearchSettings, extra: str):
    """Run; on Ctrl-C (or a search stopped with unfinished trials) say how to continue, in one line."""
    command = f"python search.py {extra}--resume --name {settings.name} --storage-path {settings.storage_path}"
    try:
        return run()
    except KeyboardInterrupt:
        raise Interrupted(f"search {settings.name} interrupted; continue it with: {command}") from None
    except Interrupted as err:
        raise Interrupted(f"{err}; continue it with: {command}") from None
