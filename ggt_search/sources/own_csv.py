"""The user's own CSV: a SMILES column and target columns; the task type is inferred from the
labels (0/1: classification) unless given, and the split is a scaffold or a seeded random one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ggt_search.config import DatasetSpec, choices
from ggt_search.errors import UserError
from ggt_search.sources.base import Flag
from ggt_search.sources.table import TableSource

OPTIONS = choices(DatasetSpec)  # the dataset fields' options, from their Literal types

if TYPE_CHECKING:
    import numpy as np

    from ggt_search.molecules import MolGraph


class OwnCsv(TableSource):
    what = "your own CSV"
    flags = (
        *TableSource.flags,
        Flag("--task-type", "task_type", "own CSV: override the inferred task type", choices=OPTIONS["task_type"]),
        Flag("--split", "split", "own CSV: split (default scaffold, 80/10/10)", choices=OPTIONS["split"]),
        Flag("--split-seed", "split_seed", "own CSV: seed of the random split", type=int),
    )

    @classmethod
    def claims(cls, spec: DatasetSpec) -> bool:
        return Path(spec.name).expanduser().is_file()

    def resolve(self) -> Path:
        return Path(self.spec.name).expanduser()

    def task(self, path: Path, y: np.ndarray) -> tuple[str, str]:
        import numpy as np

        binary = np.isin(y[~np.isnan(y)], [0, 1]).all()
        task_type = self.spec.task_type or ("classification" if binary else "regression")
        if task_type == "classification" and not binary:
            raise UserError(
                f"--task-type classification needs 0/1 labels, but {path} has others; use --task-type regression"
            )
        return task_type, "rocauc" if task_type == "classification" else "rmse"

    def split(self, molecules: list[MolGraph]):
        from ggt_search.molecules import random_split

        if self.spec.split == "scaffold":
            return super().split(molecules)
        return random_split(len(molecules), self.spec.split_seed)

    def graph_name(self) -> str:
        return Path(self.spec.name).stem
