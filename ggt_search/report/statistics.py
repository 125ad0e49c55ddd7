"""A report's statistics: paired comparisons over matching seeds, Holm's step-down correction over a
report's family of comparisons, t-intervals, and the power of the paired t-test."""

from __future__ import annotations

import numpy as np
from scipy import optimize, stats
from statsmodels.stats.multitest import multipletests

ALPHA = 0.05  # family-wise error rate of each report's verdicts
POWER = 0.8  # the power at which detectable effects are stated


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone), in the input order."""
    return multipletests(p_values, method="holm")[1].tolist()


def holm_levels(p_values: list[float], alpha: float = ALPHA) -> list[float]:
    """The level at which Holm's step-down tests each hypothesis, in the input order: alpha / (m - i)
    for the i-th smallest p (from 0) while every smaller p was rejected; from the first step that
    fails on, that step's level (Holm stops there). So a two-sided test at its level rejects exactly
    when the Holm-adjusted p is below alpha, and the t-interval at 1 - level excludes 0 exactly then.

    statsmodels gives the adjusted p-values but not these levels. They are read off `holm`'s: the
    adjusted p-values are monotone in the order of the p-values, and the first k of them are below
    alpha exactly when Holm's first k steps reject, so the levels and the verdicts cannot disagree."""
    m = len(p_values)
    rejected = int(np.sum(np.asarray(holm(p_values)) < alpha))
    steps = np.minimum(np.arange(m), rejected)  # each sorted p's step; all from the failing one on share it
    levels = np.empty(m)
    levels[np.argsort(p_values, kind="stable")] = alpha / (m - steps)  # ties keep their input order
    return levels.tolist()


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The mean's t-interval; (mean, mean) when fewer than 2 values say nothing of the spread."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, mean
    return mean_interval(mean, float(np.std(values, ddof=1)), len(values), level)


def mean_interval(mean: float, sd: float, n: int, level: float) -> tuple[float, float]:
    """The t-interval of a mean of n values with sample standard deviation sd."""
    low, high = stats.t.interval(level, n - 1, loc=mean, scale=sd / np.sqrt(n))
    return float(low), float(high)


def power(effect: float, sd: float, n: int, alpha: float) -> float:
    """Power of the two-sided paired t-test at level alpha to detect a true mean difference `effect`.

    statsmodels' TTestPower computes the same sum, but its lower tail (scipy.special.nctdtr) is NaN
    for large shifts, and so is the whole power: at 2 seeds from a standardised effect of 5.6 on,
    where the power can still be 0.01. The report needs exactly those cases (few seeds, many
    comparisons), so the tail is taken here, where NaN means 0. Tests check both agree elsewhere."""
    df, shift = n - 1, effect / (sd / np.sqrt(n))
    critical = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(critical, df, shift) + np.nan_to_num(stats.nct.cdf(-critical, df, shift)))


def detectable_effect(sd: float, n: int, alpha: float, target: float = POWER) -> float:
    """The smallest true difference the paired t-test detects with `target` power, for this n and spread.
    (TTestPower.solve_power misses this root for n <= 3, its power being NaN there: see `power`.)"""
    return float(optimize.brentq(lambda effect: power(effect, sd, n, alpha) - target, 1e-12 * sd, 1000 * sd))


def seeds_needed(effect: float, sd: float, alpha: float, target: float = POWER, most: int = 1000) -> int | None:
    """Paired seeds for `target` power against `effect`, if the observed spread holds (None: more than `most`)."""
    return next((n for n in range(2, most + 1) if power(effect, sd, n, alpha) >= target), None)


def paired_comparison(variant: np.ndarray, baseline: np.ndarray, family: int = 1, effect: float | None = None) -> dict:
    """Mean paired difference, its 95% t-interval, the paired t-test and Wilcoxon p-values, and the
    power analysis at the Bonferroni level of a family of `family` comparisons (Holm's strictest
    step). With fewer than two pairs, or differences without spread, nothing is testable and no
    p-value is given. The family-adjusted interval needs the whole family: `compare` adds it."""
    diff = np.asarray(variant, dtype=float) - np.asarray(baseline, dtype=float)
    n = len(diff)
    row = {"n": n, "mean_diff": float(diff.mean()) if n else float("nan"), "testable": False}
    if n < 2:
        return row | {"why": f"{n} paired seed{'s' if n != 1 else ''}; a paired test needs at least 2"}
    sd = float(diff.std(ddof=1))
    if np.allclose(diff, diff[0], rtol=0, atol=1e-12):  # float noise is no spread
        return row | {"why": f"all {n} seeds gave the same difference ({diff[0]:+.4f}): no spread to test against"}
    row |= {"testable": True, "sd": sd}
    row["ci_low"], row["ci_high"] = t_interval(diff)
    row["p_t"] = float(stats.ttest_rel(variant, baseline).pvalue)
    row["p_wilcoxon"] = float(stats.wilcoxon(variant, baseline).pvalue) if np.any(diff != 0) else 1.0
    row["detectable"] = detectable_effect(sd, n, ALPHA / family)
    if effect is not None:
        row["seeds_for_effect"] = seeds_needed(effect, sd, ALPHA / family)
    return row


def expected_maximum(values: np.ndarray, higher: bool = True) -> np.ndarray:
    """Dodge et al. 2019 ("Show your work"): the expected best of n draws (with replacement) from
    `values`, for n = 1..len(values). With v(1) <= ... <= v(N), the best of n draws is v(i) with
    probability (i/N)^n - ((i-1)/N)^n. `higher` False: the expected lowest."""
    ordered = np.sort(np.asarray(values, dtype=float))
    if not higher:
        ordered = -ordered[::-1]
    total = len(ordered)
    n = np.arange(1, total + 1)[:, None]
    share = np.arange(1, total + 1)[None, :] / total
    curve = (share**n - (share - 1 / total) ** n) @ ordered
    return curve if higher else -curve


def expected_maximum_band(
    values: np.ndarray, higher: bool = True, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A percentile bootstrap band of `expected_maximum`: the curve of each resample of the values
    (with replacement, the same size), and the (1 - level) / 2 and (1 + level) / 2 quantiles per n."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    curves = np.array([expected_maximum(rng.choice(values, len(values)), higher) for _ in range(resamples)])
    low, high = np.quantile(curves, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return low, high
