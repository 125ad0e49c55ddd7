"""`nci-tpsa`: 4,999 NCI molecules and their TPSA, shipped inside RDKit's wheel; needs no network,
for first runs and tests. A regression on OGB's scaffold split.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ggt_search.config import EMBEDDED
from ggt_search.sources.table import TableSource

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from ggt_search.config import DatasetSpec


class Embedded(TableSource):
    names = (EMBEDDED,)
    what = "the embedded set (shipped inside RDKit, read from no file)"

    @classmethod
    def claims(cls, spec: DatasetSpec) -> bool:
        return spec.name == EMBEDDED

    def resolve(self) -> Path:
        from rdkit import RDConfig

        return Path(RDConfig.RDDataDir) / "NCI" / "first_5k.tpsa.csv"

    def frame(self, path: Path) -> pd.DataFrame:
        import pandas as pd

        return pd.read_csv(path, skiprows=1, header=None, names=["smiles", "tpsa"])  # line 1: a comment

    def task(self, path: Path, y: np.ndarray) -> tuple[str, str]:
        return "regression", "rmse"
