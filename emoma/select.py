"""The search's final choice and an honest estimate of it, from the trials' out-of-fold predictions (no Ray).

Every trial keeps the class probabilities of every window its CV scored (`OOFStore`). From them, without
training anything:

- a selection rule picks the final model among the trials that completed every fold: `best` (the best mean,
  the classic choice); `one-se` (the cheapest trial within one standard error of the best, cheapest meaning
  the fewest weights times windows read per prediction, times ensemble members); `guard` (the best only where
  its paired gain over the base configuration on the same subjects is significant, one-sided paired t at
  `search.guard_alpha` Bonferroni-corrected over the candidates it was chosen from, else the base);
  `ensemble` (Caruana et al. 2004: greedy forward selection with replacement of the trials whose averaged
  probabilities score best, the best prefix kept). Inside a bootstrap resample, `best`, `one-se` and
  `ensemble` weigh a subject by how often it was drawn; the guard's test counts each drawn subject once;
- BBC-CV (Tsamardinos, Greasidou and Borboudakis, Machine Learning 2018) estimates how the model that rule
  chooses scores on new subjects: whole subjects are bootstrapped, the rule chooses on the in-bag subjects,
  and its choice is scored on the out-of-bag subjects, which took no part in that choice.

A subject's score is the search metric over that subject's windows (`emoma.metrics.score`'s definition), so
under leave-one-subject-out a trial's mean over subjects is exactly its CV mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats

from emoma.config import SELECTION_RULES, Config, SearchConfig
from emoma.errors import UserError
from emoma.metrics import CONFIDENCE, MIN_TEST_SUBJECTS, holm, metrics_from_confusion, paired_wilcoxon
from emoma.model import prediction_cost
from emoma.results import OOFStore
from emoma.space import same_params

# ---------------------------------------------------------------- per-subject scores


@dataclass
class Subjects:
    """Windows grouped by subject, to score many probability matrices at once."""

    names: np.ndarray  # (S,) subject ids
    index: np.ndarray  # (n,) each window's subject, 0..S-1
    y: np.ndarray  # (n,) each window's true class
    n_classes: int

    @classmethod
    def of(cls, store: OOFStore) -> Subjects:
        names, index = np.unique(store.subjects, return_inverse=True)
        return cls(names, index, store.y, len(store.class_names))

    def __len__(self) -> int:
        return len(self.names)

    def windows(self, keep: np.ndarray) -> Subjects:
        """The same subjects, only the windows where `keep` (n,) is true."""
        return Subjects(self.names, self.index[keep], self.y[keep], self.n_classes)

    def scores(self, proba: np.ndarray, metrics: tuple[str, ...]) -> dict[str, np.ndarray]:
        """{metric: (..., S)} per-subject scores of probabilities (..., n, C) (predicted class: the argmax)."""
        pred = proba.argmax(-1)
        lead = pred.shape[:-1]
        pred = pred.reshape(-1, pred.shape[-1])  # (M, n)
        S, C = len(self.names), self.n_classes
        cells = (self.index * C + self.y) * C  # (n,)
        flat = (np.arange(len(pred))[:, None] * (S * C * C) + cells[None] + pred).ravel()
        counts = np.bincount(flat, minlength=len(pred) * S * C * C).reshape(len(pred), S, C, C)
        values = metrics_from_confusion(torch.from_numpy(counts.astype(np.float64)))
        return {m: values[m].numpy().reshape(*lead, S) for m in metrics}


# ---------------------------------------------------------------- selection rules


@dataclass
class Candidates:
    """The completed trials a rule chooses among, in the order they started (the base first)."""

    ids: list[str]
    proba: np.ndarray  # (T, n, C)
    scores: dict[str, np.ndarray]  # metric -> (T, S) per-subject scores; the search metric and accuracy
    costs: np.ndarray  # (T,) weights x windows read per prediction (one-se's "cheapest")
    base: int | None  # index of the base configuration's trial
    subjects: Subjects
    metric: str
    ensemble_size: int = 20  # greedy steps of ensemble selection
    guard_alpha: float = 0.05  # guard: one-sided level of the paired test against the base, before Bonferroni

    def head(self, t: int) -> Candidates:
        """The first `t` candidates."""
        base = self.base if self.base is not None and self.base < t else None
        return Candidates(
            self.ids[:t],
            self.proba[:t],
            {m: v[:t] for m, v in self.scores.items()},
            self.costs[:t],
            base,
            self.subjects,
            self.metric,
            self.ensemble_size,
            self.guard_alpha,
        )

    @classmethod
    def of(
        cls,
        store: OOFStore,
        ids: list[str],
        costs,
        base: str | None,
        metric: str,
        ensemble_size: int = 20,
        guard_alpha: float = 0.05,
    ) -> Candidates:
        subjects = Subjects.of(store)
        proba = np.stack([store.trials[t] for t in ids])
        scores = subjects.scores(proba, tuple(dict.fromkeys((metric, "accuracy"))))
        return cls(
            list(ids),
            proba,
            scores,
            np.asarray(costs, dtype=float),
            ids.index(base) if base in ids else None,
            subjects,
            metric,
            ensemble_size,
            guard_alpha,
        )


def _mean_se(values: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and standard error over subjects (w: how often each subject was drawn), along the last axis."""
    n = w.sum()
    mean = values @ w / n
    var = np.maximum(values**2 @ w / n - mean**2, 0.0) * n / max(n - 1, 1)
    return mean, np.sqrt(var / n)


