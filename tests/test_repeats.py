"""cv.py --repeats: the summary over seeds, checked by hand (the end-to-end run is in test_cli.py)."""

import numpy as np
import pytest
from scipy import stats

from emoma.config import METRICS
from emoma.repeats import summarise_repeats


def evaluation(scores: dict[str, list[float]]) -> dict:
    """A seed's `evaluate` output reduced to what the summary reads: per-subject scores, every metric alike."""
    return {
        "models": {
            name: {
                "subjects": {str(i): {m: v for m in METRICS} for i, v in enumerate(values)},
                "ci": {m: {"mean": float(np.mean(values))} for m in METRICS},
            }
            for name, values in scores.items()
        }
    }


def test_repeats_average_subjects_over_seeds_then_compare_with_holm():
    ours = [[0.9, 0.8, 0.7, 0.95, 0.6, 0.85], [0.8, 0.8, 0.9, 0.85, 0.7, 0.75]]
    lda = [[0.7, 0.75, 0.6, 0.9, 0.5, 0.8]] * 2
    rf = [[0.9, 0.85, 0.8, 0.9, 0.65, 0.8]] * 2
    summary = summarise_repeats(
        {s: evaluation({"CNN-LSTM": ours[i], "LDA": lda[i], "RandomForest": rf[i]}) for i, s in enumerate((5, 6))}
    )
    assert summary["seeds"] == [5, 6] and summary["tests"]
    f1 = summary["models"]["CNN-LSTM"]["macro_f1"]
    assert f1["per_seed"] == pytest.approx([np.mean(ours[0]), np.mean(ours[1])])
    assert f1["std"] == pytest.approx(np.std(f1["per_seed"], ddof=1)) and f1["min"] < f1["max"]
    averaged = np.mean(ours, axis=0)
    assert [summary["subjects"]["CNN-LSTM"][str(i)]["accuracy"] for i in range(6)] == pytest.approx(averaged)
    p = {
        name: stats.wilcoxon(averaged, np.array(other[0])).pvalue
        for name, other in (("LDA", lda), ("RandomForest", rf))
    }
    small, large = sorted(p, key=p.get)
    against = summary["comparisons"]
    assert against["LDA"]["macro_f1"]["mean_diff"] == pytest.approx(np.mean(averaged - lda[0]))
    assert against[small]["macro_f1"]["p_holm"] == pytest.approx(2 * p[small])  # Holm by hand: 2 comparisons
    assert against[large]["macro_f1"]["p_holm"] == pytest.approx(max(2 * p[small], p[large]))


def test_too_few_subjects_for_tests_give_scores_over_seeds_only():
    summary = summarise_repeats(
        {s: evaluation({"CNN-LSTM": [0.8, 0.9, s / 10], "LDA": [0.7, 0.6, 0.5]}) for s in (1, 2)}
    )
    assert not summary["tests"] and not summary["comparisons"]
    assert summary["models"]["CNN-LSTM"]["accuracy"]["per_seed"] == pytest.approx([0.6, 0.6333333])


def test_a_seed_whose_model_collapsed_is_named_in_the_report_and_on_the_console(tmp_path):
    """The notes come from each seed's metrics.json (here finished seeds that --resume reads, no training)."""
    import json

    from emoma.config import load_config, save_config
    from emoma.pipeline import REPEATS_FILE
    from emoma.repeats import format_repeats, repeat_cv

    config = load_config("smoke")
    save_config(config, tmp_path / "config.yaml")
    (tmp_path / REPEATS_FILE).write_text(json.dumps({"repeats": 2, "baselines": True}))
    note = "the CNN-LSTM predicts a single class for 95% or more of the windows in 2 of 3 test folds"
    for seed, notes in ((config.seed, []), (config.seed + 1, [note])):
        (tmp_path / f"seed-{seed}").mkdir()
        metrics = {"evaluation": evaluation({"CNN-LSTM": [0.5, 0.5, 0.5], "LDA": [0.7, 0.6, 0.5]}), "warnings": notes}
        (tmp_path / f"seed-{seed}" / "metrics.json").write_text(json.dumps(metrics))
    summary, _ = repeat_cv(config, None, tmp_path, resume=True, log=lambda *a: None)
    assert summary["warnings"] == {str(config.seed + 1): [note]}
    assert f"**WARNING (seed {config.seed + 1}): {note}**" in (tmp_path / "report.md").read_text()
    assert format_repeats(summary).splitlines()[0] == f"WARNING (seed {config.seed + 1}): {note}"
    assert f"seed {config.seed})" not in (tmp_path / "report.md").read_text()
