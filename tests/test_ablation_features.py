"""Ablation features (issue 21): seeded balanced scaffold splits, learning rates tuned per variant on
validation, every run's predictions stored, and the code that made each run recorded and checked.
End to end on 300 real ogbg-molbbbp molecules (a CSV), one epoch per run (CPU)."""

import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from ggt_search.ablate import (
    SAME_NUMBERS,
    AblationSettings,
    chosen_learning_rates,
    load_ablation,
    run_ablation,
    run_key,
    run_predictions,
    same_code,
)
from ggt_search.config import DatasetSpec
from ggt_search.datasets import load_dataset
from ggt_search.errors import UserError
from ggt_search.graphset import cache_root
from ggt_search.metrics import score
from ggt_search.molecules import balanced_scaffold_split, scaffold_of_smiles
from ggt_search.record import TrialRecord
from ggt_search.report import build_report
from ggt_search.storage import open_storage
from ggt_search.train import code_sha256
from tests.conftest import ROOT
from tests.test_search import bbbp_csv  # noqa: F401  (fixture: 300 real molecules)

COMPLETE = (optuna.trial.TrialState.COMPLETE,)
ABLATION = """
idea: convolution
baseline:
  model: {conv: gated-gcn, layers: 1, hidden: 8, dropout: 0.0}
  train: {batch_size: 64, device: cpu}
variants:
  gcn: {model: {conv: gcn}}
seeds: 0-1
epochs: 1
"""


def run(folder, text, csv, study="s", storage=None, **overrides):
    (folder / "a.yaml").write_text(text)
    storage = storage or f"sqlite:///{folder}/a.db"
    ablation = load_ablation(folder / "a.yaml", dataset={"name": str(csv)}, **overrides)
    (found,) = run_ablation(AblationSettings(ablation, study, storage))
    return found, storage


@pytest.fixture(scope="module")
def split_study(bbbp_csv, tmp_path_factory):  # noqa: F811
    folder = tmp_path_factory.mktemp("splits")
    return (folder, *run(folder, ABLATION + "split_seeds: [0, 1]\n", bbbp_csv))


@pytest.fixture(scope="module")
def tuned_study(bbbp_csv, tmp_path_factory):  # noqa: F811
    folder = tmp_path_factory.mktemp("tuned")
    return (folder, *run(folder, ABLATION + "tune: {lr: [0.001, 0.03]}\n", bbbp_csv))


def test_the_balanced_scaffold_split_is_chemprops_recipe(moleculenet):
    scaffolds = [scaffold_of_smiles(s) for s in pd.read_csv(moleculenet / "BBBP.csv")["smiles"]]
    n, parts = len(scaffolds), {}
    for seed in (0, 1):
        train, valid, test = balanced_scaffold_split(scaffolds, seed)
        assert sorted(np.concatenate([train, valid, test]).tolist()) == list(range(n))
        assert len(train) <= 0.8 * n and len(valid) <= 0.1 * n  # whole scaffold sets, within their share
        sets = [{scaffolds[i] for i in part} for part in (train, valid, test)]
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])  # no scaffold in two parts
        sizes = defaultdict(int)
        for s in scaffolds:
            sizes[s] += 1
        big = {s for s, size in sizes.items() if size > 0.1 * n / 2}
        assert big == {"c1ccccc1"} and big <= sets[0]  # sets above half the test size go to train first
        parts[seed] = test
        assert np.array_equal(balanced_scaffold_split(scaffolds, seed)[2], test)  # the seed decides it
    assert not np.array_equal(parts[0], parts[1])


