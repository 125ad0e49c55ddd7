"""Where molecules come from: one module per kind of source, and the registry of them.

- `ogb`: an official OGB name, downloaded;
- `moleculenet`: the same name built offline from its MoleculeNet table (`--source`);
- `own_csv`: the user's own CSV;
- `embedded`: `nci-tpsa`, shipped inside RDKit's wheel;
- `corpus`: the unlabeled SMILES file pre-training reads.

Each says what `base.Source` asks (its file, its cache key, how it reads into a GraphSet);
`datasets.py` caches what they read, the same way for all. A DatasetSpec is read by the first
kind in SOURCES that claims it, and the CLI's dataset flags are the kinds' `flags`. A new kind:
its module here, its line in SOURCES, and (for a new option) a field of `config.DatasetSpec`.

These modules import torch and pandas only inside their methods, so the CLI lists the flags at once.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING

from ggt_search.errors import UserError
from ggt_search.sources.base import DatasetSource, Flag, Source
from ggt_search.sources.corpus import Corpus
from ggt_search.sources.embedded import Embedded
from ggt_search.sources.moleculenet import MoleculeNetTable
from ggt_search.sources.ogb import OgbDownload
from ggt_search.sources.own_csv import OwnCsv

if TYPE_CHECKING:
    from ggt_search.config import DatasetSpec

__all__ = ["SOURCES", "Corpus", "DatasetSource", "Flag", "Source", "dataset_flags", "source_for"]

SOURCES: tuple[type[DatasetSource], ...] = (OgbDownload, MoleculeNetTable, Embedded, OwnCsv)


def source_for(spec: DatasetSpec) -> DatasetSource:
    """The source that reads the spec: the first kind that claims it; one clear error when none does."""
    for kind in SOURCES:
        if kind.claims(spec):
            check_options_apply(kind, spec)
            return kind(spec)
    known = ", ".join(dict.fromkeys(name for kind in SOURCES for name in kind.names))
    raise UserError(f"dataset {spec.name!r} is neither a known name ({known}) nor an existing CSV file")


def dataset_flags() -> list[Flag]:
    """Every kind's dataset flags, each once."""
    return list({flag.name: flag for kind in SOURCES for flag in kind.flags}.values())


def check_options_apply(kind: type[DatasetSource], spec: DatasetSpec) -> None:
    """Refuse a dataset option the source would ignore (`--split random` on an OGB name, `--source` on the
    embedded set): a silently ignored option builds another dataset than the one asked for. A balanced
    scaffold split is every source's (`datasets.load_dataset` applies it), so it is not asked of them."""
    from ggt_search.config import DatasetSpec

    default = DatasetSpec(spec.name)
    reads = {"name"} | {flag.field for flag in kind.flags}
    if spec.split == "balanced-scaffold":
        reads |= {"split", "split_seed"}
    given = [f.name for f in fields(spec) if getattr(spec, f.name) != getattr(default, f.name)]
    ignored = [name for name in given if name not in reads]
    if ignored:
        flag = {flag.field: flag.name for flag in dataset_flags()}
        takes = ", ".join(flag.name for flag in kind.flags) or "no dataset flags"
        raise UserError(
            f"{', '.join(flag[name] for name in ignored)} (dataset.{', dataset.'.join(ignored)}) "
            f"{'does' if len(ignored) == 1 else 'do'} not apply to {spec.name}, {kind.what}; drop it (it takes {takes})"
        )
