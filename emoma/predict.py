"""A saved model and everything needed to use it; predictions for a new merged.csv.

Usage: ``python -m emoma.predict --model best_model.pt --data new.csv --out predictions.csv``
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from emoma.config import Config, from_dict
from emoma.data import read_csv
from emoma.errors import UserError, exit_on_user_error
from emoma.folds import Fold
from emoma.model import build_model


def save_model(path: str | Path, model: torch.nn.Module, config: Config, fold: Fold, feature_names: list[str],
               class_names: list[str]) -> None:
    """Weights, config, the selected feature names and their scaler statistics, class names."""
    cols = fold.selected(config.model.n_features)
    torch.save({
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config.to_dict(),
        "features": [feature_names[j] for j in cols],
        "mean": fold.mean[cols].tolist(),
        "scale": fold.scale[cols].tolist(),
        "class_names": list(class_names),
    }, path)


def load_model(path: str | Path) -> tuple[torch.nn.Module, dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist: give the best_model.pt of a search")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for files that are not its own
        raise UserError(f"{path} is not an EmoMA model file ({type(err).__name__}): give a best_model.pt") from None
    config = from_dict(bundle["config"])
    model = build_model(config.model, len(bundle["features"]), len(bundle["class_names"]))
    model.load_state_dict(bundle["state_dict"])
    return model.eval(), bundle


@torch.no_grad()
def predict_frame(model: torch.nn.Module, bundle: dict, frame: pd.DataFrame) -> pd.DataFrame:
    """Predicted class and per-class probabilities for each row of a merged.csv-layout frame."""
    missing = [f for f in bundle["features"] if f not in frame.columns]
    if missing:
        raise UserError(f"the table lacks features the model needs: {', '.join(missing)}")
    values = frame[bundle["features"]].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise UserError(f"{int(bad.sum())} rows have NaN or infinite values in the model's features: clean them")
    X = ((values - np.array(bundle["mean"])) / np.array(bundle["scale"])).astype(np.float32)
    proba = torch.softmax(model(torch.from_numpy(X)), dim=1).numpy()
    out = pd.DataFrame({c: frame[c].to_numpy() for c in ("subject", "label") if c in frame.columns})
    out["predicted"] = np.array(bundle["class_names"])[proba.argmax(1)]
    for c, name in enumerate(bundle["class_names"]):
        out[f"p_{name}"] = proba[:, c]
    return out


@exit_on_user_error
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Predict classes for a merged.csv with a saved EmoMA model.")
    p.add_argument("--model", required=True, help="best_model.pt written by search.py")
    p.add_argument("--data", required=True, help="merged.csv-layout table to predict")
    p.add_argument("--out", required=True, help="CSV to write: predicted class and per-class probabilities")
    args = p.parse_args(argv)
    model, bundle = load_model(args.model)
    predictions = predict_frame(model, bundle, read_csv(args.data))
    predictions.to_csv(args.out, index=False)
    print(f"wrote {len(predictions)} predictions to {args.out}")


if __name__ == "__main__":
    main()
