"""Optuna studies: each trial trains one sampled candidate, reports validation scores
every epoch, and may be pruned. Studies are addressed by name and storage URL, so the
same command resumes a study, and workers anywhere join it through the same storage.

Storage: a SQLite file by default (one machine, a few workers); any SQLAlchemy URL
(`postgresql+psycopg2://user@host/db`) for many workers on many machines. Heartbeats mark
a trial whose worker died as failed, and it is retried with the same parameters.
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.artifacts import get_all_artifact_meta, upload_artifact
from optuna.trial import TrialState

from ggt_search.config import DEFAULT_STORAGE, RunConfig
from ggt_search.datasets import GraphSet, load_dataset
from ggt_search.errors import UserError
from ggt_search.files import file_sha256, make_folder, save_tensors
from ggt_search.metrics import TRIVIAL, is_better
from ggt_search.record import StudyRecord, TrialRecord
from ggt_search.space import check_space, grid, load_space, suggest
from ggt_search.storage import (
    AtomicArtifactStore,
    artifact_dir,
    create_or_load_study,
    hide_password,
    load_existing_study,
    open_storage,
)
from ggt_search.trials import (
    FINISHED,
    ProgressLine,
    SurplusTrial,
    fail_stale_trials,
    run_trials,
    running_note,
    train_trial,
)
from ggt_search.workers import run_workers

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


@dataclass
class SearchSettings:
    study: str
    base: RunConfig
    space_file: str | None = None
    trials: int | None = 20  # the study's total: rerunning with a larger number adds trials
    timeout: float | None = None
    sampler: str = "tpe"
    pruner: str | None = None  # median; none for a controlled design
    storage: str = DEFAULT_STORAGE
    artifacts: str | None = None
    seed: int = 0
    workers: int = 1
    heartbeat: int = 30  # seconds; a trial silent for 4x this is failed and retried

    def __post_init__(self):
        if self.sampler == "controlled" and self.pruner not in (None, "none"):
            raise UserError(
                f"--sampler controlled ranks choices trained to the end; --pruner {self.pruner} would stop some early. "
                f"Leave out --pruner (or pass --pruner none)"
            )
        if self.pruner is None:
            self.pruner = "none" if self.sampler == "controlled" else "median"

    def artifact_dir(self) -> Path:
        return artifact_dir(self.storage, self.artifacts)


def make_sampler(name: str, seed: int, space: dict) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    if name in ("random", "controlled"):  # controlled: random heads, their siblings enqueued (see controlled_group)
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(grid(space), seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise UserError(f"unknown sampler {name!r}; use tpe, random, grid, gp or controlled")


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=max(1, epochs // 5))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"unknown pruner {name!r}; use median, hyperband or none")


# What defines a search: a resume that differs in any of these would pool the trials of two experiments.
SEARCH_DEFINED_BY = ("kind", "dataset", "checksum", "metric", "direction", "epochs", "space", "sampler", "pruner")


def search_record(settings: SearchSettings, graphs: GraphSet, space: dict) -> StudyRecord:
    """What defines this search: its dataset, metric and direction, budget, space, sampler and pruner."""
    return StudyRecord.new(
        "search",
        settings.base.dataset,
        graphs,
        settings.base.train.epochs,
        space=space,
        sampler=settings.sampler,
        pruner=settings.pruner,
    )


def create_study(settings: SearchSettings, graphs: GraphSet, space: dict) -> None:
    """Create the study (and a fresh storage) once, before any worker opens it: workers that
    start together on a fresh SQLite file would race to create its tables. A resumed study
    must be the same search; this run's command line is recorded on it."""
    record = search_record(settings, graphs, space)
    study, _ = create_or_load_study(settings.study, settings.storage, settings.heartbeat, record.direction)
    record.check_resumes(study, SEARCH_DEFINED_BY)
    record.write(study)


def open_study(settings: SearchSettings, space: dict, worker: int = 0):
    """(study, storage): the study `create_study` made, with a sampler that has not seen this run's draws."""
    storage = open_storage(settings.storage, settings.heartbeat)
    study = optuna.load_study(
        study_name=settings.study, storage=storage, pruner=make_pruner(settings.pruner, settings.base.train.epochs)
    )
    # Seeded by the trials already there too: a resumed study (or a second worker) must
    # not replay the first run's random start-up trials.
    existing = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(settings.sampler, settings.seed + 1000 * worker + existing, space)
    return study, storage


