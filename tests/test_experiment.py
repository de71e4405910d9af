"""The settings stage of `search.py` (emoma.experiment.search_settings): what the command line fixes, what it
refuses, and what it tells the seed trial. No Ray: settings are read before the search starts."""

import pytest

from emoma.cli import SEARCH_DEFAULTS, RaisingParser, parse_search_args
from emoma.errors import UserError
from emoma.experiment import outer_sampler_seed, search_settings


def settings(tmp_path, *argv):
    args = parse_search_args(list(argv), "search.py", parser=RaisingParser)
    return search_settings(args, SEARCH_DEFAULTS, args.name or "exp", str(tmp_path))


def test_a_searched_key_fixed_on_the_command_line_leaves_the_space_and_holds_for_the_seed_trial(tmp_path):
    s = settings(tmp_path, "--epochs", "7", "--set", "model.dropout=0.25")
    assert "train.epochs" not in s.space and "model.dropout" not in s.space
    assert "train.lr" in s.space
    assert s.config.train.epochs == 7 and s.config.model.dropout == 0.25
    assert s.seed_config.train.epochs == 7 and s.seed_config.model.dropout == 0.25
    assert any("train.epochs fixed at 7" in note for note in s.notes)
    assert any("seed configuration also runs with" in note for note in s.notes)


def test_the_shared_flags_reach_the_config(tmp_path):
    s = settings(
        tmp_path,
        *("--task", "3class", "--cv", "group-kfold", "--folds", "3", "--seed", "4", "--metric", "accuracy"),
        *("--device", "cpu", "--drop-nan"),
    )
    assert (s.config.train.device, s.config.data.drop_nan) == ("cpu", True)
    assert (s.config.data.task, s.config.cv.scheme, s.config.cv.folds, s.config.seed) == ("3class", "group-kfold", 3, 4)
    assert s.config.search.metric == s.config.train.metric == "accuracy"


def test_fixing_every_searched_key_is_refused(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {float: [1.0e-4, 1.0e-2], log: true}\n")
    with pytest.raises(UserError, match="nothing is left to search"):
        settings(tmp_path, "--space", str(space), "--set", "train.lr=0.001")


def test_mlflow_with_a_nested_search_is_refused(tmp_path):
    with pytest.raises(UserError, match="--mlflow is not supported with --outer"):
        settings(tmp_path, "--outer", "loso", "--mlflow")


def test_each_outer_subject_gets_its_own_sampler_seed():
    seeds = {outer_sampler_seed(0, str(s)) for s in range(2, 18)}
    assert len(seeds) == 16
    assert outer_sampler_seed(0, "5") == outer_sampler_seed(0, "5") != outer_sampler_seed(1, "5")
