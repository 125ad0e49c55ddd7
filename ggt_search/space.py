"""Search spaces: a YAML file of config fields and their ranges, sampled define-by-run.

See `spaces/default.yaml` for the format. `suggest` turns one Optuna trial into a
RunConfig: every sampled value lands on the config field the key names.
"""

from __future__ import annotations

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
    """A space file, or a packaged space by name (`packaged_spaces`)."""
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
    seen = []
    for key, spec in space.items():
        _check_entry(path, key, spec, seen)
        seen.append(key)
    return space


def _check_entry(path: Path, key: str, spec, earlier: list[str]) -> None:
    section, _, name = str(key).partition(".")
    if section not in SECTIONS or name not in SECTIONS[section]:
        raise UserError(
            f"search space {path}: unknown key {key!r}; use model.<field> or train.<field> of the run config"
        )
    if not isinstance(spec, dict):
        return  # a fixed value
    kinds = [k for k in KINDS if k in spec]
    if len(kinds) != 1:
        raise UserError(f"search space {path}: {key} needs exactly one of choices / int / float")
    unknown = set(spec) - {*KINDS, "log", "step", "when"}
    if unknown:
        raise UserError(f"search space {path}: {key} has unknown option(s) {sorted(unknown)}")
    bounds = spec[kinds[0]]
    if kinds[0] == "choices" and (not isinstance(bounds, list) or not bounds):
        raise UserError(f"search space {path}: {key}.choices must be a non-empty list")
    if kinds[0] in ("int", "float"):
        number = int if kinds[0] == "int" else (int, float)
        numbers = isinstance(bounds, list) and all(
            isinstance(v, number) and not isinstance(v, bool) for v in [*bounds, spec.get("step", 1)]
        )
        if not numbers or len(bounds) != 2 or bounds[0] > bounds[1]:
            what = "integers" if kinds[0] == "int" else "numbers"
            raise UserError(
                f"search space {path}: {key}.{kinds[0]} must be [low, high], {what} with low <= high, got {bounds!r}"
            )
        if spec.get("log") and bounds[0] <= 0:
            raise UserError(f"search space {path}: {key} is log-scaled, so its low bound must be > 0, got {bounds[0]}")
    for condition in spec.get("when") or {}:
        if condition not in earlier:
            raise UserError(f"search space {path}: {key}.when refers to {condition!r}, which is not an earlier key")


def check_space(space: dict, base: RunConfig, path) -> None:
    """Every value a trial could draw passes the config's own checks: a bad value is an error
    now, before a study exists, not a failed trial later."""
    where = f"search space {path or 'default'}"
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
                base.with_overrides(**{section: {name: value}})
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
            chosen[key] = trial.suggest_float(key, *map(float, spec["float"]), log=spec.get("log", False))
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