class Objective:
    """Train one candidate per trial; the validation metric is the objective, test is never read."""

    def __init__(self, settings: SearchSettings, space: dict, device: str, graphs: GraphSet):
        self.settings, self.space, self.graphs = settings, space, graphs
        self.base = settings.base.with_overrides(train={"device": device})  # the space may still override it
        self.store = AtomicArtifactStore(make_folder(settings.artifact_dir()))

    def __call__(self, trial: optuna.Trial) -> float:
        total = self.settings.trials
        room = (
            None if total is None else total - _position(trial)
        )  # trials the study may still start, this one included
        if room is not None and room <= 0:
            trial.study.stop()
            raise SurplusTrial(f"surplus: the study already had its {total} trials when this worker asked")
        config = suggest(trial, self.space, self.base)
        if self.settings.sampler == "controlled":
            config = controlled_group(trial, self.space, config, self.settings.seed, room)
        return self.train(trial, config)

    def train(self, trial: optuna.Trial, config: RunConfig) -> float:
        result = train_trial(trial, config, self.graphs, final=False, prune=True)
        # the study's best weights, for whoever evaluates them next
        if self._is_new_best(trial, result.best_valid, self.graphs.metric):
            with tempfile.TemporaryDirectory() as folder:
                weights = Path(folder) / "best.pt"
                save_tensors(result.best_state, weights)
                size, digest = weights.stat().st_size, file_sha256(weights)
                artifact = upload_artifact(artifact_store=self.store, file_path=str(weights), study_or_trial=trial)
            if self.store.sha256(artifact) != digest:
                raise UserError(f"the stored copy of trial {trial.number}'s weights differs from what was written")
            TrialRecord().write(trial, weights="artifact: best.pt", weights_bytes=size, weights_sha256=digest)
        return result.best_valid

    @staticmethod
    def _is_new_best(trial: optuna.Trial, value: float, metric: str) -> bool:
        try:
            best = trial.study.best_value
        except ValueError:  # no completed trial yet
            return True
        return is_better(metric, value, best)


MOST_CHOICES = 8  # an integer range with more values than this is not a design dimension of a controlled group


def design_dimensions(space: dict) -> dict[str, list]:
    """The searched keys a controlled design can vary, with their choices: categorical keys,
    and integer ranges of at most MOST_CHOICES values (floats such as lr are not design choices)."""
    dimensions = {}
    for key, spec in space.items():
        if not isinstance(spec, dict):
            continue
        if "choices" in spec:
            values = spec["choices"]
        elif "int" in spec and not spec.get("log"):
            values = list(range(spec["int"][0], spec["int"][1] + 1, spec.get("step", 1)))
        else:
            continue
        if 2 <= len(values) <= MOST_CHOICES:
            dimensions[key] = values
    return dimensions


def controlled_group(trial: optuna.Trial, space: dict, config: RunConfig, seed: int, room: int | None) -> RunConfig:
    """GraphGym's controlled random search (You et al., NeurIPS 2020). A randomly sampled head
    trial picks one design dimension at random and enqueues one sibling per other choice of it,
    each repeating every other parameter of the head (one that only the new choice enables,
    such as attention_heads for global_attention: transformer, is drawn at random); the whole
    group trains with a seed of its own, so groups differ in seed too. The report ranks the
    choices within each group.

    room: trials the study may still start, this one included: a group never outgrows it
    (a head with no dimension that fits trains alone and joins no group)."""
    group = trial.user_attrs.get("design_group")
    if group is None:
        dimensions = {
            k: v for k, v in design_dimensions(space).items() if k in trial.params and (room is None or len(v) <= room)
        }
        if dimensions:
            group, dimension = trial.number, random.Random(seed + trial.number).choice(sorted(dimensions))
            attrs = {"design_group": group, "design_dimension": dimension}
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
            for choice in dimensions[dimension]:
                if choice != trial.params[dimension]:
                    trial.study.enqueue_trial({**trial.params, dimension: choice}, user_attrs=attrs)
    return config if group is None else config.with_overrides(train={"seed": seed + group})


def _position(trial: optuna.Trial) -> int:
    """How many live or finished trials the study had before this one."""
    others = trial.study.get_trials(deepcopy=False, states=COUNTED)
    return sum(1 for t in others if t.number < trial.number)


