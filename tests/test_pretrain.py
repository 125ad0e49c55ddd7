"""Self-supervised pre-training on real molecules, and fine-tuning from its checkpoint."""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from ggt_search import cli, steps
from ggt_search.batching import DeviceGraphs
from ggt_search.config import DatasetSpec, ModelConfig, RunConfig
from ggt_search.datasets import load_corpus
from ggt_search.errors import UserError
from ggt_search.model import GatedGraphTransformer
from ggt_search.pretrain import MaskingHead, PretrainingModel, PretrainSettings, masking_loss, pretrain
from ggt_search.train import Trainer
from tests.conftest import tiny_config

MODEL = {"layers": 2, "hidden": 16, "pe_dim": 4, "dropout": 0.0}


@pytest.fixture(scope="module")
def corpus(moleculenet, tmp_path_factory):
    """400 real molecules in one SMILES column, like the ZINC corpus: 300 of BBBP's training split and 100 others."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.csv"
    pd.read_csv(moleculenet / "BBBP.csv")[["smiles"]].head(400).rename(columns={"smiles": "SMILES"}).to_csv(
        path, index=False
    )
    return path


def settings_for(corpus, out, downstream=None, **train):
    dataset = downstream or {"name": "nci-tpsa"}
    config = RunConfig.from_dict(
        {
            "dataset": dataset,
            "model": MODEL,
            "train": {"epochs": 4, "batch_size": 64, "lr": 3e-3, "device": "cpu"} | train,
        }
    )
    return PretrainSettings(corpus, out, config, downstream=(config.dataset,) if downstream else ())


def test_masked_atoms_and_bonds_are_never_seen_by_the_model(bbbp_small):
    data = DeviceGraphs(bbbp_small, "cpu", pe_dim=4)
    batch = data.batch(data.split["train"][:32])
    torch.manual_seed(0)
    model, head = GatedGraphTransformer(tiny_config().model, 1).eval(), MaskingHead(16)
    hidden = torch.rand(len(batch.atoms)) < 0.15
    hidden_bonds = hidden[batch.edge_index[0]] | hidden[batch.edge_index[1]]
    atoms, bonds = batch.atoms.clone(), batch.bonds.clone()
    atoms[hidden] = torch.randint(0, 2, (int(hidden.sum()), 9))  # other elements, charges, ... on the masked atoms
    bonds[hidden_bonds] = torch.randint(
        0, 2, (int(hidden_bonds.sum()), 3)
    )  # other bond types on the bonds touching them
    changed = type(batch)(**{**batch.__dict__, "atoms": atoms, "bonds": bonds})

    def states(b, **masks):
        return torch.cat(model.encode(b, **masks))

    masked = {
        "hidden_atoms": hidden,
        "atom_token": head.atom_token,
        "hidden_bonds": hidden_bonds,
        "bond_token": head.bond_token,
    }
    assert torch.equal(
        states(batch, **masked), states(changed, **masked)
    )  # nothing of a masked atom or bond reaches any state
    atoms_only = {"hidden_atoms": hidden, "atom_token": head.atom_token}
    assert not torch.equal(
        states(batch, **atoms_only), states(changed, **atoms_only)
    )  # the bonds' features do, unmasked
    assert not torch.equal(states(batch), states(changed))


def test_bond_masking_lowers_its_loss_and_says_so(corpus, tmp_path):
    summary = pretrain(
        PretrainSettings(corpus, tmp_path / "pt", settings_for(corpus, tmp_path).config, mask_bonds=True)
    )
    assert summary["loss_curve"][-1] < 0.7 * summary["loss_curve"][0]
    assert (
        summary["objective"]
        == "attribute masking (the element of 15% of atoms, and the type of the bonds touching them)"
    )


@pytest.mark.parametrize("mask_bonds", [False, True])
def test_a_padded_batch_has_the_masking_loss_of_the_unpadded_one(bbbp_small, mask_bonds):
    """Padded batches (compile, CUDA graphs) weight the unmasked rows out instead of indexing
    them out, so that no shape depends on the data: the same masked atoms, the same loss."""
    data = DeviceGraphs(bbbp_small, "cpu", pe_dim=4)
    graphs = data.split["train"][:29]
    plain = data.batch(graphs)
    nodes, edges = len(plain.atoms), len(plain.bonds)
    padded = data.padded_batch(graphs, 32, nodes + nodes // 10 + 1, edges + edges // 10)
    torch.manual_seed(0)
    objective = PretrainingModel(GatedGraphTransformer(ModelConfig(**MODEL), 1), MaskingHead(16)).eval()
    losses = []
    for batch in (plain, padded):
        torch.manual_seed(1)  # the same draws for the real atoms, which come first in both batches
        losses.append(masking_loss(objective, batch, objective.head, rate=0.15, mask_bonds=mask_bonds))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=0)


def test_pre_training_takes_the_training_steps_compiled_on_padded_batches(corpus, tmp_path, monkeypatch):
    """`train.compile` (and so CUDA graphs and bf16) reach pre-training through the same steps as
    fine-tuning: the objective runs as one traced graph, on padded batches, and learns."""
    monkeypatch.setattr(steps, "COMPILE_BACKEND", "aot_eager")  # the same aten graph, no code generation
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    curve = pretrain(settings_for(corpus, tmp_path / "compiled", epochs=2, compile=True))["loss_curve"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert curve[-1] < 0.7 * curve[0]


def test_pretraining_lowers_the_loss_and_fine_tuning_starts_from_its_weights(corpus, bbbp_small, tmp_path, capsys):
    summary = pretrain(settings_for(corpus, tmp_path / "pt"))
    assert summary["loss_curve"][-1] < 0.7 * summary["loss_curve"][0]
    # the reference: the entropy of the corpus's element frequencies, which the trained model beats
    atoms = load_corpus(corpus, None, None, set())[0].atoms[:, 0].numpy()
    assert summary["frequency_loss"] == pytest.approx(stats.entropy(np.bincount(atoms)))
    assert 0 < summary["loss_curve"][-1] < summary["frequency_loss"]
    out = capsys.readouterr().out
    assert f"masking loss {summary['loss_curve'][0]:.4f}  (predicting the corpus's frequencies: " in out
    assert "leakage guard: none ran (no --dataset or --exclude-datasets)" in out
    assert summary["corpus"]["molecules"] == 400 and summary["corpus"]["sha256"]
    checkpoint = torch.load(tmp_path / "pt" / "pretrained.pt", weights_only=True)
    assert checkpoint["objective"].startswith("attribute masking") and len(checkpoint["loss_curve"]) == 4

    trainer = Trainer(
        tiny_config(**MODEL).with_overrides(train={"init": str(tmp_path / "pt" / "pretrained.pt")}), bbbp_small
    )
    model = trainer.build_model()
    for name, value in model.state_dict().items():
        if name.startswith("readout."):
            assert name not in checkpoint["state"]  # the task head is always fresh
        else:
            assert torch.equal(value, checkpoint["state"][name]), name
    assert trainer.fit().best_valid > 0  # and it trains


def test_a_checkpoint_of_another_architecture_is_refused(corpus, bbbp_small, tmp_path, capsys):
    pretrain(settings_for(corpus, tmp_path / "pt", epochs=1))
    wider = tiny_config(**(MODEL | {"hidden": 32})).with_overrides(
        train={"init": str(tmp_path / "pt" / "pretrained.pt")}
    )
    with pytest.raises(UserError, match=r"pre-trained with model.hidden = 16, but this config has 32"):
        Trainer(wider, bbbp_small).build_model()
    assert cli.main(["train", "--dataset", "nci-tpsa", "--init", str(tmp_path / "none.pt"), "--device", "cpu"]) == 2
    assert "train.init: no checkpoint at" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        cli.main(["pretrain", "--corpus", str(corpus), "--out", str(tmp_path / "x"), "--mask-rate", "1.5"])
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: argument --mask-rate: must be a fraction in (0, 1], got 1.5 (see ggt-search pretrain --help)"
    ]


def test_a_diverging_pretraining_says_so_in_one_line_and_writes_no_checkpoint(corpus, tmp_path, capsys):
    args = ["pretrain", "--corpus", str(corpus), "--out", str(tmp_path / "pt"), "--epochs", "2", "--lr", "1e9"]
    assert cli.main(args + ["--layers", "2", "--hidden", "16", "--pe-dim", "4", "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: pre-training loss is ")
    assert error.endswith("the run diverged; lower --lr (now 1e+09)")
    assert not (tmp_path / "pt" / "pretrained.pt").exists()


def test_the_leakage_guard_removes_the_downstream_validation_and_test_molecules(moleculenet, tmp_path):
    from ggt_search.datasets import load_dataset

    spec = {"name": "ogbg-molbbbp", "source": str(moleculenet)}
    bbbp = load_dataset(DatasetSpec(**spec))
    table = pd.read_csv(moleculenet / "BBBP.csv")
    held_out = table.iloc[bbbp.split["valid"][:7].tolist() + bbbp.split["test"][:5].tolist()]["smiles"]
    train = table.iloc[bbbp.split["train"][:50].tolist()]["smiles"]
    path = tmp_path / "leaky.csv"
    pd.DataFrame({"SMILES": [*train, *held_out]}).to_csv(path, index=False)
    summary = pretrain(settings_for(path, tmp_path / "pt", downstream=spec, epochs=1))
    assert summary["corpus"]["removed_for_leakage"] == 12 and summary["corpus"]["molecules"] == 50


def test_a_search_can_choose_between_scratch_and_a_checkpoint(corpus, tmp_path):
    from ggt_search.study import SearchSettings, search

    pretrain(settings_for(corpus, tmp_path / "pt", epochs=1))
    space = tmp_path / "space.yaml"
    space.write_text(
        f"train.init: {{choices: [null, {tmp_path / 'pt' / 'pretrained.pt'}]}}\nmodel.layers: 2\nmodel.hidden: "
        "16\nmodel.pe_dim: 4\n"
    )
    base = RunConfig.from_dict(
        {"dataset": str(corpus.parent / "labelled.csv"), "train": {"epochs": 1, "batch_size": 64, "device": "cpu"}}
    )
    pd.read_csv(corpus).assign(y=[i % 2 for i in range(400)]).to_csv(corpus.parent / "labelled.csv", index=False)
    study = search(
        SearchSettings(
            study="s",
            base=base,
            space_file=str(space),
            trials=2,
            sampler="grid",
            pruner="none",
            storage=f"sqlite:///{tmp_path}/s.db",
        )
    )
    assert sorted(str(t.params["train.init"]) for t in study.trials) == sorted(
        ["None", str(tmp_path / "pt" / "pretrained.pt")]
    )
    assert all(t.state.name == "COMPLETE" for t in study.trials)


def test_an_ablation_records_its_checkpoint_and_refuses_one_rebuilt_under_the_same_path(corpus, tmp_path):
    from ggt_search.ablate import AblationSettings, load_ablation, run_ablation
    from ggt_search.files import file_sha256
    from ggt_search.report import build_report

    checkpoint = tmp_path / "pt" / "pretrained.pt"
    pretrain(settings_for(corpus, tmp_path / "pt", epochs=1))
    labelled = tmp_path / "labelled.csv"
    pd.read_csv(corpus).assign(y=[i % 2 for i in range(400)]).to_csv(labelled, index=False)
    (tmp_path / "pt.yaml").write_text(f"""
