"""A report's statistics: paired comparisons over matching seeds; simultaneous intervals for many
variants against one shared baseline (a sign-flip max-t, Westfall and Young 1993); equivalence tests
(TOST) against the smallest effect of interest; a random-effects meta-analysis that pools one idea's
effects over datasets (DerSimonian and Laird 1986); Holm's correction; t-intervals; and the power of
the paired t-test."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats
from statsmodels.stats.multitest import multipletests

ALPHA = 0.05  # family-wise error rate of each report's verdicts
POWER = 0.8  # the power at which detectable effects are stated
EXACT_FLIPS = 12  # up to this many seeds the max-t enumerates every sign pattern (4,096); above, it draws
FLIP_DRAWS = 20_000
SUSPECT_MADS = 3  # how far outside the other variants a mean must be to flag the implementation


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone), in the input order."""
    return multipletests(p_values, method="holm")[1].tolist()


def dataset_level(alpha: float, datasets: int) -> float:
    """The error rate per dataset at which independent datasets' families hold `alpha` together:
    1 - (1 - alpha)^(1/D) (Sidak), since the datasets' runs share nothing."""
    return 1 - (1 - alpha) ** (1 / datasets)


def sign_flips(cells: int) -> np.ndarray:
    """Sign patterns over the cells (seeds), one row each: all 2^n for n <= EXACT_FLIPS, else
    FLIP_DRAWS rows from a generator with a fixed seed (two report runs agree)."""
    if cells <= EXACT_FLIPS:
        return ((np.arange(2**cells)[:, None] >> np.arange(cells)) & 1) * 2.0 - 1
    return np.random.default_rng(0).choice([-1.0, 1.0], size=(FLIP_DRAWS, cells))


@dataclass
class MaxT:
    """Simultaneous intervals of several paired mean differences that share their cells (seeds)."""

    mean: np.ndarray
    se: np.ndarray
    n: np.ndarray
    critical: float  # the (1 - level) quantile of the max-|t| over the comparisons
    null: np.ndarray  # the max-|t| of each sign pattern, sorted

    @property
    def low(self) -> np.ndarray:
        return self.mean - self.critical * self.se

    @property
    def high(self) -> np.ndarray:
        return self.mean + self.critical * self.se

    def adjusted_p(self, statistic: np.ndarray) -> np.ndarray:
        """(b + 1) / (N + 1), b of the N sign patterns reaching `statistic` with their max-|t|: at least
        1 / (N + 1), and <= level exactly when statistic > critical."""
        reaching = len(self.null) - np.searchsorted(self.null, statistic, side="left")
        return (reaching + 1) / (len(self.null) + 1)


def max_t(differences: np.ndarray, level: float) -> MaxT:
    """Westfall-Young single-step max-t over paired differences [cells, comparisons] (NaN: a comparison
    lacks that cell). Every comparison shares one baseline, so their differences are dependent through
    it; flipping a cell's sign for all comparisons at once keeps that dependence (Dunnett's
    many-to-one setting, without assuming normality). The residuals (differences minus their means)
    are flipped, so the max-|t| is that of the pivots (mean - true mean) / se whatever the true effects,
    and mean +- critical * se covers all of them at once with probability about 1 - level."""
    present = ~np.isnan(differences)
    n = present.sum(0)
    mean = np.nanmean(differences, axis=0)
    residual = np.where(present, differences - mean, 0.0)
    se = np.sqrt((residual**2).sum(0) / (n - 1) / n)
    flipped_mean = sign_flips(len(differences)) @ residual / n
    flipped_var = ((residual**2).sum(0) - n * flipped_mean**2) / (n - 1)  # a flip keeps each squared residual
    with np.errstate(divide="ignore", invalid="ignore"):  # at 2 seeds half the flips have no spread: t = inf
        flipped_t = np.abs(flipped_mean) / np.sqrt(np.clip(flipped_var, 0, None) / n)
    null = np.sort(np.nan_to_num(flipped_t, nan=0.0, posinf=np.inf).max(1))
    # Patterns that may reach the statistic of a rejection, with the observed one counted among the patterns
    # (p = (b + 1) / (N + 1), Phipson & Smyth 2010: never 0); none at all (a critical value of inf) when even
    # b = 0 is above the level, as with 5 seeds at 3 datasets' level.
    allowed = int(np.floor(level * (len(null) + 1) + 1e-9)) - 1
    return MaxT(mean, se, n, float(null[len(null) - allowed - 1]) if allowed >= 0 else np.inf, null)


def tost_p(diff: np.ndarray, margin: float) -> float:
    """Two one-sided paired t-tests of |true difference| < margin (Schuirmann 1987): the larger one-sided p.
    statsmodels' ttost_paired(variant, baseline, -margin, margin) gives the same."""
    n = len(diff)
    mean, se = float(np.mean(diff)), float(np.std(diff, ddof=1) / np.sqrt(n))
    return float(max(stats.t.sf((mean + margin) / se, n - 1), stats.t.sf((margin - mean) / se, n - 1)))


def default_margin(metric: str, baseline_mean: float) -> float:
    """The smallest effect of interest when an ablation file gives no `effect`: 0.02 for scores in
    [0, 1] (ROC-AUC, AP), 5% of the baseline's mean for errors in the target's units (RMSE, MAE)."""
    return 0.02 if metric in ("rocauc", "ap") else 0.05 * abs(baseline_mean)


