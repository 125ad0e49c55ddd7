"""One run = dataset + model + training settings, as one YAML/JSON document.

    dataset: {name: ogbg-molbbbp, source: ../shared/data/moleculenet}
    model:   {conv: gated-gcn, layers: 5, hidden: 128, pe_dim: 10, ...}
    train:   {epochs: 50, batch_size: 256, lr: 0.001, seed: 0, ...}

Every key and every value is checked when a config is made: a typo, a value of the wrong
type (`residual: "no"`, `layers: true`) or out of range (`lr: inf`) is one error naming
the field, never a silently ignored or misread value.

This module imports neither torch nor pandas, so `--help` and argument errors answer at once.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import yaml

from ggt_search.errors import UserError
from ggt_search.files import write_text

EMBEDDED = "nci-tpsa"  # the dataset shipped inside RDKit's wheel: no network, no files
DEFAULT_STORAGE = "sqlite:///ggt-search.db"

CYCLE_LENGTHS = tuple(range(3, 9))  # model.substructures counts the cycles of 3..8 atoms through each atom and bond

# The options of each choice field, in one place: the field's type. The CLI's choices, the
# config checks (and so the search-space checks) and the model's registries all read these.
Convolution = Literal["gated-gcn", "gcn", "mlp"]
Normalisation = Literal["batch", "layer", "graph", "none"]
NormPosition = Literal["pre", "post"]
SignFlip = Literal["off", "batch", "graph"]
PEInjection = Literal["concat-mlp", "add"]
PEValues = Literal["laplacian", "zeros", "random"]
Aggregation = Literal["gated", "pna", "softmax", "powermean"]
GlobalAttention = Literal["none", "lrga", "transformer"]
Pooling = Literal["mean", "sum", "max"]
Precision = Literal["fp32", "bf16", "fp16"]
TaskType = Literal["classification", "regression"]
Split = Literal["scaffold", "random", "balanced-scaffold"]
InvalidSmiles = Literal["fail", "skip"]


def choices(cls) -> dict[str, tuple]:
    """The options of each choice field of a config class: {field: (option, ...)} (a null default aside)."""
    hints = typing.get_type_hints(cls)
    return {f.name: _options(hints[f.name]) for f in fields(cls) if _options(hints[f.name])}


def _options(hint) -> tuple:
    """A Literal's values (also inside `Literal[...] | None`); () for any other type."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(o for option in typing.get_args(hint) for o in _options(option))
    return ()


def check_fields(config, section: str) -> None:
    """Each field's value has its annotated type (bool is not an int, floats are finite) or, for
    a choice field, is one of its options."""
    hints = typing.get_type_hints(type(config))
    for f in fields(config):
        value, hint = getattr(config, f.name), hints[f.name]
        if _options(hint) and not _has_type(value, hint):
            nullable = " or null" if type(None) in typing.get_args(hint) else ""
            raise UserError(f"{section}.{f.name} = {value!r} is not one of {', '.join(_options(hint))}{nullable}")
        if not _has_type(value, hint):
            raise UserError(f"{section}.{f.name} must be {_describe(hint)}, got {value!r}")


def _has_type(value, hint) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is Literal:
        return value in typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_has_type(value, option) for option in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return isinstance(value, list | tuple) and all(_has_type(v, typing.get_args(hint)[0]) for v in value)
    raise TypeError(f"no check for config type {hint}")


def _describe(hint) -> str:
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", type(None): "null"}
    if hint in names:
        return names[hint]
    if typing.get_origin(hint) is tuple:
        return f"a list of {_describe(typing.get_args(hint)[0]).removeprefix('a ')}s"
    return " or ".join(_describe(option) for option in typing.get_args(hint))


def check_at_least(config, section: str, bounds: dict[str, int | float]) -> None:
    for name, low in bounds.items():
        if getattr(config, name) < low:
            raise UserError(f"{section}.{name} must be >= {low}, got {getattr(config, name)!r}")