idea: pre-training
question: scratch vs fine-tuned
baseline:
  model: {{layers: 2, hidden: 16, pe_dim: 4, dropout: 0.0}}
  train: {{batch_size: 64, device: cpu}}
variants:
  pretrained: {{train: {{init: {checkpoint}}}}}
seeds: 0
epochs: 1
""")
    storage = f"sqlite:///{tmp_path}/pt.db"
    ablation = load_ablation(tmp_path / "pt.yaml", dataset={"name": str(labelled)})
    (study,) = run_ablation(AblationSettings(ablation, "pt", storage))
    recorded = {t.user_attrs["variant"]: t.user_attrs["environment"].get("init_sha256") for t in study.trials}
    assert recorded == {"baseline": None, "pretrained": file_sha256(checkpoint)}
    build_report(["pt"], storage, tmp_path / "report")
    assert f"{checkpoint}, sha256 {file_sha256(checkpoint)[:12]}" in (tmp_path / "report" / "report.md").read_text()

    with pytest.raises(UserError, match="pre-trained with config.train.epochs = 1, not 2; pass another --out"):
        pretrain(settings_for(corpus, tmp_path / "pt", epochs=2))  # a checkpoint is never overwritten by another
    shutil.rmtree(tmp_path / "pt")
    pretrain(settings_for(corpus, tmp_path / "pt", epochs=2))  # other weights, same path
    with pytest.raises(UserError, match="has changed since"):
        run_ablation(AblationSettings(ablation, "pt", storage))
