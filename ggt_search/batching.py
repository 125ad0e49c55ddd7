"""Mini-batches by index arithmetic on a dataset that lives on the training device.

The conventional PyG loop collates Python `Data` objects and copies every batch to the
GPU; for molecules (25 atoms each) that leaves the GPU idle most of the time. Here the
whole GraphSet is moved to the device once, and a batch is a few gathers: the atoms and
bonds of the chosen graphs, and their edge indices shifted to the batch's numbering.

Padded batches go one step further for CUDA graphs: every batch of an epoch has the
same shape (`batch_size` graph slots, a node budget and an edge budget), built without
any device-to-host sync. Rows past a batch's real atoms and bonds belong to one extra
padding slot (index `num_graphs`), which the model's pooling, normalisation and loss
leave out, so a padded batch computes exactly what the unpadded one does.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
from torch_geometric.utils import scatter

from ggt_search.indexing import counts_to_ptr, padded_ranges, ptr_to_counts, ranges

if TYPE_CHECKING:  # the type only: the model's batches need neither RDKit nor pandas
    from ggt_search.graphset import GraphSet


@dataclass(frozen=True)
class Segments:
    """Which graph each row (atom or bond) of a batch belongs to: what per-graph
    normalisation and pooling need, in one object."""

    index: torch.Tensor  # [rows] graph slot of each row (the padding slot for padding rows)
    count: int  # number of slots, the padding slot included
    mask: torch.Tensor | None  # [rows] True for real rows; None when every row is real


@dataclass
class Batch:
    atoms: torch.Tensor  # [n, 9]
    bonds: torch.Tensor  # [e, 3]
    edge_index: torch.Tensor  # [2, e] atom indices within the batch (source, target)
    node_graph: torch.Tensor  # [n] which graph slot each atom belongs to (num_graphs = padding)
    edge_graph: torch.Tensor  # [e]
    num_graphs: int  # graph slots: rows of y and of the model's output
    pe: torch.Tensor | None  # [n, k]
    y: torch.Tensor  # [num_graphs, tasks], NaN = missing (and every entry of an empty slot)
    real_graphs: int  # graphs actually in the batch (< num_graphs only in a padded last batch)
    max_nodes: int = 0  # atoms of the dataset's largest molecule: the dense width of global attention
    atom_cycles: torch.Tensor | None = None  # [n, 6] cycles of 3..8 atoms through each atom (model.substructures)
    bond_cycles: torch.Tensor | None = None  # [e, 6] the same for each bond
    # Padded batches only: which rows are real. None means every row is.
    node_mask: torch.Tensor | None = None  # [n]
    edge_mask: torch.Tensor | None = None  # [e]
    graph_mask: torch.Tensor | None = None  # [num_graphs + 1] slots holding a graph

    @property
    def num_segments(self) -> int:
        """Segments to pool into: the graph slots, plus the padding slot when padded."""
        return self.num_graphs + (self.node_mask is not None)

    @property
    def nodes(self) -> Segments:
        return Segments(self.node_graph, self.num_segments, self.node_mask)

    @property
    def edges(self) -> Segments:
        return Segments(self.edge_graph, self.num_segments, self.edge_mask)

    def shape(self) -> tuple[int, int, int]:
        return self.num_graphs, len(self.atoms), len(self.bonds)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}


class DeviceGraphs:
    """A GraphSet's tensors on one device, cut into batches without leaving it."""

    def __init__(
        self,
        graphs: GraphSet,
        device: torch.device | str,
        pe_dim: int = 0,
        substructures: bool = False,
        pe_values: str = "laplacian",
        seed: int = 0,
    ):
        """`pe_values` and `seed`: what the PE columns hold (`positional.positional_values`)."""
        self.device = torch.device(device)
        to = lambda t: t.to(self.device, non_blocking=True)  # noqa: E731
        self.atoms, self.bonds, self.edges = to(graphs.atoms), to(graphs.bonds), to(graphs.edges)
        self.node_ptr, self.edge_ptr, self.y = to(graphs.node_ptr), to(graphs.edge_ptr), to(graphs.y)
        self.pe = None
        if pe_dim:
            from ggt_search.positional import positional_values  # here: the model imports this module, not PE solving

            pe = graphs.load_pe(pe_dim)[:, :pe_dim].contiguous()
            self.pe = to(positional_values(pe, graphs.node_ptr, pe_values, seed))
        self.atom_cycles, self.bond_cycles = map(to, graphs.load_substructures()) if substructures else (None, None)
        self.split = {name: to(idx) for name, idx in graphs.split.items()}
        self.num_nodes, self.num_edges = ptr_to_counts(self.node_ptr), ptr_to_counts(self.edge_ptr)
        self.max_nodes = int(graphs.num_nodes().max())
        self.budget = (0, 0)  # the padded batches' (nodes, edges): only ever grows, so shapes repeat

    def batch(self, graphs: torch.Tensor) -> Batch:
        nodes = ranges(self.node_ptr, graphs)
        edges = ranges(self.edge_ptr, graphs)
        num_nodes, num_edges = self.num_nodes[graphs], self.num_edges[graphs]
        slots = torch.arange(len(graphs), device=self.device)
        node_graph = torch.repeat_interleave(slots, num_nodes, output_size=len(nodes))
        edge_graph = torch.repeat_interleave(slots, num_edges, output_size=len(edges))
        first_atom = counts_to_ptr(num_nodes)[:-1]  # where each graph's atoms start in the batch
        return Batch(
            atoms=self.atoms[nodes],
            bonds=self.bonds[edges],
            edge_index=self.edges[:, edges] + first_atom[edge_graph],
            node_graph=node_graph,
            edge_graph=edge_graph,
            num_graphs=len(graphs),
            pe=None if self.pe is None else self.pe[nodes],
            y=self.y[graphs],
            real_graphs=len(graphs),
            max_nodes=self.max_nodes,
            atom_cycles=None if self.atom_cycles is None else self.atom_cycles[nodes],
            bond_cycles=None if self.bond_cycles is None else self.bond_cycles[edges],
        )

    def padded_batch(self, graphs: torch.Tensor, slots: int, node_budget: int, edge_budget: int) -> Batch:
        """`graphs` (at most `slots` of them) cut to a fixed shape, with no host sync.

        The budgets must exceed the batch's atoms (so that the last atom row is padding,
        where padding bonds point) and cover its bonds.
        """
        nodes, node_graph, first_atom = padded_ranges(self.node_ptr, graphs, node_budget, slots)
        edges, edge_graph, _ = padded_ranges(self.edge_ptr, graphs, edge_budget, slots)
        node_mask, edge_mask = node_graph < slots, edge_graph < slots
        # A Python scalar, not torch.tensor(...): copying a host tensor to the GPU would sync.
        edge_index = torch.where(
            edge_mask, self.edges[:, edges] + first_atom[edge_graph.clamp(max=len(graphs) - 1)], node_budget - 1
        )
        y = self.y.new_full((slots, self.y.shape[1]), float("nan"))
        y[: len(graphs)] = self.y[graphs]
        graph_mask = torch.arange(slots + 1, device=self.device) < len(graphs)
        return Batch(
            atoms=self.atoms[nodes],
            bonds=self.bonds[edges],
            edge_index=edge_index,
            node_graph=node_graph,
            edge_graph=edge_graph,
            num_graphs=slots,
            pe=None if self.pe is None else self.pe[nodes] * node_mask.unsqueeze(1),
            y=y,
            real_graphs=len(graphs),
            max_nodes=self.max_nodes,
            atom_cycles=None if self.atom_cycles is None else self.atom_cycles[nodes],
            bond_cycles=None if self.bond_cycles is None else self.bond_cycles[edges],
            node_mask=node_mask,
            edge_mask=edge_mask,
            graph_mask=graph_mask,
        )

    def batches(
        self,
        graphs: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        padded: bool = False,
    ):
        """`graphs` (dataset indices, e.g. `self.split["train"]`) in batches of `batch_size`."""
        if shuffle:
            graphs = graphs[torch.randperm(len(graphs), generator=generator).to(self.device)]
        if padded:
            self.budget = tuple(
                max(old, round_up(new + 1)) for old, new in zip(self.budget, self.largest_batch(graphs, batch_size))
            )
        for start in range(0, len(graphs), batch_size):
            chosen = graphs[start : start + batch_size]
            yield self.padded_batch(chosen, batch_size, *self.budget) if padded else self.batch(chosen)

    def largest_batch(self, order: torch.Tensor, batch_size: int) -> tuple[int, int]:
        """The most atoms and bonds in any batch of `order`: the epoch's one host sync."""
        batch_of = torch.arange(len(order), device=self.device) // batch_size
        atoms = scatter(self.num_nodes[order], batch_of, reduce="sum")
        bonds = scatter(self.num_edges[order], batch_of, reduce="sum")
        return tuple(torch.stack([atoms.max(), bonds.max()]).tolist())


def round_up(count: int) -> int:
    """Round up to a multiple of the power of two nearest count / 16 (at most 1/16 padding),
    so that epoch after epoch lands on the same few shapes."""
    quantum = max(1, 1 << max(count.bit_length() - 5, 0))
    return -(-count // quantum) * quantum