@dataclass(frozen=True)
class DatasetSpec:
    """Everything that decides a dataset's content; its hash names the cache entry."""

    name: str  # an OGB name, "nci-tpsa", or a path to the user's CSV
    source: str | None = None  # MoleculeNet table (file or folder) for an offline OGB build
    smiles_column: str | None = None
    target_columns: tuple[str, ...] | None = None
    task_type: TaskType | None = None  # inferred when None
    # scaffold: OGB's deterministic split (an OGB name keeps OGB's own); random: own CSV only;
    # balanced-scaffold: chemprop's seeded scaffold split, for any dataset (`datasets.load_dataset`)
    split: Split = "scaffold"
    split_seed: int = 0  # of the random and balanced-scaffold splits
    invalid_smiles: InvalidSmiles = "fail"

    def __post_init__(self):
        check_fields(self, "dataset")
        check_at_least(self, "dataset", {"split_seed": 0})
        if self.target_columns is not None:  # YAML gives a list; a tuple keeps the spec hashable
            object.__setattr__(self, "target_columns", tuple(self.target_columns))
            repeated = sorted({c for c in self.target_columns if self.target_columns.count(c) > 1})
            if not self.target_columns or repeated:
                problem = f"names {repeated} twice" if repeated else "is empty"
                raise UserError(f"dataset.target_columns {problem}; name each target column once (or leave it out)")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v is not None}


@dataclass
class ModelConfig:
    """The architecture; `model.py`'s docstring maps each documented idea to its field(s)."""

    conv: Convolution = "gated-gcn"  # message passing: edge-gated GatedGCN, isotropic mean (gcn), or none (mlp)
    norm: Normalisation = "batch"  # normalisation of each sub-layer: BatchNorm, LayerNorm, GraphNorm or none
    norm_position: NormPosition = "pre"  # normalise before each sub-layer (pre-norm) or after its residual sum
    residual: bool = True  # residual connections around every sub-layer
    ffn: bool = True  # a feed-forward sub-layer after message passing in every block
    ffn_ratio: int = 4  # the feed-forward sub-layer's width, in multiples of hidden
    pe_dim: int = 10  # Laplacian eigenvector positional encodings per atom (0: none)
    pe_sign_flip: SignFlip = "batch"  # flip the PEs' arbitrary signs at random while training: per batch, per graph
    pe_injection: PEInjection = "concat-mlp"  # how PEs join the atom features: concatenated through an MLP, or added
    # What the pe_dim columns hold: the eigenvectors; zeros (no information, the same injection MLP: pe_dim 0 drops
    # that MLP too); or random orthonormal columns with the eigenvectors' zero-padding (molecule size, no structure)
    pe_values: PEValues = "laplacian"
    aggregation: Aggregation = "gated"  # how messages are aggregated: gated sum, PNA, or learnable softmax/power mean
    message_norm: bool = False  # DeeperGCN's MessageNorm: rescale the aggregated message to the node state's norm
    graph_size_norm: bool = False  # divide message passing's output by sqrt(the graph's atom count) (Benchmarking GNNs)
    global_attention: GlobalAttention = "none"  # a global sub-layer in every block: none, low-rank (lrga), full
    attention_rank: int = 16  # lrga: the rank k of the low-rank attention
    attention_heads: int = 4  # transformer: heads of the self-attention (hidden must divide by it)
    substructures: bool = False  # GSN-style counts of the cycles (3..8 atoms) each atom and bond lies on
    virtual_node: bool = False  # a virtual node joined to every atom, which passes messages across the graph
    pooling: Pooling = "mean"  # the readout over a graph's atoms (sum can express additive properties)
    layers: int = 5  # blocks (message passing, feed-forward, optional global attention)
    hidden: int = 128  # the width of every node and edge state
    dropout: float = 0.5  # dropout rate of every feed-forward, attention and readout layer

    def __post_init__(self):
        check_fields(self, "model")
        check_at_least(
            self,
            "model",
            {"layers": 1, "hidden": 1, "ffn_ratio": 1, "pe_dim": 0, "attention_rank": 1, "attention_heads": 1},
        )
        if not 0 <= self.dropout < 1:
            raise UserError(f"model.dropout must be in [0, 1), got {self.dropout!r}")
        if self.conv == "mlp" and (self.aggregation != "gated" or self.message_norm or self.graph_size_norm):
            raise UserError(
                "model.aggregation, message_norm and graph_size_norm act on message passing; conv 'mlp' has none"
            )
        if self.global_attention == "transformer" and self.hidden % self.attention_heads:
            raise UserError(
                f"model.hidden ({self.hidden}) must be divisible by model.attention_heads ({self.attention_heads})"
            )


