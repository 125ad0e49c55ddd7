"""Controlled ablations: a baseline config, named variants (config changes), several seeds,
on one dataset or several.

Every (variant, seed) pair is one trial of an Optuna study (one study per dataset), queued
with the pair in its user attributes, so the dashboard shows the ablation, several workers
can share it, a rerun only trains the pairs not finished yet, and variants or seeds can be
added to the file later. No pruning: every variant gets the same epoch budget. An ablation
compares fixed configs, so each run is a final evaluation: test is scored once, with the
best-validation weights, and stored beside the validation score; its validation and test
predictions go to the study's artifact store (`run_predictions` reads them back). A study
only ever holds runs of one set of settings: a rerun whose configs differ from the stored
runs' is refused, and so is adding runs to a study whose baseline ran on other code
(`train.code_sha256`, recorded with every run).

Two optional keys widen what a run is, each a field of its key (`RunKey`) and its user attributes:
- `split_seeds: [0, 1, 2]`: each seed runs on each of these balanced scaffold splits
  (`molecules.balanced_scaffold_split`), so the verdicts cover the split's variance too
  (Bouthillier et al. 2021); runs are paired by (split seed, seed). Without it every run
  trains on the dataset's own split (OGB's, for OGB names), as OGB-comparable numbers need.
- `tune: {lr: [0.001, 0.0003]}`: each variant, the baseline too, runs at each learning rate;
  a variant's learning rate is the one with the best mean validation score over all its runs
  there (seeds and splits; `chosen_learning_rates`), and the comparison uses its runs at that
  rate. Test never takes part in the choice.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from ggt_search.config import DEFAULT_STORAGE, DatasetSpec, RunConfig, config_difference, read_yaml_mapping
from ggt_search.datasets import load_dataset
from ggt_search.errors import UserError
from ggt_search.files import file_sha256
from ggt_search.final_evaluation import parse_seeds
from ggt_search.progress import duration
from ggt_search.record import StudyRecord, TrialRecord
from ggt_search.storage import artifact_dir, check_storage, create_or_load_study, load_existing_study, open_storage
from ggt_search.train import Predictions, Trainer, code_sha256, training_device
from ggt_search.trials import (
    SurplusTrial,
    fail_stale_trials,
    finished_count,
    load_predictions,
    run_trials,
    running_note,
    time_left,
    train_trial,
)
from ggt_search.workers import run_workers

BASELINE = "baseline"
# Packaged dataset suites (`ablate --suite NAME`): small scaffold-split sets a CPU can run, and the seed's GPU sets.
SUITES = {
    "cpu": ("ogbg-molbbbp", "ogbg-molclintox", "ogbg-moltox21", "ogbg-molesol", "ogbg-molfreesolv"),
    "gpu": ("ogbg-molhiv", "ogbg-molpcba"),
}
FILE_KEYS = {
    "idea",
    "question",
    "dataset",
    "datasets",
    "baseline",
    "variants",
    "seeds",
    "epochs",
    "effect",
    "split_seeds",
    "tune",
}
TUNABLE = {"lr"}  # what `tune:` may choose per variant
# Config fields that name files: a study compares what they hold (the dataset's checksum, a checkpoint's
# sha256), not how the path is written, which depends on where the command runs.
PATHS = frozenset({("dataset", "source"), ("train", "init")})


class RunKey(NamedTuple):
    """What one run of an ablation trains: a variant, a seed, and (where the file asks) a split seed and an lr."""

    variant: str | None
    seed: int | None
    split_seed: int | None = None  # None: the dataset's own split
    lr: float | None = None  # None: the variant's own learning rate (no `tune`)

    @property
    def attrs(self) -> dict:
        """Its user attributes as queued: split_seed and lr only where the ablation has them."""
        return {k: v for k, v in self._asdict().items() if v is not None or k in ("variant", "seed")}


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
    split_seeds: list[int] | None = None  # balanced scaffold splits each seed runs on (None: the dataset's own)
    lrs: list[float] | None = None  # `tune: {lr: [...]}`: the learning rates each variant is tuned over

    def config(
        self,
        variant: str,
        seed: int,
        dataset: DatasetSpec | None = None,
        split_seed: int | None = None,
        lr: float | None = None,
    ) -> RunConfig:
        overrides = self.variants.get(variant, {})
        config = self.base.with_overrides(model=overrides.get("model"), train=overrides.get("train"))
        dataset = dataset or config.dataset
        if split_seed is not None:
            dataset = replace(dataset, split="balanced-scaffold", split_seed=split_seed)
        config = replace(config, dataset=dataset)
        return config.with_overrides(train={"seed": seed} | ({"lr": lr} if lr is not None else {}))

    def runs(self) -> list[RunKey]:
        """Every run, seed by seed: an interrupted ablation leaves complete cells to compare."""
        return [
            RunKey(variant, seed, split_seed, lr)
            for seed in self.seeds
            for split_seed in self.split_seeds or [None]
            for variant in [BASELINE, *self.variants]
            for lr in self.lrs or [None]
        ]

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
    for key in ("idea", "question"):
        if not isinstance(values.get(key, ""), str):
            raise UserError(f"{path}: '{key}' must be a sentence (a string), got {values[key]!r}")
    if not isinstance(values["baseline"], dict):
        raise UserError(
            f"{path}: 'baseline' must be a mapping of model: and train: settings, got {values['baseline']!r}"
        )
    if not isinstance(values["variants"], dict):
        raise UserError(f"{path}: 'variants' must be a mapping of names to config changes, got {values['variants']!r}")
    if not datasets and not dataset:
        datasets = values.get("datasets") or [values.get("dataset") or "nci-tpsa"]
        if not isinstance(datasets, list):
            raise UserError(f"{path}: 'datasets' must be a list of dataset names or mappings")
        datasets = [_dataset_from_file(d, path.parent) for d in datasets]
    datasets = datasets or [dataset]
    base = _init_from_file(dict(values["baseline"]), path.parent)  # {} is the default model, said on purpose
    if "seed" in (base.get("train") or {}):
        raise UserError(f"{path}: baseline sets train.seed, but every run's seed comes from 'seeds'; drop it")
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
        if not isinstance(change, dict) or set(change) - {"model", "train"}:
            raise UserError(f"{path}: variant {name!r} may change only 'model' and 'train', got {change!r}")
        for section, settings in change.items():
            if not isinstance(settings, dict | None):
                raise UserError(f"{path}: variant {name!r}: {section} must be a mapping of fields, got {settings!r}")
        if "seed" in (change.get("train") or {}):
            raise UserError(
                f"{path}: variant {name!r} sets train.seed, but each run's seed comes from 'seeds'; drop it"
            )
        change = _init_from_file(change, path.parent)
        try:
            changed = base_config.with_overrides(model=change.get("model"), train=change.get("train"))
        except UserError as error:
            raise UserError(f"{path}: variant {name!r}: {error}") from None
        if changed == base_config:
            raise UserError(
                f"{path}: variant {name!r} trains the baseline's config (it changes nothing); "
                "change something or drop it"
            )
        variants[str(name)] = change
    effect = values.get("effect")
    if effect is not None and not (isinstance(effect, int | float) and not isinstance(effect, bool) and effect > 0):
        raise UserError(f"{path}: 'effect' must be a positive number (the difference worth detecting), got {effect!r}")
    split_seeds = values.get("split_seeds")
    if split_seeds is not None:
        split_seeds = file_seeds(path, "split_seeds", split_seeds)
    return Ablation(
        path.stem,
        values.get("idea", path.stem),
        values.get("question", ""),
        base_config,
        variants,
        parse_seeds(seeds) if seeds is not None else file_seeds(path, "seeds", values.get("seeds", "0-4")),
        [c.dataset for c in configs],
        effect,
        split_seeds,
        tuned_learning_rates(path, values.get("tune"), variants),
    )


def _from_file(value: str, folder: Path) -> str:
    """A relative path written in an ablation file means a path beside the file, wherever the command runs;
    it is kept relative (to the working directory), so a study records `../shared/...` from the repository
    root as before, and a checkout elsewhere compares the same."""
    return value if Path(value).is_absolute() else os.path.relpath(folder / value)


def _dataset_from_file(dataset, folder: Path):
    """A dataset entry of an ablation file with its paths (a MoleculeNet `source`; a `name` that is a CSV
    beside the file) read against the file's folder."""
    if isinstance(dataset, str):
        return _from_file(dataset, folder) if (folder / dataset).is_file() else dataset
    if not isinstance(dataset, dict):
        return dataset  # RunConfig names what is wrong with it
    dataset = dict(dataset)
    if isinstance(dataset.get("source"), str):
        dataset["source"] = _from_file(dataset["source"], folder)
    if isinstance(dataset.get("name"), str) and (folder / dataset["name"]).is_file():
        dataset["name"] = _from_file(dataset["name"], folder)
    return dataset