def test_split_seeds_run_pair_and_resume_by_split_and_seed(split_study, bbbp_csv, tmp_path, capsys):  # noqa: F811
    folder, study, storage = split_study
    keys = sorted((k.variant, k.split_seed, k.seed) for k in map(run_key, study.get_trials(states=COMPLETE)))
    assert keys == sorted((v, sp, s) for v in ("baseline", "gcn") for sp in (0, 1) for s in (0, 1))
    tests = {}
    for trial in study.get_trials(states=COMPLETE):
        key, dataset = run_key(trial), TrialRecord.of(trial).config["dataset"]
        assert (dataset["split"], dataset["split_seed"]) == ("balanced-scaffold", key.split_seed)  # recorded
        predicted = run_predictions(storage, "s", key.variant, key.seed, split_seed=key.split_seed)
        tests[key.split_seed] = predicted["test"].graphs
        graphs = load_dataset(DatasetSpec(str(bbbp_csv), split="balanced-scaffold", split_seed=key.split_seed))
        assert np.array_equal(predicted["test"].graphs, graphs.split["test"].numpy())
        test = predicted["test"]
        assert score("rocauc", test.labels, test.predicted) == pytest.approx(trial.user_attrs["test"], abs=1e-6)
        valid = predicted["valid"]
        assert score("rocauc", valid.labels, valid.predicted) == pytest.approx(trial.value, abs=1e-6)
    assert not np.array_equal(tests[0], tests[1])  # two splits, two test sets
    assert list(cache_root().glob("*/split-balanced-scaffold-seed1.pt"))  # the cache keys hold the split seed

    shutil.copy(storage.removeprefix("sqlite:///"), tmp_path / "own.db")
    own = f"sqlite:///{tmp_path}/own.db"
    again, _ = run(folder, ABLATION + "split_seeds: 0-2\n", bbbp_csv, storage=own)
    assert "4 runs to do" in capsys.readouterr().out  # split seed 2 of each (variant, seed) only
    assert len(again.get_trials(states=COMPLETE)) == 12
    with pytest.raises(UserError, match="holds runs with 'split_seeds', but this ablation has no 'split_seeds'"):
        run(folder, ABLATION, bbbp_csv, storage=own)


