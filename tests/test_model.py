import pytest
import torch

from ggt_search.batching import DeviceGraphs
from ggt_search.config import ModelConfig, RunConfig
from ggt_search.errors import UserError
from ggt_search.metrics import masked_loss
from ggt_search.model import GatedGraphTransformer, count_parameters, in_degree_histogram
from ogb.utils.features import get_atom_feature_dims, get_bond_feature_dims


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
    data = DeviceGraphs(bbbp_small, "cpu", pe_dim=8)
    return data.batch(data.split["train"][:32])


def model_of(graphs=None, **fields):
    torch.manual_seed(0)
    config = ModelConfig(**({"layers": 2, "hidden": 16, "pe_dim": 8, "dropout": 0.0} | fields))
    histogram = in_degree_histogram(graphs) if config.aggregation == "pna" else None
    return GatedGraphTransformer(config, num_tasks=1, degree_histogram=histogram)


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
    for option in ({"norm_position": "post"}, {"residual": False}, {"norm": "graph"}, {"pe_injection": "add"},
                   {"virtual_node": True}, {"pooling": "sum"}, {"ffn": False}, {"ffn_ratio": 2}, {"pe_dim": 0}):
        assert not torch.allclose(model_of(**option).eval()(batch), base), option


@pytest.mark.parametrize("fields", [
    {}, {"conv": "gcn"}, {"conv": "mlp"}, {"aggregation": "pna"}, {"conv": "gcn", "aggregation": "pna"},
    {"virtual_node": True, "norm": "graph", "norm_position": "post", "layers": 3}, {"pe_injection": "add", "norm": "layer"},
])
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


@pytest.mark.parametrize("model, message", [
    ({"conv": "transformer"}, "model.conv = 'transformer' is not one of"),
    ({"aggregation": "pna", "conv": "mlp"}, "cannot go with conv 'mlp'"),
    ({"layres": 3}, r"unknown model key\(s\) \['layres'\]"),
    ({"dropout": 1.5}, "dropout must be in"),
])
def test_bad_model_config_is_one_clear_error(model, message):
    with pytest.raises(UserError, match=message):
        RunConfig.from_dict({"model": model})


def test_config_round_trips_through_yaml(tmp_path):
    config = RunConfig.from_dict({"dataset": {"name": "ogbg-molhiv", "source": "x.csv"}, "model": {"conv": "gcn", "virtual_node": True}, "train": {"lr": 3e-4}})
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
