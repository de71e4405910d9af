"""Saved models for deployment: `emoma export MODEL --format onnx|pt2|torchscript --out FILE`.

onnx: for onnxruntime and other ONNX runtimes; pt2: a torch.export program (`torch.export.load(FILE).module()`),
PyTorch's successor to TorchScript; torchscript: `torch.jit.load(FILE)` (deprecated by PyTorch, kept for runtimes
that still need it).

MODEL is any model file EmoMA writes (a search's final_model.pt, a cv run's model.pt). The exported graph holds
every member with its own feature columns, scaler and weight:

    input  "windows": (batch, context, n_features) float32, the features of `features` in that order, already
           normalised by subject as `subject_norm` says, for each sample's window and the context - 1 before
           it (oldest first); every window real (a stream's first context - 1 windows: use `emoma predict`)
    output "probabilities": (batch, n_classes), classes in `class_names` order

FILE.json beside it says all of that for this model (features, context, subject_norm with norm_warmup,
smooth, class_names, and the time rule: subject_column, time_column, window_s, max_gap_windows). Probability
smoothing over consecutive windows (`smooth` > 1) is left to the caller, as is the normalisation.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from emoma.config import from_dict
from emoma.context import MAX_GAP_WINDOWS
from emoma.errors import UserError
from emoma.files import atomic_path, write_atomic
from emoma.predict import load_model

FORMATS = ("onnx", "pt2", "torchscript")


class DeployedModel(nn.Module):
    """A saved model's members as one module: windows of the union of their features in, probabilities out."""

    def __init__(self, model, bundle: dict):
        super().__init__()
        members = (
            list(zip(model, bundle["members"], bundle["weights"])) if "members" in bundle else [(model, bundle, 1.0)]
        )
        configs = [from_dict(b["config"]) for _, b, _ in members]
        norms = {
            (c.data.subject_norm, c.data.norm_warmup if c.data.subject_norm == "causal" else None) for c in configs
        }
        smooths = {c.model.smooth for c in configs}
        if len(norms) > 1 or len(smooths) > 1:
            raise UserError(
                "the model's members differ in data.subject_norm (or its norm_warmup) or model.smooth, so "
                "one input cannot serve them all: export is for members that share them"
            )
        self.features = list(dict.fromkeys(f for _, b, _ in members for f in b["features"]))
        self.context = max(c.model.context for c in configs)
        (self.subject_norm, self.norm_warmup), self.smooth = norms.pop(), smooths.pop()
        self.data = configs[0].data  # the subject and time columns
        self.window_s = members[0][1].get("window_s") if self.data.window_s is None else self.data.window_s
        self.class_names = list(bundle["class_names"])
        self.nets = nn.ModuleList(m for m, _, _ in members)
        self.spans = [c.model.context for c in configs]
        self.weights = [float(w) for _, _, w in members]
        for i, (_, b, _) in enumerate(members):
            keep = torch.tensor([0.0 if f in b.get("set_aside", []) else 1.0 for f in b["features"]])
            self.register_buffer(f"columns_{i}", torch.tensor([self.features.index(f) for f in b["features"]]))
            self.register_buffer(f"mean_{i}", torch.tensor(b["mean"], dtype=torch.float32))
            self.register_buffer(f"scale_{i}", torch.tensor(b["scale"], dtype=torch.float32))
            self.register_buffer(f"keep_{i}", keep)  # columns set aside on the training rows read as 0

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """(B, context, n_features) -> (B, n_classes) probabilities, the members' weighted average."""
        proba = None
        for i, net in enumerate(self.nets):
            x = windows[:, windows.shape[1] - self.spans[i] :].index_select(2, getattr(self, f"columns_{i}"))
            x = (x - getattr(self, f"mean_{i}")) / getattr(self, f"scale_{i}") * getattr(self, f"keep_{i}")
            p = self.weights[i] * torch.softmax(net(x), dim=1)
            proba = p if proba is None else proba + p
        return proba

    def contract(self) -> dict:
        """What a caller must feed and gets back (FILE.json)."""
        return {
            "input": "windows",
            "input_shape": ["batch", self.context, len(self.features)],
            "output": "probabilities",
            "output_shape": ["batch", len(self.class_names)],
            "features": self.features,
            "context": self.context,
            "subject_norm": self.subject_norm,
            "norm_warmup": self.norm_warmup,
            "smooth": self.smooth,
            "class_names": self.class_names,
            "subject_column": self.data.subject_column,
            "time_column": self.data.time_column,
            "window_s": self.window_s,
            "max_gap_windows": MAX_GAP_WINDOWS,
            "notes": "features in this order, normalised by subject as subject_norm says (none: raw; subject: "
            "z-scores over each subject's own windows; causal: running z-scores over the subject's "
            "windows so far, shrunk by n / norm_warmup while n < norm_warmup); each sample's window "
            "and the context - 1 before it, oldest first, all real and of one subject, with no step "
            "between consecutive windows longer than max_gap_windows * window_s seconds of "
            "time_column; smooth > 1: average the probabilities of that many consecutive windows "
            "yourself",
        }


def export_model(model_path: str | Path, fmt: str, out: str | Path) -> dict:
    """Write MODEL as ONNX, a torch.export program or TorchScript to `out` and its contract to `out`.json.

    Returns the contract (the dict written to `out`.json)."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: give one of {', '.join(FORMATS)}")
    out = Path(out)
    if not out.parent.is_dir():
        raise UserError(f"--out folder {out.parent} does not exist: create it or write elsewhere")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError:
            raise UserError(
                "ONNX export needs onnx and onnxscript: pip install onnx onnxscript (the export extra; "
                "pip install -e '.[export]' in a clone)"
            ) from None
    deployed = DeployedModel(*load_model(model_path)).eval()
    example = torch.zeros(2, deployed.context, len(deployed.features))
    with torch.no_grad(), atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's and exporter's notes about internals, not the user's model
        batch = {"windows": {0: torch.export.Dim("batch", min=1)}}
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(deployed, example), str(tmp))
        elif fmt == "pt2":
            torch.export.save(torch.export.export(deployed, (example,), dynamic_shapes=batch), str(tmp))
        else:
            program = torch.onnx.export(
                deployed,
                (example,),
                input_names=["windows"],
                output_names=["probabilities"],
                dynamic_shapes=batch,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
            program.save(str(tmp))
    contract = {**deployed.contract(), "format": fmt}
    write_atomic(out.with_name(out.name + ".json"), json.dumps(contract, indent=2))
    return contract


def main(argv=None, prog="python -m emoma.export") -> None:
    import argparse

    from emoma.errors import exit_on_user_error

    @exit_on_user_error
    def run():
        p = argparse.ArgumentParser(
            prog=prog, description="Export a saved EmoMA model to ONNX, torch.export (pt2) or TorchScript."
        )
        p.add_argument("model", help="a model file EmoMA wrote: a search's final_model.pt or a cv run's model.pt")
        p.add_argument(
            "--format",
            required=True,
            choices=FORMATS,
            help="onnx (onnxruntime, ...), pt2 (torch.export) or torchscript (deprecated by PyTorch)",
        )
        p.add_argument("--out", required=True, help="file to write; its contract goes to OUT.json beside it")
        args = p.parse_args(argv)
        contract = export_model(args.model, args.format, args.out)
        print(
            f"wrote {args.out} ({args.format}): input windows (batch, {contract['context']}, "
            f"{len(contract['features'])}) -> probabilities of {', '.join(contract['class_names'])}; "
            f"contract in {args.out}.json"
        )

    run()


if __name__ == "__main__":
    main()
