"""Stage 4b: many configurations on Ray Tune, sampled by Optuna; every trial is a full CV over one shared
FoldPlan. The only module that imports Ray or Optuna.

Flow: table -> held-out subjects removed -> fold plan of the rest (once, into the object store) ->
Tuner(OptunaSearch, ASHA over folds unless --no-prune) -> best among trials that ran every fold -> retrained on all
search subjects -> scored once on the held-out subjects.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import optuna
import ray
import yaml
from joblib import parallel_config
from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from ray.util.joblib import register_ray

from emoma.config import Config, apply_overrides, get_dotted
from emoma.context import check_context, normalise_subjects
from emoma.cv import FoldResult, run_fold, run_folds_batched, table_context
from emoma.data import Table, load_table
from emoma.errors import UserError
from emoma.folds import Fold, FoldPlan, fit_fold, make_plan

CONV_KEYS = ("model.conv_blocks", "model.conv_width")  # derived keys that build model.conv_channels
STUDY_FILE = "optuna_study.log"


# ---------------------------------------------------------------- search space

def load_space(path: str | Path) -> dict[str, optuna.distributions.BaseDistribution]:
    """Read configs/search_space.yaml into Optuna distributions, keyed by config key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"search space {path} does not exist: give a YAML file such as configs/search_space.yaml")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise UserError(f"search space {path} is not valid YAML: fix its syntax") from None
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"search space {path} must map config keys to ranges, e.g. 'train.lr: {{float: [1e-4, 1e-2], log: true}}'")
    space = {key: _distribution(key, spec) for key, spec in raw.items()}
    if (CONV_KEYS[0] in space) != (CONV_KEYS[1] in space):
        raise UserError(f"search space: {CONV_KEYS[0]} and {CONV_KEYS[1]} go together: give both or neither")
    apply_overrides(Config(), params_to_overrides({k: _any_value(d) for k, d in space.items()}))  # real keys?
    return space


def _distribution(key: str, spec) -> optuna.distributions.BaseDistribution:
    kinds = ("float", "int", "choice")
    if not isinstance(spec, dict) or sum(k in spec for k in kinds) != 1 or set(spec) - {*kinds, "log"}:
        raise UserError(f"search space entry {key}: expected one of {{float: [low, high]}}, {{int: [low, high]}}, "
                        f"{{choice: [...]}} (with optional log: true), got {spec!r}")
    log = bool(spec.get("log", False))
    if "choice" in spec:
        if not isinstance(spec["choice"], list) or not spec["choice"]:
            raise UserError(f"search space entry {key}: choice needs a non-empty list")
        return optuna.distributions.CategoricalDistribution(spec["choice"])
    kind = "float" if "float" in spec else "int"
    bounds = spec[kind]
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, (int, float)) for b in bounds)
            and bounds[0] < bounds[1]):
        raise UserError(f"search space entry {key}: {kind} needs [low, high] with low < high, got {bounds!r}")
    if log and bounds[0] <= 0:
        raise UserError(f"search space entry {key}: a log range needs low > 0, got {bounds[0]}")
    if kind == "float":
        return optuna.distributions.FloatDistribution(float(bounds[0]), float(bounds[1]), log=log)
    return optuna.distributions.IntDistribution(int(bounds[0]), int(bounds[1]), log=log)


def _any_value(dist):
    return dist.choices[0] if isinstance(dist, optuna.distributions.CategoricalDistribution) else dist.low


def params_to_overrides(params: dict) -> dict:
    """Sampled parameters -> dotted config overrides (conv_blocks/conv_width -> conv_channels)."""
    overrides = {k: v for k, v in params.items() if k not in CONV_KEYS}
    if CONV_KEYS[0] in params:
        blocks, width = int(params[CONV_KEYS[0]]), int(params[CONV_KEYS[1]])
        overrides["model.conv_channels"] = [width * 2**i for i in range(blocks)]
    return overrides


