"""Compare classical LOSO scores on the synthetic table and the real WESAD table (run by hand).

python bench/calibrate_synthetic.py [--real ../shared/data/wesad_merged.csv] [--seeds 0 1 2]
"""

import argparse
from pathlib import Path

from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from emoma.config import DataConfig
from emoma.data import load_table, table_from_frame
from emoma.synthetic import make_frame


def scores(table, model):
    pred = cross_val_predict(
        make_pipeline(StandardScaler(), model), table.X, table.y, groups=table.groups, cv=LeaveOneGroupOut(), n_jobs=-1
    )
    return accuracy_score(table.y, pred), f1_score(table.y, pred, average="macro")


def report(name, binary, three):
    lda = scores(binary, LinearDiscriminantAnalysis())
    rf = scores(three, RandomForestClassifier(random_state=0, n_jobs=1))
    rows = (binary.X.shape[0], len(binary.subjects))
    print(
        f"{name:<14} rows={rows[0]} subjects={rows[1]}  binary LDA acc={lda[0]:.3f} F1={lda[1]:.3f}  "
        f"3-class RF acc={rf[0]:.3f} F1={rf[1]:.3f}"
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--real", default=str(Path(__file__).parents[1] / ".." / "shared/data/wesad_merged.csv"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    if Path(args.real).is_file():
        report("real", load_table(DataConfig(path=args.real)), load_table(DataConfig(path=args.real, task="3class")))
    for seed in args.seeds:
        frame = make_frame(seed=seed)
        report(
            f"synthetic s={seed}",
            table_from_frame(frame, DataConfig(), "synthetic"),
            table_from_frame(frame, DataConfig(task="3class"), "synthetic"),
        )


if __name__ == "__main__":
    main()