def _init_from_file(change: dict, folder: Path) -> dict:
    """A baseline's or variant's `train.init` checkpoint read against the ablation file's folder."""
    train = change.get("train")
    if isinstance(train, dict) and isinstance(train.get("init"), str):
        change = change | {"train": train | {"init": _from_file(train["init"], folder)}}
    return change


def file_seeds(path: Path, key: str, value) -> list[int]:
    """A file's seed list: `0-4`, `0,2`, a single seed, or a YAML list of seeds."""
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        value = ",".join(map(str, value))
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise UserError(f"{path}: '{key}' must be a seed list such as 0-4, 0,2 or [0, 2], got {value!r}")
    try:
        return parse_seeds(str(value))
    except UserError as error:
        raise UserError(f"{path}: '{key}': {error}") from None


def tuned_learning_rates(path: Path, tune, variants: dict[str, dict]) -> list[float] | None:
    """The learning rates `tune: {lr: [...]}` asks for (None without `tune`), checked."""
    if tune is None:
        return None
    if not isinstance(tune, dict) or set(tune) - TUNABLE or "lr" not in tune:
        raise UserError(f"{path}: 'tune' must be a mapping {{lr: [a list of learning rates]}}, got {tune!r}")
    lrs = tune["lr"]
    number = (int, float)
    if (
        not isinstance(lrs, list)
        or not lrs
        or not all(isinstance(v, number) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in lrs)
        or len(set(lrs)) != len(lrs)
    ):
        raise UserError(f"{path}: tune.lr must be a list of distinct positive learning rates, got {lrs!r}")
    fixed = [name for name, change in variants.items() if "lr" in (change.get("train") or {})]
    if fixed:
        raise UserError(
            f"{path}: variant(s) {fixed} set train.lr, but 'tune' chooses every variant's learning rate; "
            "drop one of the two"
        )
    return [float(v) for v in lrs]


