"""Synthetic recordings in the raw WESAD format (``SX/SX.pkl`` and ``SX/SX_readme.txt``).

Every signal at its real sampling rate and shape (chest 700 Hz; wrist ACC 32 Hz n x 3 in 1/64 g, BVP 64 Hz,
EDA and TEMP 4 Hz; single signals as (n, 1) columns), the label at 700 Hz, and a readme with the questions
WESAD asks. The physiology follows the condition: heart rate, skin conductance responses and respiration
rise under stress, skin temperature falls. For tests, demos of ``python -m emoma.prepare`` without the
download, and benchmarks (``--scale 1`` is a full ~100-minute recording).

Usage: ``python -m emoma.prepare.synthetic OUT_DIR [--subjects 2,3] [--scale 1.0] [--seed 0]``
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
from scipy import signal

from emoma.prepare.recordings import CHEST_HZ, LABEL_HZ, WRIST_HZ

# WESAD's order of conditions as (label code, seconds): ~100 minutes, as a real session.
PROTOCOL = (
    (0, 480),
    (1, 1200),
    (0, 300),
    (3, 392),
    (0, 300),
    (4, 420),
    (0, 600),
    (2, 630),
    (0, 600),
    (4, 420),
    (5, 220),
    (6, 220),
    (7, 218),
)
# label code -> heart rate (bpm), skin conductance level (uS), skin temperature (degC), breaths per second,
# skin conductance responses per minute, wrist motion (1/64 g)
PHYSIOLOGY = {
    0: (75, 2.0, 33.2, 0.27, 2.0, 2.0),
    1: (68, 1.8, 33.4, 0.25, 1.0, 0.8),
    2: (88, 3.4, 32.9, 0.33, 6.0, 1.5),
    3: (72, 2.1, 33.3, 0.26, 2.0, 1.0),
    4: (64, 1.7, 33.5, 0.20, 0.5, 0.5),
    5: (74, 2.0, 33.2, 0.27, 2.0, 2.0),
    6: (74, 2.0, 33.2, 0.27, 2.0, 2.0),
    7: (74, 2.0, 33.2, 0.27, 2.0, 2.0),
}
README = """# Subject: S{subject}

# Personal information
Age: {age}
Height (cm): {height}
Weight (kg): {weight}
Gender: {gender}
Dominant hand: right

