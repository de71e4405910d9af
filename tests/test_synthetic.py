import numpy as np
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.model_selection import LeaveOneGroupOut, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from emoma.config import DataConfig
from emoma.data import table_from_frame
from emoma.layout import MERGED_COLUMNS
from emoma.synthetic import SUBJECTS, main, make_frame


def test_deterministic_and_seeded():
    a, b, c = make_frame(seed=0), make_frame(seed=0), make_frame(seed=1)
    assert a.equals(b)
    assert not a.equals(c)
    assert list(a.columns) == MERGED_COLUMNS
    assert sorted(a["subject"].unique()) == list(SUBJECTS)
    assert 70 <= a.groupby("subject").size().min() and a.groupby("subject").size().max() <= 90


def test_physiology_moves_the_expected_way():
    frame = make_frame(seed=0)
    per_subject = frame.groupby(["subject", "label"]).mean(numeric_only=True)
    stress, baseline = per_subject.xs(2, level="label"), per_subject.xs(1, level="label")
    for column in ("EDA_mean", "BVP_peak_freq", "Resp_std", "BVP_std"):
        assert (stress[column] > baseline[column]).mean() >= 0.8, column
    assert stress["TEMP_slope"].mean() < 0 < baseline["TEMP_slope"].mean()
    assert 28 < frame["TEMP_mean"].min() and frame["TEMP_mean"].max() < 38
    assert (frame["EDA_mean"] > 0).all() and (frame["net_acc_min"] >= 0).all()


def test_windows_are_temporally_correlated():
    frame = make_frame(seed=0)
    lag1 = [
        np.corrcoef(g["EDA_mean"].values[:-1], g["EDA_mean"].values[1:])[0, 1]
        for _, g in frame.groupby(["subject", "label"])
    ]
    assert np.mean(lag1) > 0.5


def test_subject_wise_is_harder_than_trivial():
    table = table_from_frame(make_frame(seed=0), DataConfig(), "synthetic")
    model = make_pipeline(StandardScaler(), LinearDiscriminantAnalysis())
    acc = cross_val_score(model, table.X, table.y, groups=table.groups, cv=LeaveOneGroupOut()).mean()
    assert 0.8 <= acc <= 0.95  # calibrated near the real table's 0.896


def test_cli_writes_csv(tmp_path, capsys):
    main([str(tmp_path / "s.csv"), "--seed", "3"])
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "s.csv").stat().st_size > 100_000
