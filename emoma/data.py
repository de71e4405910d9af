"""Stage 1: a merged.csv (or the embedded synthetic table) -> a validated Table of features, labels, subjects."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from emoma.config import DataConfig
from emoma.errors import UserError

# Constant within a subject: as features they identify the subject and leak it across folds.
METADATA_PATTERNS = ("age", "height", "weight", "gender_*", "coffee_*", "sport_*", "smoker_*", "feel_ill_*")
STRESS_LABEL = 2
CSV_BLOCK_ROWS = 20_000  # read_csv parses this many rows at a time: small parser buffers on big tables
THREE_CLASS_NAMES = {0: "amusement", 1: "baseline", 2: "stress"}


@dataclass
class Table:
    """Windows x features, ready for fold planning."""

    X: np.ndarray  # (n_windows, n_features) float32
    y: np.ndarray  # (n_windows,) int64 class index into class_names
    groups: np.ndarray  # (n_windows,) subject id of each window
    feature_names: list[str]
    class_names: list[str]
    source: str  # the CSV path, or "synthetic"
    dropped_columns: dict[str, str] = field(default_factory=dict)  # column -> why it is not a feature
    dropped_rows: int = 0  # rows removed by drop_labels or drop_nan
    time_s: np.ndarray | None = None  # (n_windows,) window start in seconds; None = row order is time order
    row_ids: np.ndarray | None = None  # (n_windows,) each window's data row in the source file (0-based)
    normalisation: str = "none"  # subject normalisation applied to X (emoma.context.normalise_subjects)

    @property
    def subjects(self) -> np.ndarray:
        """(n_subjects,) the distinct subject ids, sorted."""
        return np.unique(self.groups)

    @property
    def time_order(self) -> str:
        """How a subject's windows are ordered in time, for reports."""
        return "by the time_s column" if self.time_s is not None else "by row order within each subject"

    def class_counts(self) -> dict[str, int]:
        """{class name: number of windows}, for data summaries."""
        counts = np.bincount(self.y, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts)}


def load_table(cfg: DataConfig) -> Table:
    """Read and validate the table named by `cfg.path` (the synthetic table when None)."""
    if cfg.path is None:
        from emoma.synthetic import make_frame

        return table_from_frame(make_frame(), cfg, source="synthetic")
    return table_from_frame(read_csv(cfg.path), cfg, source=str(cfg.path))


