"""The report's verdicts: simultaneous intervals (sign-flip max-t), equivalence (TOST), pooling over datasets
(DerSimonian-Laird), suspect variants, convergence, and one family per shared control, checked against
statsmodels, brute force and simulation, and on the committed study's real runs (reports/*/study.db)."""

import itertools
import shutil
import sqlite3

import numpy as np
import optuna
import pytest
from scipy import stats

from ggt_search.ablate import BASELINE
from ggt_search.record import TrialRecord
from ggt_search.report import build_report
from ggt_search.report.ablation import ablation_group, compare, control_difference, pool, power_table
from ggt_search.report.statistics import (
    dataset_level,
    default_margin,
    max_t,
    random_effects,
    simultaneous_detectable,
    standardised_effect,
    suspect,
    tost_p,
)
from tests.conftest import ROOT

DATASETS = ("ogbg-molbbbp", "ogbg-molclintox", "ogbg-molesol")


def shared_baseline_family(rng, effects: np.ndarray, seeds: int) -> np.ndarray:
    """Paired differences [seeds, variants] of variants that share one baseline's runs (noise sd 1 each)."""
    return effects + rng.normal(size=(seeds, len(effects))) - rng.normal(size=(seeds, 1))


def holm_level_intervals(differences: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """The old report's 'family-adjusted CI' of each column of [seeds, comparisons]: its t-interval at the
    level Holm's step-down tested it (alpha / (m - i) for the i-th smallest p; from its first failure on, that one)."""
    n, m = differences.shape
    mean, se = differences.mean(0), stats.sem(differences)
    p = 2 * stats.t.sf(np.abs(mean / se), n - 1)
    levels, step = np.empty(m), 0
    for i, index in enumerate(np.argsort(p)):
        levels[index] = alpha / (m - step)
        step += step == i and p[index] < alpha / (m - i)
    half = stats.t.ppf(1 - levels / 2, n - 1) * se
    return mean - half, mean + half


def test_simultaneous_intervals_cover_every_true_effect_at_once():
    """54 comparisons (3 datasets x 18 variants sharing each dataset's baseline, 10 seeds), all effects real:
    the max-t intervals cover all 54 true effects together about 95% of the time; the old Holm-level
    intervals, whose last one is a plain 95% interval once Holm has rejected the rest, do not."""
    rng = np.random.default_rng(0)
    level = dataset_level(0.05, 3)
    covered, covered_by_holm = [], []
    for _ in range(400):
        effects = [rng.uniform(2, 4, size=18) for _ in DATASETS]
        families = [shared_baseline_family(rng, e, 10) for e in effects]
        intervals = [max_t(f, level) for f in families]
        covered.append(all(np.all((m.low < e) & (e < m.high)) for m, e in zip(intervals, effects)))
        low, high = holm_level_intervals(np.hstack(families))
        truth = np.concatenate(effects)
        covered_by_holm.append(np.all((low < truth) & (truth < high)))
    assert 0.92 < np.mean(covered) < 0.98
    assert np.mean(covered_by_holm) < 0.9


def test_max_t_is_the_brute_force_sign_flip_and_its_decisions_are_its_intervals():
    rng = np.random.default_rng(1)
    differences = shared_baseline_family(rng, np.array([0.0, 0.5, 2.0]), 6)
    differences[0, 2] = np.nan  # a variant without seed 0's run: its own n, the same flips
    result = max_t(differences, 0.05)
    # Brute force: every sign pattern of the 6 seeds, applied to every variant's centred differences at once.
    null = []
    for signs in itertools.product([-1, 1], repeat=6):
        t = []
        for column in differences.T:
            present = ~np.isnan(column)
            flipped = np.array(signs)[present] * (column[present] - column[present].mean())
            t.append(abs(flipped.mean()) / stats.sem(flipped))
        null.append(max(t))
    assert result.null == pytest.approx(np.sort(null))
    # p = (b + 1) / 65 <= 0.05 for b <= 2 patterns reaching the statistic: the critical value is the third largest.
    assert result.critical == pytest.approx(np.sort(null)[64 - 2 - 1])
    assert result.adjusted_p(np.array([np.inf]))[0] == pytest.approx(1 / 65)  # never 0
    assert max_t(differences[:4], 0.05).critical == np.inf  # 16 patterns: (0 + 1) / 17 > 0.05
    assert list(result.n) == [6, 6, 5] and result.se[2] == pytest.approx(stats.sem(differences[1:, 2]))
    # On many families the adjusted p is at most the level exactly when the interval excludes 0.
    agree, rejected = [], []
    for _ in range(300):
        family = shared_baseline_family(rng, rng.choice([0.0, 0.8, 2.0], size=5), int(rng.integers(3, 14)))
        m = max_t(family, 0.05)
        p = m.adjusted_p(np.abs(m.mean / m.se))
        agree += list((p <= 0.05) == ((m.low > 0) | (m.high < 0)))
        rejected += list(p <= 0.05)
    assert all(agree) and 200 < sum(rejected) < len(rejected) - 200
    # Above 12 seeds the patterns are drawn, from a fixed generator: two reports agree.
    many = shared_baseline_family(rng, np.zeros(4), 20)
    assert max_t(many, 0.05).critical == max_t(many, 0.05).critical


def test_the_detectable_effect_is_found_80_percent_of_the_time_by_the_simultaneous_test():
    """A family of 20 comparisons sharing one baseline, 10 seeds, three datasets' level; one real effect of the
    stated detectable size: the max-t test declares it in about 80% of simulated studies."""
    rng = np.random.default_rng(1)
    level = dataset_level(0.05, 3)
    critical = np.median([max_t(shared_baseline_family(rng, np.zeros(20), 10), level).critical for _ in range(50)])
    effects = np.zeros(20)
    effects[0] = simultaneous_detectable(np.sqrt(2), 10, critical)  # each difference: two runs' noise, sd 1 each
    found = []
    for _ in range(300):
        family = max_t(shared_baseline_family(rng, effects, 10), level)
        found.append(abs(family.mean[0] / family.se[0]) > family.critical)
    assert 0.72 < np.mean(found) < 0.88
    assert simultaneous_detectable(0.1, 4, np.inf) == np.inf  # 4 seeds, 16 sign patterns: no rejection possible


def test_one_comparison_with_every_sign_pattern_is_close_to_the_t_interval():
    rng = np.random.default_rng(2)
    critical = np.median([max_t(rng.normal(size=(10, 1)), 0.05).critical for _ in range(200)])
    assert critical == pytest.approx(stats.t.ppf(0.975, 9), rel=0.05)


@pytest.mark.parametrize(
    "variant, baseline, margin",
    [
        ([0.81, 0.80, 0.82, 0.80, 0.81], [0.80, 0.80, 0.81, 0.81, 0.80], 0.02),  # equivalent
        ([0.85, 0.83, 0.86, 0.84, 0.85], [0.80, 0.80, 0.81, 0.81, 0.80], 0.02),  # a real difference
        ([1.10, 0.95, 1.20, 1.02, 0.90, 1.05], [1.00, 1.01, 1.02, 0.97, 1.03, 0.99], 0.05),  # too noisy to tell
    ],
)
def test_tost_is_statsmodels_ttost_paired(variant, baseline, margin):
    from statsmodels.stats.weightstats import ttost_paired

    diff = np.array(variant) - np.array(baseline)
    expected = ttost_paired(np.array(variant), np.array(baseline), -margin, margin)[0]
    assert tost_p(diff, margin) == pytest.approx(expected)
    low, high = stats.t.interval(0.90, len(diff) - 1, loc=diff.mean(), scale=stats.sem(diff))
    assert (tost_p(diff, margin) < 0.05) == (-margin < low and high < margin)  # TOST is the 90% interval inside


def test_default_margins_per_metric():
    assert default_margin("rocauc", 0.8) == default_margin("ap", 0.3) == 0.02
    assert default_margin("rmse", 1.06) == pytest.approx(0.053) and default_margin("mae", 2.0) == pytest.approx(0.1)


def test_random_effects_pooling_is_statsmodels_dersimonian_laird():
    from statsmodels.stats.meta_analysis import combine_effects

    effects, variances = np.array([0.9, 0.1, 1.6]), np.array([0.12, 0.10, 0.15])  # heterogeneous: tau^2 > 0
    ours = random_effects(effects, variances)
    theirs = combine_effects(effects, variances, method_re="dl")
    assert ours["tau2"] > 0 and ours["tau2"] == pytest.approx(theirs.tau2)
    assert ours["effect"] == pytest.approx(theirs.mean_effect_re) and ours["se"] == pytest.approx(theirs.sd_eff_w_re)
    assert ours["i2"] == pytest.approx(theirs.i2)
    low, high = theirs.summary_frame().loc["random effect", ["ci_low", "ci_upp"]]
    assert (ours["low"], ours["high"]) == pytest.approx((low, high))
    # Homogeneous effects: statsmodels' moment estimate goes negative; clipped at 0 the pooling is the fixed effect.
    same = combine_effects(np.array([0.5, 0.52, 0.48]), variances, method_re="dl")
    clipped = random_effects(np.array([0.5, 0.52, 0.48]), variances)
    assert same.tau2 < 0 and clipped["tau2"] == 0 and clipped["i2"] == 0
    assert clipped["effect"] == pytest.approx(same.mean_effect_fe) and clipped["se"] == pytest.approx(same.sd_eff_w_fe)


def test_standardised_effect_is_signed_so_that_plus_is_better():
    diff = np.array([-0.10, -0.05, -0.12, -0.08])  # RMSE down: better
    d, variance = standardised_effect(diff, better_sign=-1)
    assert d == pytest.approx(-diff.mean() / diff.std(ddof=1)) and d > 0
    assert variance == pytest.approx(1 / 4 + d**2 / 8)


def test_suspect_variants_are_flagged_and_ordinary_ones_not():
    means = {BASELINE: 1.06, "a": 1.08, "b": 1.02, "c": 1.10, "d": 1.05, "broken": 2.31, "good": 0.70}
    trivial = dict.fromkeys(means, 3.0)  # the RMSE of predicting the training mean
    found = suspect(means, trivial, higher=False)
    assert set(found) == {"broken"} and "robust sds worse" in found["broken"]  # "good" is far but better
    auc = {BASELINE: 0.66, "a": 0.65, "chance": 0.49}
    assert set(suspect(auc, dict.fromkeys(auc, 0.5), higher=True)) == {"chance"}
    assert "no better than a constant prediction" in suspect(auc, dict.fromkeys(auc, 0.5), higher=True)["chance"]


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    """Copies of the committed study's databases (all.yaml and pretraining.yaml, 630 real runs)."""
    folder = tmp_path_factory.mktemp("committed")
    for name in ("all", "pretraining"):
        shutil.copy(ROOT / "reports" / name / "study.db", folder / f"{name}.db")
    return folder


def load(folder, name):
    storage = f"sqlite:///{folder}/{name}.db"
    return ablation_group([optuna.load_study(study_name=f"{name}--{d}", storage=storage) for d in DATASETS])


def test_the_committed_study_pooled_and_suspect(committed):
    from statsmodels.stats.meta_analysis import combine_effects

    datasets = load(committed, "all")
    comparison = compare(datasets)
    # The substructure defect (#21.1) is a suspect on ESOL and ClinTox, never "hurts"; graph-size norm pools to helps.
    esol = comparison[comparison.dataset == "ogbg-molesol"].set_index("variant")
    assert esol.loc["substructures", "verdict"] == "suspect" and esol.loc["no-pe", "verdict"] == "hurts"
    pooled = pool(comparison, datasets[0].order[1:]).set_index("variant")
    assert pooled.loc["graph-size-norm", "verdict"] == "helps" and pooled.loc["graph-size-norm", "p_holm"] < 1e-3
    assert pooled.loc["substructures", "verdict"] == "suspect"
    own = comparison[comparison.variant == "graph-size-norm"]
    theirs = combine_effects(own.d_z.to_numpy(), own.d_z_var.to_numpy(), method_re="dl")
    assert pooled.loc["graph-size-norm", "effect"] == pytest.approx(
        theirs.mean_effect_re if theirs.tau2 > 0 else theirs.mean_effect_fe
    )
    # d_z from the runs themselves: ESOL's RMSE falls, so + is better.
    runs = datasets[2].runs
    diff = (
        runs[runs.variant == "graph-size-norm"].set_index("seed").test
        - runs[runs.variant == BASELINE].set_index("seed").test
    )
    assert own.set_index("dataset").loc["ogbg-molesol", "d_z"] == pytest.approx(-diff.mean() / diff.std(ddof=1))


def test_power_per_dataset_says_which_comparisons_could_be_equivalent(committed):
    comparison = compare(load(committed, "all"))
    table = power_table(comparison).set_index("dataset")
    for dataset, own in comparison.groupby("dataset"):
        reachable = (own.critical * own.sd / np.sqrt(own.n) < own.margin).sum()  # c * sd / sqrt(n)
        assert table.loc[dataset, "can reach 'equivalent'"] == f"{reachable} of {len(own)}"
        assert table.loc[dataset, "paired sd (median)"] == pytest.approx(own.sd.median())
        equivalent = own[own.verdict == "equivalent"]
        assert ((equivalent.sim_high - equivalent.sim_low) / 2 < equivalent.margin).all()
    assert (table["detectable (80% power)"] > table["interval half-width (median)"]).all()  # 80% power needs more


def test_convergence_share_and_seconds_per_epoch_come_from_the_runs(committed):
    datasets = load(committed, "all")
    row = compare(datasets).set_index(["dataset", "variant"]).loc[("ogbg-molclintox", "graph-norm")]
    study = datasets[1].study
    records = {
        variant: [
            TrialRecord.of(t)
            for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs["variant"] == variant
        ]
        for variant in ("graph-norm", BASELINE)
    }
    both = records["graph-norm"] + records[BASELINE]
    late = [r.best_epoch > 18 and r.epochs >= 20 for r in both]  # best epoch 19 or 20 of 20
    assert row.late_share == pytest.approx(np.mean(late)) and row.budget == 20
    own, base = ([r.seconds_per_epoch for r in records[v]] for v in ("graph-norm", BASELINE))
    assert row.seconds_ratio == pytest.approx(np.mean(own) / np.mean(base)) and row.seconds_ratio > 1


def test_a_run_stopped_early_counts_as_converged(committed):
    datasets = load(committed, "all")
    runs = datasets[0].runs
    at = runs.variant.isin(["pna", BASELINE])

    def share() -> float:
        return compare(datasets).set_index(["dataset", "variant"]).loc[("ogbg-molbbbp", "pna"), "late_share"]

    before = share()
    runs.loc[at, "best_epoch"] = runs.loc[at, "ran"]  # every run peaks at its last epoch...
    assert share() == 1
    runs.loc[at, "ran"] = runs.loc[at, "best_epoch"] = 12  # ...of 12 of its 20: it stopped early (train.patience)
    assert share() == 0 != before


def test_ablations_that_share_their_baseline_runs_are_one_family(committed, tmp_path):
    """pretraining.yaml's scratch control is all.yaml's baseline runs, bit for bit: one family of 60."""
    assert control_difference(load(committed, "all"), load(committed, "pretraining")) is None
    storages = [f"sqlite:///{committed}/all.db", f"sqlite:///{committed}/pretraining.db"]
    build_report(["all", "pretraining"], storages, tmp_path / "both")
    md = (tmp_path / "both" / "report.md").read_text()
    assert "Family: the 60 comparisons of all and pretraining; control: the baseline runs of all, pretraining" in md
    assert md.index("### Verdicts") < md.index("(verdicts.png)") < md.index("### How to read")
    verdicts = md.split("### Verdicts")[1].split("###")[0]
    assert "| pretrained-bonds " in verdicts and "| graph-size-norm " in verdicts
    build_report(["pretraining"], storages, tmp_path / "alone")  # alone, it says which ablation shares its control
    assert (
        "Not in this family: all, in this report's storages, shares this control"
        in (tmp_path / "alone" / "report.md").read_text()
    )


def test_a_baseline_that_differs_by_one_run_is_another_control(committed, tmp_path):
    shutil.copy(committed / "pretraining.db", tmp_path / "pretraining.db")
    with sqlite3.connect(tmp_path / "pretraining.db") as db:  # one baseline run of ClinTox scored differently
        (trial,) = db.execute(
            "SELECT t.trial_id FROM trials t JOIN studies s USING (study_id) JOIN trial_user_attributes a "
            "ON a.trial_id = t.trial_id AND a.key = 'variant' AND a.value_json = '\"baseline\"' "
            "JOIN trial_user_attributes b ON b.trial_id = t.trial_id AND b.key = 'seed' AND b.value_json = '3' "
            "WHERE s.study_name = 'pretraining--ogbg-molclintox' AND t.state = 'COMPLETE'"
        ).fetchall()
        db.execute("UPDATE trial_user_attributes SET value_json = '0.5' WHERE trial_id = ? AND key = 'test'", trial)
    assert control_difference(load(committed, "all"), load(tmp_path, "pretraining")) == (
        "their ogbg-molclintox baseline runs of seed 3 differ"
    )
