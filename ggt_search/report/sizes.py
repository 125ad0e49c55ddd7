"""Where a variant's test difference lies along molecule size: the test molecules in quarters by their
number of atoms, and in each quarter the variant's score minus the baseline's, over the same seeds.

A reviewer's first look at a large effect is the per-molecule errors. Size is the one molecular property
every model here can lose: mean pooling averages it away, so a model without another signal of it (the
Laplacian PEs carry one: fewer than k eigenvectors below k atoms, entries shrinking as 1/sqrt(n) above)
errs at both ends of the size range, where a property that grows with size (solubility, lipophilicity)
is farthest from its mean. The table describes; it tests nothing (quarters of a small test set are
small), and the verdicts above stay the paired tests'.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from optuna.artifacts.exceptions import ArtifactNotFound

from ggt_search.ablate import BASELINE
from ggt_search.config import DatasetSpec
from ggt_search.datasets import load_dataset
from ggt_search.errors import UserError
from ggt_search.metrics import score
from ggt_search.record import StudyRecord
from ggt_search.trials import Predictions, StoredTestPredictions

QUARTERS = 4


def size_quarters(d, predictions: StoredTestPredictions) -> pd.DataFrame | str:
    """A row per variant of `d` (an AblationRuns): the baseline's mean test score in each size quarter, then
    each variant's mean paired difference to it there (NaN where a quarter's score is undefined, e.g. one
    class only). Or why there is no such table: runs without stored predictions, or no dataset to size."""
    if d.runs.predictions.isna().any():
        return "some runs stored no predictions"
    spec = DatasetSpec(**StudyRecord.of(d.study).dataset)
    try:
        graphs = load_dataset(spec)
    except (UserError, OSError) as error:
        return f"its dataset could not be loaded to count atoms ({error})"
    atoms = graphs.num_nodes().numpy()
    try:
        test = {artifact: predictions[artifact] for artifact in d.runs.predictions}
    except ArtifactNotFound:
        return "its stored predictions are missing"
    first = next(iter(test.values()))
    if any(not np.array_equal(p.graphs, first.graphs) for p in test.values()):
        return "its runs scored different test molecules (split seeds): no common quarters"
    quarter = pd.qcut(atoms[first.graphs], QUARTERS, duplicates="drop")
    labels = [
        f"{int(np.floor(q.left)) + 1}-{int(q.right)} atoms ({int((quarter == q).sum())})" for q in quarter.categories
    ]

    def by_quarter(p: Predictions) -> np.ndarray:
        return np.array([quarter_score(d.metric, p, quarter == q) for q in quarter.categories])

    rows = []
    for variant, own, base in d.paired():
        if not rows:
            baseline = pd.DataFrame([by_quarter(test[a]) for a in base.predictions]).mean()  # NaN-skipping
            rows.append([f"{BASELINE} (its {d.metric})", *baseline])
        differences = [by_quarter(test[v]) - by_quarter(test[b]) for v, b in zip(own.predictions, base.predictions)]
        rows.append([variant, *pd.DataFrame(differences).mean()])
    return pd.DataFrame(rows, columns=["variant", *labels])


def quarter_score(metric: str, p: Predictions, within: np.ndarray) -> float:
    try:
        return score(metric, p.labels[within], p.predicted[within])
    except ValueError:  # a ranking metric over molecules of one class only
        return np.nan
