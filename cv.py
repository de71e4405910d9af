"""Cross-validate one CNN-LSTM configuration: python cv.py [--config configs/default.yaml] [options]."""
import argparse
from pathlib import Path

from emoma.config import SCHEMES, TASKS, load_config
from emoma.errors import UserError, exit_on_user_error
from emoma.pipeline import REPEATS_FILE, check_folds_flag, cross_validate, resume_cv_config
from emoma.repeats import format_repeats, repeat_cv
from emoma.report import format_summary


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", help="YAML config (default: configs/default.yaml)")
    p.add_argument("--data", help="merged.csv to read (default: the embedded synthetic table)")
    p.add_argument("--task", choices=TASKS, help="binary (stress vs rest), 3class, or multiclass")
    p.add_argument("--cv", choices=SCHEMES, help="splitting protocol (default loso)")
    p.add_argument("--folds", type=int, help="K for the k-fold protocols")
    p.add_argument("--epochs", type=int, help="maximum epochs per fold")
    p.add_argument("--seed", type=int, help="seed for splits, RFE, weights and batch order")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="training device")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.lr=0.0005 (repeatable)")
    p.add_argument("--drop-nan", action="store_true", help="drop rows with NaN/inf features instead of failing")
    p.add_argument("--baselines", action="store_true",
                   help="also score LDA, logistic regression and a random forest on the same folds and inputs, tuned "
                        "by inner CV on each fold's training subjects (--set cv.baselines=default: library defaults)")
    p.add_argument("--out", help="output folder (default: results/cv/NAME-TIMESTAMP; never shared by two runs)")
    p.add_argument("--repeats", type=int, metavar="N",
                   help="run the whole CV with N seeds (--seed, --seed+1, ...), each in OUT/seed-S; the report gives "
                        "the mean and spread over seeds and tests on seed-averaged per-subject scores")
    p.add_argument("--resume", metavar="OUT", help="continue the interrupted run in OUT: its finished folds are kept")
    p.add_argument("-v", "--verbose", action="store_true", help="print loss and accuracy of every epoch")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--mlflow", nargs="?", const="default", metavar="TRACKING_URI",
                   help="log the run to MLflow (default: a local store, mlflow.db, in the output folder)")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    repeated = args.repeats is not None or bool(args.resume and (Path(args.resume) / REPEATS_FILE).is_file())
    if repeated and args.mlflow:
        raise UserError("--mlflow tracks one run: drop it, or track one seed's run (OUT/seed-S) with plain cv.py")
    flags = {"data.path": args.data, "data.task": args.task, "cv.scheme": args.cv, "cv.folds": args.folds,
             "train.epochs": args.epochs, "seed": args.seed, "train.device": args.device,
             "data.drop_nan": args.drop_nan or None}
    if args.resume:
        if args.config or args.out:
            raise UserError("--resume OUT takes the run's configuration and folder from OUT: drop --config and --out")
        config = resume_cv_config(args.resume, args.set, flags)
    else:
        config = load_config(args.config or "configs/default.yaml", args.set, flags=flags)
    check_folds_flag(args.folds, config)
    if repeated:
        summary, out = repeat_cv(config, args.repeats, args.resume or args.out, baselines=args.baselines,
                                 progress=not args.no_progress, verbose=args.verbose, resume=bool(args.resume))
        print(format_repeats(summary))
        print(f"results written to {out}")
        return
    result, out = cross_validate(config, args.resume or args.out, baselines=args.baselines,
                                 progress=not args.no_progress, verbose=args.verbose, resume=bool(args.resume),
                                 mlflow=args.mlflow)
    print(format_summary(result))
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
