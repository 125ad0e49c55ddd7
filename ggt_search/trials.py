"""A trial's life in a study, the same for `search` and `ablate`:
- it trains one config, writing its TrialRecord as the run goes (`train_trial`);
- a failing candidate is recorded as FAIL with its reason, a diverging one is pruned with its
  reason, and the study goes on (`recorded`, `run_trials`);
- a trial whose worker was killed goes stale, and the next run fails it and retries it with the
  same parameters (`fail_stale_trials`; `running_note` says when that will be);
- a worker that asks for work when there is none left stands down (`SurplusTrial`);
- its epochs show as a progress bar, and each finished trial prints one progress line (`ProgressLine`);
- a final evaluation stores its validation and test predictions in the study's artifact store
  (`store_predictions`, read back with `load_predictions`).
"""

from __future__ import annotations

import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from ggt_search.config import RunConfig
from ggt_search.errors import UserError
from ggt_search.files import DiskFull, file_sha256
from ggt_search.progress import Progress, duration
from ggt_search.record import TrialRecord
from ggt_search.storage import MISSED_BEATS, heartbeat_ages
from ggt_search.train import NonFiniteLoss, Predictions, RunResult, Trainer, environment

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class SurplusTrial(RuntimeError):
    """Two workers asked for the last piece of work at once; the later one stands down."""


def train_trial(
    trial: optuna.Trial,
    config: RunConfig,
    graphs,
    *,
    final: bool,
    prune: bool,
    store: FileSystemArtifactStore | None = None,
    first_step: int = 0,
    name: str | None = None,
) -> RunResult:
    """Train `config` as this trial's run, writing its TrialRecord as the run goes.

    final: the run is a final evaluation of a fixed config (an ablation): test is scored
    once, with the best-validation weights. Otherwise (a search) test is never read.
    prune: ask the study's pruner after every epoch.
    store: where a final evaluation's predictions go (`store_predictions`).
    first_step: the steps this trial reported before this run (a trial over several seeds
    trains them one after another, each seed's epochs after the last one's: a trial reports
    one step sequence); its epochs and curve go on from there.
    name: what its progress bar calls the run (default "trial N").
    """
    if first_step:  # a later seed of the trial: its record goes on
        record = TrialRecord(curve=list(trial.user_attrs.get("curve", [])))
    else:
        record = TrialRecord()
        # first: a config that cannot even start is recorded with its failure
        record.write(trial, config=config.to_dict(), seed=config.train.seed)
    trainer = Trainer(config, graphs)
    # What a fine-tuned run started from, by content: a checkpoint rebuilt under the same path is another start.
    started_from = {"init_sha256": file_sha256(Path(config.train.init))} if config.train.init else {}
    record.write(trial, environment=environment(trainer.device) | started_from, dataset=trainer.graphs.name)

    bar = Progress(config.train.epochs, name or f"trial {trial.number}", "epochs")

    def on_epoch(epoch) -> None:
        step = first_step + epoch.epoch
        trial.report(epoch.valid_metric, step)
        record.write(trial, epochs=step, curve=[*record.curve, epoch.valid_metric])
        bar.update(note=f"valid {trainer.graphs.metric} {epoch.valid_metric:.4f}")
        if prune and trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch.epoch}" + (f" (step {step})" if first_step else ""))

    with bar:
        result = trainer.fit(
            on_epoch=on_epoch, evaluate_test=final, on_start=lambda n: record.write(trial, parameters=n)
        )
    record.write(
        trial,
        best_epoch=result.best_epoch,
        test=result.test,
        trivial=result.trivial,
        seconds_per_epoch=sum(r.seconds for r in result.history) / len(result.history),
    )
    if store is not None and result.predictions is not None:
        record.write(trial, predictions=store_predictions(trial, store, result.predictions))
    return result


def store_predictions(trial: optuna.Trial, store: FileSystemArtifactStore, predictions: dict[str, Predictions]) -> str:
    """The run's predictions as one compressed .npz artifact of the trial; returns its artifact id.

    Per split (valid, test): `{split}_graphs` (the molecules' dataset rows), `{split}_predicted` and
    `{split}_labels` ([n, tasks] float32, on the metric's scale; NaN = no label). ogbg-molhiv's
    4,113 + 4,113 molecules of one task take about 70 kB a run; ogbg-molpcba's 128 tasks about 20 MB.
    """
    arrays = {
        f"{split}_{part}": getattr(p, part).astype(np.int64 if part == "graphs" else np.float32)
        for split, p in predictions.items()
        for part in ("graphs", "predicted", "labels")
    }
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "predictions.npz"
        np.savez_compressed(path, **arrays)
        return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)


def load_predictions(store: FileSystemArtifactStore, artifact_id: str) -> dict[str, Predictions]:
    """What `store_predictions` stored: {split: Predictions}."""
    with store.open_reader(artifact_id) as reader, np.load(reader) as arrays:
        splits = sorted({key.split("_")[0] for key in arrays.files})
        return {
            split: Predictions(arrays[f"{split}_graphs"], arrays[f"{split}_predicted"], arrays[f"{split}_labels"])
            for split in splits
        }