def guard_test(c: Candidates, w: np.ndarray | None = None) -> dict | None:
    """The guard's test of the best mean (subjects weighted by `w`) against the base on the same subjects; None
    where there is nothing to test (no base, or the base is the best).

    The best of many noisy candidates beats the base by chance, so the one-sided paired t is Bonferroni-corrected
    over the other candidates. It runs over the distinct subjects drawn: a subject drawn twice is not a second
    independent pair, and counting it twice would shrink the standard error below the truth."""
    w = np.ones(len(c.subjects)) if w is None else w
    scores = c.scores[c.metric]
    best = int(np.argmax(_mean_se(scores, w)[0]))
    if c.base is None or best == c.base:
        return None
    drawn = (w > 0).astype(float)
    gain, se = (float(v) for v in _mean_se(scores[best] - scores[c.base], drawn))
    critical = float(stats.t.ppf(1 - c.guard_alpha / (len(c.ids) - 1), df=max(drawn.sum() - 1, 1)))
    t = gain / se if se > 0 else (math.inf if gain > 0 else 0.0)
    return {
        "alpha": c.guard_alpha,
        "candidates": len(c.ids) - 1,
        "best": c.ids[best],
        "gain": gain,
        "se": se,
        "t": t,
        "critical": critical,
        "replaced": bool(t > critical),
    }


def choose(c: Candidates, rule: str, w: np.ndarray | None = None) -> np.ndarray:
    """(T,) weights of the trials `rule` chooses on the subjects weighted by `w` (S,) (default: each once)."""
    w = np.ones(len(c.subjects)) if w is None else w
    out = np.zeros(len(c.ids))
    scores = c.scores[c.metric]
    mean, se = _mean_se(scores, w)
    best = int(np.argmax(mean))
    if rule == "best":
        out[best] = 1.0
    elif rule == "one-se":
        eligible = np.flatnonzero(mean >= mean[best] - se[best] - 1e-12)
        out[eligible[np.lexsort((-mean[eligible], c.costs[eligible]))[0]]] = 1.0
    elif rule == "guard":
        test = guard_test(c, w)
        out[best if test is None or test["replaced"] else c.base] = 1.0
    elif rule == "ensemble":
        out = _ensemble_selection(c, w)
    else:
        raise ValueError(f"unknown selection rule {rule!r}")
    return out


def _ensemble_selection(c: Candidates, w: np.ndarray) -> np.ndarray:
    """Caruana et al. (2004): add, with replacement, the trial whose probabilities averaged with the ensemble's
    score best on the weighted subjects; keep the best prefix (the shorter on ties)."""
    used = w[c.subjects.index] > 0  # windows of in-bag subjects only
    sub = c.subjects.windows(used)
    proba = c.proba[:, used]  # (T, m, C)
    total = np.zeros(proba.shape[1:])
    counts = np.zeros(len(c.ids))
    best_score, best_counts = -math.inf, counts
    for _ in range(c.ensemble_size):
        scores = sub.scores(total[None] + proba, (c.metric,))[c.metric] @ w / w.sum()  # (T,)
        t = int(np.argmax(scores))
        total += proba[t]
        counts[t] += 1
        if scores[t] > best_score + 1e-12:
            best_score, best_counts = scores[t], counts.copy()
    return best_counts / best_counts.sum()


