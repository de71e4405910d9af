"""The search space: configs/search_space.yaml -> Optuna distributions, validated before Ray starts.

Optuna is imported where distributions are built, so the modules that only read a space (reports, selection)
import without it.

Only hyperparameters of a trial may be searched: `model.*` and `train.*` keys, and `data.subject_norm` (one
fold plan is computed per normalisation). Every bound and every choice is checked against the config's types
and rules, so a bad value stops the search with one line instead of failing inside trials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from emoma.config import Config, apply_overrides, find_yaml, flatten, from_dict, get_dotted, read_yaml
from emoma.errors import UserError

if TYPE_CHECKING:
    import optuna

CONV_KEYS = ("model.conv_blocks", "model.conv_width")  # derived keys that build model.conv_channels
SEARCHABLE_DATA = ("data.subject_norm",)
SEED_NOTE_SKIP = ("name", "data.path", "cv.jobs", "cv.cache_dir", "train.device", "train.metric")
NOT_SEARCHABLE = {"train.device": "set it with --device", "train.metric": "it follows --metric"}


def load_space(path: str | Path, base: Config | None = None) -> dict[str, optuna.distributions.BaseDistribution]:
    """Read a search-space YAML into Optuna distributions keyed by config key, each value validated on `base`."""
    path = find_yaml(path, what="search space")
    raw = read_yaml(path, what="search space")
    if not raw:
        raise UserError(
            f"search space {path} must map config keys to ranges, e.g. 'train.lr: {{float: [1e-4, 1e-2], log: true}}'"
        )
    return space_from_dict(raw, base or Config())


def space_from_dict(raw: dict, base: Config) -> dict[str, optuna.distributions.BaseDistribution]:
    """A search space's YAML mapping as Optuna distributions keyed by config key; each key is checked to be
    searchable and each value to be valid on `base` (one line naming the entry otherwise)."""
    for key in raw:
        check_key(key)
    space = {key: _distribution(key, spec) for key, spec in raw.items()}
    if (CONV_KEYS[0] in space) != (CONV_KEYS[1] in space):
        raise UserError(f"search space: {CONV_KEYS[0]} and {CONV_KEYS[1]} go together: give both or neither")
    for key, dist in space.items():
        for value in candidate_values(dist):
            point = {k: candidate_values(d)[0] for k, d in space.items()} | {key: value}
            try:
                apply_overrides(base, params_to_overrides(point))
            except UserError as err:
                raise UserError(f"search space entry {key}: value {value!r} is not allowed ({err})") from None
    return space


def check_key(key: str) -> None:
    """Refuse, in one line, a key that is not a trial's hyperparameter (data and protocol keys are the experiment's)."""
    if key in NOT_SEARCHABLE:
        raise UserError(f"search space entry {key}: not a hyperparameter to search ({NOT_SEARCHABLE[key]})")
    if not (key.startswith(("model.", "train.")) or key in SEARCHABLE_DATA):
        raise UserError(
            f"search space entry {key}: only model.* and train.* keys (and "
            f"{', '.join(SEARCHABLE_DATA)}) can be searched; set the experiment's {key} with --set"
        )


def _distribution(key: str, spec) -> optuna.distributions.BaseDistribution:
    import optuna

    kinds = ("float", "int", "choice")
    if not isinstance(spec, dict) or sum(k in spec for k in kinds) != 1 or set(spec) - {*kinds, "log"}:
        raise UserError(
            f"search space entry {key}: expected one of {{float: [low, high]}}, {{int: [low, high]}}, "
            f"{{choice: [...]}} (with optional log: true), got {spec!r}"
        )
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"search space entry {key}: log must be true or false, got {log!r}")
    if "choice" in spec:
        choices = spec["choice"]
        if not isinstance(choices, list) or not choices:
            raise UserError(f"search space entry {key}: choice needs a non-empty list")
        if any(isinstance(c, (list, dict)) for c in choices):
            raise UserError(f"search space entry {key}: choices must be single values, got {choices!r}")
        return optuna.distributions.CategoricalDistribution(choices)
    kind = "float" if "float" in spec else "int"
    bounds = spec[kind]
    number = (int, float) if kind == "float" else int
    if not (
        isinstance(bounds, list)
        and len(bounds) == 2
        and all(isinstance(b, number) and not isinstance(b, bool) for b in bounds)
        and bounds[0] < bounds[1]
    ):
        raise UserError(
            f"search space entry {key}: {kind} needs [low, high] {'integers ' if kind == 'int' else ''}"
            f"with low < high, got {bounds!r}"
        )
    if log and bounds[0] <= 0:
        raise UserError(f"search space entry {key}: a log range needs low > 0, got {bounds[0]}")
    if kind == "float":
        return optuna.distributions.FloatDistribution(float(bounds[0]), float(bounds[1]), log=log)
    return optuna.distributions.IntDistribution(int(bounds[0]), int(bounds[1]), log=log)


def check_fidelity(space: dict, config: Config) -> None:
    """Low-fidelity trials train one model per fold without the refit: searching either would be ignored."""
    if config.search.fidelity == "low":
        for key in ("model.ensemble", "train.refit"):
            if key in space:
                raise UserError(
                    f"search space entry {key}: trials at search.fidelity=low train one model per fold "
                    "without the refit, so it cannot be searched: use --fidelity full, or drop it"
                )


def candidate_values(dist) -> list:
    """The values to validate: every choice, or both bounds."""
    return list(dist.choices) if hasattr(dist, "choices") else [dist.low, dist.high]


def params_to_overrides(params: dict) -> dict:
    """Sampled parameters -> dotted config overrides (conv_blocks/conv_width -> conv_channels)."""
    overrides = {k: v for k, v in params.items() if k not in CONV_KEYS}
    if CONV_KEYS[0] in params:
        blocks, width = int(params[CONV_KEYS[0]]), int(params[CONV_KEYS[1]])
        overrides["model.conv_channels"] = [width * 2**i for i in range(blocks)]
    return overrides


def same_params(a: dict, b: dict) -> bool:
    """Whether the sampled parameters `a` hold every value of the point `b`."""
    return all(k in a and (a[k] == b[k] or (isinstance(b[k], float) and math.isclose(a[k], b[k]))) for k in b)


@dataclass
class TrialConfigs:
    """The configuration a point of the space runs: the seed point the seed configuration exactly (keys outside
    the space included), any other point the base configuration with the point's values."""

    base: Config
    seed_run: Config
    seed_point: dict

    def __call__(self, params: dict) -> Config:
        if same_params(params, self.seed_point):
            return self.seed_run
        return apply_overrides(self.base, params_to_overrides(params))