@dataclass
class TrainConfig:
    """The reference's optimisation: Adam 1e-3, ReduceLROnPlateau(0.5, 5) on validation loss."""

    epochs: int = 50  # training epochs; the best validation epoch is kept
    batch_size: int = 256  # graphs per training batch
    lr: float = 1e-3  # Adam's learning rate
    weight_decay: float = 0.0  # Adam's L2 weight decay
    lr_factor: float = 0.5  # ReduceLROnPlateau: multiply the learning rate by this when validation loss stalls
    lr_patience: int = 5  # ReduceLROnPlateau: epochs without a better validation loss before it does
    # Stop once the validation score has not improved for this many epochs (None: run every epoch). The
    # best-validation weights are kept either way, so it saves compute without changing what is selected
    # up to that point; a run's `epochs` is then its budget, not what it ran.
    patience: int | None = None
    seed: int = 0  # seeds the weights, dropout and batch order
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Precision = "fp32"  # autocast, CUDA only
    eval_train: bool = False  # re-score the training set every epoch (costs a training epoch)
    cuda_graphs: bool = False  # replay each training step as a CUDA graph on padded fixed-shape batches
    compile: bool = False  # torch.compile the training forward (one graph, fused kernels) on padded fixed-shape batches
    init: str | None = None  # fine-tune from this `ggt-search pretrain` checkpoint (task head always fresh)

    def __post_init__(self):
        check_fields(self, "train")
        # A batch of one graph is skipped (BatchNorm cannot normalise one sample): batch_size 1 would train nothing.
        check_at_least(self, "train", {"epochs": 1, "batch_size": 2, "weight_decay": 0, "lr_patience": 0, "seed": 0})
        if self.patience is not None:
            check_at_least(self, "train", {"patience": 1})
        if not self.lr > 0:
            raise UserError(f"train.lr must be positive, got {self.lr!r}")
        if not 0 < self.lr_factor < 1:
            raise UserError(f"train.lr_factor must be in (0, 1), got {self.lr_factor!r}")
        if self.cuda_graphs and self.precision == "fp16":
            raise UserError("train.cuda_graphs cannot go with fp16 (its loss scaler syncs with the host); use bf16")

    @property
    def padded(self) -> bool:
        """Training batches padded to fixed shapes: what a CUDA graph or a static-shape compile needs."""
        return self.cuda_graphs or self.compile


@dataclass
class RunConfig:
    dataset: DatasetSpec = field(default_factory=lambda: DatasetSpec(EMBEDDED))
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, values: dict) -> RunConfig:
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
    def load(cls, path: str | Path) -> RunConfig:
        return cls.from_dict(read_yaml_mapping(Path(path), "config", "with sections dataset, model, train"))

    def to_dict(self) -> dict:
        return {"dataset": self.dataset.to_dict(), "model": asdict(self.model), "train": asdict(self.train)}

    def save(self, path: str | Path) -> None:
        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def with_overrides(
        self, dataset: dict | None = None, model: dict | None = None, train: dict | None = None
    ) -> RunConfig:
        merged = self.to_dict()
        for section, values in (("dataset", dataset), ("model", model), ("train", train)):
            merged[section].update(values or {})
        return RunConfig.from_dict(merged)


def config_difference(
    wanted: RunConfig, stored: RunConfig, ignore: frozenset[tuple[str, str]] = frozenset()
) -> tuple[str, object, object] | None:
    """The first field (as 'section.key', the device and the `ignore` fields aside) where two configs
    differ, with the stored and the wanted value; None when they train the same thing."""
    wanted_values, stored_values = wanted.to_dict(), stored.to_dict()
    ignore = ignore | {("train", "device")}
    for section in wanted_values:
        for key in sorted(set(wanted_values[section]) | set(stored_values[section])):
            if (section, key) not in ignore and wanted_values[section].get(key) != stored_values[section].get(key):
                return f"{section}.{key}", stored_values[section].get(key), wanted_values[section].get(key)
    return None


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names a key twice (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (line {key_node.start_mark.line + 1})", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml_mapping(path: Path, what: str, expected: str) -> dict:
    """The mapping a YAML file holds (an empty file is {}); any problem is one UserError line."""
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    try:
        values = yaml.load(path.read_text(), Loader=UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise UserError(f"{what} {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict | None):
        raise UserError(f"{what} {path} must be a mapping {expected}")
    return values or {}


def build(cls, values: dict, section: str):
    """cls(**values), with unknown keys, missing keys and wrong values reported by name."""
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