@dataclass
class AblationSettings:
    ablation: Ablation
    study: str
    storage: str = DEFAULT_STORAGE
    workers: int = 1
    heartbeat: int = 30  # seconds; a run silent for 4x this (its worker was killed) is rerun
    artifacts: str | None = None  # the artifact store's folder (runs' predictions): default beside a SQLite file


def run_ablation(settings: AblationSettings) -> list[optuna.Study]:
    """Run (or resume) the ablation on each of its datasets, one study each; returns the studies.
    Every dataset is built (or read from the cache) first: a bad one is refused before any training."""
    check_storage(settings.storage)
    ablation = settings.ablation
    for variant in [BASELINE, *ablation.variants]:
        training_device(ablation.config(variant, ablation.seeds[0]).train)  # a device this machine has
    names = [load_dataset(dataset).name for dataset in ablation.datasets]
    return [run_on_dataset(settings, dataset, names) for dataset in ablation.datasets]


def run_on_dataset(settings: AblationSettings, dataset: DatasetSpec, names: list[str]) -> optuna.Study:
    """One dataset's study of the ablation; `names` are all its datasets' (a report of an unfinished
    ablation names those not yet started)."""
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
        "datasets": names,
    }
    if ablation.split_seeds is not None:
        defined["split_seeds"] = ablation.split_seeds
    if ablation.lrs is not None:
        defined["tune"] = {"lr": ablation.lrs}
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
    record.check_resumes(study, ("checksum",))
    check_same_settings(study, ablation, dataset)
    fail_stale_trials(study)  # a restarted ablation reruns the runs of killed workers
    if missing_runs(study, ablation) or study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        check_same_code(study, graphs)
    record.write(study)
    enqueue_missing(study, ablation)
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    splits = f" x {len(ablation.split_seeds)} splits" if ablation.split_seeds else ""
    rates = f" x {len(ablation.lrs)} learning rates" if ablation.lrs else ""
    print(
        f"ablation {ablation.name} on {graphs.name} (study {name}): {len(ablation.variants) + 1} variants x "
        f"{len(ablation.seeds)} seeds{splits}{rates}; {waiting} runs to do"
    )
    if not waiting and (note := running_note(study, storage, settings.heartbeat)):
        print(note)
    if waiting:
        run_workers(_worker, (settings, name, dataset), settings.workers, ablation.base.train.device)
    return optuna.load_study(study_name=name, storage=storage)


