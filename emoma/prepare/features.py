"""Stage 0: raw WESAD recordings -> the merged.csv window-by-feature table that the rest of EmoMA reads.

Usage: ``python -m emoma.prepare --wesad-dir WESAD --out merged.csv [options]`` (``--help`` lists them).

Windows are cut per subject and per condition segment on every signal at its own sampling rate, all with
the same start time and the exact length. Features follow the common WESAD pipeline that produced the
published merged.csv (same columns, order and label coding), with two of its bugs fixed:

- the wrist ACC low-pass was applied across the x/y/z axes of the n x 3 array instead of along time, so
  ``ACC_y_*`` equals ``ACC_z_*`` (and both are ~1e-3 of ``ACC_x_*``); here each axis is filtered along time;
- ``BVP_peak_freq`` came from a periodogram with fs=8 for the 64 Hz BVP (8x too small); here fs=64.

``--compat-bugs`` reproduces both bugs and the original's window length (21,000 rows of its outer-joined
multi-rate frame, which has 760 rows per second: 27.6 s, not 30 s), for comparison with published numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from scipy import ndimage, signal
from tqdm.auto import tqdm

from emoma.errors import UserError, exit_on_user_error
from emoma.files import atomic_path
from emoma.layout import MERGED_METADATA_COLUMNS, MERGED_SIGNAL_COLUMNS
from emoma.prepare.recordings import (
    CHEST_HZ,
    CHEST_SIGNALS,
    LABEL_HZ,
    WRIST_HZ,
    Recording,
    SubjectFiles,
    find_subjects,
    load_recording,
    read_readme,
    subject_files,
)

# condition name -> (WESAD label code, label in the output table); the output keeps merged.csv's coding.
CONDITIONS = {"baseline": (1, 1), "stress": (2, 2), "amusement": (3, 0), "meditation": (4, 3)}
DEFAULT_CONDITIONS = ("baseline", "stress", "amusement")
SIGNAL_GROUPS = ("wrist", "resp", "chest", "all")
STATS = ("mean", "std", "min", "max")
# The original joined 700 Hz chest/label rows with the wrist signals: 700 + 64 - 4 shared stamps = 760 rows/s.
JOINED_ROWS_PER_S = 760
ACC_FIR = signal.firwin(64, 0.4, fs=WRIST_HZ["ACC"])  # 0.4 Hz low-pass, as in eda-explorer
EDA_LOWPASS = signal.butter(6, 1.0, fs=WRIST_HZ["EDA"])  # (b, a): 1 Hz low-pass before cvxEDA
WINDOW_CHUNK = 1 << 22  # samples per block when a feature needs whole windows (bounds memory)


@dataclass(frozen=True)
class PrepareOptions:
    window_s: float = 30.0
    shift_s: float | None = None  # None: the window length (non-overlapping)
    conditions: tuple[str, ...] = DEFAULT_CONDITIONS
    signals: tuple[str, ...] = ("wrist", "resp")
    compat_bugs: bool = False

    def __post_init__(self):
        if not self.window_s > 0:
            raise UserError(f"--window-s must be positive, got {self.window_s}")
        if self.shift_s is not None and not self.shift_s > 0:
            raise UserError(f"--shift-s must be positive, got {self.shift_s}")
        bad = [c for c in self.conditions if c not in CONDITIONS]
        if bad or not self.conditions:
            raise UserError(
                f"--conditions: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(CONDITIONS)}"
            )
        bad = [s for s in self.signals if s not in SIGNAL_GROUPS]
        if bad or not self.signals:
            raise UserError(
                f"--signals: unknown {', '.join(bad) or '(none given)'}; "
                f"choose from {', '.join(SIGNAL_GROUPS)} (comma-separated)"
            )

    @property
    def span_s(self) -> float:
        """Window length in seconds; with --compat-bugs the original's 21,000 joined rows."""
        return self.window_s * LABEL_HZ / JOINED_ROWS_PER_S if self.compat_bugs else self.window_s

    @property
    def step_s(self) -> float:
        shift = self.window_s if self.shift_s is None else self.shift_s
        return shift * LABEL_HZ / JOINED_ROWS_PER_S if self.compat_bugs else shift

    @property
    def wrist_signals(self) -> tuple[str, ...]:
        return tuple(WRIST_HZ) if {"wrist", "all"} & set(self.signals) else ()

    @property
    def chest_signals(self) -> tuple[str, ...]:
        if {"chest", "all"} & set(self.signals):
            return CHEST_SIGNALS
        return ("Resp",) if "resp" in self.signals else ()


