"""Optuna studies: each trial trains one sampled candidate, reports validation scores
every epoch, and may be pruned. Studies are addressed by name and storage URL, so the
same command resumes a study, and workers anywhere join it through the same storage.

Storage: a SQLite file by default (one machine, a few workers); any SQLAlchemy URL
(`postgresql+psycopg2://user@host/db`) for many workers on many machines. Heartbeats mark
a trial whose worker died as failed, and it is retried with the same parameters.
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from ggt_search.config import RunConfig
from ggt_search.datasets import load_dataset
from ggt_search.errors import UserError
from ggt_search.metrics import HIGHER_IS_BETTER
from ggt_search.model import count_parameters
from ggt_search.space import grid, load_space, suggest
from ggt_search.train import NonFiniteLoss, Trainer

# Heartbeats, their retry callback and grouped multivariate TPE are Optuna APIs marked
# experimental; we use them on purpose, and their warnings would only puzzle users.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

DEFAULT_STORAGE = "sqlite:///ggt-search.db"
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


@dataclass
class SearchSettings:
    study: str
    base: RunConfig
    space_file: str | None = None
    trials: int | None = 20  # the study's total: rerunning with a larger number adds trials
    timeout: float | None = None
    sampler: str = "tpe"
    pruner: str = "median"
    storage: str = DEFAULT_STORAGE
    artifacts: str | None = None
    seed: int = 0
    workers: int = 1
    heartbeat: int = 30  # seconds; a trial silent for 4x this is failed and retried

    def artifact_dir(self) -> Path:
        if self.artifacts:
            return Path(self.artifacts)
        if self.storage.startswith("sqlite:///"):
            return Path(self.storage.removeprefix("sqlite:///")).parent / "artifacts"
        return Path("artifacts")


def open_storage(url: str, heartbeat: int | None = None) -> RDBStorage:
    if "://" not in url:
        raise UserError(f"storage {url!r} is not a database URL; use sqlite:///file.db or postgresql+psycopg2://user@host/db")
    kwargs = {}
    if heartbeat:
        kwargs = dict(heartbeat_interval=heartbeat, grace_period=4 * heartbeat, heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return RDBStorage(url, engine_kwargs=engine, **kwargs)
    except Exception as error:  # SQLAlchemy raises many kinds; the first line says which
        raise UserError(f"cannot open storage {url}: {str(error).splitlines()[0]}") from None


def make_sampler(name: str, seed: int, space: dict) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(grid(space), seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise UserError(f"unknown sampler {name!r}; use tpe, random, grid or gp")


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=max(1, epochs // 5))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"unknown pruner {name!r}; use median, hyperband or none")


def open_study(settings: SearchSettings, metric: str, space: dict, worker: int = 0) -> optuna.Study:
    study = optuna.create_study(
        study_name=settings.study,
        storage=open_storage(settings.storage, settings.heartbeat),
        pruner=make_pruner(settings.pruner, settings.base.train.epochs),
        direction="maximize" if HIGHER_IS_BETTER[metric] else "minimize",
        load_if_exists=True,
    )
    # Seeded by the trials already there too: a resumed study (or a second worker) must
    # not replay the first run's random start-up trials.
    existing = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(settings.sampler, settings.seed + 1000 * worker + existing, space)
    return study


class Objective:
    """Train one candidate per trial; the validation metric is the objective, test is never read."""

    def __init__(self, settings: SearchSettings, space: dict, device: str):
        self.settings, self.space = settings, space
        self.base = settings.base.with_overrides(train={"device": device})  # the space may still override it
        self.graphs = load_dataset(settings.base.dataset)
        settings.artifact_dir().mkdir(parents=True, exist_ok=True)
        self.store = FileSystemArtifactStore(str(settings.artifact_dir()))

    def __call__(self, trial: optuna.Trial) -> float:
        total = self.settings.trials
        if total is not None and _position(trial) >= total:
            trial.set_user_attr("reason", f"surplus: the study already had {total} trials when this worker asked")
            trial.study.stop()
            raise SurplusTrial(f"study {self.settings.study} already has its {total} trials")
        config = suggest(trial, self.space, self.base)
        trial.set_user_attr("config", config.to_dict())
        start = time.perf_counter()
        try:
            return self.train(trial, config)
        except NonFiniteLoss as error:
            trial.set_user_attr("reason", str(error))
            raise optuna.TrialPruned(str(error)) from None
        except optuna.TrialPruned:
            raise
        except Exception as error:  # recorded on the trial; Optuna marks it FAIL and goes on
            if isinstance(error, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            trial.set_user_attr("reason", f"{type(error).__name__}: {str(error)[:500]}")
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))

    def train(self, trial: optuna.Trial, config: RunConfig) -> float:
        trainer = Trainer(config, self.graphs)
        trial.set_user_attr("parameters", count_parameters(trainer.build_model()))
        curve: list[float] = []

        def on_epoch(record):
            curve.append(record.valid_metric)
            trial.report(record.valid_metric, record.epoch)
            trial.set_user_attr("epochs", record.epoch)
            trial.set_user_attr("curve", curve)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {record.epoch}")

        with tempfile.TemporaryDirectory() as run_dir:
            result = trainer.fit(Path(run_dir), on_epoch=on_epoch, evaluate_test=False)
            trial.set_user_attr("best_epoch", result.best_epoch)
            if self._is_new_best(trial, result.best_valid):
                upload_artifact(artifact_store=self.store, file_path=str(Path(run_dir) / "best.pt"), study_or_trial=trial)
                trial.set_user_attr("weights", "artifact: best.pt")
        return result.best_valid

    @staticmethod
    def _is_new_best(trial: optuna.Trial, value: float) -> bool:
        try:
            best = trial.study.best_value
        except ValueError:  # no completed trial yet
            return True
        maximize = trial.study.direction == optuna.study.StudyDirection.MAXIMIZE
        return value > best if maximize else value < best


class SurplusTrial(RuntimeError):
    """Two workers asked for the last trial at once; the later one stands down."""


def _position(trial: optuna.Trial) -> int:
    """How many live or finished trials the study had before this one."""
    others = trial.study.get_trials(deepcopy=False, states=COUNTED)
    return sum(1 for t in others if t.number < trial.number)


def remaining(study: optuna.Study, total: int | None) -> int | None:
    """Trials still to run; a WAITING trial (a retry of a dead worker's) is among them."""
    if total is None:
        return None
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return max(0, total - len(study.get_trials(deepcopy=False, states=live)))


class ProgressLine:
    """One line per finished trial: state, value, best so far, and how far the study is."""

    def __init__(self, total: int | None, worker: int):
        self.total, self.worker = total, worker

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        value = "" if trial.value is None else f" value {trial.value:.4f}"
        try:
            best = f"  best {study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:
            best = ""
        reason = trial.user_attrs.get("reason")
        progress = f"[{done}/{self.total}]" if self.total else f"[{done}]"
        print(f"{progress} trial {trial.number} {trial.state.name.lower()}{value}{best}"
              f"{'  (' + reason + ')' if reason and trial.state != TrialState.COMPLETE else ''}", flush=True)


def run_worker(settings: SearchSettings, worker: int = 0, device: str | None = None) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # ProgressLine prints one line per trial instead
    space = load_space(settings.space_file)
    objective = Objective(settings, space, device or settings.base.train.device)
    study = open_study(settings, objective.graphs.metric, space, worker)
    optuna.storages.fail_stale_trials(study)  # trials of killed workers: failed now, retried below
    left = remaining(study, settings.trials)
    if left == 0:
        print(f"study {settings.study} already has {settings.trials} trials; pass a larger --trials to add more")
        return
    study.optimize(
        objective,
        n_trials=left if settings.workers == 1 else None,
        timeout=settings.timeout,
        catch=(Exception,),  # a failing candidate is recorded as FAIL with its reason; the study goes on
        callbacks=[ProgressLine(settings.trials, worker), _stop_at(settings.trials)],
        gc_after_trial=True,
    )


def _stop_at(total: int | None):
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if remaining(study, total) == 0:
            study.stop()
    return callback


def search(settings: SearchSettings) -> optuna.Study:
    """Run (or resume) a study with settings.workers local processes; returns the study."""
    space = load_space(settings.space_file)
    make_sampler(settings.sampler, settings.seed, space)  # bad sampler/space: fail before any work
    make_pruner(settings.pruner, settings.base.train.epochs)
    graphs = load_dataset(settings.base.dataset)  # build the cache once, before workers start
    if settings.base.model.pe_dim or "model.pe_dim" in space:
        graphs.load_pe(0)
    run_workers(run_worker, settings, settings.workers, settings.base.train.device)
    study = optuna.load_study(study_name=settings.study, storage=open_storage(settings.storage))
    _print_summary(study, settings)
    return study


def run_workers(target, settings, workers: int, device: str) -> None:
    """target(settings, worker, device) in this process, or in `workers` spawned processes."""
    if workers == 1:
        target(settings, 0, device)
        return
    devices = worker_devices(workers, device)
    context = mp.get_context("spawn")
    processes = [context.Process(target=target, args=(settings, i, devices[i])) for i in range(workers)]
    for p in processes:
        p.start()
    for p in processes:
        p.join()


def worker_devices(workers: int, device: str) -> list[str]:
    """Spread workers over the GPUs round-robin (several small trials share one GPU well)."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(workers)]
    return [device] * workers


def best_config(study_name: str, storage: str) -> RunConfig:
    """The config the search's best completed trial trained: the one to evaluate over 10 seeds."""
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    except KeyError:
        raise UserError(f"no study {study_name!r} in {storage}; list them with: optuna studies --storage {storage}") from None
    try:
        trial = study.best_trial
    except ValueError:
        raise UserError(f"study {study_name!r} has no completed trial yet; run or resume the search first") from None
    return RunConfig.from_dict(trial.user_attrs["config"])


def _print_summary(study: optuna.Study, settings: SearchSettings) -> None:
    states = {s.name.lower(): 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for t in study.get_trials(deepcopy=False):
        if t.state.name.lower() in states:
            states[t.state.name.lower()] += 1
    print(f"study {study.study_name}: " + ", ".join(f"{n} {s}" for s, n in states.items()))
    try:
        best = study.best_trial
        print(f"best trial {best.number}: {best.value:.4f}  {best.params}")
        print(f"final evaluation (OGB: 10 seeds): ggt-search evaluate --from-study {study.study_name} --storage {settings.storage} --seeds 0-9")
    except ValueError:
        print("no trial has completed yet")
    print(f"storage: {settings.storage}")
    print(f"dashboard: ggt-search dashboard --storage {settings.storage} --artifacts {settings.artifact_dir()}")
