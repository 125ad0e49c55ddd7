"""Every input encoder at one scale, and the substructure encoder's unseen counts (issue 21)."""

import pytest
import torch

from ggt_search.batching import DeviceGraphs
from ggt_search.config import ModelConfig, RunConfig
from ggt_search.model import GatedGraphTransformer, SubstructureEncoder, training_cycle_maxima
from ggt_search.pretrain import MaskingHead
from ggt_search.train import Trainer


@pytest.fixture(scope="module")
def data(bbbp_small):
    return DeviceGraphs(bbbp_small, "cpu", pe_dim=8, substructures=True)


@pytest.fixture(scope="module")
def batch(data):
    return data.batch(data.split["train"][:64])


def row_norm(x: torch.Tensor) -> float:
    return x.norm(dim=1).mean().item()


@pytest.mark.parametrize("seed", [0, 1])
def test_every_encoder_summed_into_the_input_states_starts_at_the_atom_encoders_scale(bbbp_small, batch, seed):
    """At d = 64 on real molecules, each vector added to an atom or bond state at the input starts within a
    factor of 3 of the atom encoder's (per-row norm about 4): none swamps the atom identity. Cycle embeddings
    left at nn.Embedding's N(0, 1) started 5x (atoms) and 9x (bonds) larger."""
    torch.manual_seed(seed)
    config = ModelConfig(hidden=64, pe_dim=8, pe_injection="add", substructures=True)
    model = GatedGraphTransformer(config, 1, cycle_maxima=training_cycle_maxima(bbbp_small))
    with torch.no_grad():
        atoms = row_norm(model.atom_encoder(batch.atoms))
        summed = {"bonds": model.bond_encoder(batch.bonds), "atom cycles": model.atom_cycle_encoder(batch.atom_cycles),
                  "bond cycles": model.bond_cycle_encoder(batch.bond_cycles), "pe": model.pe_encoder(batch.pe[:, :8])}
        ratios = {name: row_norm(x) / atoms for name, x in summed.items()}
    assert all(1 / 3 < ratio < 3 for ratio in ratios.values()), ratios
    # Pre-training's mask tokens replace a hidden atom's (or bond's) encoding rather than add to it; they start at
    # zero, "nothing seen", so they can never swamp what they stand in for.
    head = MaskingHead(64)
    assert row_norm(head.atom_token[None]) <= atoms and row_norm(head.bond_token[None]) <= atoms


def test_cycle_counts_unseen_in_training_share_the_embedding_of_the_training_maximum(bbbp_small):
    atoms, bonds = bbbp_small.load_substructures()

    def most_per_molecule(counts, ptr):  # a molecule without bonds (a lone ion) has no bond rows: 0
        return torch.stack([counts[int(ptr[g]):int(ptr[g + 1])].amax(0) if ptr[g + 1] > ptr[g] else counts.new_zeros(6)
                            for g in bbbp_small.split["train"]]).amax(0)
    expected = [most_per_molecule(atoms, bbbp_small.node_ptr), most_per_molecule(bonds, bbbp_small.edge_ptr)]
    maxima = training_cycle_maxima(bbbp_small)
    assert all(torch.equal(m, e) for m, e in zip(maxima, expected))
    assert maxima[0][3] >= 1  # real molecules: benzene rings, so the 6-cycle clamp is not trivially 0

    encoder = SubstructureEncoder(16, maxima[0])
    at_max, beyond = maxima[0].unsqueeze(0), (maxima[0] + torch.tensor([1, 2, 0, 3, 1, 5])).unsqueeze(0)
    assert torch.equal(encoder(beyond), encoder(at_max))  # unseen counts fall on the rows training updated
    below = at_max.clone()
    below[0, 3] -= 1
    assert not torch.allclose(encoder(below), encoder(at_max))  # counts seen in training keep their own rows
    assert "max_counts" not in encoder.state_dict()  # fine-tuning clamps to its own training split

    cfg = RunConfig.from_dict({"dataset": "ogbg-molbbbp", "model": {"hidden": 16, "layers": 1, "substructures": True},
                               "train": {"device": "cpu"}})
    model = Trainer(cfg, bbbp_small).build_model()  # the trainer passes the training maxima, like PNA's histogram
    assert torch.equal(model.atom_cycle_encoder.max_counts, maxima[0].clamp(max=9))
    assert torch.equal(model.bond_cycle_encoder.max_counts, maxima[1].clamp(max=9))
