"""Molecule-level uncertainty of an ablation's paired comparisons, from every run's stored test predictions.

The paired t-test over seeds (`statistics.paired_comparison`) covers training randomness only: every run is
scored on the same few test molecules, and which molecules those are is a second source of error, shared by
every seed (on ClinTox's test split, 9 and 10 positives per task, one ROC-AUC's Hanley-McNeil standard error
is 0.05-0.08). Two tests here cover it:

- `paired_bootstrap`: a two-level bootstrap of the mean (variant - baseline) test score. Each replicate
  resamples the paired seeds and, independently, the test molecules, and recomputes every run's metric on
  those molecules: one molecule draw per test set and replicate, used by both arms and by every seed, so the
  comparison stays paired and the molecules' error is not averaged away over seeds. Scores follow OGB's
  Evaluator (`ggt_search.metrics.score`): per task over its labelled molecules, ROC-AUC and AP only on tasks
  with both classes among them, then the mean over tasks. A resample is a vector of molecule counts, so every
  replicate's score comes from one pass over a run's predictions: ROC-AUC as the count-weighted Mann-Whitney
  statistic (each positive's wins over the negatives, ties half, times the counts: one matrix product), AP
  from one sort, RMSE and MAE as weighted means. 19 variants x 10 seeds x 150 molecules x 2000 replicates
  take about 2 s on one core.
- `delong_test`: DeLong's paired test of two ROC-AUCs on the same molecules (one split, one seed's two models,
  one task), in the fast form of Sun & Xu (2014).

`with_bootstrap` gives the ablation report's comparison tables their column, and `bootstrap_note` the
sentences below each. Both tests take arrays; a study's runs give them through `ablate.run_predictions`, e.g.
`delong_test(p.labels[:, 0], p.predicted[:, 0], q.predicted[:, 0])` for two runs' test `Predictions` p, q.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from optuna.artifacts.exceptions import ArtifactNotFound
from scipy import stats
from threadpoolctl import threadpool_limits

from ggt_search.report.statistics import ALPHA
from ggt_search.trials import StoredTestPredictions

if TYPE_CHECKING:  # the report's module imports this one
    from ggt_search.report.ablation import AblationRuns

REPLICATES = 2000  # bootstrap replicates per comparison
SEED = 0  # every comparison's bootstrap starts from this generator seed: a report is reproducible
COLUMN = "bootstrap over seeds and molecules"
NO_PREDICTIONS = "no stored predictions"


@dataclass
class PairedRuns:
    """Paired runs of a variant and the baseline on one test set (cell i of each arm: the same seed)."""

    labels: np.ndarray  # [molecules, tasks], NaN = missing label
    variant: np.ndarray  # [cells, molecules, tasks] the variant's test predictions
    baseline: np.ndarray  # [cells, molecules, tasks] the baseline's, cell by cell the same seeds


def molecule_counts(rng: np.random.Generator, molecules: int, replicates: int) -> np.ndarray:
    """[molecules, replicates]: how often each replicate's resample (with replacement) draws each molecule,
    as floats, molecules first (the metrics gather molecules in score order)."""
    draws = rng.integers(molecules, size=(replicates, molecules))
    flat = draws + molecules * np.arange(replicates)[:, None]
    counts = np.bincount(flat.ravel(), minlength=replicates * molecules).reshape(replicates, molecules)
    return np.ascontiguousarray(counts.T, dtype=float)


def resampled_scores(metric: str, labels: np.ndarray, predicted: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each run's score in each replicate, [runs, replicates]: `metric` of the runs' predictions `predicted`
    [runs, molecules, tasks] on the molecules drawn `counts` [molecules, replicates] times, as
    `ggt_search.metrics.score` scores them (NaN where no task has both classes among the drawn molecules)."""
    per_task = np.stack(
        [
            _task_scores(metric, labels[labelled, task], predicted[:, labelled, task], counts[labelled])
            for task in range(labels.shape[1])
            if (labelled := ~np.isnan(labels[:, task])).any()
        ]
    )  # [tasks, runs, replicates]
    if metric in ("rocauc", "ap"):  # tasks without both classes in a replicate are left out of its mean
        defined = ~np.isnan(per_task)
        return np.where(defined.any(0), np.nansum(per_task, 0) / np.maximum(defined.sum(0), 1), np.nan)
    return per_task.mean(0)


