"""Raw WESAD recordings: find subjects in a WESAD folder, read a subject's pickle and readme, validate them.

WESAD (Schmidt et al., ICMI 2018) ships one folder per subject, ``SX/SX.pkl`` and ``SX/SX_readme.txt``. The
pickle holds a dict: ``subject``, ``label`` (700 Hz, aligned with the chest device) and ``signal`` with
``chest`` (RespiBAN, every signal at 700 Hz) and ``wrist`` (Empatica E4: ACC 32 Hz, BVP 64 Hz, EDA 4 Hz,
TEMP 4 Hz). Everything a user can get wrong here raises a one-line UserError.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emoma.errors import UserError

LABEL_HZ = 700
CHEST_HZ = 700
WRIST_HZ = {"ACC": 32, "BVP": 64, "EDA": 4, "TEMP": 4}
CHEST_SIGNALS = ("ACC", "ECG", "EDA", "EMG", "Resp", "Temp")
# 0 transient, 1 baseline, 2 stress, 3 amusement, 4 meditation, 5-7 to be ignored.
LABEL_CODES = frozenset(range(8))

# Readme answers used by the merged.csv metadata columns: field -> the line prefix that holds it.
README_FIELDS = {
    "age": "Age",
    "height": "Height",
    "weight": "Weight",
    "gender": "Gender",
    "coffee_today": "Did you drink coffee today",
    "sport_today": "Did you do any sports today",
    "smoker": "Are you a smoker",
    "feel_ill_today": "Do you feel ill today",
}


@dataclass
class SubjectFiles:
    subject: int  # the number in "S2"
    pickle: Path
    readme: Path

    @property
    def name(self) -> str:
        return f"S{self.subject}"


@dataclass
class Recording:
    """The arrays of one subject that feature extraction needs; each signal 1-D float64 (ACC: n x 3)."""

    label: np.ndarray  # WESAD condition code per 700 Hz sample
    wrist: dict[str, np.ndarray]
    chest: dict[str, np.ndarray]


def find_subjects(wesad_dir: str | Path, only: list[int] | None = None) -> list[Path]:
    """The subject folders (S2, S3, ...) of a WESAD folder, in subject order."""
    root = Path(wesad_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"WESAD folder {root} does not exist: give --wesad-dir the folder that holds S2 ... S17")
    folders = {int(p.name[1:]): p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"S\d+", p.name)}
    if not folders:
        raise UserError(f"no subject folders (S2, S3, ...) in {root}: give --wesad-dir the unpacked WESAD folder")
    if only:
        missing = sorted(set(only) - set(folders))
        if missing:
            names = ", ".join(f"S{s}" for s in missing)
            raise UserError(
                f"--subjects names {names}, not found in {root}: pick from "
                f"{', '.join(f'S{s}' for s in sorted(folders))}"
            )
        folders = {s: folders[s] for s in only}
    return [folders[s] for s in sorted(folders)]


def subject_files(folder: Path) -> SubjectFiles:
    """The pickle and readme of one subject folder; a missing file is a UserError."""
    name = folder.name
    files = SubjectFiles(int(name[1:]), folder / f"{name}.pkl", folder / f"{name}_readme.txt")
    for path, what in ((files.pickle, "pickle"), (files.readme, "readme")):
        if not path.is_file():
            raise UserError(f"{name}: {what} {path} is missing: restore it from the WESAD download")
    return files


def read_readme(path: Path) -> dict[str, str]:
    """The answers of SX_readme.txt that the metadata columns need (values as written, stripped)."""
    answers = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        for field, prefix in README_FIELDS.items():
            if field not in answers and line.startswith(prefix):
                answers[field] = re.split(r"[:?]", line, maxsplit=1)[-1].strip()
    missing = [README_FIELDS[f] for f in README_FIELDS if not answers.get(f)]
    if missing:
        raise UserError(
            f"{path.parent.name}: readme {path} lacks {', '.join(repr(m) for m in missing)}: "
            f"restore it from the WESAD download"
        )
    return answers


def load_recording(path: Path, wrist: tuple[str, ...], chest: tuple[str, ...]) -> Recording:
    """Read one subject's pickle and keep only the named signals (the rest is freed on return)."""
    name = path.parent.name
    try:
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError, IndexError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"{name}: {path} cannot be read ({reason}); it is truncated or not a WESAD pickle: download it again"
        ) from None
    try:
        label = np.asarray(data["label"]).ravel()
        wrist_arrays = {k: _signal(data["signal"]["wrist"][k]) for k in wrist}
        chest_arrays = {k: _signal(data["signal"]["chest"][k]) for k in chest}
    except (KeyError, TypeError, IndexError) as err:
        raise UserError(f"{name}: {path} is not a WESAD pickle (no signal entry {err}): download it again") from None
    codes = set(np.unique(label).tolist())
    unknown = sorted(codes - LABEL_CODES)
    if unknown:
        shown = ", ".join(str(c) for c in unknown[:5])
        raise UserError(
            f"{name}: label codes {shown} in {path} are not WESAD codes (0-7): "
            f"the file is damaged or not WESAD; download it again"
        )
    return Recording(label.astype(np.int8), wrist_arrays, chest_arrays)


def _signal(array) -> np.ndarray:
    """WESAD stores most signals as (n, 1) columns: flatten those, keep ACC as (n, 3)."""
    array = np.asarray(array, dtype=np.float64)
    return array.ravel() if array.ndim == 2 and array.shape[1] == 1 else array
