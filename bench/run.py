"""Benchmarks, run by hand: python bench/run.py [--parts a b c d] [--data PATH]

(a) one fold of configs/seed.yaml: the original training loop (bench/reference_loop.py) vs EmoMA's trainer,
    seconds per epoch (median of repeats) and the ratio;
(b) a full 10-fold CV of configs/seed.yaml (100 epochs): EmoMA's wall time, and the reference's time
    extrapolated from its measured epochs;
(c) a small search (8 trials, 3 folds, 5 epochs, seed-sized model) with 1 and 2 concurrent trials;
(d) one fold's plan (scaler + RFE) and one epoch on synthetic tables of growing size, with peak memory
    (each size in its own process);
(e) where one fold's training time goes: torch.profiler over a few epochs of seed.yaml at batch 25.
Figures go to stdout as Markdown rows; copy them into bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from emoma.config import apply_overrides, load_config  # noqa: E402
from emoma.cv import run_cv  # noqa: E402
from emoma.data import load_table  # noqa: E402
from emoma.folds import make_plan  # noqa: E402
from emoma.train import train_fold  # noqa: E402
from reference_loop import train_reference  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "wesad_merged.csv"


def seed_setup(data: str | None):
    config = load_config(ROOT / "configs" / "seed.yaml", flags={"data.path": data})
    table = load_table(config.data)
    return config, table, make_plan(table, config.cv, config.seed)


def part_a(config, table, plan, ref_epochs: int, emoma_epochs: int, repeats: int):
    torch.set_num_threads(1)
    fold = plan.folds[0]
    parts = fold.arrays(table.X, config.model.n_features)
    names = [table.feature_names[j] for j in fold.selected(config.model.n_features)]
    frames = {p: pd.DataFrame(parts[p], columns=names).assign(label=table.y[getattr(fold, p)])
              for p in ("train", "val")}
    ref, ours = [], []
    for r in range(repeats):
        start = time.perf_counter()
        train_reference(frames["train"], frames["val"], names, len(table.class_names), config.model, ref_epochs, r)
        ref.append((time.perf_counter() - start) / ref_epochs)
        cfg = apply_overrides(config, {"train.epochs": emoma_epochs, "train.patience": 0})
        start = time.perf_counter()
        train_fold(parts["train"], table.y[fold.train], parts["val"], table.y[fold.val],
                   n_classes=len(table.class_names), model_cfg=cfg.model, train_cfg=cfg.train, seed=r)
        ours.append((time.perf_counter() - start) / emoma_epochs)
    ref_s, ours_s = statistics.median(ref), statistics.median(ours)
    print(f"| (a) one fold, {len(fold.train)} training rows, batch 25, 1 thread | reference {ref_s:.3f} s/epoch | "
          f"EmoMA {ours_s:.4f} s/epoch | {ref_s / ours_s:.1f}x |")
    return ref_s


def part_b(config, table, plan, ref_epoch_s: float):
    start = time.perf_counter()
    result = run_cv(table, plan, config, progress=False)
    wall = time.perf_counter() - start
    reference = ref_epoch_s * config.train.epochs * len(plan.folds)
    acc = result.summary()["accuracy"]
    print(f"| (b) {len(plan.folds)}-fold CV of seed.yaml, {config.train.epochs} epochs | reference ~{reference:.0f} s "
          f"(extrapolated, one process) | EmoMA {wall:.1f} s, accuracy {acc['mean']:.3f} ± {acc['std']:.3f} | "
          f"{reference / wall:.0f}x |")


def part_c(data: str | None):
    import ray

    from emoma.search import load_space, run_search

    space_file = Path(tempfile.mkdtemp()) / "space.yaml"
    space_file.write_text("train.lr: {float: [1.0e-4, 1.0e-2], log: true}\nmodel.n_features: {int: [5, 20]}\n")
    seed = load_config(ROOT / "configs" / "seed.yaml")
    rates = {}
    for concurrent in (1, 2):
        config = load_config(ROOT / "configs" / "seed.yaml", [
            "cv.scheme=group-kfold", "cv.folds=3", "train.epochs=5", "search.num_samples=8",
            f"search.max_concurrent={concurrent}"], flags={"data.path": data})
        ray.init(num_cpus=2, log_to_driver=False, logging_level="WARNING")
        start = time.perf_counter()
        run_search(config, load_space(space_file), seed, storage_path=tempfile.mkdtemp(), name="bench",
                   log=lambda *a: None)
        rates[concurrent] = 8 / ((time.perf_counter() - start) / 60)
        ray.shutdown()
    print(f"| (c) 8 trials x 3 folds x 5 epochs, search + retrain | 1 concurrent: {rates[1]:.1f} trials/min | "
          f"2 concurrent: {rates[2]:.1f} trials/min | efficiency {rates[2] / rates[1] / 2:.2f} |")


def part_d(rows: list[int]):
    from emoma.synthetic import make_frame

    baseline_mb = None
    for n in rows:
        with tempfile.TemporaryDirectory() as tmp:
            csv = Path(tmp) / "table.csv"
            frame = make_frame(seed=0, windows_scale=n / 1199)
            frame.to_csv(csv)
            frame_mb = frame.memory_usage(deep=True).sum() / 2**20
            del frame
            out = subprocess.run([sys.executable, __file__, "--one-size", str(csv)], capture_output=True, text=True)
        if out.returncode:
            print(out.stderr)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        baseline_mb = baseline_mb or r["peak_mb"]  # the smallest table's peak: the fixed overhead
        print(f"| (d) {r['rows']} rows ({frame_mb:.1f} MB as a DataFrame, {r['table_mb']:.1f} MB of float32 "
              f"features) | fold plan (scaler + RFE, one fold) {r['plan_s']:.1f} s | one epoch {r['epoch_s']:.2f} s | "
              f"peak RSS {r['peak_mb']:.0f} MB ({r['fixed_mb']:.0f} MB after imports); over the smallest table's "
              f"peak: {r['peak_mb'] - baseline_mb:.0f} MB = {(r['peak_mb'] - baseline_mb) / frame_mb:.1f}x "
              f"the DataFrame |")


def memory_mb(field: str) -> float:
    """VmHWM (peak) or VmRSS (now) of this process in MB; unlike getrusage, VmHWM is not inherited from the
    process that spawned this one."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def one_size(csv: str):
    """Child process of part (d): read a table as a user would, then one fold of default.yaml."""
    from emoma.config import DataConfig
    from emoma.data import load_table
    from emoma.folds import fit_fold, outer_splits

    torch.set_num_threads(1)
    fixed_mb = memory_mb("VmRSS")  # interpreter, torch, scikit-learn
    table = load_table(DataConfig(path=csv))
    config = load_config(ROOT / "configs" / "default.yaml", ["train.epochs=1", "train.batch_size=256"])
    train_val, test = outer_splits(table, config.cv, config.seed)[0]
    start = time.perf_counter()
    fold = fit_fold(table.X, table.y, table.groups, train_val, test, config.cv, config.seed)
    plan_s = time.perf_counter() - start
    parts = fold.arrays(table.X, config.model.n_features)
    train_fold(parts["train"][:64], table.y[fold.train][:64], parts["val"][:64], table.y[fold.val][:64],
               n_classes=2, model_cfg=config.model, train_cfg=config.train, seed=0)  # warm-up: imports, first step
    start = time.perf_counter()
    train_fold(parts["train"], table.y[fold.train], parts["val"], table.y[fold.val], n_classes=2,
               model_cfg=config.model, train_cfg=config.train, seed=0)
    epoch_s = time.perf_counter() - start
    peak_mb = memory_mb("VmHWM")
    print(json.dumps({"rows": len(table.y), "table_mb": table.X.nbytes / 2**20,
                      "plan_s": plan_s, "epoch_s": epoch_s, "peak_mb": peak_mb, "fixed_mb": fixed_mb}))


