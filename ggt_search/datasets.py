"""Datasets: where molecules come from, and the cached tensors every run trains on.

Four sources, one result (a `GraphSet`):
1. an official OGB name (`ogbg-molhiv`, ...): OGB's zip, downloaded with ogb's own helpers,
   read from its raw csv files (ogb 1.3.6's dataset classes cannot reload their cache
   under torch >= 2.6, so we keep our own);
2. the same name built offline from the MoleculeNet table it was made from
   (`--source HIV.csv.gz`, or a folder holding the tables): same molecules, OGB features
   and OGB's scaffold split;
3. the user's own CSV: a SMILES column and target columns;
4. `nci-tpsa`: 4,999 NCI molecules and their TPSA, shipped inside RDKit's wheel; needs no
   network, for first runs and tests.

A GraphSet is a handful of flat tensors (all graphs concatenated, with pointer arrays),
cached on disk under a key of the source file's checksum, the options, and the
featurization version, so the second load is a single `torch.load`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ggt_search.config import EMBEDDED, DatasetSpec
from ggt_search.errors import UserError
from ggt_search.indexing import counts_to_ptr, ptr_to_counts, ranges
from ggt_search.molecules import CYCLE_LENGTHS, canonical_smiles, cycle_counts, featurize, parallel_map, random_split, scaffold_split
from ggt_search.positional import laplacian_pe

FEATURIZATION_VERSION = 2  # bump when molecules.py changes what a graph holds or how it is split
SPLITS = ("train", "valid", "test")
DEFAULT_PE_CACHE_DIM = 20  # largest k of the default search space; smaller k slice it


@dataclass(frozen=True)
class OgbSet:
    metric: str
    moleculenet_file: str | None = None  # the MoleculeNet table it was built from (offline builds)
    smiles_column: str = "smiles"  # that table's SMILES column
    targets: tuple[str, ...] | None = None  # that table's label columns, in OGB's task order (None: all others)


OGB_DATASETS = {
    "ogbg-molhiv": OgbSet("rocauc", "HIV.csv.gz", targets=("HIV_active",)),
    "ogbg-molpcba": OgbSet("ap"),
    "ogbg-molmuv": OgbSet("ap", "muv.csv.gz"),
    "ogbg-moltox21": OgbSet("rocauc", "tox21.csv"),
    "ogbg-moltoxcast": OgbSet("rocauc", "toxcast.csv.gz"),
    "ogbg-molbbbp": OgbSet("rocauc", "BBBP.csv", targets=("p_np",)),
    "ogbg-molbace": OgbSet("rocauc", "bace.csv", smiles_column="mol", targets=("Class",)),
    "ogbg-molclintox": OgbSet("rocauc", "clintox.csv", targets=("FDA_APPROVED", "CT_TOX")),
    "ogbg-molsider": OgbSet("rocauc", "sider.csv"),
    "ogbg-molesol": OgbSet("rmse", "delaney.csv"),
    "ogbg-molfreesolv": OgbSet("rmse", "freesolv.csv"),
    "ogbg-mollipo": OgbSet("rmse", "Lipophilicity.csv", targets=("exp",)),
}


@dataclass
class GraphSet:
    """All graphs of a dataset as flat tensors; graph g owns atoms node_ptr[g]:node_ptr[g+1]."""

    name: str
    task_type: str
    metric: str
    task_names: list[str]
    atoms: torch.Tensor  # [N, 9] long, OGB atom features
    bonds: torch.Tensor  # [E, 3] long, OGB bond features, one row per directed edge
    edges: torch.Tensor  # [2, E] long, atom indices local to their graph
    node_ptr: torch.Tensor  # [G + 1]
    edge_ptr: torch.Tensor  # [G + 1]
    y: torch.Tensor  # [G, T] float, NaN = missing label
    split: dict[str, torch.Tensor]  # train / valid / test -> graph indices
    checksum: str = ""
    cache_dir: Path | None = None
    pe: torch.Tensor | None = field(default=None, repr=False)  # [N, k] after load_pe

    @property
    def num_graphs(self) -> int:
        return len(self.node_ptr) - 1

    @property
    def num_tasks(self) -> int:
        return self.y.shape[1]

    def num_nodes(self) -> torch.Tensor:
        return ptr_to_counts(self.node_ptr)

    def num_edges(self) -> torch.Tensor:
        return ptr_to_counts(self.edge_ptr)

    def load_pe(self, k: int) -> torch.Tensor:
        """Laplacian PE with at least k columns, from the cache or computed once and cached."""
        k_cached = max(k, DEFAULT_PE_CACHE_DIM)
        path = self.cache_dir / f"pe-k{k_cached}.pt" if self.cache_dir else None
        self.pe = _load_verified(path) if path is not None else None
        if self.pe is None:
            self.pe = laplacian_pe(self.edges, self.node_ptr, self.edge_ptr, k_cached)
            if path is not None:
                _save_verified(self.pe, path)
        return self.pe

    def load_substructures(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(atoms [N, 6], bonds [E, 6]): on how many simple cycles of length 3..8 each lies; cached like the PEs."""
        path = self.cache_dir / f"cycles-{CYCLE_LENGTHS[0]}-{CYCLE_LENGTHS[-1]}.pt" if self.cache_dir else None
        counts = _load_verified(path) if path is not None else None
        if counts is None:
            per_graph = parallel_map(cycle_counts, [(self.edges[:, self.edge_ptr[g]:self.edge_ptr[g + 1]].T.numpy(),
                                                     int(self.node_ptr[g + 1] - self.node_ptr[g])) for g in range(self.num_graphs)])
            counts = {"atoms": torch.from_numpy(np.concatenate([a for a, _ in per_graph])),
                      "bonds": torch.from_numpy(np.concatenate([b for _, b in per_graph]))}
            if path is not None:
                _save_verified(counts, path)
        return counts["atoms"], counts["bonds"]

    def subset(self, graphs: torch.Tensor) -> "GraphSet":
        """A GraphSet of the given graphs (their split kept where it applies); for tests and slices."""
        graphs = torch.as_tensor(graphs, dtype=torch.long)
        nodes = ranges(self.node_ptr, graphs)
        edges = ranges(self.edge_ptr, graphs)
        position = torch.full((self.num_graphs,), -1, dtype=torch.long)
        position[graphs] = torch.arange(len(graphs))
        split = {name: position[idx][position[idx] >= 0].sort().values for name, idx in self.split.items()}
        return GraphSet(
            self.name, self.task_type, self.metric, self.task_names,
            self.atoms[nodes], self.bonds[edges], self.edges[:, edges],
            counts_to_ptr(self.num_nodes()[graphs]), counts_to_ptr(self.num_edges()[graphs]),
            self.y[graphs], split, self.checksum, None,
            None if self.pe is None else self.pe[nodes],
        )

    def summary(self) -> dict:
        labelled = ~torch.isnan(self.y)
        info = {
            "name": self.name,
            "graphs": self.num_graphs,
            "tasks": self.num_tasks,
            "task_type": self.task_type,
            "metric": self.metric,
            "label_coverage": round(float(labelled.float().mean()), 4),
            "split": {name: len(idx) for name, idx in self.split.items()},
            "atoms_per_graph": {"mean": round(float(self.num_nodes().float().mean()), 2), "max": int(self.num_nodes().max())},
            "bonds_per_graph": {"mean": round(float(self.num_edges().float().mean()) / 2, 2), "max": int(self.num_edges().max()) // 2},
        }
        if self.task_type == "classification":
            info["positives"] = int(torch.nansum(self.y))
        return info


def cache_root() -> Path:
    return Path(os.environ.get("GGT_SEARCH_CACHE", Path.home() / ".cache" / "ggt-search"))


def _save_verified(obj, path: Path) -> None:
    """torch.save, then the file's sha256 beside it (`graphs.pt.sha256`).

    Written then renamed, so a run killed mid-write never leaves a truncated file under the
    real name; the checksum is written last, so a file without a matching one is never trusted.
    """
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    digest = file_sha256(tmp)
    os.replace(tmp, path)
    checksum = _checksum_file(path)
    checksum.with_suffix(f".tmp{os.getpid()}").write_text(digest)
    os.replace(checksum.with_suffix(f".tmp{os.getpid()}"), checksum)


def _load_verified(path: Path):
    """The cached object, or None when it must be (re)built: missing, or failing its checksum (said in one line)."""
    if not path.exists():
        return None
    checksum = _checksum_file(path)
    if not checksum.exists() or checksum.read_text().strip() != file_sha256(path):
        print(f"warning: cache file {path} is damaged (its checksum does not match); rebuilding it", file=sys.stderr)
        return None
    return torch.load(path, weights_only=True)


def _checksum_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def embedded_csv() -> Path:
    from rdkit import RDConfig

    return Path(RDConfig.RDDataDir) / "NCI" / "first_5k.tpsa.csv"


def load_dataset(spec: DatasetSpec | str, *, rebuild: bool = False) -> GraphSet:
    """The dataset's GraphSet, from the cache when it is there."""
    if isinstance(spec, str):
        spec = DatasetSpec(spec)
    source = _resolve_source(spec)
    checksum = file_sha256(source) if source.is_file() else "ogb-download"
    content = {k: v for k, v in spec.to_dict().items() if k != "source"}  # the checksum stands for the file
    key = hashlib.sha256(json.dumps([FEATURIZATION_VERSION, content, checksum], sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_root() / f"{Path(spec.name).stem}-{key}"
    path = folder / "graphs.pt"
    stored = None if rebuild else _load_verified(path)
    if stored is not None:
        return GraphSet(**stored, cache_dir=folder)
    if source.is_file():
        graphs = _build_from_table(spec, source)
    else:
        graphs = _read_ogb_raw(spec.name, source)
    graphs.checksum = checksum
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("pe-k*.pt"):
        stale.unlink()
    stored = {k: v for k, v in graphs.__dict__.items() if k not in ("cache_dir", "pe")}
    _save_verified(stored, path)
    graphs.cache_dir = folder
    return graphs


def _resolve_source(spec: DatasetSpec) -> Path:
    """The file (or OGB download folder) a dataset is built from; one clear error otherwise."""
    if spec.name == EMBEDDED:
        return embedded_csv()
    if spec.name in OGB_DATASETS:
        if spec.source is None:
            return _download_ogb(spec.name)
        source = Path(spec.source).expanduser()
        table = OGB_DATASETS[spec.name].moleculenet_file
        if source.is_dir():
            if table is None:
                raise UserError(f"{spec.name} has no MoleculeNet table offline; pass the OGB download folder or a CSV file as --source")
            source = source / table
        if not source.is_file():
            raise UserError(f"source file not found: {source}; pass the MoleculeNet table of {spec.name} ({table or 'a CSV file'})")
        return source
    if spec.name.startswith("ogbg-"):
        raise UserError(f"unknown OGB dataset {spec.name!r}; known: {', '.join(OGB_DATASETS)}, {EMBEDDED}, or a path to a CSV file")
    path = Path(spec.name).expanduser()
    if not path.is_file():
        raise UserError(f"dataset {spec.name!r} is neither a known name ({', '.join(OGB_DATASETS)}, {EMBEDDED}) nor an existing CSV file")
    return path


def _download_ogb(name: str) -> Path:
    """OGB's zip, fetched with ogb's own URL table and helpers; returns the extracted folder.

    GGT_SEARCH_OGB_MIRROR=URL fetches the same file names from a mirror (or a local copy
    served over HTTP) instead of OGB's servers.
    """
    import ogb.graphproppred as ogb_graph
    from ogb.utils.url import download_url, extract_zip

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


def _read_ogb_raw(name: str, folder: Path) -> GraphSet:
    """OGB's raw layout: raw/*.csv.gz (one row per bond, atom indices per graph) + split/scaffold."""
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
    graphs = GraphSet(
        name=name,
        task_type="classification" if OGB_DATASETS[name].metric in ("rocauc", "ap") else "regression",
        metric=OGB_DATASETS[name].metric,
        task_names=[f"task{i}" for i in range(table("graph-label.csv.gz", np.float32).shape[1])],
        atoms=torch.from_numpy(table("node-feat.csv.gz")),
        bonds=torch.from_numpy(np.repeat(bond_features, 2, axis=0)),
        edges=torch.from_numpy(np.ascontiguousarray(directed.T)),
        node_ptr=counts_to_ptr(torch.from_numpy(num_nodes)),
        edge_ptr=torch.from_numpy(2 * bond_ptr),
        y=torch.from_numpy(table("graph-label.csv.gz", np.float32)),
        split={s: torch.from_numpy(pd.read_csv(folder / "split" / "scaffold" / f"{s}.csv.gz", header=None).to_numpy(np.int64).ravel()) for s in SPLITS},
    )
    return graphs


def _read_table(spec: DatasetSpec, path: Path) -> tuple[pd.Series, pd.DataFrame]:
    try:
        if spec.name == EMBEDDED:
            frame = pd.read_csv(path, skiprows=1, header=None, names=["smiles", "tpsa"])  # line 1: a comment
        else:
            frame = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise UserError(f"cannot read {path} as CSV: {str(error).splitlines()[0]}") from None
    known = OGB_DATASETS.get(spec.name)  # an OGB name built offline knows its table's columns
    default_smiles = known.smiles_column if known else "smiles"
    smiles_column = spec.smiles_column or next((c for c in frame.columns if str(c).lower() == default_smiles.lower()), None)
    if smiles_column is None:
        raise UserError(f"{path} has no {default_smiles!r} column; name it with --smiles-column (columns: {', '.join(map(str, frame.columns))})")
    targets = list(spec.target_columns or (known.targets if known and known.targets else [c for c in frame.columns if c != smiles_column]))
    missing = [c for c in [smiles_column, *targets] if c not in frame.columns]
    if missing:
        raise UserError(f"{path} has no column(s) {missing}; columns are: {', '.join(map(str, frame.columns))}")
    if not targets:
        raise UserError(f"{path} has no target column besides {smiles_column!r}")
    if frame.empty:
        raise UserError(f"{path} has a header but no rows; add molecules (one SMILES and its labels per row)")
    labels = frame[targets].apply(pd.to_numeric, errors="coerce")
    bad = [c for c in targets if labels[c].isna().sum() > frame[c].isna().sum()]
    if bad:
        raise UserError(f"target column(s) {bad} of {path} hold non-numeric values; choose numeric columns with --targets")
    empty = [c for c in targets if labels[c].isna().all()]
    if empty:
        raise UserError(f"target column(s) {empty} of {path} hold no labels at all; fill them or leave them out with --targets")
    return frame[smiles_column].astype(str), labels


def _build_from_table(spec: DatasetSpec, path: Path) -> GraphSet:
    smiles, labels = _read_table(spec, path)
    parsed = parallel_map(featurize, smiles.tolist())
    invalid = [row for row, graph in enumerate(parsed) if graph is None]
    if invalid:
        lines = ", ".join(str(r + 2) for r in invalid[:10]) + (" ..." if len(invalid) > 10 else "")
        if spec.invalid_smiles != "skip" or len(invalid) == len(parsed):
            what = "no SMILES could be parsed" if len(invalid) == len(parsed) else f"{len(invalid)} SMILES could not be parsed"
            fix = "check the SMILES column" if len(invalid) == len(parsed) else "fix them, or pass --invalid-smiles skip to drop them"
            raise UserError(f"{what} in {path} (line {lines}); {fix}")
        print(f"warning: skipped {len(invalid)} unparsable SMILES of {path} (line {lines})")
    keep = [row for row, graph in enumerate(parsed) if graph is not None]
    graphs = [parsed[row] for row in keep]
    y = labels.to_numpy(np.float32)[keep]

    if spec.name in OGB_DATASETS or spec.name == EMBEDDED:
        task_type = "classification" if spec.name in OGB_DATASETS and OGB_DATASETS[spec.name].metric in ("rocauc", "ap") else "regression"
        metric = OGB_DATASETS[spec.name].metric if spec.name in OGB_DATASETS else "rmse"
        split = scaffold_split([g.scaffold for g in graphs])
    else:
        observed = y[~np.isnan(y)]
        task_type = spec.task_type or ("classification" if np.isin(observed, [0, 1]).all() else "regression")
        if task_type == "classification" and not np.isin(observed, [0, 1]).all():
            raise UserError(f"--task-type classification needs 0/1 labels, but {path} has others; use --task-type regression")
        metric = "rocauc" if task_type == "classification" else "rmse"
        split = scaffold_split([g.scaffold for g in graphs]) if spec.split == "scaffold" else random_split(len(graphs), spec.split_seed)
    _check_split(path, spec, y, split, metric)

    num_nodes = torch.tensor([len(g.atoms) for g in graphs])
    num_edges = torch.tensor([g.edges.shape[1] for g in graphs])
    return GraphSet(
        name=spec.name if spec.name in OGB_DATASETS or spec.name == EMBEDDED else Path(spec.name).stem,
        task_type=task_type,
        metric=metric,
        task_names=list(labels.columns),
        atoms=torch.from_numpy(np.concatenate([g.atoms for g in graphs])),
        bonds=torch.from_numpy(np.concatenate([g.bonds for g in graphs])),
        edges=torch.from_numpy(np.concatenate([g.edges for g in graphs], axis=1)),
        node_ptr=counts_to_ptr(num_nodes),
        edge_ptr=counts_to_ptr(num_edges),
        y=torch.from_numpy(y),
        split={name: torch.from_numpy(idx).long() for name, idx in zip(SPLITS, split)},
    )


def _check_split(path: Path, spec: DatasetSpec, y: np.ndarray, split, metric: str) -> None:
    """Refuse, before any training, a split that cannot train or score: an empty part, or no scorable labels."""
    fix = ("use more molecules, or --split random" if spec.split == "scaffold" else "use more molecules")
    for name, rows in zip(SPLITS, split):
        labelled = ~np.isnan(y[rows])
        if not labelled.any():
            held = "no molecules" if len(rows) == 0 else f"{len(rows)} molecules but no labels"
            raise UserError(f"the {spec.split} split of {path} leaves {name} with {held}; {fix}")
        if metric in ("rocauc", "ap") and name != "train":
            both = [((y[rows, t][labelled[:, t]] == 1).any() and (y[rows, t][labelled[:, t]] == 0).any()) for t in range(y.shape[1])]
            if not any(both):
                raise UserError(f"the {spec.split} split of {path} leaves {name} with one class only, so {metric} is undefined there; {fix}")


def held_out_smiles(spec: DatasetSpec) -> set[str]:
    """Canonical SMILES of a dataset's validation and test molecules: what pre-training must not see."""
    source = _resolve_source(spec)
    if not source.is_file():
        raise UserError(f"the leakage guard needs {spec.name}'s SMILES table; build it offline with --source")
    smiles, _ = _read_table(spec, source)
    kept = [c for c in parallel_map(canonical_smiles, smiles.tolist()) if c is not None]  # the GraphSet's rows, in order
    graphs = load_dataset(spec)
    if len(kept) != graphs.num_graphs:
        raise UserError(f"cannot align {spec.name}'s SMILES with its graphs ({len(kept)} vs {graphs.num_graphs}); rebuild it with --rebuild")
    return {kept[i] for split in ("valid", "test") for i in graphs.split[split].tolist()}


def load_corpus(path: Path, smiles_column: str | None, max_molecules: int | None, exclude: set[str], chunk: int = 50_000) -> tuple[GraphSet, int]:
    """An unlabeled SMILES file as a GraphSet (every molecule in "train"), without the `exclude`d
    molecules; (graphs, how many were excluded). Featurized in chunks, with a progress bar, and cached."""
    if not path.is_file():
        raise UserError(f"corpus file not found: {path}")
    key = hashlib.sha256(json.dumps([FEATURIZATION_VERSION, file_sha256(path), smiles_column, max_molecules, sorted(exclude)]).encode()).hexdigest()[:16]
    folder = cache_root() / f"corpus-{path.name.split('.')[0]}-{key}"
    stored = _load_verified(folder / "graphs.pt")
    if stored is not None:
        return GraphSet(**stored["graphs"], cache_dir=folder), stored["excluded"]
    try:
        column = smiles_column or next(c for c in pd.read_csv(path, nrows=0).columns if str(c).lower() == "smiles")
        reader = pd.read_csv(path, usecols=[column], nrows=max_molecules, chunksize=chunk)
    except (StopIteration, ValueError, pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError):
        raise UserError(f"{path} has no SMILES column of that name; name it with --smiles-column") from None
    from tqdm import tqdm

    graphs, excluded = [], 0
    for frame in tqdm(reader, desc=f"featurizing {path.name}", unit="chunk", disable=not sys.stderr.isatty()):
        smiles = frame[column].astype(str).tolist()
        canonical = parallel_map(canonical_smiles, smiles)
        keep = [s for s, c in zip(smiles, canonical) if c is not None and c not in exclude]
        excluded += sum(1 for c in canonical if c is not None and c in exclude)
        graphs += [g for g in parallel_map(featurize, keep) if g is not None]
    if not graphs:
        raise UserError(f"no molecule of {path} could be parsed; check the SMILES column")
    corpus = GraphSet(
        name=path.name, task_type="pretraining", metric="masked-atom accuracy", task_names=[],
        atoms=torch.from_numpy(np.concatenate([g.atoms for g in graphs])),
        bonds=torch.from_numpy(np.concatenate([g.bonds for g in graphs])),
        edges=torch.from_numpy(np.concatenate([g.edges for g in graphs], axis=1)),
        node_ptr=counts_to_ptr(torch.tensor([len(g.atoms) for g in graphs])),
        edge_ptr=counts_to_ptr(torch.tensor([g.edges.shape[1] for g in graphs])),
        y=torch.zeros(len(graphs), 0), split={"train": torch.arange(len(graphs)), "valid": torch.arange(0), "test": torch.arange(0)},
        checksum=file_sha256(path),
    )
    folder.mkdir(parents=True, exist_ok=True)
    _save_verified({"graphs": {k: v for k, v in corpus.__dict__.items() if k not in ("cache_dir", "pe")}, "excluded": excluded}, folder / "graphs.pt")
    corpus.cache_dir = folder
    return corpus, excluded