def suspect(means: dict[str, float], trivial: dict[str, float], higher: bool) -> dict[str, str]:
    """Variants whose mean score points at a broken implementation rather than at the idea, with why:
    no better than a constant prediction, or worse than the median of the others (the baseline among
    them) by more than SUSPECT_MADS robust sds (the MAD, scaled to the normal sd) and as far from
    the nearest other. Only the first key, the baseline, is never judged."""
    found = {}
    sign = 1 if higher else -1
    for variant, mean in list(means.items())[1:]:
        others = np.array([m for v, m in means.items() if v != variant])
        spread = stats.median_abs_deviation(others, scale="normal")
        if sign * (mean - trivial[variant]) <= 0:
            found[variant] = f"its mean {mean:.4f} is no better than a constant prediction's {trivial[variant]:.4f}"
        elif (
            len(others) >= 3
            and spread > 0
            and sign * (np.median(others) - mean) > SUSPECT_MADS * spread
            and np.min(np.abs(others - mean)) > SUSPECT_MADS * spread
        ):
            found[variant] = (
                f"its mean {mean:.4f} is {abs(mean - np.median(others)) / spread:.0f} robust sds worse than the other "
                f"variants' median {np.median(others):.4f}, and {np.min(np.abs(others - mean)) / spread:.0f} from "
                "the nearest"
            )
    return found


def standardised_effect(diff: np.ndarray, better_sign: int) -> tuple[float, float]:
    """The paired standardised effect d_z = mean / sd of the differences, signed so + is better, and its
    large-sample variance 1/n + d^2/(2n)."""
    n = len(diff)
    d = better_sign * float(np.mean(diff) / np.std(diff, ddof=1))
    return d, 1 / n + d**2 / (2 * n)


def random_effects(effects: np.ndarray, variances: np.ndarray) -> dict:
    """DerSimonian-Laird random-effects pooling: the moment estimate of the between-dataset variance
    tau^2 (clipped at 0), the inverse-variance weighted mean with weights 1/(v + tau^2), its normal
    95% interval and two-sided p, and I^2 (the share of the spread that is heterogeneity, clipped at 0)."""
    effects, variances = np.asarray(effects, float), np.asarray(variances, float)
    k, w = len(effects), 1 / variances
    fixed = np.sum(w * effects) / np.sum(w)
    q = float(np.sum(w * (effects - fixed) ** 2))
    tau2 = max(0.0, (q - (k - 1)) / (np.sum(w) - np.sum(w**2) / np.sum(w))) if k > 1 else 0.0
    w_random = 1 / (variances + tau2)
    pooled, se = float(np.sum(w_random * effects) / np.sum(w_random)), float(np.sqrt(1 / np.sum(w_random)))
    z = stats.norm.ppf(1 - ALPHA / 2)
    return {
        "effect": pooled,
        "se": se,
        "low": pooled - z * se,
        "high": pooled + z * se,
        "p": float(2 * stats.norm.sf(abs(pooled) / se)),
        "tau2": tau2,
        "i2": max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0,
        "datasets": k,
    }


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


def simultaneous_detectable(sd: float, n: int, critical: float, target: float = POWER) -> float:
    """The smallest true difference a test that rejects when |t| > `critical` (a max-t's c) detects with
    `target` power: the paired t-test's detectable effect at the level whose critical value is c (t's
    tails standing in for the sign-flip distribution's). Infinite when no difference reaches that power:
    with very few seeds the sign flips cannot reject at all (c is infinite)."""
    alpha = 2 * float(stats.t.sf(critical, n - 1))
    if alpha <= 0 or power(1000 * sd, sd, n, alpha) < target:
        return float("inf")
    return detectable_effect(sd, n, alpha, target)


def seeds_needed(effect: float, sd: float, alpha: float, target: float = POWER, most: int = 1000) -> int | None:
    """Paired seeds for `target` power against `effect`, if the observed spread holds (None: more than `most`)."""
    return next((n for n in range(2, most + 1) if power(effect, sd, n, alpha) >= target), None)


def paired_comparison(variant: np.ndarray, baseline: np.ndarray, family: int = 1, effect: float | None = None) -> dict:
    """Mean paired difference, its 95% t-interval, the paired t-test's p-value, and the
    power analysis at the Bonferroni level of a family of `family` comparisons (Holm's strictest
    step). With fewer than two pairs, or differences without spread, nothing is testable and no
    p-value is given. The simultaneous interval needs the whole family: `compare` adds it."""
    diff = np.asarray(variant, dtype=float) - np.asarray(baseline, dtype=float)
    n = len(diff)
    row = {"n": n, "mean_diff": float(diff.mean()) if n else float("nan"), "testable": False}
    if n < 2:
        return row | {"why": f"{n} paired seed{'s' if n != 1 else ''}; a paired test needs at least 2"}
    sd = float(diff.std(ddof=1))
    if np.allclose(diff, diff[0], rtol=0, atol=1e-12):  # float noise is no spread
        return row | {"why": f"all {n} seeds gave the same difference ({diff[0]:+.4f}): no spread to test against"}
    row |= {"testable": True, "sd": sd, "se": sd / np.sqrt(n)}
    row["ci_low"], row["ci_high"] = t_interval(diff)
    row["p_t"] = float(stats.ttest_rel(variant, baseline).pvalue)
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
