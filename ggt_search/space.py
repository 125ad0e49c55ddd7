"""Search spaces: a YAML file of config fields and their ranges, sampled define-by-run.

See `spaces/default.yaml` for the format. `suggest` turns one Optuna trial into a
RunConfig: every sampled value lands on the config field the key names.
"""

from __future__ import annotations

import math
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ggt_search.config import ModelConfig, RunConfig, TrainConfig, read_yaml_mapping
from ggt_search.errors import UserError

if TYPE_CHECKING:
    import optuna

SECTIONS = {"model": {f.name for f in fields(ModelConfig)}, "train": {f.name for f in fields(TrainConfig)}}
KINDS = ("choices", "int", "float")


def packaged_space(name: str) -> Path:
    return Path(str(resources.files("ggt_search") / "spaces" / f"{name}.yaml"))


def packaged_spaces() -> list[str]:
    """The names of the spaces that come with the package (`default`, `quick`)."""
    return sorted(path.name.removesuffix(".yaml") for path in packaged_space("default").parent.glob("*.yaml"))


def load_space(path: str | Path | None = None) -> dict:
    """A space file, or a packaged space by name (`packaged_spaces`), checked entry by entry."""
    path = Path(path or "default")
    if not path.exists() and packaged_space(str(path)).exists():
        path = packaged_space(str(path))
    if not path.exists():
        raise UserError(
            f"search space {path} not found: give a YAML file, or a packaged space ({', '.join(packaged_spaces())})"
        )
    space = read_yaml_mapping(path, "search space", "of <section>.<field> keys")
    if not space:
        raise UserError(f"search space {path} is empty; it must be a mapping of <section>.<field> keys")
    for position, (key, spec) in enumerate(space.items()):
        try:
            _check_entry(key, spec, dict(list(space.items())[:position]))
        except UserError as error:
            raise UserError(f"search space {path}: {error}") from None
    return space


def _is_number(value, kind: str) -> bool:
    """An int (kind "int") or a finite int or float (kind "float"); never a bool."""
    number = int if kind == "int" else int | float
    return isinstance(value, number) and not isinstance(value, bool) and math.isfinite(value)


def _check_entry(key, spec, earlier: dict) -> None:
    """One entry of a space: its key names a config field, its spec is a value or one well-formed range."""
    section, _, name = str(key).partition(".")
    if not isinstance(key, str) or section not in SECTIONS or name not in SECTIONS[section]:
        what = f"key {key!r} is not a string" if not isinstance(key, str) else f"unknown key {key!r}"
        raise UserError(f"{what}; use model.<field> or train.<field> of the run config")
    if not isinstance(spec, dict):
        return  # a fixed value: check_space runs it through the config's checks
    kinds = [k for k in KINDS if k in spec]
    if len(kinds) != 1:
        raise UserError(f"{key} needs exactly one of choices / int / float")
    unknown = set(spec) - {*KINDS, "log", "step", "when"}
    if unknown:
        raise UserError(f"{key} has unknown option(s) {sorted(unknown)}; options are log, step, when")
    kind, bounds = kinds[0], spec[kinds[0]]
    if kind == "choices":
        if not isinstance(bounds, list) or not bounds:
            raise UserError(f"{key}.choices must be a non-empty list")
        if {"log", "step"} & set(spec):
            raise UserError(f"{key}: log and step are options of int and float ranges, not of choices")
        if len({(type(v), v) for v in bounds}) != len(bounds):
            raise UserError(f"{key}.choices {bounds!r} lists a value twice")
    else:
        what = "integers" if kind == "int" else "finite numbers"
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(_is_number(v, kind) for v in bounds)):
            raise UserError(f"{key}.{kind} must be [low, high], {what}, got {bounds!r}")
        if bounds[0] > bounds[1]:
            raise UserError(f"{key}.{kind} must be [low, high] with low <= high, got {bounds!r}")
        log, step = spec.get("log", False), spec.get("step", 1)
        if not isinstance(log, bool):
            raise UserError(f"{key}.log must be true or false, got {log!r}")
        if not (_is_number(step, kind) and step > 0):
            raise UserError(f"{key}.step must be a positive {'integer' if kind == 'int' else 'number'}, got {step!r}")
        if "step" in spec and log:
            raise UserError(f"{key}: step and log do not go together (a log scale has no even steps); drop one")
        if log and bounds[0] <= 0:
            raise UserError(f"{key} is log-scaled, so its low bound must be > 0, got {bounds[0]}")
    _check_when(key, spec.get("when"), earlier)


