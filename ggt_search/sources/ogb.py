"""An official OGB name (`ogbg-molhiv`, ...): OGB's zip, downloaded with ogb's own helpers and
read from its raw csv files (ogb 1.3.6's dataset classes cannot reload their cache under
torch >= 2.6, so we keep our own). The names' metrics and MoleculeNet tables live here too.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ggt_search.errors import UserError
from ggt_search.sources.base import DatasetSource

if TYPE_CHECKING:
    from ggt_search.config import DatasetSpec
    from ggt_search.graphset import GraphSet


@dataclass(frozen=True)
class OgbSet:
    metric: str
    moleculenet_file: str | None = None  # the MoleculeNet table it was built from (offline builds)
    smiles_column: str = "smiles"  # that table's SMILES column
    targets: tuple[str, ...] | None = None  # that table's label columns, in OGB's task order (None: all others)
    tasks: int = 1  # OGB's number of tasks: how many label columns that table has, where `targets` names none

    @property
    def task_type(self) -> str:
        return "classification" if self.metric in ("rocauc", "ap") else "regression"


OGB_DATASETS = {
    "ogbg-molhiv": OgbSet("rocauc", "HIV.csv.gz", targets=("HIV_active",)),
    "ogbg-molpcba": OgbSet("ap", tasks=128),
    "ogbg-molmuv": OgbSet("ap", "muv.csv.gz", tasks=17),
    "ogbg-moltox21": OgbSet("rocauc", "tox21.csv", tasks=12),
    "ogbg-moltoxcast": OgbSet("rocauc", "toxcast.csv.gz", tasks=617),
    "ogbg-molbbbp": OgbSet("rocauc", "BBBP.csv", targets=("p_np",)),
    "ogbg-molbace": OgbSet("rocauc", "bace.csv", smiles_column="mol", targets=("Class",)),
    "ogbg-molclintox": OgbSet("rocauc", "clintox.csv", targets=("FDA_APPROVED", "CT_TOX")),
    "ogbg-molsider": OgbSet("rocauc", "sider.csv", tasks=27),
    "ogbg-molesol": OgbSet("rmse", "delaney.csv", targets=("logp",)),
    "ogbg-molfreesolv": OgbSet("rmse", "freesolv.csv", targets=("freesolv",)),
    "ogbg-mollipo": OgbSet("rmse", "Lipophilicity.csv", targets=("exp",)),
}


def ogb_set(name: str) -> OgbSet:
    """The OGB dataset of that name; one clear error for a name OGB does not have."""
    if name not in OGB_DATASETS:
        raise UserError(f"unknown OGB dataset {name!r}; known: {', '.join(OGB_DATASETS)}")
    return OGB_DATASETS[name]


class OgbDownload(DatasetSource):
    names = tuple(OGB_DATASETS)
    what = "an OGB download"

    @classmethod
    def claims(cls, spec: DatasetSpec) -> bool:
        return spec.name.startswith("ogbg-") and spec.source is None

    def resolve(self) -> Path:
        ogb_set(self.spec.name)
        return download(self.spec.name)

    def checksum(self, path: Path) -> str:
        return "ogb-download"  # OGB's files do not change under a name

    def read(self, path: Path) -> GraphSet:
        return read_ogb_raw(self.spec.name, path)

    def smiles(self, path: Path) -> list[str]:
        raise UserError(f"the leakage guard needs {self.spec.name}'s SMILES table; build it offline with --source")

    def scaffolds(self, path: Path) -> list[str]:
        """From the SMILES OGB's download maps its graphs to (mapping/mol.csv.gz, one row per graph)."""
        import pandas as pd

        from ggt_search.molecules import parallel_map, scaffold_of_smiles

        smiles = pd.read_csv(path / "mapping" / "mol.csv.gz")["smiles"].tolist()
        return parallel_map(scaffold_of_smiles, smiles, f"scaffolds of {self.spec.name}")


def download(name: str) -> Path:
    """OGB's zip, fetched with ogb's own URL table and helpers; returns the extracted folder.

    GGT_SEARCH_OGB_MIRROR=URL fetches the same file names from a mirror (or a local copy
    served over HTTP) instead of OGB's servers.
    """
    import ogb.graphproppred as ogb_graph
    import pandas as pd
    from ogb.utils.url import download_url, extract_zip

    from ggt_search.graphset import cache_root

    root = cache_root() / "ogb"
    folder = root / name.replace("-", "_")
    if (folder / "raw").exists():
        return folder
    meta = pd.read_csv(Path(ogb_graph.__file__).parent / "master.csv", index_col=0, keep_default_na=False)[name]
    try:
        url = meta["url"]
        if os.environ.get("GGT_SEARCH_OGB_MIRROR"):
            url = os.environ["GGT_SEARCH_OGB_MIRROR"].rstrip("/") + "/" + url.rsplit("/", 1)[1]
        zip_path = download_url(url, str(root))
    except Exception as error:  # urllib raises several kinds; all mean the same to the user
        table = OGB_DATASETS[name].moleculenet_file
        hint = f"; build it offline with --source PATH/{table}" if table else ""
        raise UserError(f"could not download {name} from OGB ({type(error).__name__}){hint}") from None
    extract_zip(zip_path, str(root))
    os.unlink(zip_path)
    extracted = root / meta["download_name"]
    if extracted != folder:
        shutil.move(str(extracted), str(folder))
    return folder


def read_ogb_raw(name: str, folder: Path) -> GraphSet:
    """OGB's raw layout: raw/*.csv.gz (one row per bond, atom indices per graph) + split/scaffold."""
    import numpy as np
    import pandas as pd
    import torch

    from ggt_search.graphset import SPLITS, GraphSet
    from ggt_search.indexing import counts_to_ptr

    raw = folder / "raw"

    def table(file: str, dtype=np.int64) -> np.ndarray:
        return pd.read_csv(raw / file, compression="gzip", header=None).to_numpy(dtype, copy=True)

    num_nodes = table("num-node-list.csv.gz").ravel()
    num_bonds = table("num-edge-list.csv.gz").ravel()
    bonds = table("edge.csv.gz")  # [B, 2], one direction per bond
    bond_features = table("edge-feat.csv.gz")
    bond_ptr = np.concatenate([[0], np.cumsum(num_bonds)])
    # Both directions of each bond, kept within their graph: (i, j) then (j, i).
    directed = np.stack([bonds, bonds[:, ::-1]], axis=1).reshape(-1, 2)
    split = folder / "split" / "scaffold"
    return GraphSet(
        name=name,
        task_type=OGB_DATASETS[name].task_type,
        metric=OGB_DATASETS[name].metric,
        task_names=[f"task{i}" for i in range(table("graph-label.csv.gz", np.float32).shape[1])],
        atoms=torch.from_numpy(table("node-feat.csv.gz")),
        bonds=torch.from_numpy(np.repeat(bond_features, 2, axis=0)),
        edges=torch.from_numpy(np.ascontiguousarray(directed.T)),
        node_ptr=counts_to_ptr(torch.from_numpy(num_nodes)),
        edge_ptr=torch.from_numpy(2 * bond_ptr),
        y=torch.from_numpy(table("graph-label.csv.gz", np.float32)),
        split={
            s: torch.from_numpy(pd.read_csv(split / f"{s}.csv.gz", header=None).to_numpy(np.int64).ravel())
            for s in SPLITS
        },
    )
