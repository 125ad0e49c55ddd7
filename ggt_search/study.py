"""Optuna studies: each trial trains one sampled candidate, reports validation scores
every epoch, and may be pruned. Studies are addressed by name and storage URL, so the
same command resumes a study, and workers anywhere join it through the same storage.

Storage: a SQLite file by default (one machine, a few workers); any SQLAlchemy URL
(`postgresql+psycopg2://user@host/db`) for many workers on many machines. Heartbeats mark
a trial whose worker died as failed, and it is retried with the same parameters.

On small molecule sets the spread between seeds is as large as the gaps between the top trials,
so a search may train each trial over several seeds and race them (`seeds_per_trial`, `race`),
and retrain its best trials on fresh seeds to confirm the winner (`confirm`).
"""

from __future__ import annotations

import math
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
from optuna.artifacts import get_all_artifact_meta, upload_artifact
from optuna.trial import TrialState

from ggt_search.config import DEFAULT_STORAGE, RunConfig
from ggt_search.datasets import load_dataset
from ggt_search.errors import UserError
from ggt_search.files import file_sha256, make_folder, save_tensors
from ggt_search.graphset import GraphSet
from ggt_search.metrics import TRIVIAL, is_better
from ggt_search.record import StudyRecord, TrialRecord
from ggt_search.space import check_space, grid, load_space, suggest
from ggt_search.storage import (
    AtomicArtifactStore,
    artifact_dir,
    check_storage,
    create_or_load_study,
    hide_password,
    load_existing_study,
    open_storage,
)
from ggt_search.train import training_device
from ggt_search.trials import (
    FINISHED,
    ProgressLine,
    SurplusTrial,
    fail_stale_trials,
    finished_count,
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
    seeds_per_trial: int = 1  # a trial's value is its mean best validation score over this many seeds
    race_p: float = 0.1  # between seeds, a trial worse than the best one at this p (Wilcoxon) stops; 0: no race
    confirm_top: int = 0  # once the trials are done, retrain this many best ones on fresh seeds (0: no confirmation)
    confirm_seeds: int = 5  # the fresh seeds of that confirmation

    def __post_init__(self):
        if self.timeout is not None and not (math.isfinite(self.timeout) and self.timeout > 0):
            raise UserError(f"--timeout must be a positive number of seconds, got {self.timeout}")
        if self.trials is not None and self.workers > self.trials:
            raise UserError(
                f"--workers {self.workers} is more than --trials {self.trials}: each worker trains one trial at a "
                "time; pass at most as many workers as trials"
            )
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


def make_pruner(name: str, epochs: int, seeds_per_trial: int = 1) -> optuna.pruners.BasePruner:
    """The epoch-level pruner. A trial over several seeds reports each seed's epochs after the last
    seed's (see `train_trial`), so its resource, for Hyperband, is every seed's epochs."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=max(1, epochs // 5))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs * seeds_per_trial, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"unknown pruner {name!r}; use median, hyperband or none")


# What defines a search: a resume that differs in any of these would pool the trials of two experiments.
SEARCH_DEFINED_BY = (
    "kind",
    "dataset",
    "checksum",
    "metric",
    "direction",
    "epochs",
    "space",
    "sampler",
    "pruner",
    "seeds_per_trial",
    "base",
)
# How a trial is run, not what it trains: a resume may change these (e.g. move to a GPU, or compile).
EXECUTION_FIELDS = {("train", "device"), ("train", "compile"), ("train", "cuda_graphs"), ("train", "eval_train")}


def searched_base(base: RunConfig, space: dict, seeds_per_trial: int = 1) -> dict:
    """The model and train fields every trial starts from: the base config, less the fields the space
    samples (they vary by trial) and the execution fields. The training seed counts only when trials
    pair by seed (several seeds per trial, raced): otherwise machines that share a study pass their
    own --seed, so that they draw other candidates."""
    skip = EXECUTION_FIELDS | ({("train", "seed")} if seeds_per_trial == 1 else set())
    values = base.to_dict()
    return {
        section: {
            key: value
            for key, value in values[section].items()
            if f"{section}.{key}" not in space and (section, key) not in skip
        }
        for section in ("model", "train")
    }


def search_record(settings: SearchSettings, graphs: GraphSet, space: dict) -> StudyRecord:
    """What defines this search: its dataset, metric and direction, budget, space, sampler, pruner and
    the config its trials start from."""
    return StudyRecord.new(
        "search",
        settings.base.dataset,
        graphs,
        settings.base.train.epochs,
        space=space,
        sampler=settings.sampler,
        pruner=settings.pruner,
        seeds_per_trial=settings.seeds_per_trial,
        base=searched_base(settings.base, space, settings.seeds_per_trial),
    )


def create_study(settings: SearchSettings, graphs: GraphSet, space: dict) -> None:
    """Create the study (and a fresh storage) once, before any worker opens it: workers that
    start together on a fresh SQLite file would race to create its tables. A resumed study
    must be the same search; this run's command line is recorded on it."""
    record = search_record(settings, graphs, space)
    study, _ = create_or_load_study(settings.study, settings.storage, settings.heartbeat, record.direction)
    record.check_resumes(study, SEARCH_DEFINED_BY)
    record.write(study)


def mixed_seed(*parts: int) -> int:
    """One seed from several (the search's seed, a worker, a count), mixed rather than added: with
    seed + count, a resumed --seed 0 replayed --seed 1's draws."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def open_study(settings: SearchSettings, space: dict, worker: int = 0):
    """(study, storage): the study `create_study` made, with a sampler that has not seen this run's draws."""
    storage = open_storage(settings.storage, settings.heartbeat)
    pruner = make_pruner(settings.pruner, settings.base.train.epochs, settings.seeds_per_trial)
    study = optuna.load_study(study_name=settings.study, storage=storage, pruner=pruner)
    # Seeded by the worker and the trials already there too: a resumed study (or a second worker)
    # must not replay the first run's random start-up trials.
    existing = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(settings.sampler, mixed_seed(settings.seed, worker, existing), space)
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
        if self.settings.seeds_per_trial == 1:
            result = train_trial(trial, config, self.graphs, final=False, prune=True)
            value, best_state = result.best_valid, result.best_state
        else:
            value, best_state = self.train_seeds(trial, config)
        # the study's best weights, for whoever evaluates them next
        if self._is_new_best(trial, value, self.graphs.metric):
            with tempfile.TemporaryDirectory() as folder:
                weights = Path(folder) / "best.pt"
                save_tensors(best_state, weights)
                size, digest = weights.stat().st_size, file_sha256(weights)
                artifact = upload_artifact(artifact_store=self.store, file_path=str(weights), study_or_trial=trial)
            if self.store.sha256(artifact) != digest:
                raise UserError(f"the stored copy of trial {trial.number}'s weights differs from what was written")
            TrialRecord().write(trial, weights="artifact: best.pt", weights_bytes=size, weights_sha256=digest)
        return value

    def train_seeds(self, trial: optuna.Trial, config: RunConfig) -> tuple[float, dict]:
        """Train `config` on seeds seed, seed + 1, ... (the same list in every trial, so trials pair
        by seed), each seed's epochs pruned as one trial's are; between seeds, `race` may stop the
        trial. Returns the mean best validation score and the best seed's weights."""
        scores, best = {}, None
        epochs, metric = config.train.epochs, self.graphs.metric
        for number in range(self.settings.seeds_per_trial):
            seed = config.train.seed + number
            seeded = config.with_overrides(train={"seed": seed})
            result = train_trial(
                trial,
                seeded,
                self.graphs,
                final=False,
                prune=True,
                first_step=number * epochs,
                name=f"trial {trial.number} seed {seed}",
            )
            scores[str(seed)] = result.best_valid
            TrialRecord().write(trial, seed_scores=scores)
            if best is None or is_better(metric, result.best_valid, best.best_valid):
                best = result
            last = number == self.settings.seeds_per_trial - 1  # nothing left to save by stopping
            if not last and (reason := race(trial.study, scores, self.settings.race_p)):
                TrialRecord().write(trial, reason=reason)
                raise optuna.TrialPruned(reason)
        return float(np.mean(list(scores.values()))), best.best_state

    @staticmethod
    def _is_new_best(trial: optuna.Trial, value: float, metric: str) -> bool:
        try:
            best = trial.study.best_value
        except ValueError:  # no completed trial yet
            return True
        return is_better(metric, value, best)


def race(study: optuna.Study, scores: dict[str, float], p: float) -> str | None:
    """Why a trial with these seed scores stops (None: it goes on): Optuna's WilcoxonPruner, which
    tests a trial's steps against the best trial's on the steps they share, asked with seeds as
    the steps. A trial reports one step sequence, and its epochs already are that (the epoch
    pruner reads them), so the pruner reads each trial's `seed_scores` instead, through a view of
    the study that holds the best trial alone. One-sided, paired by seed; at most 0.5^n over n
    shared seeds, so at p = 0.1 a race can stop a trial from its 4th seed on."""
    if p <= 0:
        return None
    try:
        best = study.best_trial
    except ValueError:  # no finished trial to race against yet
        return None
    best_scores = TrialRecord.of(best).seed_scores
    if not best_scores:
        return None

    def by_seed(values: dict[str, float]) -> optuna.trial.FrozenTrial:
        steps = {int(seed): value for seed, value in values.items()}
        return optuna.trial.create_trial(value=float(np.mean(list(steps.values()))), intermediate_values=steps)

    view = SimpleNamespace(direction=study.direction, best_trial=by_seed(best_scores))
    if not optuna.pruners.WilcoxonPruner(p_threshold=p).prune(view, by_seed(scores)):
        return None
    shared = len(set(scores) & set(best_scores))
    return (
        f"raced out after {len(scores)} seeds: worse than trial {best.number} over their {shared} shared seeds "
        f"(Wilcoxon signed-rank, p < {p})"
    )


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
            group, dimension = trial.number, random.Random(mixed_seed(seed, trial.number)).choice(sorted(dimensions))
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
    check_storage(settings.storage)
    training_device(settings.base.train)  # the base config's device and precision; check_space the space's
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
    if settings.confirm_top:
        confirm(settings)
    study = load_existing_study(settings.study, settings.storage)
    _print_summary(study, settings)
    return study


def confirmation_name(study: str) -> str:
    """The study that holds a search's confirmation runs (one per top trial and fresh seed)."""
    return f"{study}--confirm"


def top_trials(study: optuna.Study, n: int) -> list[optuna.trial.FrozenTrial]:
    """The study's n best completed trials, best first."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    higher = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(trials, key=lambda t: t.value, reverse=higher)[:n]


def confirm(settings: SearchSettings) -> dict | None:
    """A confirmed winner: the `confirm_top` best trials retrained on `confirm_seeds` fresh seeds
    (seeds no trial of the search trained), validation only, as the queued trials of a study of
    their own, so a killed confirmation resumes and a second worker shares it. The winner is the
    best mean, with its paired comparison to the runner-up; stored on the search study as its
    StudyRecord's `confirmation`, which `best_config` reads."""
    study = load_existing_study(settings.study, settings.storage)
    top = top_trials(study, settings.confirm_top)
    if not top:
        print(f"study {settings.study} has no completed trial to confirm", flush=True)
        return None
    stored = StudyRecord.of(study).confirmation or {}
    first = stored["seeds"][0] if stored.get("seeds") else 1 + max(_trained_seeds(study))
    seeds = list(range(first, first + settings.confirm_seeds))
    name = confirmation_name(settings.study)
    runs, _ = create_or_load_study(
        name,
        settings.storage,
        settings.heartbeat,
        study.direction.name.lower(),
        sampler=optuna.samplers.RandomSampler(),
        pruner=optuna.pruners.NopPruner(),
    )
    runs.set_user_attr("kind", "confirmation")
    runs.set_user_attr("confirms", settings.study)
    fail_stale_trials(runs)  # a confirmation restarted after a killed worker reruns its runs
    taken = {_confirm_key(t) for t in runs.get_trials(deepcopy=False, states=COUNTED)}
    for trial in top:
        for seed in seeds:
            if (trial.number, seed) not in taken:
                runs.enqueue_trial({}, user_attrs={"confirms": trial.number, "seed": seed})
    waiting = len(runs.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    print(
        f"confirming the {len(top)} best trials ({', '.join(str(t.number) for t in top)}) on {len(seeds)} fresh "
        f"seeds ({seeds[0]}-{seeds[-1]}), validation only (study {name}): {waiting} runs to do",
        flush=True,
    )
    if waiting:
        run_workers(_confirm_worker, (settings, name), settings.workers, settings.base.train.device)
    confirmation = confirmed_winner(runs, top, seeds) | {"study": name}
    study.set_user_attr("confirmation", confirmation)
    return confirmation


def _confirm_key(trial: optuna.trial.FrozenTrial) -> tuple[int | None, int | None]:
    """(the search trial a confirmation run retrains, its seed), as queued in its user attributes."""
    return trial.user_attrs.get("confirms"), trial.user_attrs.get("seed")


def _trained_seeds(study: optuna.Study) -> list[int]:
    """Every seed a trial of the search trained (a trial over several seeds trains seed, seed + 1, ...)."""
    per_trial = StudyRecord.of(study).seeds_per_trial or 1
    seeds = [0]
    for trial in study.get_trials(deepcopy=False):
        config = TrialRecord.of(trial).config
        if config is not None:
            seeds += range(config["train"]["seed"], config["train"]["seed"] + per_trial)
    return seeds


def _confirm_worker(job: tuple[SearchSettings, str], worker: int, device: str) -> None:
    settings, name = job
    graphs = load_dataset(settings.base.dataset)
    search_study = load_existing_study(settings.study, settings.storage)
    configs = {t.number: TrialRecord.of(t).config for t in search_study.get_trials(deepcopy=False)}
    runs = optuna.load_study(study_name=name, storage=open_storage(settings.storage, settings.heartbeat))

    def objective(trial: optuna.Trial) -> float:
        number, seed = _confirm_key(next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number))
        if number is None:  # not from the queue: it ran dry under two workers at once
            trial.study.stop()
            raise SurplusTrial("surplus: the confirmation's queue was empty when this worker asked")
        config = RunConfig.from_dict(configs[number]).with_overrides(train={"seed": seed, "device": device})
        name = f"confirming trial {number} seed {seed}"
        return train_trial(trial, config, graphs, final=False, prune=False, name=name).best_valid  # test never read

    def queue_empty(study: optuna.Study) -> bool:
        return not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))

    if not queue_empty(runs):
        run_trials(runs, objective, n_trials=None, timeout=None, line=confirmation_line, stop=queue_empty)