def run_pair(trial: optuna.trial.FrozenTrial) -> tuple:
    """The (variant, seed) a run trains: queued in its user attributes (retries copy them)."""
    return trial.user_attrs.get("variant"), trial.user_attrs.get("seed")


def run_key(trial: optuna.trial.FrozenTrial) -> RunKey:
    """Everything a run trains, as queued in its user attributes."""
    return RunKey(*run_pair(trial), trial.user_attrs.get("split_seed"), trial.user_attrs.get("lr"))


def check_same_settings(study: optuna.Study, ablation: Ablation, dataset: DatasetSpec) -> None:
    """Refuse to add runs of other settings (epochs, model, ...) to a study: they would be pooled.
    That includes a train.init checkpoint rebuilt under the same path since the runs."""
    checksums = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        key = run_key(trial)
        variant, seed = key.variant, key.seed
        record = TrialRecord.of(trial)
        if variant is None or record.config is None or (variant != BASELINE and variant not in ablation.variants):
            continue
        for option, stored, asked in (
            ("split_seeds", key.split_seed, ablation.split_seeds),
            ("tune", key.lr, ablation.lrs),
        ):
            if (stored is None) != (asked is None):
                has = "with" if stored is not None else "without"
                raise UserError(
                    f"study {study.study_name} holds runs {has} '{option}', but this ablation "
                    f"{'has' if asked is not None else 'has no'} '{option}'; rerun with the same settings, or pass "
                    "--study NEW for a new study"
                )
        # Read back through RunConfig: a field added to the code since the run takes its default, the old behaviour.
        wanted = ablation.config(variant, seed, dataset, key.split_seed, key.lr)
        difference = config_difference(wanted, RunConfig.from_dict(record.config), ignore=PATHS)
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


PREFIX_EPOCHS = 2  # of one run per variant, trained again when the code has changed (`check_same_code`)


