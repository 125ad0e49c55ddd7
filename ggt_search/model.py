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

from dataclasses import dataclass

import torch
from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder
from torch import nn
from torch_geometric.nn import GraphNorm, MessagePassing
from torch_geometric.nn.aggr import DegreeScalerAggregation
from torch_geometric.utils import scatter

from ggt_search.batching import Batch
from ggt_search.errors import UserError
from ggt_search.indexing import ranges

CHOICES = {
    "conv": ("gated-gcn", "gcn", "mlp"),
    "norm": ("batch", "layer", "graph", "none"),
    "norm_position": ("pre", "post"),
    "pe_sign_flip": ("off", "batch", "graph"),
    "pe_injection": ("concat-mlp", "add"),
    "aggregation": ("gated", "pna"),
    "pooling": ("mean", "sum", "max"),
}


@dataclass
class ModelConfig:
    conv: str = "gated-gcn"
    norm: str = "batch"
    norm_position: str = "pre"
    residual: bool = True
    ffn: bool = True
    ffn_ratio: int = 4
    pe_dim: int = 10
    pe_sign_flip: str = "batch"
    pe_injection: str = "concat-mlp"
    aggregation: str = "gated"
    virtual_node: bool = False
    pooling: str = "mean"
    layers: int = 5
    hidden: int = 128
    dropout: float = 0.5

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"model.{name} = {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name, low in (("layers", 1), ("hidden", 1), ("ffn_ratio", 1), ("pe_dim", 0)):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < low:
                raise UserError(f"model.{name} must be an integer >= {low}, got {getattr(self, name)!r}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"model.dropout must be in [0, 1), got {self.dropout!r}")
        if self.aggregation == "pna" and self.conv == "mlp":
            raise UserError("model.aggregation 'pna' needs message passing; it cannot go with conv 'mlp'")


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

    def forward(self, x: torch.Tensor, graph: torch.Tensor, num_segments: int, mask: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "graph":  # per-graph statistics: the padding slot is a graph of its own
            return self.norm(x, graph, num_segments)
        if self.kind == "batch":
            return self.norm(x, mask)
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

    def __init__(self, dim: int, aggregation: str = "gated", degree_histogram: torch.Tensor | None = None, eps: float = 1e-10):
        super().__init__(aggr="sum")
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


class GCNConv(MessagePassing):
    r"""Isotropic convolution: :math:`h'_i = A h_i + \mathrm{mean}_{j \to i} B h_j` (edges untouched).

    With `aggregation="pna"` the mean is replaced by PNA's aggregators and degree scalers.
    """

    def __init__(self, dim: int, aggregation: str = "gated", degree_histogram: torch.Tensor | None = None):
        super().__init__(aggr="mean")
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


class Block(nn.Module):
    """One Transformer block: message passing sub-layer, then node and edge FFN sub-layers."""

    def __init__(self, config: ModelConfig, degree_histogram: torch.Tensor | None):
        super().__init__()
        d, c = config.hidden, config
        self.config = config
        self.conv = {"gated-gcn": GatedGCNConv, "gcn": GCNConv}[c.conv](d, c.aggregation, degree_histogram) if c.conv != "mlp" else None
        # The gcn conv leaves edges as they are, so only gated-gcn needs an edge norm there.
        self.norm_mp_h = Norm(c.norm, d) if self.conv is not None else None
        self.norm_mp_e = Norm(c.norm, d) if c.conv == "gated-gcn" else None
        self.ffn_h = FeedForward(d, c.ffn_ratio, c.dropout) if c.ffn else None
        self.ffn_e = FeedForward(d, c.ffn_ratio, c.dropout) if c.ffn else None
        self.norm_ffn_h = Norm(c.norm, d) if c.ffn else None
        self.norm_ffn_e = Norm(c.norm, d) if c.ffn else None

    def sublayer(self, xs, update, norms, rows):
        """Wrap `update` as x + update(norm(x)) (pre-norm), norm(x + update(x)) (post-norm), or without `x +`.

        One entry per tensor the sub-layer updates, in xs, norms and rows (each norm's graph
        index, segment count and padding mask): (h,) for an FFN, (h, e) for gated message passing.
        """
        pre = self.config.norm_position == "pre"
        outs = update(*(norm(x, *r) for norm, x, r in zip(norms, xs, rows))) if pre else update(*xs)
        if self.config.residual:
            outs = tuple(x + out for x, out in zip(xs, outs))
        return outs if pre else tuple(norm(out, *r) for norm, out, r in zip(norms, outs, rows))

    def forward(self, h: torch.Tensor, e: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        nodes = (batch.node_graph, batch.num_segments, batch.node_mask)
        edges = (batch.edge_graph, batch.num_segments, batch.edge_mask)
        if self.conv is not None and self.norm_mp_e is None:  # gcn: updates h only
            (h,) = self.sublayer((h,), lambda h_: (self.conv(h_, e, batch.edge_index)[0],), (self.norm_mp_h,), (nodes,))
        elif self.conv is not None:  # gated-gcn: updates h and e together
            h, e = self.sublayer((h, e), lambda h_, e_: self.conv(h_, e_, batch.edge_index), (self.norm_mp_h, self.norm_mp_e), (nodes, edges))
        if self.ffn_h is not None:
            (h,) = self.sublayer((h,), lambda h_: (self.ffn_h(h_),), (self.norm_ffn_h,), (nodes,))
            (e,) = self.sublayer((e,), lambda e_: (self.ffn_e(e_),), (self.norm_ffn_e,), (edges,))
        return h, e


POOL_REDUCE = {"mean": "mean", "sum": "sum", "max": "max"}


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

    def pool(self, x: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
        return scatter(x, index, 0, num_segments, reduce=POOL_REDUCE[self.config.pooling])

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
        segments = batch.num_segments
        vn = self.virtual_node.weight.expand(segments, -1) if c.virtual_node else None
        for i, block in enumerate(self.blocks):
            if vn is not None:
                h = h + vn.index_select(0, batch.node_graph)
            h, e = block(h, e, batch)
            if vn is not None and i < c.layers - 1:
                vn = self.virtual_mlps[i](self.virtual_norms[i](vn + self.pool(h, batch.node_graph, segments), batch.graph_mask))
        pooled = torch.cat([self.pool(h, batch.node_graph, segments), self.pool(e, batch.edge_graph, segments)], -1)
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
