"""Mini-batches by index arithmetic on a dataset that lives on the training device.

The conventional PyG loop collates Python `Data` objects and copies every batch to the
GPU; for molecules (25 atoms each) that leaves the GPU idle most of the time. Here the
whole GraphSet is moved to the device once, and a batch is a few gathers: the atoms and
bonds of the chosen graphs, and their edge indices shifted to the batch's numbering.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ggt_search.datasets import GraphSet
from ggt_search.indexing import counts_to_ptr, ranges


@dataclass
class Batch:
    atoms: torch.Tensor  # [n, 9]
    bonds: torch.Tensor  # [e, 3]
    edge_index: torch.Tensor  # [2, e] atom indices within the batch (source, target)
    node_graph: torch.Tensor  # [n] which graph of the batch each atom belongs to
    edge_graph: torch.Tensor  # [e]
    num_graphs: int
    pe: torch.Tensor | None  # [n, k]
    y: torch.Tensor  # [num_graphs, tasks], NaN = missing


class DeviceGraphs:
    """A GraphSet's tensors on one device, cut into batches without leaving it."""

    def __init__(self, graphs: GraphSet, device: torch.device | str, pe_dim: int = 0):
        self.device = torch.device(device)
        to = lambda t: t.to(self.device, non_blocking=True)  # noqa: E731
        self.atoms, self.bonds, self.edges = to(graphs.atoms), to(graphs.bonds), to(graphs.edges)
        self.node_ptr, self.edge_ptr, self.y = to(graphs.node_ptr), to(graphs.edge_ptr), to(graphs.y)
        self.pe = to(graphs.load_pe(pe_dim)[:, :pe_dim].contiguous()) if pe_dim else None
        self.split = {name: to(idx) for name, idx in graphs.split.items()}
        self.num_nodes = self.node_ptr[1:] - self.node_ptr[:-1]
        self.num_edges = self.edge_ptr[1:] - self.edge_ptr[:-1]

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
        )

    def batches(self, split: str, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None):
        graphs = self.split[split]
        if shuffle:
            graphs = graphs[torch.randperm(len(graphs), generator=generator).to(self.device)]
        for start in range(0, len(graphs), batch_size):
            yield self.batch(graphs[start:start + batch_size])
