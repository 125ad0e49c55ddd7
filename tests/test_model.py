import pytest
import torch
from ogb.utils.features import get_atom_feature_dims, get_bond_feature_dims

from ggt_search import model as model_module
from ggt_search.batching import DeviceGraphs
from ggt_search.config import ModelConfig, RunConfig, choices
from ggt_search.errors import UserError
from ggt_search.metrics import masked_loss
from ggt_search.model import GatedGraphTransformer, count_parameters, in_degree_histogram, training_cycle_maxima


def hand_count(layers, d, k, tasks=1, r=4):
    """Parameters of the reference block, counted from the spec's equations."""
    linear = lambda i, o: i * o + o  # noqa: E731
    conv = 5 * linear(d, d)  # A, B, C, D, E
    norms = 4 * 2 * d  # BatchNorm weight + bias: message passing (h, e) and FFN (h, e)
    ffn = 2 * (linear(d, r * d) + linear(r * d, d))  # nodes and edges
    encoders = sum(get_atom_feature_dims()) * d + sum(get_bond_feature_dims()) * d
    pe = linear(d + k, 4 * d) + linear(4 * d, d)
    readout = linear(2 * d, 4 * d) + linear(4 * d, tasks)
    return encoders + pe + layers * (conv + norms + ffn) + readout


def test_parameter_count_matches_hand_count():
    reference_hiv = GatedGraphTransformer(ModelConfig(layers=10, hidden=256, pe_dim=20), num_tasks=1)
    assert count_parameters(reference_hiv) == hand_count(10, 256, 20)
    assert round(count_parameters(reference_hiv) / 1e6, 1) == 14.9  # the reference's molhiv submission
    assert count_parameters(GatedGraphTransformer(ModelConfig(), 1)) == hand_count(5, 128, 10) == 2_027_905


@pytest.fixture(scope="module")
def batch(bbbp_small):
    data = DeviceGraphs(bbbp_small, "cpu", pe_dim=8, substructures=True)
    return data.batch(data.split["train"][:32])


def model_of(graphs=None, **fields):
    torch.manual_seed(0)
    config = ModelConfig(**({"layers": 2, "hidden": 16, "pe_dim": 8, "dropout": 0.0} | fields))
    histogram = in_degree_histogram(graphs) if config.aggregation == "pna" else None
    cycle_maxima = training_cycle_maxima(graphs) if config.substructures else None
    return GatedGraphTransformer(config, num_tasks=1, degree_histogram=histogram, cycle_maxima=cycle_maxima)


def rewired(batch):
    """Same atoms and bonds, but every bond's target atom moved: another graph."""
    shuffled = batch.edge_index.clone()
    shuffled[1] = shuffled[1, torch.randperm(shuffled.shape[1], generator=torch.Generator().manual_seed(1))]
    return type(batch)(**{**batch.__dict__, "edge_index": shuffled})


def test_mlp_ignores_the_graph_and_gated_gcn_does_not(batch):
    for conv, should_change in (("mlp", False), ("gated-gcn", True), ("gcn", True)):
        model = model_of(conv=conv, pe_dim=0).eval()
        changed = not torch.allclose(model(batch), model(rewired(batch)), atol=1e-6)
        assert changed == should_change, conv


def test_pe_sign_flip_only_in_training(batch):
    model = model_of(norm="layer", pe_sign_flip="graph")
    model.train()
    assert not torch.allclose(model(batch), model(batch))  # random signs (no dropout: dropout=0)
    model.eval()
    assert torch.equal(model(batch), model(batch))
    model = model_of(norm="layer", pe_sign_flip="off").train()
    assert torch.equal(model(batch), model(batch))


