import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from ggt_search.config import DatasetSpec
from ggt_search.datasets import load_dataset
from ggt_search.errors import UserError
from ggt_search.graphset import cache_root
from ggt_search.positional import laplacian_pe
from ggt_search.sources.ogb import read_ogb_raw

REJECTED_BY_RDKIT = [137, 987, 12882, 18293, 30784, 30785, 35728]


@pytest.mark.slow
def test_offline_molhiv_reproduces_ogb(moleculenet):
    spec = DatasetSpec("ogbg-molhiv", source=str(moleculenet / "HIV.csv.gz"))
    hiv = load_dataset(spec)
    assert hiv.num_graphs == 41127  # nothing dropped: the 7 valence-rejected molecules are in
    assert {s: len(i) for s, i in hiv.split.items()} == {"train": 32901, "valid": 4113, "test": 4113}
    assert int(hiv.y.sum()) == 1443
    assert hiv.metric == "rocauc" and hiv.atoms.shape[1] == 9 and hiv.bonds.shape[1] == 3
    for row in REJECTED_BY_RDKIT:
        assert hiv.num_nodes()[row] > 5 and hiv.num_edges()[row] > 0
    splits = torch.cat(list(hiv.split.values()))
    assert len(torch.unique(splits)) == hiv.num_graphs  # a partition
    again = load_dataset(spec)  # second load comes from the cache
    assert torch.equal(again.atoms, hiv.atoms) and torch.equal(again.split["test"], hiv.split["test"])


def test_embedded_dataset_needs_no_network():
    tpsa = load_dataset("nci-tpsa")
    assert tpsa.num_graphs == 4999 and tpsa.task_type == "regression" and tpsa.metric == "rmse"
    assert {s: len(i) for s, i in tpsa.split.items()} == {"train": 3999, "valid": 500, "test": 500}
    assert float(tpsa.y[0, 0]) == pytest.approx(34.14)


def _write_ogb_raw(graphs, folder):
    """Write a GraphSet in OGB's raw download layout (one row per bond, local atom ids)."""
    raw, split = folder / "raw", folder / "split" / "scaffold"
    raw.mkdir(parents=True)
    split.mkdir(parents=True)
    one_direction = torch.arange(0, graphs.edges.shape[1], 2)
    tables = {
        "edge": graphs.edges[:, one_direction].T,
        "edge-feat": graphs.bonds[one_direction],
        "node-feat": graphs.atoms,
        "num-node-list": graphs.num_nodes()[:, None],
        "num-edge-list": graphs.num_edges()[:, None] // 2,
        "graph-label": graphs.y,
    }
    for name, table in tables.items():
        pd.DataFrame(table.numpy()).to_csv(raw / f"{name}.csv.gz", header=False, index=False, compression="gzip")
    for name, idx in graphs.split.items():
        pd.DataFrame(idx.numpy()).to_csv(split / f"{name}.csv.gz", header=False, index=False, compression="gzip")


def test_ogb_download_layout_is_read_and_reloaded(bbbp):
    """An OGB download (raw csv files) is read into our cache, and the second load works."""
    _write_ogb_raw(bbbp, cache_root() / "ogb" / "ogbg_molbbbp")
    for _ in range(2):  # the second load is the one that fails with ogb's own classes
        official = load_dataset("ogbg-molbbbp")
        assert torch.equal(official.atoms, bbbp.atoms)
        assert torch.allclose(official.y, bbbp.y, equal_nan=True)
        assert all(torch.equal(official.split[s], bbbp.split[s]) for s in bbbp.split)
        for g in (0, 100, 2000):  # the same bonds, in both directions, per graph
            own = {tuple(e) for e in bbbp.edges[:, bbbp.edge_ptr[g] : bbbp.edge_ptr[g + 1]].T.tolist()}
            read = {tuple(e) for e in official.edges[:, official.edge_ptr[g] : official.edge_ptr[g + 1]].T.tolist()}
            assert own == read


