"""Stage 4b: many configurations on Ray Tune, sampled by Optuna; every trial is a full cross-validation over
one shared fold plan (one per subject normalisation). The Tune/Optuna glue. The Ray-free parts live in
`emoma.space` (the space), `emoma.holdout` (held-out subjects, the final retraining)
and `emoma.manifest` (what defines an experiment).

Flow: manifest (written at the start, or read back by --resume) -> table -> held-out subjects removed -> fold
plans of the rest (once, into the object store) -> Tuner(TruthfulOptunaSearch, pruning over folds) -> best
among trials that ran every fold -> best and seed configurations retrained on all search subjects -> scored
once on the held-out subjects.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import optuna
import ray
from joblib import parallel_config
from ray import tune
from ray.tune.search import ConcurrencyLimiter
from ray.util.joblib import register_ray

from emoma.config import Config, at_fidelity, flatten, sampler_seed
from emoma.context import check_context, normalise_subjects, order_notes, window_length
from emoma.cv import run_folds_batched, table_context
from emoma.data import Table, load_table
from emoma.errors import Interrupted, UserError
from emoma.folds import FoldPlan, make_plan, outer_splits, plan_key, smallest_top_k
from emoma.holdout import choose_holdout, combine, retrain_and_score, subset
from emoma.manifest import MANIFEST_FILE, Manifest, data_fingerprint
from emoma.results import OOF_DIR, OOFStore, SearchResult, TrialRecord, read_trial_oof, write_trial_oof
from emoma.select import TrialJudge, describe_choice
from emoma.space import (
    TrialConfigs,
    candidate_values,
    same_params,
    seed_trial_config,
    space_max_context,
    space_norms,
    space_point,
    space_to_dict,
)
from emoma.storage import ExperimentStorage
from emoma.tune.schedulers import (
    BaselineKeepingASHA,
    StopOnUserError,
    StopReasons,
    TruthfulOptunaSearch,
    WilcoxonFoldPruner,
    read_stop_reasons,
)
from emoma.tune.watch import (
    UNFINISHED,
    LiveResults,
    MlflowTrials,
    ProgressLine,
    checkpoint_oof,
    finished_status,
    read_trials,
)

STUDY_FILE = "optuna_study.log"
STOP_REASONS_FILE = "stop_reasons.json"
_NO_DIST = optuna.distributions.CategoricalDistribution([0])  # "n_features not searched": adds no top-k


# ---------------------------------------------------------------- one trial


def run_trial(
    params: dict,
    *,
    tables: dict[str, Table],
    plans: dict[str, FoldPlan],
    configs: TrialConfigs,
    base_point: dict,
    fold_order: list[int],
) -> None:
    """One configuration's CV, reported to Tune after every fold (step = folds done).

    Folds run in `fold_order` as batched models (`emoma.batched`, see `fold_groups`) at the search's fidelity
    (`config.at_fidelity`); per-fold metrics and every scored window's class probabilities are checkpointed,
    so a restored trial resumes mid-CV and keeps its out-of-fold predictions. `tables` and `plans` are keyed
    by `data.subject_norm`; `configs` says what configuration a point runs; the base point also scores the
    same-input baselines on its folds. A user error (a bad sampled value, a missing device)
    is reported as such and stops the whole search.
    """
    done: dict[int, dict] = {}
    oof: dict[str, list[np.ndarray]] = {}
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            done = {int(k): v for k, v in json.loads((Path(folder) / "folds.json").read_text()).items()}
            oof = {k: [v] for k, v in read_trial_oof(Path(folder)).items()}
    progress = {"folds_done": len(done), "folds_total": len(fold_order)}
    try:
        base = configs.base
        config = at_fidelity(configs(params), base.search.fidelity)
        table, plan = tables[config.data.subject_norm], plans[config.data.subject_norm]
        context = table_context(table, config)
    except UserError as err:
        tune.report({"score": math.nan, "user_error": str(err), **progress})
        return
    metric = base.search.metric
    threads = max(1, int(base.search.cpus_per_trial))
    baselines = same_params(params, base_point)
    node = f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}"
    for group in fold_groups(fold_order, done, base.search):
        try:
            results = run_folds_batched(
                table, [plan.folds[i] for i in group], group, config, context, baselines=baselines, threads=threads
            )
        except UserError as err:
            tune.report({"score": math.nan, "user_error": str(err), **progress})
            return
        for i, result in zip(group, results):
            done[i] = {**result.metrics, "epochs_run": result.epochs_run, "seconds": result.seconds}
            for key, values in {
                "rows": result.test_rows,
                "proba": result.proba,
                **{f"baseline_{k}": v for k, v in result.baseline_proba.items()},
            }.items():
                oof.setdefault(key, []).append(values)
            # a pruner may stop the trial only where that saves work: after a group, before the next one
            decide = i == group[-1] and len(done) < len(fold_order)
            scores = [done[j][metric] for j in fold_order if j in done]
            with tempfile.TemporaryDirectory() as folder:
                (Path(folder) / "folds.json").write_text(json.dumps(done))
                write_trial_oof(Path(folder), {k: np.concatenate(v) for k, v in oof.items()})
                # every fold score so far rides along: a report lost with a killed worker loses nothing
                all_scores = json.dumps({j: done[j][metric] for j in fold_order if j in done})
                tune.report(
                    {
                        "score": float(np.mean(scores)),
                        "fold": i,
                        "fold_score": result.metrics[metric],
                        "fold_scores": all_scores,
                        "folds_done": len(done),
                        "folds_total": len(fold_order),
                        "decide": decide,
                        "node": node,
                        "pid": os.getpid(),
                    },
                    checkpoint=tune.Checkpoint.from_directory(folder),
                )


def pruning(s, n_folds: int) -> bool:
    """Whether trials may be stopped early: pruning is on and folds are left after the grace folds."""
    return s.prune and n_folds > s.grace_folds


def fold_groups(fold_order: list[int], done: dict, s) -> list[list[int]]:
    """The folds still to run, as the groups a trial trains as one batched model each: all of them at once, or,
    with pruning, the first `grace_folds` (after which a trial may be stopped) and then the rest; each part cut
    into `search.fold_batch` folds at a time when that is set. A pruner decides only at the end of a group."""
    todo = [i for i in fold_order if i not in done]
    first = [i for i in fold_order[: s.grace_folds] if i not in done] if s.prune else []
    parts = [p for p in (first, [i for i in todo if i not in first]) if p]
    size = s.fold_batch or len(fold_order)
    return [part[a : a + size] for part in parts for a in range(0, len(part), size)]


# ---------------------------------------------------------------- the search


def init_ray(address: str | None, verbose: bool) -> None:
    """Join a cluster (`address`) or start Ray in this process, quietly unless `verbose`."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # a checkpoint per fold is the point (resume mid-CV): silence Tune's snapshot-frequency warning
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not verbose:  # joblib's Ray backend warns on every fold plan about an argument joblib always passes
        logging.getLogger("ray.util.multiprocessing.pool").setLevel(logging.ERROR)
    if ray.is_initialized():
        return
    kwargs = dict(log_to_driver=verbose, logging_level="INFO" if verbose else "WARNING")
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as err:
        raise UserError(
            f"cannot join the Ray cluster at {address!r} ({err}): start it with `ray start --head` or check --address"
        ) from None
    if callable(sigterm) and threading.current_thread() is threading.main_thread():
        # ray.init replaces SIGTERM's handler (exit or abort, no resume line): keep the CLI's, which ends the
        # search as Ctrl-C does; Ray's own exit-time cleanup still runs
        signal.signal(signal.SIGTERM, sigterm)


