"""Report rendering: no empty test table without other models, no nan row for a model equal to the reference,
a finished run's folder refused as --out with the right advice."""

import numpy as np
import pytest

from emoma.config import Config
from emoma.errors import UserError
from emoma.metrics import evaluate
from emoma.pipeline import new_out_dir
from emoma.report.common import evaluation_sections

NAMES = ["non-stress", "stress"]


def _evaluation(others: dict):
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(10), 20)
    y = rng.integers(0, 2, len(groups))
    proba = rng.dirichlet([1, 1], len(groups))
    return evaluate(groups, y, {"CNN-LSTM": proba, **{k: v(proba) for k, v in others.items()}}, NAMES)


def test_no_other_model_gives_a_line_not_an_empty_table():
    text = "\n".join(evaluation_sections(_evaluation({}), NAMES))
    assert "no paired test (`--baselines` adds three)" in text
    assert "| against |" not in text


def test_a_model_equal_to_the_reference_is_said_so_not_nan():
    text = "\n".join(evaluation_sections(_evaluation({"same": lambda p: p, "other": lambda p: p[:, ::-1]}), NAMES))
    assert "equal on every subject" in text and "nan" not in text
    assert "| other | accuracy |" in text


def test_out_on_a_finished_run_says_finished(tmp_path):
    (tmp_path / "report.md").write_text("done")
    with pytest.raises(UserError, match="holds a finished run: give a new folder"):
        new_out_dir(tmp_path, Config())
    (tmp_path / "report.md").unlink()
    (tmp_path / "folds").mkdir()
    with pytest.raises(UserError, match="--resume"):
        new_out_dir(tmp_path, Config())
