"""The embedded default data: a deterministic, WESAD-like window-by-feature table in the merged.csv layout.

Each subject has its own physiological levels and gains (so subject-wise CV is harder than row-wise), each
condition shifts them in the physiologically expected direction (stress: EDA, heart rate, BVP amplitude
and respiration up, skin temperature falling), and consecutive windows are correlated (AR(1) within a
condition). Calibrated so that classical LOSO scores land near those of the real WESAD table.

Usage: ``python -m emoma.synthetic OUT.csv [--seed S]``
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from emoma.files import atomic_path
from emoma.layout import MERGED_COLUMNS, MERGED_SIGNAL_COLUMNS

SUBJECTS = (2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17)
# Windows per condition, in recording order, as in WESAD: label 1 baseline, 2 stress, 0 amusement.
CONDITIONS = ((1, 42), (2, 24), (0, 13))


def make_frame(seed: int = 0, subjects=SUBJECTS, windows_scale: float = 1.0) -> pd.DataFrame:
    """A WESAD-like table with the real merged.csv's columns (signal features, subject, label, metadata).

    Parameters
    ----------
    seed : drives every random draw; the same seed gives the same table.
    subjects : subject ids, one block of windows each.
    windows_scale : multiplies the windows per condition (e.g. 10 for a ~12k-row table).
    """
    rng = np.random.default_rng(seed)
    blocks = [_subject_block(rng, s, windows_scale) for s in subjects]
    return pd.DataFrame(pd.concat(blocks, ignore_index=True), columns=MERGED_COLUMNS)


def _subject_block(rng: np.random.Generator, subject, windows_scale: float) -> pd.DataFrame:
    person = _person(rng)
    rows = []
    for label, n in CONDITIONS:
        n = max(2, int(round(n * windows_scale)) + int(rng.integers(0, 3)) * (label == 2))
        rows.append(_condition_windows(rng, person, label, n))
    block = pd.concat(rows, ignore_index=True)
    block["subject"] = subject
    for column, value in person["metadata"].items():
        block[column] = value
    return block


def _person(rng: np.random.Generator) -> dict:
    """One subject's physiology: levels, gains and how strongly each condition moves them."""
    female = rng.random() < 0.2
    smoker = rng.random() < 0.1
    return {
        "eda": rng.lognormal(np.log(1.0), 0.8),  # skin conductance level, uS
        "eda_stress_gain": rng.lognormal(np.log(2.4), 0.4),
        "phasic": rng.lognormal(np.log(0.05), 0.7),
        "phasic_stress_gain": rng.lognormal(np.log(4.5), 0.5),
        "hr": rng.normal(68, 8),  # bpm
        "hr_stress": rng.normal(11, 5),
        "bvp_amp": rng.lognormal(np.log(40), 0.45),
        "bvp_stress_gain": rng.lognormal(np.log(1.45), 0.2),
        "resp_amp": rng.lognormal(np.log(2.7), 0.3),
        "resp_stress_gain": rng.lognormal(np.log(1.7), 0.2),
        "temp": rng.normal(33.0, 1.3),
        "temp_shift": {1: 0.0, 2: rng.normal(-0.6, 0.6), 0: rng.normal(-0.7, 0.5)},
        "activity": rng.lognormal(np.log(0.004), 0.3),
        "acc_x": rng.normal(0.012, 0.028),
        "acc_y": rng.normal(8e-6, 2e-5),
        "net_acc": rng.normal(0.0296, 0.004),
        "metadata": {
            "age": int(rng.integers(24, 36)),
            "height": int(rng.normal(168 if female else 179, 6)),
            "weight": int(rng.normal(60 if female else 78, 8)),
            "gender_ female": int(female),
            "gender_ male": int(not female),
            "coffee_today_YES": int(rng.random() < 0.3),
            "sport_today_YES": int(rng.random() < 0.15),
            "smoker_NO": int(not smoker),
            "smoker_YES": int(smoker),
            "feel_ill_today_YES": int(rng.random() < 0.07),
        },
    }


def _ar1(rng: np.random.Generator, n: int, rho: float, scale: float = 1.0) -> np.ndarray:
    """Stationary AR(1) noise with lag-1 correlation `rho` and standard deviation `scale`."""
    e = rng.standard_normal(n)
    out = np.empty(n)
    out[0] = e[0]
    for t in range(1, n):
        out[t] = rho * out[t - 1] + np.sqrt(1 - rho**2) * e[t]
    return out * scale


def _spread(rng, center, std, n, lo=(2.0, 3.5), hi=(2.0, 3.5)):
    """mean/std/min/max of windows whose samples have this center and spread."""
    return {
        "mean": center,
        "std": std,
        "min": center - std * rng.uniform(*lo, n),
        "max": center + std * rng.uniform(*hi, n),
    }