def read_csv(path: str | Path) -> pd.DataFrame:
    """Read a merged.csv; a leading unnamed index column is dropped."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"data file {path} does not exist: check --data (or data.path)")
    if not path.is_file():
        raise UserError(f"data path {path} is not a file: give the path of a merged.csv")
    if path.stat().st_size == 0:
        raise UserError(f"data file {path} is empty: give a merged.csv with a header and rows")
    try:
        frame = pd.concat(pd.read_csv(path, chunksize=CSV_BLOCK_ROWS), ignore_index=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"data file {path} is not a readable CSV ({reason}): give a comma-separated merged.csv"
        ) from None
    first = str(frame.columns[0])
    if first == "" or first.startswith("Unnamed: 0"):
        frame = frame.drop(columns=frame.columns[0])
    if frame.empty:
        raise UserError(f"data file {path} has no rows: give a merged.csv with data")
    return frame


def table_from_frame(frame: pd.DataFrame, cfg: DataConfig, source: str) -> Table:
    """Validate a merged.csv-layout DataFrame and turn it into a Table."""
    for role, column in (("subject", cfg.subject_column), ("label", cfg.label_column)):
        if column not in frame.columns:
            raise UserError(f"{source} has no {role} column {column!r}: rename it or set data.{role}_column")
    n_before = len(frame)
    if frame[cfg.label_column].isna().any() or frame[cfg.subject_column].isna().any():
        raise UserError(f"{source}: some rows have no subject or label: fill or remove them")
    if cfg.drop_labels:
        keep = ~frame[cfg.label_column].astype(str).isin([str(v) for v in cfg.drop_labels])
        frame = frame[keep]
    y, class_names = encode_labels(frame[cfg.label_column], cfg)
    features, dropped = choose_feature_columns(frame, cfg, source)
    values = frame[features].to_numpy(dtype=np.float64)
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        bad_columns = [name for name, ok in zip(features, np.isfinite(values).all(axis=0)) if not ok]
        n_bad = int((~finite).sum())
        if not cfg.drop_nan:
            raise UserError(
                f"{source}: {n_bad} rows have NaN or infinite values in {', '.join(bad_columns)}: "
                "clean them, exclude those columns, or pass --drop-nan to drop the rows"
            )
        values, y, frame = values[finite], y[finite], frame[finite]
    if len(np.unique(y)) < 2:
        raise UserError(
            f"{source}: only {len(np.unique(y))} class left after label mapping: a classifier needs at least 2"
        )
    values, features, dropped = drop_uninformative(values, features, dropped)
    if not features:
        raise UserError(f"{source}: no feature columns left: check data.include and data.exclude")
    groups = frame[cfg.subject_column].to_numpy()
    time_s = read_time(frame, cfg, source)
    order = canonical_order(groups, time_s)
    return Table(
        X=values[order],
        y=y.astype(np.int64)[order],
        groups=groups[order],
        feature_names=features,
        class_names=class_names,
        source=source,
        dropped_columns=dropped,
        dropped_rows=n_before - len(y),
        time_s=None if time_s is None else time_s[order],
        row_ids=frame.index.to_numpy()[order],
    )


def canonical_order(groups: np.ndarray, time_s: np.ndarray | None) -> np.ndarray:
    """Row order by subject, then time (row order when there is no time column): a table's meaning never
    depends on how its file interleaves the subjects."""
    subject_code = np.unique(groups.astype(str), return_inverse=True)[1]
    within = time_s if time_s is not None else np.arange(len(groups))
    return np.lexsort((within, subject_code))


def read_time(frame: pd.DataFrame, cfg: DataConfig, source: str) -> np.ndarray | None:
    """The time column as float64 seconds (None when the table has none), checked per subject."""
    column = cfg.time_column
    if column not in frame.columns:
        return None
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    raw_missing = frame[column].isna().to_numpy()
    if (np.isnan(values) & ~raw_missing).any():
        bad = frame[column][np.isnan(values) & ~raw_missing].iloc[0]
        raise UserError(
            f"{source}: time column {column!r} holds non-numeric values such as {bad!r}: "
            "give window start times in seconds"
        )
    if raw_missing.any() or not np.isfinite(values).all():
        raise UserError(
            f"{source}: time column {column!r} is missing or infinite in {int((~np.isfinite(values)).sum())} "
            "rows: fill them, or drop the column to order windows by row"
        )
    keys = pd.DataFrame({"subject": frame[cfg.subject_column].astype(str).to_numpy(), "time": values})
    duplicated = keys.duplicated()
    if duplicated.any():
        first = keys[duplicated].iloc[0]
        raise UserError(
            f"{source}: subject {first['subject']} has two windows at {column}={first['time']:g}: "
            "each window of a subject needs its own start time"
        )
    return values


def encode_labels(labels: pd.Series, cfg: DataConfig) -> tuple[np.ndarray, list[str]]:
    """Map raw labels to class indices 0..C-1 and their names, by `cfg.label_map` or the task."""
    raw = labels.astype(str).to_numpy()
    present = sorted(set(raw), key=_natural_key)
    if cfg.label_map is not None:
        mapping = {str(k): str(v) for k, v in cfg.label_map.items()}
        unknown = sorted(set(mapping) - set(present), key=_natural_key)
        if unknown:
            raise UserError(
                f"label map names labels not in the data: {', '.join(unknown)} "
                f"(labels present: {', '.join(present)}): fix data.label_map"
            )
        unmapped = sorted(set(present) - set(mapping), key=_natural_key)
        if unmapped:
            raise UserError(
                f"labels {', '.join(unmapped)} are not in data.label_map: map them or add them to data.drop_labels"
            )
        class_names = list(dict.fromkeys(mapping.values()))
        index = {label: class_names.index(name) for label, name in mapping.items()}
    elif cfg.task == "binary":
        class_names = ["non-stress", "stress"]
        index = {label: int(label == str(STRESS_LABEL)) for label in present}
    elif cfg.task == "3class":
        expected = {str(k) for k in THREE_CLASS_NAMES}
        extra = sorted(set(present) - expected, key=_natural_key)
        if extra:
            raise UserError(
                f"task 3class expects labels 0, 1, 2 but the data also has {', '.join(extra)}: "
                "add them to data.drop_labels or use --task multiclass"
            )
        class_names = list(THREE_CLASS_NAMES.values())
        index = {str(k): k for k in THREE_CLASS_NAMES}
    else:
        class_names = present
        index = {label: i for i, label in enumerate(present)}
    return np.array([index[label] for label in raw], dtype=np.int64), class_names


def choose_feature_columns(frame: pd.DataFrame, cfg: DataConfig, source: str) -> tuple[list[str], dict[str, str]]:
    """Signal features by default; `include`/`exclude` (names or globs) override. Returns (features, dropped)."""
    candidates = [c for c in frame.columns if c not in (cfg.subject_column, cfg.label_column, cfg.time_column)]
    dropped: dict[str, str] = {}
    if cfg.include:
        for pattern in cfg.include:
            if not any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
                raise UserError(f"data.include entry {pattern!r} matches no column of {source}: check its spelling")
        chosen = [c for c in candidates if _matches(c, cfg.include)]
        dropped.update({c: "not in data.include" for c in candidates if c not in chosen})
    else:
        chosen = [c for c in candidates if not _matches(c, METADATA_PATTERNS)]
        dropped.update({c: "subject metadata (identifies the subject)" for c in candidates if c not in chosen})
    for column in [c for c in chosen if _matches(c, cfg.exclude)]:
        chosen.remove(column)
        dropped[column] = "in data.exclude"
    non_numeric = [
        c for c in chosen if not (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))
    ]
    if non_numeric:
        raise UserError(f"{source}: feature columns {', '.join(non_numeric)} are not numeric: add them to data.exclude")
    return chosen, dropped


def drop_uninformative(values: np.ndarray, features: list[str], dropped: dict[str, str]):
    """Drop constant columns and exact duplicates of an earlier column (ACC_z_* == ACC_y_* in WESAD), over all
    rows: a column dropped here every fold's training rows would drop too (`emoma.folds.uninformative_columns`
    sets aside, per fold, the rest of what they alone would drop).

    Returns the kept columns as float32, their names, and `dropped` with the reasons added.
    """
    keep = []
    for j, name in enumerate(features):
        column = values[:, j]
        if np.all(column == column[0]):
            dropped[name] = "constant"
            continue
        twin = next((features[i] for i in keep if np.array_equal(values[:, i], column)), None)
        if twin is not None:
            dropped[name] = f"duplicate of {twin}"
            continue
        keep.append(j)
    # float32 column by column: no second float64 copy of a big table
    kept = np.stack([values[:, j] for j in keep], axis=1, dtype=np.float32) if keep else values[:, :0]
    return kept, [features[j] for j in keep], dropped


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _natural_key(label: str):
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)