def space_point(config: Config, space: dict) -> dict:
    """The values of `config` for every key of `space` (to evaluate a known configuration first)."""
    channels = config.model.conv_channels
    derived = {CONV_KEYS[0]: len(channels), CONV_KEYS[1]: channels[0] if channels else 8}
    point = {key: derived[key] if key in derived else get_dotted(config, key) for key in space}
    if CONV_KEYS[0] in space and params_to_overrides(point)["model.conv_channels"] != channels:
        raise UserError(f"seed config conv_channels={channels} is not of the form width * 2**block: "
                        "the search space cannot express it")
    for key, value in point.items():
        dist = space[key]
        inside = value in dist.choices if hasattr(dist, "choices") else dist.low <= value <= dist.high
        if not inside:
            raise UserError(f"seed config {key}={value!r} lies outside the search space: widen the space")
    return point


# ---------------------------------------------------------------- one trial

def run_trial(params: dict, *, tables: dict[str, Table], plans: dict[str, FoldPlan], base: Config,
              fold_order: list[int]) -> None:
    """One configuration's CV, reported to Tune after every fold (step = folds done).

    Folds run `search.fold_batch` at a time as one batched model (`emoma.batched`), in `fold_order`; per-fold
    metrics are checkpointed, so a restored trial resumes mid-CV. `tables` and `plans` are keyed by
    `data.subject_norm` (one of each per normalisation the space can choose).
    """
    config = apply_overrides(base, params_to_overrides(params))
    table, plan = tables[config.data.subject_norm], plans[config.data.subject_norm]
    metric = base.search.metric
    done: dict[int, dict] = {}
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            done = {int(k): v for k, v in json.loads((Path(folder) / "folds.json").read_text()).items()}
    threads = max(1, int(base.search.cpus_per_trial))
    node = f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}"
    context = table_context(table, config)
    todo = [i for i in fold_order if i not in done]
    size = base.search.fold_batch or len(todo) or 1
    for group in (todo[a:a + size] for a in range(0, len(todo), size)):
        results = run_folds_batched(table, [plan.folds[i] for i in group], group, config, context, threads=threads)
        for i, result in zip(group, results):
            done[i] = {**result.metrics, "epochs_run": result.epochs_run, "seconds": result.seconds}
            scores = [done[j][metric] for j in fold_order if j in done]
            with tempfile.TemporaryDirectory() as folder:
                (Path(folder) / "folds.json").write_text(json.dumps(done))
                tune.report({"score": float(np.mean(scores)), "fold": i, "fold_score": result.metrics[metric],
                             "folds_done": len(done), "folds_total": len(fold_order), "node": node},
                            checkpoint=tune.Checkpoint.from_directory(folder))


class TruthfulOptunaSearch(OptunaSearch):
    """OptunaSearch records trials that ASHA stopped as COMPLETE with their partial score; this one tells
    Optuna they were PRUNED, so TPE and the stored study see what really happened."""

    def on_trial_complete(self, trial_id, result=None, error=False):
        if result and not error and result.get("folds_done", 0) < result.get("folds_total", 0) \
                and trial_id not in self._completed_trials:
            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)


class BaselineKeepingASHA(ASHAScheduler):
    """ASHA that never stops the baseline (seed) configuration: its score still sets the bar for the other
    trials, and the report can always compare the best against its full CV."""

    def __init__(self, baseline: dict, **kwargs):
        super().__init__(**kwargs)
        self.baseline = baseline

    def on_trial_result(self, tune_controller, trial, result):
        action = super().on_trial_result(tune_controller, trial, result)
        return TrialScheduler.CONTINUE if _same_params(trial.config, self.baseline) else action


