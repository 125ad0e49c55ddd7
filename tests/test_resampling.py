"""Molecule-level uncertainty (issue 21, section 4): the two-level paired bootstrap over seeds and test
molecules, DeLong's paired test, and the report's column. Metrics against OGB's Evaluator and sklearn on
real ClinTox and ESOL labels; the bootstrap's coverage in a simulation whose truth is known; DeLong against
the numbers of a reference implementation; the column end to end on 300 real ogbg-molbbbp molecules."""

import re
import shutil

import numpy as np
import pandas as pd
import pytest
import sklearn.datasets
import sklearn.linear_model
import sklearn.model_selection
from scipy import stats
from sklearn.metrics import roc_auc_score

from ggt_search.metrics import score
from ggt_search.report import build_report
from ggt_search.report.ablation import ablation_runs, compare
from ggt_search.report.resampling import (
    COLUMN,
    NO_PREDICTIONS,
    PairedRuns,
    bootstrap_note,
    delong_test,
    molecule_counts,
    paired_bootstrap,
    resampled_scores,
    simultaneous_bootstrap,
    with_bootstrap,
)
from ggt_search.storage import artifact_dir, open_storage
from ggt_search.trials import StoredTestPredictions
from tests.test_ablation_features import ABLATION, run
from tests.test_search import bbbp_csv  # noqa: F401  (fixture: 300 real molecules)


def predictions_of(labels: np.ndarray, rng: np.random.Generator, decimals: int = 2) -> np.ndarray:
    """A model's predictions of real labels: the label plus noise, rounded so that scores tie."""
    signal = np.nan_to_num(labels, nan=0.0) + rng.normal(0, 1.0, labels.shape)
    return np.round(signal, decimals).astype(np.float32)


@pytest.mark.parametrize(
    "table, columns, metric, dataset",
    [
        ("clintox.csv", ["FDA_APPROVED", "CT_TOX"], "rocauc", "ogbg-molclintox"),  # OGB's Evaluator
        ("clintox.csv", ["FDA_APPROVED", "CT_TOX"], "ap", None),  # sklearn's average precision
        ("delaney.csv", ["logp"], "rmse", "ogbg-molesol"),
        ("delaney.csv", ["logp"], "mae", None),
    ],
)
def test_each_replicates_score_is_the_projects_metric_of_its_resample(moleculenet, table, columns, metric, dataset):
    labels = pd.read_csv(moleculenet / table)[columns].to_numpy(dtype=float)[:150].copy()
    rng = np.random.default_rng(0)
    labels[rng.random(labels.shape) < 0.1] = np.nan  # missing labels are left out per task, as OGB does
    predicted = np.stack([predictions_of(labels, rng), predictions_of(labels, rng)])  # two runs
    draws = [rng.integers(len(labels), size=len(labels)) for _ in range(30)]
    counts = np.stack([np.bincount(d, minlength=len(labels)) for d in draws], axis=1).astype(float)
    counts = np.column_stack([np.ones(len(labels)), counts])  # replicate 0: every molecule once
    fast = resampled_scores(metric, labels, predicted, counts)
    assert fast.shape == (2, 31)
    for run_index, run_predictions in enumerate(predicted):
        assert fast[run_index, 0] == pytest.approx(score(metric, labels, run_predictions, dataset), abs=1e-12)
        for replicate, drawn in enumerate(draws, start=1):
            slow = score(metric, labels[drawn], run_predictions[drawn], dataset)
            assert fast[run_index, replicate] == pytest.approx(slow, abs=1e-12)


