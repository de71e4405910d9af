"""The search space is validated before Ray starts: keys, bounds, choices, the seed point; YAML floats."""

import pytest

from emoma.config import Config, load_config, parse_yaml
from emoma.errors import UserError
from emoma.space import load_space, params_to_overrides, seed_trial_config, space_from_dict, space_point

from conftest import ROOT


def test_the_shipped_space_and_the_seed_point():
    space = load_space(ROOT / "configs" / "search_space.yaml")
    assert {"model.context", "data.subject_norm"} <= set(space)
    seed = load_config(ROOT / "configs" / "seed.yaml")
    point = space_point(seed, space)
    assert params_to_overrides(point)["model.conv_channels"] == seed.model.conv_channels
    assert point["model.context"] == 1 and point["data.subject_norm"] == "none"
    preset = space_point(load_config(ROOT / "configs" / "context.yaml"), space)  # the search's default base
    assert (preset["model.lstm_over"], preset["model.n_features"], preset["model.context"]) == ("windows", 0, 4)


@pytest.mark.parametrize(
    "text, message",
    [
        ("train.lrr: {float: [0.1, 1]}", "unknown config key 'train.lrr'"),
        ("cv.folds: {int: [3, 5]}", "search space entry cv.folds: only model.* and train.* keys"),
        ("data.task: {choice: [binary, 3class]}", "search space entry data.task: only model.* and train.* keys"),
        ("seed: {int: [0, 5]}", "search space entry seed: only model.* and train.* keys"),
        ("search.holdout: {int: [1, 3]}", "search space entry search.holdout: only model.*"),
        ("train.device: {choice: [cpu, cuda]}", "train.device: not a hyperparameter to search (set it with --device)"),
        ("train.lr: {float: [1, 0.1]}", "low < high"),
        ("train.lr: {float: [0, 1], log: true}", "log range needs low > 0"),
        ("train.lr: [1, 2]", "expected one of"),
        ("model.n_features: {int: [2.5, 9]}", "int needs [low, high] integers"),
        ("model.conv_blocks: {int: [1, 2]}", "go together"),
        # every bound and every choice is checked against the config's rules, not only the first
        (
            "model.dropout: {float: [0.1, 1.5]}",
            "model.dropout: value 1.5 is not allowed (config model.dropout=1.5 is invalid",
        ),
        ("train.batch_size: {choice: [16, 32, 0]}", "train.batch_size: value 0 is not allowed"),
        ("model.pool: {choice: [max, median]}", "model.pool: value 'median' is not allowed"),
        ("model.context: {choice: [1, 0]}", "model.context: value 0 is not allowed"),
        ("data.subject_norm: {choice: [none, zscore]}", "data.subject_norm: value 'zscore' is not allowed"),
        (
            "train.epochs: {choice: [10, fast]}",
            "train.epochs: value 'fast' is not allowed (config train.epochs='fast' has the wrong type",
        ),
        ("train.lr: {float: [1.0e-4, 1.0e-2], log: yes please}", "log must be true or false"),
        ("train.lr: {float: [1e-4, 1e-2]\n", "is not valid YAML"),
    ],
)
def test_bad_spaces_name_the_key(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(
        UserError,
        match=message.replace("(", r"\(")
        .replace(")", r"\)")
        .replace("*", r"\*")
        .replace("[", r"\[")
        .replace("]", r"\]"),
    ):
        load_space(path)


def test_yaml_floats_as_people_write_them(tmp_path):
    assert parse_yaml("lr: 1e-3") == {"lr": 0.001}
    config_file = tmp_path / "c.yaml"
    config_file.write_text("train:\n  lr: 1e-3\n  weight_decay: 5E-5\n")
    config = load_config(config_file, ["train.lr=2e-3"])
    assert config.train.lr == 0.002 and config.train.weight_decay == 5e-5
    space = space_from_dict(
        parse_yaml("train.lr: {float: [1e-4, 1e-2], log: true}\ntrain.weight_decay: {choice: [0, 1e-5, 1e-4]}"),
        Config(),
    )
    assert space["train.lr"].low == 1e-4 and space["train.weight_decay"].choices == (0, 1e-5, 1e-4)


def test_the_seed_trial_runs_the_seed_configuration_exactly():
    base = load_config(ROOT / "configs" / "default.yaml")
    seed = load_config(ROOT / "configs" / "seed.yaml")
    space = load_space(ROOT / "configs" / "search_space.yaml")
    run, notes = seed_trial_config(base, seed, space)
    assert run.model == seed.model  # fc 128, not default.yaml's 64: keys outside the space come from the seed
    assert run.train.lr == seed.train.lr and run.train.batch_size == seed.train.batch_size
    assert run.cv == base.cv  # the protocol is the experiment's
    assert len(notes) == 1 and "cv.scheme='loso' (seed config: 'group-kfold')" in notes[0]


def test_low_fidelity_trials_refuse_to_search_what_they_ignore():
    from emoma.space import check_fidelity

    space = space_from_dict({"model.ensemble": {"choice": [1, 3]}}, load_config(None))
    with pytest.raises(UserError, match="model.ensemble: trials at search.fidelity=low train one model per fold"):
        check_fidelity(space, load_config(None, ["search.fidelity=low"]))
    check_fidelity(space, load_config(None))  # full fidelity, the default: searching it means what it says