def confirmation_line(runs: optuna.Study, run: optuna.trial.FrozenTrial) -> None:
    """A confirmation's line per finished run: which trial and seed, its validation score, how many are done."""
    number, seed = _confirm_key(run)
    outcome = f"valid {run.value:.4f}" if run.value is not None else run.state.name.lower()
    print(
        f"[{finished_count(runs, run)}/{len(runs.get_trials(deepcopy=False))}] confirming trial {number} "
        f"seed {seed}: {outcome}",
        flush=True,
    )


def confirmed_winner(runs: optuna.Study, top: list[optuna.trial.FrozenTrial], seeds: list[int]) -> dict:
    """Each top trial's search value and confirmed scores by seed; the winner (the best mean over the
    trials confirmed on every seed) and its paired comparison with the runner-up on their shared seeds."""
    from ggt_search.report.statistics import paired_comparison

    scores: dict[int, dict[int, float]] = {t.number: {} for t in top}
    for run in runs.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        number, seed = _confirm_key(run)
        if number in scores and seed in seeds:
            scores[number].setdefault(seed, run.value)  # a run two workers queued at once counts once
    trials = [
        {
            "trial": t.number,
            "search": t.value,
            "scores": {str(seed): scores[t.number][seed] for seed in sorted(scores[t.number])},
            "mean": float(np.mean(list(scores[t.number].values()))) if scores[t.number] else None,
        }
        for t in top
    ]
    complete = [row for row in trials if len(row["scores"]) == len(seeds)]
    higher = runs.direction == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted(complete, key=lambda row: row["mean"], reverse=higher)
    confirmation = {"seeds": seeds, "trials": trials, "winner": ranked[0]["trial"] if ranked else None}
    if len(ranked) >= 2:
        winner, runner_up = ranked[0], ranked[1]
        shared = sorted(set(winner["scores"]) & set(runner_up["scores"]), key=int)
        comparison = paired_comparison(
            np.array([winner["scores"][s] for s in shared]), np.array([runner_up["scores"][s] for s in shared])
        )
        confirmation["runner_up"] = runner_up["trial"]
        confirmation["comparison"] = comparison
    return confirmation


