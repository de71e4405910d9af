"""The stages chained for `search.py`: settings (from the command line, or from the experiment's manifest
when resuming) -> search (emoma.tune.search, on Ray) -> outputs, model and tracking; the nested search with one
experiment per outer subject, each written as soon as it finishes; `--status` of a running experiment."""

from __future__ import annotations

import functools
import json
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from emoma.config import Config, apply_overrides, flag_overrides, flatten, get_dotted, load_config, sampler_seed
from emoma.data import load_table
from emoma.errors import Interrupted, UserError, invoked_as
from emoma.files import write_atomic
from emoma.manifest import MANIFEST_FILE, SELECTION_KEYS, Manifest, check_resume, data_fingerprint
from emoma.pipeline import check_folds_flag
from emoma.report.common import markdown_table
from emoma.report.nested import write_nested_outputs
from emoma.report.search import estimate_line, format_search_summary, write_search_outputs
from emoma.space import check_fidelity, load_space, space_from_dict, space_to_dict
from emoma.storage import ExperimentStorage, is_uri

say = functools.partial(print, flush=True)  # progress lines reach logs and pipes as they happen
FINAL_MODEL = "final_model.pt"


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
    holdout_subjects = [s.strip() for s in args.holdout_subjects.split(",")] if args.holdout_subjects else None
    flags = flag_overrides(args) | {
        "search.num_samples": args.num_samples,
        "search.metric": args.metric,
        "train.metric": args.metric,
        "search.cpus_per_trial": args.cpus_per_trial,
        "search.gpus_per_trial": args.gpus_per_trial,
        "search.max_concurrent": args.max_concurrent,
        "search.prune": args.prune,
        "search.pruner": args.pruner,
        "search.holdout": args.holdout,
        "search.holdout_subjects": holdout_subjects,
        "search.time_budget_s": args.time_budget_s,
        "search.select": args.select,
        "search.fidelity": args.fidelity,
    }
    manifest = None
    if args.resume:
        storage = ExperimentStorage(storage_path, name)
        storage.download(MANIFEST_FILE)
        path = storage.local / MANIFEST_FILE
        if not path.is_file():
            raise UserError(
                f"nothing to resume at {storage.uri}: no {MANIFEST_FILE} there (check --name and --storage-path)"
            )
        manifest = Manifest.from_json(path.read_text(), str(path))
        if bool(manifest.outer) != bool(args.outer):
            raise UserError(
                f"--resume: experiment {name} was {'a nested (--outer loso)' if manifest.outer else 'a single'}"
                f" search: {'add' if manifest.outer else 'drop'} --outer loso"
            )
    base = manifest.config if manifest else None
    config = load_config(args.config or (None if manifest else defaults["config"]), args.set, flags=flags, base=base)
    check_folds_flag(args.folds, config)
    # model, train and data settings given on the command line (--set, --epochs, --device, --metric) hold for
    # every trial, the seed trial included: the flag means what it says, and a searched key it sets leaves the space
    given = {k for k in _set_keys(args.set) if k.startswith(("model.", "train.", "data."))}
    given |= {k for k, v in flags.items() if v is not None and k.startswith("train.")}
    if manifest:
        seed_config = load_config(args.seed_config) if args.seed_config else manifest.seed_configuration()
        space = load_space(args.space, config) if args.space else space_from_dict(manifest.space, config)
        given -= {k for k in given if k.startswith("data.") and k in space}  # searched by an experiment begun
        # before data keys were fixed: it resumes as it began
        clash = sorted(given & set(space))
        if clash:
            raise UserError(
                f"--resume: {clash[0]} is searched in experiment {name}; it cannot be fixed on resume: drop the option"
            )
    else:
        seed_config = load_config(args.seed_config or defaults["seed_config"])
        space = load_space(args.space or defaults["space"], config)
    check_fidelity(space, config)
    fixed = sorted(given & set(space))
    notes = [f"{key} fixed at {get_dotted(config, key)!r} by the command line: not searched" for key in fixed]
    space = {k: v for k, v in space.items() if k not in fixed}
    if not space:
        raise UserError(
            "the command line fixes every key of the search space, so nothing is left to search: "
            f"drop a --set, or run the one configuration with {invoked_as('cv')}"
        )
    if given and not (manifest and not args.seed_config):
        seed_config = load_config(None, [], flags={k: get_dotted(config, k) for k in given}, base=seed_config.to_dict())
        notes += [
            "the seed configuration also runs with "
            f"{', '.join(f'{k}={get_dotted(config, k)!r}' for k in sorted(given))} "
            "from the command line"
        ]
    if manifest:
        check_resume(
            manifest,
            config,
            seed_config if args.seed_config else None,
            space_to_dict(space) if args.space else None,
            None,
        )
        started = flatten(manifest.base_config().to_dict())
        notes += [
            f"{key}={get_dotted(config, key)!r} for the final choice (the experiment started with {started[key]!r})"
            for key in SELECTION_KEYS
            if started[key] != get_dotted(config, key)
        ]
    mlflow = getattr(args, "mlflow", None)
    if mlflow and args.outer:
        raise UserError("--mlflow is not supported with --outer yet: track a single search, or drop --mlflow")
    return SearchSettings(config, space, seed_config, name, storage_path, bool(args.resume), args.outer, notes, mlflow)