# ---------------------------------------------------------------- BBC-CV


@dataclass
class Reference:
    """A model the choice is compared with on the same subjects: (S,) per-subject scores of each metric."""

    name: str
    scores: dict[str, np.ndarray]


def bbc_cv(
    c: Candidates,
    rule: str,
    n_bootstrap: int,
    seed: int,
    metrics: tuple[str, ...],
    references: tuple[Reference, ...] = (),
) -> dict:
    """Bootstrap bias-corrected CV of `rule`'s choice at the subject level.

    Returns {"estimate": {metric: {estimate, ci_low, ci_high}}, "gain": {reference: {metric: {mean, ci_low,
    ci_high}}}, "n_bootstrap"}: the out-of-bag score of the choice, and its out-of-bag difference from each
    reference on the same subjects, over `n_bootstrap` resamples (percentile intervals).
    """
    rng = np.random.default_rng(seed)
    S = len(c.subjects)
    if S < 2:  # no subject could ever be out of bag
        nan = {"estimate": math.nan, "ci_low": math.nan, "ci_high": math.nan}
        return {
            "estimate": {m: dict(nan) for m in metrics},
            "n_bootstrap": 0,
            "gain": {
                r.name: {m: {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan} for m in metrics}
                for r in references
            },
        }
    chosen = {m: [] for m in metrics}
    gains = {r.name: {m: [] for m in metrics} for r in references}
    while len(chosen[metrics[0]]) < n_bootstrap:
        w = np.bincount(rng.integers(0, S, S), minlength=S).astype(float)
        oob = w == 0
        if not oob.any():
            continue
        weights = choose(c, rule, w)
        members = np.flatnonzero(weights)
        if len(members) == 1:
            scores = {m: c.scores[m][members[0]] for m in metrics}
        else:
            scores = c.subjects.scores(np.tensordot(weights, c.proba, axes=1), metrics)
        for m in metrics:
            chosen[m].append(scores[m][oob].mean())
            for r in references:
                gains[r.name][m].append(scores[m][oob].mean() - r.scores[m][oob].mean())
    return {
        "estimate": {m: _interval(np.array(v), "estimate") for m, v in chosen.items()},
        "gain": {name: {m: _interval(np.array(v), "mean") for m, v in by.items()} for name, by in gains.items()},
        "n_bootstrap": n_bootstrap,
    }


