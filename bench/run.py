"""Benchmarks, run by hand: python bench/run.py [--parts a b c d e] [--data PATH]

(a) the issue's setting (configs/seed.yaml, 10 row-wise folds, batch 25): seconds per fold-epoch (one epoch
    and its validation pass) of the original training loop (bench/reference_loop.py), of EmoMA's sequential
    reference trainer, and of the fold-batched trainer with all 10 folds in one model (1 and 2 threads);
(b) the whole process as a user types it, `python cv.py --config configs/seed.yaml --data ... --cv kfold
    --folds 10 --epochs 100`, cold (empty plan cache) and warm (plan cached), against the original loop's
    1,000 fold-epochs extrapolated from (a);
(c) a small search (8 trials, 3 folds, 5 epochs, seed-sized model) with 1 and 2 concurrent trials;
(d) one fold's plan (scaler + RFE) and one epoch on synthetic tables of growing size, with peak memory
    (each size in its own process);
(e) where one training step's time goes: torch.profiler over a few epochs of the fold-batched trainer;
(p) the fold plan of the issue's command: the full RFE ranking against RFE stopped once the top-10 is settled
    (time, and whether every fold selects the same features);
(g) the fold-batched trainer on CUDA (all folds in one model), seconds per fold-epoch, when a GPU is present.
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

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from reference_loop import train_reference  # noqa: E402

from emoma.batched import train_folds  # noqa: E402
from emoma.config import apply_overrides, load_config  # noqa: E402
from emoma.cv import fold_seed, table_context  # noqa: E402
from emoma.data import load_table  # noqa: E402
from emoma.folds import make_plan  # noqa: E402
from emoma.train import train_fold  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "wesad_merged.csv"


ISSUE_COMMAND = ["--config", "configs/seed.yaml", "--cv", "kfold", "--folds", "10", "--epochs", "100"]


def seed_setup(data: str | None):
    """seed.yaml as the issue's command resolves it: 10 row-wise folds, 100 epochs."""
    config = load_config(
        ROOT / "configs" / "seed.yaml",
        ["cv.scheme=kfold", "cv.folds=10", "train.epochs=100"],
        flags={"data.path": data},
    )
    table = load_table(config.data)
    return config, table, make_plan(table, config.cv, config.seed, config.model.n_features)


def part_a(config, table, plan, ref_epochs: int, emoma_epochs: int, repeats: int) -> float:
    """Seconds per fold-epoch: the original loop, the sequential trainer, the fold-batched trainer."""
    torch.set_num_threads(1)
    context = table_context(table, config)
    parts = [fold.samples(table.X, table.y, context, config.model.n_features) for fold in plan.folds]
    names = [table.feature_names[j] for j in plan.folds[0].selected(config.model.n_features)]
    frames = {p: pd.DataFrame(parts[0][p].flat(), columns=names).assign(label=parts[0][p].y) for p in ("train", "val")}
    cfg = apply_overrides(config, {"train.epochs": emoma_epochs, "train.patience": 0})
    seeds = [fold_seed(config.seed, i) for i in range(len(plan.folds))]
    timings = {"reference": [], "sequential": [], "batched, 1 thread": [], "batched, 2 threads": []}
    for r in range(repeats):
        start = time.perf_counter()
        train_reference(frames["train"], frames["val"], names, len(table.class_names), config.model, ref_epochs, r)
        timings["reference"].append((time.perf_counter() - start) / ref_epochs)
        start = time.perf_counter()
        train_fold(
            parts[0]["train"],
            parts[0]["val"],
            n_classes=len(table.class_names),
            model_cfg=cfg.model,
            train_cfg=cfg.train,
            seed=r,
        )
        timings["sequential"].append((time.perf_counter() - start) / emoma_epochs)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            start = time.perf_counter()
            train_folds(
                [p["train"] for p in parts],
                [p["val"] for p in parts],
                n_classes=len(table.class_names),
                model_cfg=cfg.model,
                train_cfg=cfg.train,
                seeds=seeds,
            )
            timings[f"batched, {threads} thread{'s' if threads > 1 else ''}"].append(
                (time.perf_counter() - start) / emoma_epochs / len(plan.folds)
            )
        torch.set_num_threads(1)
    medians = {k: statistics.median(v) for k, v in timings.items()}
    ref = medians["reference"]
    print(
        f"| (a) seconds per fold-epoch, {len(plan.folds[0].train)} training rows, batch 25, median of {repeats} | "
        + " | ".join(f"{k} {v:.4f} s ({ref / v:.1f}x)" for k, v in medians.items())
        + " |"
    )
    return ref


