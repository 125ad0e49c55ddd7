"""An OGB name built offline from the MoleculeNet table it was made from (`--source HIV.csv.gz`,
or a folder holding the tables): the same molecules, OGB's features and OGB's scaffold split,
so the GraphSet equals OGB's download (tests/test_datasets.py compares them).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ggt_search.errors import UserError
from ggt_search.sources.base import Flag
from ggt_search.sources.ogb import OGB_DATASETS, ogb_set
from ggt_search.sources.table import TableSource

if TYPE_CHECKING:
    import numpy as np

    from ggt_search.config import DatasetSpec


class MoleculeNetTable(TableSource):
    names = tuple(OGB_DATASETS)
    flags = (
        Flag(
            "--source",
            "source",
            "build an OGB name offline from this MoleculeNet table (file, or the folder holding it)",
        ),
        *TableSource.flags,
    )

    def __init__(self, spec: DatasetSpec):
        super().__init__(spec)
        self.ogb = ogb_set(spec.name)
        self.default_smiles_column, self.default_targets = self.ogb.smiles_column, self.ogb.targets  # its own columns

    @classmethod
    def claims(cls, spec: DatasetSpec) -> bool:
        return spec.name.startswith("ogbg-") and spec.source is not None

    def resolve(self) -> Path:
        source = Path(self.spec.source).expanduser()
        table = self.ogb.moleculenet_file
        if source.is_dir():
            if table is None:
                raise UserError(
                    f"{self.spec.name} has no MoleculeNet table offline; "
                    "pass the OGB download folder or a CSV file as --source"
                )
            source = source / table
        if not source.is_file():
            raise UserError(
                f"source file not found: {source}; pass the MoleculeNet table of {self.spec.name} "
                f"({table or 'a CSV file'})"
            )
        return source

    def task(self, path: Path, y: np.ndarray) -> tuple[str, str]:
        return self.ogb.task_type, self.ogb.metric