@dataclass
class Windows:
    """Where one subject's windows start (seconds from the recording start) and their output labels."""

    start_s: np.ndarray
    label: np.ndarray
    span_s: float

    def indices(self, hz: float) -> tuple[np.ndarray, int]:
        """First sample of each window and the window length, in samples of a signal sampled at `hz`."""
        return np.ceil(self.start_s * hz - 1e-6).astype(np.int64), int(round(self.span_s * hz))

    def subset(self, keep: np.ndarray) -> Windows:
        return Windows(self.start_s[keep], self.label[keep], self.span_s)


def plan_windows(label: np.ndarray, opts: PrepareOptions) -> Windows:
    """Windows of `opts.span_s` every `opts.step_s` inside each contiguous segment of a wanted condition.

    Rows come condition by condition in the order of `opts.conditions`, each in time order (as merged.csv).
    """
    bounds = np.r_[0, np.flatnonzero(np.diff(label)) + 1, len(label)]
    starts, labels = [], []
    for name in opts.conditions:
        code, out_label = CONDITIONS[name]
        for a, b in zip(bounds[:-1], bounds[1:]):
            if label[a] != code:
                continue
            length_s = (b - a) / LABEL_HZ
            fits = length_s >= opts.span_s
            count = int(np.floor((length_s - opts.span_s) / opts.step_s + 1e-9)) + 1 if fits else 0
            starts.append(a / LABEL_HZ + opts.step_s * np.arange(count))
            labels.append(np.full(count, out_label))
    return Windows(np.concatenate(starts or [np.zeros(0)]), np.concatenate(labels or [np.zeros(0, int)]), opts.span_s)


