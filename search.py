"""Search many CNN-LSTM configurations with Optuna on Ray Tune; every trial is a full cross-validation.

python search.py --num-samples 50 [--config configs/default.yaml] [--space configs/search_space.yaml] [options]
"""
import argparse
import time

from emoma.config import METRICS, SCHEMES, TASKS, load_config
from emoma.errors import UserError, exit_on_user_error
from emoma.report import format_search_summary, write_nested_outputs, write_search_outputs
from emoma.search import load_space, run_nested_search, run_search


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/default.yaml", help="base config (default: %(default)s)")
    p.add_argument("--space", default="configs/search_space.yaml", help="search space (default: %(default)s)")
    p.add_argument("--seed-config", default="configs/seed.yaml",
                   help="configuration evaluated first as the baseline (default: %(default)s)")
    p.add_argument("--data", help="merged.csv to read (default: the embedded synthetic table)")
    p.add_argument("--task", choices=TASKS)
    p.add_argument("--cv", choices=SCHEMES, help="protocol of every trial's CV (default loso)")
    p.add_argument("--folds", type=int, help="K for the k-fold protocols")
    p.add_argument("--num-samples", type=int, help="configurations to try (default 20)")
    p.add_argument("--metric", choices=METRICS, help="objective (default macro_f1)")
    p.add_argument("--address", help="join a Ray cluster: auto or HOST:PORT (default: start Ray on this machine)")
    p.add_argument("--cpus-per-trial", type=float)
    p.add_argument("--gpus-per-trial", type=float, help="fractions share a GPU: 0.25 runs four trials per GPU")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as resources allow)")
    p.add_argument("--prune", action=argparse.BooleanOptionalAction,
                   help="ASHA early stopping over folds (default: on; --no-prune runs every trial's every fold)")
    p.add_argument("--holdout", type=int, help="subjects held out of the search for the final test (default 3)")
    p.add_argument("--holdout-subjects", help="comma-separated subject ids to hold out, e.g. 2,5,11")
    p.add_argument("--outer", choices=("loso",), help="nested CV: the whole search once per held-out subject")
    p.add_argument("--name", help="experiment name (default: search-TIMESTAMP)")
    p.add_argument("--storage-path", default="results/search", help="where experiments live (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted experiment --name")
    p.add_argument("--seed", type=int)
    p.add_argument("--time-budget-s", type=float, help="stop starting new trials after this many seconds")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--drop-nan", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true", help="Ray's and Optuna's own output")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    holdout_subjects = [s.strip() for s in args.holdout_subjects.split(",")] if args.holdout_subjects else None
    flags = {"data.path": args.data, "data.task": args.task, "cv.scheme": args.cv, "cv.folds": args.folds,
             "seed": args.seed, "data.drop_nan": args.drop_nan or None, "search.num_samples": args.num_samples,
             "search.metric": args.metric, "search.cpus_per_trial": args.cpus_per_trial,
             "search.gpus_per_trial": args.gpus_per_trial, "search.max_concurrent": args.max_concurrent,
             "search.prune": args.prune, "search.holdout": args.holdout,
             "search.holdout_subjects": holdout_subjects, "search.time_budget_s": args.time_budget_s}
    config = load_config(args.config, args.set, flags=flags)
    seed_config = load_config(args.seed_config)
    space = load_space(args.space)
    if args.resume and not args.name:
        raise UserError("--resume needs the --name of the experiment to continue")
    name = args.name or f"search-{time.strftime('%Y%m%d-%H%M%S')}"
    kwargs = dict(storage_path=args.storage_path, name=name, address=args.address, resume=args.resume,
                  verbose=args.verbose)
    if args.outer:
        results = run_nested_search(config, space, seed_config, **kwargs)
        for result in results:
            write_search_outputs(result, config)
        out = write_nested_outputs(results, results[0].folder.parent)
        print((out / "report.md").read_text())
        print(f"results written to {out}")
        return
    result = run_search(config, space, seed_config, **kwargs)
    out = write_search_outputs(result, config)
    print(format_search_summary(result))
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