def _set_keys(items: list[str]) -> set[str]:
    return {item.partition("=")[0].strip() for item in items}


def search(settings: SearchSettings, *, address=None, verbose=False, log=say):
    """One search: run it (or continue it), write its outputs into the experiment folder, print the summary."""
    from emoma.tune.search import run_search

    storage = ExperimentStorage(settings.storage_path, settings.name, create=False)
    if not settings.resume and storage.exists(MANIFEST_FILE):
        raise UserError(
            f"an experiment named {settings.name!r} already exists in {storage.parent}: use --resume to "
            "continue it or another --name"
        )
    tracking = search_tracking(settings)
    for note in settings.notes:
        log(f"note: {note}")

    def run():
        result = run_search(
            settings.config,
            settings.space,
            settings.seed_config,
            storage_path=settings.storage_path,
            name=settings.name,
            address=address,
            resume=settings.resume,
            verbose=verbose,
            log=log,
            tracking=tracking,
        )
        write_search_outputs(result, settings.config)
        save_final_model(result)
        if tracking is not None:
            log_search_run(tracking, result)
        result.storage.upload_all()
        return result

    try:
        result = _interruptible(run, settings, "")
    except BaseException as err:
        if tracking is not None:
            tracking[0].end(tracking[1], "KILLED" if isinstance(err, Interrupted) else "FAILED")
        raise
    log(format_search_summary(result))
    log(f"results written to {result.storage.uri}")
    return result


def search_tracking(settings: SearchSettings):
    """(Tracker, parent run id) for --mlflow, or None. The parent run is reused when the search is resumed."""
    if not settings.mlflow:
        return None
    from emoma.tracking import Tracker, default_uri  # the optional extra emoma[mlflow]

    storage = ExperimentStorage(settings.storage_path, settings.name)
    uri = default_uri(storage.local) if settings.mlflow == "default" else settings.mlflow
    storage.download("mlflow.db", "mlflow_run.json")
    tracker = Tracker(uri, "emoma-search")
    known = storage.local / "mlflow_run.json"
    parent = json.loads(known.read_text())["parent_run"] if settings.resume and known.is_file() else None
    if parent is None:
        params = {
            **flatten(settings.config.to_dict()),
            **{f"space.{k}": v for k, v in space_to_dict(settings.space).items()},
        }
        parent = tracker.start_run(settings.name, params, tags={"emoma.kind": "search", "emoma.storage": storage.uri})
        write_atomic(known, json.dumps({"tracking_uri": uri, "parent_run": parent}))
        storage.upload("mlflow_run.json")
    return tracker, parent


