import json
import tomllib
from dataclasses import fields

import numpy as np
import pytest
from ogb.graphproppred import Evaluator

from ggt_search import cli
from ggt_search.errors import UserError
from ggt_search.final_evaluation import evaluate_seeds, mean_std, parse_seeds
from ggt_search.metrics import _score
from ggt_search.train import Trainer
from tests.conftest import ROOT, TINY_FLAGS, tiny_config


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


def test_patience_stops_a_converged_run_and_keeps_what_it_selected(bbbp_small):
    config = tiny_config()
    full = Trainer(config.with_overrides(train={"epochs": 12, "lr": 0.01}), bbbp_small).fit()
    valid = [r.valid_metric for r in full.history]
    # The first epoch by which 2 epochs have passed without a better validation score than the best so far.
    stop = next(e for e in range(1, 13) if e - (int(np.argmax(valid[:e])) + 1) >= 2)
    assert stop < 12, "this slice must plateau within 12 epochs for the test to mean anything"
    early = Trainer(config.with_overrides(train={"epochs": 12, "lr": 0.01, "patience": 2}), bbbp_small).fit()
    assert len(early.history) == stop
    assert [r.valid_metric for r in early.history] == valid[:stop]
    assert early.best_epoch == int(np.argmax(valid[:stop])) + 1 and early.best_valid == max(valid[:stop])


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
    for name, metric, tasks in (
        ("ogbg-molhiv", "rocauc", 1),
        ("ogbg-moltox21", "rocauc", 12),
        ("ogbg-molmuv", "ap", 17),
        ("ogbg-molesol", "rmse", 1),
        ("ogbg-molesol", "rmse", 3),
    ):  # OGB's RMSE: per task, then averaged
        truth = (
            rng.integers(0, 2, (400, tasks)).astype(float)
            if metric != "rmse"
            else rng.normal(size=(400, tasks)) * np.arange(1, tasks + 1)
        )
        truth[rng.random(truth.shape) < 0.3] = np.nan  # missing labels, as in tox21 and muv
        pred = rng.random((400, tasks))
        evaluator = Evaluator(name)
        evaluator.num_tasks = tasks  # OGB's own rule, applied to a 3-task table as on a user's CSV
        assert _score(metric, truth, pred) == pytest.approx(evaluator.eval({"y_true": truth, "y_pred": pred})[metric])


def test_seed_lists_and_unbiased_std():
    assert parse_seeds("0-9") == list(range(10)) and parse_seeds("1,4-5") == [1, 4, 5]
    mean, std = mean_std([0.7, 0.8, 0.9])
    assert mean == pytest.approx(0.8) and std == pytest.approx(0.1)


def test_evaluate_two_seeds_resumes(bbbp_small, tmp_path, monkeypatch):
    import ggt_search.final_evaluation as evaluate

    monkeypatch.setattr(evaluate, "Trainer", lambda config: Trainer(config, bbbp_small))
    summary = evaluate_seeds(tiny_config(), [0, 1], tmp_path)
    assert summary["seeds"] == [0, 1] and summary["parameters"] > 0
    assert summary["test"]["std"] == pytest.approx(np.std([summary["per_seed"][s]["test"] for s in (0, 1)], ddof=1))
    assert "test" in (tmp_path / "summary.md").read_text()

    def no_training(config):
        raise AssertionError("a finished seed was trained again")

    monkeypatch.setattr(evaluate, "Trainer", no_training)
    assert evaluate_seeds(tiny_config(), [0, 1], tmp_path)["test"] == summary["test"]
    longer = tiny_config().with_overrides(train={"epochs": 3})  # another config: the finished seeds are not its results
    with pytest.raises(UserError, match=r"seed-0 was trained with train.epochs = 2, not 3; pass another --out"):
        evaluate_seeds(longer, [0, 1], tmp_path)