def part_b(data: str, ref_fold_epoch_s: float):
    """The issue's command as a user types it, cold and warm, timed around the process."""
    reference = ref_fold_epoch_s * 100 * 10
    with tempfile.TemporaryDirectory() as tmp:
        for label in ("cold (empty plan cache)", "warm (plan cached)"):
            out = Path(tmp) / label.split()[0]
            command = [
                sys.executable,
                str(ROOT / "cv.py"),
                *ISSUE_COMMAND,
                *(["--data", data] if data else []),
                "--no-progress",
                "--out",
                str(out),
                "--set",
                f"cv.cache_dir={tmp}/cache",
            ]
            start = time.perf_counter()
            subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
            wall = time.perf_counter() - start
            metrics = json.loads((out / "metrics.json").read_text())
            acc = metrics["summary"]["accuracy"]
            print(
                f"| (b) `python cv.py {' '.join(ISSUE_COMMAND)}`, {label} | original loop ~{reference:.0f} s "
                f"(1,000 fold-epochs at {ref_fold_epoch_s:.3f} s) | EmoMA {wall:.1f} s whole process (plan "
                f"{metrics['seconds']['fold_plan']:.1f} s, CV {metrics['seconds']['cv']:.1f} s), accuracy "
                f"{acc['mean']:.3f} ± {acc['std']:.3f} | {reference / wall:.1f}x |"
            )


def part_c(data: str | None):
    import ray

    from emoma.space import load_space
    from emoma.tune.search import run_search

    space_file = Path(tempfile.mkdtemp()) / "space.yaml"
    space_file.write_text("train.lr: {float: [1.0e-4, 1.0e-2], log: true}\nmodel.n_features: {int: [5, 20]}\n")
    seed = load_config(ROOT / "configs" / "seed.yaml")
    rates = {}
    for concurrent in (1, 2):
        config = load_config(
            ROOT / "configs" / "seed.yaml",
            [
                "cv.scheme=group-kfold",
                "cv.folds=3",
                "train.epochs=5",
                "search.num_samples=8",
                f"search.max_concurrent={concurrent}",
            ],
            flags={"data.path": data},
        )
        ray.init(num_cpus=2, log_to_driver=False, logging_level="WARNING")
        start = time.perf_counter()
        run_search(
            config, load_space(space_file), seed, storage_path=tempfile.mkdtemp(), name="bench", log=lambda *a: None
        )
        rates[concurrent] = 8 / ((time.perf_counter() - start) / 60)
        ray.shutdown()
    print(
        f"| (c) 8 trials x 3 folds x 5 epochs, search + retrain | 1 concurrent: {rates[1]:.1f} trials/min | "
        f"2 concurrent: {rates[2]:.1f} trials/min | efficiency {rates[2] / rates[1] / 2:.2f} |"
    )


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
        print(
            f"| (d) {r['rows']} rows ({frame_mb:.1f} MB as a DataFrame, {r['table_mb']:.1f} MB of float32 "
            f"features) | fold plan (scaler + RFE, one fold) {r['plan_s']:.1f} s | one epoch {r['epoch_s']:.2f} s | "
            f"peak RSS {r['peak_mb']:.0f} MB ({r['fixed_mb']:.0f} MB after imports); over the smallest table's "
            f"peak: {r['peak_mb'] - baseline_mb:.0f} MB = {(r['peak_mb'] - baseline_mb) / frame_mb:.1f}x "
            f"the DataFrame |"
        )


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
    from emoma.folds import Samples, fit_fold, outer_splits

    torch.set_num_threads(1)
    fixed_mb = memory_mb("VmRSS")  # interpreter, torch, scikit-learn
    table = load_table(DataConfig(path=csv))
    config = load_config(ROOT / "configs" / "default.yaml", ["train.epochs=1", "train.batch_size=256"])
    train_val, test = outer_splits(table, config.cv, config.seed)[0]
    start = time.perf_counter()
    fold = fit_fold(table.X, table.y, table.groups, train_val, test, config.cv, config.seed)
    plan_s = time.perf_counter() - start
    parts = fold.samples(table.X, table.y, table_context(table, config), config.model.n_features)
    head = {p: Samples(s.X, s.index[:64], s.mask[:64], s.y[:64]) for p, s in parts.items()}
    train_fold(
        head["train"], head["val"], n_classes=2, model_cfg=config.model, train_cfg=config.train, seed=0
    )  # warm-up: imports, first step
    start = time.perf_counter()
    train_fold(parts["train"], parts["val"], n_classes=2, model_cfg=config.model, train_cfg=config.train, seed=0)
    epoch_s = time.perf_counter() - start
    peak_mb = memory_mb("VmHWM")
    print(
        json.dumps(
            {
                "rows": len(table.y),
                "table_mb": table.X.nbytes / 2**20,
                "plan_s": plan_s,
                "epoch_s": epoch_s,
                "peak_mb": peak_mb,
                "fixed_mb": fixed_mb,
            }
        )
    )


