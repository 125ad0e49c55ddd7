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
    import pandas as pd

    from ggt_search.config import DatasetSpec


class MoleculeNetTable(TableSource):
    names = tuple(OGB_DATASETS)
    what = "an OGB name (its columns and split are OGB's)"
    flags = (
        Flag(
            "--source",
            "source",
            "build an OGB name offline from this MoleculeNet table (file, or the folder holding it)",
        ),
        *(flag for flag in TableSource.flags if flag.field == "invalid_smiles"),
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

    def frame(self, path: Path) -> pd.DataFrame:
        """The table, refused unless its columns are those of the name's MoleculeNet table: another
        table would be built, silently, into a dataset of this name."""
        frame = super().frame(path)
        smiles = self.ogb.smiles_column
        labels = [c for c in frame.columns if str(c).lower() != smiles.lower()]
        expected = self.ogb.targets
        if len(labels) == len(frame.columns) or (
            not set(expected) <= set(labels) if expected else len(labels) != self.ogb.tasks
        ):
            wanted = f"columns {', '.join(expected)}" if expected else f"{self.ogb.tasks} label columns"
            raise UserError(
                f"{path} is not {self.spec.name}'s MoleculeNet table ({self.ogb.moleculenet_file}: a {smiles!r} "
                f"column and {wanted}); its columns are {', '.join(map(str, frame.columns))}; pass that table"
            )
        return frame

    def task(self, path: Path, y: np.ndarray) -> tuple[str, str]:
        return self.ogb.task_type, self.ogb.metric
