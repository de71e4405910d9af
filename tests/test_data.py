import numpy as np
import pandas as pd
import pytest

import emoma.data
from emoma.config import DataConfig
from emoma.data import load_table, read_csv, table_from_frame
from emoma.errors import UserError
from emoma.layout import MERGED_COLUMNS, MERGED_METADATA_COLUMNS


def test_signal_features_only_by_default(small_frame):
    table = table_from_frame(small_frame, DataConfig(), "t")
    assert not set(MERGED_METADATA_COLUMNS) & set(table.feature_names)
    assert table.dropped_columns["age"].startswith("subject metadata")
    # ACC_z_* equals ACC_y_* (the WESAD table's bug): reported and dropped
    assert table.dropped_columns["ACC_z_mean"] == "duplicate of ACC_y_mean"
    assert "ACC_y_mean" in table.feature_names
    assert table.X.dtype == np.float32 and table.X.shape == (len(small_frame), len(table.feature_names))


def test_include_and_exclude_globs(small_frame):
    table = table_from_frame(small_frame, DataConfig(include=["EDA_*", "age"], exclude=["*_smna_*"]), "t")
    assert "age" in table.feature_names
    assert all(f.startswith("EDA") or f == "age" for f in table.feature_names)
    assert not any("smna" in f for f in table.feature_names)
    with pytest.raises(UserError, match="data.include entry 'HRV_\\*' matches no column"):
        table_from_frame(small_frame, DataConfig(include=["HRV_*"]), "t")


def test_tasks(small_frame):
    binary = table_from_frame(small_frame, DataConfig(task="binary"), "t")
    assert binary.class_names == ["non-stress", "stress"]
    assert np.array_equal(binary.y, (small_frame["label"] == 2).to_numpy())
    three = table_from_frame(small_frame, DataConfig(task="3class"), "t")
    assert three.class_names == ["amusement", "baseline", "stress"]
    assert np.array_equal(three.y, small_frame["label"].to_numpy())


def test_multiclass_with_string_labels_and_label_map(small_frame):
    frame = small_frame.assign(label=small_frame["label"].map({0: "fun", 1: "calm", 2: "tense"}))
    table = table_from_frame(frame, DataConfig(task="multiclass"), "t")
    assert table.class_names == ["calm", "fun", "tense"]
    mapped = table_from_frame(frame, DataConfig(label_map={"calm": "rest", "fun": "rest", "tense": "stress"}), "t")
    assert mapped.class_names == ["rest", "stress"]
    dropped = table_from_frame(frame, DataConfig(task="multiclass", drop_labels=["fun"]), "t")
    assert dropped.class_names == ["calm", "tense"] and dropped.dropped_rows == (frame["label"] == "fun").sum()
    with pytest.raises(UserError, match="label map names labels not in the data: relaxed"):
        table_from_frame(frame, DataConfig(label_map={"relaxed": "a", "calm": "b"}), "t")
    with pytest.raises(UserError, match="labels fun, tense are not in data.label_map"):
        table_from_frame(frame, DataConfig(label_map={"calm": "b"}), "t")


def test_3class_rejects_other_labels(small_frame):
    frame = small_frame.copy()
    frame.loc[:5, "label"] = 4
    with pytest.raises(UserError, match="task 3class expects labels 0, 1, 2 but the data also has 4"):
        table_from_frame(frame, DataConfig(task="3class"), "t")
    assert table_from_frame(frame, DataConfig(task="3class", drop_labels=[4]), "t").dropped_rows == 6


def test_nan_is_named_or_dropped(small_frame):
    frame = small_frame.copy()
    frame.loc[[3, 7], "EDA_mean"] = np.nan
    frame.loc[9, "TEMP_max"] = np.inf
    with pytest.raises(UserError, match="3 rows have NaN or infinite values in EDA_mean, TEMP_max.*--drop-nan"):
        table_from_frame(frame, DataConfig(), "t")
    table = table_from_frame(frame, DataConfig(drop_nan=True), "t")
    assert len(table.y) == len(frame) - 3 and table.dropped_rows == 3
    assert np.isfinite(table.X).all()


def test_bad_columns(small_frame):
    with pytest.raises(UserError, match="no subject column 'subject'"):
        table_from_frame(small_frame.drop(columns="subject"), DataConfig(), "t")
    with pytest.raises(UserError, match="no label column 'label'"):
        table_from_frame(small_frame.drop(columns="label"), DataConfig(), "t")
    with pytest.raises(UserError, match="feature columns site are not numeric: add them to data.exclude"):
        table_from_frame(small_frame.assign(site="lab"), DataConfig(), "t")
    assert (
        "site" not in table_from_frame(small_frame.assign(site="lab"), DataConfig(exclude=["site"]), "t").feature_names
    )
    with pytest.raises(UserError, match="only 1 class left"):
        table_from_frame(small_frame[small_frame["label"] == 1], DataConfig(), "t")


def test_constant_column_dropped(small_frame):
    table = table_from_frame(small_frame.assign(BVP_mean=1.0), DataConfig(), "t")
    assert table.dropped_columns["BVP_mean"] == "constant"


def test_read_csv_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_csv(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UserError, match="is empty"):
        read_csv(tmp_path / "empty.csv")
    (tmp_path / "binary.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe\x00")
    with pytest.raises(UserError, match="not a readable CSV"):
        read_csv(tmp_path / "binary.csv")
    with pytest.raises(UserError, match="is not a file"):
        read_csv(tmp_path)


def test_index_column_round_trip(small_frame, tmp_path):
    path = tmp_path / "merged.csv"
    small_frame.to_csv(path)  # with the unnamed index column, like WESAD's merged.csv
    frame = read_csv(path)
    assert list(frame.columns) == MERGED_COLUMNS
    table = load_table(DataConfig(path=str(path)))
    assert table.source == str(path) and len(table.y) == len(small_frame)


def test_real_table_layout(real_data):
    frame = pd.read_csv(real_data, index_col=0)
    assert list(frame.columns) == MERGED_COLUMNS
    table = load_table(DataConfig(path=str(real_data)))
    assert len(table.y) == 1178 and len(table.subjects) == 15 and len(table.feature_names) == 42


def test_csv_read_in_blocks_equals_one_read(small_frame, tmp_path, monkeypatch):
    path = tmp_path / "t.csv"
    small_frame.to_csv(path)
    monkeypatch.setattr(emoma.data, "CSV_BLOCK_ROWS", 7)
    pd.testing.assert_frame_equal(read_csv(path), pd.read_csv(path, index_col=0).reset_index(drop=True))