def check_resources(s) -> None:
    """Refuse, before any trial starts, resources per trial that no node of the cluster has."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    cpus = max(n.get("CPU", 0) for n in nodes)
    gpus = max(n.get("GPU", 0) for n in nodes)
    if s.cpus_per_trial > cpus:
        raise UserError(
            f"--cpus-per-trial {s.cpus_per_trial:g} is more than any node of the cluster has (the largest "
            f"has {cpus:g} CPUs): lower it"
        )
    if s.gpus_per_trial > 0 and gpus < s.gpus_per_trial:
        where = "no node of the cluster has a GPU" if gpus == 0 else f"the largest node has {gpus:g} GPUs"
        raise UserError(
            f"--gpus-per-trial {s.gpus_per_trial:g} cannot be met: {where}; use --gpus-per-trial 0 "
            "or join a cluster with GPUs (--address)"
        )


@dataclass
class Experiment:
    """What a search runs on, built once before Ray starts trials (from the manifest when resuming)."""

    storage: ExperimentStorage
    manifest: Manifest
    raw: Table  # the loaded table, before subject normalisation
    holdout: list  # held-out subject ids
    tables: dict[str, Table]  # subject normalisation -> the whole normalised table
    search_tables: dict[str, Table]  # the same without the held-out subjects
    smallest_k: int  # the smallest top-k any trial takes (the plans' RFE stops there)
    seed_run: Config  # what the seed trial runs
    base_point: dict  # the base configuration's point of the space (it runs first)
    seed_point: dict  # the seed trial's point of the space (it runs second)
    notes: list[str]

    @property
    def first_points(self) -> list[dict]:
        """The points every search evaluates first, never pruned: the base, then the seed (once if they agree)."""
        return [self.base_point] + ([] if same_params(self.seed_point, self.base_point) else [self.seed_point])

    def trial_configs(self, base: Config) -> TrialConfigs:
        return TrialConfigs(base, self.seed_run, self.seed_point)


def run_search(
    config: Config,
    space: dict,
    seed_config: Config,
    *,
    storage_path: str | Path,
    name: str,
    address: str | None = None,
    resume: bool = False,
    verbose: bool = False,
    log=print,
    tracking: tuple | None = None,
) -> SearchResult:
    """Search `space` around `config` on Ray Tune; choose the final model from the trials' out-of-fold
    predictions (`search.select`), estimate it with BBC-CV, retrain it with the base and seed configurations
    and score them on the held-out subjects.

    With `resume`, the experiment's manifest decides everything that defines it (the caller has checked that
    the command line does not contradict it); `config.search.num_samples` above the manifest's extends it.
    `tracking` is (emoma.tracking.Tracker, parent run id) for one MLflow child run per trial.
    """
    start = time.perf_counter()
    if not verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    exp = prepare_experiment(config, space, seed_config, storage_path, name, resume, log)
    init_ray(address, verbose)
    check_resources(config.search)
    plans = fold_plans(exp, config, log)
    plan = next(iter(plans.values()))
    table = next(iter(exp.search_tables.values()))
    store = OOFStore.for_plan(table.groups, table.y, [f.test for f in plan.folds], table.class_names)
    trainable = tune.with_parameters(
        run_trial,
        tables=exp.search_tables,
        plans=plans,
        configs=exp.trial_configs(config),
        base_point=exp.base_point,
        fold_order=exp.manifest.fold_order,
    )
    judge = TrialJudge(
        store,
        exp.trial_configs(config),
        exp.base_point,
        exp.seed_point,
        config.search,
        len(table.feature_names),
        config.seed,
    )
    grids = _run_tune(exp, config, space, trainable, judge, verbose, log, tracking)
    reasons = read_stop_reasons(exp.storage.local / STOP_REASONS_FILE)
    trials = [t for grid in grids for t in _records(grid, config.search.metric, reasons)]
    completed = [t for t in trials if t.status == "completed"]
    if not completed:
        errors = [str(r.error).strip().splitlines()[-1] for grid in grids for r in grid if r.error][:1]
        raise UserError(
            f"no trial of search {name} completed every fold"
            f"{' (first error: ' + errors[0] + ')' if errors else ''}: see trial_*/error.txt in "
            f"{exp.storage.uri}"
        )
    base_trial, seed_trial = _find(trials, exp.base_point), _find(trials, exp.seed_point)
    for grid in grids:
        for r in grid:
            trial_id = _trial_id(r)
            store.add_trial(
                trial_id,
                checkpoint_oof(r.checkpoint),
                baselines=base_trial is not None and trial_id == base_trial.trial_id,
            )
    exp.storage.upload(*store.save(exp.storage.local))
    lost = [t.trial_id for t in completed if not store.complete(t.trial_id)]
    if lost:
        log(
            f"note: completed trials {', '.join(lost)} lack out-of-fold predictions for some windows (checkpoints "
            "lost?): the final choice is made without them"
        )
    selection, curve = judge.select(trials, curve=True)
    best = next(t for t in trials if t.trial_id == selection.summary["naive_best"]["trial"])
    configs = exp.trial_configs(config)
    final_configs = {t: configs(next(r.params for r in trials if r.trial_id == t)) for t in selection.weights}
    estimate = selection.summary["bbc_cv"]
    log(
        f"best of {len(completed)} completed trials: {config.search.metric} {best.mean:.4f} ± {best.std:.4f} "
        f"(naive, optimistic); final choice by rule {selection.rule}: {describe_choice(selection.weights)}; BBC-CV "
        "estimate "
        f"{estimate['estimate']:.4f} [{estimate['ci_low']:.4f}, {estimate['ci_high']:.4f}]; retraining it with the "
        "base and seed configurations on all search subjects"
    )
    retrain = {"base": config, "seed": exp.seed_run, **{f"final {t}": c for t, c in final_configs.items()}}
    held = retrain_and_score(
        exp.tables,
        exp.holdout,
        retrain,
        config,
        baselines_for="base",
        keep_models_for=tuple(f"final {t}" for t in final_configs),
        threads=max(1, int(config.search.cpus_per_trial)),
    )
    held["final"] = combine(
        [held[f"final {t}"] for t in final_configs], list(selection.weights.values()), len(table.class_names)
    )
    return SearchResult(
        name=name,
        storage=exp.storage,
        metric=config.search.metric,
        holdout_subjects=exp.holdout,
        search_subjects=[s for s in exp.raw.subjects if s not in exp.holdout],
        plan=plan,
        trials=trials,
        base_trial=base_trial,
        seed_trial=seed_trial,
        best=best,
        best_config=configs(best.params),
        base_config=config,
        seed_config=exp.seed_run,
        selection=selection,
        final_configs=final_configs,
        curve=curve,
        held=held,
        feature_names=table.feature_names,
        class_names=table.class_names,
        space=space,
        importances=param_importances(exp.storage.local, name, config.seed),
        seconds=time.perf_counter() - start,
        pruner=config.search.pruner if pruning(config.search, len(exp.manifest.fold_order)) else "none",
        fidelity=config.search.fidelity,
        notes=list(plan.notes) + exp.notes,
        window_s=window_length(exp.raw, config.data.window_s),
    )


def _find(trials: list[TrialRecord], point: dict) -> TrialRecord | None:
    return next((t for t in trials if same_params(t.params, point)), None)


def prepare_experiment(
    config: Config, space: dict, seed_config: Config, storage_path, name: str, resume: bool, log
) -> Experiment:
    """The table, held-out subjects, normalised tables, seed trial and manifest (written now, or read back)."""
    storage = ExperimentStorage(str(storage_path), name)
    storage.check_writable()
    manifest = read_manifest(storage) if resume else None
    if not resume and (storage.exists(MANIFEST_FILE) or tune.Tuner.can_restore(storage.uri)):
        raise UserError(
            f"an experiment named {name!r} already exists in {storage.parent}: use --resume to continue "
            "it or another --name"
        )
    raw = load_table(config.data)
    data = data_fingerprint(raw, config.data.path)
    if manifest is not None and data["sha256"] != manifest.data["sha256"]:
        raise UserError(
            f"--resume: the data {data['path'] or 'synthetic table'} changed since experiment {name} "
            f"started (sha256 {manifest.data['sha256'][:12]}... then, {data['sha256'][:12]}... now): "
            "restore the file or start a new experiment"
        )
    check_context(raw, space_max_context(config, space))
    seed_run, notes = seed_trial_config(config, seed_config, space)
    notes += order_notes(
        raw, space_max_context(config, space), "causal" if "causal" in space_norms(config, space) else "none"
    )
    seed_point = space_point(seed_run, space)
    base_point = space_point(config, space, what="base config (--config)")
    check_first_points(config, seed_run, base_point, seed_point)
    holdout = (
        choose_holdout(raw, config.search, config.seed)
        if manifest is None
        else [s for s in raw.subjects if str(s) in manifest.holdout_subjects]
    )
    is_held = np.isin(raw.groups, holdout)
    log(
        f"data: {raw.source}: {len(raw.y)} windows, {len(raw.subjects)} subjects; held out of the search: "
        f"subjects {', '.join(map(str, holdout))} ({int(is_held.sum())} windows)"
    )
    # subject normalisation reads each subject's own rows only, so it is applied to the whole table once
    tables = {
        norm: normalise_subjects(raw, replace(config.data, subject_norm=norm)) for norm in space_norms(config, space)
    }
    search_tables = {norm: subset(t, np.flatnonzero(~is_held)) for norm, t in tables.items()}
    smallest_k = smallest_top_k(
        [config.model.n_features, seed_run.model.n_features, *candidate_values(space.get("model.n_features", _NO_DIST))]
    )
    keys = {norm: plan_key(t, config.cv, config.seed, smallest_k) for norm, t in search_tables.items()}
    if manifest is None:
        n_folds = len(outer_splits(next(iter(search_tables.values())), config.cv, config.seed))
        manifest = Manifest(
            name=name,
            config=config.to_dict(),
            seed_config=seed_config.to_dict(),
            space=space_to_dict(space),
            data=data,
            plan_keys=keys,
            holdout_subjects=[str(s) for s in holdout],
            fold_order=[int(i) for i in np.random.default_rng(config.seed).permutation(n_folds)],
            seed=config.seed,
            num_samples=config.search.num_samples,
            runs=[{"path": ".", "num_samples": config.search.num_samples}],
        )
        write_manifest(storage, manifest)
    elif manifest.plan_keys != keys:
        raise UserError(
            f"--resume: the fold plans of experiment {name} cannot be rebuilt the same way (plan keys "
            f"{manifest.plan_keys} then, {keys} now; another EmoMA version?): start a new experiment"
        )
    if config.search.prune and not pruning(config.search, len(manifest.fold_order)):
        notes.append(
            f"no pruning: every trial runs its {len(manifest.fold_order)} folds, no more than "
            f"search.grace_folds ({config.search.grace_folds}), so stopping a trial would save nothing"
        )
    for note in notes:
        log(f"note: {note}")
    return Experiment(
        storage, manifest, raw, holdout, tables, search_tables, smallest_k, seed_run, base_point, seed_point, notes
    )


def check_first_points(base: Config, seed_run: Config, base_point: dict, seed_point: dict) -> None:
    """The base and seed trials are told apart by their points of the space: where the points agree, the two
    configurations must too (one trial then stands for both)."""
    if not same_params(seed_point, base_point):
        return
    ours, theirs = flatten(base.to_dict()), flatten(seed_run.to_dict())
    differ = [k for k in ours if k.startswith(("model.", "train.")) and ours[k] != theirs[k]]
    if differ:
        raise UserError(
            f"the base and seed configurations share every searched value but differ in {differ[0]} "
            f"({ours[differ[0]]!r} and {theirs[differ[0]]!r}): their trials could not be told apart; "
            "search that key, or make the two agree"
        )


def fold_plans(exp: Experiment, config: Config, log) -> dict[str, FoldPlan]:
    """One fold plan per subject normalisation, as Ray tasks across the cluster (cached on disk)."""
    register_ray()
    plan_cfg = config.cv if config.cv.jobs else replace(config.cv, jobs=int(ray.cluster_resources().get("CPU", 1)))
    many = len(exp.search_tables) > 1
    log(
        f"fold plan{'s' if many else ''}: fitting the scaler and RFE of every fold on the cluster "
        "(cached after the first time)"
    )
    plans = {}
    with parallel_config(backend="ray"):
        for norm, table in exp.search_tables.items():
            plans[norm] = make_plan(table, plan_cfg, config.seed, exp.smallest_k)
    plan = next(iter(plans.values()))
    log(
        f"fold plan{'s' if many else ''}: {len(plan.folds)} {plan.scheme} folds over "
        f"{len(exp.raw.subjects) - len(exp.holdout)} subjects, subject normalisation {', '.join(plans)} "
        f"({', '.join('from cache' if p.from_cache else f'{p.seconds:.1f} s' for p in plans.values())})"
    )
    for note in plan.notes:
        log(f"WARNING: {note}")
    return plans


def _run_tune(
    exp: Experiment, config: Config, space: dict, trainable, judge: TrialJudge, verbose: bool, log, tracking
) -> list:
    """Fit (or restore and finish) every Tune run of the experiment; add a run when --num-samples grew."""
    storage, manifest = exp.storage, exp.manifest
    planned = sum(run["num_samples"] for run in manifest.runs)
    if config.search.num_samples > planned:
        extra = config.search.num_samples - planned
        manifest.runs.append({"path": f"extend-{len(manifest.runs)}", "num_samples": extra})
        manifest.num_samples = manifest.config["search"]["num_samples"] = config.search.num_samples
        write_manifest(storage, manifest)
        log(
            f"extending the search from {planned} to {config.search.num_samples} trials ({extra} more, Tune "
            f"experiment {manifest.runs[-1]['path']}); Optuna continues the same study"
        )
    storage.download(STUDY_FILE, STOP_REASONS_FILE, "trials.csv")
    storage.download_folder(OOF_DIR)  # earlier sessions' trials, for the selection while this one runs
    session = time.time()
    watchers = [
        LiveResults(
            storage,
            manifest.name,
            config.search.metric,
            len(manifest.fold_order),
            manifest.num_samples,
            judge,
            str(storage.local / STOP_REASONS_FILE),
            also_upload=(STUDY_FILE, STOP_REASONS_FILE),
        ),
        StopOnUserError(),
    ]
    if tracking is not None:
        watchers.append(MlflowTrials(*tracking, config.search.metric, storage.local))
    resources = {"cpu": config.search.cpus_per_trial, "gpu": config.search.gpus_per_trial}
    grids = []
    for i, run in enumerate(manifest.runs):
        path = storage.uri if run["path"] == "." else f"{storage.uri}/{run['path']}"
        if tune.Tuner.can_restore(path):
            tuner = tune.Tuner.restore(path, trainable=tune.with_resources(trainable, resources), resume_errored=True)
            # Tune restores the callbacks and scheduler pickled when the run started: this command's own
            # watchers replace them, and the scheduler learns where to write and what earlier runs scored
            tuner._local_tuner.get_run_config().callbacks = _callbacks(verbose, run["num_samples"], watchers)
            _refresh_scheduler(tuner._local_tuner._tune_config.scheduler, storage)
        else:
            tuner = _new_tuner(
                storage,
                config,
                space,
                exp.first_points,
                i == 0,
                trainable,
                resources,
                run,
                len(manifest.fold_order),
                verbose,
                watchers,
                seed=sampler_seed(config) + i,
            )
        try:
            with _own_signal_handlers():
                grid = tuner.fit()
        finally:
            storage.upload(STUDY_FILE, STOP_REASONS_FILE)
        errors = [
            r.metrics["user_error"]
            for r in grid
            if (r.metrics or {}).get("user_error") and r.metrics.get("timestamp", session) >= session
        ]  # not an earlier session's, fixed since
        if errors:
            raise UserError(errors[0])
        unfinished = len(grid) - grid.num_terminated - grid.num_errors
        if unfinished or (len(grid) < run["num_samples"] and not config.search.time_budget_s):
            raise Interrupted(f"search {manifest.name} stopped with {max(unfinished, 1)} trials unfinished")
        grids.append(grid)
    return grids


@contextlib.contextmanager
def _own_signal_handlers():
    """Tune installs SIGINT/SIGUSR1 handlers that end its run, and leaves them installed after it: without this, a
    Ctrl-C during the final retraining would be swallowed by a handler whose run is over."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGUSR1)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _refresh_scheduler(scheduler, storage: ExperimentStorage) -> None:
    if hasattr(scheduler, "reasons"):
        scheduler.reasons = StopReasons(storage.local / STOP_REASONS_FILE)
    if isinstance(scheduler, WilcoxonFoldPruner):
        scheduler.remember({t.trial_id: t.fold_scores for t in read_trials(storage.local / "trials.csv").values()})