def _check_when(key: str, when, earlier: dict) -> None:
    """`when: {earlier key: [values]}`: each value one the earlier key can take (so the condition can hold)."""
    if when is None:
        return
    if not isinstance(when, dict) or not when:
        raise UserError(f"{key}.when must be a mapping {{earlier key: [values]}}, got {when!r}")
    for condition, allowed in when.items():
        if condition not in earlier:
            raise UserError(f"{key}.when refers to {condition!r}, which is not an earlier key")
        if not isinstance(allowed, list) or not allowed:
            raise UserError(f"{key}.when.{condition} must be a list of values, e.g. [{allowed!r}], got {allowed!r}")
        source = earlier[condition]
        if isinstance(source, dict) and "float" in source:
            raise UserError(f"{key}.when.{condition}: {condition} is a float range; condition on a choice or int key")
        never = [v for v in allowed if not takes(source, v)]
        if never:
            raise UserError(f"{key}.when.{condition} lists {never!r}, which {condition} ({source!r}) never takes")


def takes(spec, value) -> bool:
    """Whether an entry (fixed value, choices or int range) can take `value`: equal, and of the same type."""
    if not isinstance(spec, dict):
        return type(value) is type(spec) and value == spec
    if "choices" in spec:
        return any(type(value) is type(c) and value == c for c in spec["choices"])
    low, high = spec["int"]
    step = 1 if spec.get("log") else spec.get("step", 1)
    return _is_number(value, "int") and low <= value <= high and (value - low) % step == 0


def check_space(space: dict, base: RunConfig, path) -> None:
    """Every value a trial could draw passes the config's own checks and trains on this machine (a
    device it has, a precision it runs): a bad value is an error now, before a study exists, not a
    failed trial later."""
    where = f"search space {path or 'default'}"
    from ggt_search.train import training_device  # here: torch waits until a space is checked, not for --help

    for key, spec in space.items():
        if not isinstance(spec, dict):
            candidates = [spec]
        elif "choices" in spec:
            candidates = spec["choices"]
        else:
            candidates = spec["int"] if "int" in spec else spec["float"]  # the config checks ranges: both ends decide
        section, _, name = key.partition(".")
        for value in candidates:
            try:
                training_device(base.with_overrides(**{section: {name: value}}).train)  # one this machine has
            except UserError as error:
                raise UserError(f"{where}: {key} value {value!r}: {error}") from None


def suggest(trial: optuna.Trial, space: dict, base: RunConfig) -> RunConfig:
    """Sample the space on this trial (define-by-run) and return the candidate's config."""
    chosen: dict[str, object] = {}
    for key, spec in space.items():
        if not isinstance(spec, dict):
            chosen[key] = spec
            continue
        if any(chosen.get(other) not in allowed for other, allowed in (spec.get("when") or {}).items()):
            continue
        if "choices" in spec:
            chosen[key] = trial.suggest_categorical(key, spec["choices"])
        elif "int" in spec:
            chosen[key] = trial.suggest_int(key, *spec["int"], step=spec.get("step", 1), log=spec.get("log", False))
        else:
            chosen[key] = trial.suggest_float(
                key, *map(float, spec["float"]), step=spec.get("step"), log=spec.get("log", False)
            )
    overrides = {"model": {}, "train": {}}
    for key, value in chosen.items():
        section, _, name = key.partition(".")
        overrides[section][name] = value
    return base.with_overrides(**overrides)


def grid(space: dict) -> dict[str, list]:
    """The grid of a categorical-only space, for Optuna's GridSampler."""
    searched = {k: v for k, v in space.items() if isinstance(v, dict)}
    continuous = [k for k, v in searched.items() if "choices" not in v]
    if continuous:
        raise UserError(
            f"--sampler grid needs categorical parameters only; {', '.join(continuous)} are ranges (use choices: [...])"
        )
    return {k: v["choices"] for k, v in searched.items()}
