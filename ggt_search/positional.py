"""Laplacian eigenvector positional encodings, for all graphs of a dataset at once.

For each graph, L = I - D^-1/2 A D^-1/2 (degrees clipped at 1, so an isolated atom, a
counter-ion such as [Na+], has L_ii = 1). L is symmetric, so we use a symmetric solver
(`torch.linalg.eigh`: real eigenvalues in ascending order, orthonormal eigenvectors).

Decisions, where the reference code was silent or wrong:
- Trivial eigenvectors: a graph with c connected components (of two or more atoms) has c
  zero eigenvalues, whose eigenvectors are constant on each component and say nothing
  about position. All of them are dropped (|lambda| < 1e-6), not only the first one: a
  salt such as "CC(=O)[O-].[Na+]" keeps its informative eigenvectors.
- Small graphs: a graph with fewer than k non-trivial eigenvectors gets zero columns for
  the missing ones.
- Signs: an eigenvector's sign is arbitrary; the cache keeps the solver's choice and the
  model flips signs at random while training (`pe_sign_flip`).

`pe_values` replaces the eigenvectors by controls of the same shape (`positional_values`): zeros,
which keep the injection MLP but carry nothing, and random orthonormal columns with the same
zero-padding, which carry what the eigenvectors say of a molecule's size (how many columns,
entries of norm one over n atoms) and nothing of its structure.

Graphs are grouped by node count and each group is solved as one batched dense problem,
so a dataset of 41k molecules needs ~150 solver calls, not 41k.
"""

from __future__ import annotations

import torch

from ggt_search.indexing import ptr_to_counts, ranges
from ggt_search.progress import Progress

ZERO_EIGENVALUE = 1e-6


def laplacian_pe(edges: torch.Tensor, node_ptr: torch.Tensor, edge_ptr: torch.Tensor, k: int) -> torch.Tensor:
    """[num_nodes, k] float32 eigenvectors; `edges` holds per-graph (local) atom indices."""
    num_nodes = ptr_to_counts(node_ptr)
    pe = torch.zeros(int(node_ptr[-1]), k, dtype=torch.float32)
    if k == 0:
        return pe
    with Progress(len(num_nodes), f"Laplacian PEs (k={k})", "graphs") as bar:
        for n in torch.unique(num_nodes).tolist():
            graphs = torch.nonzero(num_nodes == n).flatten()
            pe_rows = node_ptr[graphs, None] + torch.arange(n)  # [g, n] rows of `pe`
            pe[pe_rows] = _eigenvectors_of_same_size(edges, edge_ptr, graphs, n, k)
            bar.update(len(graphs))
    return pe


def _eigenvectors_of_same_size(edges, edge_ptr, graphs, n: int, k: int) -> torch.Tensor:
    group_edges = ranges(edge_ptr, graphs)
    slot = torch.repeat_interleave(torch.arange(len(graphs)), edge_ptr[graphs + 1] - edge_ptr[graphs])
    adjacency = torch.zeros(len(graphs), n, n, dtype=torch.float64)
    src, dst = edges[:, group_edges]
    adjacency[slot, src, dst] = 1.0
    inv_sqrt_degree = adjacency.sum(-1).clamp(min=1).rsqrt()
    laplacian = (
        torch.eye(n, dtype=torch.float64) - inv_sqrt_degree[:, :, None] * adjacency * inv_sqrt_degree[:, None, :]
    )

    eigenvalues, eigenvectors = torch.linalg.eigh(laplacian)
    num_trivial = (eigenvalues.abs() < ZERO_EIGENVALUE).sum(-1, keepdim=True)  # [g, 1]
    columns = num_trivial + torch.arange(k)  # [g, k] columns to keep, past the trivial ones
    exists = columns < n
    picked = torch.gather(eigenvectors, 2, columns.clamp(max=n - 1)[:, None, :].expand(-1, n, -1))
    return (picked * exists[:, None, :]).float()


def positional_values(pe: torch.Tensor, node_ptr: torch.Tensor, values: str, seed: int) -> torch.Tensor:
    """The PE columns a run sees (`model.pe_values`): the eigenvectors `pe` themselves, zeros of their shape, or,
    per graph, random orthonormal columns (seeded by `seed`, the run's) where the graph's eigenvectors are."""
    if values == "laplacian":
        return pe
    if values == "zeros":
        return torch.zeros_like(pe)
    generator = torch.Generator().manual_seed(seed)
    out = torch.zeros_like(pe)
    for start, end in zip(node_ptr[:-1].tolist(), node_ptr[1:].tolist(), strict=True):
        present = pe[start:end].abs().sum(0) > 0  # the zero-padding of a small molecule stays zero
        if present.any():
            gaussian = torch.randn(end - start, int(present.sum()), generator=generator, dtype=torch.float64)
            out[start:end, present] = torch.linalg.qr(gaussian).Q.to(pe.dtype)
    return out
