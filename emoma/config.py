"""Configuration as data: typed dataclasses, overridden by YAML files and `--set key=value`."""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from emoma.errors import UserError
from emoma.files import write_atomic

TASKS = ("binary", "3class", "multiclass")
SCHEMES = ("loso", "group-kfold", "stratified-group-kfold", "kfold")
POOLS = ("max", "avg", "none")
DEVICES = ("auto", "cpu", "cuda")
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
SUBJECT_NORMS = ("none", "subject", "causal")
TRAINERS = ("batched", "sequential")
PRUNERS = ("wilcoxon", "asha")
SELECTION_RULES = ("best", "one-se", "guard", "ensemble")
FIDELITIES = ("low", "full")
LSTM_OVER = ("positions", "windows")
BASELINE_MODES = ("tuned", "default")


@dataclass
class DataConfig:
    """What to read and how: the table, the task's classes, the features, the columns and the subject normalisation
    (`data.*`)."""

    path: str | None = None  # merged.csv to read; None = the embedded synthetic WESAD-like table
    task: str = (
        "binary"  # binary (stress vs rest) | 3class (amusement/baseline/stress) | multiclass (labels as they are)
    )
    label_map: dict | None = None  # raw label -> class name (several labels may share a name); overrides task
    drop_labels: list = field(default_factory=list)  # raw labels whose rows are removed before anything else
    include: list = field(default_factory=list)  # feature names or glob patterns to use; empty = all signal features
    exclude: list = field(
        default_factory=list
    )  # names or globs removed after include (metadata is excluded unless included)
    drop_nan: bool = False  # drop rows with NaN/inf features instead of stopping with an error
    subject_column: str = "subject"  # column holding the subject id
    label_column: str = "label"  # column holding the raw label
    time_column: str = "time_s"  # window start in seconds, orders a subject's windows; absent = row order
    window_s: float | None = (
        None  # window length for the time-gap rule; None = the median step between a subject's windows
    )
    subject_norm: str = "none"  # none | subject (each subject's own mean/std; transductive) | causal (running)
    # causal: a window's z-scores are shrunk by n/norm_warmup while its statistics rest on n < norm_warmup windows
    norm_warmup: int = 5


@dataclass
class CVConfig:
    """How folds are made and fitted: the protocol, validation split, RFE, workers and the fold-plan cache (`cv.*`)."""

    scheme: str = "loso"  # loso | group-kfold | stratified-group-kfold (subject-wise) | kfold (row-wise, the seed's)
    folds: int = 10  # K for the k-fold schemes (loso uses one fold per subject)
    val_subjects: int = 2  # training subjects held out of each fold for early stopping (subject-wise schemes)
    val_fraction: float = 0.15  # fraction of training rows held out for early stopping (kfold only)
    rfe_trees: int = 50  # trees in the RandomForest that ranks features by RFE
    rfe_step: int = 2  # features eliminated per RFE round (1 = a strict ranking, slower)
    rfe_max_samples: int = 20000  # rows drawn for each RFE tree when the fold has more (big tables); 0 = all
    jobs: int = 0  # worker processes for fold plans and fold training; 0 = one per CPU core
    trainer: str = (
        "batched"  # batched: a worker's folds trained together as one model | sequential: one by one (reference)
    )
    cache_dir: str | None = "~/.cache/emoma/plans"  # where fold plans are cached by content hash; None = no cache
    baselines: str = "tuned"  # same-input baselines: tuned (LDA's shrinkage, logistic regression's C, the forest's
    # depth, by inner subject-wise 3-fold CV on each fold's training rows) | default (library defaults)