def test_ogb_download_is_fetched_extracted_and_cached(bbbp, tmp_path, monkeypatch):
    """The download path end to end, against a local HTTP server holding OGB's zip layout."""
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    _write_ogb_raw(bbbp, tmp_path / "zip" / "bbbp")
    shutil.make_archive(str(served / "bbbp"), "zip", tmp_path / "zip")  # bbbp.zip holding bbbp/raw, bbbp/split
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("GGT_SEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GGT_SEARCH_OGB_MIRROR", f"http://127.0.0.1:{server.server_address[1]}/")
    try:
        downloaded = load_dataset("ogbg-molbbbp")
        assert torch.equal(downloaded.atoms, bbbp.atoms) and torch.equal(downloaded.split["test"], bbbp.split["test"])
        assert not list((tmp_path / "cache" / "ogb").glob("*.zip"))  # the zip is removed once extracted
        (served / "bbbp.zip").unlink()
        assert torch.equal(load_dataset("ogbg-molbbbp").y.nan_to_num(), bbbp.y.nan_to_num())  # cached: no second fetch
        with pytest.raises(
            UserError,
            match=r"could not download ogbg-moltox21 from OGB \(HTTPError\); build it offline with --source "
            r"PATH/tox21.csv",
        ):
            load_dataset("ogbg-moltox21")  # not on the mirror
    finally:
        server.shutdown()


def _tox21_slice(moleculenet, tmp_path, rows=60, edit=None):
    frame = pd.read_csv(moleculenet / "tox21.csv").head(rows)
    if edit:
        edit(frame)
    path = tmp_path / "own.csv"
    frame.to_csv(path, index=False)
    return path


def test_own_csv_classification_with_missing_labels(moleculenet, tmp_path):
    path = _tox21_slice(moleculenet, tmp_path)
    own = load_dataset(DatasetSpec(str(path)))
    assert own.task_type == "classification" and own.num_tasks == 12 and own.metric == "rocauc"
    assert torch.isnan(own.y).any()  # missing labels stay missing
    regression = load_dataset(DatasetSpec(str(path), target_columns=("NR-AR",), task_type="regression"))
    assert regression.task_type == "regression" and regression.num_tasks == 1


def test_random_split_follows_its_seed(moleculenet, tmp_path):
    path = _tox21_slice(moleculenet, tmp_path)
    a = load_dataset(DatasetSpec(str(path), split="random", split_seed=1))
    b = load_dataset(DatasetSpec(str(path), split="random", split_seed=2))
    assert {s: len(i) for s, i in a.split.items()} == {"train": 48, "valid": 6, "test": 6}
    assert not torch.equal(a.split["train"], b.split["train"])


def test_bad_smiles_are_reported_by_line_or_skipped(moleculenet, tmp_path):
    def corrupt(frame):
        frame.loc[3, "smiles"] = "C1CC(((not a molecule"

    path = _tox21_slice(moleculenet, tmp_path, edit=corrupt)
    with pytest.raises(UserError, match=r"1 SMILES could not be parsed .*line 5\).*--invalid-smiles skip"):
        load_dataset(DatasetSpec(str(path)))
    kept = load_dataset(DatasetSpec(str(path), invalid_smiles="skip"))
    assert kept.num_graphs == 59


@pytest.mark.parametrize(
    "spec, message",
    [
        (DatasetSpec("missing/file.csv"), "neither a known name"),
        (DatasetSpec("ogbg-molfoo"), "unknown OGB dataset"),
        (DatasetSpec("ogbg-molhiv", source="/nowhere/HIV.csv.gz"), "source file not found"),
        (DatasetSpec("ogbg-molpcba", source="/tmp"), "no MoleculeNet table offline"),
        (DatasetSpec("ogbg-molbace", source="/tmp"), r"source file not found: /tmp/bace.csv"),
    ],
)
def test_bad_dataset_names_get_one_clear_error(spec, message):
    with pytest.raises(UserError, match=message):
        load_dataset(spec)


def test_bad_columns_and_empty_molecules(moleculenet, tmp_path):
    path = _tox21_slice(moleculenet, tmp_path)
    with pytest.raises(UserError, match=r"no column\(s\) \['nope'\]"):
        load_dataset(DatasetSpec(str(path), target_columns=("nope",)))
    with pytest.raises(UserError, match="no 'smiles' column"):
        load_dataset(DatasetSpec(str(_no_smiles(path))))
    garbage = tmp_path / "garbage.csv"
    garbage.write_text("smiles,y\nxx((,1\nyy)),0\n")
    with pytest.raises(UserError, match="no SMILES could be parsed"):
        load_dataset(DatasetSpec(str(garbage), invalid_smiles="skip"))


def _no_smiles(path):
    renamed = path.with_name("renamed.csv")
    pd.read_csv(path).rename(columns={"smiles": "molecule"}).to_csv(renamed, index=False)
    return renamed


def _laplacian(graphs, g):
    n = int(graphs.num_nodes()[g])
    a = torch.zeros(n, n, dtype=torch.float64)
    src, dst = graphs.edges[:, graphs.edge_ptr[g] : graphs.edge_ptr[g + 1]]
    a[src, dst] = 1
    d = a.sum(1).clamp(min=1).rsqrt()
    return torch.eye(n, dtype=torch.float64) - d[:, None] * a * d[None, :]


