"""The command line: `emoma cv | search | status | predict | export | prepare`, and the `cv.py` / `search.py` wrappers.

Each subcommand parses its flags and calls one library function; configs and search spaces are YAML files or
the names of the ones shipped in the package (`--config context`), so every command works from any folder.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path

from emoma.config import FIDELITIES, METRICS, PRUNERS, SCHEMES, SELECTION_RULES, TASKS, flag_overrides, load_config
from emoma.errors import UserError, exit_on_user_error, invoked_as

CV_DESCRIPTION = "Cross-validate one CNN-LSTM configuration."
SEARCH_DESCRIPTION = """\
Search many CNN-LSTM configurations with Optuna on Ray Tune; every trial is a full cross-validation.

emoma search --num-samples 50 [--config context] [--space search_space] [options]"""
SEARCH_DEFAULTS = {
    "config": "context",
    "space": "search_space",
    "seed_config": "seed",
    "storage_path": "results/search",
}
COMMANDS = {
    "cv": "cross-validate one configuration",
    "search": "search many configurations (Ray Tune + Optuna)",
    "status": "the trials and best so far of a running or finished search",
    "predict": "predict a merged.csv with a saved model",
    "export": "export a saved model to ONNX, torch.export (pt2) or TorchScript for deployment",
    "prepare": "turn a WESAD folder into a merged.csv table (the prepare extra)",
}


def parse_cv_args(argv=None, prog=None):
    p = argparse.ArgumentParser(prog=prog, description=CV_DESCRIPTION)
    p.add_argument(
        "--config",
        help="YAML file, or the name of a shipped one: default (the default), context "
        "(the recommended preset), seed, smoke",
    )
    p.add_argument("--data", help="merged.csv to read (default: the embedded synthetic table)")
    p.add_argument("--task", choices=TASKS, help="binary (stress vs rest), 3class, or multiclass")
    p.add_argument("--cv", choices=SCHEMES, help="splitting protocol (default loso)")
    p.add_argument("--folds", type=int, help="K for the k-fold protocols")
    p.add_argument("--epochs", type=int, help="maximum epochs per fold")
    p.add_argument("--seed", type=int, help="seed for splits, RFE, weights and batch order")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="training device")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set train.lr=0.0005 (repeatable)",
    )
    p.add_argument("--drop-nan", action="store_true", help="drop rows with NaN/inf features instead of failing")
    p.add_argument(
        "--baselines",
        action="store_true",
        help="also score LDA, logistic regression and a random forest on the same folds and inputs, tuned "
        "by inner CV on each fold's training subjects (--set cv.baselines=default: library defaults)",
    )
    p.add_argument("--out", help="output folder (default: results/cv/NAME-TIMESTAMP; never shared by two runs)")
    p.add_argument(
        "--repeats",
        type=int,
        metavar="N",
        help="run the whole CV with N seeds (--seed, --seed+1, ...), each in OUT/seed-S; the report gives "
        "the mean and spread over seeds and tests on seed-averaged per-subject scores",
    )
    p.add_argument("--resume", metavar="OUT", help="continue the interrupted run in OUT: its finished folds are kept")
    p.add_argument(
        "--save-model",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write model.pt, the fold models averaged (each with its own scaler and features: the models "
        "the CV scored, no extra training), for emoma predict (default: on)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="print loss and accuracy of every epoch")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--mlflow",
        nargs="?",
        const="default",
        metavar="TRACKING_URI",
        help="log the run to MLflow (default: a local store, mlflow.db, in the output folder)",
    )
    return p.parse_args(argv)


@exit_on_user_error
def cv_main(argv=None, prog=None):
    """`emoma cv` and `python cv.py`: cross-validate one configuration."""
    args = parse_cv_args(argv, prog)
    from emoma.pipeline import REPEATS_FILE, check_folds_flag, cross_validate, resume_cv_config
    from emoma.repeats import format_repeats, repeat_cv
    from emoma.report.cv import format_summary

    repeated = args.repeats is not None or bool(args.resume and (Path(args.resume) / REPEATS_FILE).is_file())
    if repeated and args.mlflow:
        raise UserError(
            f"--mlflow tracks one run: drop it, or track one seed's run (OUT/seed-S) with a plain {invoked_as('cv')}"
        )
    flags = flag_overrides(args)
    if args.resume:
        if args.config or args.out:
            raise UserError("--resume OUT takes the run's configuration and folder from OUT: drop --config and --out")
        config = resume_cv_config(args.resume, args.set, flags)
    else:
        config = load_config(args.config or "default", args.set, flags=flags)
    check_folds_flag(args.folds, config)
    if repeated:
        summary, out = repeat_cv(
            config,
            args.repeats,
            args.resume or args.out,
            baselines=args.baselines,
            progress=not args.no_progress,
            verbose=args.verbose,
            resume=bool(args.resume),
            save_model=args.save_model,
        )
        print(format_repeats(summary))
        print(f"results written to {out}")
        return
    result, out = cross_validate(
        config,
        args.resume or args.out,
        baselines=args.baselines,
        progress=not args.no_progress,
        verbose=args.verbose,
        resume=bool(args.resume),
        mlflow=args.mlflow,
        save_model=args.save_model,
    )
    print(format_summary(result, config.train.metric))
    print(f"results written to {out}")


class RaisingParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise UserError instead of exiting (the Python API's)."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message}")


def parse_search_args(argv=None, prog=None, parser=argparse.ArgumentParser):
    p = parser(prog=prog, description=SEARCH_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--config",
        help=f"base config, a YAML file or a shipped name: runs first, and sampled trials "
        f"change it (default: {SEARCH_DEFAULTS['config']})",
    )
    p.add_argument("--space", help=f"search space (default: {SEARCH_DEFAULTS['space']})")
    p.add_argument(
        "--seed-config",
        help=f"configuration evaluated second, exactly, as a reference (default: {SEARCH_DEFAULTS['seed_config']})",
    )
    p.add_argument("--data", help="merged.csv to read (default: the embedded synthetic table)")
    p.add_argument("--task", choices=TASKS, help="binary (stress vs rest), 3class, or multiclass")
    p.add_argument("--cv", choices=SCHEMES, help="protocol of every trial's CV (default loso)")
    p.add_argument("--folds", type=int, help="K for the k-fold protocols")
    p.add_argument("--epochs", type=int, help="fix every trial's maximum epochs (train.epochs leaves the space)")
    p.add_argument("--num-samples", type=int, help="configurations to try (default 20; with --resume, more extends)")
    p.add_argument("--metric", choices=METRICS, help="objective and early-stopping metric (default macro_f1)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="training device of every trial")
    p.add_argument("--address", help="join a Ray cluster: auto or HOST:PORT (default: start Ray on this machine)")
    p.add_argument(
        "--cpus-per-trial", type=float, help="CPUs Ray reserves per trial; torch uses that many threads (default 1)"
    )
    p.add_argument("--gpus-per-trial", type=float, help="fractions share a GPU: 0.25 runs four trials per GPU")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as resources allow)")
    p.add_argument(
        "--prune",
        action=argparse.BooleanOptionalAction,
        help="stop unpromising trials once they have run search.grace_folds folds (default 4; --no-prune runs every "
        "fold)",
    )
    p.add_argument(
        "--pruner",
        choices=PRUNERS,
        help="asha (default): ASHA over folds; wilcoxon: paired test against the best trial on the same folds",
    )
    p.add_argument(
        "--select",
        choices=SELECTION_RULES,
        help="the final choice among completed trials: best (best mean), one-se (cheapest within one SE "
        "of the best), guard (the best only if its gain over the base configuration on the same "
        "subjects is significant after correction for the candidates, else the base), ensemble "
        "(greedy ensemble selection); default search.select of the config, guard",
    )
    p.add_argument(
        "--fidelity",
        choices=FIDELITIES,
        help="what trials train: full (the config's ensemble and refit) or low (one model per fold, no "
        "refit: cheaper; the final model is still retrained at the config's own settings); default "
        "search.fidelity of the config, full",
    )
    p.add_argument("--holdout", type=int, help="subjects held out of the search for the final test (default 3)")
    p.add_argument("--holdout-subjects", help="comma-separated subject ids to hold out, e.g. 2,5,11")
    p.add_argument("--outer", choices=("loso",), help="nested CV: the whole search once per held-out subject")
    p.add_argument("--name", help="experiment name (default: search-TIMESTAMP-XXXX)")
    p.add_argument(
        "--storage-path",
        help=f"where experiments live: a folder (NFS for clusters) or s3://, gs://, "
        f"... (default: {SEARCH_DEFAULTS['storage_path']})",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the experiment --name with the settings it started with"
    )
    p.add_argument("--seed", type=int, help="seed for the hold-out, splits, RFE, weights and the sampler")
    p.add_argument(
        "--time-budget-s",
        type=float,
        help="end the search after this many seconds: running trials stop there (trials.csv says so) "
        "and the best is chosen among the trials that completed",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key; a searched key set here is fixed and leaves the space",
    )
    p.add_argument("--drop-nan", action="store_true", help="drop rows with NaN/inf features instead of failing")
    p.add_argument(
        "--mlflow",
        nargs="?",
        const="default",
        metavar="TRACKING_URI",
        help="log the search to MLflow: a parent run and one child run per trial (default: a local store, "
        "mlflow.db, in the experiment folder)",
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="print the trials and the best so far of experiment --name (running or finished) and exit",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="Ray's and Optuna's own output")
    return p.parse_args(argv)


@exit_on_user_error
def search_main(argv=None, prog=None):
    """`emoma search` and `python search.py`: many configurations on Ray Tune with Optuna."""
    args = parse_search_args(argv, prog)
    from emoma.experiment import nested_search, search, search_settings, search_status

    for flag in ("resume", "status"):
        if getattr(args, flag) and not args.name:
            raise UserError(f"--{flag} needs the --name of the experiment")
    name = args.name or f"search-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"  # unique per start
    storage_path = args.storage_path or SEARCH_DEFAULTS["storage_path"]
    if args.status:
        print(search_status(name, storage_path))
        return
    settings = search_settings(args, SEARCH_DEFAULTS, name, storage_path)
    if args.outer:
        nested_search(settings, address=args.address, verbose=args.verbose)
    else:
        search(settings, address=args.address, verbose=args.verbose)


@exit_on_user_error
def status_main(argv=None, prog=None):
    """`emoma status --name NAME`: the same as `search.py --status --name NAME`."""
    p = argparse.ArgumentParser(prog=prog, description=COMMANDS["status"])
    p.add_argument("--name", required=True, help="the experiment's name")
    p.add_argument("--storage-path", help=f"where experiments live (default: {SEARCH_DEFAULTS['storage_path']})")
    args = p.parse_args(argv)
    from emoma.experiment import search_status

    print(search_status(args.name, args.storage_path or SEARCH_DEFAULTS["storage_path"]))


def main(argv=None):
    """`emoma COMMAND [options]`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    usage = (
        "usage: emoma COMMAND [options]   (emoma COMMAND --help for its options; emoma --version)\n\n"
        "commands:\n" + "\n".join(f"  {name:<8} {text}" for name, text in COMMANDS.items())
    )
    if argv[:1] in (["-h"], ["--help"]):
        print(usage)
        return
    if argv[:1] in (["-V"], ["--version"]):
        from emoma import __version__

        print(f"emoma {__version__}")
        return
    if not argv or argv[0] not in COMMANDS:
        what = f"unknown command {argv[0]!r}" if argv else "no command"
        print(f"{usage}\nemoma: error: {what}: give one of {', '.join(COMMANDS)}", file=sys.stderr)
        raise SystemExit(2)
    command, rest, prog = argv[0], argv[1:], f"emoma {argv[0]}"
    if command == "cv":
        cv_main(rest, prog)
    elif command == "search":
        search_main(rest, prog)
    elif command == "status":
        status_main(rest, prog)
    elif command == "export":
        from emoma.export import main as export_main

        export_main(rest, prog)
    elif command == "predict":
        from emoma.predict import main as predict_main

        predict_main(rest, prog)
    else:
        from emoma.prepare.features import main as prepare_main

        prepare_main(rest, prog)