def remaining(study: optuna.Study, total: int | None) -> int | None:
    """Trials still to run; a WAITING trial (a retry of a dead worker's) is among them."""
    if total is None:
        return None
    live = (*FINISHED, TrialState.RUNNING)
    return max(0, total - len(study.get_trials(deepcopy=False, states=live)))


def run_worker(job: tuple[SearchSettings, dict, GraphSet | None], worker: int = 0, device: str | None = None) -> None:
    settings, space, graphs = job
    graphs = graphs or load_dataset(settings.base.dataset)
    objective = Objective(settings, space, device or settings.base.train.device, graphs)
    study, storage = open_study(settings, space, worker)
    fail_stale_trials(study)  # trials of killed workers: failed now, retried below
    left = remaining(study, settings.trials)
    if left == 0:  # nothing to start: say why (all finished, or some still running, perhaps in a killed worker)
        if worker == 0:
            finished = len(study.get_trials(deepcopy=False, states=FINISHED)) >= settings.trials
            print(
                f"study {settings.study} already has its {settings.trials} finished trials; pass a larger "
                "--trials to add more"
                if finished
                else running_note(study, storage, settings.heartbeat),
                flush=True,
            )
        return
    run_trials(
        study,
        objective,
        n_trials=left if settings.workers == 1 else None,
        timeout=settings.timeout,
        line=ProgressLine(settings.trials, settings.workers),
        stop=lambda s: remaining(s, settings.trials) == 0,
    )


def search(settings: SearchSettings) -> optuna.Study:
    """Run (or resume) a study with settings.workers local processes; returns the study."""
    space = load_space(settings.space_file)
    check_space(space, settings.base, settings.space_file)  # every value of the space, before any study exists
    if settings.sampler == "grid":
        grid(space)  # a grid needs categorical parameters only: say so before any work
    graphs = load_dataset(settings.base.dataset)  # and its caches, once, before any worker starts
    if settings.workers > 1 and (settings.base.model.pe_dim or "model.pe_dim" in space):
        graphs.load_pe(0)
    create_study(settings, graphs, space)
    # One worker runs here and trains on these graphs; spawned workers load them from the cache.
    job = (settings, space, graphs if settings.workers == 1 else None)
    run_workers(run_worker, job, settings.workers, settings.base.train.device)
    study = load_existing_study(settings.study, settings.storage)
    _print_summary(study, settings)
    return study


def best_config(study_name: str, storage: str, artifacts: str | None = None) -> RunConfig:
    """The config the search's best completed trial trained: the one to evaluate over 10 seeds.
    Refused when the trial's stored weights are not the ones it recorded (a damaged study)."""
    study = load_existing_study(study_name, storage)
    try:
        trial = study.best_trial
    except ValueError:
        raise UserError(f"study {study_name!r} has no completed trial yet; run or resume the search first") from None
    record = TrialRecord.of(trial)
    if record.weights_sha256:
        store = AtomicArtifactStore(artifact_dir(storage, artifacts))
        for meta in get_all_artifact_meta(trial, storage=open_storage(storage)):
            stored = store.sha256(meta.artifact_id)
            if stored is not None and stored != record.weights_sha256:
                raise UserError(
                    f"the weights of study {study_name!r}'s best trial {trial.number} (artifact {meta.artifact_id}) "
                    "do not match their recorded sha256 (damaged files); rerun the search as a new --study"
                )
    return RunConfig.from_dict(record.config)


def _print_summary(study: optuna.Study, settings: SearchSettings) -> None:
    storage = hide_password(settings.storage)
    states = {s.name.lower(): 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for t in study.get_trials(deepcopy=False):
        if t.state.name.lower() in states:
            states[t.state.name.lower()] += 1
    print(f"study {study.study_name}: " + ", ".join(f"{n} {s}" for s, n in states.items()))
    try:
        best = study.best_trial
        print(
            f"best trial {best.number}: valid {best.value:.4f}; {TRIVIAL} scores "
            f"{TrialRecord.of(best).trivial['valid']:.4f}"
        )
        print(f"  {best.params}")
        print(
            f"final evaluation (OGB: 10 seeds): ggt-search evaluate --from-study {study.study_name} --storage "
            f"{storage} --seeds 0-9"
        )
    except ValueError:
        print("no trial has completed yet")
    print(f"storage: {storage}")
    print(f"dashboard: ggt-search dashboard --storage {storage} --artifacts {settings.artifact_dir()}")
