"""Controlled ablations: a baseline config, named variants (config changes), several seeds,
on one dataset or several.

Every (variant, seed) pair is one trial of an Optuna study (one study per dataset), queued
with the pair in its user attributes, so the dashboard shows the ablation, several workers
can share it, a rerun only trains the pairs not finished yet, and variants or seeds can be
added to the file later. No pruning: every variant gets the same epoch budget. An ablation
compares fixed configs, so each run is a final evaluation: test is scored once, with the
best-validation weights, and stored beside the validation score. A study only ever holds
runs of one set of settings: a rerun whose configs differ from the stored runs' is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ggt_search.config import DEFAULT_STORAGE, DatasetSpec, RunConfig, config_difference, read_yaml_mapping
from ggt_search.datasets import file_sha256, load_dataset
from ggt_search.errors import UserError
from ggt_search.final_evaluation import parse_seeds
from ggt_search.record import StudyRecord, TrialRecord
from ggt_search.storage import create_or_load_study, open_storage
from ggt_search.trials import SurplusTrial, fail_stale_trials, run_trials, running_note, train_trial
from ggt_search.workers import run_workers

BASELINE = "baseline"
# Packaged dataset suites (`ablate --suite NAME`): small scaffold-split sets a CPU can run, and the seed's GPU sets.
SUITES = {
    "cpu": ("ogbg-molbbbp", "ogbg-molclintox", "ogbg-moltox21", "ogbg-molesol", "ogbg-molfreesolv"),
    "gpu": ("ogbg-molhiv", "ogbg-molpcba"),
}
FILE_KEYS = {"idea", "question", "dataset", "datasets", "baseline", "variants", "seeds", "epochs", "effect"}


@dataclass
class Ablation:
    name: str
    idea: str
    question: str
    base: RunConfig  # the baseline, on the first dataset
    variants: dict[str, dict] = field(default_factory=dict)  # name -> {model: {...}, train: {...}}
    seeds: list[int] = field(default_factory=lambda: list(range(5)))
    datasets: list[DatasetSpec] = field(default_factory=list)  # every dataset the variants run on
    effect: float | None = None  # the effect size the report says how many seeds would detect

    def config(self, variant: str, seed: int, dataset: DatasetSpec | None = None) -> RunConfig:
        overrides = self.variants.get(variant, {})
        config = self.base.with_overrides(model=overrides.get("model"), train=overrides.get("train"))
        if dataset is not None:
            config = replace(config, dataset=dataset)
        return config.with_overrides(train={"seed": seed})

    def study_name(self, study: str, dataset: DatasetSpec) -> str:
        """One study per dataset: the group's name itself when there is one dataset."""
        return study if len(self.datasets) == 1 else f"{study}--{Path(dataset.name).stem}"


def load_ablation(
    path: str | Path,
    dataset: dict | None = None,
    seeds: str | None = None,
    epochs: int | None = None,
    datasets: list[dict] | None = None,
) -> Ablation:
    """The ablation a file defines; `dataset` (one) or `datasets` (several) replace the file's datasets."""
    path = Path(path)
    values = read_yaml_mapping(path, "ablation", "with at least 'baseline' and 'variants'")
    unknown = set(values) - FILE_KEYS
    if unknown:
        raise UserError(f"{path}: unknown key(s) {sorted(unknown)}; known: {', '.join(sorted(FILE_KEYS))}")
    if values.get("baseline") is None:
        raise UserError(
            f"ablation {path} has no 'baseline'; give the config every variant is compared with (model: and "
            "train: settings)"
        )
    if not values.get("variants"):
        raise UserError(
            f"ablation {path} has no 'variants'; name at least one config change to compare with the baseline"
        )
    if "dataset" in values and "datasets" in values:
        raise UserError(f"{path}: give 'dataset' (one) or 'datasets' (a list), not both")
    datasets = datasets or ([dataset] if dataset else values.get("datasets") or [values.get("dataset") or "nci-tpsa"])
    if not isinstance(datasets, list):
        raise UserError(f"{path}: 'datasets' must be a list of dataset names or mappings")
    base = dict(values["baseline"])  # {} is the default model, said on purpose
    epochs = epochs if epochs is not None else values.get("epochs")
    if epochs is not None:
        base["train"] = {**(base.get("train") or {}), "epochs": epochs}
    try:
        configs = [RunConfig.from_dict(base | {"dataset": d}) for d in datasets]
    except UserError as error:
        raise UserError(f"{path}: baseline: {error}") from None
    base_config = configs[0]
    variants = {}
    for name, change in values["variants"].items():
        if name == BASELINE:
            raise UserError(f"{path}: '{BASELINE}' is reserved for the baseline; rename that variant")
        change = change or {}
        if set(change) - {"model", "train"}:
            raise UserError(f"{path}: variant {name!r} may change only 'model' and 'train'")
        try:
            base_config.with_overrides(model=change.get("model"), train=change.get("train"))
        except UserError as error:
            raise UserError(f"{path}: variant {name!r}: {error}") from None
        variants[str(name)] = change
    effect = values.get("effect")
    if effect is not None and not (isinstance(effect, int | float) and not isinstance(effect, bool) and effect > 0):
        raise UserError(f"{path}: 'effect' must be a positive number (the difference worth detecting), got {effect!r}")
    return Ablation(
        path.stem,
        values.get("idea", path.stem),
        values.get("question", ""),
        base_config,
        variants,
        parse_seeds(str(seeds or values.get("seeds", "0-4"))),
        [c.dataset for c in configs],
        effect,
    )


