"""Self-supervised pre-training by attribute masking (Hu et al., ICLR 2020), and its checkpoint.

A fraction of the atoms of every molecule (15% by default) enter the model as a learned mask
token instead of their features; a linear head predicts each masked atom's element from its
final state. With `mask_bonds`, the bonds touching a masked atom enter as a second token too,
and a second head predicts each one's bond type from its two atoms' final states (Hu et al.'s
edge masking). The heads and tokens are dropped afterwards: the checkpoint holds the
encoders and blocks, the model config they were trained with, the corpus checksum, the
objective and the loss curve, and `train.init` fine-tunes from it (the task head is fresh).

Leakage guard: when a downstream dataset is named, every corpus molecule that is in its
validation or test split (same canonical SMILES) is removed before training, and the
count is reported; without one, it says that none ran. Each epoch's masking loss is printed
beside the loss of predicting the corpus's element frequencies, so a loss that did not fall
below it shows a model that learned nothing from the graphs. A folder holding a checkpoint
of other settings is refused, never overwritten.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from ogb.utils.features import get_atom_feature_dims, get_bond_feature_dims
from torch import nn

from ggt_search.batching import DeviceGraphs
from ggt_search.config import DatasetSpec, RunConfig
from ggt_search.datasets import held_out_smiles, load_corpus
from ggt_search.errors import UserError
from ggt_search.model import GatedGraphTransformer, training_cycle_maxima
from ggt_search.progress import progress
from ggt_search.steps import make_step, train_steps
from ggt_search.train import training_device

ELEMENTS = get_atom_feature_dims()[0]  # OGB's first atom feature: the element (atomic number - 1, or "misc")
BOND_TYPES = get_bond_feature_dims()[0]  # OGB's first bond feature: single, double, triple, aromatic, misc


@dataclass
class PretrainSettings:
    corpus: Path
    out: Path
    config: RunConfig  # model (the architecture to pre-train) and train (epochs, batch size, lr, seed, device)
    smiles_column: str | None = None
    max_molecules: int | None = None
    mask_rate: float = 0.15
    mask_bonds: bool = False  # also mask the bonds touching masked atoms and predict their bond type
    downstream: tuple[DatasetSpec, ...] = ()  # datasets whose validation and test molecules leave the corpus


class MaskingHead(nn.Module):
    """The pre-training objective's own parts: the mask tokens and the classifiers."""

    def __init__(self, dim: int):
        super().__init__()
        self.atom_token, self.bond_token = nn.Parameter(torch.zeros(dim)), nn.Parameter(torch.zeros(dim))
        self.element = nn.Linear(dim, ELEMENTS)
        self.bond_type = nn.Linear(dim, BOND_TYPES)


class PretrainingModel(nn.Module):
    """What pre-training trains: the model and the objective's own parts (`MaskingHead`), as one module."""

    def __init__(self, model: GatedGraphTransformer, head: MaskingHead):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, batch, hidden_atoms: torch.Tensor, hidden_bonds: torch.Tensor | None) -> torch.Tensor:
        """Final node states, the hidden atoms (and bonds) entering as the head's mask tokens."""
        return self.model.encode(batch, hidden_atoms, self.head.atom_token, hidden_bonds, self.head.bond_token)[0]


def masking_loss(forward, batch, head: MaskingHead, rate: float, mask_bonds: bool = False) -> torch.Tensor:
    """Cross-entropy of the masked atoms' elements (plus, with mask_bonds, of the bond types of
    the bonds touching them), predicted by `forward` (a `PretrainingModel`) from what it saw without them.

    An unpadded batch indexes the masked rows out; a padded one (compile, CUDA graphs) keeps every
    row and weights the others out, so that no shape depends on the data. Both are the same mean.
    """
    padded = batch.node_mask is not None
    hidden = torch.rand(len(batch.atoms), device=batch.atoms.device) < rate
    if padded:
        hidden &= batch.node_mask  # padding atoms are never masked (nor, so, the padding bonds joining them)
    hidden[0] |= ~hidden.any()  # at least one masked atom per batch
    source, target = batch.edge_index
    hidden_bonds = hidden[source] | hidden[target] if mask_bonds else None
    h = forward(batch, hidden, hidden_bonds)

    def take(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return x if padded else x[rows]

    loss = _mean_cross_entropy(head.element(take(h, hidden)), take(batch.atoms[:, 0], hidden), hidden, padded)
    if mask_bonds:  # a bond's type from both its atoms, symmetric in the two; a lone masked ion has no bond
        ends = h[take(source, hidden_bonds)] + h[take(target, hidden_bonds)]
        bond_types = take(batch.bonds[:, 0], hidden_bonds)
        loss = loss + _mean_cross_entropy(head.bond_type(ends), bond_types, hidden_bonds, padded)
    return loss


def _mean_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, padded: bool) -> torch.Tensor:
    """Cross-entropy averaged over the masked `rows` (0 when there are none): `logits` and `targets`
    hold those rows only, or (padded) every row, the others then weighted out."""
    per_row = F.cross_entropy(logits, targets, reduction="none" if padded else "sum")
    return (torch.where(rows, per_row, 0.0).sum() if padded else per_row) / rows.sum().clamp(min=1)


def recorded_settings(settings: PretrainSettings) -> dict:
    """What decides a checkpoint's weights, as JSON values (the device aside): stored in pretrained.json,
    so that a rerun into the same --out can tell whether it would make the same checkpoint."""
    config = settings.config.to_dict()
    config["train"].pop("device")
    return {
        "corpus": str(settings.corpus),
        "smiles_column": settings.smiles_column,
        "max_molecules": settings.max_molecules,
        "mask_rate": settings.mask_rate,
        "mask_bonds": settings.mask_bonds,
        "downstream": [spec.to_dict() for spec in settings.downstream],
        "config": config,
    }