def chosen_trial(study: optuna.Study) -> tuple[optuna.trial.FrozenTrial, str]:
    """The search's answer and how it was chosen: its confirmed winner (`confirm`) when it has one,
    else its best completed trial."""
    winner = (StudyRecord.of(study).confirmation or {}).get("winner")
    if winner is not None:
        confirmation = StudyRecord.of(study).confirmation
        row = next(r for r in confirmation["trials"] if r["trial"] == winner)
        seeds = confirmation["seeds"]
        best = study.best_trial
        unconfirmed = (
            ""
            if best.number in {r["trial"] for r in confirmation["trials"]}
            else f"; trial {best.number}, better in the search, came later and is not confirmed: rerun the search "
            "with --confirm-top to confirm it"
        )
        return study.get_trials(deepcopy=False)[winner], (
            f"the confirmed winner, trial {winner} (valid {row['mean']:.4f}, the mean over {len(seeds)} fresh seeds "
            f"{seeds[0]}-{seeds[-1]}; {row['search']:.4f} in the search){unconfirmed}"
        )
    try:
        trial = study.best_trial
    except ValueError:
        raise UserError(
            f"study {study.study_name!r} has no completed trial yet; run or resume the search first"
        ) from None
    return trial, f"the best trial, trial {trial.number} (valid {trial.value:.4f} in the search; not confirmed)"