def log_search_run(tracking, result) -> None:
    """The parent run's end: data hash, the final choice and its BBC-CV estimate, held-out metrics, the report,
    the confusion matrix and the final model."""
    from emoma.tracking import log_selection

    tracker, parent = tracking
    manifest = json.loads((result.folder / "manifest.json").read_text())
    tracker.set_tags(
        parent,
        {
            "data.sha256": manifest["data"]["sha256"],
            "data.path": manifest["data"]["path"],
            "holdout_subjects": ",".join(map(str, result.holdout_subjects)),
        },
    )
    log_selection(tracker, parent, result.selection.summary)
    tracker.log_metrics(
        parent,
        {
            **{
                f"holdout_{k}_{m}": v
                for k in ("final", "base", "seed")
                for m, v in result.held[k].result.metrics.items()
            },
            "trials": len(result.trials),
            "trials_completed": len(result.completed),
        },
    )
    tracker.log_artifacts(
        parent,
        [
            result.folder / f
            for f in (
                "report.md",
                "confusion_matrix.png",
                "bbc_curve.png",
                "final_config.yaml",
                "final_model.pt",
                "trials.csv",
                "search_metrics.json",
                "holdout_metrics.json",
                "manifest.json",
            )
        ],
    )
    tracker.end(parent)


def outer_sampler_seed(seed: int, subject: str) -> int:
    """An outer fold's sampler seed: the same for the same seed and subject in every process, different across
    subjects."""
    return int(np.random.SeedSequence([seed, zlib.crc32(str(subject).encode())]).generate_state(1)[0] % 2**31)


def nested_search(settings: SearchSettings, *, address=None, verbose=False, log=say):
    """Nested CV: the whole search once per subject, that subject held out; each outer fold writes its outputs
    as soon as it finishes, and --resume skips finished outer folds, resumes the interrupted one, starts the rest."""
    from emoma.tune.search import run_search

    config = settings.config
    root = ExperimentStorage(settings.storage_path, settings.name)
    table = load_table(config.data)
    subjects = [str(s) for s in table.subjects]
    if settings.resume:
        manifest = Manifest.from_json((root.local / MANIFEST_FILE).read_text(), str(root.local / MANIFEST_FILE))
        data = data_fingerprint(table, config.data.path)
        if data["sha256"] != manifest.data["sha256"]:
            raise UserError(
                f"--resume: the data {data['path'] or 'synthetic table'} changed since experiment "
                f"{settings.name} started: restore the file or start a new experiment"
            )
        subjects = manifest.outer["subjects"]
    else:
        if root.exists(MANIFEST_FILE):
            raise UserError(
                f"an experiment named {settings.name!r} already exists in {root.parent}: use --resume "
                "to continue it or another --name"
            )
        manifest = Manifest(
            name=settings.name,
            config=config.to_dict(),
            seed_config=settings.seed_config.to_dict(),
            space=space_to_dict(settings.space),
            data=data_fingerprint(table, config.data.path),
            plan_keys={},
            holdout_subjects=[],
            fold_order=[],
            seed=config.seed,
            num_samples=config.search.num_samples,
            outer={"scheme": "loso", "subjects": subjects},
        )
        write_atomic(root.local / MANIFEST_FILE, manifest.to_json())
        root.upload(MANIFEST_FILE)
    for note in settings.notes:
        log(f"note: {note}")
    finished = []
    for subject in subjects:
        outer = ExperimentStorage(root.uri, f"outer-{subject}")
        outer.download("holdout_predictions.csv", "holdout_metrics.json", "search_metrics.json", FINAL_MODEL)
        if all((outer.local / f).is_file() for f in ("holdout_predictions.csv", FINAL_MODEL)):
            log(f"outer fold {subject}: finished earlier, kept")
            finished.append(outer.local)
            continue
        started = outer.exists(MANIFEST_FILE)
        log(
            f"outer fold {subject} ({len(finished) + 1}/{len(subjects)}): "
            f"{'resuming' if started else 'starting'} the search with subject {subject} held out"
        )
        outer_seed = outer_sampler_seed(sampler_seed(config), subject)
        outer_config = apply_overrides(
            config, {"search.holdout_subjects": [subject], "search.sampler_seed": outer_seed}
        )
        result = _interruptible(
            functools.partial(
                run_search,
                outer_config,
                settings.space,
                settings.seed_config,
                storage_path=root.uri,
                name=f"outer-{subject}",
                address=address,
                resume=started,
                verbose=verbose,
                log=log,
            ),
            settings,
            "--outer loso ",
        )
        write_search_outputs(result, outer_config)
        save_final_model(result)
        result.storage.upload_all()
        finished.append(outer.local)
    out = write_nested_outputs(finished, root.local)
    root.upload_all()
    log((out / "report.md").read_text())
    log(f"results written to {root.uri}")


