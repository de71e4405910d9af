import re

import pytest

from emoma.config import Config, apply_overrides, load_config
from emoma.errors import UserError

from conftest import ROOT


def test_defaults_and_presets_load():
    assert load_config() == Config()
    for name in ("default", "seed", "smoke"):
        config = load_config(ROOT / "configs" / f"{name}.yaml")
        assert config.name == name


def test_yaml_and_set_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.01\nmodel:\n  conv_channels: [8]\n")
    config = load_config(path, ["train.lr=0.02", "model.bidirectional=true", "data.path=x.csv"])
    assert config.train.lr == 0.02 and config.model.conv_channels == [8]
    assert config.model.bidirectional is True and config.data.path == "x.csv"
    assert config.train.epochs == Config().train.epochs


def test_int_is_accepted_for_float():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.lrr=0.1"], "unknown config key 'train.lrr'"),
        (["train.lr=fast"], "config train.lr='fast' has the wrong type: expected float"),
        (["train.epochs=2.5"], "train.epochs=2.5 has the wrong type: expected int"),
        (["train.epochs=0"], "config train.epochs=0 is invalid: it must be at least 1"),
        (["cv.scheme=random"], "cv.scheme='random' is invalid: it must be one of loso"),
        (["model.kernel_size=4"], "model.kernel_size=4 is invalid"),
        (["search.guard_alpha=0"], "search.guard_alpha=0.0 is invalid: it must be between 0 and 1"),
        (["search.guard_alpha=1.5"], "search.guard_alpha=1.5 is invalid: it must be between 0 and 1"),
        (["seed=-1"], "seed=-1 is invalid: it must be 0 or more"),
        (["search.sampler_seed=-3"], "search.sampler_seed=-3 is invalid: it must be 0 or more"),
        (["cv.baselines=best"], "cv.baselines='best' is invalid: it must be one of tuned, default"),
        (["nonsense"], "expected key=value"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_config(None, overrides)


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        load_config(bad)
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad.write_text("- a list\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_config(bad)


def test_apply_overrides_validates():
    config = apply_overrides(Config(), {"train.batch_size": 7})
    assert config.train.batch_size == 7
    with pytest.raises(UserError):
        apply_overrides(Config(), {"train.batch_size": 0})
