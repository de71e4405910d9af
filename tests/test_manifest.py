"""The manifest decides what a resumed experiment is; the command line may not contradict it."""

import json

import pytest

from emoma.config import load_config
from emoma.data import load_table
from emoma.errors import UserError
from emoma.manifest import Manifest, check_resume, data_fingerprint

from conftest import ROOT


@pytest.fixture
def manifest():
    config = load_config(ROOT / "configs" / "smoke.yaml", ["seed=3", "search.num_samples=8"])
    table = load_table(config.data)
    return Manifest(
        name="m",
        config=config.to_dict(),
        seed_config=config.to_dict(),
        space={"train.lr": {"float": [1e-4, 1e-2], "log": True}},
        data=data_fingerprint(table, None),
        plan_keys={"none": "abc"},
        holdout_subjects=["2", "5", "9"],
        fold_order=[2, 0, 1],
        seed=3,
        num_samples=8,
        runs=[{"path": ".", "num_samples": 8}],
    )


def resumed(manifest, overrides=(), flags=None):
    return load_config(None, list(overrides), flags=flags or {}, base=manifest.config)


def test_round_trip_and_versions(manifest):
    again = Manifest.from_json(manifest.to_json(), "x")
    assert again == manifest and again.base_config().seed == 3
    assert {"python", "torch", "ray", "optuna", "scikit-learn"} <= set(manifest.versions)
    assert len(manifest.data["sha256"]) == 64 and manifest.data["rows"] > 0
    with pytest.raises(UserError, match="is not an EmoMA manifest"):
        Manifest.from_json("{not json", "somewhere/manifest.json")


def test_repeating_nothing_or_the_same_values_resumes(manifest):
    check_resume(manifest, resumed(manifest), None, None, None)
    check_resume(manifest, resumed(manifest, ["seed=3"], {"cv.jobs": 2, "train.device": "cpu"}), None, None, None)


@pytest.mark.parametrize(
    "overrides, flags, message",
    [
        ([], {"seed": 4}, "--resume: seed was 3 when experiment m started, the command line gives 4"),
        (["cv.folds=5"], {}, "--resume: cv.folds was 3 when experiment m started, the command line gives 5"),
        ([], {"data.path": "other.csv"}, "--resume: data.path was None"),
        ([], {"search.metric": "accuracy"}, "search.metric was 'macro_f1'"),
        ([], {"search.num_samples": 5}, "--num-samples 5 is fewer than the experiment's 8"),
        ([], {"search.cpus_per_trial": 2.0}, "search.cpus_per_trial was 1.0"),  # Tune keeps a restored run's resources
    ],
)
def test_a_contradicting_command_line_names_the_first_differing_field(manifest, overrides, flags, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_resume(manifest, resumed(manifest, overrides, flags), None, None, None)


def test_more_samples_extend_and_other_inputs_are_checked(manifest):
    check_resume(manifest, resumed(manifest, flags={"search.num_samples": 12}), None, None, None)
    seed = load_config(ROOT / "configs" / "seed.yaml")
    with pytest.raises(UserError, match="the seed configuration's .* was .*, --seed-config gives"):
        check_resume(manifest, resumed(manifest), seed, None, None)
    with pytest.raises(UserError, match="search space entry train.lr was"):
        check_resume(manifest, resumed(manifest), None, {"train.lr": {"float": [1e-3, 1e-1]}}, None)
    changed = {**manifest.data, "sha256": "0" * 64}
    with pytest.raises(UserError, match="changed since experiment m started"):
        check_resume(manifest, resumed(manifest), None, None, changed)


def test_a_manifest_written_before_a_setting_existed_resumes_with_its_default(manifest):
    for recorded in (manifest.config, manifest.seed_config):
        del recorded["model"]["lstm_over"]  # as an experiment started before the option was added
    check_resume(manifest, resumed(manifest), resumed(manifest), None, None)
    with pytest.raises(UserError, match="model.lstm_over was 'positions' when experiment m started"):
        check_resume(manifest, resumed(manifest, ["model.lstm_over=windows"]), None, None, None)


def test_an_experiment_of_an_earlier_version_is_refused_with_one_line(manifest):
    for version in (1, 2, 3):  # 2: before the guard's corrected test; 3: before tuned baselines
        old = json.loads(manifest.to_json()) | {"version": version}
        with pytest.raises(
            UserError,
            match=f"earlier EmoMA \\(manifest version {version}, this one writes 4\\).*start a new experiment",
        ):
            Manifest.from_json(json.dumps(old), "old/manifest.json")