class ProgressLine(tune.Callback):
    """One live line instead of Ray's tables: trials done/running/pruned/errored and the best so far."""

    def __init__(self, num_samples: int):
        self.num_samples = num_samples  # no stream kept: the Tuner pickles its callbacks
        self.best, self.states = None, {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.states[trial.trial_id] = "running"
        if result.get("folds_done") == result.get("folds_total"):
            if self.best is None or result["score"] > self.best:
                self.best = result["score"]
        self._draw()

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        self.states[trial.trial_id] = "done" if last.get("folds_done") == last.get("folds_total") else "pruned"
        self._draw()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.states[trial.trial_id] = "error"
        self._draw()

    def on_experiment_end(self, trials, **info):
        print(file=sys.stderr)

    def _draw(self):
        counts = {s: sum(v == s for v in self.states.values()) for s in ("done", "running", "pruned", "error")}
        best = "-" if self.best is None else f"{self.best:.4f}"
        finished = counts["done"] + counts["pruned"] + counts["error"]
        print(f"\rtrials {finished}/{self.num_samples} finished ({counts['done']} completed, {counts['pruned']} "
              f"pruned, {counts['error']} errored), {counts['running']} running; best {best}   ",
              end="", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the search

@dataclass
class TrialRecord:
    trial_id: str
    params: dict
    fold_scores: dict[int, float]  # fold index -> score of the search metric
    mean: float
    std: float
    status: str  # completed | pruned | error
    seconds: float
    node: str


@dataclass
class SearchResult:
    name: str
    folder: Path  # the experiment folder (Tune's files, the Optuna study, EmoMA's outputs)
    metric: str
    holdout_subjects: list
    search_subjects: list
    plan: FoldPlan
    trials: list[TrialRecord]
    seed_trial: TrialRecord | None  # the seed configuration's trial
    best: TrialRecord
    best_config: Config
    holdout: FoldResult  # the retrained best configuration scored on the held-out subjects (model kept)
    seed_holdout: FoldResult  # the seed configuration, retrained and scored the same way
    final_fold: Fold  # the retraining split: search subjects (train + validation) vs held-out subjects
    feature_names: list[str]
    class_names: list[str]
    space: dict
    importances: dict[str, float]  # Optuna's parameter importances ({} with too few completed trials)
    seconds: float
    notes: list[str] = field(default_factory=list)
    held_groups: np.ndarray | None = None  # (n_held,) subject of each held-out window, in the order of holdout
    held_y: np.ndarray | None = None  # (n_held,) true class of each held-out window

    @property
    def completed(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.status == "completed"]


def choose_holdout(table: Table, cfg, seed: int) -> list:
    """Held-out subject ids: the given ones, or `cfg.holdout` drawn with the seed so every class is present."""
    subjects = list(table.subjects)
    if cfg.holdout_subjects:
        wanted = [str(s) for s in cfg.holdout_subjects]
        by_name = {str(s): s for s in subjects}
        missing = [s for s in wanted if s not in by_name]
        if missing:
            raise UserError(f"held-out subjects {', '.join(missing)} are not in the table "
                            f"(subjects: {', '.join(map(str, subjects))}): fix --holdout-subjects")
        return sorted((by_name[s] for s in wanted), key=str)
    if cfg.holdout == 0:
        raise UserError("search.holdout=0 leaves no subjects for the final test: hold out at least 1")
    if cfg.holdout >= len(subjects) - 2:
        raise UserError(f"--holdout {cfg.holdout} leaves too few of the {len(subjects)} subjects to search on: lower it")
    rng = np.random.default_rng(seed)
    n_classes = len(table.class_names)
    for _ in range(1000):
        chosen = list(rng.choice(subjects, size=cfg.holdout, replace=False))
        if len(np.unique(table.y[np.isin(table.groups, chosen)])) == n_classes:
            return sorted(chosen)
    return sorted(chosen)  # no draw covers every class (too few subjects per class): use the last


def subset(table: Table, rows: np.ndarray) -> Table:
    return replace(table, X=table.X[rows], y=table.y[rows], groups=table.groups[rows],
                   time_s=None if table.time_s is None else table.time_s[rows],
                   row_ids=None if table.row_ids is None else table.row_ids[rows])


def space_norms(config: Config, space: dict) -> list[str]:
    """The subject normalisations a trial can use: the space's choices, else the config's one."""
    dist = space.get("data.subject_norm")
    return list(dist.choices) if dist is not None else [config.data.subject_norm]


def space_max_context(config: Config, space: dict) -> int:
    dist = space.get("model.context")
    if dist is None:
        return config.model.context
    return int(max(dist.choices) if hasattr(dist, "choices") else dist.high)


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
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as err:
        raise UserError(f"cannot join the Ray cluster at {address!r} ({err}): start it with `ray start --head` "
                        "or check --address") from None


def run_search(config: Config, space: dict, seed_config: Config, *, storage_path: str | Path, name: str,
               address: str | None = None, resume: bool = False, verbose: bool = False,
               log=print) -> SearchResult:
    """Search `space` around `config` on Ray Tune; retrain the best and score it on held-out subjects."""
    start = time.perf_counter()
    if not verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    raw = load_table(config.data)
    check_context(raw, space_max_context(config, space))
    holdout = choose_holdout(raw, config.search, config.seed)
    is_held = np.isin(raw.groups, holdout)
    log(f"data: {raw.source}: {len(raw.y)} windows, {len(raw.subjects)} subjects; held out of the search: "
        f"subjects {', '.join(map(str, holdout))} ({int(is_held.sum())} windows)")
    # subject normalisation reads each subject's own rows only, so it is applied to the whole table once
    norms = space_norms(config, space)
    tables = {norm: normalise_subjects(raw, replace(config.data, subject_norm=norm)) for norm in norms}
    search_tables = {norm: subset(t, np.flatnonzero(~is_held)) for norm, t in tables.items()}
    init_ray(address, verbose)
    register_ray()
    # fold plans computed as Ray tasks, one per fold, across the whole cluster unless cv.jobs says otherwise
    plan_cfg = config.cv if config.cv.jobs else replace(config.cv, jobs=int(ray.cluster_resources().get("CPU", 1)))
    plans = {}
    with parallel_config(backend="ray"):
        for norm, search_table in search_tables.items():
            plans[norm] = make_plan(search_table, plan_cfg, config.seed)
    plan = plans[norms[0]]
    log(f"fold plan{'s' if len(plans) > 1 else ''}: {len(plan.folds)} {plan.scheme} folds over "
        f"{len(raw.subjects) - len(holdout)} subjects, subject normalisation {', '.join(norms)} "
        f"({', '.join('from cache' if p.from_cache else f'{p.seconds:.1f} s' for p in plans.values())})")
    for note in plan.notes:
        log(f"WARNING: {note}")
    fold_order = [int(i) for i in np.random.default_rng(config.seed).permutation(len(plan.folds))]
    trainable = tune.with_parameters(run_trial, tables=search_tables, plans=plans, base=config,
                                     fold_order=fold_order)
    resources = {"cpu": config.search.cpus_per_trial, "gpu": config.search.gpus_per_trial}
    folder = Path(storage_path).expanduser().resolve() / name
    baseline = space_point(seed_config, space)
    if resume:
        if not tune.Tuner.can_restore(str(folder)):
            raise UserError(f"nothing to resume at {folder}: check --name and --storage-path")
        tuner = tune.Tuner.restore(str(folder), trainable=tune.with_resources(trainable, resources),
                                   resume_errored=True)
    else:
        if folder.exists() and tune.Tuner.can_restore(str(folder)):
            raise UserError(f"an experiment named {name!r} already exists in {folder.parent}: "
                            "use --resume to continue it or another --name")
        tuner = _new_tuner(config, space, baseline, trainable, resources, folder, fold_order, verbose)
    grid = tuner.fit()
    unfinished = len(grid) - grid.num_terminated - grid.num_errors
    if unfinished or (len(grid) < config.search.num_samples and not config.search.time_budget_s):
        raise UserError(f"search {name} stopped with {max(unfinished, 1)} trials unfinished: continue it with "
                        f"--resume --name {name} --storage-path {folder.parent}")
    trials = _records(grid, config.search.metric)
    completed = [t for t in trials if t.status == "completed"]
    if not completed:
        errors = [str(r.error).splitlines()[0] for r in grid if r.error][:1]
        raise RuntimeError(f"no trial completed every fold{': ' + errors[0] if errors else ''}")
    best = max(completed, key=lambda t: t.mean)
    seed_trial = next((t for t in trials if _same_params(t.params, baseline)), None)
    best_config = apply_overrides(config, params_to_overrides(best.params))
    log(f"best of {len(completed)} completed trials: {config.search.metric} {best.mean:.4f} ± {best.std:.4f}; "
        "retraining on all search subjects")
    seed_config = apply_overrides(config, params_to_overrides(baseline))
    final_folds, held = {}, {}
    for label, chosen in (("best", best_config), ("seed", seed_config)):
        norm = chosen.data.subject_norm
        table = tables[norm]
        if norm not in final_folds:  # the retraining split: search subjects (train + validation) vs held out
            final_folds[norm] = fit_fold(table.X, table.y, table.groups, np.flatnonzero(~is_held),
                                         np.flatnonzero(is_held), config.cv, config.seed)
        held[label] = run_fold(table, final_folds[norm], 0, chosen, table_context(table, chosen),
                               baselines=label == "best", keep_model=label == "best",
                               threads=max(1, int(config.search.cpus_per_trial)))
    table = tables[best_config.data.subject_norm]
    return SearchResult(
        name=name, folder=folder, metric=config.search.metric, holdout_subjects=holdout,
        search_subjects=[s for s in raw.subjects if s not in holdout], plan=plan, trials=trials,
        seed_trial=seed_trial, best=best, best_config=best_config, holdout=held["best"],
        seed_holdout=held["seed"], final_fold=final_folds[best_config.data.subject_norm],
        feature_names=table.feature_names, class_names=table.class_names, space=space,
        importances=param_importances(folder), seconds=time.perf_counter() - start, notes=list(plan.notes),
        held_groups=table.groups[held["best"].test_rows], held_y=table.y[held["best"].test_rows],
    )


def _new_tuner(config, space, baseline, trainable, resources, folder, fold_order, verbose):
    s = config.search
    folder.mkdir(parents=True, exist_ok=True)
    searcher = TruthfulOptunaSearch(space=space, metric="score", mode="max", points_to_evaluate=[baseline],
                                    sampler=optuna.samplers.TPESampler(seed=config.seed), study_name=folder.name,
                                    storage=_study_storage(folder))
    # Tune lets a custom searcher have one pending trial unless it is wrapped in a ConcurrencyLimiter
    search_alg = ConcurrencyLimiter(searcher, max_concurrent=s.max_concurrent or trial_slots(s))
    scheduler = BaselineKeepingASHA(baseline, time_attr="folds_done", max_t=len(fold_order),
                                    grace_period=s.grace_folds, reduction_factor=s.reduction_factor) if s.prune else None
    return tune.Tuner(
        tune.with_resources(trainable, resources),
        tune_config=tune.TuneConfig(metric="score", mode="max", search_alg=search_alg, scheduler=scheduler,
                                    num_samples=s.num_samples, reuse_actors=True, trial_dirname_creator=trial_dirname,
                                    time_budget_s=s.time_budget_s or None),
        run_config=tune.RunConfig(name=folder.name, storage_path=str(folder.parent), verbose=2 if verbose else 0,
                                  callbacks=[] if verbose else [ProgressLine(s.num_samples)],
                                  failure_config=tune.FailureConfig(max_failures=s.max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
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


def _records(grid, metric: str) -> list[TrialRecord]:
    records = []
    for result in grid:
        history = result.metrics_dataframe
        last = result.metrics or {}
        fold_scores = {}
        if history is not None and "fold" in history:
            fold_scores = {int(f): float(s) for f, s in zip(history["fold"], history["fold_score"])}
        scores = list(fold_scores.values())
        total = last.get("folds_total", -1)
        status = "error" if result.error else ("completed" if len(fold_scores) == total else "pruned")
        records.append(TrialRecord(
            trial_id=str(last.get("trial_id", os.path.basename(result.path))), params=dict(result.config), fold_scores=fold_scores,
            mean=float(np.mean(scores)) if scores else math.nan, std=float(np.std(scores)) if scores else math.nan,
            status=status, seconds=float(last.get("time_total_s", math.nan)), node=str(last.get("node", ""))))
    return records


def _same_params(a: dict, b: dict) -> bool:
    return all(k in a and (a[k] == b[k] or (isinstance(b[k], float) and math.isclose(a[k], b[k])))
               for k in b)


def _study_storage(folder: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / STUDY_FILE)))


def load_study(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name=folder.name, storage=_study_storage(folder))


def param_importances(folder: Path) -> dict[str, float]:
    """Optuna's fANOVA importances over the completed trials ({} when there are too few)."""
    study = load_study(folder)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 3:
        return {}
    try:
        return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):
        return {}


def run_nested_search(config: Config, space: dict, seed_config: Config, *, storage_path: str | Path, name: str,
                      **kwargs) -> list[SearchResult]:
    """Nested CV: the whole search once per subject, that subject held out; an unbiased estimate of the
    search-plus-retrain procedure. Each outer fold is an experiment `outer-SUBJECT` under `name`."""
    subjects = load_table(config.data).subjects
    return [run_search(apply_overrides(config, {"search.holdout_subjects": [str(s)]}), space, seed_config,
                       storage_path=Path(storage_path) / name, name=f"outer-{s}", **kwargs)
            for s in subjects]