def part_e(config, table, plan, epochs: int):
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    fold = plan.folds[0]
    parts = fold.arrays(table.X, config.model.n_features)
    cfg = apply_overrides(config, {"train.epochs": epochs, "train.patience": 0})

    def train():
        train_fold(parts["train"], table.y[fold.train], parts["val"], table.y[fold.val],
                   n_classes=len(table.class_names), model_cfg=cfg.model, train_cfg=cfg.train, seed=0)

    train()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        train()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    steps = epochs * -(-len(fold.train) // cfg.train.batch_size)

    def total(match) -> float:
        return sum(e.cpu_time_total for e in events if match(e.key)) / 1e6

    adam = total(lambda k: k.startswith("Optimizer.step"))
    backward = total(lambda k: k.startswith("autograd::engine::evaluate_function"))
    kernels = sum(e.self_cpu_time_total for e in events) / 1e6
    print(f"| (e) one fold, {epochs} epochs, {steps} steps of batch {cfg.train.batch_size}, 1 thread | "
          f"{wall / steps * 1e3:.2f} ms per step | Adam {adam / wall:.0%}, backward {backward / wall:.0%}, "
          f"the rest (forward, batching, validation) {1 - (adam + backward) / wall:.0%} | self time of all "
          f"torch ops {kernels / wall:.0%} of wall: the rest is Python |")
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["a", "b", "c", "d", "e"], choices=["a", "b", "c", "d", "e"])
    p.add_argument("--data", default=str(REAL) if REAL.is_file() else None,
                   help="table for (a)-(c) (default: the real WESAD table when present, else synthetic)")
    p.add_argument("--ref-epochs", type=int, default=3)
    p.add_argument("--emoma-epochs", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rows", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    p.add_argument("--one-size", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one_size:
        return one_size(args.one_size)
    print(f"data: {args.data or 'synthetic'}; torch {torch.__version__}")
    ref_epoch_s = None
    if {"a", "b", "e"} & set(args.parts):
        config, table, plan = seed_setup(args.data)
    if {"a", "b"} & set(args.parts):
        ref_epoch_s = part_a(config, table, plan, args.ref_epochs, args.emoma_epochs, args.repeats)
        if "b" in args.parts:
            part_b(config, table, plan, ref_epoch_s)
    if "c" in args.parts:
        part_c(args.data)
    if "d" in args.parts:
        part_d(args.rows)
    if "e" in args.parts:
        part_e(config, table, plan, epochs=5)


if __name__ == "__main__":
    main()