def test_pe_are_orthonormal_eigenvectors_on_real_molecules(bbbp):
    pe = bbbp.load_pe(8)
    for g in range(0, 400, 7):
        rows = slice(int(bbbp.node_ptr[g]), int(bbbp.node_ptr[g + 1]))
        v = pe[rows].double()
        v = v[:, v.abs().sum(0) > 0]  # zero columns are padding
        laplacian = _laplacian(bbbp, g)
        eigenvalues = (v * (laplacian @ v)).sum(0)
        assert torch.allclose(laplacian @ v, v * eigenvalues, atol=1e-5)
        assert torch.allclose(v.T @ v, torch.eye(v.shape[1], dtype=torch.float64), atol=1e-5)
        assert (eigenvalues > 1e-6).all()  # trivial eigenvectors are never kept


def test_pe_drops_every_trivial_eigenvector_and_pads_small_graphs():
    from ggt_search.indexing import counts_to_ptr
    from ggt_search.molecules import featurize

    odd = [featurize(s) for s in ("CCO.CCN", "CO", "c1ccccc1")]  # two components; two atoms; a ring
    edges = torch.from_numpy(np.concatenate([g.edges for g in odd], axis=1))
    node_ptr = counts_to_ptr(torch.tensor([len(g.atoms) for g in odd]))
    edge_ptr = counts_to_ptr(torch.tensor([g.edges.shape[1] for g in odd]))
    pe = laplacian_pe(edges, node_ptr, edge_ptr, k=5)
    salt = pe[0:6]
    components = torch.tensor([[1.0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]])
    assert salt[:, :4].abs().sum(0).gt(0).all()  # 6 atoms - 2 components = 4 informative columns
    assert torch.allclose(salt[:, 4], torch.zeros(6))  # then padding
    # No kept column lies in the span of the (degree-weighted) component indicators.
    weights = torch.tensor([1.0, 2, 1, 1, 2, 1]).sqrt()
    assert torch.allclose(salt[:, :4].T @ (components * weights).T, torch.zeros(4, 2), atol=1e-5)
    two_atoms = pe[6:8]
    assert two_atoms[:, 0].abs().sum() > 0 and torch.allclose(two_atoms[:, 1:], torch.zeros(2, 4))
    assert pe[8:14].abs().sum(0).gt(0).all()  # benzene: 5 non-trivial eigenvectors


def test_substructure_counts_are_cached_and_verified(bbbp):
    atoms, bonds = bbbp.load_substructures()
    assert (bbbp.cache_dir / "cycles-3-8.pt").exists() and (bbbp.cache_dir / "cycles-3-8.pt.sha256").exists()
    assert atoms.shape == (len(bbbp.atoms), 6) and bonds.shape == (len(bbbp.bonds), 6)
    again = bbbp.load_substructures()
    assert torch.equal(again[0], atoms) and torch.equal(again[1], bonds)
    assert (atoms[:, 3] > 0).any() and (atoms >= 0).all()  # benzene rings are everywhere in BBBP


def test_pe_cache_is_reused(bbbp):
    first = bbbp.load_pe(4)
    assert (bbbp.cache_dir / "pe-k20.pt").exists()
    assert torch.equal(bbbp.load_pe(16)[:, :4], first[:, :4])


@pytest.mark.parametrize(
    "name, table", [("ogbg-molbbbp", "BBBP.csv"), ("ogbg-molesol", "delaney.csv"), ("ogbg-molfreesolv", "freesolv.csv")]
)
def test_offline_builds_equal_ogbs_own_files(moleculenet, name, table):
    """Molecules, labels, atom and bond features and split membership, against OGB's downloads in
    ../shared/data/ogb-raw."""
    official = read_ogb_raw(name, moleculenet.parent / "ogb-raw" / name.replace("-", "_"))
    offline = load_dataset(DatasetSpec(name, source=str(moleculenet / table)))
    assert offline.num_graphs == official.num_graphs
    assert torch.equal(offline.node_ptr, official.node_ptr) and torch.equal(offline.atoms, official.atoms)
    assert torch.equal(offline.edge_ptr, official.edge_ptr)
    assert torch.allclose(offline.y, official.y, equal_nan=True, atol=1e-6)
    for split in ("train", "valid", "test"):
        assert torch.equal(offline.split[split], official.split[split].sort().values), split
    for g in range(offline.num_graphs):  # the same bonds with the same features, in both directions (order may differ)
        rows = slice(int(offline.edge_ptr[g]), int(offline.edge_ptr[g + 1]))
        own = sorted(zip(map(tuple, offline.edges[:, rows].T.tolist()), map(tuple, offline.bonds[rows].tolist())))
        read = sorted(zip(map(tuple, official.edges[:, rows].T.tolist()), map(tuple, official.bonds[rows].tolist())))
        assert own == read, g


