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
            return kind(spec)
    known = ", ".join(dict.fromkeys(name for kind in SOURCES for name in kind.names))
    raise UserError(f"dataset {spec.name!r} is neither a known name ({known}) nor an existing CSV file")


def dataset_flags() -> list[Flag]:
    """Every kind's dataset flags, each once."""
    return list({flag.name: flag for kind in SOURCES for flag in kind.flags}.values())
