"""File-system, checkpoint and naming faults: each one line, nothing half-written (issues 27.4, 27.5, 28.2)."""

import errno
import json
import os
import pickle

import optuna
import pytest
import torch

from ggt_search import cli, files
from ggt_search.datasets import load_dataset
from ggt_search.errors import UserError
from ggt_search.train import Trainer
from tests.conftest import tiny_config
from tests.test_search import bbbp_csv  # noqa: F401  (fixture: 300 real molecules)

TINY = ["--epochs", "1", "--hidden", "8", "--layers", "1", "--pe-dim", "0", "--device", "cpu"]


def fill_disk_after(monkeypatch, name: str, budget: int = 4096):
    """torch.save into files named `name` writes `budget` bytes, then the disk is full (ENOSPC)."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        if name in os.path.basename(getattr(f, "name", "")):
            f.write(b"x" * budget)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_a_full_disk_while_writing_a_run_is_one_line_and_leaves_no_partial_file(
    tmp_path,
    bbbp_csv,  # noqa: F811
    monkeypatch,
    capsys,
):
    load_dataset(str(bbbp_csv))  # the cache first: only the weights meet the full disk
    fill_disk_after(monkeypatch, "best.pt")
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", str(bbbp_csv), *TINY, "--out", str(out)]) == 2
    assert "disk full writing" in one_error_line(capsys)
    assert sorted(p.name for p in out.iterdir() if p.name != "tensorboard") == [
        "config.yaml",
        "environment.json",
        "metrics.csv",
    ]  # no best.pt, no temporary file; metrics.csv whole
    assert len((out / "metrics.csv").read_text().splitlines()) == 2


def test_a_full_disk_while_caching_a_dataset_leaves_no_temporary_file(
    tmp_path,
    bbbp_csv,  # noqa: F811
    monkeypatch,
):
    fresh = tmp_path / "never-cached.csv"
    fresh.write_bytes(bbbp_csv.read_bytes())
    fill_disk_after(monkeypatch, "graphs.pt", budget=1 << 20)
    with pytest.raises(files.DiskFull, match="disk full writing .*graphs.pt"):
        load_dataset(str(fresh))
    (folder,) = [p for p in files_root().iterdir() if p.name.startswith("never-cached")]
    assert list(folder.iterdir()) == []  # neither graphs.pt nor a temporary file


def files_root():
    from ggt_search.graphset import cache_root

    return cache_root()


def test_a_poisoned_cache_file_with_a_matching_checksum_is_rebuilt(bbbp_csv, capsys):  # noqa: F811
    graphs = load_dataset(str(bbbp_csv))
    stored = graphs.stored() | {"edges": graphs.edges + 1000}  # atoms outside their graphs
    torch.save(stored, graphs.cache_dir / "graphs.pt")
    (graphs.cache_dir / "graphs.pt.sha256").write_text(files.file_sha256(graphs.cache_dir / "graphs.pt"))
    again = load_dataset(str(bbbp_csv))
    assert "holds no dataset (an edge names an atom outside its graph); rebuilding it" in capsys.readouterr().err
    assert torch.equal(again.edges, graphs.edges) and again.inconsistency() is None


class Malicious:
    def __reduce__(self):
        return (os.system, ("touch /tmp/ggt-pwned",))


@pytest.mark.parametrize(
    "content, message",
    [
        (os.urandom(256), "cannot read .* as a checkpoint"),
        ("state dict", "holds a run's weights \\(best.pt\\), not a pre-trained checkpoint"),
        ([1, 2, 3], "holds a list, not a pre-trained checkpoint"),
        (pickle.dumps(Malicious()), "cannot read .* as a checkpoint"),
    ],
)
def test_init_of_what_is_no_checkpoint_is_one_line(tmp_path, bbbp_small, content, message):
    path = tmp_path / "init.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "state dict":
        torch.save(Trainer(tiny_config(), bbbp_small).build_model().state_dict(), path)
    else:
        torch.save(content, path)
    trainer = Trainer(tiny_config().with_overrides(train={"init": str(path)}), bbbp_small)
    with pytest.raises(UserError, match=message):
        trainer.build_model()
    assert not os.path.exists("/tmp/ggt-pwned")


def test_train_and_evaluate_with_a_diverging_lr_say_so_in_one_line(tmp_path, bbbp_csv, capsys):  # noqa: F811
    for command in ("train", "evaluate"):
        args = [command, "--dataset", str(bbbp_csv), *TINY, "--lr", "1e9", "--out", str(tmp_path / command)]
        assert cli.main(args + (["--seeds", "0"] if command == "evaluate" else [])) == 2
        assert "the run diverged; lower --lr (now 1e+09)" in one_error_line(capsys)


def test_an_out_whose_parent_is_a_file_is_one_line(tmp_path, bbbp_csv, capsys):  # noqa: F811
    (tmp_path / "file").write_text("")
    assert cli.main(["train", "--dataset", str(bbbp_csv), *TINY, "--out", str(tmp_path / "file" / "run")]) == 2
    assert "must be a folder, but a file is in the way" in one_error_line(capsys)  # refused before training


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_is_one_line(tmp_path, bbbp_csv, capsys):  # noqa: F811
    (tmp_path / "ro").mkdir(mode=0o555)
    assert cli.main(["train", "--dataset", str(bbbp_csv), *TINY, "--out", str(tmp_path / "ro" / "run")]) == 2
    assert "permission denied" in one_error_line(capsys)


def test_evaluate_retrains_a_damaged_result_and_refuses_a_second_evaluation(tmp_path, bbbp_csv, capsys):  # noqa: F811
    from ggt_search.final_evaluation import folder_lock

    out = tmp_path / "final"
    args = ["evaluate", "--dataset", str(bbbp_csv), *TINY, "--seeds", "0", "--out", str(out)]
    assert cli.main(args) == 0
    first = json.loads((out / "summary.json").read_text())
    (out / "seed-0" / "result.json").write_text('{"metric": ')
    assert cli.main(args) == 0
    assert "seed-0/result.json is damaged (not a run's result); retraining that seed" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["test"] == first["test"]
    with folder_lock(out):  # another evaluation holds the folder
        assert cli.main(args) == 2
        assert "another evaluation is running in" in one_error_line(capsys)


def test_a_retry_of_a_stale_trial_does_not_inherit_its_weights():
    from ggt_search.storage import RetryWithoutWeights

    study = optuna.create_study()
    trial = study.ask()
    trial.set_user_attr("weights", "artifact: best.pt")
    trial.set_user_attr("curve", [0.5])
    study._storage.set_trial_system_attr(trial._trial_id, "artifacts:1234", "{}")
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    RetryWithoutWeights(max_retry=2)(study, study.trials[0])
    retry = study.trials[1]
    assert retry.user_attrs == {"curve": [0.5]} and not [k for k in retry.system_attrs if k.startswith("artifacts:")]


def test_evaluate_from_study_refuses_weights_that_do_not_match_their_checksum(tmp_path, bbbp_csv, capsys):  # noqa: F811
    from ggt_search.study import best_config

    storage = f"sqlite:///{tmp_path}/s.db"
    space = tmp_path / "space.yaml"
    space.write_text("model.hidden: {choices: [8]}\n")
    search = ["search", "--study", "s", "--space", str(space), "--trials", "1", "--storage", storage]
    assert cli.main([*search, "--dataset", str(bbbp_csv), *TINY]) == 0
    trial = optuna.load_study(study_name="s", storage=storage).best_trial
    (artifact,) = (tmp_path / "artifacts").iterdir()
    assert trial.user_attrs["weights_sha256"] == files.file_sha256(artifact)
    assert trial.user_attrs["weights_bytes"] == artifact.stat().st_size
    best_config("s", storage)  # intact: accepted
    artifact.write_bytes(artifact.read_bytes()[:4096])  # truncated
    capsys.readouterr()
    assert cli.main(["evaluate", "--from-study", "s", "--storage", storage, "--out", str(tmp_path / "e")]) == 2
    assert "do not match their recorded sha256" in one_error_line(capsys)


@pytest.mark.parametrize("name", ["../../x", "<script>alert(1)</script>", "[x](javascript:alert(1))"])
def test_names_that_are_not_paths_make_safe_files_and_inert_html(tmp_path, name):
    from matplotlib.figure import Figure

    from ggt_search.report.page import Page, slug

    out = tmp_path / "deep" / "report"
    page = Page(out, f"report: {name}")
    page.heading(f"Search: {name} ![x](../../../etc/passwd)")
    fig = Figure(figsize=(1, 1))
    fig.subplots().plot([0, 1])
    page.figure(fig, f"history-{name}", "history")
    page.write()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{slug('history-' + name)}.png", "index.html", "report.md"]
    )
    assert not list(tmp_path.glob("**/x*.png")) and "/" not in slug(name)
    html = (out / "index.html").read_text()
    assert "<script" not in html and "javascript:" not in html.replace("[x](javascript:", "")
    assert "<a " not in html and "passwd" not in html and html.count('src=""') == 1  # the name's image: no source