def search_status(name: str, storage_path: str) -> str:
    """The trials table and best so far of a running or finished experiment, read without touching it."""
    storage = ExperimentStorage(storage_path, name, create=is_uri(storage_path))  # staging only for object storage
    storage.download(MANIFEST_FILE, "trials.csv", "holdout_metrics.json", "search_metrics.json")
    if not (storage.local / MANIFEST_FILE).is_file():
        raise UserError(f"no experiment {name!r} at {storage.uri}: check --name and --storage-path")
    manifest = json.loads((storage.local / MANIFEST_FILE).read_text())
    metric = manifest["config"]["search"]["metric"]
    state = (
        "finished"
        if (storage.local / "holdout_metrics.json").is_file()
        else "not finished (running, or interrupted: --resume continues it)"
    )
    path = storage.local / "trials.csv"
    trials = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["trial", "status", "mean", "std"])
    counts = trials["status"].value_counts().to_dict()
    lines = [
        f"experiment {name} at {storage.uri}: {state}",
        f"{len(trials)} of {manifest['num_samples']} trials finished: {counts.get('completed', 0)} completed, "
        f"{counts.get('pruned', 0)} pruned, {counts.get('error', 0)} errored",
    ]
    completed = trials[trials["status"] == "completed"].sort_values("mean", ascending=False)
    if len(completed):
        best = completed.iloc[0]
        params = ", ".join(f"{k.removeprefix('param.')}={v}" for k, v in best.items() if k.startswith("param."))
        lines.append(f"best so far: {metric} {best['mean']:.4f} ± {best['std']:.4f} (trial {best['trial']}): {params}")
    selection = storage.local / "search_metrics.json"
    if selection.is_file():
        summary = json.loads(selection.read_text())
        lines.append(("so far, " if summary["partial"] else "") + estimate_line(summary))
    if len(trials):
        shown = trials.sort_values(["status", "mean"], ascending=[True, False])
        columns = [
            "trial",
            "status",
            "mean",
            "std",
            "folds_done",
            "stopped_by",
            *[c for c in trials.columns if c.startswith("param.")],
        ]
        lines += ["", markdown_table(shown[columns].fillna("").rename(columns=lambda c: c.removeprefix("param.")))]
    return "\n".join(lines)


def save_final_model(result) -> None:
    """final_model.pt: the final choice retrained (an ensemble's members with their weights)."""
    result.final_model.save(result.folder / FINAL_MODEL)


def _interruptible(run, settings: SearchSettings, extra: str):
    """Run; on Ctrl-C (or a search stopped with unfinished trials) say how to continue, in one line."""
    command = f"{invoked_as('search')} {extra}--resume --name {settings.name} --storage-path {settings.storage_path}"
    try:
        return run()
    except KeyboardInterrupt:
        raise Interrupted(f"search {settings.name} interrupted; continue it with: {command}") from None
    except Interrupted as err:
        raise Interrupted(f"{err}; continue it with: {command}") from None
