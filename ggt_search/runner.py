"""Running trials in Optuna studies: the machinery `search` and `ablate` share.

A study is addressed by its name and storage URL (a SQLite file, or any SQLAlchemy URL
such as PostgreSQL for workers on many machines). Every trial runs under the same rules:
- a failing candidate is recorded as FAIL with its reason, a diverging one is pruned with
  its reason, and the study goes on;
- a worker sends heartbeats; a trial whose worker was killed goes stale after four missed
  beats, and the next run fails it and retries it with the same parameters;
- `run_workers` starts local worker processes, each with its share of the CPU cores
  (training processes that each take every core run up to 8x slower side by side);
- Ctrl-C or SIGTERM stops every worker: the trial each was training is recorded as FAIL
  ("stopped"), and every finished trial stays in the study.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import optuna
import torch
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from ggt_search.config import RunConfig
from ggt_search.datasets import file_sha256
from ggt_search.errors import UserError
from ggt_search.record import TrialRecord
from ggt_search.train import NonFiniteLoss, RunResult, Trainer, environment

# Heartbeats, their retry callback and grouped multivariate TPE are Optuna APIs marked
# experimental; we use them on purpose, and their warnings would only puzzle users.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# Optuna's own log (a traceback per failed trial, "Using an existing study") is replaced by
# ProgressLine's one line per trial, with the reason a trial failed or was pruned.
optuna.logging.set_verbosity(optuna.logging.ERROR)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MISSED_BEATS = 4  # a trial silent for this many heartbeats is stale: its worker is taken for dead


# ----------------------------------------------------------------------------- storage and studies


def sqlite_path(url: str) -> Path | None:
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def open_storage(url: str, heartbeat: int | None = None, must_exist: bool = False) -> RDBStorage:
    """The study storage at `url`; `must_exist` refuses to create a SQLite file that is not there."""
    if "://" not in url:
        raise UserError(f"storage {url!r} is not a database URL; use sqlite:///file.db or postgresql+psycopg2://user@host/db")
    if must_exist and sqlite_path(url) is not None and not sqlite_path(url).is_file():
        raise UserError(f"no study storage at {url} (no file {sqlite_path(url)}); check --storage")
    kwargs = {}
    if heartbeat:
        kwargs = dict(heartbeat_interval=heartbeat, grace_period=MISSED_BEATS * heartbeat,
                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(3):
        try:
            return RDBStorage(url, engine_kwargs=engine, **kwargs)
        except Exception as error:  # SQLAlchemy raises many kinds; the first line says which
            # Workers started together on a fresh database race to create Optuna's tables;
            # the loser's CREATE fails, and a moment later the tables are there.
            creating = "already exists" in str(error) or "duplicate key" in str(error)
            if not (creating and attempt < 2):
                raise UserError(f"cannot open storage {url}: {str(error).splitlines()[0]}") from None
            time.sleep(1 + attempt)


def load_existing_study(name: str, url: str) -> optuna.Study:
    """A study that must already exist (for reading: evaluate --from-study, report)."""
    storage = open_storage(url, must_exist=True)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        raise UserError(f"no study {name!r} in {url}; studies there: {', '.join(names) or 'none'}") from None


def heartbeat_ages(storage: RDBStorage, trials: list[optuna.trial.FrozenTrial]) -> dict[int, float]:
    """Seconds since each trial's last heartbeat, by trial number (trials that never beat are absent)."""
    from optuna.storages._rdb import models  # Optuna keeps heartbeats in its own table; there is no public reader

    import sqlalchemy

    by_id = {t._trial_id: t.number for t in trials}
    with storage.scoped_session() as session:
        now = session.execute(sqlalchemy.func.now()).scalar().replace(tzinfo=None)
        rows = session.query(models.TrialHeartbeatModel).filter(models.TrialHeartbeatModel.trial_id.in_(list(by_id))).all()
        return {by_id[row.trial_id]: (now - row.heartbeat.replace(tzinfo=None)).total_seconds() for row in rows}