def test_an_ogb_name_built_offline_knows_its_tables_columns(moleculenet, tmp_path):
    """MoleculeNet's BACE table names its SMILES column `mol` and its label `Class`, beside other numeric columns."""
    rows = pd.read_csv(moleculenet / "BBBP.csv").head(300)
    bace = pd.DataFrame(
        {
            "mol": rows["smiles"],
            "CID": [f"BACE_{i}" for i in range(300)],
            "Class": rows["p_np"],
            "Model": "Train",
            "pIC50": 5.0,
            "MW": 300.0,
        }
    )
    bace.to_csv(tmp_path / "bace.csv", index=False)
    graphs = load_dataset(DatasetSpec("ogbg-molbace", source=str(tmp_path)))
    assert graphs.num_tasks == 1 and graphs.task_names == ["Class"] and graphs.metric == "rocauc"


@pytest.mark.parametrize(
    "text, message",
    [
        ("smiles,y\n", "has a header but no rows"),
        ("smiles,y,z\nCCO,1,\nCCN,0,\nc1ccccc1,1,\n", r"target column\(s\) \['z'\] of .* hold no labels"),
        (
            "smiles,y\nc1ccccc1C,1\nc1ccccc1N,0\nc1ccccc1O,1\n",
            "leaves train with no molecules; use more molecules, or --split random",
        ),
    ],
)
def test_tables_that_cannot_train_are_refused_before_training(tmp_path, text, message):
    path = tmp_path / "own.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_dataset(DatasetSpec(str(path)))


def test_a_split_with_one_class_is_refused(moleculenet, tmp_path):
    from ggt_search.molecules import random_split

    frame = pd.read_csv(moleculenet / "BBBP.csv").head(100)
    train, valid, test = random_split(100, 0)
    frame["p_np"] = 0
    frame.loc[np.r_[train[:10], test[:3]], "p_np"] = 1  # no positive lands in valid
    path = tmp_path / "one-class.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(UserError, match="leaves valid with one class only, so rocauc is undefined"):
        load_dataset(DatasetSpec(str(path), split="random", split_seed=0))


@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
@pytest.mark.parametrize("file", ["graphs.pt", "pe-k20.pt"])
def test_a_damaged_cache_file_is_detected_and_rebuilt(tmp_path, monkeypatch, capsys, damage, file):
    monkeypatch.setenv("GGT_SEARCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "mols.csv").write_text(
        "smiles,y\n"
        + "".join(
            f"{s},{i / 2}\n"
            for i, s in enumerate(
                [
                    "CCO",
                    "CCN",
                    "c1ccccc1",
                    "CC(=O)O",
                    "c1ccncc1",
                    "C1CCCCC1",
                    "CCCl",
                    "c1ccc2ccccc2c1",
                    "OCC(O)CO",
                    "CNC",
                    "C1CCOC1",
                    "c1ccsc1",
                ]
            )
        )
    )
    spec = DatasetSpec(str(tmp_path / "mols.csv"), split="random")
    first = load_dataset(spec)
    pe = first.load_pe(4).clone()
    path = first.cache_dir / file
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    capsys.readouterr()
    again = load_dataset(spec)
    assert torch.equal(again.bonds, first.bonds) and torch.equal(again.load_pe(4), pe)
    assert f"cache file {path} is damaged" in capsys.readouterr().err
    assert load_dataset(spec).load_pe(4) is not None and "damaged" not in capsys.readouterr().err  # repaired for good


def test_every_sources_dataset_flag_sets_its_spec_field():
    from ggt_search import cli
    from ggt_search.config import build

    args = cli.build_parser().parse_args(
        [
            "train",
            "--dataset",
            "own.csv",
            "--source",
            "tables",
            "--smiles-column",
            "mol",
            "--targets",
            "a, b",
            "--task-type",
            "regression",
            "--split",
            "random",
            "--split-seed",
            "3",
            "--invalid-smiles",
            "skip",
        ]
    )
    assert build(DatasetSpec, cli.dataset_overrides(args), "dataset") == DatasetSpec(
        "own.csv",
        source="tables",
        smiles_column="mol",
        target_columns=("a", "b"),
        task_type="regression",
        split="random",
        split_seed=3,
        invalid_smiles="skip",
    )
