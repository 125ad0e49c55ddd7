"""One run = dataset + model + training settings, as one YAML/JSON document.

    dataset: {name: ogbg-molbbbp, source: ../shared/data/moleculenet}
    model:   {conv: gated-gcn, layers: 5, hidden: 128, pe_dim: 10, ...}
    train:   {epochs: 50, batch_size: 256, lr: 0.001, seed: 0, ...}

Every key is checked: a typo is an error naming the key, never a silently ignored value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from ggt_search.datasets import EMBEDDED, DatasetSpec
from ggt_search.errors import UserError
from ggt_search.model import ModelConfig


@dataclass
class TrainConfig:
    """The reference's optimisation: Adam 1e-3, ReduceLROnPlateau(0.5, 5) on validation loss."""

    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_factor: float = 0.5
    lr_patience: int = 5
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast, CUDA only)
    eval_train: bool = False  # re-score the training set every epoch (costs a training epoch)
    cuda_graphs: bool = False  # replay each training step as a CUDA graph on padded fixed-shape batches

    def __post_init__(self):
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise UserError(f"train.precision = {self.precision!r} is not one of fp32, bf16, fp16")
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise UserError(f"train.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.cuda_graphs and self.precision == "fp16":
            raise UserError("train.cuda_graphs cannot go with fp16 (its loss scaler syncs with the host); use bf16")
        if not self.lr > 0:
            raise UserError(f"train.lr must be positive, got {self.lr!r}")


@dataclass
class RunConfig:
    dataset: DatasetSpec = field(default_factory=lambda: DatasetSpec(EMBEDDED))
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        unknown = set(values) - {"dataset", "model", "train"}
        if unknown:
            raise UserError(f"unknown config section(s) {sorted(unknown)}; sections are dataset, model, train")
        dataset = values.get("dataset", {"name": EMBEDDED})
        return cls(
            dataset=build(DatasetSpec, {"name": dataset} if isinstance(dataset, str) else dataset, "dataset"),
            model=build(ModelConfig, values.get("model") or {}, "model"),
            train=build(TrainConfig, values.get("train") or {}, "train"),
        )

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        return cls.from_dict(read_yaml_mapping(Path(path), "config", "with sections dataset, model, train"))

    def to_dict(self) -> dict:
        return {"dataset": self.dataset.to_dict(), "model": asdict(self.model), "train": asdict(self.train)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def with_overrides(self, dataset: dict | None = None, model: dict | None = None, train: dict | None = None) -> "RunConfig":
        merged = self.to_dict()
        for section, values in (("dataset", dataset), ("model", model), ("train", train)):
            merged[section].update(values or {})
        return RunConfig.from_dict(merged)


def read_yaml_mapping(path: Path, what: str, expected: str) -> dict:
    """The mapping a YAML file holds (an empty file is {}); any problem is one UserError line."""
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"{what} {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict | None):
        raise UserError(f"{what} {path} must be a mapping {expected}")
    return values or {}


def build(cls, values: dict, section: str):
    """cls(**values), with unknown keys and wrong types reported by name."""
    if not isinstance(values, dict):
        raise UserError(f"config section {section!r} must be a mapping, got {values!r}")
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise UserError(f"unknown {section} key(s) {sorted(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return cls(**values)
    except TypeError as error:
        raise UserError(f"bad {section} value: {error}") from None