def _callbacks(verbose: bool, num_samples: int, watchers: list) -> list:
    return ([] if verbose else [ProgressLine(num_samples)]) + watchers


def _new_tuner(
    storage: ExperimentStorage,
    config: Config,
    space: dict,
    first_points: list[dict],
    first_run: bool,
    trainable,
    resources: dict,
    run: dict,
    n_folds: int,
    verbose: bool,
    watchers: list,
    seed: int,
):
    """A Tuner for one run of the experiment: the first run evaluates `first_points` first; no pruner ever
    stops those points."""
    s = config.search
    searcher = TruthfulOptunaSearch(
        space=space,
        metric="score",
        mode="max",
        points_to_evaluate=first_points if first_run else None,
        sampler=optuna.samplers.TPESampler(seed=seed),
        study_name=storage.name,
        storage=study_storage(storage.local),
    )
    # Tune lets a custom searcher have one pending trial unless it is wrapped in a ConcurrencyLimiter
    search_alg = ConcurrencyLimiter(searcher, max_concurrent=s.max_concurrent or trial_slots(s))
    reasons = StopReasons(storage.local / STOP_REASONS_FILE)
    scheduler = None
    if pruning(s, n_folds) and s.pruner == "asha":
        scheduler = BaselineKeepingASHA(
            first_points,
            reasons,
            time_attr="folds_done",
            max_t=n_folds,
            grace_period=s.grace_folds,
            reduction_factor=s.reduction_factor,
        )
    elif pruning(s, n_folds):
        earlier = {t.trial_id: t.fold_scores for t in read_trials(storage.local / "trials.csv").values()}
        scheduler = WilcoxonFoldPruner(
            first_points,
            reasons,
            min_folds=s.grace_folds,
            p_threshold=s.wilcoxon_p,
            folds_total=n_folds,
            earlier=earlier,
        )
    tune_path = (storage.parent, storage.name) if run["path"] == "." else (storage.uri, run["path"])
    return tune.Tuner(
        tune.with_resources(trainable, resources),
        tune_config=tune.TuneConfig(
            metric="score",
            mode="max",
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=run["num_samples"],
            reuse_actors=True,
            trial_dirname_creator=trial_dirname,
            time_budget_s=s.time_budget_s or None,
        ),
        run_config=tune.RunConfig(
            name=tune_path[1],
            storage_path=tune_path[0],
            verbose=2 if verbose else 0,
            callbacks=_callbacks(verbose, run["num_samples"], watchers),
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            # two kept: the newest is always complete when a worker dies mid-write
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def trial_slots(s) -> int:
    """How many trials the cluster's resources hold at once."""
    resources = ray.cluster_resources()
    slots = resources.get("CPU", 1) // s.cpus_per_trial
    if s.gpus_per_trial:
        slots = min(slots, resources.get("GPU", 0) // s.gpus_per_trial)
    return max(1, int(slots))


def _trial_id(result) -> str:
    return str((result.metrics or {}).get("trial_id", os.path.basename(result.path)))


def _records(grid, metric: str, reasons: dict) -> list[TrialRecord]:
    records = []
    for result in grid:
        last = result.metrics or {}
        fold_scores = {int(f): float(s) for f, s in json.loads(last.get("fold_scores") or "{}").items()}
        status = finished_status(last, error=result.error is not None)
        trial_id = _trial_id(result)
        records.append(
            TrialRecord(
                trial_id=trial_id,
                params=dict(result.config),
                fold_scores=fold_scores,
                status=status,
                seconds=float(last.get("time_total_s", math.nan)),
                node=str(last.get("node", "")),
                stopped_by=reasons.get(trial_id, UNFINISHED) if status == "pruned" else "",
            )
        )
    return records


def read_manifest(storage: ExperimentStorage) -> Manifest:
    storage.download(MANIFEST_FILE)
    path = storage.local / MANIFEST_FILE
    if not path.is_file():
        raise UserError(
            f"nothing to resume at {storage.uri}: no {MANIFEST_FILE} there (check --name and --storage-path)"
        )
    return Manifest.from_json(path.read_text(), str(path))


def write_manifest(storage: ExperimentStorage, manifest: Manifest) -> None:
    from emoma.files import write_atomic

    write_atomic(storage.local / MANIFEST_FILE, manifest.to_json())
    storage.upload(MANIFEST_FILE)


def study_storage(folder: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / STUDY_FILE)))


def load_study(folder: Path, name: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=name or folder.name, storage=study_storage(folder))


def param_importances(folder: Path, name: str, seed: int = 0) -> dict[str, float]:
    """Optuna's fANOVA parameter importances (seeded) over the completed trials ({} when too few)."""
    study = load_study(folder, name)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 3:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "importances will be equal" on tiny studies
            return optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed)
            )
    except (RuntimeError, ValueError):
        return {}