def _interval(values: np.ndarray, key: str) -> dict[str, float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    return {
        key: float(values.mean()),
        "ci_low": float(np.percentile(values, tail)),
        "ci_high": float(np.percentile(values, 100 - tail)),
    }


# ---------------------------------------------------------------- what a search reports


@dataclass
class Selection:
    """The final choice of a search, its honest estimate and the evidence for "did the search help?"."""

    rule: str
    weights: dict[str, float]  # trial id -> weight of the final model (one entry unless ensemble)
    summary: dict  # the search metrics JSON's selection part (see `select`)


def select(
    store: OOFStore,
    ids: list[str],
    costs: list[float],
    base: str | None,
    rule: str,
    metric: str,
    *,
    n_bootstrap: int,
    seed: int,
    ensemble_size: int = 20,
    guard_alpha: float = 0.05,
    references: dict[str, str] | None = None,
    means: list[float] | None = None,
    compare_rules: bool = True,
) -> Selection:
    """Apply `rule` to the completed trials `ids` (in the order they started) and estimate its choice.

    `costs` ranks the trials for one-se (lower is cheaper); `base` is the base configuration's trial (None when
    it did not complete: guard then takes the best). `references` names trials to compare the choice with
    ({"base": id, "seed": id}); the store's baselines are compared too. `means` are the trials' CV means as the
    search ranked them (over folds; default: over subjects): the naive best is the highest. With
    `compare_rules`, every rule's choice and BBC-CV estimate is reported, so a search shows what the other
    rules would have chosen from the same trials.
    """
    c = Candidates.of(store, ids, costs, base, metric, ensemble_size, guard_alpha)
    metrics = tuple(c.scores)
    refs = [
        Reference(name, {m: c.scores[m][ids.index(t)] for m in metrics})
        for name, t in (references or {}).items()
        if t in ids
    ]
    refs += [Reference(name, c.subjects.scores(p, metrics)) for name, p in store.baselines.items()]
    means = np.asarray(c.scores[metric].mean(1) if means is None else means, dtype=float)
    best = int(np.argmax(means))
    per_rule = {}
    for r in SELECTION_RULES if compare_rules else (rule,):
        bbc = bbc_cv(c, r, n_bootstrap, seed, metrics, tuple(refs) if r == rule else ())
        per_rule[r] = {
            "weights": _named(ids, choose(c, r)),
            "bbc_cv": bbc["estimate"],
            "gain": bbc["gain"],
            "n_bootstrap": bbc["n_bootstrap"],
        }
    final_scores = c.subjects.scores(np.tensordot(choose(c, rule), c.proba, axes=1), metrics)
    summary = {
        "rule": rule,
        "metric": metric,
        "trials_completed": len(ids),
        "subjects": len(c.subjects),
        "base": base,
        # the base configuration's own CV (mean over subjects): no choice in it, so whatever separates it from the
        # base's score on new subjects is the CV's training sets and the trials' fidelity, not selection
        "base_cv": None if base is None else float(c.scores[metric][ids.index(base)].mean()),
        "final": {"weights": per_rule[rule]["weights"], "cv": {m: float(final_scores[m].mean()) for m in metrics}},
        "naive_best": {"trial": ids[best], "cv": float(means[best])},
        # the naive best of the search metric as the search ranked it; of accuracy, the same trial's
        **{
            ("bbc_cv" if m == metric else f"bbc_cv_{m}"): {
                "metric": m,
                **per_rule[rule]["bbc_cv"][m],
                "naive_best_cv": float(means[best]) if m == metric else float(c.scores[m][best].mean()),
                "n_bootstrap": per_rule[rule]["n_bootstrap"],
            }
            for m in metrics
        },
        "gain_bbc_cv": per_rule[rule]["gain"],
        "out_of_fold": out_of_fold_comparison(c.subjects, final_scores, refs, metrics),
        "guard": guard_test(c),
        **(
            {"rules": {r: {"weights": v["weights"], "bbc_cv": v["bbc_cv"]} for r, v in per_rule.items()}}
            if compare_rules
            else {}
        ),
    }
    return Selection(rule, per_rule[rule]["weights"], summary)


def describe_choice(weights: dict[str, float]) -> str:
    """ "trial a" for one trial; "trial a x 0.50, trial b x 0.50" for an ensemble."""
    return ", ".join(f"trial {t}" + (f" x {w:.2f}" if len(weights) > 1 else "") for t, w in weights.items())


def _named(ids: list[str], weights: np.ndarray) -> dict[str, float]:
    return {ids[i]: float(weights[i]) for i in np.flatnonzero(weights)}


def out_of_fold_comparison(
    subjects: Subjects, final: dict[str, np.ndarray], refs: list[Reference], metrics: tuple[str, ...]
) -> dict:
    """The final choice against each reference on the search subjects' out-of-fold predictions: per-subject
    scores, the mean paired difference with a bootstrap interval over subjects, and Wilcoxon p-values
    Holm-corrected over the references (optimistic for the final choice, which was made on these subjects); with
    fewer than MIN_TEST_SUBJECTS subjects, no tests (NaN)."""
    rng = np.random.default_rng(0)
    names = [str(s) for s in subjects.names]
    out = {
        "per_subject": {
            name: {m: dict(zip(names, map(float, scores[m]))) for m in metrics}
            for name, scores in [("final", final), *((r.name, r.scores) for r in refs)]
        },
        "against": {r.name: {} for r in refs},
    }
    for m in metrics:
        tests = [
            paired_wilcoxon(final[m], r.scores[m])
            if len(names) >= MIN_TEST_SUBJECTS
            else {"p_value": math.nan, "n": len(names)}
            for r in refs
        ]
        for r, test, p_holm in zip(refs, tests, holm([t["p_value"] for t in tests])):
            diff = final[m] - r.scores[m]
            boot = diff[rng.integers(0, len(diff), (2000, len(diff)))].mean(1)
            out["against"][r.name][m] = {
                **_interval(boot, "mean_difference"),
                "mean_difference": float(diff.mean()),
                "p_value": test["p_value"],
                "p_holm": p_holm,
                "n": test["n"],
            }
    return out


def trials_curve(
    store: OOFStore,
    ids: list[str],
    costs: list[float],
    base: str | None,
    rule: str,
    metric: str,
    *,
    n_bootstrap: int,
    seed: int,
    ensemble_size: int = 20,
    guard_alpha: float = 0.05,
    means: list[float] | None = None,
    points: int = 12,
) -> list[dict]:
    """Best-so-far CV (`means` as in `select`) and the BBC-CV estimate of `rule` against the number of completed
    trials (the first t, in the order they started), at up to `points` values of t."""
    c = Candidates.of(store, ids, costs, base, metric, ensemble_size, guard_alpha)
    means = np.asarray(c.scores[metric].mean(1) if means is None else means, dtype=float)
    sizes = sorted({int(round(t)) for t in np.geomspace(1, len(ids), min(points, len(ids)))} | {len(ids)})
    return [
        {
            "trials": t,
            "naive_best_cv": float(means[:t].max()),
            "n_bootstrap": n_bootstrap,
            **bbc_cv(c.head(t), rule, n_bootstrap, seed, (metric,))["estimate"][metric],
        }
        for t in sizes
    ]


@dataclass
class TrialJudge:
    """One search's selection settings applied to its trials: live after each finished trial, and at the end.

    Trials are records with `trial_id`, `params`, `status` and `mean` (`emoma.tune.watch.TrialRecord`)."""

    store: OOFStore  # the search's windows; trials are added as they finish
    configs: Callable[[dict], Config]  # a trial's parameters -> the configuration it stands for
    base_point: dict
    seed_point: dict
    settings: SearchConfig
    n_features: int  # the table's candidate features (what n_features 0 reads)
    seed: int
    costs: dict[str, int] = field(default_factory=dict)

    def select(self, trials: list, *, curve: bool = False, live: bool = False) -> tuple[Selection, list]:
        """The final choice among the completed trials with every window scored, its BBC-CV estimate (and with
        `curve`, the estimate against the number of trials). `live`: the search's own rule only, on a fifth of
        the resamples (a partial report refreshed after every trial)."""
        s = self.settings
        ids, costs, base, seed = self._candidates(trials)
        means = [next(t.mean for t in trials if t.trial_id == i) for i in ids]
        n_bootstrap = max(100, s.bbc_bootstrap // 5) if live else s.bbc_bootstrap
        references = {k: v for k, v in (("base", base), ("seed", seed)) if v is not None}
        selection = select(
            self.store,
            ids,
            costs,
            base,
            s.select,
            s.metric,
            n_bootstrap=n_bootstrap,
            seed=self.seed,
            ensemble_size=s.ensemble_size,
            guard_alpha=s.guard_alpha,
            references=references,
            means=means,
            compare_rules=not live,
        )
        points = (
            trials_curve(
                self.store,
                ids,
                costs,
                base,
                s.select,
                s.metric,
                n_bootstrap=max(100, s.bbc_bootstrap // 5),
                seed=self.seed,
                ensemble_size=s.ensemble_size,
                guard_alpha=s.guard_alpha,
                means=means,
            )
            if curve
            else []
        )
        return selection, points

    def choice(self, trials: list, rule: str) -> dict[str, float]:
        """What `rule` chooses from these trials (trial id -> weight), without estimating it."""
        ids, costs, base, _ = self._candidates(trials)
        c = Candidates.of(
            self.store, ids, costs, base, self.settings.metric, self.settings.ensemble_size, self.settings.guard_alpha
        )
        return _named(ids, choose(c, rule))

    def _candidates(self, trials: list) -> tuple[list[str], list[int], str | None, str | None]:
        """Completed trials with every window scored (ids, costs), and the base and seed trials among them."""
        usable = [t for t in trials if t.status == "completed" and self.store.complete(t.trial_id)]
        if not usable:
            raise UserError(
                "no completed trial has out-of-fold predictions for every window (were its checkpoints "
                "lost?): start a new experiment"
            )
        ids = [t.trial_id for t in usable]
        base = next((t.trial_id for t in usable if same_params(t.params, self.base_point)), None)
        seed = next((t.trial_id for t in usable if same_params(t.params, self.seed_point)), None)
        return ids, [self.cost(t) for t in usable], base, seed

    def cost(self, trial) -> int:
        if trial.trial_id not in self.costs:
            model = self.configs(trial.params).model
            n_inputs = min(model.n_features or self.n_features, self.n_features)
            self.costs[trial.trial_id] = prediction_cost(model, n_inputs, len(self.store.class_names)) * model.ensemble
        return self.costs[trial.trial_id]