def check_same_settings(settings: PretrainSettings) -> None:
    """A folder that holds a checkpoint of other settings is refused, never overwritten."""
    if not (settings.out / "pretrained.pt").exists():
        return
    fix = f"pass another --out, or delete {settings.out} to pre-train again"
    try:
        stored = json.loads((settings.out / "pretrained.json").read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{settings.out} holds a checkpoint whose settings are not recorded; {fix}") from None
    wanted = recorded_settings(settings)
    for key, value in flat(wanted).items():
        if flat(stored).get(key) != value:
            raise UserError(
                f"{settings.out} holds a checkpoint pre-trained with {key} = {flat(stored).get(key)!r}, "
                f"not {value!r}; {fix}"
            )


def flat(values: dict, prefix: str = "") -> dict:
    """{"config": {"train": {"lr": 1e-3}}} -> {"config.train.lr": 1e-3}."""
    out = {}
    for key, value in values.items():
        out |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def frequency_loss(corpus, mask_bonds: bool) -> float:
    """The masking loss of always predicting the corpus's element frequencies (and bond-type frequencies,
    with mask_bonds): the entropy of those frequencies, in nats. Atoms are masked uniformly at random, and so
    are the bonds touching them, so a model that learned nothing from the graph scores this; below it, it did."""

    def entropy(values: torch.Tensor, classes: int) -> float:
        p = torch.bincount(values, minlength=classes).double() / len(values)
        return float(-(p[p > 0] * p[p > 0].log()).sum())

    return entropy(corpus.atoms[:, 0], ELEMENTS) + (entropy(corpus.bonds[:, 0], BOND_TYPES) if mask_bonds else 0.0)


def pretrain(settings: PretrainSettings) -> dict:
    cfg = settings.config
    device = training_device(cfg.train)  # before the corpus is read: a device this machine has
    check_same_settings(settings)
    exclude = set().union(*(held_out_smiles(spec) for spec in settings.downstream))
    corpus, removed = load_corpus(settings.corpus, settings.smiles_column, settings.max_molecules, exclude)
    names = ", ".join(spec.name for spec in settings.downstream)
    if settings.downstream:
        print(
            f"leakage guard: removed {removed} corpus molecule(s) that are in the validation or test split of {names}"
        )
    else:
        print(
            "leakage guard: none ran (no --dataset or --exclude-datasets): corpus molecules that are in a "
            "downstream dataset's validation or test split stay in the corpus"
        )
    reference = frequency_loss(corpus, settings.mask_bonds)
    torch.manual_seed(cfg.train.seed)
    data = DeviceGraphs(corpus, device, cfg.model.pe_dim, cfg.model.substructures, cfg.model.pe_values, cfg.train.seed)
    cycle_maxima = training_cycle_maxima(corpus) if cfg.model.substructures else None
    model = GatedGraphTransformer(cfg.model, num_tasks=1, cycle_maxima=cycle_maxima).to(device)
    head = MaskingHead(cfg.model.hidden).to(device)
    loss = functools.partial(masking_loss, head=head, rate=settings.mask_rate, mask_bonds=settings.mask_bonds)
    step = make_step(PretrainingModel(model, head), loss, cfg.train, device)  # bf16, compile, CUDA graphs, as fit's
    shuffle = torch.Generator().manual_seed(cfg.train.seed)
    curve, start = [], time.perf_counter()
    num_batches = math.ceil(len(data.split["train"]) / cfg.train.batch_size)
    for epoch in range(1, cfg.train.epochs + 1):
        batches = data.batches(
            data.split["train"], cfg.train.batch_size, shuffle=True, generator=shuffle, padded=cfg.train.padded
        )
        curve.append(train_steps(step, progress(batches, num_batches, f"pre-training epoch {epoch}", "batches")))
        if not math.isfinite(curve[-1]):
            raise UserError(
                f"pre-training loss is {curve[-1]} at epoch {epoch}: the run diverged; "
                f"lower --lr (now {cfg.train.lr:g})"
            )
        print(
            f"epoch {epoch:3d}  masking loss {curve[-1]:.4f}  (predicting the corpus's frequencies: {reference:.4f})",
            flush=True,
        )
    seconds = time.perf_counter() - start
    summary = {
        "objective": f"attribute masking (the element of {settings.mask_rate:.0%} of atoms"
        f"{', and the type of the bonds touching them' if settings.mask_bonds else ''})",
        "corpus": {
            "path": str(settings.corpus),
            "sha256": corpus.checksum,
            "molecules": corpus.num_graphs,
            "removed_for_leakage": removed,
            "downstream": names or None,
        },
        "loss_curve": curve,
        "frequency_loss": reference,  # the loss of predicting the corpus's element (and bond-type) frequencies
        "settings": recorded_settings(settings),
        "graphs_per_second": round(cfg.train.epochs * corpus.num_graphs / seconds, 1),
        "device": str(device),
    }
    settings.out.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.cpu() for k, v in model.state_dict().items() if not k.startswith("readout.")
    }  # the task head is always fresh
    torch.save({"model_config": asdict(cfg.model), "state": state} | summary, settings.out / "pretrained.pt")
    (settings.out / "pretrained.json").write_text(json.dumps(summary | {"model_config": asdict(cfg.model)}, indent=2))
    return summary