def test_cli_train_end_to_end_on_a_shared_table(moleculenet, tmp_path, capsys):
    code = cli.main(
        [
            "train",
            "--dataset",
            "ogbg-molbbbp",
            "--source",
            str(moleculenet),
            *TINY_FLAGS,
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 0
    assert json.loads((tmp_path / "run" / "result.json").read_text())["metric"] == "rocauc"
    assert "best epoch 1" in capsys.readouterr().out

    # another config into the same folder is refused, one line, and the run there is kept as it was
    before = {path.name: path.read_bytes() for path in (tmp_path / "run").iterdir() if path.is_file()}
    again = ["train", "--dataset", "ogbg-molbbbp", "--source", str(moleculenet), *TINY_FLAGS, "--epochs", "2"]
    assert cli.main([*again, "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'run'} was trained with train.epochs = 1, not 2; pass another --out, or delete that "
        "folder to retrain\n"
    )
    assert {path.name: path.read_bytes() for path in (tmp_path / "run").iterdir() if path.is_file()} == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--config", "nowhere.yaml"], "config file not found"),
        (["train", "--dataset", "ogbg-molfoo"], "unknown OGB dataset"),
        (["evaluate", "--seeds", "a-b"], "bad seed list"),
    ],
)
def test_cli_errors_are_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_unknown_config_key_is_named(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("model:\n  hiden: 64\n")
    assert cli.main(["train", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown model key(s) ['hiden']" in capsys.readouterr().err


@pytest.mark.parametrize(
    "section, values, message",
    [
        ("model", {"residual": "no"}, "model.residual must be true or false, got 'no'"),
        ("model", {"layers": True}, "model.layers must be an integer, got True"),
        ("model", {"dropout": "0.1"}, "model.dropout must be a finite number, got '0.1'"),
        ("dataset", {"name": "x.csv", "split_seed": "x"}, "dataset.split_seed must be an integer, got 'x'"),
        ("train", {"weight_decay": -1}, r"train.weight_decay must be >= 0, got -1"),
        ("train", {"lr": float("inf")}, "train.lr must be a finite number, got inf"),
        ("train", {"batch_size": 1}, "train.batch_size must be >= 2"),
    ],
)
def test_config_values_of_the_wrong_type_or_range_are_named(section, values, message):
    from ggt_search.config import RunConfig
    from ggt_search.errors import UserError

    with pytest.raises(UserError, match=message):
        RunConfig.from_dict({section: values})


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--lr", "inf"], "train.lr must be a finite number, got inf"),
        (["train", "--weight-decay", "-1"], "train.weight_decay must be >= 0"),
        (["search", "--study", "s", "--workers", "0"], "argument --workers: must be >= 1, got 0"),
        (["search", "--study", "s", "--trials", "-3"], "argument --trials: must be >= 1, got -3"),
        (["search", "--study", "s", "--trials", "0"], "argument --trials: must be >= 1, got 0"),
        (["search", "--study", "s", "--heartbeat", "0"], "argument --heartbeat: must be >= 1, got 0"),
        (["evaluate", "--workers", "0"], "argument --workers: must be >= 1"),
        (["evaluate", "--seeds", "0,0"], r"names seed\(s\) \[0\] more than once"),
        (["bench", "--repeats", "0"], "argument --repeats: must be >= 1"),
        (["bench", "--max-graphs", "0"], "argument --max-graphs: must be >= 2"),
        (["dashboard", "--port", "99999"], "must be a TCP port, 1-65535, got 99999"),
        (["dashboard", "--port", "-1"], "argument --port: must be >= 1, got -1"),
        (["ablate", "ablations/convolution.yaml", "--epochs", "0"], "argument --epochs: must be >= 1, got 0"),
    ],
)
def test_bad_arguments_are_one_line_without_traceback(argv, message, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as stop:  # argparse's own exit, after our one-line message
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert __import__("re").search(message, err), err


def test_read_only_commands_never_create_a_database(tmp_path, capsys):
    missing = tmp_path / "nowhere.db"
    for argv in (
        ["evaluate", "--from-study", "s", "--storage", f"sqlite:///{missing}"],
        ["report", "s", "--storage", f"sqlite:///{missing}"],
        ["dashboard", "--storage", f"sqlite:///{missing}"],
    ):
        assert cli.main(argv) == 2
        assert "no study storage at" in capsys.readouterr().err
    assert not missing.exists()


def test_dashboard_refuses_a_port_in_use(tmp_path, capsys):
    import socket

    import optuna

    storage = f"sqlite:///{tmp_path}/d.db"
    optuna.create_study(storage=storage)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert cli.main(["dashboard", "--storage", storage, "--port", str(taken.getsockname()[1])]) == 2
    assert "pick another port with --port" in capsys.readouterr().err


def test_help_answers_without_importing_torch():
    import subprocess
    import sys

    code = (
        "import sys; from ggt_search import cli; cli.build_parser(); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_choice_flag_offers_exactly_its_config_fields_options():
    """The CLI reads the options from the config fields' types, as the config checks do."""
    import argparse

    from ggt_search.config import DatasetSpec, ModelConfig, TrainConfig, choices

    parser = argparse.ArgumentParser()
    cli.add_config_flags(parser)
    offered = {action.dest: tuple(action.choices) for action in parser._actions if action.choices}
    sections = (("model", ModelConfig), ("train", TrainConfig))
    expected = choices(DatasetSpec) | {
        f"{section}.{name}": options for section, cls in sections for name, options in choices(cls).items()
    }
    assert offered == expected and "model.conv" in offered


def test_model_and_train_flags_are_explained_by_their_config_fields_comments(capsys):
    from ggt_search.config import ModelConfig, TrainConfig

    for cls in (ModelConfig, TrainConfig):
        uncommented = {f.name for f in fields(cls)} - set(cli.field_comments(cls))
        assert not uncommented, f"{cls.__name__} fields without a comment to explain their flag: {uncommented}"
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--pe-dim INT Laplacian eigenvector positional encodings per atom (0: none) (default 10)" in shown
    assert "--lr NUMBER Adam's learning rate (default 0.001)" in shown
    assert "--norm {batch,layer,graph,none}" in shown and "MODEL." not in shown and "TRAIN." not in shown


def test_version_and_the_search_spaces_are_named(tmp_path, capsys):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--version"])
    assert stopped.value.code == 0 and capsys.readouterr().out == f"ggt-search {project['version']}\n"
    with pytest.raises(SystemExit):
        cli.main(["search", "--help"])
    assert "default: default" in " ".join(capsys.readouterr().out.split())
    storage = f"sqlite:///{tmp_path}/search.db"
    assert cli.main(["search", "--study", "s", "--space", "nosuch", "--storage", storage]) == 2
    assert capsys.readouterr().err == (
        "error: search space nosuch not found: give a YAML file, or a packaged space (default, quick)\n"
    )
    assert not (tmp_path / "search.db").exists()
