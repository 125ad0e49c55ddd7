"""The Gated Graph Transformer (Joshi, 2020), every documented idea behind one config field.

A block is a pre-norm residual Transformer block whose attention is a graph convolution:

    h, e = h + MP(Norm(h), Norm(e))            message passing over the molecule's bonds
    h    = h + FFN_h(Norm(h))                  node-wise feed-forward, expansion r
    e    = e + FFN_e(Norm(e))                  bond-wise feed-forward, its own weights

Around the blocks: OGB's atom/bond encoders, Laplacian PEs injected into h0, an optional
virtual node, and a readout of [pool(h) || pool(e)]. The spec is
`shared/spec/gated-graph-transformer.md`; the field that switches each idea:

| idea                                   | field(s)                                   |
|----------------------------------------|--------------------------------------------|
| anisotropic (edge-gated) convolution   | conv: gated-gcn / gcn / mlp                |
| large feed-forward sub-layer           | ffn, ffn_ratio                             |
| deep residual pre-norm backbone        | residual, norm_position, layers            |
| graph-specific normalization           | norm: batch / layer / graph / none         |
| Laplacian PE as node ids               | pe_dim, pe_sign_flip, pe_injection         |
| expressive aggregation                 | aggregation: gated / pna                   |
| virtual node                           | virtual_node                               |
| overparameterization                   | hidden, layers                             |
"""

from __future__ import annotations

import torch
from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder
from torch import nn
from torch_geometric.nn import GraphNorm, MessagePassing
from torch_geometric.nn.aggr import DegreeScalerAggregation
from torch_geometric.utils import scatter

from ggt_search.batching import Batch, Segments
from ggt_search.config import ModelConfig
from ggt_search.indexing import ranges