@dataclass
class AblationSettings:
    ablation: Ablation
    study: str
    storage: str = DEFAULT_STORAGE
    workers: int = 1
    heartbeat: int = 30  # seconds; a run silent for 4x this (its worker was killed) is rerun


def run_ablation(settings: AblationSettings) -> list[optuna.Study]:
    """Run (or resume) the ablation on each of its datasets, one study each; returns the studies."""
    return [run_on_dataset(settings, dataset) for dataset in settings.ablation.datasets]


def run_on_dataset(settings: AblationSettings, dataset: DatasetSpec) -> optuna.Study:
    ablation = settings.ablation
    name = ablation.study_name(settings.study, dataset)
    graphs = load_dataset(dataset)
    if ablation.base.model.pe_dim or any((v.get("model") or {}).get("pe_dim") for v in ablation.variants.values()):
        graphs.load_pe(0)
    defined = {
        "name": ablation.name,
        "idea": ablation.idea,
        "question": ablation.question,
        "baseline": ablation.config(BASELINE, ablation.seeds[0], dataset).to_dict(),
        "variants": ablation.variants,
        "seeds": ablation.seeds,
        "effect": ablation.effect,
    }
    record = StudyRecord.new(
        "ablation", dataset, graphs, ablation.base.train.epochs, group=settings.study, ablation=defined
    )
    study, storage = create_or_load_study(
        name,
        settings.storage,
        settings.heartbeat,
        record.direction,
        sampler=optuna.samplers.RandomSampler(),
        pruner=optuna.pruners.NopPruner(),
    )
    check_same_settings(study, ablation, dataset)
    record.write(study)
    fail_stale_trials(study)  # a restarted ablation reruns the runs of killed workers
    enqueue_missing(study, ablation)
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    print(
        f"ablation {ablation.name} on {graphs.name} (study {name}): {len(ablation.variants) + 1} variants x "
        f"{len(ablation.seeds)} seeds; {waiting} runs to do"
    )
    if not waiting and (note := running_note(study, storage, settings.heartbeat)):
        print(note)
    if waiting:
        run_workers(_worker, (settings, name, dataset), settings.workers, ablation.base.train.device)
    return optuna.load_study(study_name=name, storage=storage)


def run_pair(trial: optuna.trial.FrozenTrial) -> tuple:
    """The (variant, seed) a run trains: queued in its user attributes (retries copy them)."""
    return trial.user_attrs.get("variant"), trial.user_attrs.get("seed")


def check_same_settings(study: optuna.Study, ablation: Ablation, dataset: DatasetSpec) -> None:
    """Refuse to add runs of other settings (epochs, model, ...) to a study: they would be pooled.
    That includes a train.init checkpoint rebuilt under the same path since the runs."""
    checksums = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        variant, seed = run_pair(trial)
        record = TrialRecord.of(trial)
        if variant is None or record.config is None or (variant != BASELINE and variant not in ablation.variants):
            continue
        # Read back through RunConfig: a field added to the code since the run takes its default, the old behaviour.
        wanted = ablation.config(variant, seed, dataset)
        difference = config_difference(wanted, RunConfig.from_dict(record.config))
        if difference:
            field, stored_value, wanted_value = difference
            raise UserError(
                f"study {study.study_name} holds runs with {field} = {stored_value!r}, but this ablation asks for "
                f"{wanted_value!r} ({variant}, seed {seed}); rerun with the same settings, or pass --study NEW "
                "for a new study"
            )
        started_from = (record.environment or {}).get("init_sha256")
        init = wanted.train.init
        if started_from and Path(init).is_file():
            checksums.setdefault(init, file_sha256(Path(init)))
            if checksums[init] != started_from:
                raise UserError(
                    f"study {study.study_name} holds runs fine-tuned from {init} with sha256 {started_from[:12]}..., "
                    f"but that file has changed since (now {checksums[init][:12]}...); restore that checkpoint, "
                    f"or pass --study NEW for a new study"
                )


def enqueue_missing(study: optuna.Study, ablation: Ablation) -> None:
    """Queue every (variant, seed) pair that is neither finished nor queued nor running."""
    taken = {
        run_pair(t)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING))
    }
    for seed in ablation.seeds:  # seed by seed: an interrupted ablation leaves complete pairs to compare
        for variant in [BASELINE, *ablation.variants]:
            if (variant, seed) not in taken:
                study.enqueue_trial({}, user_attrs={"variant": variant, "seed": seed})


def _worker(job: tuple[AblationSettings, str, DatasetSpec], worker: int, device: str) -> None:
    settings, name, dataset = job
    ablation = settings.ablation
    graphs = load_dataset(dataset)
    study = optuna.load_study(study_name=name, storage=open_storage(settings.storage, settings.heartbeat))

    def objective(trial: optuna.Trial) -> float:
        variant, seed = run_pair(next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number))
        if variant is None:  # not from the queue: it ran dry under two workers at once
            trial.study.stop()
            raise SurplusTrial("surplus: the ablation's queue was empty when this worker asked")
        config = ablation.config(variant, seed, dataset).with_overrides(train={"device": device})
        return train_trial(trial, config, graphs, final=True, prune=False).best_valid

    def queue_empty(study: optuna.Study) -> bool:
        return not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))

    if not queue_empty(study):
        run_trials(study, objective, n_trials=None, timeout=None, total=None, stop=queue_empty)