def test_a_replicate_without_both_classes_leaves_the_task_out_as_ogb_does(moleculenet):
    labels = pd.read_csv(moleculenet / "clintox.csv")[["FDA_APPROVED", "CT_TOX"]].to_numpy(dtype=float)
    predicted = predictions_of(labels, np.random.default_rng(1))[None]
    drawn = labels[:, 0] == 1  # FDA_APPROVED's negatives are not drawn: only CT_TOX has both classes
    (only_second,) = resampled_scores("rocauc", labels, predicted, drawn.astype(float)[:, None])[0]
    assert only_second == pytest.approx(roc_auc_score(labels[drawn, 1], predicted[0, drawn, 1]), abs=1e-12)
    assert only_second == pytest.approx(score("rocauc", labels[drawn], predicted[0, drawn], "ogbg-molclintox"))
    counts = molecule_counts(np.random.default_rng(0), 150, 400)
    assert counts.shape == (150, 400) and (counts.sum(0) == 150).all()  # each replicate draws 150 molecules
    assert counts.mean() == pytest.approx(1.0) and counts.var() == pytest.approx(1 - 1 / 150, rel=0.05)


def binormal_experiment(
    rng: np.random.Generator, molecules: int, seeds: int, shared: float, fixed: float, variants: tuple = (1.2,)
):
    """One ablation under a model whose truth is known: a test set of `molecules` drawn from a population
    (10% positive), each seed's two models scoring them. A model's scores are N(delta, 1) for positives and
    N(0, 1) for negatives, delta = the arm's quality plus the seed's N(0, 0.1^2) training luck, so one seed's
    population ROC-AUC is Phi(delta / sqrt 2). Of each score's variance, `shared` is the molecule's own,
    common to both arms and every seed (how hard it is), `fixed` the arm's own view of the molecule, the same
    in every seed (what the idea gets right or wrong there), and the rest the run's."""
    labels = (rng.random(molecules) < 0.1).astype(float)
    hard = rng.normal(size=molecules)

    def arm(quality: float) -> np.ndarray:
        delta = quality + 0.1 * rng.normal(size=(seeds, 1))
        view, own = rng.normal(size=molecules), rng.normal(size=(seeds, molecules))
        scores = delta * labels + np.sqrt(shared) * hard + np.sqrt(fixed) * view + np.sqrt(1 - shared - fixed) * own
        return scores[..., None]

    arms = [arm(quality) for quality in variants]
    baseline = arm(1.0)  # one baseline shared by every variant, as in an ablation
    runs = [PairedRuns(labels[:, None], own, baseline) for own in arms]
    return runs[0] if len(variants) == 1 else runs


# E over seeds of Phi(delta / sqrt 2), delta ~ N(quality, 0.1^2), is Phi(quality / sqrt(2 + 0.01)).
TRUE_DIFFERENCE = float(stats.norm.cdf(1.2 / np.sqrt(2.01)) - stats.norm.cdf(1.0 / np.sqrt(2.01)))


def test_the_bootstrap_interval_covers_the_truth_at_about_the_nominal_rate():
    rng, truth = np.random.default_rng(0), TRUE_DIFFERENCE
    covered, t_covered, experiments = 0, 0, 200
    for experiment in range(experiments):
        paired = binormal_experiment(rng, molecules=150, seeds=5, shared=0.2, fixed=0.6)
        result = paired_bootstrap("rocauc", [paired], replicates=500, seed=experiment)
        covered += result["boot_low"] <= truth <= result["boot_high"]
        observed = np.ones((150, 1))
        cells = resampled_scores("rocauc", paired.labels, np.concatenate([paired.variant, paired.baseline]), observed)
        differences = cells[:5, 0] - cells[5:, 0]
        assert result["boot_diff"] == pytest.approx(differences.mean())
        low, high = stats.t.interval(0.95, 4, differences.mean(), stats.sem(differences))
        t_covered += low <= truth <= high
    assert 0.91 <= covered / experiments <= 0.99  # nominal 0.95 (0.955; binomial sd over 200 experiments 0.015)
    assert t_covered / experiments < 0.8  # the t-interval over seeds leaves the test molecules' error out (0.66)


