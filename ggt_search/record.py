"""What every trial and every study stores about its runs: one definition each, that search,
ablate, the dashboard and the report share.

Optuna keeps a trial's params (what was sampled or queued) and its value (the objective:
the best validation metric). Everything else is a `TrialRecord`, stored as the trial's
user attributes and written as the run goes, so a pruned, failed or killed trial keeps
what it had; `TrialRecord.of(trial)` reads it back.

Optuna keeps a study's name, direction and metric names; what the study is an experiment on
(its kind, dataset, budget, and the search's space or the ablation's variants) is a
`StudyRecord`, stored as the study's user attributes; `StudyRecord.of(study)` reads it back,
also from a study written before it existed. A study holds one experiment: `check_resumes`
refuses a run that would add trials of another one to it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

import optuna

from ggt_search.errors import UserError
from ggt_search.metrics import study_direction
from ggt_search.storage import hide_password

if TYPE_CHECKING:
    from ggt_search.config import DatasetSpec
    from ggt_search.graphset import GraphSet


@dataclass
class TrialRecord:
    config: dict | None = None  # the resolved RunConfig (to_dict) the run trained
    dataset: str | None = None  # its dataset's name and its training seed (also in config), for the dashboard
    seed: int | None = None
    parameters: int | None = None
    environment: dict | None = None  # provenance at run time: commit, code_sha256, package versions, device, threads
    curve: list[float] = field(default_factory=list)  # validation metric per epoch
    epochs: int = 0  # epochs trained (fewer than the budget when pruned)
    best_epoch: int | None = None
    seconds_per_epoch: float | None = None
    test: float | None = None  # final evaluations (ablations) only: scored once, with the best-validation weights
    trivial: dict[str, float] | None = None  # the metric of a constant prediction (the training mean), per split
    seconds: float | None = None  # wall time of the whole trial
    reason: str | None = None  # why it failed or was pruned
    traceback: str | None = None
    weights: str | None = None  # where the best weights went (search: an artifact of the study)
    predictions: str | None = None  # final evaluations: the artifact id of its valid and test predictions
    weights_bytes: int | None = None  # their size and sha256, written once the stored copy is checked
    weights_sha256: str | None = None
    seed_scores: dict[str, float] | None = None  # a trial over several seeds: each seed's best validation score

    def write(self, trial: optuna.Trial, **values) -> None:
        """Set fields on this record and on the trial, at once (a run killed later keeps them)."""
        for name, value in values.items():
            setattr(self, name, value)
            trial.set_user_attr(name, value)

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial) -> TrialRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in trial.user_attrs.items() if k in known})


@dataclass
class StudyRecord:
    kind: str | None = None  # search | ablation (None: a study ggt-search did not make)
    dataset: dict | None = None  # the DatasetSpec (to_dict) every run trains on
    summary: dict | None = None  # what that dataset holds (GraphSet.summary: name, graphs, tasks, split sizes, ...)
    checksum: str | None = None  # sha256 of the dataset's source file ("ogb-download": OGB's own download)
    metric: str | None = None  # the validation metric that is each trial's value
    direction: str | None = None  # maximize | minimize: the direction the study was created with
    epochs: int | None = None  # the epoch budget of a run (an ablation: the baseline's; a variant may change it)
    command: str | None = None  # the command line that last ran the study
    space: dict | None = None  # search: the search space
    sampler: str | None = None  # search
    pruner: str | None = None  # search
    seeds_per_trial: int | None = None  # search: a trial's value is its mean validation score over this many seeds
    base: dict | None = None  # search: the model and train fields its trials start from, outside the space
    confirmation: dict | None = None  # search: its confirmation study, top trials, fresh seeds and winner (`confirm`)
    group: str | None = None  # ablation: its name over the studies of all its datasets
    ablation: dict | None = None  # ablation: name, idea, question, baseline config, variants, seeds, effect

    @classmethod
    def new(cls, kind: str, spec: DatasetSpec, graphs: GraphSet, epochs: int, **kind_fields) -> StudyRecord:
        """The record of a study of `kind` on the dataset `spec` loads as `graphs`, run by this command line."""
        return cls(
            kind=kind,
            dataset=spec.to_dict(),
            summary=graphs.summary(),
            checksum=graphs.checksum,
            metric=graphs.metric,
            direction=study_direction(graphs.metric),
            epochs=epochs,
            command=" ".join(["ggt-search", *map(hide_password, sys.argv[1:])]),
            **kind_fields,
        )

    @property
    def objective(self) -> str:
        """The objective's name, as the dashboard shows it."""
        return f"valid {self.metric}"

    def write(self, study: optuna.Study) -> None:
        """Store the record on the study (replacing what an earlier run of it stored)."""
        study.set_metric_names([self.objective])
        for name, value in asdict(self).items():
            if value is not None:
                study.set_user_attr(name, value)

    def check_resumes(self, study: optuna.Study, defining: tuple[str, ...]) -> None:
        """Refuse to run this record's experiment in `study` when the study records another one
        in any of the `defining` fields: their trials would be pooled. A field the study has no
        value for (written before it was recorded) is not compared."""
        stored = StudyRecord.of(study)
        for name in defining:
            stored_value = getattr(stored, name)
            wanted = json.loads(json.dumps(getattr(self, name)))  # as the study stores it: tuples are lists
            if stored_value is not None and (difference := _difference(name, stored_value, wanted)):
                field, stored_value, wanted = difference
                kind = stored.kind or "study"
                raise UserError(
                    f"study {study.study_name} holds {'an' if kind[0] in 'aeiou' else 'a'} {kind} with {field} = "
                    f"{stored_value!r}, but this run asks for {wanted!r}; rerun with the same settings, or pass "
                    "--study NEW for a new study"
                )

    @classmethod
    def of(cls, study: optuna.Study | optuna.study.StudySummary) -> StudyRecord:
        known = {f.name for f in fields(cls)}
        record = cls(**{k: v for k, v in _upgraded(study.user_attrs).items() if k in known})
        if record.direction is None and len(study.directions) == 1:  # another tool's study may have several
            record.direction = study.directions[0].name.lower()
        return record


def _difference(field: str, stored, wanted) -> tuple[str, object, object] | None:
    """(the first field where two values differ, as 'space.model.layers', stored value, wanted value), or None."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        for key in sorted(set(stored) | set(wanted)):
            if difference := _difference(f"{field}.{key}", stored.get(key), wanted.get(key)):
                return difference
        return None
    return None if stored == wanted else (field, stored, wanted)


def _upgraded(attrs: dict) -> dict:
    """A study's user attributes in today's layout. Ablations written before StudyRecord (ggt-search
    3fb4b52 and earlier, e.g. reports/all/study.db) stored the dataset's summary, with the checksum
    in it, as 'dataset', and no metric or epochs; their spec and budget are the stored baseline's.
    Searches of that time stored today's 'dataset' (the spec), metric and epochs, and no summary or checksum."""
    if attrs.get("kind") != "ablation" or "summary" in attrs:
        return attrs
    summary = dict(attrs["dataset"])
    checksum = summary.pop("checksum", None)
    baseline = attrs["ablation"]["baseline"]
    return attrs | {
        "dataset": baseline["dataset"],
        "summary": summary,
        "checksum": checksum,
        "metric": summary["metric"],
        "epochs": baseline["train"]["epochs"],
    }
