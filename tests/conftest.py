"""Shared fixtures: the MoleculeNet tables in ../shared, a private cache, small real datasets."""

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MOLECULENET = Path(os.environ.get("GGT_MOLECULENET", ROOT.parent / "shared" / "data" / "moleculenet"))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Every test session builds into its own cache, so tests never see a user's cache."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["GGT_SEARCH_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def moleculenet() -> Path:
    if not (MOLECULENET / "BBBP.csv").exists():
        pytest.fail(f"shared MoleculeNet tables not found at {MOLECULENET}; set GGT_MOLECULENET")
    return MOLECULENET


@pytest.fixture(scope="session")
def bbbp(moleculenet):
    from ggt_search.config import DatasetSpec
    from ggt_search.datasets import load_dataset

    return load_dataset(DatasetSpec("ogbg-molbbbp", source=str(moleculenet)))


@pytest.fixture(scope="session")
def bbbp_small(bbbp):
    """240 real molecules of ogbg-molbbbp (train 160 / valid 40 / test 40, both classes)."""
    torch.manual_seed(0)
    picked = torch.cat(
        [
            bbbp.split[s][torch.randperm(len(bbbp.split[s]))[:n]]
            for s, n in (("train", 160), ("valid", 40), ("test", 40))
        ]
    )
    return bbbp.subset(picked.sort().values)


# The command line of `ggt-search` in a child process, with this interpreter (and its PYTHONPATH).
CLI = [sys.executable, "-m", "ggt_search.cli"]
# The CLI flags of a one-block, 8-wide model on the CPU: seconds a run.
TINY_FLAGS = ["--device", "cpu", "--layers", "1", "--hidden", "8"]


def search_command(study: str, space, dataset, storage: str, trials: int, epochs: int, *flags: str) -> list[str]:
    """`ggt-search search` (in a child process, see CLI) of `trials` trials of `epochs` epochs on the CPU."""
    return [
        *CLI,
        *("search", "--study", study, "--space", str(space), "--trials", str(trials), "--epochs", str(epochs)),
        *("--dataset", str(dataset), "--device", "cpu", "--storage", storage, *flags),
    ]


def tiny_config(**model):
    """A small model and two epochs: seconds on a CPU."""
    from ggt_search.config import RunConfig

    values = {"layers": 2, "hidden": 16, "pe_dim": 4, "dropout": 0.0} | model
    return RunConfig.from_dict(
        {"dataset": "ogbg-molbbbp", "model": values, "train": {"epochs": 2, "batch_size": 64, "device": "cpu"}}
    )


def age_heartbeats(storage_url: str, seconds: float) -> None:
    """Move every recorded trial heartbeat `seconds` into the past: a dead worker's trial goes
    stale at once, so tests of stale-trial handling never wait on the wall clock."""
    from datetime import timedelta

    from optuna.storages._rdb import models

    from ggt_search.storage import open_storage

    with open_storage(storage_url).scoped_session() as session:
        for row in session.query(models.TrialHeartbeatModel).all():
            row.heartbeat = row.heartbeat - timedelta(seconds=seconds)
        session.commit()


def interruptible() -> None:
    """Popen's preexec_fn for a child that must take Ctrl-C: a shell's background job (`cmd &`,
    as a CI runner may start the suite) ignores SIGINT, and a child inherits that; Python then
    installs no KeyboardInterrupt handler. Restore the default so the child behaves as in a terminal."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