def check_same_code(study: optuna.Study, graphs) -> None:
    """Refuse to add runs to a study whose runs were made by code that trains other numbers: a new run
    would be compared with runs another implementation trained.

    Code that changed (a new `code_sha256`) is not refused outright: one baseline run made by the old
    code is trained again in full, and one run of every other variant for its first PREFIX_EPOCHS
    epochs (a change can touch one variant's path only: dropping the PEs also dropped their MLP), each
    on its recorded device and thread count. When every epoch's validation score (and the baseline's
    test score) comes out the same, to the bit, the two codes are recorded on the study as training the
    same numbers (`SAME_NUMBERS`) and the study goes on. So a long study survives a refactor, a new
    option or a new check, and stops at a change of its numbers. Runs from before the code was recorded
    cannot be checked; the report flags them."""
    current = code_sha256()
    made_by: dict[str, dict[str, optuna.trial.FrozenTrial]] = {}  # old code (one per group) -> variant -> a run
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        code = (TrialRecord.of(trial).environment or {}).get("code_sha256")
        if run_pair(trial)[0] is not None and code is not None and same_code(study, code) != same_code(study, current):
            made_by.setdefault(same_code(study, code), {}).setdefault(run_pair(trial)[0], trial)
    for code, runs in made_by.items():
        others = [v for v in runs if v != BASELINE]
        checks = [f"baseline seed {run_key(runs[BASELINE]).seed}"] if BASELINE in runs else []
        if others:
            checks.append(f"the first {PREFIX_EPOCHS} epochs of one run of each of {len(others)} variants")
        print(
            f"study {study.study_name}: code changed since its runs (sha256 {code[:12]}... -> {current[:12]}...); "
            f"training {' and '.join(checks)} again to check it gives the same numbers"
        )
        for variant, trial in runs.items():
            epochs = None if variant == BASELINE else PREFIX_EPOCHS
            if difference := reproduction_difference(trial, graphs, epochs):
                raise UserError(
                    f"study {study.study_name}'s {variant} runs were made by code sha256 {code[:12]}..., and this "
                    f"code ({current[:12]}...) trains other numbers ({difference}); run that code to add runs, or "
                    "pass --study NEW for a new study"
                )
        study.set_user_attr(SAME_NUMBERS, [*study.user_attrs.get(SAME_NUMBERS, []), [code, current]])


SAME_NUMBERS = "same_numbers"  # study attribute: pairs of code hashes shown to train identical runs


def same_code(study: optuna.Study | optuna.study.StudySummary, code: str) -> str:
    """The code hash that stands for `code` in this study: the smallest of the hashes shown (by
    `check_same_code`'s reproductions) to train the same numbers as it."""
    pairs = study.user_attrs.get(SAME_NUMBERS, [])
    group, grown = {code}, True
    while grown:
        linked = {h for pair in pairs if group & set(pair) for h in pair}
        grown, group = not linked <= group, group | linked
    return min(group)


def reproduction_difference(trial: optuna.trial.FrozenTrial, graphs, epochs: int | None = None) -> str | None:
    """Train a finished run's recorded config again (its first `epochs` epochs only, when given), on its
    recorded device and thread count; where its numbers differ from the recorded ones, say where (None:
    identical to the bit)."""
    record = TrialRecord.of(trial)
    ran_on = record.environment or {}
    config = RunConfig.from_dict(record.config)
    if epochs is not None:
        config = config.with_overrides(train={"epochs": min(epochs, len(record.curve))})
    trainer = Trainer(config, graphs)
    if ran_on.get("device") != str(trainer.device):
        return f"it ran on {ran_on.get('device')}, this machine trains on {trainer.device}"
    threads = torch.get_num_threads()
    torch.set_num_threads(ran_on.get("threads", threads))
    try:
        result = trainer.fit()
    finally:
        torch.set_num_threads(threads)
    curve = [r.valid_metric for r in result.history]
    for epoch, (then, now) in enumerate(zip(record.curve, curve, strict=False), start=1):
        if then != now:
            return f"epoch {epoch}: valid {then!r} then, {now!r} now"
    if epochs is not None:
        return None  # a prefix: no test score to compare
    if len(curve) != len(record.curve):
        return f"{len(record.curve)} epochs then, {len(curve)} now"
    if result.test != record.test:
        return f"test {record.test!r} then, {result.test!r} now"
    return None


def missing_runs(study: optuna.Study, ablation: Ablation) -> list[RunKey]:
    """The ablation's runs that are neither finished nor queued nor running, in `Ablation.runs` order."""
    taken = {
        run_key(t)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING))
    }
    return [key for key in ablation.runs() if key not in taken]


def finished_runs(settings: AblationSettings, dataset: DatasetSpec, storage: RDBStorage) -> int:
    """How many of the ablation's runs on `dataset` have finished (0 before its study exists)."""
    ablation = settings.ablation
    try:
        study = optuna.load_study(study_name=ablation.study_name(settings.study, dataset), storage=storage)
    except KeyError:
        return 0
    planned = set(ablation.runs())
    return len({run_key(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))} & planned)