def running_note(study: optuna.Study, storage: RDBStorage, heartbeat: int) -> str | None:
    """What is still RUNNING in the study, and when a dead worker's trial will be retried."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return None
    ages = heartbeat_ages(storage, running)
    grace = MISSED_BEATS * heartbeat
    described = []
    for trial in running:
        age = ages.get(trial.number)
        when = "no heartbeat yet" if age is None else f"last heartbeat {age:.0f} s ago, stale in {max(0.0, grace - age):.0f} s"
        described.append(f"trial {trial.number} ({when})")
    return (f"{len(running)} trial(s) still RUNNING in another worker: {', '.join(described)}. If that worker was killed, "
            f"the first run after its trial goes stale ({grace} s without a heartbeat) fails it and retries it: rerun this command then.")


# ----------------------------------------------------------------------------- trials


class SurplusTrial(RuntimeError):
    """Two workers asked for the last piece of work at once; the later one stands down."""


def train_trial(trial: optuna.Trial, config: RunConfig, graphs, *, final: bool, prune: bool) -> RunResult:
    """Train `config` as this trial's run, writing its TrialRecord as the run goes.

    final: the run is a final evaluation of a fixed config (an ablation): test is scored
    once, with the best-validation weights. Otherwise (a search) test is never read.
    prune: ask the study's pruner after every epoch.
    """
    record = TrialRecord()
    record.write(trial, config=config.to_dict())  # first: a config that cannot even start is recorded with its failure
    trainer = Trainer(config, graphs)
    # What a fine-tuned run started from, by content: a checkpoint rebuilt under the same path is another start.
    started_from = {"init_sha256": file_sha256(Path(config.train.init))} if config.train.init else {}
    record.write(trial, environment=environment(trainer.device) | started_from)

    def on_epoch(epoch) -> None:
        trial.report(epoch.valid_metric, epoch.epoch)
        record.write(trial, epochs=epoch.epoch, curve=[*record.curve, epoch.valid_metric])
        if prune and trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch.epoch}")

    result = trainer.fit(on_epoch=on_epoch, evaluate_test=final, on_start=lambda n: record.write(trial, parameters=n))
    record.write(trial, best_epoch=result.best_epoch, test=result.test, trivial=result.trivial,
                 seconds_per_epoch=sum(r.seconds for r in result.history) / len(result.history))
    return result


def recorded(objective: Callable[[optuna.Trial], float]) -> Callable[[optuna.Trial], float]:
    """`objective`, with every way a trial can end written on the trial: its reason and its time."""

    def run(trial: optuna.Trial) -> float:
        record, start = TrialRecord(), time.perf_counter()
        try:
            return objective(trial)
        except NonFiniteLoss as error:
            record.write(trial, reason=str(error))
            raise optuna.TrialPruned(str(error)) from None
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            record.write(trial, reason="stopped (Ctrl-C or SIGTERM)")
            raise
        except Exception as error:  # recorded on the trial; Optuna marks it FAIL and goes on
            if isinstance(error, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            if isinstance(error, (UserError, SurplusTrial)):  # our own one-line reasons
                record.write(trial, reason=str(error))
            else:
                record.write(trial, reason=f"{type(error).__name__}: {str(error)[:500]}", traceback=traceback.format_exc()[-4000:])
            raise
        finally:
            record.write(trial, seconds=round(time.perf_counter() - start, 2))

    return run


class ProgressLine:
    """One line per finished trial: state, value, best so far, and how far the study is."""

    def __init__(self, total: int | None):
        self.total = total

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = len(study.get_trials(deepcopy=False, states=FINISHED))
        value = "" if trial.value is None else f" value {trial.value:.4f}"
        try:
            best = f"  best {study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:
            best = ""
        reason = TrialRecord.of(trial).reason
        progress = f"[{done}/{self.total}]" if self.total else f"[{done}]"
        print(f"{progress} trial {trial.number} {trial.state.name.lower()}{value}{best}"
              f"{'  (' + reason + ')' if reason and trial.state != TrialState.COMPLETE else ''}", flush=True)


def run_trials(study: optuna.Study, objective, *, n_trials: int | None, timeout: float | None, total: int | None,
               stop: Callable[[optuna.Study], bool]) -> None:
    """study.optimize with our rules: failures recorded and caught, one progress line per trial."""
    def stop_when_done(study: optuna.Study, trial) -> None:
        if stop(study):
            study.stop()

    study.optimize(recorded(objective), n_trials=n_trials, timeout=timeout, catch=(Exception,),
                   callbacks=[ProgressLine(total), stop_when_done], gc_after_trial=True)


# ----------------------------------------------------------------------------- worker processes


def cpu_share(workers: int) -> int:
    """Threads per worker: this machine's cores split evenly, at least one each."""
    return max(1, len(os.sched_getaffinity(0)) // workers)


def worker_devices(workers: int, device: str) -> list[str]:
    """Spread workers over the GPUs round-robin (several small trials share one GPU well)."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(workers)]
    return [device] * workers


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt (once), so `kill PID` stops as cleanly as Ctrl-C."""

    def interrupt(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop is enough; let the clean-up finish
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_workers(target, job, workers: int, device: str) -> None:
    """target(job, worker, device) in this process, or in `workers` spawned processes.

    Each spawned worker gets `cpu_share(workers)` threads. Stopping this process (Ctrl-C,
    SIGTERM) stops the workers, and waits for them to record their trials.
    """
    if workers == 1:
        with sigterm_as_interrupt():
            target(job, 0, device)
        return
    devices = worker_devices(workers, device)
    context = mp.get_context("spawn")
    processes = [context.Process(target=_worker_main, args=(target, job, i, devices[i], cpu_share(workers)), name=f"worker-{i}")
                 for i in range(workers)]
    with sigterm_as_interrupt():
        try:
            for process in processes:
                process.start()
            for process in processes:
                process.join()
        except KeyboardInterrupt:
            for process in processes:
                if process.is_alive():
                    process.terminate()  # SIGTERM: the worker records its trial as stopped, then exits
            for process in processes:
                process.join(timeout=120)
                if process.is_alive():
                    process.kill()
            raise
    failed = [f"worker {i} (exit code {p.exitcode})" for i, p in enumerate(processes) if p.exitcode != 0]
    if failed:
        raise UserError(f"{', '.join(failed)} stopped early; what it finished is recorded, and rerunning the command resumes")


def _worker_main(target, job, worker: int, device: str, threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the workers with SIGTERM
    torch.set_num_threads(threads)
    try:
        with sigterm_as_interrupt():
            target(job, worker, device)
    except KeyboardInterrupt:
        sys.exit(130)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