def test_the_simultaneous_bootstrap_covers_every_variant_at_once():
    """Six variants against one shared baseline, on one test set: the bootstrap max-t intervals (every
    comparison's replicates drawn alike, from one generator seed) cover all six true differences together at
    about the nominal rate; the comparisons' own 95% intervals do so far less often."""
    qualities = (1.0, 1.1, 1.2, 0.9, 1.0, 1.3)
    truths = np.array([stats.norm.cdf(q / np.sqrt(2.01)) - stats.norm.cdf(1 / np.sqrt(2.01)) for q in qualities])
    rng, joint, marginal, experiments = np.random.default_rng(3), 0, 0, 150
    for experiment in range(experiments):
        variants = binormal_experiment(rng, molecules=150, seeds=5, shared=0.2, fixed=0.6, variants=qualities)
        results = [paired_bootstrap("rocauc", [v], replicates=400, seed=experiment) for v in variants]
        observed = np.array([r["boot_diff"] for r in results])
        half = simultaneous_bootstrap(observed, np.column_stack([r["replicate_means"] for r in results]), 0.05)
        joint += np.all(np.abs(observed - truths) < half)
        marginal += all(r["boot_low"] <= t <= r["boot_high"] for r, t in zip(results, truths, strict=True))
    assert 0.89 <= joint / experiments <= 0.99  # nominal 0.95; binomial sd over 150 experiments 0.018
    assert marginal / experiments < 0.85


def test_pairing_narrows_the_interval_of_correlated_arms():
    rng = np.random.default_rng(1)
    paired = binormal_experiment(rng, molecules=150, seeds=5, shared=0.8, fixed=0.1)
    result = paired_bootstrap("rocauc", [paired], replicates=1000)
    # The same runs with each arm on its own molecule draw and its own seed draw: what pairing avoids.
    arms = []
    for predicted in (paired.variant, paired.baseline):
        scores = resampled_scores("rocauc", paired.labels, predicted, molecule_counts(rng, 150, 1000))
        arms.append(np.take_along_axis(scores.T, rng.integers(5, size=(1000, 5)), axis=1).mean(1))
    unpaired = np.quantile(arms[0] - arms[1], [0.025, 0.975])
    assert result["boot_high"] - result["boot_low"] < 0.6 * (unpaired[1] - unpaired[0])


def iris_models():
    """The reference's own test case (yandexdataschool/roc_comparison, test.py): a logistic regression on
    iris' versicolor, scored on 80% of the flowers; and a second model on the first two features."""
    data = sklearn.datasets.load_iris()
    x_train, x_test, y_train, y_test = sklearn.model_selection.train_test_split(
        data.data, (data.target == 1).astype(int), test_size=0.8, random_state=42
    )
    fit = sklearn.linear_model.LogisticRegression(solver="lbfgs")
    first = fit.fit(x_train, y_train).predict_proba(x_test)[:, 1]
    second = fit.fit(x_train[:, :2], y_train).predict_proba(x_test[:, :2])[:, 1]
    return y_test, first, second


def test_delong_matches_the_reference_implementation():
    labels, first, second = iris_models()
    result = delong_test(labels, first, second)
    assert result["auc_first"] == pytest.approx(roc_auc_score(labels, first), abs=1e-12)
    assert result["covariance"][0, 0] == pytest.approx(0.0015359814789736538, rel=1e-7)  # the reference's test
    # compare_auc_delong_xu.delong_roc_test (commit 62da5b8) on these models: log10 of the p-value
    assert np.log10(result["p"]) == pytest.approx(-0.6777569078215264, abs=1e-9)
    tied = [np.round(p, 2) for p in (first, second)]  # ties: midranks
    assert np.log10(delong_test(labels, *tied)["p"]) == pytest.approx(-0.8340755585696842, abs=1e-9)
    # And against DeLong et al. (1988)'s definition, every positive against every negative.
    positive = labels == 1

    def components(p):
        kernel = (p[positive][:, None] > p[~positive]) + 0.5 * (p[positive][:, None] == p[~positive])
        return kernel.mean(1), kernel.mean(0)  # per positive, per negative

    (a10, a01), (b10, b01) = components(tied[0]), components(tied[1])
    variance = (np.var(a10 - b10, ddof=1) / positive.sum()) + (np.var(a01 - b01, ddof=1) / (~positive).sum())
    z = (a10.mean() - b10.mean()) / np.sqrt(variance)
    assert delong_test(labels, *tied)["z"] == pytest.approx(z, rel=1e-12)
    with pytest.raises(ValueError, match="at least 2 molecules of each class"):
        delong_test(np.array([1, 0, 0]), np.array([0.9, 0.1, 0.2]), np.array([0.8, 0.3, 0.1]))