def _task_scores(metric: str, truth: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """One task's `metric` per run and replicate [runs, replicates], of the runs' `scores` [runs, molecules]
    with the molecules weighted by their `counts` [molecules, replicates]."""
    scores = scores.astype(float)
    if metric in ("rmse", "mae"):
        errors = scores - truth
        mean = ((errors**2 if metric == "rmse" else np.abs(errors)) @ counts) / counts.sum(0)
        return np.sqrt(mean) if metric == "rmse" else mean
    positive = truth == 1
    drawn_positives, drawn_negatives = counts[positive], counts[~positive]
    positives, negatives = drawn_positives.sum(0), drawn_negatives.sum(0)
    if metric == "rocauc":  # Mann-Whitney: each drawn positive beats the drawn negatives below it, half the tied
        beaten = [
            (((p[:, None] > n) + 0.5 * (p[:, None] == n)) @ drawn_negatives * drawn_positives).sum(0)
            for p, n in zip(scores[:, positive], scores[:, ~positive], strict=True)
        ]
        value, scale = np.stack(beaten), positives * negatives
    elif metric == "ap":  # sklearn's average precision: down the thresholds, each precision times the recall added
        value, scale = np.stack([_average_precision(truth, s, counts) for s in scores]), positives
    else:
        raise ValueError(f"unknown metric {metric!r}")
    defined = (positives > 0) & (negatives > 0)  # a replicate without both classes has no score for this task
    return np.where(defined, value / np.where(defined, scale, 1), np.nan)


def _average_precision(truth: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Average precision times the drawn positives, per replicate: sum over thresholds of precision x positives."""
    order = np.argsort(-scores, kind="stable")
    ordered = scores[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # tied scores form one threshold
    drawn, positive = counts[order], truth[order] == 1
    pos = np.add.reduceat(drawn * positive[:, None], starts)  # [thresholds, replicates]
    true_positives = np.cumsum(pos, axis=0)
    taken = np.cumsum(np.add.reduceat(drawn, starts), axis=0)
    precision = np.divide(true_positives, taken, out=np.zeros_like(taken), where=taken > 0)
    return (pos * precision).sum(0)


def paired_bootstrap(metric: str, runs: list[PairedRuns], replicates: int = REPLICATES, seed: int = SEED) -> dict:
    """The two-level paired bootstrap of the mean (variant - baseline) score over cells (seeds, or (split,
    seed) where each split has its own test set, one `PairedRuns` each). Each replicate draws the molecules of
    each test set once (both arms and every cell get the same draw) and, independently, the cells with
    replacement from all of them, and averages the drawn cells' differences. Returns the observed mean
    difference, the 95% percentile interval, the two-sided bootstrap p (twice the smaller share of replicates
    on either side of 0, with the +1 correction of Davison & Hinkley: never 0) and the replicates used
    (a replicate without both classes in any task, possible on tiny test sets, is left out)."""
    rng = np.random.default_rng(seed)
    differences, observed = [], []
    for paired in runs:
        cells = len(paired.variant)
        counts = np.column_stack([np.ones(len(paired.labels)), molecule_counts(rng, len(paired.labels), replicates)])
        predicted = np.concatenate([paired.variant, paired.baseline])
        with threadpool_limits(1, user_api="blas"):  # small products: BLAS threads would only wait on each other
            scores = resampled_scores(metric, paired.labels, predicted, counts)
        difference = scores[:cells] - scores[cells:]  # [cells, 1 + replicates]: first all molecules once
        observed.append(difference[:, 0])
        differences.append(difference[:, 1:].T)
    differences = np.concatenate(differences, axis=1)  # [replicates, cells]
    cells = differences.shape[1]
    drawn = rng.integers(cells, size=(replicates, cells))
    replicate_means = np.take_along_axis(differences, drawn, axis=1).mean(1)
    means = replicate_means[~np.isnan(replicate_means)]
    low, high = np.quantile(means, [ALPHA / 2, 1 - ALPHA / 2])
    extreme = min(np.sum(means <= 0), np.sum(means >= 0))
    return {
        "boot_diff": float(np.concatenate(observed).mean()),
        "boot_low": float(low),
        "boot_high": float(high),
        "p_boot": float(min(1.0, 2 * (extreme + 1) / (len(means) + 1))),
        "replicates": len(means),
        "replicate_means": replicate_means,  # [replicates], NaN kept: replicate r of every comparison alike
    }


def delong_test(labels: np.ndarray, first: np.ndarray, second: np.ndarray) -> dict:
    """DeLong's paired test (DeLong, DeLong & Clarke-Pearson, Biometrics 1988) that two models' ROC-AUCs on
    the same molecules of one binary task are equal, in the fast form of Sun & Xu (IEEE Signal Processing
    Letters 21(11), 2014): each molecule's structural component comes from midranks, among all molecules and
    within its class, instead of the O(positives x negatives) comparisons. Molecules without a label are left
    out. Returns both AUCs, their difference, its standard error, z and the two-sided normal p.

    Checked (tests/test_resampling.py) against yandexdataschool/roc_comparison's compare_auc_delong_xu.py, the
    common Python implementation of the same algorithm, on its own test case and a paired one."""
    labels, first, second = (np.asarray(a, dtype=float).ravel() for a in (labels, first, second))
    labelled = ~np.isnan(labels)
    positive = labels[labelled] == 1
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong's test needs at least 2 molecules of each class, got {m} positive and {n} negative")
    scores = np.stack([first[labelled], second[labelled]])  # [models, molecules]
    overall = stats.rankdata(scores, axis=1)  # midranks
    within_positives = stats.rankdata(scores[:, positive], axis=1)
    within_negatives = stats.rankdata(scores[:, ~positive], axis=1)
    aucs = (overall[:, positive].sum(1) / m - (m + 1) / 2) / n
    v10 = (overall[:, positive] - within_positives) / n  # per positive: the share of negatives it outranks
    v01 = 1 - (overall[:, ~positive] - within_negatives) / m  # per negative: the share of positives above it
    covariance = np.cov(v10) / m + np.cov(v01) / n
    difference = float(aucs[0] - aucs[1])
    variance = float(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1])
    se = float(np.sqrt(max(variance, 0.0)))
    z = difference / se if se > 0 else 0.0 if difference == 0 else float(np.copysign(np.inf, difference))
    return {
        "auc_first": float(aucs[0]),
        "auc_second": float(aucs[1]),
        "difference": difference,
        "covariance": covariance,
        "se": se,
        "z": z,
        "p": float(2 * stats.norm.sf(abs(z))),
    }


def simultaneous_bootstrap(observed: np.ndarray, means: np.ndarray, level: float) -> np.ndarray:
    """The bootstrap max-t intervals of several comparisons' mean differences `observed` [comparisons],
    from replicates drawn jointly for all of them (`means` [replicates, comparisons], NaN where a replicate
    has no score): each replicate's largest |mean* - observed| / sd* over the comparisons, and its (1 - level)
    quantile q, so observed ± q·sd* covers every comparison at once with probability about 1 - level (the
    bootstrap form of the sign-flip max-t, Romano & Wolf 2005). Returns the half-widths q·sd*."""
    sd = np.nanstd(means, axis=0, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        deviation = np.abs(means - observed) / sd
    largest = np.nanmax(np.where(np.isnan(deviation), -np.inf, deviation), axis=1)
    return np.quantile(largest[np.isfinite(largest)], 1 - level) * sd


def with_bootstrap(
    comparison: pd.DataFrame, datasets: list[AblationRuns], predictions: StoredTestPredictions
) -> pd.DataFrame:
    """`comparison` (one row per dataset and variant, `ablation.compare`'s) with the bootstrap of each row's
    matching cells: boot_low, boot_high, p_boot (95%, the comparison alone), boot_sim_low, boot_sim_high (at the
    verdicts' simultaneous level: every variant of the dataset at once), and the report's column COLUMN, where
    a comparison whose runs stored no predictions (they ran before predictions were stored) says so.

    Every comparison's bootstrap starts from the same generator seed, so comparisons over the same cells and
    test sets draw the same molecules and seeds replicate by replicate: one joint bootstrap of all of them, as
    the max-t needs. Comparisons over other cells (a variant missing a seed) form their own joint groups, each
    at its share of the level (Bonferroni between the groups)."""
    rows, groups = [], {}
    for d in datasets:
        for variant, own, base in d.paired():
            artifacts = list(zip(own["predictions"], base["predictions"], strict=True))
            rows.append({"dataset": d.dataset, "variant": variant} | _bootstrap_row(d.metric, artifacts, predictions))
            if "replicate_means" in rows[-1]:
                groups.setdefault((d.dataset, tuple(own.index)), []).append(rows[-1])
    level = comparison["level"].iloc[0]  # one per-dataset level for all datasets (`ablation.compare`)
    per_dataset = Counter(dataset for (dataset, _), group in groups.items() for _ in group)
    for (dataset, _), group in groups.items():
        half = simultaneous_bootstrap(
            np.array([r["boot_diff"] for r in group]),
            np.column_stack([r.pop("replicate_means") for r in group]),
            level * len(group) / per_dataset[dataset],
        )
        for r, h in zip(group, half, strict=True):
            r["boot_sim_low"], r["boot_sim_high"] = r["boot_diff"] - h, r["boot_diff"] + h
            r[COLUMN] = (
                f"[{r['boot_sim_low']:+.4f}, {r['boot_sim_high']:+.4f}]; 95% [{r['boot_low']:+.4f}, "
                f"{r['boot_high']:+.4f}], p = {r['p_boot']:.3g}"
            )
    if not rows:
        return comparison
    return comparison.merge(pd.DataFrame(rows), on=["dataset", "variant"], how="left")


def _bootstrap_row(metric: str, artifacts: list[tuple], predictions: StoredTestPredictions) -> dict:
    """The bootstrap's columns for one comparison, from its (variant, baseline) runs' artifact ids, cell by cell,
    with its replicates' mean differences (`replicate_means`) for the joint intervals."""
    missing = sum(bool(pd.isna(a)) for pair in artifacts for a in pair)
    if missing:
        runs = 2 * len(artifacts)
        return {COLUMN: NO_PREDICTIONS if missing == runs else f"{NO_PREDICTIONS} for {missing} of {runs} runs"}
    try:
        loaded = [(predictions[variant], predictions[baseline]) for variant, baseline in artifacts]
    except ArtifactNotFound:
        return {COLUMN: f"stored predictions missing from {predictions.folder}"}
    test_sets: dict[bytes, list] = {}  # runs on the same test molecules share each replicate's molecule draw
    for own, base in loaded:
        if not np.array_equal(own.graphs, base.graphs):
            return {COLUMN: "paired runs scored different test molecules"}
        test_sets.setdefault(own.graphs.tobytes(), []).append((own, base))
    return paired_bootstrap(
        metric,
        [
            PairedRuns(
                pairs[0][0].labels, np.stack([v.predicted for v, _ in pairs]), np.stack([b.predicted for _, b in pairs])
            )
            for pairs in test_sets.values()
        ],
    )


def bootstrap_note(comparison: pd.DataFrame) -> str:
    """The sentence below a dataset's comparison table that says what the bootstrap column covers, and each
    helps / hurts verdict whose difference the bootstrap's simultaneous interval does not exclude."""
    text = (
        f"The {COLUMN} ({REPLICATES} replicates) resamples the paired seeds and, independently, the test molecules "
        "(one draw for both arms, every seed and every variant, so the comparisons stay paired and jointly drawn) "
        "and recomputes every run's score: its intervals cover which molecules happen to be in the test set as "
        "well as training randomness, while the t-test covers training randomness alone. First the simultaneous "
        "interval at the verdicts' level (bootstrap max-t over the dataset's variants), then the comparison's own "
        "95% percentile interval and two-sided p."
    )
    for r in comparison.to_dict("records"):
        low, high = r.get("boot_sim_low", np.nan), r.get("boot_sim_high", np.nan)
        if r.get("verdict") in ("helps", "hurts") and low <= 0 <= high:
            text += (
                f" {r['variant']}: {r['verdict']} by the t-test's simultaneous interval, but the bootstrap's "
                f"[{low:+.4f}, {high:+.4f}] contains 0: the difference is within the test molecules' sampling "
                "error; its verdict rests on the t-test alone."
            )
    return text
