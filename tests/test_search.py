"""Search studies on a real slice of ogbg-molbbbp: pruning, resume, faults, killed workers, workers on PostgreSQL."""

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from ggt_search import cli
from ggt_search.config import RunConfig
from ggt_search.errors import UserError
from ggt_search.space import load_space
from ggt_search.study import SearchSettings, search, searched_base
from tests.conftest import CLI, TINY_FLAGS, age_heartbeats, interruptible, search_command

TINY_SPACE = """
model.conv: {choices: [gated-gcn, gcn, mlp]}
model.pe_dim: {choices: [0, 4]}
model.pe_sign_flip: {choices: ["off", batch], when: {model.pe_dim: [4]}}
model.layers: {int: [1, 2]}
model.hidden: {choices: [8, 16]}
train.lr: {float: [1.0e-3, 1.0e-2], log: true}
"""


@pytest.fixture(scope="module")
def bbbp_csv(moleculenet, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "bbbp300.csv"
    pd.read_csv(moleculenet / "BBBP.csv").sample(300, random_state=0).to_csv(path, index=False)
    return path


@pytest.fixture
def space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(TINY_SPACE)
    return path


def settings(tmp_path, bbbp_csv, space, **overrides):
    base = RunConfig.from_dict(
        {"dataset": str(bbbp_csv), "model": {"dropout": 0.0}, "train": {"epochs": 4, "batch_size": 64, "device": "cpu"}}
    )
    values = (
        dict(
            study="s", base=base, space_file=str(space), trials=8, storage=f"sqlite:///{tmp_path}/study.db", heartbeat=2
        )
        | overrides
    )
    return SearchSettings(**values)


def test_study_runs_prunes_and_resumes(tmp_path, bbbp_csv, space, capsys):
    study = search(settings(tmp_path, bbbp_csv, space, pruner="hyperband"))
    states = [t.state for t in study.trials]
    assert len(states) == 8 and TrialState.PRUNED in states and TrialState.COMPLETE in states
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    for trial in done:
        assert {"config", "parameters", "epochs", "seconds", "best_epoch", "curve"} <= set(trial.user_attrs)
        assert len(trial.intermediate_values) == trial.user_attrs["epochs"] == 4
    best = study.best_trial
    assert best.user_attrs["weights"] == "artifact: best.pt" and optuna.artifacts.get_all_artifact_meta(
        best, storage=study._storage
    )
    assert "[8/8] trial 7" in capsys.readouterr().out

    again = search(settings(tmp_path, bbbp_csv, space, pruner="hyperband", trials=10))  # same study: two more
    assert len(again.trials) == 10 and [t.number for t in again.trials[:8]] == list(range(8))
    params = [tuple(sorted(t.params.items())) for t in again.trials]
    assert len(set(params)) == len(params)  # the resumed sampler does not replay earlier trials
    search(settings(tmp_path, bbbp_csv, space, pruner="hyperband", trials=10))  # the same search: nothing to add
    assert "already has its 10 finished trials" in capsys.readouterr().out


def test_the_best_trial_goes_to_a_multi_seed_evaluation(tmp_path, bbbp_csv, space, capsys):
    study = search(settings(tmp_path, bbbp_csv, space, trials=3, pruner="none"))
    storage = f"sqlite:///{tmp_path}/study.db"
    assert f"ggt-search evaluate --from-study s --storage {storage} --seeds 0-9" in capsys.readouterr().out
    out = tmp_path / "final"
    final = ["evaluate", "--from-study", "s", "--storage", storage, "--epochs", "1"]
    cli.main([*final, "--seeds", "0,1", "--workers", "2", "--out", str(out)])  # two seeds at once, in two processes
    summary = json.loads((out / "summary.json").read_text())
    best = study.best_trial.user_attrs["config"]
    assert (
        summary["config"]["model"] == best["model"] and summary["config"]["train"]["epochs"] == 1
    )  # flags still override
    assert summary["seeds"] == [0, 1] and 0 <= summary["test"]["mean"] <= 1
    cli.main(
        [*final, "--seeds", "1", "--out", str(tmp_path / "alone")]
    )  # a seed's result does not depend on the workers
    assert json.loads((tmp_path / "alone" / "summary.json").read_text())["per_seed"]["1"] == summary["per_seed"]["1"]
    assert cli.main(["evaluate", "--from-study", "nope", "--storage", storage]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: no study 'nope' in {storage}; studies there: s"]


def test_failing_and_diverging_candidates_are_recorded_and_the_study_goes_on(tmp_path, bbbp_csv):
    space = tmp_path / "faulty.yaml"
    damaged = tmp_path / "damaged.pt"  # a checkpoint only reading it shows to be none: the trial's to find
    damaged.write_bytes(b"not a checkpoint")
    space.write_text(
        f"train.init: {{choices: [null, '{damaged}']}}\ntrain.lr: {{choices: [1.0e-3, 1.0e+9]}}\n"
        "model.hidden: 8\nmodel.layers: 1\n"
    )
    study = search(settings(tmp_path, bbbp_csv, space, sampler="grid", trials=4, pruner="none"))
    by_params = {(t.params["train.init"], t.params["train.lr"]): t for t in study.trials}
    assert len(by_params) == 4
    assert by_params[(None, 1e-3)].state == TrialState.COMPLETE
    diverged = by_params[(None, 1e9)]
    assert diverged.state == TrialState.PRUNED and "training loss is" in diverged.user_attrs["reason"]
    for lr in (1e-3, 1e9):
        failed = by_params[(str(damaged), lr)]
        assert failed.state == TrialState.FAIL and "as a checkpoint" in failed.user_attrs["reason"]


def test_a_controlled_design_varies_one_dimension_per_group_and_the_report_ranks_it(tmp_path, bbbp_csv, space):
    from ggt_search.report import build_report
    from ggt_search.study import design_dimensions

    study = search(settings(tmp_path, bbbp_csv, space, sampler="controlled", trials=9))
    assert len(study.trials) == 9 and all(
        t.state == TrialState.COMPLETE for t in study.trials
    )  # no pruner: groups train to the end
    dimensions = design_dimensions(load_space(space))
    groups = {}
    for t in study.trials:
        if "design_group" in t.user_attrs:
            groups.setdefault(t.user_attrs["design_group"], []).append(t)
    assert (
        len(groups) >= 3 and sum(map(len, groups.values())) >= 8
    )  # at most one lone head, when no group fits the room left
    seeds = set()
    for number, members in groups.items():
        dimension = members[0].user_attrs["design_dimension"]
        assert {t.user_attrs["design_dimension"] for t in members} == {dimension}
        assert sorted(str(t.params[dimension]) for t in members) == sorted(
            map(str, dimensions[dimension])
        )  # each choice once
        head = next(t for t in members if t.number == number)
        for sibling in members:  # every other parameter the two share is the head's
            shared = (set(head.params) & set(sibling.params)) - {dimension}
            assert {k: sibling.params[k] for k in shared} == {k: head.params[k] for k in shared}
        group_seeds = {t.user_attrs["config"]["train"]["seed"] for t in members}
        assert len(group_seeds) == 1
        seeds |= group_seeds
    assert len(seeds) == len(groups)  # one seed per group: the ranks are over seeds too

    build_report(["s"], f"sqlite:///{tmp_path}/study.db", tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert f"Within each of the {len(groups)} groups" in md and "Groups from a controlled design" in md
    with pytest.raises(UserError, match="--pruner none"):
        settings(tmp_path, bbbp_csv, space, sampler="controlled", pruner="median")


def test_search_never_reads_test_labels(tmp_path, bbbp_csv, space, monkeypatch):
    from ggt_search.train import Trainer

    original = Trainer.evaluate
    monkeypatch.setattr(
        Trainer,
        "evaluate",
        lambda self, model, split: original(self, model, split) if split != "test" else pytest.fail("test read"),
    )
    search(settings(tmp_path, bbbp_csv, space, trials=2))


def test_killed_worker_trial_is_failed_and_retried(tmp_path, bbbp_csv, space):
    storage = f"sqlite:///{tmp_path}/killed.db"
    command = search_command("k", space, bbbp_csv, storage, 1, 40, "--heartbeat", "30")
    worker = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ | {"PYTHONUNBUFFERED": "1"}
    )
    wait_for_epochs(storage, "k", 2)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert optuna.load_study(study_name="k", storage=storage).trials[0].state == TrialState.RUNNING

    # Rerun at once: the killed trial still looks alive. The rerun says so and when it will be retried,
    # and trains nothing.
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "1 trial(s) still RUNNING in another worker: trial 0 (last heartbeat" in rerun.stdout
    assert "rerun this command then" in rerun.stdout and "already has" not in rerun.stdout
    assert [t.state for t in optuna.load_study(study_name="k", storage=storage).trials] == [TrialState.RUNNING]

    age_heartbeats(storage, seconds=600)  # past the grace period of 4 heartbeats, without waiting for it
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    trials = optuna.load_study(study_name="k", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].params == trials[0].params  # the retry trains the same candidate


def wait_for_epochs(storage: str, study: str, epochs: int, timeout: float = 120) -> None:
    """Poll until the study's first trial has reported `epochs` epochs (a bounded wait, not a race)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name=study, storage=storage).trials
        except KeyError:
            continue
        if trials and len(trials[0].intermediate_values) >= epochs:
            return
    pytest.fail(f"no trial of {study} reached {epochs} epochs in {timeout} s")


@pytest.mark.postgres
def test_two_workers_share_a_postgresql_study(tmp_path, bbbp_csv, space):
    url = os.environ.get("GGT_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("GGT_TEST_POSTGRES_URL not set (tests/run.sh starts a server)")
    study_name = f"pg-{os.getpid()}-{time.time_ns()}"
    command = search_command(study_name, space, bbbp_csv, url, 6, 3, "--artifacts", str(tmp_path / "a"))
    workers = [
        subprocess.Popen(command + ["--seed", str(i)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0].decode() for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    trials = optuna.load_study(study_name=study_name, storage=url).trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6  # exactly what was asked: none lost, no extra
    assert len({t.number for t in trials}) == len(trials)
    failed = {t.number: t.user_attrs.get("reason", "") for t in trials if t.state == TrialState.FAIL}
    assert all(reason.startswith("surplus") for reason in failed.values()), failed
    assert all(sum(f"trial {t.number} " in out for out in outputs) == 1 for t in finished)  # each trained by one worker


@pytest.mark.parametrize(
    "text, message",
    [
        ("model.convv: {choices: [gcn]}\n", "unknown key 'model.convv'"),
        ("model.layers: {int: [4, 2]}\n", r"model.layers.int must be \[low, high\]"),
        ("model.ffn_ratio: {choices: [2], when: {model.ffn: [true]}}\n", "not an earlier key"),
        ("model.layers: {choices: [2], int: [1, 3]}\n", "exactly one of"),
    ],
)
def test_invalid_space_names_the_key(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_space(path)


def test_search_cli_bad_storage_is_one_line(tmp_path, capsys):
    assert cli.main(["search", "--study", "x", "--storage", "nodb", "--trials", "1"]) == 2
    assert "is not a database URL" in capsys.readouterr().err


def test_default_space_loads_and_covers_the_issue():
    space = load_space()
    assert space["model.conv"]["choices"] == ["gated-gcn", "gcn", "mlp"]
    assert space["model.norm"]["choices"] == ["batch", "layer", "graph", "none"]
    assert space["model.pe_dim"]["choices"] == [0, 4, 8, 16, 20]
    assert space["model.ffn_ratio"]["choices"] == [1, 2, 4, 8]


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "model.conv: {choices: [gcn, transformer]}\n",
            "model.conv value 'transformer': model.conv = 'transformer' is not one of",
        ),
        ("train.lr: {float: [0.0, 0.01], log: true}\n", "log-scaled, so its low bound must be > 0"),
        ("model.layers: {int: [a, b]}\n", "must be \\[low, high\\], integers"),
        ("model.layers: {int: [0, 2]}\n", "model.layers value 0: model.layers must be >= 1"),
        (
            "model.residual: {choices: ['no', true]}\n",
            "model.residual value 'no': model.residual must be true or false",
        ),
    ],
)
def test_every_value_of_a_space_is_checked_before_the_study_exists(tmp_path, bbbp_csv, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        search(settings(tmp_path, bbbp_csv, path))
    assert not (tmp_path / "study.db").exists()


def test_ctrl_c_stops_a_search_with_one_line_and_records_the_trial(tmp_path, bbbp_csv, space):
    storage = f"sqlite:///{tmp_path}/stopped.db"
    # A trial far longer than any machine's wait for its first epoch: the Ctrl-C always finds it running.
    command = search_command("c", space, bbbp_csv, storage, 1, 10000)
    worker = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=interruptible,
    )
    try:
        wait_for_epochs(storage, "c", 1)
        os.killpg(worker.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: SIGINT to the whole process group
        _, err = worker.communicate(timeout=120)
    finally:  # a search that ignored the Ctrl-C must not train on after the test
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    assert worker.returncode == 130
    assert err.strip().splitlines() == ["stopped: what had finished is recorded; rerun the same command to resume"]
    trial = optuna.load_study(study_name="c", storage=storage).trials[0]
    assert trial.state == TrialState.FAIL and trial.user_attrs["reason"] == "stopped (Ctrl-C or SIGTERM)"


def descendants(pid: int) -> set[int]:
    children = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            children |= {int(c) for c in f.read().split()}
    return children | {d for c in children for d in descendants(c) if os.path.exists(f"/proc/{c}")}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigterm_stops_every_worker_and_keeps_finished_seeds(tmp_path, bbbp_csv):
    out = tmp_path / "eval"
    command = [
        *CLI,
        "evaluate",
        "--dataset",
        str(bbbp_csv),
        *TINY_FLAGS,
        "--epochs",
        "200",
        "--seeds",
        "0-3",
        "--workers",
        "2",
        "--out",
        str(out),
    ]
    parent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not all((out / f"seed-{s}" / "metrics.csv").exists() for s in (0, 1)) and time.time() < deadline:
        time.sleep(0.5)  # both workers are training
    workers = descendants(parent.pid)
    assert len(workers) >= 2
    parent.send_signal(signal.SIGTERM)
    _, err = parent.communicate(timeout=120)
    assert parent.returncode == 130 and "Traceback" not in err
    deadline = time.time() + 60
    while any(alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not [p for p in workers if alive(p)], "orphaned worker processes"


def test_cpu_workers_share_the_cores(tmp_path, bbbp_csv):
    from ggt_search.workers import cpu_share

    out = tmp_path / "eval"
    assert (
        cli.main(
            [
                "evaluate",
                "--dataset",
                str(bbbp_csv),
                *TINY_FLAGS,
                "--epochs",
                "1",
                "--seeds",
                "0,1",
                "--workers",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    threads = [json.loads((out / f"seed-{s}" / "environment.json").read_text())["threads"] for s in (0, 1)]
    assert threads == [cpu_share(2)] * 2 == [max(1, len(os.sched_getaffinity(0)) // 2)] * 2


def test_a_resumed_search_must_be_the_same_experiment(tmp_path, bbbp_csv, moleculenet, space):
    """Another dataset (or the same file changed), epoch budget, space or base config would pool two
    experiments' trials; how trials run (eval_train here), and base fields the space samples, may change."""
    dataset = tmp_path / "bbbp.csv"
    dataset.write_bytes(bbbp_csv.read_bytes())
    base = settings(tmp_path, bbbp_csv, space).base.with_overrides(dataset={"name": str(dataset)}, train={"epochs": 1})
    first = dict(trials=1, pruner="none", base=base)
    search(settings(tmp_path, bbbp_csv, space, **first))

    other_space = tmp_path / "other.yaml"
    other_space.write_text(TINY_SPACE.replace("model.layers: {int: [1, 2]}", "model.layers: {int: [1, 3]}"))
    other = tmp_path / "other.csv"
    pd.read_csv(moleculenet / "BBBP.csv").sample(300, random_state=1).to_csv(other, index=False)
    more = first | {"trials": 2}  # a resume that would train a trial
    resumes = {
        "dataset.name": more | {"base": first["base"].with_overrides(dataset={"name": str(other)})},
        "epochs": more | {"base": first["base"].with_overrides(train={"epochs": 3})},
        "space.model.layers.int": more | {"space_file": str(other_space)},
        "sampler": more | {"sampler": "random"},
        "seeds_per_trial": more | {"seeds_per_trial": 2},
        "base.model.dropout": more | {"base": first["base"].with_overrides(model={"dropout": 0.2})},
    }
    for field, changed in resumes.items():
        with pytest.raises(UserError, match=rf"study s holds a search with {field} = .*pass --study NEW") as refused:
            search(settings(tmp_path, bbbp_csv, space, **changed))
        assert "\n" not in str(refused.value)
    dataset.write_bytes(other.read_bytes())  # the same file name, other molecules
    with pytest.raises(UserError, match="study s holds a search with checksum = "):
        search(settings(tmp_path, bbbp_csv, space, **more))
    assert len(optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/study.db").trials) == 1

    dataset.write_bytes(bbbp_csv.read_bytes())
    same = first["base"].with_overrides(model={"hidden": 64}, train={"eval_train": True, "seed": 5})  # hidden: sampled
    assert len(search(settings(tmp_path, bbbp_csv, space, **more | {"base": same})).trials) == 2
    # another machine's --seed joins a study of one seed per trial; trials that pair by seed must share them
    assert "seed" not in searched_base(same, load_space(str(space)))["train"]
    assert searched_base(same, load_space(str(space)), seeds_per_trial=3)["train"]["seed"] == 5


def test_searches_of_other_seeds_draw_other_candidates_also_after_a_resume(tmp_path, bbbp_csv, space):
    """The sampler was seeded by seed + trials already there: resuming --seed 0 after one trial drew
    exactly --seed 1's first candidate, so two searches meant as independent replayed each other."""
    base = settings(tmp_path, bbbp_csv, space).base.with_overrides(train={"epochs": 1})
    run = dict(sampler="random", pruner="none", base=base)
    search(settings(tmp_path, bbbp_csv, space, study="a", trials=1, seed=0, **run))
    resumed = search(settings(tmp_path, bbbp_csv, space, study="a", trials=2, seed=0, **run))
    other = search(settings(tmp_path, bbbp_csv, space, study="b", trials=1, seed=1, **run))
    drawn = [t.params for t in resumed.trials] + [other.trials[0].params]
    assert all(a != b for a, b in itertools.combinations(drawn, 2))


def test_workers_start_on_a_study_the_parent_created(tmp_path, bbbp_csv, space, monkeypatch):
    """Workers started together on a fresh SQLite file raced to create its tables (1 try in 5 failed)."""
    import ggt_search.study

    start_workers, kinds = ggt_search.study.run_workers, []

    def start_on_the_created_study(target, job, workers, device):
        kinds.append(optuna.load_study(study_name="s", storage=job[0].storage).user_attrs["kind"])
        start_workers(target, job, workers, device)

    monkeypatch.setattr(ggt_search.study, "run_workers", start_on_the_created_study)
    base = settings(tmp_path, bbbp_csv, space).base.with_overrides(train={"epochs": 1})
    for attempt in range(3):
        storage = f"sqlite:///{tmp_path}/fresh-{attempt}.db"
        study = search(settings(tmp_path, bbbp_csv, space, base=base, trials=2, workers=2, storage=storage))
        assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 2
    assert kinds == ["search"] * 3


def assert_workers_die_with(parent: subprocess.Popen, started) -> None:
    """Once `started()` says the workers train, kill -9 the parent: no worker may outlive it for long."""
    deadline = time.time() + 120
    while not started() and time.time() < deadline:
        time.sleep(0.5)
    workers = descendants(parent.pid)
    assert len(workers) >= 2, "the workers never started"
    parent.kill()  # SIGKILL: no handler of the parent runs
    parent.wait()
    try:
        deadline = time.time() + 30  # the workers go at once; the bound only spares a loaded machine
        while any(alive(p) for p in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not [p for p in workers if alive(p)], "workers outlived their killed parent"
    finally:  # a test that fails must not leave them training
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_search_workers_die_with_their_killed_parent_and_a_rerun_resumes(tmp_path, bbbp_csv, space):
    storage = f"sqlite:///{tmp_path}/orphans.db"
    command = search_command("o", space, bbbp_csv, storage, 2, 10, "--pruner", "none")
    parent = subprocess.Popen([*command, "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def training() -> bool:
        try:
            trials = optuna.load_study(study_name="o", storage=storage).trials
        except KeyError:
            return False
        return any(t.state == TrialState.RUNNING and t.intermediate_values for t in trials)

    assert_workers_die_with(parent, training)
    killed = [t for t in optuna.load_study(study_name="o", storage=storage).trials if t.state == TrialState.RUNNING]
    assert killed  # left to the heartbeat, not finished by an orphan

    age_heartbeats(storage, seconds=600)  # the killed trials go stale at once
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    trials = optuna.load_study(study_name="o", storage=storage).trials
    completed = [t.params for t in trials if t.state == TrialState.COMPLETE]
    assert len(completed) == 2
    for trial in killed:  # failed by the rerun, and retried with its parameters
        assert trials[trial.number].state == TrialState.FAIL and trial.params in completed


def test_evaluate_workers_die_with_their_killed_parent(tmp_path, bbbp_csv):
    out = tmp_path / "eval"
    command = [
        *CLI,
        *("evaluate", "--dataset", str(bbbp_csv), "--device", "cpu"),
        *(
            "--layers",
            "1",
            "--hidden",
            "8",
            "--epochs",
            "100000",
            "--seeds",
            "0,1",
            "--workers",
            "2",
            "--out",
            str(out),
        ),
    ]
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert_workers_die_with(parent, lambda: all((out / f"seed-{s}" / "metrics.csv").exists() for s in (0, 1)))


def test_a_password_never_leaves_the_storage_url(tmp_path, capsys):
    from ggt_search.storage import hide_password

    url = "postgresql+psycopg2://ggt:s3cret-pw@127.0.0.1:1/optuna"  # port 1: nothing listens there
    assert hide_password(url) == "postgresql+psycopg2://ggt:***@127.0.0.1:1/optuna"
    assert hide_password(f"--storage={url}") == "--storage=postgresql+psycopg2://ggt:***@127.0.0.1:1/optuna"
    for unchanged in ("sqlite:///study.db", "postgresql+psycopg2://ggt@host/optuna", "ogbg-molbbbp", "nodb"):
        assert hide_password(unchanged) == unchanged
    assert cli.main(["search", "--study", "x", "--storage", url, "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot open storage postgresql+psycopg2://ggt:***@127.0.0.1:1/optuna" in err and "s3cret" not in err


@pytest.mark.postgres
def test_a_password_is_masked_in_hints_reports_and_the_study(tmp_path, bbbp_csv, space, capsys, monkeypatch):
    from sqlalchemy.engine import make_url

    from ggt_search.record import StudyRecord

    server = os.environ.get("GGT_TEST_POSTGRES_URL")
    if not server:
        pytest.skip("GGT_TEST_POSTGRES_URL not set (tests/run.sh starts a server)")
    url = make_url(server).set(password="s3cret-pw").render_as_string(hide_password=False)  # the server trusts any
    study = f"pw-{os.getpid()}-{time.time_ns()}"
    command = ["search", "--study", study, "--space", str(space), "--trials", "1", "--epochs", "1"]
    command += ["--dataset", str(bbbp_csv), "--device", "cpu", "--storage", url, "--artifacts", str(tmp_path / "a")]
    monkeypatch.setattr(sys, "argv", ["ggt-search", *command])  # what the study records as its command
    assert cli.main(command) == 0
    assert cli.main(["report", study, "--storage", url, "--out", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr()
    shown = {
        "output": printed.out + printed.err,
        "report.md": (tmp_path / "report" / "report.md").read_text(),
        "index.html": (tmp_path / "report" / "index.html").read_text(),
        "the study's command": StudyRecord.of(optuna.load_study(study_name=study, storage=url)).command,
    }
    for where, text in shown.items():
        assert "s3cret" not in text, where
    assert f"--storage {make_url(url).render_as_string(hide_password=True)}" in shown["the study's command"]
    assert "--storage postgresql+psycopg2://ggt:***@" in shown["output"]


def seed_trial(scores: dict[int, float]) -> optuna.trial.FrozenTrial:
    """A finished trial over several seeds, as `Objective.train_seeds` stores one."""
    return optuna.trial.create_trial(
        value=sum(scores.values()) / len(scores), user_attrs={"seed_scores": {str(s): v for s, v in scores.items()}}
    )


def test_the_race_stops_a_trial_worse_on_every_shared_seed_and_keeps_one_that_is_not():
    from ggt_search.study import race

    study = optuna.create_study(direction="maximize")
    study.add_trial(seed_trial({0: 0.80, 1: 0.84, 2: 0.78, 3: 0.82, 4: 0.81}))
    worse_everywhere = {"0": 0.79, "1": 0.80, "2": 0.70, "3": 0.81}
    reason = race(study, worse_everywhere, 0.1)
    assert reason and "raced out after 4 seeds: worse than trial 0 over their 4 shared seeds" in reason
    assert race(study, dict(list(worse_everywhere.items())[:3]), 0.1) is None  # 3 seeds: p >= 0.125, never < 0.1
    assert race(study, worse_everywhere, 0.0) is None  # no race
    mixed = {"0": 0.83, "1": 0.80, "2": 0.79, "3": 0.81}  # better on two seeds, worse on two
    assert race(study, mixed, 0.1) is None
    minimising = optuna.create_study(direction="minimize")  # a regression's RMSE: lower is better
    minimising.add_trial(seed_trial({0: 1.0, 1: 1.1, 2: 0.9, 3: 1.2}))
    assert race(minimising, {"0": 1.3, "1": 1.2, "2": 1.0, "3": 1.5}, 0.1)
    assert race(minimising, {"0": 0.8, "1": 1.0, "2": 0.8, "3": 1.1}, 0.1) is None


def test_expected_best_of_n_trials_is_the_mean_best_of_every_draw():
    """Dodge et al.'s closed form against the direct computation: the best of n draws, averaged over all N^n."""
    import itertools

    import numpy as np

    from ggt_search.report.statistics import expected_maximum, expected_maximum_band

    values = np.array([0.71, 0.74, 0.74, 0.69, 0.78])
    for higher, best in ((True, max), (False, min)):
        direct = [np.mean([best(draw) for draw in itertools.product(values, repeat=n)]) for n in range(1, 6)]
        np.testing.assert_allclose(expected_maximum(values, higher), direct, rtol=0, atol=1e-12)
        low, high = expected_maximum_band(values, higher, resamples=200)
        assert np.all(low <= expected_maximum(values, higher) + 1e-12) and np.all(
            expected_maximum(values, higher) <= high + 1e-12
        )
    assert expected_maximum(values)[0] == pytest.approx(values.mean()) and expected_maximum(values)[-1] < values.max()


def test_trials_over_seeds_a_confirmed_winner_and_the_path_to_it(
    tmp_path, bbbp_csv, space, capsys, monkeypatch, request
):
    """search --seeds-per-trial 2 --confirm-top 2 from the CLI: per-seed scores on each trial, one step sequence,
    a confirmation that never reads test and resumes, evaluate and ablate --from-study on its winner, the report."""
    from ggt_search.record import StudyRecord
    from ggt_search.report import build_report
    from ggt_search.train import Trainer

    storage = f"sqlite:///{tmp_path}/study.db"
    command = ["search", "--study", "s", "--space", str(space), "--trials", "4", "--epochs", "2", "--pruner", "none"]
    command += ["--dataset", str(bbbp_csv), "--device", "cpu", "--storage", storage, "--seeds-per-trial", "2"]
    command += ["--seed", "3", "--confirm-seeds", "2"]
    never_test = pytest.MonkeyPatch()
    request.addfinalizer(never_test.undo)  # a failure before the undo below must not leak the patch
    for method in ("evaluate", "predictions"):
        original = getattr(Trainer, method)
        never_test.setattr(
            Trainer,
            method,
            lambda self, model, split, original=original: (
                pytest.fail("test read") if split == "test" else original(self, model, split)
            ),
        )
    monkeypatch.setattr("ggt_search.progress.PLAIN_EVERY", 0.0)  # a progress line at every epoch, however quick
    assert cli.main([*command, "--confirm-top", "2"]) == 0
    out, progress = capsys.readouterr()
    study = optuna.load_study(study_name="s", storage=storage)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(study.trials) == 4 and done
    for trial in done:
        scores = trial.user_attrs["seed_scores"]
        assert set(scores) == {"3", "4"} and trial.value == pytest.approx(sum(scores.values()) / 2)
        assert sorted(trial.intermediate_values) == [1, 2, 3, 4]  # seed 4's epochs after seed 3's
        assert trial.user_attrs["config"]["train"]["seed"] == 3 and len(trial.user_attrs["curve"]) == 4
        for seed, first in (("3", 1), ("4", 3)):  # each seed's score is its best epoch
            assert scores[seed] == max(trial.intermediate_values[first], trial.intermediate_values[first + 1])

    confirmation = StudyRecord.of(study).confirmation
    top = sorted(done, key=lambda t: t.value, reverse=True)[:2]
    assert confirmation["seeds"] == [5, 6]  # fresh: no trial trained them
    assert [row["trial"] for row in confirmation["trials"]] == [t.number for t in top]
    runs = optuna.load_study(study_name="s--confirm", storage=storage).trials
    assert len(runs) == 4 and all(r.state == TrialState.COMPLETE for r in runs)
    assert {(r.user_attrs["confirms"], r.user_attrs["config"]["train"]["seed"]) for r in runs} == {
        (t.number, seed) for t in top for seed in (5, 6)
    }
    means = {row["trial"]: row["mean"] for row in confirmation["trials"]}
    assert confirmation["winner"] == max(means, key=means.get) and confirmation["runner_up"] != confirmation["winner"]
    for row in confirmation["trials"]:
        assert f"trial {row['trial']}: search {row['search']:.4f}, confirmed {row['mean']:.4f}" in out
    assert f"winner: trial {confirmation['winner']}; against the runner-up" in out
    assert f"trial {done[0].number} seed 4: " in progress and f"confirming trial {top[0].number} seed 6: " in progress

    assert (
        cli.main([*command, "--confirm-top", "2"]) == 0
    )  # the same again: the confirmation is stored, nothing is retrained
    assert "0 runs to do" in capsys.readouterr().out
    assert len(optuna.load_study(study_name="s--confirm", storage=storage).trials) == 4
    never_test.undo()
    third = sorted(done, key=lambda t: t.value, reverse=True)[2]
    assert cli.main([*command, "--confirm-top", "3", "--workers", "2"]) == 0  # a wider one, in two workers
    runs = optuna.load_study(study_name="s--confirm", storage=storage).trials
    assert len(runs) == 6 and all(r.state == TrialState.COMPLETE for r in runs)  # each run trained once
    assert {(r.user_attrs["confirms"], r.user_attrs["seed"]) for r in runs[4:]} == {
        (third.number, 5),
        (third.number, 6),
    }
    confirmation = StudyRecord.of(optuna.load_study(study_name="s", storage=storage)).confirmation
    assert len(confirmation["trials"]) == 3

    winner = study.trials[confirmation["winner"]]
    final = tmp_path / "final"
    evaluate = ["evaluate", "--from-study", "s", "--storage", storage, "--epochs", "1", "--seeds", "0", "--out"]
    assert cli.main([*evaluate, str(final)]) == 0
    assert f"from study s: the confirmed winner, trial {winner.number}" in capsys.readouterr().out
    assert json.loads((final / "summary.json").read_text())["config"]["model"] == winner.user_attrs["config"]["model"]

    build_report(["s"], storage, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "The winner's curse" in md and f"Confirmed winner: trial {winner.number}" in md
    assert (
        "Expected best validation score against the number of trials" in md and "Spread over each trial's seeds" in md
    )
    configurations = md.split("### Best configurations")[1].split("###")[0]
    assert "nan" not in configurations and "sha256 ?" not in md

    path = tmp_path / "path.yaml"
    assert cli.main(["ablate", str(path), "--from-study", "s", "--storage", storage, "--seeds", "0-1"]) == 0
    assert "run it: ggt-search ablate" in capsys.readouterr().out
    from ggt_search.ablate import load_ablation

    ablation = load_ablation(path)
    won, default = RunConfig.from_dict(winner.user_attrs["config"]).to_dict(), RunConfig().to_dict()
    assert ablation.base.model == RunConfig.from_dict(winner.user_attrs["config"]).model and ablation.seeds == [0, 1]
    searched = {
        key
        for key in load_space(space)
        if won[key.split(".")[0]][key.split(".")[1]] != default[key.split(".")[0]][key.split(".")[1]]
    }
    assert {name.split("=")[0] for name in ablation.variants} == searched  # every searched field the winner changed
    for change in ablation.variants.values():  # one field each, put back to the default
        [(section, fields)] = change.items()
        [(name, value)] = fields.items()
        assert value == default[section][name] != won[section][name]
    assert cli.main(["ablate", str(path), "--from-study", "s", "--storage", storage, "--seeds", "0-2"]) == 2
    assert "holds another ablation" in capsys.readouterr().err
    assert cli.main(["ablate", str(path), "--run"]) == 2
    assert "--run and --reference go with --from-study" in capsys.readouterr().err