def window_stats(x: np.ndarray, first: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """mean, std (ddof 0), min, max of x[first[i] : first[i] + n] for every window, in O(len(x))."""
    centred = x - x.mean()  # keeps the running sums small, so the std is accurate
    c1 = np.concatenate(([0.0], np.cumsum(centred)))
    c2 = np.concatenate(([0.0], np.cumsum(centred**2)))
    m1 = (c1[first + n] - c1[first]) / n
    m2 = (c2[first + n] - c2[first]) / n
    centre = first + n // 2  # a size-n filter centred there covers first .. first + n - 1
    return {
        "mean": m1 + x.mean(),
        "std": np.sqrt(np.maximum(m2 - m1**2, 0.0)),
        "min": ndimage.minimum_filter1d(x, n)[centre],
        "max": ndimage.maximum_filter1d(x, n)[centre],
    }


def _window_blocks(x: np.ndarray, first: np.ndarray, n: int):
    """The windows as (k, n) arrays, a few million samples at a time."""
    per_block = max(1, WINDOW_CHUNK // n)
    for i in range(0, len(first), per_block):
        yield x[first[i : i + per_block, None] + np.arange(n)]


def peak_frequency(x: np.ndarray, first: np.ndarray, n: int, fs: float) -> np.ndarray:
    """Frequency of the periodogram's maximum in each window."""
    peaks = []
    for block in _window_blocks(x, first, n):
        freqs, power = signal.periodogram(block, fs=fs, axis=-1)
        peaks.append(freqs[np.argmax(power, axis=-1)])
    return np.concatenate(peaks) if peaks else np.zeros(0)


def slope(x: np.ndarray, first: np.ndarray, n: int) -> np.ndarray:
    """Least-squares slope of each window against the sample number (units per sample)."""
    t = np.arange(n) - (n - 1) / 2
    out = [block @ t / (t @ t) for block in _window_blocks(x, first, n)]
    return np.concatenate(out) if out else np.zeros(0)


def filter_wrist_acc(acc: np.ndarray, compat_bugs: bool) -> np.ndarray:
    """0.4 Hz FIR low-pass of the E4 accelerometer (n x 3, units of 1/64 g)."""
    if not compat_bugs:
        return signal.lfilter(ACC_FIR, 1.0, acc, axis=0)
    # The original filtered the n x 3 array along its last axis (across x, y, z) once per column, and
    # pandas kept column 0 each time: x -> h0 x, then y and z -> h0^2 x.
    acc = acc.copy()
    for axis in range(3):
        acc[:, axis] = signal.lfilter(ACC_FIR, 1.0, acc)[:, 0]
    return acc


def decompose_eda(eda: np.ndarray) -> dict[str, np.ndarray]:
    """cvxEDA (Greco et al. 2016) of the z-scored EDA: phasic, sparse SMNA driver, tonic."""
    try:
        import cvxeda
    except ImportError:
        raise UserError(
            "the EDA_phasic/smna/tonic features need cvxEDA: pip install -e '.[prepare]' "
            "(or leave out the wrist signals with --signals resp|chest)"
        ) from None
    z = (eda - eda.mean()) / eda.std(ddof=1)
    phasic, smna, tonic, *_ = cvxeda.cvxEDA(z, 1.0 / WRIST_HZ["EDA"], options={"show_progress": False})
    return {"EDA_phasic": phasic, "EDA_smna": smna, "EDA_tonic": tonic}


def valid_windows(rec: Recording, windows: Windows, opts: PrepareOptions) -> Windows:
    """Drop windows that run past the end of any signal used (E4 and RespiBAN lengths differ slightly)."""
    lengths = [(len(rec.wrist[k]), WRIST_HZ[k]) for k in opts.wrist_signals]
    lengths += [(len(rec.chest[k]), CHEST_HZ) for k in opts.chest_signals]
    keep = np.ones(len(windows.start_s), dtype=bool)
    for length, hz in lengths:
        first, n = windows.indices(hz)
        keep &= first + n <= length
    return windows.subset(keep)


def subject_features(rec: Recording, windows: Windows, opts: PrepareOptions) -> dict[str, np.ndarray]:
    """Feature name -> one value per window, for the signal groups in `opts`."""
    features: dict[str, np.ndarray] = {}

    def add(prefix: str, x: np.ndarray, hz: float):
        first, n = windows.indices(hz)
        for stat, values in window_stats(x, first, n).items():
            features[f"{prefix}_{stat}"] = values

    if opts.wrist_signals:
        acc = filter_wrist_acc(rec.wrist["ACC"], opts.compat_bugs)
        add("net_acc", np.sqrt((acc**2).sum(axis=1)), WRIST_HZ["ACC"])
        for axis, name in enumerate("xyz"):
            add(f"ACC_{name}", acc[:, axis], WRIST_HZ["ACC"])
        add("BVP", rec.wrist["BVP"], WRIST_HZ["BVP"])
        eda = signal.lfilter(*EDA_LOWPASS, rec.wrist["EDA"])
        add("EDA", eda, WRIST_HZ["EDA"])
        for name, component in decompose_eda(eda).items():
            add(name, component, WRIST_HZ["EDA"])
        add("TEMP", rec.wrist["TEMP"], WRIST_HZ["TEMP"])
        first, n = windows.indices(WRIST_HZ["BVP"])
        periodogram_hz = 8 if opts.compat_bugs else WRIST_HZ["BVP"]
        features["BVP_peak_freq"] = peak_frequency(rec.wrist["BVP"], first, n, periodogram_hz)
        first, n = windows.indices(WRIST_HZ["TEMP"])
        features["TEMP_slope"] = slope(rec.wrist["TEMP"], first, n)
    if "Resp" in opts.chest_signals:
        add("Resp", rec.chest["Resp"], CHEST_HZ)
    for name in opts.chest_signals:
        if name == "ACC":
            acc = rec.chest["ACC"]
            add("chest_net_acc", np.sqrt((acc**2).sum(axis=1)), CHEST_HZ)
            for axis, axis_name in enumerate("xyz"):
                add(f"chest_ACC_{axis_name}", acc[:, axis], CHEST_HZ)
        elif name != "Resp":
            add(f"chest_{name}", rec.chest[name], CHEST_HZ)
    known = [c for c in MERGED_SIGNAL_COLUMNS if c in features]
    return {c: features[c] for c in known + [c for c in features if c not in known]}


def metadata_columns(answers: dict[str, str], subject: str) -> dict[str, float]:
    """The merged.csv metadata columns from a readme's answers (one-hot as pandas.get_dummies named them)."""

    def number(field):
        try:
            value = float(answers[field])
        except ValueError:
            message = f"{subject}: readme {field} {answers[field]!r} is not a number: fix the readme"
            raise UserError(message) from None
        return int(value) if value.is_integer() else value

    def answer(field):
        return answers[field].strip().upper()

    return {
        "age": number("age"),
        "height": number("height"),
        "weight": number("weight"),
        "gender_ female": int(answers["gender"].strip().lower() == "female"),
        "gender_ male": int(answers["gender"].strip().lower() == "male"),
        "coffee_today_YES": int(answer("coffee_today") == "YES"),
        "sport_today_YES": int(answer("sport_today") == "YES"),
        "smoker_NO": int(answer("smoker") == "NO"),
        "smoker_YES": int(answer("smoker") == "YES"),
        "feel_ill_today_YES": int(answer("feel_ill_today") == "YES"),
    }


def prepare_subject(files: SubjectFiles, metadata: dict[str, float], opts: PrepareOptions) -> pd.DataFrame:
    """One subject's rows: features, subject, label, metadata (merged.csv column order), then time_s (each
    window's start in seconds since the recording began)."""
    rec = load_recording(files.pickle, opts.wrist_signals, opts.chest_signals)
    windows = valid_windows(rec, plan_windows(rec.label, opts), opts)
    frame = pd.DataFrame(subject_features(rec, windows, opts))
    frame["subject"] = files.subject
    frame["label"] = windows.label.astype(np.int64)
    for column in MERGED_METADATA_COLUMNS:
        frame[column] = metadata[column]
    frame["time_s"] = windows.start_s  # the true order and the gaps between conditions, for context windows
    return frame


@dataclass
class SubjectOutcome:
    name: str
    frame: pd.DataFrame | None = None
    error: str | None = None
    seconds: float = 0.0


def _run_subject(files: SubjectFiles, metadata: dict, opts: PrepareOptions) -> SubjectOutcome:
    start = time.perf_counter()
    try:
        frame = prepare_subject(files, metadata, opts)
    except UserError as err:
        return SubjectOutcome(files.name, error=str(err))
    return SubjectOutcome(files.name, frame=frame, seconds=time.perf_counter() - start)


@dataclass
class Prepared:
    table: pd.DataFrame
    skipped: dict[str, str] = field(default_factory=dict)  # subject -> why


def prepare(
    wesad_dir: str | Path,
    opts: PrepareOptions,
    *,
    subjects: list[int] | None = None,
    jobs: int = 2,
    skip_bad: bool = False,
    progress: bool = True,
) -> Prepared:
    """Every subject of a WESAD folder -> one merged.csv-layout table (subjects in parallel, `jobs` at a time).

    Each worker holds one subject's recording at a time, so memory is bounded by `jobs` recordings. With
    `skip_bad`, a subject with bad input is left out and named on stderr; otherwise it stops everything.
    """
    skipped: dict[str, str] = {}

    def skip(name: str, reason: str):
        if not skip_bad:
            raise UserError(f"{reason} (or pass --skip-bad to go on without {name})")
        skipped[name] = reason
        tqdm.write(f"skipped {reason}", file=sys.stderr)

    work = []
    for folder in find_subjects(wesad_dir, subjects):  # cheap checks first: fail before the long part
        try:
            files = subject_files(folder)
            work.append((files, metadata_columns(read_readme(files.readme), files.name)))
        except UserError as err:
            skip(folder.name, str(err))
    frames = {}
    jobs = max(1, min(jobs, len(work), os.cpu_count() or 1)) if work else 1
    stream = Parallel(n_jobs=jobs, return_as="generator_unordered")(
        delayed(_run_subject)(files, metadata, opts) for files, metadata in work
    )
    with tqdm(total=len(work), desc="prepare", unit="subject", disable=not progress, file=sys.stderr) as bar:
        for outcome in stream:
            bar.update()
            if outcome.error is not None:
                skip(outcome.name, outcome.error)
                continue
            frames[outcome.name] = outcome.frame
            counts = outcome.frame["label"].value_counts().sort_index().to_dict()
            bar.write(
                f"{outcome.name}: {len(outcome.frame)} windows {counts} in {outcome.seconds:.1f} s", file=sys.stderr
            )
    if not frames:
        raise UserError(f"no subject in {wesad_dir} could be prepared: fix the files named above")
    order = sorted(frames, key=lambda name: int(name[1:]))
    table = pd.concat([frames[name] for name in order], ignore_index=True)
    return Prepared(table, skipped)


def parse_args(argv=None, prog="python -m emoma.prepare"):
    p = argparse.ArgumentParser(prog=prog, description="Turn a WESAD folder into a merged.csv window-by-feature table.")
    p.add_argument("--wesad-dir", required=True, help="the unpacked WESAD folder (holds S2 ... S17)")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--window-s", type=float, default=30.0, help="window length in seconds (default: 30)")
    p.add_argument("--shift-s", type=float, help="window shift in seconds (default: the window length)")
    p.add_argument(
        "--conditions",
        default=",".join(DEFAULT_CONDITIONS),
        help=f"comma-separated, from {', '.join(CONDITIONS)} (default: %(default)s)",
    )
    p.add_argument(
        "--signals",
        default="wrist,resp",
        help="comma-separated groups: wrist (E4 ACC, BVP, EDA, TEMP), resp (chest Resp), chest (every "
        "RespiBAN signal), all (default: %(default)s, the merged.csv columns)",
    )
    p.add_argument("--subjects", help="comma-separated subject numbers, e.g. 2,3,17 (default: all)")
    p.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="subjects prepared at once; each holds one recording (~1-2 GB) in memory (default: 2)",
    )
    p.add_argument(
        "--compat-bugs",
        action="store_true",
        help="reproduce the common pipeline's ACC and BVP_peak_freq bugs and its 27.6 s windows",
    )
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable subjects instead of stopping")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@exit_on_user_error
def main(argv=None, prog="python -m emoma.prepare"):
    args = parse_args(argv, prog)
    opts = PrepareOptions(
        window_s=args.window_s,
        shift_s=args.shift_s,
        conditions=_split(args.conditions),
        signals=_split(args.signals),
        compat_bugs=args.compat_bugs,
    )
    try:
        subjects = [int(s.lstrip("Ss")) for s in _split(args.subjects)] if args.subjects else None
    except ValueError:
        raise UserError(f"--subjects {args.subjects!r}: give subject numbers, e.g. 2,3,17") from None
    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    out = Path(args.out).expanduser()
    if not out.parent.is_dir():
        raise UserError(f"--out folder {out.parent} does not exist: create it or write elsewhere")
    start = time.perf_counter()
    result = prepare(
        args.wesad_dir, opts, subjects=subjects, jobs=args.jobs, skip_bad=args.skip_bad, progress=not args.no_progress
    )
    with atomic_path(out) as tmp:
        result.table.to_csv(tmp)
    counts = result.table["label"].value_counts().sort_index().to_dict()
    print(
        f"wrote {out}: {len(result.table)} windows of {result.table['subject'].nunique()} subjects, "
        f"labels {counts}, {time.perf_counter() - start:.1f} s"
    )