def _condition_windows(rng: np.random.Generator, p: dict, label: int, n: int) -> pd.DataFrame:
    stress = label == 2
    cols: dict[str, np.ndarray] = {}

    def put(signal, stats):
        for stat, values in stats.items():
            cols[f"{signal}_{stat}"] = np.broadcast_to(values, (n,)).astype(float)

    activity = p["activity"] * (0.4 if label == 0 else 1.0) * np.exp(_ar1(rng, n, 0.5, 0.4))
    net_acc = p["net_acc"] + _ar1(rng, n, 0.5, 0.0085)
    put(
        "net_acc",
        {
            "mean": net_acc,
            "std": activity,
            "min": np.clip(net_acc - activity * rng.uniform(2, 5, n), 0, None),
            "max": net_acc + activity * rng.uniform(2, 6, n),
        },
    )
    put("ACC_x", _spread(rng, p["acc_x"] + _ar1(rng, n, 0.6, 0.009), activity * 1.05, n, (3, 6), (3, 6)))
    acc_y = _spread(rng, p["acc_y"] + _ar1(rng, n, 0.6, 6e-6), activity * 7e-4, n, (3, 6), (3, 6))
    put("ACC_y", acc_y)
    put("ACC_z", acc_y)  # WESAD's merged.csv bug, kept so the layout matches: ACC_z_* equals ACC_y_*

    hr = p["hr"] + stress * p["hr_stress"] + (label == 0) * 2 + _ar1(rng, n, 0.4, 6)
    bvp_amp = p["bvp_amp"] * (p["bvp_stress_gain"] if stress else 1.0) * np.exp(_ar1(rng, n, 0.3, 0.55))
    put("BVP", _spread(rng, rng.normal(0, 0.9, n), bvp_amp, n, (3, 6), (3, 5.5)))

    eda_level = p["eda"] * (p["eda_stress_gain"] if stress else 1.0) * np.exp(_ar1(rng, n, 0.85, 0.3))
    eda_wiggle = eda_level * rng.lognormal(np.log(0.02), 0.6, n) * (1.8 if stress else 1.0)
    put("EDA", _spread(rng, eda_level, eda_wiggle, n, (1.5, 2.5), (1.5, 2.5)))
    phasic = p["phasic"] * (p["phasic_stress_gain"] if stress else 1.0) * np.exp(_ar1(rng, n, 0.6, 0.8))
    put(
        "EDA_phasic",
        {
            "mean": phasic,
            "std": phasic * rng.uniform(0.4, 0.7, n),
            "min": phasic * rng.uniform(0.1, 0.5, n),
            "max": phasic * rng.uniform(1.8, 2.8, n),
        },
    )
    smna = phasic * rng.uniform(0.6, 0.9, n)
    put(
        "EDA_smna",
        {
            "mean": smna,
            "std": smna * rng.uniform(1.5, 2.3, n),
            "min": rng.lognormal(np.log(6e-8), 0.5, n),
            "max": smna * rng.uniform(7, 13, n),
        },
    )
    tonic = eda_level - p["eda"] * 1.4 + _ar1(rng, n, 0.7, 0.8)
    tonic_std = phasic * rng.uniform(0.7, 1.3, n)
    put("EDA_tonic", _spread(rng, tonic, tonic_std, n, (0.8, 2.5), (0.8, 2.5)))

    resp_amp = p["resp_amp"] * (p["resp_stress_gain"] if stress else 1.0) * np.exp(_ar1(rng, n, 0.1, 0.3))
    put("Resp", _spread(rng, rng.normal(0.05, 0.19, n), resp_amp, n, (1.6, 3.0), (1.8, 3.4)))

    temp = p["temp"] + p["temp_shift"][label] + _ar1(rng, n, 0.95, 0.45)
    temp_std = rng.lognormal(np.log(0.018), 0.45, n)
    put("TEMP", _spread(rng, temp, temp_std, n, (1.5, 2.5), (1.5, 2.5)))
    # The merged.csv periodogram used fs=8 for 64 Hz BVP: peak frequency in Hz / 8.
    cols["BVP_peak_freq"] = np.clip(hr / 60 / 8 + rng.normal(0, 0.035, n), 0.027, 0.3)
    slope_mean = {1: 1.4e-4, 2: -2.6e-4, 0: -5e-5}[label]
    cols["TEMP_slope"] = slope_mean + _ar1(rng, n, 0.3, 5.4e-4)
    frame = pd.DataFrame(cols, columns=MERGED_SIGNAL_COLUMNS)
    frame["label"] = label
    return frame


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write the embedded synthetic WESAD-like table as a merged.csv.")
    parser.add_argument("out", help="CSV file to write")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0, the embedded table)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply windows per subject (default 1)")
    args = parser.parse_args(argv)
    frame = make_frame(seed=args.seed, windows_scale=args.scale)
    with atomic_path(args.out) as tmp:
        frame.to_csv(tmp)
    print(f"wrote {len(frame)} windows of {frame['subject'].nunique()} subjects to {args.out}")


if __name__ == "__main__":
    main()