def space_point(config: Config, space: dict, what: str = "seed config") -> dict:
    """The values of `config` for every key of `space` (to evaluate a known configuration first)."""
    channels = config.model.conv_channels
    derived = {CONV_KEYS[0]: len(channels), CONV_KEYS[1]: channels[0] if channels else 8}
    point = {key: derived[key] if key in derived else get_dotted(config, key) for key in space}
    if CONV_KEYS[0] in space and params_to_overrides(point)["model.conv_channels"] != channels:
        raise UserError(
            f"{what} conv_channels={channels} is not of the form width * 2**block: the search space cannot express it"
        )
    for key, value in point.items():
        dist = space[key]
        inside = value in dist.choices if hasattr(dist, "choices") else dist.low <= value <= dist.high
        if not inside:
            raise UserError(f"{what} {key}={value!r} lies outside the search space: widen the space")
    return point


def space_norms(config: Config, space: dict) -> list[str]:
    """The subject normalisations a trial can use: the space's choices, else the config's one."""
    dist = space.get("data.subject_norm")
    return list(dict.fromkeys(dist.choices)) if dist is not None else [config.data.subject_norm]


def space_max_context(config: Config, space: dict) -> int:
    """The longest context a trial can ask for."""
    dist = space.get("model.context")
    return config.model.context if dist is None else int(max(candidate_values(dist)))


def describe(dist) -> str:
    """A distribution in words for reports: `one of a, b` or `low to high (log)`."""
    if hasattr(dist, "choices"):
        return "one of " + ", ".join(map(str, dist.choices))
    return f"{dist.low} to {dist.high}{' (log)' if getattr(dist, 'log', False) else ''}"


def space_to_dict(space: dict) -> dict:
    """Distributions back to the YAML form (for the manifest)."""
    import optuna

    out = {}
    for key, dist in space.items():
        if hasattr(dist, "choices"):
            out[key] = {"choice": list(dist.choices)}
        else:
            kind = "float" if isinstance(dist, optuna.distributions.FloatDistribution) else "int"
            out[key] = {kind: [dist.low, dist.high], **({"log": True} if dist.log else {})}
    return out


def seed_trial_config(base: Config, seed: Config, space: dict) -> tuple[Config, list[str]]:
    """What the seed trial runs: --seed-config's model and train settings exactly (keys outside the space
    too), within the experiment's data, protocol, seed, metric and device, which every trial shares.

    Returns the configuration and one note per key of the seed configuration that could not be kept.
    """
    raw = base.to_dict()
    seed_raw = seed.to_dict()
    raw["model"] = seed_raw["model"]
    raw["train"] = {**seed_raw["train"], "metric": base.train.metric, "device": base.train.device}
    if "data.subject_norm" in space:
        raw["data"]["subject_norm"] = seed.data.subject_norm
    run = from_dict(raw)
    apply_overrides(run, {})  # validate
    wanted, got = flatten(seed_raw), flatten(run.to_dict())
    differ = [
        f"{k}={got[k]!r} (seed config: {wanted[k]!r})"
        for k in wanted
        if not k.startswith("search.") and k not in SEED_NOTE_SKIP and wanted[k] != got[k]
    ]
    notes = (
        [
            f"the seed trial runs the seed configuration's model and train settings within the experiment's "
            f"data and protocol: {', '.join(differ)}"
        ]
        if differ
        else []
    )
    return run, notes