def test_the_note_says_which_verdicts_are_within_the_test_molecules_error():
    row = {"testable": True, "boot_sim_low": -0.02, "boot_sim_high": 0.08}
    comparison = pd.DataFrame(
        [
            row | {"variant": "a", "verdict": "helps"},
            row | {"variant": "b", "verdict": "helps", "boot_sim_low": 0.01},  # the bootstrap agrees
            row | {"variant": "c", "verdict": "inconclusive"},
            row | {"variant": "d", "testable": False, "verdict": "not testable"},
        ]
    )
    note = bootstrap_note(comparison)
    assert note.startswith(f"The {COLUMN} (2000 replicates) resamples the paired seeds and, independently")
    assert "a: helps by the t-test's simultaneous interval, but the bootstrap's [-0.0200, +0.0800] contains 0" in note
    assert note.endswith("within the test molecules' sampling error; its verdict rests on the t-test alone.")
    assert not re.search(r"\b[bcd]: ", note)


def test_the_report_shows_the_bootstrap_beside_the_t_test(bbbp_csv, tmp_path):  # noqa: F811
    study, storage = run(tmp_path, ABLATION + "split_seeds: [0, 1]\n", bbbp_csv)  # two test sets, 4 cells
    datasets = [ablation_runs(study)]
    comparison = with_bootstrap(compare(datasets), datasets, StoredTestPredictions(artifact_dir(storage)))
    (row,) = comparison.to_dict("records")
    assert row["boot_diff"] == pytest.approx(row["mean_diff"], abs=1e-6)  # the stored test scores, recomputed
    assert row["boot_low"] < row["boot_diff"] < row["boot_high"] and 0 < row["p_boot"] <= 1
    build_report(["s"], storage, tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    table = md.split("paired differences to the baseline")[1].split("\n\n", 2)[1]
    header, _, gcn = table.splitlines()
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns.index(COLUMN) == columns.index("p_equivalent") + 1  # beside the t-test's p-values
    cell = gcn.strip("|").split("|")[columns.index(COLUMN)].strip()
    assert row["boot_sim_low"] < row["boot_diff"] < row["boot_sim_high"]
    simultaneous, own = f"[{row['boot_sim_low']:+.4f}, {row['boot_sim_high']:+.4f}]", f"[{row['boot_low']:+.4f}, "
    assert cell == f"{simultaneous}; 95% {own}{row['boot_high']:+.4f}], p = {row['p_boot']:.3g}"
    assert f"The {COLUMN} (2000 replicates) resamples the paired seeds" in md

    shutil.copy(storage.removeprefix("sqlite:///"), tmp_path / "old.db")  # a study from before predictions
    old = f"sqlite:///{tmp_path}/old.db"
    forget_predictions(old)
    build_report(["s"], old, tmp_path / "old")
    table = (tmp_path / "old" / "report.md").read_text().split("paired differences to the baseline")[1]
    assert f"| {NO_PREDICTIONS} " in table.split("\n\n", 2)[1]


def forget_predictions(storage: str) -> None:
    """Drop every trial's record of its stored predictions, as in a study made before they were stored."""
    from optuna.storages._rdb import models

    with open_storage(storage).scoped_session() as session:
        session.query(models.TrialUserAttributeModel).filter_by(key="predictions").delete()
        session.commit()
