"""Does a context model's score rest on the order of each subject's condition blocks?

The shared real table has no time_s and lists every subject's conditions in one label-defined block order, so
a context window near a block's start reads the previous condition in the same order for every subject. This
permutes each subject's blocks (a block: consecutive windows of one condition; the order within a block is
kept; each subject gets its own random new order) and cross-validates the same configuration on the original
and the permuted tables, for each context length, reporting all windows and the windows whose context crosses
a condition change (`bench/boundary_windows.py`). If the score depends on the block order, the original
order carried information a live stream would not.

Usage: python bench/block_order.py --data ../shared/data/wesad_merged.csv --work /tmp/blocks
       [--config configs/context.yaml] [--contexts 4 10] [--task binary] [--permutations 1] [--set KEY=VALUE ...]
       [--out results/bench/block-order.json]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.boundary_windows import boundary_scores  # noqa: E402
from emoma.config import load_config  # noqa: E402
from emoma.data import read_csv  # noqa: E402
from emoma.pipeline import cross_validate  # noqa: E402


def permute_blocks(frame: pd.DataFrame, seed: int, subject: str = "subject", label: str = "label") -> pd.DataFrame:
    """Each subject's condition blocks in a new random order (another order than the original where the subject
    has two or more blocks), windows within a block in their order; subjects stay in file order."""
    rng = np.random.default_rng(seed)
    parts = []
    for _, rows in frame.groupby(subject, sort=False):
        labels = rows[label].to_numpy()
        starts = np.r_[0, np.flatnonzero(labels[1:] != labels[:-1]) + 1, len(rows)]
        blocks = [rows.iloc[a:b] for a, b in zip(starts[:-1], starts[1:])]
        order = np.arange(len(blocks))
        while len(blocks) > 1 and np.array_equal(order, np.arange(len(blocks))):
            order = rng.permutation(len(blocks))
        parts += [blocks[i] for i in order]
    return pd.concat(parts).reset_index(drop=True)


def run(
    config_path: str, data: Path, conditions: np.ndarray, task: str, context: int, sets: list[str], out: Path
) -> dict:
    """One cv.py run on the written table `data`, whose rows hold `conditions` (the raw labels)."""
    config = load_config(config_path, [f"data.path={data}", f"data.task={task}", f"model.context={context}", *sets])
    start = time.perf_counter()
    result, folder = cross_validate(config, out, progress=False, log=lambda *a: None)
    predictions = pd.read_csv(folder / "predictions.csv").sort_values("row").reset_index(drop=True)
    return {
        "seconds": time.perf_counter() - start,
        "summary": result.summary(),
        "boundary": boundary_scores(predictions, context, conditions[predictions["row"]]),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--work", required=True, help="folder for the permuted tables and the runs (not in git)")
    p.add_argument("--config", default=str(ROOT / "configs" / "context.yaml"))
    p.add_argument("--contexts", type=int, nargs="+", default=[4, 10])
    p.add_argument("--task", default="binary")
    p.add_argument("--permutations", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", help="JSON of every figure")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    frame = read_csv(args.data)
    columns = load_config(args.config).data
    if columns.time_column in frame.columns:
        print(
            f"error: {args.data} has a {columns.time_column} column, and rows are put in its order, which would undo "
            "the permutation: give a table without it",
            file=sys.stderr,
        )
        sys.exit(2)
    orders = {"original": frame.reset_index(drop=True)} | {
        f"permuted {seed}": permute_blocks(frame, seed, columns.subject_column, columns.label_column)
        for seed in range(1, args.permutations + 1)
    }
    tables = {}
    for name, table in orders.items():  # rows are written in order: a row id is its position
        tables[name] = work / f"{name.replace(' ', '-')}.csv"
        table.to_csv(tables[name])
    figures = {}
    print(
        "| context | block order | accuracy | macro-F1 | boundary windows (n): acc / F1 | other windows: acc / F1 | s |"
    )
    print("|---|---|---|---|---|---|---|")
    for k in args.contexts:
        for name, path in tables.items():
            fig = run(
                args.config,
                path,
                orders[name][columns.label_column].to_numpy(),
                args.task,
                k,
                args.set,
                work / f"context-{k}-{name.replace(' ', '-')}",
            )
            figures[f"context {k}, {name}"] = fig
            near, other = (
                fig["boundary"][key]
                for key in ("windows whose context crosses a condition change", "all other windows")
            )
            summary = fig["summary"]
            print(
                f"| {k} | {name} | {summary['accuracy']['mean']:.3f} | {summary['macro_f1']['mean']:.3f} "
                f"| ({near['n']}) {near['accuracy']:.3f} / {near['macro_f1']:.3f} | {other['accuracy']:.3f} / "
                f"{other['macro_f1']:.3f} | {fig['seconds']:.0f} |",
                flush=True,
            )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "figures": figures}, indent=2))


if __name__ == "__main__":
    main()