class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics skip the rows a padded batch marks as padding.

    Without a mask it is nn.BatchNorm1d itself; with one, the same arithmetic (biased
    variance to normalise, unbiased for the running estimate) over the real rows only.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None or not self.training:
            return super().forward(x)
        x_ = x.to(self.running_mean.dtype)  # statistics in the parameters' precision, as under autocast
        weight = mask.unsqueeze(1).to(x_.dtype)
        count = weight.sum()
        mean = (x_ * weight).sum(0) / count
        var = ((x_ - mean) ** 2 * weight).sum(0) / count
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * count / (count - 1), self.momentum)
            self.num_batches_tracked.add_(1)
        return ((x_ - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias).to(x.dtype)


class Norm(nn.Module):
    """BatchNorm, LayerNorm, GraphNorm (per graph, needs the graph index) or nothing."""

    def __init__(self, kind: str, dim: int):
        super().__init__()
        self.kind = kind
        self.norm = {"batch": MaskedBatchNorm1d, "layer": nn.LayerNorm, "graph": GraphNorm, "none": lambda _: nn.Identity()}[kind](dim)

    def forward(self, x: torch.Tensor, rows: Segments) -> torch.Tensor:
        if self.kind == "graph":  # per-graph statistics: the padding slot is a graph of its own
            return self.norm(x, rows.index, rows.count)
        if self.kind == "batch":
            return self.norm(x, rows.mask)
        return self.norm(x)


class Dropout(nn.Dropout):
    """nn.Dropout whose CPU mask is drawn with torch.rand: CPU `bernoulli_` is ~3x slower and
    was half of a CPU training step (`ggt-search bench --profile`). Same distribution; CUDA
    keeps the fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda or not self.training or self.p == 0:
            return super().forward(x)
        keep = torch.rand_like(x).ge_(self.p).mul_(1 / (1 - self.p))  # in place: 0 or 1/(1-p), no bool casts
        return x * keep


class FeedForward(nn.Sequential):
    """Linear(d -> r d) -> ReLU -> Dropout -> Linear(r d -> d_out)."""

    def __init__(self, dim: int, ratio: int, dropout: float, dim_in: int | None = None, dim_out: int | None = None):
        super().__init__(
            nn.Linear(dim_in or dim, ratio * dim), nn.ReLU(), Dropout(dropout), nn.Linear(ratio * dim, dim_out or dim)
        )


def pna_aggregation(dim: int, degree_histogram: torch.Tensor) -> nn.Module:
    """PNA: mean/min/max/std, each scaled by identity/amplification/attenuation, mixed back to d."""
    return nn.ModuleDict({
        "aggregate": DegreeScalerAggregation(["mean", "min", "max", "std"], ["identity", "amplification", "attenuation"], degree_histogram),
        "mix": nn.Linear(12 * dim, dim),
    })


class GatedGCNConv(MessagePassing):
    r"""Edge-gated graph convolution with edge-state updates (Bresson & Laurent, 2017).

    .. math::
        e'_{ij} = C h_j + D h_i + E e_{ij}, \qquad s_{ij} = \sigma(e'_{ij})

        h'_i = A h_i + \frac{\sum_{j \to i} s_{ij} \odot B h_j}{\sum_{j \to i} s_{ij} + \epsilon}

    One gate per feature channel per edge (dense attention), returned with the new edge
    states e'. With `aggregation="pna"` the gated messages are aggregated PNA-style instead.
    """

    updates_edges = True

    def __init__(self, dim: int, aggregation: str = "gated", degree_histogram: torch.Tensor | None = None, eps: float = 1e-10):
        super().__init__()
        self.A, self.B, self.C, self.D, self.E = (nn.Linear(dim, dim) for _ in range(5))
        self.pna = pna_aggregation(dim, degree_histogram) if aggregation == "pna" else None
        self.eps = eps

    def forward(self, h: torch.Tensor, e: torch.Tensor, edge_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        source, target = edge_index
        # index_select, not h[source]: the same gather, and its backward is an index_add
        # (several times faster than indexing's index_put on CPU)
        e_new = self.C(h).index_select(0, source) + self.D(h).index_select(0, target) + self.E(e)
        h_new = self.A(h) + self.propagate(edge_index, Bh=self.B(h), gate=torch.sigmoid(e_new))
        return h_new, e_new

    def message(self, Bh_j: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return gate * Bh_j

    def aggregate(self, messages: torch.Tensor, index: torch.Tensor, gate: torch.Tensor, dim_size: int) -> torch.Tensor:
        if self.pna is not None:
            return self.pna["mix"](self.pna["aggregate"](messages, index, dim_size=dim_size))
        # Sums in float32 even under bf16 autocast: a normalised sum of many small gates.
        numerator = scatter(messages.float(), index, 0, dim_size, reduce="sum")
        denominator = scatter(gate.float(), index, 0, dim_size, reduce="sum")
        return (numerator / (denominator + self.eps)).to(messages.dtype)


class MeanConv(MessagePassing):
    r"""Isotropic convolution: :math:`h'_i = A h_i + \mathrm{mean}_{j \to i} B h_j` (edges untouched).

    The reference's `gcn` option. Not PyG's GCNConv, which normalises symmetrically by
    both degrees. With `aggregation="pna"` the mean is replaced by PNA's aggregators and
    degree scalers.
    """

    updates_edges = False

    def __init__(self, dim: int, aggregation: str = "gated", degree_histogram: torch.Tensor | None = None):
        super().__init__()
        self.A, self.B = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.pna = pna_aggregation(dim, degree_histogram) if aggregation == "pna" else None

    def forward(self, h: torch.Tensor, e: torch.Tensor, edge_index: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.A(h) + self.propagate(edge_index, Bh=self.B(h)), None

    def message(self, Bh_j: torch.Tensor) -> torch.Tensor:
        return Bh_j

    def aggregate(self, messages: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
        if self.pna is not None:
            return self.pna["mix"](self.pna["aggregate"](messages, index, dim_size=dim_size))
        return scatter(messages, index, 0, dim_size, reduce="mean")


CONVOLUTIONS = {"gated-gcn": GatedGCNConv, "gcn": MeanConv}  # conv "mlp": no message passing at all


class Block(nn.Module):
    """One Transformer block: a message-passing sub-layer, then node and edge FFN sub-layers.

    Each sub-layer is x + f(Norm(x)) (pre-norm, the default), Norm(x + f(x)) (post-norm),
    or without the `x +` when `residual` is off.
    """

    def __init__(self, config: ModelConfig, degree_histogram: torch.Tensor | None):
        super().__init__()
        d, c = config.hidden, config
        self.pre_norm, self.residual = c.norm_position == "pre", c.residual
        self.conv = CONVOLUTIONS[c.conv](d, c.aggregation, degree_histogram) if c.conv in CONVOLUTIONS else None
        self.norm_mp_h = Norm(c.norm, d) if self.conv is not None else None
        self.norm_mp_e = Norm(c.norm, d) if self.conv is not None and self.conv.updates_edges else None
        self.ffn_h = FeedForward(d, c.ffn_ratio, c.dropout) if c.ffn else None
        self.ffn_e = FeedForward(d, c.ffn_ratio, c.dropout) if c.ffn else None
        self.norm_ffn_h = Norm(c.norm, d) if c.ffn else None
        self.norm_ffn_e = Norm(c.norm, d) if c.ffn else None

    def forward(self, h: torch.Tensor, e: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        nodes, edges = batch.nodes, batch.edges
        if self.conv is not None:  # h, e = h + MP(Norm(h), Norm(e))
            e_in = self.sublayer_input(e, self.norm_mp_e, edges) if self.conv.updates_edges else e
            h_mp, e_mp = self.conv(self.sublayer_input(h, self.norm_mp_h, nodes), e_in, batch.edge_index)
            h = self.sublayer_output(h, h_mp, self.norm_mp_h, nodes)
            if self.conv.updates_edges:
                e = self.sublayer_output(e, e_mp, self.norm_mp_e, edges)
        if self.ffn_h is not None:  # h = h + FFN_h(Norm(h));  e = e + FFN_e(Norm(e))
            h = self.sublayer_output(h, self.ffn_h(self.sublayer_input(h, self.norm_ffn_h, nodes)), self.norm_ffn_h, nodes)
            e = self.sublayer_output(e, self.ffn_e(self.sublayer_input(e, self.norm_ffn_e, edges)), self.norm_ffn_e, edges)
        return h, e

    def sublayer_input(self, x: torch.Tensor, norm: Norm, rows: Segments) -> torch.Tensor:
        return norm(x, rows) if self.pre_norm else x

    def sublayer_output(self, x: torch.Tensor, out: torch.Tensor, norm: Norm, rows: Segments) -> torch.Tensor:
        out = x + out if self.residual else out
        return out if self.pre_norm else norm(out, rows)


class GatedGraphTransformer(nn.Module):
    def __init__(self, config: ModelConfig, num_tasks: int, degree_histogram: torch.Tensor | None = None):
        super().__init__()
        if config.aggregation == "pna" and degree_histogram is None:
            raise ValueError("PNA aggregation needs the training set's in-degree histogram")
        d, c = config.hidden, config
        self.config = config
        self.atom_encoder, self.bond_encoder = AtomEncoder(d), BondEncoder(d)
        if c.pe_dim and c.pe_injection == "concat-mlp":
            self.pe_encoder = FeedForward(d, 4, c.dropout, dim_in=d + c.pe_dim)
        elif c.pe_dim:
            self.pe_encoder = nn.Linear(c.pe_dim, d)
        self.blocks = nn.ModuleList(Block(c, degree_histogram) for _ in range(c.layers))
        if c.virtual_node:
            self.virtual_node = nn.Embedding(1, d)
            nn.init.zeros_(self.virtual_node.weight)
            self.virtual_norms = nn.ModuleList(MaskedBatchNorm1d(d) for _ in range(c.layers - 1))
            self.virtual_mlps = nn.ModuleList(FeedForward(d, 4, c.dropout) for _ in range(c.layers - 1))
        self.readout = FeedForward(2 * d, 2, c.dropout, dim_out=num_tasks)  # Linear(2d -> 4d) ... Linear(4d -> tasks)

    def pool(self, x: torch.Tensor, rows: Segments) -> torch.Tensor:
        """One row per graph slot (and the padding slot): mean, sum or max over the graph's rows."""
        return scatter(x, rows.index, 0, rows.count, reduce=self.config.pooling)

    def positional_encoding(self, batch: Batch) -> torch.Tensor:
        """The batch's PEs, with eigenvector signs flipped at random while training."""
        pe = batch.pe[:, : self.config.pe_dim]
        if self.training and self.config.pe_sign_flip != "off":
            rows = 1 if self.config.pe_sign_flip == "batch" else batch.num_segments
            sign = torch.randint(0, 2, (rows, pe.shape[1]), device=pe.device) * 2 - 1
            pe = pe * (sign if rows == 1 else sign[batch.node_graph])
        return pe

    def forward(self, batch: Batch) -> torch.Tensor:
        c = self.config
        h, e = self.atom_encoder(batch.atoms), self.bond_encoder(batch.bonds)
        if c.pe_dim:
            pe = self.positional_encoding(batch)
            h = self.pe_encoder(torch.cat([h, pe], -1)) if c.pe_injection == "concat-mlp" else h + self.pe_encoder(pe)
        vn = self.virtual_node.weight.expand(batch.num_segments, -1) if c.virtual_node else None
        for i, block in enumerate(self.blocks):
            if vn is not None:
                h = h + vn.index_select(0, batch.node_graph)
            h, e = block(h, e, batch)
            if vn is not None and i < c.layers - 1:
                vn = self.virtual_mlps[i](self.virtual_norms[i](vn + self.pool(h, batch.nodes), batch.graph_mask))
        pooled = torch.cat([self.pool(h, batch.nodes), self.pool(e, batch.edges)], -1)
        return self.readout(pooled[: batch.num_graphs])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def in_degree_histogram(graphs) -> torch.Tensor:
    """PNA's degree statistics, from the training split only."""
    train = graphs.split["train"]
    edges = ranges(graphs.edge_ptr, train)
    targets = graphs.edges[1, edges] + graphs.node_ptr[torch.repeat_interleave(train, graphs.num_edges()[train])]
    degree = torch.bincount(targets, minlength=int(graphs.node_ptr[-1]))[ranges(graphs.node_ptr, train)]
    return torch.bincount(degree)