def enqueue_missing(study: optuna.Study, ablation: Ablation) -> None:
    """Queue every run that is neither finished nor queued nor running."""
    for key in missing_runs(study, ablation):
        study.enqueue_trial({}, user_attrs=key.attrs)


def chosen_learning_rates(study: optuna.Study) -> dict[str, float]:
    """Per variant of a tuned ablation (`tune: {lr: [...]}`), the learning rate whose finished runs have
    the best mean validation score (over seeds and splits); ties go to the rate listed first. {} untuned."""
    record = StudyRecord.of(study)
    listed = ((record.ablation or {}).get("tune") or {}).get("lr") or []
    scores: dict[str, dict[float, list[float]]] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        key = run_key(trial)
        if key.lr is not None:
            scores.setdefault(key.variant, {}).setdefault(key.lr, []).append(trial.value)
    sign = -1 if record.direction == "maximize" else 1  # min() then takes the best mean

    def best(by_lr: dict[float, list[float]]) -> float:
        return min(by_lr, key=lambda lr: (sign * float(np.mean(by_lr[lr])), listed.index(lr) if lr in listed else 0))

    return {variant: best(by_lr) for variant, by_lr in scores.items()}


def run_predictions(
    storage: str,
    study: str,
    variant: str,
    seed: int,
    split_seed: int | None = None,
    lr: float | None = None,
    artifacts: str | None = None,
) -> dict[str, Predictions]:
    """A finished run's validation and test predictions ({split: Predictions}), read back from the study's
    artifact store: the run of `variant` and `seed` (and `split_seed`) in the study of one dataset (an
    ablation on several datasets has one study per dataset, `{group}--{dataset}`). A tuned ablation's run
    at `lr`, by default at the variant's chosen learning rate."""
    found = load_existing_study(study, storage)
    if lr is None:
        lr = chosen_learning_rates(found).get(variant)
    key = RunKey(variant, seed, split_seed, lr)
    for trial in found.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if run_key(trial) == key:
            stored = TrialRecord.of(trial).predictions
            if stored is None:
                raise UserError(f"run {key} of study {study} stored no predictions (it ran before they were stored)")
            return load_predictions(FileSystemArtifactStore(str(artifact_dir(storage, artifacts))), stored)
    raise UserError(f"study {study} has no finished run {key}; its runs: ggt-search report {study}")


def _worker(job: tuple[AblationSettings, str, DatasetSpec], worker: int, device: str) -> None:
    settings, name, dataset = job
    ablation = settings.ablation
    graphs = load_dataset(dataset)
    study = optuna.load_study(study_name=name, storage=open_storage(settings.storage, settings.heartbeat))
    store_dir = artifact_dir(settings.storage, settings.artifacts)
    store_dir.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(str(store_dir))
    splits = {}  # split seed -> the dataset on that split (the graphs are shared)

    def objective(trial: optuna.Trial) -> float:
        key = run_key(next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number))
        if key.variant is None:  # not from the queue: it ran dry under two workers at once
            trial.study.stop()
            raise SurplusTrial("surplus: the ablation's queue was empty when this worker asked")
        config = ablation.config(key.variant, key.seed, dataset, key.split_seed, key.lr)
        config = config.with_overrides(train={"device": device})
        on_split = graphs
        if key.split_seed is not None:
            on_split = splits.setdefault(key.split_seed, load_dataset(config.dataset))
        name = f"{key.variant} seed {key.seed}"
        return train_trial(trial, config, on_split, final=True, prune=False, store=store, name=name).best_valid

    def queue_empty(study: optuna.Study) -> bool:
        return not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))

    if not queue_empty(study):
        line = GridLine(settings, dataset, graphs.name, graphs.metric)
        run_trials(study, objective, n_trials=None, timeout=None, line=line, stop=queue_empty)