def part_e(config, table, plan, epochs: int):
    """torch.profiler over the fold-batched trainer (all folds, 1 thread)."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    context = table_context(table, config)
    parts = [fold.samples(table.X, table.y, context, config.model.n_features) for fold in plan.folds]
    cfg = apply_overrides(config, {"train.epochs": epochs, "train.patience": 0})
    seeds = [fold_seed(config.seed, i) for i in range(len(plan.folds))]

    def train():
        train_folds(
            [p["train"] for p in parts],
            [p["val"] for p in parts],
            n_classes=len(table.class_names),
            model_cfg=cfg.model,
            train_cfg=cfg.train,
            seeds=seeds,
        )

    train()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        train()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    steps = epochs * -(-max(len(p["train"]) for p in parts) // cfg.train.batch_size)
    backward = sum(e.cpu_time_total for e in events if e.key.startswith("autograd::engine::evaluate_function")) / 1e6
    adam = sum(e.cpu_time_total for e in events if "fused_adam" in e.key) / 1e6
    kernels = sum(e.self_cpu_time_total for e in events) / 1e6
    print(
        f"| (e) {len(parts)} folds in one model, {epochs} epochs, {steps} steps of batch {cfg.train.batch_size}, "
        f"1 thread | {wall / steps * 1e3:.2f} ms per step ({wall / steps / len(parts) * 1e3:.2f} ms per fold-step) | "
        f"fused Adam {adam / wall:.0%}, backward {backward / wall:.0%}, the rest (forward, batching, validation) "
        f"{1 - (adam + backward) / wall:.0%} | self time of all torch ops {kernels / wall:.0%} of wall |"
    )
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))


def part_p(data: str | None):
    """Full RFE against RFE stopped at the model's top-k: same selected features, fewer rounds."""
    config = load_config(
        ROOT / "configs" / "seed.yaml",
        ["cv.scheme=kfold", "cv.folds=10", "cv.cache_dir=null"],
        flags={"data.path": data},
    )
    table = load_table(config.data)
    k = config.model.n_features
    timed = {}
    for label, smallest in (("full ranking", 0), (f"stopped at top-{k}", k)):
        start = time.perf_counter()
        timed[label] = make_plan(table, config.cv, config.seed, smallest)
        timed[label].seconds = time.perf_counter() - start
    full, early = timed.values()
    same = all(np.array_equal(a.selected(k), b.selected(k)) for a, b in zip(full.folds, early.folds))
    print(
        f"| (p) fold plan of `cv.py {' '.join(ISSUE_COMMAND)}` (10 folds, RFE 100 trees, step 1, 2 workers) | "
        + " | ".join(f"{label} {plan.seconds:.1f} s" for label, plan in timed.items())
        + f" | selected features identical in every fold: {same} |"
    )


def part_g(config, table, plan, epochs: int):
    """The fold-batched trainer on a GPU; says so when there is none."""
    if not torch.cuda.is_available():
        print("| (g) CUDA | not measured: no CUDA device on this machine |")
        return
    context = table_context(table, config)
    parts = [fold.samples(table.X, table.y, context, config.model.n_features) for fold in plan.folds]
    seeds = [fold_seed(config.seed, i) for i in range(len(plan.folds))]
    for label, overrides in (("seed.yaml", {}), ("seed.yaml with 4 context windows", {"model.context": 4})):
        cfg = apply_overrides(
            config, {"train.epochs": epochs, "train.patience": 0, "train.device": "cuda", **overrides}
        )
        parts_k = (
            [fold.samples(table.X, table.y, table_context(table, cfg), cfg.model.n_features) for fold in plan.folds]
            if overrides
            else parts
        )
        train_folds(
            [p["train"] for p in parts_k],
            [p["val"] for p in parts_k],
            n_classes=len(table.class_names),
            model_cfg=cfg.model,
            train_cfg=cfg.train,
            seeds=seeds,
        )  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        train_folds(
            [p["train"] for p in parts_k],
            [p["val"] for p in parts_k],
            n_classes=len(table.class_names),
            model_cfg=cfg.model,
            train_cfg=cfg.train,
            seeds=seeds,
        )
        torch.cuda.synchronize()
        per = (time.perf_counter() - start) / epochs / len(plan.folds)
        print(
            f"| (g) CUDA {torch.cuda.get_device_name()}, {label}, {len(plan.folds)} folds in one model | "
            f"{per:.4f} s per fold-epoch |"
        )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--parts", nargs="+", default=["a", "b", "c", "d", "e", "p", "g"], choices=["a", "b", "c", "d", "e", "p", "g"]
    )
    p.add_argument(
        "--data",
        default=str(REAL) if REAL.is_file() else None,
        help="table for (a)-(c) (default: the real WESAD table when present, else synthetic)",
    )
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
    if {"a", "b", "e", "g"} & set(args.parts):
        config, table, plan = seed_setup(args.data)
    if {"a", "b"} & set(args.parts):
        ref_epoch_s = part_a(config, table, plan, args.ref_epochs, args.emoma_epochs, args.repeats)
        if "b" in args.parts:
            part_b(args.data, ref_epoch_s)
    if "c" in args.parts:
        part_c(args.data)
    if "d" in args.parts:
        part_d(args.rows)
    if "e" in args.parts:
        part_e(config, table, plan, epochs=5)
    if "p" in args.parts:
        part_p(args.data)
    if "g" in args.parts:
        part_g(config, table, plan, epochs=20)


if __name__ == "__main__":
    main()