### Additional information ###
Did you drink coffee today? {coffee}
Did you drink coffee within the last hour? NO
Did you do any sports today? {sport}
Are you a smoker? {smoker}
Did you smoke within the last hour? NO
Do you feel ill today? {ill}
"""


def make_recording(seed: int = 0, protocol=PROTOCOL, scale: float = 1.0, subject: int = 2) -> dict:
    """One subject's recording as the dict a WESAD pickle holds; `scale` multiplies every duration."""
    rng = np.random.default_rng(seed)
    codes = np.array([code for code, _ in protocol])
    samples = np.array([int(round(seconds * scale * LABEL_HZ)) for _, seconds in protocol])
    label = np.repeat(codes, samples).astype(np.int32)
    duration_s = len(label) / LABEL_HZ
    # This subject's deviation from PHYSIOLOGY: an offset per column, and a gain on the conductance level.
    offset = np.array([rng.normal(0, 6), 0.0, rng.normal(0, 1.0), rng.normal(0, 0.03), 0.0, 0.0])
    gain = np.array([1.0, rng.lognormal(0, 0.5), 1.0, 1.0, 1.0, 1.0])

    def state(column: int, hz: float, smooth_s: float) -> np.ndarray:
        """The condition's value of one physiology column at `hz`, eased in over `smooth_s` seconds."""
        table = np.array([PHYSIOLOGY[c][column] for c in range(8)])
        n = int(duration_s * hz)
        raw = table[label[(np.arange(n) * LABEL_HZ / hz).astype(np.int64)]]
        raw = raw * gain[column] + offset[column]
        pole = np.exp(-1.0 / (smooth_s * hz))
        return signal.lfilter([1 - pole], [1, -pole], raw, zi=[raw[0] * pole])[0]

    def phase(rate_hz: np.ndarray, hz: float) -> np.ndarray:
        return 2 * np.pi * np.cumsum(rate_hz) / hz

    bvp_hz, eda_hz, acc_hz = WRIST_HZ["BVP"], WRIST_HZ["EDA"], WRIST_HZ["ACC"]
    heart = phase(state(0, bvp_hz, 20) / 60, bvp_hz)
    bvp = 45 * (np.sin(heart) + 0.3 * np.sin(2 * heart + 0.6)) + rng.normal(0, 3, len(heart))

    eda_level = state(1, eda_hz, 60)
    scr_rate = state(4, eda_hz, 30) / 60 / eda_hz  # responses per sample
    impulses = (rng.random(len(eda_level)) < scr_rate) * rng.uniform(0.05, 0.3, len(eda_level))
    t = np.arange(0, 30, 1 / eda_hz)
    bateman = np.exp(-t / 2.0) - np.exp(-t / 0.7)
    eda = eda_level + np.convolve(impulses, bateman / bateman.max())[: len(eda_level)]
    eda = np.maximum(eda + rng.normal(0, 0.003, len(eda)), 0.02)
    temp = state(2, WRIST_HZ["TEMP"], 120) + rng.normal(0, 0.01, len(eda_level))

    motion = state(5, acc_hz, 5)
    gravity = np.array([55.0, -15.0, 28.0]) + rng.normal(0, 5, 3)
    wrist_acc = np.round(gravity + motion[:, None] * rng.normal(0, 1, (len(motion), 3)))

    n = len(label)
    heart_chest = phase(
        np.interp(np.arange(n) / CHEST_HZ, np.arange(len(heart)) / bvp_hz, state(0, bvp_hz, 20)) / 60, CHEST_HZ
    )
    ecg = 1.2 * np.exp(-((((heart_chest % (2 * np.pi)) - np.pi) / 0.08) ** 2)) + rng.normal(0, 0.03, n)
    breath = phase(
        np.interp(np.arange(n) / CHEST_HZ, np.arange(len(eda_level)) / eda_hz, state(3, eda_hz, 20)), CHEST_HZ
    )
    resp = 3.0 * np.sin(breath) + rng.normal(0, 0.2, n)
    chest_eda = np.interp(np.arange(n) / CHEST_HZ, np.arange(len(eda)) / eda_hz, eda) * 2.5
    chest_temp = np.interp(np.arange(n) / CHEST_HZ, np.arange(len(temp)) / eda_hz, temp) + 1.0
    chest_acc = np.array([0.85, -0.08, -0.35]) + rng.normal(0, 0.01, (n, 3))

    def column(x):
        return x.reshape(-1, 1)

    return {
        "subject": f"S{subject}",
        "label": label,
        "signal": {
            "chest": {
                "ACC": chest_acc,
                "ECG": column(ecg),
                "EDA": column(chest_eda),
                "EMG": column(rng.normal(0, 0.01, n)),
                "Resp": column(resp),
                "Temp": column(chest_temp),
            },
            "wrist": {"ACC": wrist_acc, "BVP": column(bvp), "EDA": column(eda), "TEMP": column(temp)},
        },
    }


def make_readme(seed: int, subject: int) -> str:
    rng = np.random.default_rng(seed)
    female = rng.random() < 0.2

    def yes(p):
        return "YES" if rng.random() < p else "NO"

    return README.format(
        subject=subject,
        age=int(rng.integers(24, 36)),
        height=int(rng.normal(176, 7)),
        weight=int(rng.normal(73, 10)),
        gender="female" if female else "male",
        coffee=yes(0.3),
        sport=yes(0.15),
        smoker=yes(0.1),
        ill=yes(0.1),
    )


def write_subject(root: str | Path, subject: int, seed: int = 0, protocol=PROTOCOL, scale: float = 1.0) -> Path:
    """Write SX/SX.pkl and SX/SX_readme.txt under `root`; returns the subject folder."""
    folder = Path(root) / f"S{subject}"
    folder.mkdir(parents=True, exist_ok=True)
    recording = make_recording(seed + subject, protocol, scale, subject)
    with open(folder / f"S{subject}.pkl", "wb") as f:
        pickle.dump(recording, f, protocol=pickle.HIGHEST_PROTOCOL)
    (folder / f"S{subject}_readme.txt").write_text(make_readme(seed + subject, subject))
    return folder


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m emoma.prepare.synthetic", description="Write synthetic subjects in the raw WESAD format."
    )
    p.add_argument("out_dir", help="folder to write S2/, S3/, ... into")
    p.add_argument("--subjects", default="2,3", help="comma-separated subject numbers (default: %(default)s)")
    p.add_argument("--scale", type=float, default=1.0, help="duration factor; 1 = ~100 minutes (default: 1)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for subject in (int(s) for s in args.subjects.split(",")):
        print(write_subject(args.out_dir, subject, args.seed, scale=args.scale))


if __name__ == "__main__":
    main()
