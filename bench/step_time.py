"""Time of the fold-batched trainer on the real table: one training step (forward, backward, Adam) of K models
and whole epochs of `emoma.batched.train_folds` (steps plus the per-epoch validation), one torch thread.

    python bench/step_time.py --data ../shared/data/wesad_merged.csv [--config configs/context.yaml]

K = folds x ensemble members, as one cv.py worker trains them (15 LOSO folds over 2 workers: 8 folds). To
compare two versions in one sitting, run it from each checkout (e.g. a `git worktree` of the older commit).
"""

import argparse
import time
from dataclasses import replace

import torch
from torch.nn import functional as F

from emoma.batched import FoldBatchedForward, Layout, _Stack, _stack_windows, train_folds
from emoma.config import load_config
from emoma.cv import fold_seed, table_context
from emoma.folds import make_plan, smallest_top_k
from emoma.model import build_model
from emoma.pipeline import model_table


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--config", default="configs/context.yaml")
    p.add_argument("--folds", type=int, default=8, help="folds trained together (default 8)")
    p.add_argument("--steps", type=int, default=10, help="training steps timed (default 10, after 2 warm-up)")
    p.add_argument("--epochs", type=int, default=2, help="whole epochs timed (default 2; 0: none)")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config, flags={"data.path": args.data})
    table = model_table(cfg)
    plan = make_plan(table, cfg.cv, cfg.seed, smallest_top_k([cfg.model.n_features]))
    context = table_context(table, cfg)
    parts = [fold.samples(table.X, table.y, context, cfg.model.n_features) for fold in plan.folds[: args.folds]]
    members = cfg.model.ensemble
    train = [part["train"] for part in parts for _ in range(members)]
    val = [part["val"] for part in parts for _ in range(members)]
    seeds = [fold_seed(cfg.seed, i, j) for i in range(len(parts)) for j in range(members)]
    K, n_classes, n_inputs = len(seeds), len(table.class_names), train[0].X.shape[1]

    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(build_model(cfg.model, n_inputs, n_classes))
    layout, forward = Layout(models[0]), FoldBatchedForward(models[0], cfg.model)
    leaves = {n: t.detach().requires_grad_() for n, t in layout.views(layout.rows(models)).items()}
    windows, source = _stack_windows(train, "cpu")
    stack = _Stack(train, windows, source)
    generator = torch.Generator().manual_seed(0)
    rows = torch.stack([torch.randperm(n, generator=generator)[: cfg.train.batch_size] for n in stack.counts])
    x, mask, y = stack.batch(rows)
    drop = [
        (torch.rand(K, *shape, generator=generator) >= cfg.model.dropout).float() / (1 - cfg.model.dropout)
        for shape in forward.dropout_shapes(cfg.train.batch_size, x.shape[2] * models[0].steps_per_window, models[0])
    ]

    def step():
        loss = F.cross_entropy(forward(leaves, x, mask, drop).transpose(1, 2), y)
        return torch.autograd.grad(loss, list(leaves.values()))

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    per_step = (time.perf_counter() - start) / args.steps * 1000
    print(
        f"K={K} models ({len(parts)} folds x {members} members), batch {cfg.train.batch_size}, context "
        f"{cfg.model.context}, {n_inputs} features: training step (forward + backward) {per_step:.1f} ms, "
        f"{per_step / K:.2f} ms per model-step"
    )
    if not args.epochs:
        return
    start = time.perf_counter()
    train_folds(
        train,
        val,
        n_classes=n_classes,
        model_cfg=cfg.model,
        train_cfg=replace(cfg.train, epochs=args.epochs, patience=0),
        seeds=seeds,
    )
    seconds = (time.perf_counter() - start) / args.epochs
    n_steps = -(-max(stack.counts) // cfg.train.batch_size)
    print(
        f"train_folds: {seconds:.2f} s per epoch ({n_steps} steps + validation), "
        f"{seconds / n_steps * 1000:.1f} ms per step with validation and Adam"
    )


if __name__ == "__main__":
    main()
