"""Controlled ablations: a baseline config, named variants (config changes), several seeds.

Every (variant, seed) pair is one trial of an Optuna study, enqueued with fixed params, so
the dashboard shows the ablation, several workers can share it, and a rerun only trains
the pairs not finished yet. No pruning: every variant gets the same epoch budget. An
ablation compares fixed configs, so each run is a final evaluation: test is scored once,
with the best-validation weights, and stored beside the validation score.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ggt_search.config import DEFAULT_STORAGE, RunConfig, read_yaml_mapping
from ggt_search.datasets import load_dataset
from ggt_search.errors import UserError
from ggt_search.final_evaluation import parse_seeds
from ggt_search.metrics import HIGHER_IS_BETTER
from ggt_search.runner import SurplusTrial, open_storage, run_trials, run_workers, running_note, train_trial

BASELINE = "baseline"
FILE_KEYS = {"idea", "question", "dataset", "baseline", "variants", "seeds", "epochs"}


@dataclass
class Ablation:
    name: str
    idea: str
    question: str
    base: RunConfig
    variants: dict[str, dict] = field(default_factory=dict)  # name -> {model: {...}, train: {...}}
    seeds: list[int] = field(default_factory=lambda: list(range(5)))

    def config(self, variant: str, seed: int) -> RunConfig:
        overrides = self.variants.get(variant, {})
        config = self.base.with_overrides(model=overrides.get("model"), train=overrides.get("train"))
        return config.with_overrides(train={"seed": seed})


def load_ablation(path: str | Path, dataset: dict | None = None, seeds: str | None = None, epochs: int | None = None) -> Ablation:
    path = Path(path)
    values = read_yaml_mapping(path, "ablation", "with at least 'baseline' and 'variants'")
    unknown = set(values) - FILE_KEYS
    if unknown:
        raise UserError(f"{path}: unknown key(s) {sorted(unknown)}; known: {', '.join(sorted(FILE_KEYS))}")
    if values.get("baseline") is None:
        raise UserError(f"ablation {path} has no 'baseline'; give the config every variant is compared with (model: and train: settings)")
    if not values.get("variants"):
        raise UserError(f"ablation {path} has no 'variants'; name at least one config change to compare with the baseline")
    base = dict(values["baseline"])  # {} is the default model, said on purpose
    base["dataset"] = dataset or values.get("dataset") or base.get("dataset") or "nci-tpsa"
    epochs = epochs if epochs is not None else values.get("epochs")
    if epochs is not None:
        base["train"] = {**(base.get("train") or {}), "epochs": epochs}
    try:
        base_config = RunConfig.from_dict(base)
    except UserError as error:
        raise UserError(f"{path}: baseline: {error}") from None
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
    return Ablation(path.stem, values.get("idea", path.stem), values.get("question", ""), base_config, variants,
                    parse_seeds(str(seeds or values.get("seeds", "0-4"))))


@dataclass
class AblationSettings:
    ablation: Ablation
    study: str
    storage: str = DEFAULT_STORAGE
    workers: int = 1
    heartbeat: int = 30  # seconds; a run silent for 4x this (its worker was killed) is rerun


def run_ablation(settings: AblationSettings) -> optuna.Study:
    ablation = settings.ablation
    graphs = load_dataset(ablation.base.dataset)
    if ablation.base.model.pe_dim or any((v.get("model") or {}).get("pe_dim") for v in ablation.variants.values()):
        graphs.load_pe(0)
    storage = open_storage(settings.storage, settings.heartbeat)
    study = optuna.create_study(study_name=settings.study, storage=storage, load_if_exists=True,
                                direction="maximize" if HIGHER_IS_BETTER[graphs.metric] else "minimize",
                                sampler=optuna.samplers.RandomSampler(), pruner=optuna.pruners.NopPruner())
    study.set_user_attr("kind", "ablation")
    study.set_user_attr("ablation", {"name": ablation.name, "idea": ablation.idea, "question": ablation.question,
                                     "baseline": ablation.base.to_dict(), "variants": ablation.variants, "seeds": ablation.seeds})
    study.set_user_attr("dataset", graphs.summary() | {"checksum": graphs.checksum})
    study.set_user_attr("command", " ".join(["ggt-search", *sys.argv[1:]]))
    # A run whose worker was killed stops sending heartbeats: fail it (and queue its retry)
    # before counting, so a restarted ablation reruns it instead of waiting for it forever.
    optuna.storages.fail_stale_trials(study)
    enqueue_missing(study, ablation)
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    print(f"ablation {ablation.name}: {len(ablation.variants) + 1} variants x {len(ablation.seeds)} seeds; {waiting} runs to do")
    if not waiting and (note := running_note(study, storage, settings.heartbeat)):
        print(note)
    if waiting:
        run_workers(_worker, settings, settings.workers, ablation.base.train.device)
    return optuna.load_study(study_name=settings.study, storage=open_storage(settings.storage))


def enqueue_missing(study: optuna.Study, ablation: Ablation) -> None:
    """Queue every (variant, seed) pair that is neither finished nor queued nor running."""
    def pair(trial) -> tuple:  # a queued trial holds its pair in fixed_params; a retried one in params too
        params = trial.params or trial.system_attrs.get("fixed_params", {})
        return params.get("variant"), params.get("seed")

    taken = {pair(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING))}
    for variant in [BASELINE, *ablation.variants]:
        for seed in ablation.seeds:
            if (variant, seed) not in taken:
                study.enqueue_trial({"variant": variant, "seed": seed})


def _worker(settings: AblationSettings, worker: int, device: str) -> None:
    ablation = settings.ablation
    graphs = load_dataset(ablation.base.dataset)
    study = optuna.load_study(study_name=settings.study, storage=open_storage(settings.storage, settings.heartbeat))
    variants = [BASELINE, *ablation.variants]

    def objective(trial: optuna.Trial) -> float:
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        if "fixed_params" not in frozen.system_attrs:  # not from the queue: it ran dry under two workers at once
            trial.study.stop()
            raise SurplusTrial("surplus: the ablation's queue was empty when this worker asked")
        variant = trial.suggest_categorical("variant", variants)
        seed = trial.suggest_int("seed", min(ablation.seeds), max(ablation.seeds))
        config = ablation.config(variant, seed).with_overrides(train={"device": device})
        return train_trial(trial, config, graphs, final=True, prune=False).best_valid

    def queue_empty(study: optuna.Study) -> bool:
        return not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))

    if not queue_empty(study):
        run_trials(study, objective, n_trials=None, timeout=None, total=None, stop=queue_empty)