@dataclass
class ModelConfig:
    """The CNN-LSTM's shape: context windows, smoothing, features read, conv blocks, CBAM, LSTM, head, ensemble
    (`model.*`)."""

    context: int = 1  # windows per sample: the current one and the context-1 before it, same subject, in time order
    smooth: int = (
        1  # average each window's predicted probabilities with the smooth-1 windows before it (causal); 1 = off
    )
    n_features: int = 20  # top-k features of each fold's RFE ranking the model reads; 0 = all
    conv_channels: list = field(default_factory=lambda: [16, 32])  # output channels of each Conv1d block
    kernel_size: int = 3  # Conv1d kernel size (odd; padded to keep the length)
    pool: str = "max"  # pooling after each conv block: max | avg | none (halves the length, ceil)
    cbam: bool = True  # CBAM channel + spatial attention after each conv block (Woo et al. 2018)
    cbam_reduction: int = 4  # channel-attention bottleneck ratio
    lstm_hidden: int = 50  # LSTM hidden size
    lstm_layers: int = 1  # stacked LSTM layers
    bidirectional: bool = False  # read the LSTM's steps in both directions
    lstm_over: str = (
        "positions"  # LSTM steps: positions (every CNN position of every window) | windows (one per window)
    )
    attention: bool = True  # attention pooling over LSTM outputs; False = last output
    fc: int = 128  # hidden units of the dense layer before the logits; 0 = none
    dropout: float = 0.5  # dropout before and after the dense layer
    ensemble: int = 1  # CNN-LSTMs per fold, each trained from its own seed; their probabilities are averaged


@dataclass
class TrainConfig:
    """How each model is trained: Adam, batches, epochs, early stopping, class weights, refit, device (`train.*`)."""

    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0  # Adam L2 weight decay
    batch_size: int = 25  # mini-batch size
    epochs: int = 100  # maximum epochs per fold
    patience: int = 0  # stop after this many epochs without a better validation score; 0 = run all epochs
    class_weights: bool = False  # weight the loss by inverse class frequency of the training rows
    grad_clip: float = 0.0  # clip the gradient norm to this value; 0 = off
    refit: bool = False  # after the best epoch is chosen, retrain on training + validation rows for that many epochs
    metric: str = "macro_f1"  # validation metric that picks the best epoch and drives early stopping (ties: lower loss)
    device: str = "auto"  # auto (cuda when available) | cpu | cuda


@dataclass
class SearchConfig:
    """How many configurations are tried and how the final one is chosen: objective, hold-out, pruning, resources,
    selection rule, fidelity (`search.*`)."""

    metric: str = "macro_f1"  # objective, mean over folds: accuracy | balanced_accuracy | macro_f1
    num_samples: int = 20  # configurations to try (the seed configuration is the first)
    holdout: int = 3  # subjects held out of the whole search, drawn with the seed so every class is present
    holdout_subjects: list = field(default_factory=list)  # explicit held-out subject ids (overrides holdout)
    prune: bool = (
        True  # stop unpromising trials early (search.pruner); the best is chosen among trials that ran every fold
    )
    pruner: str = "asha"  # asha: ASHA over folds | wilcoxon: paired test against the best trial on the same folds
    wilcoxon_p: float = 0.1  # wilcoxon: stop when the one-sided p-value is below this (Optuna's WilcoxonPruner default)
    fold_batch: int = (
        0  # folds a trial trains as one batched model; 0 = all (with pruning: the grace folds, then the rest)
    )
    grace_folds: int = (
        4  # folds every trial runs before it can be stopped (4: the first a Wilcoxon test can reject at 0.1)
    )
    reduction_factor: int = 2  # ASHA: keep the best 1/reduction_factor at each rung
    cpus_per_trial: float = 1.0  # CPUs Ray reserves per trial (torch uses that many threads)
    gpus_per_trial: float = 0.0  # GPUs per trial; fractions share a GPU (0.25 = four trials per GPU)
    max_concurrent: int = 0  # trials at once; 0 = as many as the resources allow
    max_failures: int = 2  # retries of a failed trial
    time_budget_s: float = 0.0  # end the search after this many seconds (running trials stop); 0 = no limit
    select: str = "guard"  # the final choice among completed trials: best | one-se | guard | ensemble (emoma.select)
    fidelity: str = "full"  # trials train full (the config's ensemble and refit) or low (one model per fold, no refit)
    bbc_bootstrap: int = 1000  # subject resamples of the BBC-CV estimate (the trials curve and live ones: a fifth)
    ensemble_size: int = 20  # ensemble: greedy selection steps (with replacement; the best prefix is kept)
    guard_alpha: float = 0.05  # guard: the best replaces the base only when its paired gain is significant at this
    # one-sided level, Bonferroni-corrected over the candidates
    sampler_seed: int | None = None  # the TPE sampler's seed (null: the config's seed); each outer fold of a nested
    # search gets its own, drawn from the seed and its subject, so outer folds search rather than replay one draw