def test_each_option_changes_the_output(batch):
    base = model_of().eval()(batch)
    for option in (
        {"norm_position": "post"},
        {"residual": False},
        {"norm": "graph"},
        {"pe_injection": "add"},
        {"virtual_node": True},
        {"pooling": "sum"},
        {"ffn": False},
        {"ffn_ratio": 2},
        {"pe_dim": 0},
    ):
        assert not torch.allclose(model_of(**option).eval()(batch), base), option


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"conv": "gcn"},
        {"conv": "mlp"},
        {"aggregation": "pna"},
        {"conv": "gcn", "aggregation": "pna"},
        {"virtual_node": True, "norm": "graph", "norm_position": "post", "layers": 3},
        {"pe_injection": "add", "norm": "layer"},
        {"aggregation": "softmax", "message_norm": True, "graph_size_norm": True},
        {"conv": "gcn", "aggregation": "powermean"},
        {"global_attention": "lrga"},
        {"global_attention": "transformer", "attention_heads": 2},
    ],
)
def test_gradients_reach_every_parameter(batch, bbbp_small, fields):
    model = model_of(bbbp_small, **fields).train()
    masked_loss(model(batch), batch.y, "classification").backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_tiny_model_overfits_64_real_molecules(bbbp_small):
    data = DeviceGraphs(bbbp_small, "cpu", pe_dim=4)
    batch = data.batch(data.split["train"][:64])
    torch.manual_seed(0)
    model = GatedGraphTransformer(ModelConfig(layers=3, hidden=32, pe_dim=4, dropout=0.0, pe_sign_flip="off"), 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        optimizer.zero_grad()
        loss = masked_loss(model.train()(batch), batch.y, "classification")
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.02


@pytest.mark.parametrize(
    "model, message",
    [
        ({"conv": "transformer"}, "model.conv = 'transformer' is not one of"),
        ({"aggregation": "pna", "conv": "mlp"}, "conv 'mlp' has none"),
        (
            {"global_attention": "transformer", "hidden": 30, "attention_heads": 4},
            "must be divisible by model.attention_heads",
        ),
        ({"layres": 3}, r"unknown model key\(s\) \['layres'\]"),
        ({"dropout": 1.5}, "dropout must be in"),
    ],
)
def test_bad_model_config_is_one_clear_error(model, message):
    with pytest.raises(UserError, match=message):
        RunConfig.from_dict({"model": model})


@pytest.mark.parametrize(
    "field, registry",
    [
        ("conv", "CONVOLUTIONS"),
        ("norm", "NORMS"),
        ("aggregation", "AGGREGATIONS"),
        ("global_attention", "GLOBAL_ATTENTION"),
    ],
)
def test_the_models_registries_hold_exactly_the_configs_options(field, registry):
    """One list of options, the config field's type: every option has its module, and no module an unknown name."""
    assert list(getattr(model_module, registry)) == list(choices(ModelConfig)[field])


def test_the_model_imports_no_chemistry_or_tables_of_its_own():
    """The model needs no RDKit or pandas: importing it, after the libraries it builds on (PyG, OGB's
    encoders, which import them themselves), loads none of theirs and none of the data modules."""
    import subprocess
    import sys

    code = (
        "import sys, torch_geometric, ogb.graphproppred.mol_encoder; before = set(sys.modules); "
        "import ggt_search.model; added = set(sys.modules) - before; "
        "own = sorted(m for m in added if m.split('.')[0] in ('rdkit', 'pandas') "
        "or m in ('ggt_search.datasets', 'ggt_search.molecules', 'ggt_search.positional')); "
        "assert not own, own"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_round_trips_through_yaml(tmp_path):
    config = RunConfig.from_dict(
        {
            "dataset": {"name": "ogbg-molhiv", "source": "x.csv"},
            "model": {"conv": "gcn", "virtual_node": True},
            "train": {"lr": 3e-4},
        }
    )
    config.save(tmp_path / "run.yaml")
    assert RunConfig.load(tmp_path / "run.yaml") == config


def test_cpu_dropout_keeps_nn_dropouts_distribution():
    from ggt_search.model import Dropout

    torch.manual_seed(0)
    x = torch.ones(1000, 512)
    dropout = Dropout(0.3).train()
    out = dropout(x)
    values = out.unique()
    assert len(values) == 2 and values[0] == 0 and values[1].item() == pytest.approx(1 / 0.7)
    assert (out == 0).float().mean().item() == pytest.approx(0.3, abs=0.005)
    assert out.mean().item() == pytest.approx(1.0, abs=0.01)  # expectation preserved
    assert torch.equal(dropout.eval()(x), x) and torch.equal(Dropout(0.0).train()(x), x)


NEW_OPTIONS = [
    {"message_norm": True},
    {"graph_size_norm": True},
    {"aggregation": "softmax"},
    {"aggregation": "powermean"},
    {"global_attention": "lrga"},
    {"global_attention": "transformer"},
    {"conv": "gcn", "message_norm": True},
    {"conv": "gcn", "aggregation": "softmax"},
]  # substructures start at zero: test_ideas.py trains them first


@pytest.mark.parametrize("option", NEW_OPTIONS)
def test_an_option_changes_the_output_of_a_model_with_the_same_shared_weights(batch, bbbp_small, option):
    """The option's code runs in forward: the same weights without it give another output."""
    base = {"conv": option.get("conv", "gated-gcn")}
    off, on = model_of(**base).eval(), model_of(bbbp_small, **option).eval()
    missing, _ = on.load_state_dict(off.state_dict(), strict=False)
    assert not [k for k in off.state_dict() if k in missing]  # every shared weight is now identical
    assert not torch.allclose(on(batch), off(batch), atol=1e-6), option


@pytest.mark.parametrize(
    "option, extra_per_layer",
    [
        ({"message_norm": True}, 1),  # MessageNorm's scale s
        ({"graph_size_norm": True}, 0),
        ({"aggregation": "softmax"}, 16),  # an inverse temperature per channel
        ({"aggregation": "powermean"}, 16),  # a p per channel
        (
            {"global_attention": "lrga", "attention_rank": 4},
            (16 * 16 + 16) + (8 * 16 + 16) + 2 * 16,
        ),  # W_UVZT, W_out, BatchNorm
        ({"global_attention": "transformer"}, (16 * 48 + 48) + (16 * 16 + 16) + 2 * 16),  # W_qkv, W_out, BatchNorm
    ],
)
def test_parameter_counts_of_the_new_options(option, extra_per_layer):
    assert count_parameters(model_of(**option)) - count_parameters(model_of()) == 2 * extra_per_layer  # 2 layers


def test_message_norm_follows_its_equation(batch):
    """h' = A h + s ||h|| m / ||m||, with m the conv's aggregated message (s = 1 at init)."""
    from ggt_search.model import GatedGCNConv

    torch.manual_seed(0)
    h, e = torch.randn(len(batch.atoms), 16), torch.randn(len(batch.bonds), 16)
    plain = GatedGCNConv(16, ModelConfig(hidden=16))
    normed = GatedGCNConv(16, ModelConfig(hidden=16, message_norm=True))
    normed.load_state_dict(plain.state_dict(), strict=False)
    m = plain(h, e, batch.edge_index)[0] - plain.A(h)
    expected = plain.A(h) + h.norm(dim=1, keepdim=True) * m / m.norm(dim=1, keepdim=True).clamp(min=1e-12)
    torch.testing.assert_close(normed(h, e, batch.edge_index)[0], expected, rtol=1e-5, atol=1e-5)


def test_graph_size_norm_divides_the_message_passing_output_by_sqrt_graph_size(batch):
    from ggt_search.model import Block

    config = dict(hidden=16, residual=False, ffn=False, norm="none")
    torch.manual_seed(0)
    plain = Block(ModelConfig(**config), None)
    scaled = Block(ModelConfig(**config, graph_size_norm=True), None)
    scaled.load_state_dict(plain.state_dict())
    h, e = torch.randn(len(batch.atoms), 16), torch.randn(len(batch.bonds), 16)
    sizes = torch.bincount(batch.node_graph).double()
    h_plain, e_plain = plain(h, e, batch)
    h_scaled, e_scaled = scaled(h, e, batch)
    torch.testing.assert_close(
        h_scaled.double(), h_plain.double() / sizes.sqrt()[batch.node_graph, None], rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        e_scaled.double(), e_plain.double() / sizes.sqrt()[batch.edge_graph, None], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("kind", ["softmax", "powermean"])
def test_generalised_aggregators_follow_their_equations(batch, kind):
    from ggt_search.model import NeighbourAggregation

    torch.manual_seed(0)
    aggregate = NeighbourAggregation(kind, 16, None)
    with torch.no_grad():  # learnable t or p, away from their initial 1
        next(aggregate.parameters()).copy_(torch.linspace(0.5, 3.0, 16))
    messages, target = torch.randn(len(batch.bonds), 16), batch.edge_index[1]
    out = aggregate(messages, target, len(batch.atoms))
    parameter = torch.linspace(0.5, 3.0, 16)
    for i in range(0, len(batch.atoms), 7):
        m = messages[target == i]
        if len(m) == 0:  # an isolated atom (a counter-ion) receives nothing
            continue
        if kind == "softmax":  # sum_j softmax_j(t m_ij) m_ij, per channel
            expected = (torch.softmax(parameter * m, dim=0) * m).sum(0)
        else:  # (mean_j m_ij^p)^(1/p), messages and their mean power clamped into [1e-4, 100]
            expected = m.clamp(1e-4, 100).pow(parameter).mean(0).clamp(1e-4, 100).pow(1 / parameter)
        torch.testing.assert_close(out[i], expected, rtol=1e-4, atol=1e-5)


def test_lrga_follows_its_equation_without_forming_n_by_n(batch):
    from ggt_search.model import LowRankGlobalAttention

    torch.manual_seed(0)
    attention = LowRankGlobalAttention(16, rank=4)
    x = torch.randn(len(batch.atoms), 16, dtype=torch.float64)
    out = attention.double()(x, batch)
    for g in range(0, batch.num_graphs, 5):
        X = x[batch.node_graph == g]
        U, V, Z, T = torch.relu(attention.project(X)).chunk(4, dim=-1)
        eta = (U @ V.T).sum() / len(X) + attention.eps  # (1/n) 1^T U V^T 1, with the n x n matrix, densely
        expected = attention.out(torch.cat([U @ (V.T @ Z) / eta, T], dim=-1))
        torch.testing.assert_close(out[batch.node_graph == g], expected)


def test_graph_self_attention_is_multi_head_attention_within_each_graph(batch):
    from ggt_search.model import GraphSelfAttention

    torch.manual_seed(0)
    attention = GraphSelfAttention(16, heads=4, dropout=0.0).double().eval()
    x = torch.randn(len(batch.atoms), 16, dtype=torch.float64)
    out = attention(x, batch)
    for g in range(0, batch.num_graphs, 5):
        X = x[batch.node_graph == g]
        q, k, v = attention.qkv(X).view(len(X), 3, 4, 4).permute(1, 2, 0, 3)  # [3][heads, n, 4]
        weights = torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1)  # sqrt(d_head) = 2
        expected = attention.out((weights @ v).transpose(0, 1).reshape(len(X), 16))
        torch.testing.assert_close(out[batch.node_graph == g], expected)


def test_substructure_encoders_add_their_embeddings_once(bbbp_small):
    counts = 2 * 6 * 10 * 16  # atom and bond encoders: 6 lengths x 10 counts x d = 16
    assert count_parameters(model_of(bbbp_small, substructures=True)) - count_parameters(model_of()) == counts


def brute_force_cycles(edges: set[tuple[int, int]], longest: int = 8) -> list[list[int]]:
    """Every simple cycle of 3..longest atoms, by depth-first search from its smallest atom (each found twice,
    once per direction)."""
    neighbours: dict[int, set[int]] = {}
    for a, b in edges:
        neighbours.setdefault(a, set()).add(b)
    found = []

    def extend(path):
        for nxt in neighbours.get(path[-1], ()):
            if nxt == path[0] and len(path) >= 3:
                found.append(list(path))
            elif nxt > path[0] and nxt not in path and len(path) < longest:
                extend(path + [nxt])

    for start in neighbours:
        extend([start])
    unique = {}
    for cycle in found:
        unique[frozenset(zip(cycle, cycle[1:] + cycle[:1])) | frozenset(zip(cycle[1:] + cycle[:1], cycle))] = cycle
    return list(unique.values())


def test_cycle_counts_equal_a_brute_force_count_on_real_molecules(bbbp_small):
    from ggt_search.molecules import cycle_counts, featurize

    naphthalene = featurize("c1ccc2ccccc2c1")  # fused: atoms 3 and 8 lie on both 6-rings (its 10-ring is too long)
    atoms, _ = cycle_counts((naphthalene.edges.T, 10))
    assert atoms[:, 3].tolist() == [1, 1, 1, 2, 1, 1, 1, 1, 2, 1] and atoms[:, [0, 1, 2, 4, 5]].sum() == 0
    cubane = featurize("C12C3C4C1C5C2C3C45")  # the cube graph: 6 four-cycles, 16 six-cycles, 6 eight-cycles
    atoms, bonds = cycle_counts((cubane.edges.T, 8))
    assert (atoms.sum(0) // [3, 4, 5, 6, 7, 8]).tolist() == [0, 6, 0, 16, 0, 6]
    assert (bonds.sum(0) // 2 // [3, 4, 5, 6, 7, 8]).tolist() == [0, 6, 0, 16, 0, 6]
    counts_atoms, counts_bonds = bbbp_small.load_substructures()
    for g in range(0, bbbp_small.num_graphs, 3):
        n0, n1, e0, e1 = (
            int(bbbp_small.node_ptr[g]),
            int(bbbp_small.node_ptr[g + 1]),
            int(bbbp_small.edge_ptr[g]),
            int(bbbp_small.edge_ptr[g + 1]),
        )
        edges = bbbp_small.edges[:, e0:e1].T.tolist()
        expected_atoms = torch.zeros(n1 - n0, 6, dtype=torch.long)
        expected_bonds = torch.zeros(e1 - e0, 6, dtype=torch.long)
        for cycle in brute_force_cycles({tuple(e) for e in edges}):
            expected_atoms[cycle, len(cycle) - 3] += 1
            for a, b in zip(cycle, cycle[1:] + cycle[:1]):
                for row in (edges.index([a, b]), edges.index([b, a])):
                    expected_bonds[row, len(cycle) - 3] += 1
        assert torch.equal(counts_atoms[n0:n1], expected_atoms) and torch.equal(counts_bonds[e0:e1], expected_bonds), g