def best_config(study_name: str, storage: str, artifacts: str | None = None) -> RunConfig:
    """The config of the search's answer (`chosen_trial`, said on one line): the one to evaluate over 10 seeds.
    Refused when the trial's stored weights are not the ones it recorded (a damaged study)."""
    study = load_existing_study(study_name, storage)
    trial, how = chosen_trial(study)
    print(f"from study {study_name}: {how}", flush=True)
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
        over = f" (mean over {settings.seeds_per_trial} seeds)" if settings.seeds_per_trial > 1 else ""
        print(
            f"best trial {best.number}: valid {best.value:.4f}{over}; {TRIVIAL} scores "
            f"{TrialRecord.of(best).trivial['valid']:.4f}"
        )
        print(f"  {best.params}")
        _print_confirmation(study)
        print(
            f"final evaluation (OGB: 10 seeds): ggt-search evaluate --from-study {study.study_name} --storage "
            f"{storage} --seeds 0-9"
        )
    except ValueError:
        print("no trial has completed yet")
    print(f"storage: {storage}")
    print(f"dashboard: ggt-search dashboard --storage {storage} --artifacts {settings.artifact_dir()}")


def _print_confirmation(study: optuna.Study) -> None:
    """Each confirmed trial's search value and confirmed mean, and the winner against the runner-up."""
    confirmation = StudyRecord.of(study).confirmation
    if not confirmation:
        return
    seeds = confirmation["seeds"]
    print(f"confirmed on {len(seeds)} fresh seeds ({seeds[0]}-{seeds[-1]}), validation only:")
    for row in confirmation["trials"]:
        spread = list(row["scores"].values())
        confirmed = (
            f"{row['mean']:.4f} +- {np.std(spread, ddof=1) if len(spread) > 1 else float('nan'):.4f} "
            f"({len(spread)} seeds)"
            if spread
            else "not run"
        )
        print(f"  trial {row['trial']}: search {row['search']:.4f}, confirmed {confirmed}")
    if confirmation.get("winner") is None:
        print("  no trial is confirmed on every seed yet; rerun the same command to finish the confirmation")
        return
    line = f"  winner: trial {confirmation['winner']}"
    if comparison := confirmation.get("comparison"):
        line += f"; against the runner-up, trial {confirmation['runner_up']}: {comparison['mean_diff']:+.4f}"
        line += (
            f" (95% CI {comparison['ci_low']:+.4f} to {comparison['ci_high']:+.4f}, paired t p = "
            f"{comparison['p_t']:.3f}, {comparison['n']} seeds)"
            if comparison["testable"]
            else f" ({comparison['why']})"
        )
    print(line)
