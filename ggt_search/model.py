"""The Gated Graph Transformer (Joshi, 2020), every documented idea behind one config field.

A block is a pre-norm residual Transformer block whose attention is a graph convolution:

    h, e = h + MP(Norm(h), Norm(e))            message passing over the molecule's bonds
    h    = h + Attention(Norm(h))              optional: global attention among all atoms
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
| graph-specific normalization           | norm: batch / layer / graph / none,        |
|                                        | message_norm, graph_size_norm              |
| Laplacian PE as node ids               | pe_dim, pe_sign_flip, pe_injection,        |
|                                        | pe_values (controls: zeros / random)       |
| expressive aggregation                 | aggregation: gated / pna / softmax /       |
|                                        | powermean                                  |
| virtual node / global attention        | virtual_node; global_attention: none /     |
|                                        | lrga / transformer (attention_rank, _heads)|
| substructure counts (GSN)              | substructures                              |
| overparameterization                   | hidden, layers                             |
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder
from torch import nn
from torch_geometric.nn import GraphNorm, MessageNorm, MessagePassing
from torch_geometric.nn.aggr import DegreeScalerAggregation, PowerMeanAggregation, SoftmaxAggregation
from torch_geometric.utils import scatter

from ggt_search.batching import Batch, Segments
from ggt_search.config import CYCLE_LENGTHS, ModelConfig
from ggt_search.indexing import counts_to_ptr, ranges


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


NORMS = {"batch": MaskedBatchNorm1d, "layer": nn.LayerNorm, "graph": GraphNorm, "none": lambda _: nn.Identity()}


class Norm(nn.Module):
    """BatchNorm, LayerNorm, GraphNorm (per graph, needs the graph index) or nothing."""

    def __init__(self, kind: str, dim: int):
        super().__init__()
        self.kind = kind
        self.norm = NORMS[kind](dim)

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


AGGREGATIONS = {  # "gated": the convolution's own rule (the gated or the plain mean), no NeighbourAggregation
    "gated": None,
    "pna": lambda dim, histogram: DegreeScalerAggregation(
        ["mean", "min", "max", "std"], ["identity", "amplification", "attenuation"], histogram
    ),
    "softmax": lambda dim, _: SoftmaxAggregation(t=1.0, learn=True, channels=dim),
    "powermean": lambda dim, _: PowerMeanAggregation(p=1.0, learn=True, channels=dim),
}


class NeighbourAggregation(nn.Module):
    r"""How a node combines its incoming messages, when not by the convolution's own rule.

    - ``pna``: mean, min, max and std, each scaled by identity, amplification and
      attenuation of the degree (PNA), mixed back to d by a linear layer: with the `gcn`
      convolution, exactly PyG's PNAConv with one tower whose pre-layer sees x_j only
      (tests/test_ideas.py), the degree histogram being PNAConv's recipe on the training split;
    - ``softmax``: :math:`\sum_j \mathrm{softmax}_j(t \, m_{ij}) \, m_{ij}`, per channel, with a
      learnable inverse temperature t (init 1) per channel (DeeperGCN's SoftMax aggregator);
    - ``powermean``: :math:`(\mathrm{mean}_j \, m_{ij}^p)^{1/p}` with a learnable p (init 1) per channel,
      messages (and the mean of their powers) clamped into [1e-4, 100] so that powers are
      defined: PyG's PowerMeanAggregation, DeeperGCN's PowerMean. A negative message counts
      as 1e-4, as DeeperGCN's messages ReLU(.) + eps are never negative.

    With the gated convolution the messages are the gated ones, :math:`m_{ij} = s_{ij} \odot B h_j`:
    the gate still scales every channel of every message, and the aggregator's own weighting
    replaces the gated mean's normaliser :math:`\sum_j s_{ij}`.
    """

    def __init__(self, kind: str, dim: int, degree_histogram: torch.Tensor | None):
        super().__init__()
        self.aggregate = AGGREGATIONS[kind](dim, degree_histogram)
        self.mix = nn.Linear(12 * dim, dim) if kind == "pna" else nn.Identity()  # PNA: 4 aggregators x 3 scalers

    def forward(self, messages: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
        return self.mix(self.aggregate(messages, index, dim_size=dim_size))


class GraphConv(MessagePassing):
    r"""What both convolutions share: the aggregation choice and the optional MessageNorm.

    With `message_norm`, the aggregated message is rescaled to the node's own norm before
    it is added (DeeperGCN's MessageNorm): :math:`m_i \leftarrow s \, \|h_i\|_2 \, m_i / \|m_i\|_2`,
    with a learnable scalar s (init 1).
    """

    updates_edges = False

    def add_aggregation(self, dim: int, config: ModelConfig, degree_histogram: torch.Tensor | None) -> None:
        """Called by each convolution after its own linears (so that their initialisation stays the reference's)."""
        own_rule = AGGREGATIONS[config.aggregation] is None
        self.neighbours = None if own_rule else NeighbourAggregation(config.aggregation, dim, degree_histogram)
        self.message_norm = MessageNorm(learn_scale=True) if config.message_norm else None

    def normalised(self, h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return self.message_norm(h, m) if self.message_norm is not None else m


class GatedGCNConv(GraphConv):
    r"""Edge-gated graph convolution with edge-state updates (Bresson & Laurent, 2017).

    .. math::
        e'_{ij} = C h_j + D h_i + E e_{ij}, \qquad s_{ij} = \sigma(e'_{ij})

        h'_i = A h_i + \frac{\sum_{j \to i} s_{ij} \odot B h_j}{\sum_{j \to i} s_{ij} + \epsilon}

    One gate per feature channel per edge (dense attention), returned with the new edge
    states e'. Another `aggregation` aggregates the gated messages instead of the gated mean.
    """

    updates_edges = True

    def __init__(self, dim: int, config: ModelConfig, degree_histogram: torch.Tensor | None = None, eps: float = 1e-10):
        super().__init__()
        self.A, self.B, self.C, self.D, self.E = (nn.Linear(dim, dim) for _ in range(5))
        self.add_aggregation(dim, config, degree_histogram)
        self.eps = eps

    def forward(self, h: torch.Tensor, e: torch.Tensor, edge_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        source, target = edge_index
        # index_select, not h[source]: the same gather, and its backward is an index_add
        # (several times faster than indexing's index_put on CPU)
        e_new = self.C(h).index_select(0, source) + self.D(h).index_select(0, target) + self.E(e)
        m = self.propagate(edge_index, Bh=self.B(h), gate=torch.sigmoid(e_new))
        return self.A(h) + self.normalised(h, m), e_new

    def message(self, Bh_j: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return gate * Bh_j

    def aggregate(self, messages: torch.Tensor, index: torch.Tensor, gate: torch.Tensor, dim_size: int) -> torch.Tensor:
        if self.neighbours is not None:
            return self.neighbours(messages, index, dim_size)
        # Sums in float32 even under bf16 autocast: a normalised sum of many small gates.
        numerator = scatter(messages.float(), index, 0, dim_size, reduce="sum")
        denominator = scatter(gate.float(), index, 0, dim_size, reduce="sum")
        return (numerator / (denominator + self.eps)).to(messages.dtype)


class MeanConv(GraphConv):
    r"""Isotropic convolution: :math:`h'_i = A h_i + \mathrm{mean}_{j \to i} B h_j` (edges untouched).

    The reference's `gcn` option. Not PyG's GCNConv, which normalises symmetrically by
    both degrees. Another `aggregation` replaces the mean.
    """

    def __init__(self, dim: int, config: ModelConfig, degree_histogram: torch.Tensor | None = None):
        super().__init__()
        self.A, self.B = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.add_aggregation(dim, config, degree_histogram)

    def forward(self, h: torch.Tensor, e: torch.Tensor, edge_index: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.A(h) + self.normalised(h, self.propagate(edge_index, Bh=self.B(h))), None

    def message(self, Bh_j: torch.Tensor) -> torch.Tensor:
        return Bh_j

    def aggregate(self, messages: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
        if self.neighbours is not None:
            return self.neighbours(messages, index, dim_size)
        return scatter(messages, index, 0, dim_size, reduce="mean")


CONVOLUTIONS = {"gated-gcn": GatedGCNConv, "gcn": MeanConv, "mlp": None}  # "mlp": no message passing at all


def graph_sizes(rows: Segments) -> torch.Tensor:
    """Rows per graph slot (atoms per molecule, for node rows), the padding slot included."""
    return scatter(torch.ones_like(rows.index), rows.index, 0, rows.count, reduce="sum")


class LowRankGlobalAttention(nn.Module):
    r"""LRGA (Puny et al., 2020): attention of rank k among all nodes of each graph, linear in n.

    For a graph with node states X (n x d):

    .. math::
        U, V, Z, T = \mathrm{ReLU}(X W_U), \mathrm{ReLU}(X W_V), \mathrm{ReLU}(X W_Z), \mathrm{ReLU}(X W_T)
        \quad (d \to k \text{ each})

        \eta = \tfrac{1}{n} \mathbf{1}^\top U V^\top \mathbf{1} + \epsilon, \qquad
        \mathrm{LRGA}(X) = \big[\, U (V^\top Z) / \eta \;\|\; T \,\big] W_{out} \quad (2k \to d)

    V^T Z (k x k) and the sums are per-graph scatters, so the n x n matrix is never formed.
    As the authors' `LowRankAttention` (github.com/omri1348/LRGA): one Linear(d -> 4k) + ReLU
    for U, V, Z, T, xavier-normal weights and zero biases, epsilon 1e-6, dropout on [U V^T Z / eta || T].
    One deviation: the paper mixes [X, LRGA(X), GNN(X)] by one linear layer, in parallel with
    the convolution; here LRGA is a residual sub-layer of its own after message passing
    (x + LRGA(Norm(x)) W_out), as the `transformer` option is, so that the two global
    attentions are interchangeable behind one field.
    """

    def __init__(self, dim: int, rank: int, dropout: float = 0.0, eps: float = 1e-6):
        super().__init__()
        self.project = nn.Linear(dim, 4 * rank)  # W_U, W_V, W_Z, W_T side by side
        self.out = nn.Linear(2 * rank, dim)
        for linear in (self.project, self.out):  # the authors' weight_init
            nn.init.xavier_normal_(linear.weight)
            nn.init.zeros_(linear.bias)
        self.dropout = Dropout(dropout)
        self.eps = eps

    def forward(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        rows = batch.nodes
        U, V, Z, T = torch.relu(self.project(x)).chunk(4, dim=-1)
        VZ = scatter(V.unsqueeze(2) * Z.unsqueeze(1), rows.index, 0, rows.count, reduce="sum")  # [graphs, k, k]
        n = graph_sizes(rows).clamp(min=1)
        eta = (
            scatter(U, rows.index, 0, rows.count, reduce="sum") * scatter(V, rows.index, 0, rows.count, reduce="sum")
        ).sum(-1) / n + self.eps
        attended = torch.einsum("nk,nkl->nl", U, VZ.index_select(0, rows.index)) / eta.index_select(
            0, rows.index
        ).unsqueeze(1)
        return self.out(self.dropout(torch.cat([attended, T], dim=-1)))


class GraphSelfAttention(nn.Module):
    r"""Multi-head self-attention among the nodes of each graph (GraphGPS's global attention):
    :math:`\mathrm{softmax}(Q K^\top / \sqrt{d_h}) V` per head, over the graph's own nodes.

    Nodes are laid out densely, [graphs, max_nodes, d], where max_nodes is the dataset's
    largest molecule: a static shape, so a padded batch needs no host sync. Padding rows go
    to a discarded slot, and empty positions are masked out of the keys.
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        rows, width, d = batch.nodes, batch.max_nodes, x.shape[1]
        start = counts_to_ptr(graph_sizes(rows))[:-1]  # rows are grouped by graph slot, in order
        position = torch.arange(len(x), device=x.device) - start.index_select(0, rows.index)
        real = position < width if rows.mask is None else (position < width) & rows.mask
        discard = rows.count * width
        slot = torch.where(real, rows.index * width + position, discard)  # where each row sits in the dense layout
        dense = x.new_zeros(discard + 1, d).index_add(0, slot, x)[:-1].view(rows.count, width, d)
        occupied = (
            x.new_zeros(discard + 1).index_add(0, slot, torch.ones_like(x[:, 0]))[:-1].view(rows.count, width) > 0
        )
        occupied[:, 0] = True  # an empty graph slot still attends somewhere (to zeros), never to nothing (NaN)
        q, k, v = self.qkv(dense).view(rows.count, width, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=occupied[:, None, None, :], dropout_p=self.dropout if self.training else 0.0
        )
        flat = torch.cat([attended.transpose(1, 2).reshape(discard, d), x.new_zeros(1, d)])
        return self.out(flat.index_select(0, slot))


class SubstructureEncoder(nn.Module):
    r"""GSN-style structural features (Bouritsas et al., 2020): for each atom (or bond), on how
    many simple cycles of each length 3..8 it lies, each (length, count) pair embedded and
    summed, as OGB's AtomEncoder sums one embedding per feature. Added to the atom and bond
    encoders' output when `substructures` is on.

    Scale: the tables start at zero, so a model with substructures starts as the same model
    without them and the cycle embeddings grow only where training finds them useful, as the
    virtual node and pre-training's mask tokens start at zero (GSN's own `multi_embedding`
    offers the same `init='zeros'`). nn.Embedding's N(0, 1) swamped the atom identity (6x
    the atom encoder's scale); xavier-uniform, the atom encoder's own scale, still added a
    second random vector as large as the atom's identity to every atom and bond: on ESOL
    (all.yaml's baseline, 20 epochs, seeds 0-2) valid RMSE 1.32 and test 1.53 against the
    baseline's 1.10 and 1.06; from zero, 1.19 and 1.19 (issue 21). On BBBP (seeds 0-1) the
    initialisation made no clear difference (valid ROC-AUC 0.95 and 0.96 against the baseline's 0.93).

    Counts unseen in training: each length's count is clamped to the largest count of that
    length in the training split (`max_counts`, computed once by `training_cycle_maxima`,
    like PNA's degree histogram), so a test atom on more 6-cycles than any training atom
    shares the embedding of the most-cycled training atoms, a row training has updated,
    not a row left at its initialisation. A numeric encoding (a linear map of log(1 + count))
    was the alternative; it extrapolates to counts it was never fitted on, loses GSN's one
    embedding per (length, count), and did no better on ESOL. Above MAX_COUNT all counts share a row.

    What remains is the data's, not the code's: in ESOL's scaffold split the only training
    molecules with a 3-cycle are seven pyrethroid insecticides (log-solubility -5.2 to -8.4,
    training mean -2.9), so "on a 3-cycle" is learned as "insoluble" and the test split's
    small epoxides (CC1CO1 at -0.6, styrene oxide at -1.6) are predicted at -4.5 to -8.2
    with any initialisation; no 3-cycle molecule of the validation split shows it, so
    selection cannot either. The counts add a feature that a 902-molecule training set
    meets on a handful of molecules of one family; this is what GSN's identifiers cost on it.
    """

    MAX_COUNT = 9

    def __init__(self, dim: int, max_counts: torch.Tensor):
        super().__init__()
        self.embedding = nn.Embedding(len(CYCLE_LENGTHS) * (self.MAX_COUNT + 1), dim)
        nn.init.zeros_(self.embedding.weight)
        self.register_buffer("offset", torch.arange(len(CYCLE_LENGTHS)) * (self.MAX_COUNT + 1), persistent=False)
        # not in the state dict: a fine-tuned model clamps to its own training split, not the pre-training corpus's
        self.register_buffer("max_counts", max_counts.clamp(max=self.MAX_COUNT), persistent=False)

    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        return self.embedding(torch.minimum(counts, self.max_counts) + self.offset).sum(dim=1)


GLOBAL_ATTENTION = {
    "none": None,
    "lrga": lambda c: LowRankGlobalAttention(c.hidden, c.attention_rank, c.dropout),
    "transformer": lambda c: GraphSelfAttention(c.hidden, c.attention_heads, c.dropout),
}


class Block(nn.Module):
    """One Transformer block: a message-passing sub-layer, then node and edge FFN sub-layers.

    Each sub-layer is x + f(Norm(x)) (pre-norm, the default), Norm(x + f(x)) (post-norm),
    or without the `x +` when `residual` is off. With `global_attention`, a third sub-layer
    between them lets every node attend to every node of its molecule.
    """

    def __init__(self, config: ModelConfig, degree_histogram: torch.Tensor | None):
        super().__init__()
        d, c = config.hidden, config
        self.pre_norm, self.residual, self.graph_size_norm = c.norm_position == "pre", c.residual, c.graph_size_norm
        self.conv = CONVOLUTIONS[c.conv](d, c, degree_histogram) if CONVOLUTIONS[c.conv] else None
        self.norm_mp_h = Norm(c.norm, d) if self.conv is not None else None
        self.norm_mp_e = Norm(c.norm, d) if self.conv is not None and self.conv.updates_edges else None
        self.attention = GLOBAL_ATTENTION[c.global_attention](c) if GLOBAL_ATTENTION[c.global_attention] else None
        self.norm_attention = Norm(c.norm, d) if self.attention is not None else None
        self.ffn_h = FeedForward(d, c.ffn_ratio, c.dropout) if c.ffn else None
        self.ffn_e = FeedForward(d, c.ffn_ratio, c.dropout) if c.ffn else None
        self.norm_ffn_h = Norm(c.norm, d) if c.ffn else None
        self.norm_ffn_e = Norm(c.norm, d) if c.ffn else None

    def forward(self, h: torch.Tensor, e: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        nodes, edges = batch.nodes, batch.edges
        if self.conv is not None:  # h, e = h + MP(Norm(h), Norm(e))
            e_in = self.sublayer_input(e, self.norm_mp_e, edges) if self.conv.updates_edges else e
            h_mp, e_mp = self.conv(self.sublayer_input(h, self.norm_mp_h, nodes), e_in, batch.edge_index)
            if self.graph_size_norm:  # Benchmarking-GNNs: divide by sqrt(|V_G|) of the row's graph
                scale = graph_sizes(nodes).clamp(min=1).to(h_mp.dtype).rsqrt()
                h_mp = h_mp * scale.index_select(0, nodes.index).unsqueeze(1)
                e_mp = e_mp * scale.index_select(0, edges.index).unsqueeze(1) if e_mp is not None else None
            h = self.sublayer_output(h, h_mp, self.norm_mp_h, nodes)
            if self.conv.updates_edges:
                e = self.sublayer_output(e, e_mp, self.norm_mp_e, edges)
        if self.attention is not None:  # h = h + Attention(Norm(h)), among all nodes of each graph
            h = self.sublayer_output(
                h, self.attention(self.sublayer_input(h, self.norm_attention, nodes), batch), self.norm_attention, nodes
            )
        if self.ffn_h is not None:  # h = h + FFN_h(Norm(h));  e = e + FFN_e(Norm(e))
            h = self.sublayer_output(
                h, self.ffn_h(self.sublayer_input(h, self.norm_ffn_h, nodes)), self.norm_ffn_h, nodes
            )
            e = self.sublayer_output(
                e, self.ffn_e(self.sublayer_input(e, self.norm_ffn_e, edges)), self.norm_ffn_e, edges
            )
        return h, e

    def sublayer_input(self, x: torch.Tensor, norm: Norm, rows: Segments) -> torch.Tensor:
        return norm(x, rows) if self.pre_norm else x

    def sublayer_output(self, x: torch.Tensor, out: torch.Tensor, norm: Norm, rows: Segments) -> torch.Tensor:
        out = x + out if self.residual else out
        return out if self.pre_norm else norm(out, rows)


class GatedGraphTransformer(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        num_tasks: int,
        degree_histogram: torch.Tensor | None = None,
        cycle_maxima: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        super().__init__()
        if config.aggregation == "pna" and degree_histogram is None:
            raise ValueError("PNA aggregation needs the training set's in-degree histogram")
        if config.substructures and cycle_maxima is None:
            raise ValueError("substructures need the training set's largest cycle counts (training_cycle_maxima)")
        d, c = config.hidden, config
        self.config = config
        self.atom_encoder, self.bond_encoder = AtomEncoder(d), BondEncoder(d)
        if c.substructures:
            self.atom_cycle_encoder, self.bond_cycle_encoder = (SubstructureEncoder(d, m) for m in cycle_maxima)
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
        """One row of logits (or values) per graph slot."""
        h, e = self.encode(batch)
        pooled = torch.cat([self.pool(h, batch.nodes), self.pool(e, batch.edges)], -1)
        return self.readout(pooled[: batch.num_graphs])

    def encode(
        self,
        batch: Batch,
        hidden_atoms: torch.Tensor | None = None,
        atom_token: torch.Tensor | None = None,
        hidden_bonds: torch.Tensor | None = None,
        bond_token: torch.Tensor | None = None,
    ):
        """Final node and edge states (h, e). Pre-training passes boolean row masks of hidden
        atoms (and bonds) with learned tokens: those rows enter as the token, their features unseen."""
        c = self.config
        h, e = self.atom_encoder(batch.atoms), self.bond_encoder(batch.bonds)
        if hidden_atoms is not None:
            h = torch.where(hidden_atoms.unsqueeze(1), atom_token.to(h.dtype), h)
        if hidden_bonds is not None:
            e = torch.where(hidden_bonds.unsqueeze(1), bond_token.to(e.dtype), e)
        if c.substructures:
            h, e = h + self.atom_cycle_encoder(batch.atom_cycles), e + self.bond_cycle_encoder(batch.bond_cycles)
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
        return h, e


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def in_degree_histogram(graphs) -> torch.Tensor:
    """PNA's degree statistics, from the training split only."""
    train = graphs.split["train"]
    edges = ranges(graphs.edge_ptr, train)
    targets = graphs.edges[1, edges] + graphs.node_ptr[torch.repeat_interleave(train, graphs.num_edges()[train])]
    degree = torch.bincount(targets, minlength=int(graphs.node_ptr[-1]))[ranges(graphs.node_ptr, train)]
    return torch.bincount(degree)


def training_cycle_maxima(graphs) -> tuple[torch.Tensor, torch.Tensor]:
    """The substructure encoders' clamps: the most cycles of each length on one atom, and on one bond,
    in the training split."""
    train = graphs.split["train"]
    atoms, bonds = graphs.load_substructures()

    def most(counts: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:  # a row of zeros: a bond-free split clamps to 0
        return torch.cat([counts[rows], counts.new_zeros(1, counts.shape[1])]).amax(0)

    return most(atoms, ranges(graphs.node_ptr, train)), most(bonds, ranges(graphs.edge_ptr, train))
