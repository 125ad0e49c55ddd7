"""GraphSet: a dataset's molecular graphs as flat tensors, and the verified files that cache it.

A GraphSet is a handful of flat tensors (all graphs concatenated, with pointer arrays),
cached on disk under a key of what decides its content (see `datasets.py`), so the
second load is a single `torch.load`; every cache file has its sha256 beside it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ggt_search.files import check_folder, file_sha256, save_tensors, write_text
from ggt_search.indexing import counts_to_ptr, ptr_to_counts, ranges
from ggt_search.molecules import CYCLE_LENGTHS, MolGraph, cycle_counts, parallel_map
from ggt_search.positional import laplacian_pe

SPLITS = ("train", "valid", "test")
DEFAULT_PE_CACHE_DIM = 20  # largest k of the default search space; smaller k slice it


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

    @classmethod
    def from_molecules(
        cls,
        molecules: list[MolGraph],
        *,
        name: str,
        task_type: str,
        metric: str,
        task_names: list[str],
        y: torch.Tensor,
        split: dict[str, torch.Tensor],
    ) -> GraphSet:
        """Featurized molecules (`molecules.featurize`), concatenated in order, with their labels and split."""
        return cls(
            name=name,
            task_type=task_type,
            metric=metric,
            task_names=task_names,
            atoms=torch.from_numpy(np.concatenate([g.atoms for g in molecules])),
            bonds=torch.from_numpy(np.concatenate([g.bonds for g in molecules])),
            edges=torch.from_numpy(np.concatenate([g.edges for g in molecules], axis=1)),
            node_ptr=counts_to_ptr(torch.tensor([len(g.atoms) for g in molecules])),
            edge_ptr=counts_to_ptr(torch.tensor([g.edges.shape[1] for g in molecules])),
            y=y,
            split=split,
        )

    def stored(self) -> dict:
        """What its cache file holds: every field but the folder and the PEs (cached apart, by k)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("cache_dir", "pe")}

    def inconsistency(self) -> str | None:
        """What makes these tensors no dataset (a cache file replaced by hand, checksum and all), or None."""
        tensors = ("atoms", "bonds", "edges", "node_ptr", "edge_ptr", "y")
        if not all(isinstance(getattr(self, name), torch.Tensor) for name in tensors):
            return "a field is not a tensor"
        graphs, nodes, edges = len(self.node_ptr) - 1, len(self.atoms), self.edges.shape[-1]
        shapes = {
            "atoms": self.atoms.dim() == 2,
            "bonds": self.bonds.dim() == 2 and len(self.bonds) == edges,
            "edges": self.edges.dim() == 2 and len(self.edges) == 2,
            "node_ptr": graphs >= 1 and self.node_ptr[0] == 0 and self.node_ptr[-1] == nodes,
            "edge_ptr": len(self.edge_ptr) == graphs + 1 and self.edge_ptr[0] == 0 and self.edge_ptr[-1] == edges,
            "y": self.y.dim() == 2 and len(self.y) == graphs,
            "split": set(self.split) == set(SPLITS)
            and all(len(i) == 0 or (0 <= int(i.min()) and int(i.max()) < graphs) for i in self.split.values()),
        }
        if bad := [name for name, fits in shapes.items() if not fits]:
            return f"{', '.join(bad)} do not fit the rest"
        if (ptr_to_counts(self.node_ptr) < 0).any() or (ptr_to_counts(self.edge_ptr) < 0).any():
            return "node_ptr or edge_ptr decreases"
        atoms_of_edge = self.num_nodes().repeat_interleave(self.num_edges())
        if edges and (self.edges.min() < 0 or (self.edges >= atoms_of_edge).any()):
            return "an edge names an atom outside its graph"
        return None

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
        self.pe = load_verified(path) if path is not None else None
        if self.pe is None:
            self.pe = laplacian_pe(self.edges, self.node_ptr, self.edge_ptr, k_cached)
            if path is not None:
                save_verified(self.pe, path)
        return self.pe

    def load_substructures(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(atoms [N, 6], bonds [E, 6]): on how many simple cycles of length 3..8 each lies; cached like the PEs."""
        path = self.cache_dir / f"cycles-{CYCLE_LENGTHS[0]}-{CYCLE_LENGTHS[-1]}.pt" if self.cache_dir else None
        counts = load_verified(path) if path is not None else None
        if counts is None:
            per_graph = parallel_map(
                cycle_counts,
                [
                    (
                        self.edges[:, self.edge_ptr[g] : self.edge_ptr[g + 1]].T.numpy(),
                        int(self.node_ptr[g + 1] - self.node_ptr[g]),
                    )
                    for g in range(self.num_graphs)
                ],
                f"cycle counts of {self.name}",
            )
            counts = {
                "atoms": torch.from_numpy(np.concatenate([a for a, _ in per_graph])),
                "bonds": torch.from_numpy(np.concatenate([b for _, b in per_graph])),
            }
            if path is not None:
                save_verified(counts, path)
        return counts["atoms"], counts["bonds"]

    def subset(self, graphs: torch.Tensor) -> GraphSet:
        """A GraphSet of the given graphs (their split kept where it applies); for tests and slices."""
        graphs = torch.as_tensor(graphs, dtype=torch.long)
        nodes = ranges(self.node_ptr, graphs)
        edges = ranges(self.edge_ptr, graphs)
        position = torch.full((self.num_graphs,), -1, dtype=torch.long)
        position[graphs] = torch.arange(len(graphs))
        split = {name: position[idx][position[idx] >= 0].sort().values for name, idx in self.split.items()}
        return GraphSet(
            self.name,
            self.task_type,
            self.metric,
            self.task_names,
            self.atoms[nodes],
            self.bonds[edges],
            self.edges[:, edges],
            counts_to_ptr(self.num_nodes()[graphs]),
            counts_to_ptr(self.num_edges()[graphs]),
            self.y[graphs],
            split,
            self.checksum,
            None,
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
            "atoms_per_graph": {
                "mean": round(float(self.num_nodes().float().mean()), 2),
                "max": int(self.num_nodes().max()),
            },
            "bonds_per_graph": {
                "mean": round(float(self.num_edges().float().mean()) / 2, 2),
                "max": int(self.num_edges().max()) // 2,
            },
        }
        if self.task_type == "classification":
            info["positives"] = int(torch.nansum(self.y))
        return info


def cache_root() -> Path:
    root = Path(os.environ.get("GGT_SEARCH_CACHE", Path.home() / ".cache" / "ggt-search"))
    check_folder(root, "the dataset cache (GGT_SEARCH_CACHE)")
    return root


def save_verified(obj, path: Path) -> None:
    """torch.save, then the file's sha256 beside it (`graphs.pt.sha256`).

    Both written atomically, so a run killed (or a disk filled) mid-write never leaves a truncated
    file under the real name; the checksum is written last, so a file without a matching one is never trusted.
    """
    save_tensors(obj, path)
    write_text(_checksum_file(path), file_sha256(path))


def load_verified(path: Path):
    """The cached object, or None when it must be (re)built: missing, or failing its checksum (said in one line)."""
    if not path.exists():
        return None
    checksum = _checksum_file(path)
    if not checksum.exists() or checksum.read_text().strip() != file_sha256(path):
        print(f"warning: cache file {path} is damaged (its checksum does not match); rebuilding it", file=sys.stderr)
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception as error:  # a file that matches its checksum but is no tensor file (written by hand)
        print(f"warning: cache file {path} cannot be read ({type(error).__name__}); rebuilding it", file=sys.stderr)
        return None


def _checksum_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")