class GridLine:
    """An ablation's line per finished run: which run (dataset, variant, seed, and split seed and lr
    where the file has them), its scores, how many runs of the whole (dataset, variant, seed) grid
    are done, and the time left. The other datasets' runs count as their studies have them: those before
    this one finished, and those after may have finished in an earlier invocation (a resume that grew the
    grid by a variant runs every dataset again)."""

    def __init__(self, settings: AblationSettings, dataset: DatasetSpec, name: str, metric: str):
        ablation = settings.ablation
        self.runs, self.name, self.metric, self.workers = len(ablation.runs()), name, metric, settings.workers
        storage = open_storage(settings.storage)  # read once per worker; not this study's heartbeat
        self.elsewhere = sum(finished_runs(settings, d, storage) for d in ablation.datasets if d != dataset)
        self.total = len(ablation.datasets) * self.runs

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        key, record = run_key(trial), TrialRecord.of(trial)
        where = "".join(
            f" {label} {value:g}" for label, value in (("split", key.split_seed), ("lr", key.lr)) if value is not None
        )
        if trial.state == TrialState.COMPLETE:
            test = f", test {record.test:.4f}" if record.test is not None else ""
            outcome = f"valid {self.metric} {trial.value:.4f}{test}"
        else:
            outcome = f"{trial.state.name.lower()} ({record.reason})" if record.reason else trial.state.name.lower()
        done = self.elsewhere + min(finished_count(study, trial), self.runs)
        seconds = f" in {duration(record.seconds)}" if record.seconds else ""
        print(
            f"[{done}/{self.total}] {self.name} {key.variant} seed {key.seed}{where}: {outcome}{seconds}"
            f"{time_left(study, self.total - done, self.workers)}",
            flush=True,
        )


def ablation_from_study(study_name: str, storage: str, reference: RunConfig, seeds: str = "0-4") -> dict:
    """The path from `reference` (the default config, or another the user names) to a search's answer,
    as an ablation file's contents: the baseline is the search's confirmed winner (else its best
    trial); each variant puts back one searched field (a key of the search's space) where the
    winner differs from `reference`. A variant the config checks refuse on its own (a field that
    only makes sense with another) is left out, and said. Answers "which of the search's choices matter?"."""
    from ggt_search.study import chosen_trial

    study = load_existing_study(study_name, storage)
    trial, how = chosen_trial(study)
    record = StudyRecord.of(study)
    winner = RunConfig.from_dict(TrialRecord.of(trial).config)
    won, put_back = winner.to_dict(), reference.to_dict()
    dataset = dict(won["dataset"])
    if dataset.get("source"):  # as the search resolved it: the same files wherever the ablation file goes
        dataset["source"] = str(Path(dataset["source"]).resolve())
    if Path(dataset["name"]).suffix:  # a CSV path, likewise
        dataset["name"] = str(Path(dataset["name"]).resolve())
    variants, refused = {}, []
    for key in record.space or {}:
        section, _, name = key.partition(".")
        if won[section][name] == put_back[section][name]:
            continue
        change = {section: {name: put_back[section][name]}}
        try:
            winner.with_overrides(**change)
        except UserError as error:
            refused.append(f"{key} = {put_back[section][name]!r} ({error})")
            continue
        variants[f"{key}={put_back[section][name]}"] = change
    if not variants:
        raise UserError(
            f"study {study_name}'s answer, trial {trial.number}, differs from the reference config in no searched "
            "field it can put back; nothing to ablate (pass another --reference)"
        )
    for line in refused:
        print(f"left out: {line}")
    baseline = {
        section: {k: v for k, v in won[section].items() if k not in ("seed", "device")}
        for section in ("model", "train")
    }
    return {
        "idea": f"the choices of search {study_name}",
        "question": f"Which of search {study_name}'s choices matter? Baseline: {how}; each variant puts back one "
        "searched field that it changed from the reference config.",
        "dataset": dataset,
        "baseline": baseline,
        "variants": variants,
        "seeds": seeds,
    }
