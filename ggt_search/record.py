"""What every trial stores about its run: one definition that search, ablate and the report share.

Optuna keeps a trial's params (what was sampled or queued) and its value (the objective:
the best validation metric). Everything else is a `TrialRecord`, stored as the trial's
user attributes and written as the run goes, so a pruned, failed or killed trial keeps
what it had; `TrialRecord.of(trial)` reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import optuna


@dataclass
class TrialRecord:
    config: dict | None = None  # the resolved RunConfig (to_dict) the run trained
    parameters: int | None = None
    environment: dict | None = None  # provenance at run time: commit, package versions, device, threads
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

    def write(self, trial: optuna.Trial, **values) -> None:
        """Set fields on this record and on the trial, at once (a run killed later keeps them)."""
        for name, value in values.items():
            setattr(self, name, value)
            trial.set_user_attr(name, value)

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial) -> "TrialRecord":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in trial.user_attrs.items() if k in known})
