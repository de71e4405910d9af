"""A saved model and everything needed to use it; predictions for a new merged.csv.

Usage: ``python -m emoma.predict --model final_model.pt --data new.csv --out predictions.csv``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from emoma.config import Config, from_dict
from emoma.context import context_index, normalise_subjects, run_starts, smooth_probabilities
from emoma.data import Table, canonical_order, read_csv, read_time
from emoma.errors import UserError, exit_on_user_error
from emoma.files import atomic_path
from emoma.folds import Fold
from emoma.model import build_predictor
from emoma.train import EVAL_CHUNK


def model_bundle(
    model: torch.nn.Module,
    config: Config,
    fold: Fold,
    feature_names: list[str],
    class_names: list[str],
    window_s: float | None = None,
) -> dict:
    """Weights, config (with its subject normalisation and context), the selected feature names and their
    scaler statistics, the features set aside on the training rows (read as 0), class names, and the window
    length the time-gap rule used in training."""
    cols = fold.selected(config.model.n_features)
    return {
        # a copy, so that editing the model later changes neither the bundle nor a file saved from it
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "config": config.to_dict(),
        "features": [feature_names[j] for j in cols],
        "set_aside": [feature_names[j] for j in cols if j in fold.set_aside],
        "mean": fold.mean[cols].tolist(),
        "scale": fold.scale[cols].tolist(),
        "class_names": list(class_names),
        "window_s": window_s,
    }


def bundle_of(
    members: list[tuple[torch.nn.Module, Config, Fold, float]],
    feature_names: list[str],
    class_names: list[str],
    window_s: float | None = None,
) -> dict:
    """What a model file holds: one model's bundle, or for several a weighted ensemble of models of different
    configurations (each member with its own inputs: normalisation, context, features, scaler), given as
    `(model, config, fold, weight)`."""
    bundles = [model_bundle(m, c, f, feature_names, class_names, window_s) for m, c, f, _ in members]
    return (
        bundles[0]
        if len(bundles) == 1
        else {"members": bundles, "weights": [float(w) for *_, w in members], "class_names": list(class_names)}
    )


def write_bundle(path: str | Path, bundle: dict) -> None:
    """Write a bundle (`bundle_of`) as a model file `load_model` and `emoma predict` read."""
    with atomic_path(path) as tmp:
        torch.save(bundle, tmp)


class TrainedModel:
    """A trained model with everything needed to use it, in memory: what model.pt and final_model.pt hold.

    `predict(frame)` gives the predicted class and per-class probabilities of each row of a merged.csv-layout
    DataFrame (as `emoma predict`); `save(path)` writes the model file. The networks are built on first use.
    """

    def __init__(self, bundle: dict):
        self.bundle = bundle
        self._nets = None

    @classmethod
    def load(cls, path: str | Path) -> TrainedModel:
        return cls(read_bundle(path))

    @property
    def class_names(self) -> list[str]:
        return list(self.bundle["class_names"])

    @property
    def nets(self) -> torch.nn.Module | list[torch.nn.Module]:
        """The network, or an ensemble's members' networks in order."""
        if self._nets is None:
            self._nets = from_bundle(self.bundle)
        return self._nets

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        return predict_frame(self.nets, self.bundle, frame)

    def save(self, path: str | Path) -> None:
        write_bundle(path, self.bundle)


MODEL_KEYS = ("state_dict", "config", "features", "mean", "scale", "class_names")
ENSEMBLE_KEYS = ("members", "weights", "class_names")
NOT_OURS = "{path} is not an EmoMA model file ({why}): give a search's final_model.pt or a cv run's model.pt"


def read_bundle(path: str | Path) -> dict:
    """The bundle of a model file, checked to be one EmoMA wrote (one line otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist: give a search's final_model.pt or a cv run's model.pt")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for files that are not its own
        raise UserError(NOT_OURS.format(path=path, why=type(err).__name__)) from None
    if not isinstance(bundle, dict):
        members = None
    elif "members" in bundle:
        members = bundle["members"] if all(k in bundle for k in ENSEMBLE_KEYS) else None
    else:
        members = [bundle]
    if (
        not isinstance(members, list)
        or not members
        or not all(isinstance(m, dict) and all(k in m for k in MODEL_KEYS) for m in members)
    ):
        raise UserError(
            NOT_OURS.format(
                path=path,
                why="a torch file without the config, features, scaler and class names EmoMA saves with the weights",
            )
        )
    return bundle


def load_model(path: str | Path) -> tuple[torch.nn.Module | list[torch.nn.Module], dict]:
    """(model, bundle) of a saved model; for an ensemble, the model is the list of its members' models."""
    bundle = read_bundle(path)
    try:
        return from_bundle(bundle), bundle
    except (RuntimeError, KeyError, TypeError, ValueError) as err:  # weights that do not fit their config
        raise UserError(
            NOT_OURS.format(path=path, why=f"its weights do not fit its config: {type(err).__name__}")
        ) from None


def from_bundle(bundle: dict) -> torch.nn.Module | list[torch.nn.Module]:
    """The model of a bundle (`bundle_of`); an ensemble's is the list of its members' models."""
    if "members" in bundle:
        return [_build(member) for member in bundle["members"]]
    return _build(bundle)


def _build(bundle: dict) -> torch.nn.Module:
    config = from_dict(bundle["config"])
    model = build_predictor(config.model, len(bundle["features"]), len(bundle["class_names"]))
    model.load_state_dict(bundle["state_dict"])
    return model.eval()


def predict_frame(model, bundle: dict, frame: pd.DataFrame) -> pd.DataFrame:
    """Predicted class and per-class probabilities for each row of a merged.csv-layout frame.

    Each model's subject normalisation, context windows and probability smoothing are rebuilt from the frame's
    own subjects (and `time_s` when present), as in training; an ensemble averages its members' probabilities
    with their weights.
    """
    members = list(zip(model, bundle["members"], bundle["weights"])) if "members" in bundle else [(model, bundle, 1.0)]
    needed = list(dict.fromkeys(f for _, b, _ in members for f in b["features"]))
    missing = [f for f in needed if f not in frame.columns]
    if missing:
        raise UserError(f"the table lacks features the model needs: {', '.join(missing)}")
    proba = sum(w * _member_proba(m, b, frame) for m, b, w in members)
    config = from_dict(members[0][1]["config"]).data
    out = pd.DataFrame(
        {c: frame[c].to_numpy() for c in (config.subject_column, config.label_column) if c in frame.columns}
    )
    out["predicted"] = np.array(bundle["class_names"])[proba.argmax(1)]
    for c, name in enumerate(bundle["class_names"]):
        out[f"p_{name}"] = proba[:, c]
    return out


@torch.no_grad()
def _member_proba(model: torch.nn.Module, bundle: dict, frame: pd.DataFrame) -> np.ndarray:
    """(n_rows, n_classes) probabilities of one saved model, rows in the frame's order."""
    config = from_dict(bundle["config"])
    data = config.data
    per_subject = data.subject_norm != "none" or config.model.context > 1 or config.model.smooth > 1
    if per_subject and data.subject_column not in frame.columns:
        raise UserError(
            f"the model normalises by subject or uses earlier windows (context or smoothing), but the "
            f"table has no {data.subject_column!r} column: add each window's subject"
        )
    values = frame[bundle["features"]].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise UserError(f"{int(bad.sum())} rows have NaN or infinite values in the model's features: clean them")
    has_subjects = data.subject_column in frame.columns
    groups = frame[data.subject_column].to_numpy() if has_subjects else np.zeros(len(frame))
    time_s = read_time(frame, data, "the table") if has_subjects else None
    order = canonical_order(groups, time_s)
    table = Table(
        X=values[order].astype(np.float32),
        y=np.zeros(len(frame), dtype=np.int64),
        groups=groups[order],
        feature_names=list(bundle["features"]),
        class_names=list(bundle["class_names"]),
        source="predict",
        time_s=None if time_s is None else time_s[order],
    )
    table = normalise_subjects(table, data)
    scaled = ((table.X - np.array(bundle["mean"])) / np.array(bundle["scale"])).astype(np.float32)
    scaled[:, np.isin(bundle["features"], bundle.get("set_aside", []))] = 0.0  # as the fold's Fold.scaled
    X = torch.as_tensor(scaled)
    window_s = data.window_s or bundle.get("window_s")  # as in training, not re-inferred from this table
    starts = run_starts(table, window_s)
    index, mask = (torch.as_tensor(a) for a in context_index(starts, config.model.context))
    in_time_order = np.empty((len(frame), len(bundle["class_names"])), dtype=np.float32)
    for rows in torch.arange(len(frame)).split(EVAL_CHUNK):
        m = mask[rows]
        in_time_order[rows.numpy()] = torch.softmax(model(X[index[rows]], None if m.all() else m), dim=1).numpy()
    proba = np.empty_like(in_time_order)
    proba[order] = smooth_probabilities(in_time_order, np.arange(len(frame)), starts, config.model.smooth)
    return proba


@exit_on_user_error
def main(argv=None, prog="python -m emoma.predict") -> None:
    p = argparse.ArgumentParser(prog=prog, description="Predict classes for a merged.csv with a saved EmoMA model.")
    p.add_argument(
        "--model", required=True, help="a model file EmoMA wrote: a search's final_model.pt or a cv run's model.pt"
    )
    p.add_argument("--data", required=True, help="merged.csv-layout table to predict")
    p.add_argument("--out", required=True, help="CSV to write: predicted class and per-class probabilities")
    args = p.parse_args(argv)
    model, bundle = load_model(args.model)
    predictions = predict_frame(model, bundle, read_csv(args.data))
    with atomic_path(args.out) as tmp:
        predictions.to_csv(tmp, index=False)
    print(f"wrote {len(predictions)} predictions to {args.out}")


if __name__ == "__main__":
    main()