def test_the_report_says_which_variance_sources_a_verdict_covers(split_study, tuned_study, tmp_path):
    _, _, storage = split_study
    build_report(["s"], storage, tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "cover two sources of variance: training randomness (seeds [0, 1]) and the data split" in md
    assert "(4 seeds)" in md or "at 4 seeds" in md or "4 paired" in md  # paired over (split, seed) cells
    runs = pd.read_csv(tmp_path / "r" / "runs.csv")
    assert len(runs) == 8 and set(runs.split_seed) == {0, 1}
    _, _, fixed = tuned_study
    build_report(["s"], fixed, tmp_path / "f")
    assert "cover one source of variance: training randomness" in (tmp_path / "f" / "report.md").read_text()


def test_each_variant_gets_the_learning_rate_best_on_validation(tuned_study, tmp_path):
    _, study, storage = tuned_study
    runs = pd.DataFrame(
        [
            {"variant": run_key(t).variant, "lr": run_key(t).lr, "valid": t.value}
            for t in study.get_trials(states=COMPLETE)
        ]
    )
    assert len(runs) == 8 and set(runs.lr) == {0.001, 0.03}
    means = runs.groupby(["variant", "lr"]).valid.mean().unstack()
    chosen = means.idxmax(axis=1)  # rocauc: higher is better
    build_report(["s"], storage, tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    table = md.split("### Tuned learning rates")[1].split("###")[0]
    for variant, lr in chosen.items():
        rows = [line for line in table.splitlines() if line.startswith(f"| {variant} ")]
        assert len(rows) == 2 and [r for r in rows if "True" in r][0].split("|")[2].strip() == f"{lr:g}"
    written = pd.read_csv(tmp_path / "r" / "runs.csv")  # the comparison's runs: each variant's chosen rate only
    assert len(written) == 4 and dict(zip(written.variant, written.lr, strict=False)) == chosen.to_dict()


def test_tune_is_checked(tmp_path):
    bad = tmp_path / "bad.yaml"
    for tune, error in (
        ("{lr: [0.001, 0.001]}", "tune.lr must be a list of distinct positive"),
        ("{dropout: [0.1]}", "'tune' must be a mapping {lr:"),
        ("{lr: [-1]}", "tune.lr must be"),
    ):
        bad.write_text(ABLATION + f"tune: {tune}\n")
        with pytest.raises(UserError, match=error):
            load_ablation(bad)
    bad.write_text(ABLATION.replace("{conv: gcn}}", "{conv: gcn}, train: {lr: 0.01}}") + "tune: {lr: [0.001]}\n")
    with pytest.raises(UserError, match=r"variant\(s\) \['gcn'\] set train.lr, but 'tune' chooses"):
        load_ablation(bad)


def test_code_that_trains_other_numbers_is_refused_and_flagged(tuned_study, bbbp_csv, tmp_path, capsys):  # noqa: F811
    folder, study, shared = tuned_study
    current = code_sha256()
    assert {TrialRecord.of(t).environment["code_sha256"] for t in study.trials} == {current}
    shutil.copy(shared.removeprefix("sqlite:///"), tmp_path / "own.db")
    storage = f"sqlite:///{tmp_path}/own.db"
    own = optuna.load_study(study_name="s", storage=storage)
    chosen = chosen_learning_rates(own)["baseline"]  # a run the comparison uses
    baseline = next(t for t in own.trials if (run_key(t).variant, run_key(t).lr) == ("baseline", chosen))
    environment, curve = baseline.user_attrs["environment"], baseline.user_attrs["curve"]
    tuned = ABLATION + "tune: {lr: [0.001, 0.03]}\n"

    # Code "0..." trained this run: it is trained again, the same numbers come out, and the study goes on.
    recorded_as(storage, baseline._trial_id, "environment", environment | {"code_sha256": "0" * 64})
    run(tmp_path, tuned, bbbp_csv, storage=storage)  # nothing to add: nothing checked
    assert "training baseline seed" not in capsys.readouterr().out
    run(tmp_path, tuned, bbbp_csv, storage=storage, seeds="0-2")
    assert "code changed since its runs (sha256 000000000000... -> " in capsys.readouterr().out
    own = optuna.load_study(study_name="s", storage=storage)
    assert own.user_attrs[SAME_NUMBERS] == [["0" * 64, current]]
    assert same_code(own, "0" * 64) == same_code(own, current)
    build_report(["s"], storage, tmp_path / "r")
    assert "runs from different code" not in (tmp_path / "r" / "report.md").read_text()

    # Code "1..." trained it with other numbers: refused, and the report says so.
    recorded_as(storage, baseline._trial_id, "environment", environment | {"code_sha256": "1" * 64})
    recorded_as(storage, baseline._trial_id, "curve", [curve[0] + 0.01, *curve[1:]])
    with pytest.raises(
        UserError,
        match=rf"made by code sha256 111111111111\.\.\., and this code \({current[:12]}\.\.\.\) trains other "
        r"numbers \(epoch 1: valid .*--study NEW",
    ):
        run(tmp_path, tuned, bbbp_csv, storage=storage, seeds="0-3")
    build_report(["s"], storage, tmp_path / "r2")
    assert "gcn vs baseline: runs from different code (baseline: " in (tmp_path / "r2" / "report.md").read_text()
    unrecorded = {k: v for k, v in environment.items() if k != "code_sha256"}
    recorded_as(storage, baseline._trial_id, "environment", unrecorded)
    build_report(["s"], storage, tmp_path / "r3")
    assert "gcn vs baseline: code not recorded for 1 of its runs" in (tmp_path / "r3" / "report.md").read_text()

    # A change on one variant's path only (pe_dim 0 once dropped the PE MLP too): a run of each variant made by
    # the old code trains its first epochs again, and a difference there refuses as the baseline's does.
    recorded_as(storage, baseline._trial_id, "environment", environment)
    recorded_as(storage, baseline._trial_id, "curve", curve)
    gcn = next(t for t in own.trials if run_key(t).variant == "gcn" and t.state == optuna.trial.TrialState.COMPLETE)
    gcn_environment, gcn_curve = gcn.user_attrs["environment"], gcn.user_attrs["curve"]
    recorded_as(storage, gcn._trial_id, "environment", gcn_environment | {"code_sha256": "3" * 64})
    run(tmp_path, tuned, bbbp_csv, storage=storage, seeds="0-3")
    assert "training the first 2 epochs of one run of each of 1 variants again" in capsys.readouterr().out
    recorded_as(storage, gcn._trial_id, "environment", gcn_environment | {"code_sha256": "2" * 64})
    recorded_as(storage, gcn._trial_id, "curve", [gcn_curve[0] + 0.01, *gcn_curve[1:]])
    with pytest.raises(UserError, match=r"s's gcn runs were made by code sha256 222222222222\.\.\.,.*\(epoch 1: valid"):
        run(tmp_path, tuned, bbbp_csv, storage=storage, seeds="0-4")


def recorded_as(storage: str, trial_id: int, key: str, value) -> None:
    """Rewrite a finished trial's user attribute (Optuna's API refuses to update finished trials)."""
    from optuna.storages._rdb import models

    with open_storage(storage).scoped_session() as session:
        attribute = models.TrialUserAttributeModel
        row = session.query(attribute).filter_by(trial_id=trial_id, key=key).one()
        row.value_json = json.dumps(value)
        session.commit()


def test_the_code_hash_follows_the_code_that_shapes_results_only(tmp_path):
    import ggt_search

    package = tmp_path / "ggt_search"
    shutil.copytree(ggt_search.__path__[0], package, ignore=shutil.ignore_patterns("__pycache__"))
    assert code_sha256(package) == code_sha256()
    (package / "report" / "page.py").write_text((package / "report" / "page.py").read_text() + "\n")
    assert code_sha256(package) == code_sha256()  # a report edit leaves every run's numbers as they were
    for module in ("model.py", "sources/table.py"):
        edited = package / module
        original = edited.read_text()
        edited.write_text(original + "\n")
        assert code_sha256(package) != code_sha256(), module
        edited.write_text(original)


def test_paths_in_an_ablation_file_are_read_beside_the_file(moleculenet, tmp_path, monkeypatch):
    folder = tmp_path / "studies" / "mine"
    folder.mkdir(parents=True)
    (folder / "own.csv").write_text("smiles,y\nCCO,1.0\n")
    (tmp_path / "studies" / "start.pt").write_bytes(b"")
    table = os.path.relpath(moleculenet, folder)
    (folder / "a.yaml").write_text(
        f"datasets:\n  - {{name: ogbg-molbbbp, source: {table}}}\n  - own.csv\n"
        "baseline: {model: {layers: 1}}\nvariants:\n  tuned: {train: {init: ../start.pt}}\n"
    )
    monkeypatch.chdir(tmp_path / "studies")  # not the file's folder: its paths still mean what they say
    ablation = load_ablation(folder / "a.yaml")
    table_spec, own_spec = ablation.datasets
    assert Path(table_spec.source).resolve() == moleculenet.resolve()
    assert Path(own_spec.name).resolve() == (folder / "own.csv").resolve()
    assert Path(ablation.config("tuned", 0).train.init).resolve() == (tmp_path / "studies" / "start.pt").resolve()
    # From the repository root the packaged files record their tables as `../shared/...`, as before.
    monkeypatch.chdir(ROOT)
    (bbbp, *_) = load_ablation(ROOT / "ablations" / "all.yaml").datasets
    assert bbbp.source == "../shared/data/moleculenet"


def test_a_study_refuses_other_molecules_under_the_same_path(bbbp_csv, tmp_path):  # noqa: F811
    table = tmp_path / "mine.csv"
    shutil.copy(bbbp_csv, table)
    run(tmp_path, ABLATION, table, seeds="0")
    lines = table.read_text().splitlines()
    table.write_text("\n".join(lines[:-20]) + "\n")  # 20 molecules fewer, same file name
    with pytest.raises(UserError, match=r"holds an ablation with checksum = .*--study NEW"):
        run(tmp_path, ABLATION, table, seeds="0-1")
