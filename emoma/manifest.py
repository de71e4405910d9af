"""The experiment manifest: everything that defines a search, written once when it starts.

`--resume` takes the experiment's settings from here, never from the new command line; a command line that
contradicts the manifest stops with the first differing field and both values.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from emoma.config import Config, flatten, from_dict
from emoma.data import Table
from emoma.errors import UserError

MANIFEST_FILE = "manifest.json"
# 2: trials keep their out-of-fold predictions; the base configuration runs first. 3: search.guard_alpha (the
# guard's corrected test) replaces search.guard_se, so a version-2 run would resume under another rule. 4: the
# baselines are tuned (cv.baselines) and each outer fold of a nested search samples with its own seed, so a
# version-3 run would resume with its finished and its remaining trials or outer folds made differently.
MANIFEST_VERSION = 4
PACKAGES = ("emoma", "torch", "ray", "optuna", "numpy", "pandas", "scikit-learn", "scipy")
# What may change when an experiment is resumed, and takes effect: where trials train and how the plan is
# computed. (Tune keeps a restored run's resources, concurrency, time budget and retries as they started.)
RUNTIME_KEYS = ("train.device", "cv.jobs", "cv.cache_dir")
# How the final choice is made from the trials' saved predictions: a resume may change it (it takes effect at the end).
SELECTION_KEYS = ("search.select", "search.bbc_bootstrap", "search.ensemble_size", "search.guard_alpha")


@dataclass
class Manifest:
    """What defines a search, written before any trial: the configurations, space, data fingerprint, fold plans,
    held-out subjects, fold order, seed, budget, command and versions; `--resume` continues only what it
    describes."""

    name: str
    config: dict  # the resolved base configuration (Config.to_dict())
    seed_config: dict  # the resolved --seed-config
    space: dict  # the search space in its YAML form
    data: dict  # {"path", "sha256", "rows", "columns"}
    plan_keys: dict  # subject normalisation -> fold-plan content hash
    holdout_subjects: list  # as strings
    fold_order: list  # fold indices in the order every trial runs them
    seed: int
    num_samples: int  # trials in all, over every Tune run
    runs: list = field(default_factory=list)  # Tune experiments: [{"path": "." or "extend-1", "num_samples"}]
    command: list = field(default_factory=lambda: list(sys.argv))
    versions: dict = field(default_factory=lambda: package_versions())
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    outer: dict | None = None  # nested search: {"scheme": "loso", "subjects": [...]} (root manifest only)
    version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        """The manifest as indented JSON (manifest.json)."""
        return json.dumps(asdict(self), indent=2, default=str)

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        """Read manifest.json's text; a file that is not a manifest, or one an earlier EmoMA wrote, is a UserError
        naming `where`."""
        try:
            raw = json.loads(text)
            manifest = cls(**raw)
        except (ValueError, TypeError) as err:
            raise UserError(f"{where} is not an EmoMA manifest ({type(err).__name__}): it cannot be resumed") from None
        if manifest.version < MANIFEST_VERSION:
            raise UserError(
                f"{where} was written by an earlier EmoMA (manifest version {manifest.version}, "
                f"this one writes {MANIFEST_VERSION}), whose trials or settings differ from this version's: "
                "it cannot be resumed; start a new experiment"
            )
        return manifest

    def base_config(self) -> Config:
        """The base configuration the search started from."""
        return from_dict(self.config)

    def seed_configuration(self) -> Config:
        """The seed configuration the search evaluated as its reference."""
        return from_dict(self.seed_config)


def package_versions() -> dict:
    """{package: version} of Python and the packages a result depends on, for the manifest."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def data_fingerprint(table: Table, path: str | None) -> dict:
    """sha256 of the data file (of the table's arrays for the synthetic table) and the table's shape."""
    h = hashlib.sha256()
    if path:
        with open(Path(path).expanduser(), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    else:
        for array in (table.X, table.y, table.groups.astype(str)):
            h.update(np.ascontiguousarray(array).tobytes())
    return {"path": path, "sha256": h.hexdigest(), "rows": int(len(table.y)), "columns": int(table.X.shape[1])}


def first_difference(recorded: dict, given: dict, ignore=()) -> tuple[str, object, object] | None:
    """The first key whose value differs between two flat dicts (keys of either), or None."""
    for key in list(recorded) + [k for k in given if k not in recorded]:
        if key in ignore:
            continue
        a, b = recorded.get(key, "(absent)"), given.get(key, "(absent)")
        if a != b and not (isinstance(a, float) and isinstance(b, (int, float)) and np.isclose(a, b)):
            return key, a, b
    return None


def check_resume(
    manifest: Manifest, config: Config, seed_config: Config | None, space: dict | None, data: dict | None
) -> None:
    """Stop (UserError) when what the resuming command line asks for contradicts the manifest.

    `config` is the manifest's configuration with the command line's explicit settings applied; `seed_config`,
    `space` and `data` are None unless the command line gave them.
    """
    recorded = flatten(from_dict(manifest.config).to_dict())  # keys added since it was written take their defaults
    given = flatten(config.to_dict())
    diff = first_difference(recorded, given, ignore=RUNTIME_KEYS + SELECTION_KEYS + ("search.num_samples",))
    if diff:
        key, a, b = diff
        raise UserError(
            f"--resume: {key} was {a!r} when experiment {manifest.name} started, the command line gives "
            f"{b!r}: drop the option to continue it, or start a new experiment with another --name"
        )
    if config.search.num_samples < manifest.num_samples:
        raise UserError(
            f"--resume: --num-samples {config.search.num_samples} is fewer than the experiment's "
            f"{manifest.num_samples}: give at least {manifest.num_samples} (or leave it out)"
        )
    if seed_config is not None:
        diff = first_difference(
            flatten(from_dict(manifest.seed_config).to_dict()), flatten(seed_config.to_dict()), ignore=RUNTIME_KEYS
        )
        if diff:
            key, a, b = diff
            raise UserError(
                f"--resume: the seed configuration's {key} was {a!r}, --seed-config gives {b!r}: "
                "drop --seed-config to continue the experiment"
            )
    if space is not None:
        diff = first_difference(manifest.space, space)
        if diff:
            key, a, b = diff
            raise UserError(
                f"--resume: search space entry {key} was {a!r}, --space gives {b!r}: drop --space to "
                "continue the experiment"
            )
    if data is not None and data["sha256"] != manifest.data["sha256"]:
        raise UserError(
            f"--resume: the data {data['path'] or 'synthetic table'} changed since experiment "
            f"{manifest.name} started (sha256 {manifest.data['sha256'][:12]}... then, "
            f"{data['sha256'][:12]}... now): restore the file or start a new experiment"
        )