@dataclass
class Config:
    """A whole configuration: YAML maps onto these sections one to one (`emoma.config.load_config`); every run's is
    saved as config.yaml."""

    name: str = "default"  # a label for outputs
    seed: int = 0  # drives every random choice: splits, RFE forest, weight init, batch order
    data: DataConfig = field(default_factory=DataConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    def to_dict(self) -> dict:
        """The configuration as nested plain dicts, as YAML writes it (`from_dict` reads it back)."""
        return dataclasses.asdict(self)


def at_fidelity(config: Config, fidelity: str) -> Config:
    """What a trial trains: `low` is one model per fold without the refit; `full` the configuration itself."""
    if fidelity == "full" or (config.model.ensemble == 1 and not config.train.refit):
        return config
    return dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, ensemble=1),
        train=dataclasses.replace(config.train, refit=False),
    )


class _Loader(yaml.SafeLoader):
    """YAML with floats as people write them: PyYAML (YAML 1.1) reads 1e-3 as a string; YAML 1.2 reads a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    """yaml.safe_load, but `1e-3` is the float 0.001."""
    return yaml.load(text, Loader=_Loader)


def flag_overrides(args) -> dict:
    """The config keys set by the options that `cv` and `search` share, from parsed arguments.

    Parameters
    ----------
    args : argparse.Namespace with data, task, cv, folds, epochs, seed, device and drop_nan.

    Returns
    -------
    dict
        Typed values by dotted key, None where the option was not given (``load_config``'s ``flags``).
    """
    return {
        "data.path": args.data,
        "data.task": args.task,
        "cv.scheme": args.cv,
        "cv.folds": args.folds,
        "train.epochs": args.epochs,
        "seed": args.seed,
        "train.device": args.device,
        "data.drop_nan": args.drop_nan or None,
    }


def load_config(
    path: str | Path | None = None,
    overrides: typing.Sequence[str] = (),
    flags: dict | None = None,
    base: dict | None = None,
) -> Config:
    """Build a Config from the defaults, a YAML file, `key=value` overrides and CLI flags, and validate it.

    Parameters
    ----------
    path : YAML file whose keys override the defaults (sections: data, cv, model, train, search).
    overrides : strings like ``"train.lr=0.01"``; values are parsed as YAML.
    flags : typed values by dotted key (``{"train.epochs": 5}``), applied last; None values are skipped.
    base : a resolved configuration (``Config.to_dict()``) to start from instead of the defaults.
    """
    raw = _merge(base or {}, read_yaml(find_yaml(path)) if path else {})
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set train.lr=0.01")
        try:
            parsed = parse_yaml(value) if value.strip() else None
        except yaml.YAMLError:
            raise UserError(f"--set {item!r}: the value is not valid YAML: quote it or fix it") from None
        _set_dotted(raw, key.strip(), parsed)
    for key, value in (flags or {}).items():
        if value is not None:
            _set_dotted(raw, key, value)
    config = from_dict(raw)
    validate(config)
    return config


def from_dict(raw: dict) -> Config:
    """Build a Config from a (possibly partial) nested dict; unknown keys and wrong types are rejected."""
    return _build(Config, raw, "")


def apply_overrides(config: Config, flat: dict) -> Config:
    """A copy of `config` with dotted keys (``{"train.lr": 0.01}``) replaced, validated."""
    raw = config.to_dict()
    for key, value in flat.items():
        _set_dotted(raw, key, value)
    new = from_dict(raw)
    validate(new)
    return new


def save_config(config: Config, path: str | Path) -> None:
    """Write `config` as YAML to `path`, atomically."""
    write_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def validate(config: Config) -> None:
    """Check values against their rules; raise UserError naming the key, its value and the rule."""
    rules = [
        ("seed", config.seed >= 0, "0 or more"),
        (
            "search.sampler_seed",
            config.search.sampler_seed is None or config.search.sampler_seed >= 0,
            "0 or more, or null (the config's seed)",
        ),
        ("data.task", config.data.task in TASKS, f"one of {', '.join(TASKS)}"),
        ("data.subject_norm", config.data.subject_norm in SUBJECT_NORMS, f"one of {', '.join(SUBJECT_NORMS)}"),
        ("data.norm_warmup", config.data.norm_warmup >= 1, "at least 1"),
        ("data.window_s", config.data.window_s is None or config.data.window_s > 0, "positive, or null (inferred)"),
        ("cv.scheme", config.cv.scheme in SCHEMES, f"one of {', '.join(SCHEMES)}"),
        ("cv.folds", config.cv.folds >= 2, "at least 2"),
        ("cv.val_subjects", config.cv.val_subjects >= 1, "at least 1"),
        ("cv.val_fraction", 0 < config.cv.val_fraction < 1, "between 0 and 1"),
        ("cv.rfe_trees", config.cv.rfe_trees >= 1, "at least 1"),
        ("cv.rfe_step", config.cv.rfe_step >= 1, "at least 1"),
        ("cv.rfe_max_samples", config.cv.rfe_max_samples >= 0, "0 (all rows) or more"),
        ("cv.jobs", config.cv.jobs >= 0, "0 (one per core) or more"),
        ("cv.trainer", config.cv.trainer in TRAINERS, f"one of {', '.join(TRAINERS)}"),
        ("cv.baselines", config.cv.baselines in BASELINE_MODES, f"one of {', '.join(BASELINE_MODES)}"),
        ("model.context", config.model.context >= 1, "at least 1 (1 = the current window only)"),
        (
            "model.context",
            config.model.context == 1 or config.cv.scheme != "kfold",
            "1 under cv.scheme=kfold (neighbouring windows share all but one context window and nearly always the "
            "label, so row-wise folds put most of a test window's context in training): use a subject-wise "
            "cv.scheme such as loso",
        ),
        ("model.smooth", config.model.smooth >= 1, "at least 1 (1 = no smoothing)"),
        (
            "model.smooth",
            config.model.smooth == 1 or config.cv.scheme != "kfold",
            "1 under cv.scheme=kfold (a window's predecessors are mostly training rows there, and smoothing reads "
            "only test windows): use a subject-wise cv.scheme such as loso",
        ),
        ("model.n_features", config.model.n_features >= 0, "0 (all) or more"),
        (
            "model.conv_channels",
            all(isinstance(c, int) and c >= 1 for c in config.model.conv_channels),
            "a list of positive integers (may be empty)",
        ),
        (
            "model.kernel_size",
            config.model.kernel_size >= 1 and config.model.kernel_size % 2 == 1,
            "a positive odd number",
        ),
        ("model.pool", config.model.pool in POOLS, f"one of {', '.join(POOLS)}"),
        ("model.cbam_reduction", config.model.cbam_reduction >= 1, "at least 1"),
        ("model.lstm_hidden", config.model.lstm_hidden >= 1, "at least 1"),
        ("model.lstm_over", config.model.lstm_over in LSTM_OVER, f"one of {', '.join(LSTM_OVER)}"),
        ("model.lstm_layers", config.model.lstm_layers >= 1, "at least 1"),
        ("model.fc", config.model.fc >= 0, "0 (none) or more"),
        ("model.dropout", 0 <= config.model.dropout < 1, "in [0, 1)"),
        ("model.ensemble", config.model.ensemble >= 1, "at least 1 (1 = one model per fold)"),
        ("train.lr", config.train.lr > 0, "positive"),
        ("train.weight_decay", config.train.weight_decay >= 0, "0 or more"),
        ("train.batch_size", config.train.batch_size >= 1, "at least 1"),
        ("train.epochs", config.train.epochs >= 1, "at least 1"),
        ("train.patience", config.train.patience >= 0, "0 (off) or more"),
        ("train.grad_clip", config.train.grad_clip >= 0, "0 (off) or more"),
        ("train.metric", config.train.metric in METRICS, f"one of {', '.join(METRICS)}"),
        ("train.device", config.train.device in DEVICES, f"one of {', '.join(DEVICES)}"),
        ("search.metric", config.search.metric in METRICS, f"one of {', '.join(METRICS)}"),
        ("search.num_samples", config.search.num_samples >= 1, "at least 1"),
        ("search.holdout", config.search.holdout >= 0, "0 or more"),
        ("search.pruner", config.search.pruner in PRUNERS, f"one of {', '.join(PRUNERS)}"),
        ("search.wilcoxon_p", 0 < config.search.wilcoxon_p < 1, "between 0 and 1"),
        ("search.fold_batch", config.search.fold_batch >= 0, "0 (automatic) or more"),
        ("search.grace_folds", config.search.grace_folds >= 1, "at least 1"),
        ("search.reduction_factor", config.search.reduction_factor >= 2, "at least 2"),
        ("search.cpus_per_trial", config.search.cpus_per_trial > 0, "positive"),
        ("search.gpus_per_trial", config.search.gpus_per_trial >= 0, "0 or more"),
        ("search.max_concurrent", config.search.max_concurrent >= 0, "0 (no limit) or more"),
        ("search.max_failures", config.search.max_failures >= 0, "0 or more"),
        ("search.time_budget_s", config.search.time_budget_s >= 0, "0 (no limit) or more"),
        ("search.select", config.search.select in SELECTION_RULES, f"one of {', '.join(SELECTION_RULES)}"),
        ("search.fidelity", config.search.fidelity in FIDELITIES, f"one of {', '.join(FIDELITIES)}"),
        ("search.bbc_bootstrap", config.search.bbc_bootstrap >= 100, "at least 100"),
        ("search.ensemble_size", config.search.ensemble_size >= 1, "at least 1"),
        ("search.guard_alpha", 0 < config.search.guard_alpha < 1, "between 0 and 1"),
    ]
    for key, ok, rule in rules:
        if not ok:
            value = get_dotted(config, key)
            raise UserError(f"config {key}={value!r} is invalid: it must be {rule}")


def sampler_seed(config: Config) -> int:
    """The seed of the experiment's first Optuna sampler (a later run of it adds its index)."""
    return config.seed if config.search.sampler_seed is None else config.search.sampler_seed


def shipped_folder() -> Path:
    """The shipped YAML files: package data of an installed EmoMA, else (a clone imported from its root, not
    installed) the repository's configs/ beside the emoma folder."""
    try:
        return Path(str(importlib.resources.files("emoma.configs")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "configs"


def shipped_yaml_names() -> list[str]:
    """Names of the YAML files shipped in the package (`context` for emoma/configs/context.yaml)."""
    folder = shipped_folder()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def find_yaml(path_or_name: str | Path, what: str = "config file") -> Path:
    """The YAML file at a path, or else the shipped one of that bare name (`context` or `context.yaml`), so the
    presets work from any folder and from an installed wheel. An existing file of that name wins."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    if path.parent == Path(".") and path.suffix in ("", ".yaml"):
        shipped = shipped_folder() / f"{path.name.removesuffix('.yaml')}.yaml"
        if shipped.is_file():
            return shipped
    raise UserError(
        f"{what} {path} does not exist: give a YAML file or a shipped name ({', '.join(shipped_yaml_names())})"
    )


def read_yaml(path: Path, what: str = "config file") -> dict:
    """A YAML file holding a mapping ({} when empty); a missing, unreadable or malformed file is a UserError."""
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist: check the path")
    try:
        raw = parse_yaml(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{what} {path} is not valid YAML{where}: fix its syntax") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{what} {path} cannot be read ({type(err).__name__}): check the file") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(
            f"{what} {path} must hold a mapping (of sections: data, cv, model, train, search; or of search-space keys)"
        )
    return raw


def _merge(base: dict, top: dict) -> dict:
    """`top`'s keys over `base`'s, section by section (a value inside a section, such as a label map, is replaced)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in top.items():
        out[key] = {**out[key], **value} if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _set_dotted(raw: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"config key {key!r}: {part!r} is not a section")
    node[last] = value


def flatten(raw: dict, prefix: str = "") -> dict:
    """A configuration dict (`Config.to_dict()`) as dotted keys: {"train.lr": 0.001, "seed": 0, ...}."""
    out = {}
    for key, value in raw.items():
        if isinstance(value, dict) and not prefix and key in ("data", "cv", "model", "train", "search"):
            out.update(flatten(value, f"{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def get_dotted(obj, key: str):
    """The value of a dotted key (`train.lr`) of a Config or one of its sections."""
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _build(cls, raw, prefix: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"config section {prefix.rstrip('.') or 'top level'!r} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise UserError(f"unknown config key '{prefix}{unknown[0]}': known keys are {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(f"{prefix}{name}", value, hint)
    return cls(**kwargs)


def _check_type(key: str, value, hint):
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind in (str, bool, list, dict) and isinstance(value, kind):
            return value
    names = " or ".join("null" if k is type(None) else k.__name__ for k in allowed)
    raise UserError(f"config {key}={value!r} has the wrong type: expected {names}")