class StoredTestPredictions:
    """Runs' stored test predictions by artifact id, each read from `folder` once: a report reads the
    baseline's for every variant, in its bootstrap and again in its size table. A missing one raises
    ArtifactNotFound."""

    def __init__(self, folder: Path):
        self.folder, self._store, self._read = folder, FileSystemArtifactStore(str(folder)), {}

    def __getitem__(self, artifact_id: str) -> Predictions:
        if artifact_id not in self._read:
            self._read[artifact_id] = load_predictions(self._store, artifact_id)["test"]
        return self._read[artifact_id]


def recorded(
    objective: Callable[[optuna.Trial], float], disk_full: list[DiskFull] | None = None
) -> Callable[[optuna.Trial], float]:
    """`objective`, with every way a trial can end written on the trial: its reason and its time.
    A full disk also stops the study (every later trial would fail the same way), kept in `disk_full`."""

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
            if isinstance(error, DiskFull) and disk_full is not None:
                disk_full.append(error)
                trial.study.stop()
            if isinstance(error, (UserError, SurplusTrial)):  # our own one-line reasons
                record.write(trial, reason=str(error))
            else:
                record.write(
                    trial,
                    reason=f"{type(error).__name__}: {str(error)[:500]}",
                    traceback=traceback.format_exc()[-4000:],
                )
            raise
        finally:
            record.write(trial, seconds=round(time.perf_counter() - start, 2))

    return run


def finished_count(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> int:
    """Trials finished up to this one, itself included: each finished trial gets a count of its own,
    even when two workers finish at once (their callbacks see the same study)."""
    finished = study.get_trials(deepcopy=False, states=FINISHED)
    return sum(1 for t in finished if t.datetime_complete <= trial.datetime_complete)


def time_left(study: optuna.Study, runs_left: int, workers: int) -> str:
    """'; about 3 h 20 min left' at the study's mean time per finished trial, shared by `workers`."""
    seconds = [t.duration.total_seconds() for t in study.get_trials(deepcopy=False, states=FINISHED) if t.duration]
    if not seconds or runs_left <= 0:
        return ""
    return f"; about {duration(sum(seconds) / len(seconds) * runs_left / workers)} left"


class ProgressLine:
    """A search's line per finished trial: state, value, the best so far, how far the study is and the time left."""

    def __init__(self, total: int | None, workers: int = 1):
        self.total, self.workers = total, workers

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = finished_count(study, trial)
        value = "" if trial.value is None else f" value {trial.value:.4f}"
        try:
            best = f"  best {study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:
            best = ""
        reason = TrialRecord.of(trial).reason
        progress = f"[{done}/{self.total}]" if self.total else f"[{done}]"
        left = time_left(study, self.total - done, self.workers) if self.total else ""
        print(
            f"{progress} trial {trial.number} {trial.state.name.lower()}{value}{best}"
            f"{'  (' + reason + ')' if reason and trial.state != TrialState.COMPLETE else ''}{left}",
            flush=True,
        )


def run_trials(
    study: optuna.Study,
    objective,
    *,
    n_trials: int | None,
    timeout: float | None,
    line: Callable[[optuna.Study, optuna.trial.FrozenTrial], None],
    stop: Callable[[optuna.Study], bool],
) -> None:
    """study.optimize with our rules: failures recorded and caught, one progress `line` per trial;
    a full disk stops the study, and is raised (one line) once the trial is recorded."""

    def stop_when_done(study: optuna.Study, trial) -> None:
        if stop(study):
            study.stop()

    disk_full: list[DiskFull] = []
    study.optimize(
        recorded(objective, disk_full),
        n_trials=n_trials,
        timeout=timeout,
        catch=(Exception,),
        callbacks=[line, stop_when_done],
        gc_after_trial=True,
    )
    if disk_full:
        raise disk_full[0]


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the RUNNING trials of killed workers (silent for MISSED_BEATS heartbeats); the storage's
    retry callback queues each again, WAITING, with its parameters and user attributes.
    Call it before counting the work left, so a restart reruns them instead of waiting for them forever."""
    optuna.storages.fail_stale_trials(study)


def running_note(study: optuna.Study, storage: RDBStorage, heartbeat: int) -> str | None:
    """What is still RUNNING in the study, and when a dead worker's trial will be retried."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return None
    ages = heartbeat_ages(study, storage, running)
    grace = MISSED_BEATS * heartbeat
    described = []
    for trial in running:
        age = ages.get(trial.number)
        when = (
            "no heartbeat yet"
            if age is None
            else f"last heartbeat {age:.0f} s ago, stale in {max(0.0, grace - age):.0f} s"
        )
        described.append(f"trial {trial.number} ({when})")
    return (
        f"{len(running)} trial(s) still RUNNING in another worker: {', '.join(described)}. If that worker was "
        f"killed, the first run after its trial goes stale ({grace} s without a heartbeat) fails it and "
        f"retries it: rerun this command then."
    )
