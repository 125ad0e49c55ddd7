import json

import numpy as np
import pytest
from ogb.graphproppred import Evaluator

from ggt_search import cli
from ggt_search.evaluate import evaluate_seeds, mean_std, parse_seeds
from ggt_search.metrics import _score
from ggt_search.train import Trainer
from tests.conftest import tiny_config


def test_fit_selects_on_validation_and_writes_a_run_directory(bbbp_small, tmp_path):
    result = Trainer(tiny_config(), bbbp_small).fit(tmp_path / "run")
    valid = [r.valid_metric for r in result.history]
    assert result.best_epoch == int(np.argmax(valid)) + 1 and result.best_valid == max(valid)
    assert 0 <= result.test <= 1
    for name in ("config.yaml", "environment.json", "metrics.csv", "best.pt", "result.json"):
        assert (tmp_path / "run" / name).exists(), name
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 3  # header + 2 epochs


def test_search_mode_never_scores_test(bbbp_small, monkeypatch):
    trainer = Trainer(tiny_config(), bbbp_small)
    seen = []
    original = trainer.evaluate
    monkeypatch.setattr(trainer, "evaluate", lambda model, split: seen.append(split) or original(model, split))
    assert trainer.fit(evaluate_test=False).test is None
    assert "test" not in seen and set(seen) == {"valid"}


def test_cpu_runs_repeat_with_the_same_seed(bbbp_small):
    first = Trainer(tiny_config(), bbbp_small).fit()
    second = Trainer(tiny_config(), bbbp_small).fit()
    assert [r.train_loss for r in first.history] == [r.train_loss for r in second.history]
    assert first.test == second.test


def test_regression_reports_rmse_in_target_units():
    from ggt_search.datasets import load_dataset

    tpsa = load_dataset("nci-tpsa")
    small = tpsa.subset(np.r_[tpsa.split["train"][:200], tpsa.split["valid"][:50], tpsa.split["test"][:50]])
    config = tiny_config().with_overrides(dataset={"name": "nci-tpsa"}, train={"epochs": 3})
    result = Trainer(config, small).fit()
    spread = float(small.y[small.split["valid"]].std())
    assert 0 < result.best_valid < 2 * spread  # TPSA units (Å²), learnt from standardised targets


def test_our_metrics_equal_ogb_evaluator():
    rng = np.random.default_rng(0)
    for name, metric, tasks in (("ogbg-molhiv", "rocauc", 1), ("ogbg-moltox21", "rocauc", 12), ("ogbg-molmuv", "ap", 17), ("ogbg-molesol", "rmse", 1)):
        truth = rng.integers(0, 2, (400, tasks)).astype(float) if metric != "rmse" else rng.normal(size=(400, 1))
        truth[rng.random(truth.shape) < 0.3] = np.nan  # missing labels, as in tox21 and muv
        pred = rng.random((400, tasks))
        assert _score(metric, truth, pred) == pytest.approx(Evaluator(name).eval({"y_true": truth, "y_pred": pred})[metric])


def test_seed_lists_and_unbiased_std():
    assert parse_seeds("0-9") == list(range(10)) and parse_seeds("1,4-5") == [1, 4, 5]
    mean, std = mean_std([0.7, 0.8, 0.9])
    assert mean == pytest.approx(0.8) and std == pytest.approx(0.1)


def test_evaluate_two_seeds_resumes(bbbp_small, tmp_path, monkeypatch):
    import ggt_search.evaluate as evaluate

    monkeypatch.setattr(evaluate, "Trainer", lambda config: Trainer(config, bbbp_small))
    summary = evaluate_seeds(tiny_config(), [0, 1], tmp_path)
    assert summary["seeds"] == [0, 1] and summary["parameters"] > 0
    assert summary["test"]["std"] == pytest.approx(np.std([summary["per_seed"][s]["test"] for s in (0, 1)], ddof=1))
    assert "test" in (tmp_path / "summary.md").read_text()

    def no_training(config):
        raise AssertionError("a finished seed was trained again")
    monkeypatch.setattr(evaluate, "Trainer", no_training)
    assert evaluate_seeds(tiny_config(), [0, 1], tmp_path)["test"] == summary["test"]


def test_cli_train_end_to_end_on_a_shared_table(moleculenet, tmp_path, capsys):
    code = cli.main(["train", "--dataset", "ogbg-molbbbp", "--source", str(moleculenet), "--layers", "1", "--hidden", "8",
                     "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "run")])
    assert code == 0
    assert json.loads((tmp_path / "run" / "result.json").read_text())["metric"] == "rocauc"
    assert "best epoch 1" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["train", "--config", "nowhere.yaml"], "config file not found"),
    (["train", "--dataset", "ogbg-molfoo"], "unknown OGB dataset"),
    (["evaluate", "--seeds", "a-b"], "bad seed list"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_unknown_config_key_is_named(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("model:\n  hiden: 64\n")
    assert cli.main(["train", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown model key(s) ['hiden']" in capsys.readouterr().err
