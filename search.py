"""Search many CNN-LSTM configurations with Optuna on Ray Tune; every trial is a full cross-validation.

python search.py --num-samples 50 [--config configs/context.yaml] [--space configs/search_space.yaml] [options]
"""
import argparse
import secrets
import time

from emoma.config import FIDELITIES, METRICS, PRUNERS, SCHEMES, SELECTION_RULES, TASKS
from emoma.errors import UserError, exit_on_user_error
from emoma.experiment import search_settings

DEFAULTS = {"config": "configs/context.yaml", "space": "configs/search_space.yaml", "seed_config": "configs/seed.yaml",
            "storage_path": "results/search"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help=f"base config: runs first, and sampled trials change it (default: "
                                    f"{DEFAULTS['config']})")
    p.add_argument("--space", help=f"search space (default: {DEFAULTS['space']})")
    p.add_argument("--seed-config", help=f"configuration evaluated second, exactly, as a reference (default: "
                                         f"{DEFAULTS['seed_config']})")
    p.add_argument("--data", help="merged.csv to read (default: the embedded synthetic table)")
    p.add_argument("--task", choices=TASKS)
    p.add_argument("--cv", choices=SCHEMES, help="protocol of every trial's CV (default loso)")
    p.add_argument("--folds", type=int, help="K for the k-fold protocols")
    p.add_argument("--epochs", type=int, help="fix every trial's maximum epochs (train.epochs leaves the space)")
    p.add_argument("--num-samples", type=int, help="configurations to try (default 20; with --resume, more extends)")
    p.add_argument("--metric", choices=METRICS, help="objective and early-stopping metric (default macro_f1)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="training device of every trial")
    p.add_argument("--address", help="join a Ray cluster: auto or HOST:PORT (default: start Ray on this machine)")
    p.add_argument("--cpus-per-trial", type=float)
    p.add_argument("--gpus-per-trial", type=float, help="fractions share a GPU: 0.25 runs four trials per GPU")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as resources allow)")
    p.add_argument("--prune", action=argparse.BooleanOptionalAction,
                   help="stop unpromising trials once they have run search.grace_folds folds (default 4; --no-prune runs every fold)")
    p.add_argument("--pruner", choices=PRUNERS, help="asha (default): ASHA over folds; wilcoxon: paired test "
                                                     "against the best trial on the same folds")
    p.add_argument("--select", choices=SELECTION_RULES,
                   help="the final choice among completed trials: best (best mean), one-se (cheapest within one SE "
                        "of the best), guard (the best only if its gain over the base configuration on the same "
                        "subjects is significant after correction for the candidates, else the base), ensemble "
                        "(greedy ensemble selection); default search.select of the config, guard")
    p.add_argument("--fidelity", choices=FIDELITIES,
                   help="what trials train: full (the config's ensemble and refit) or low (one model per fold, no "
                        "refit: cheaper; the final model is still retrained at the config's own settings); default "
                        "search.fidelity of the config, full")
    p.add_argument("--holdout", type=int, help="subjects held out of the search for the final test (default 3)")
    p.add_argument("--holdout-subjects", help="comma-separated subject ids to hold out, e.g. 2,5,11")
    p.add_argument("--outer", choices=("loso",), help="nested CV: the whole search once per held-out subject")
    p.add_argument("--name", help="experiment name (default: search-TIMESTAMP-XXXX)")
    p.add_argument("--storage-path", help=f"where experiments live: a folder (NFS for clusters) or s3://, gs://, "
                                          f"... (default: {DEFAULTS['storage_path']})")
    p.add_argument("--resume", action="store_true",
                   help="continue the experiment --name with the settings it started with")
    p.add_argument("--seed", type=int)
    p.add_argument("--time-budget-s", type=float,
                   help="end the search after this many seconds: running trials stop there (trials.csv says so) "
                        "and the best is chosen among the trials that completed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key; a searched key set here is fixed and leaves the space")
    p.add_argument("--drop-nan", action="store_true")
    p.add_argument("--mlflow", nargs="?", const="default", metavar="TRACKING_URI",
                   help="log the search to MLflow: a parent run and one child run per trial (default: a local store, "
                        "mlflow.db, in the experiment folder)")
    p.add_argument("--status", action="store_true",
                   help="print the trials and the best so far of experiment --name (running or finished) and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="Ray's and Optuna's own output")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    for flag in ("resume", "status"):
        if getattr(args, flag) and not args.name:
            raise UserError(f"--{flag} needs the --name of the experiment")
    name = args.name or f"search-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"  # unique per start
    storage_path = args.storage_path or DEFAULTS["storage_path"]
    if args.status:
        from emoma.experiment import search_status

        print(search_status(name, storage_path))
        return
    settings = search_settings(args, DEFAULTS, name, storage_path)
    from emoma.experiment import nested_search, search

    if args.outer:
        nested_search(settings, address=args.address, verbose=args.verbose)
    else:
        search(settings, address=args.address, verbose=args.verbose)


if __name__ == "__main__":
    main()
