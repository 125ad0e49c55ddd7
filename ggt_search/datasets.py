"""Datasets: a DatasetSpec (or a pre-training corpus) in, the cached GraphSet every run trains on out.

Where the molecules come from is the business of `ggt_search.sources` (an OGB download, the
MoleculeNet table offline, the user's own CSV, the embedded `nci-tpsa`, the corpus); this
module caches what a source reads, the same way for each: under a key of the source file's
checksum, the options, and the featurization version, so the second load is a single
`torch.load`. The leakage guard's held-out SMILES are read here too.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from ggt_search.config import DatasetSpec
from ggt_search.errors import UserError
from ggt_search.files import make_folder
from ggt_search.graphset import SPLITS, GraphSet, cache_root, load_verified, save_verified
from ggt_search.molecules import balanced_scaffold_split
from ggt_search.sources import Corpus, Source, source_for
from ggt_search.sources.table import check_split

FEATURIZATION_VERSION = 2  # bump when molecules.py changes what a graph holds or how it is split


def load_dataset(spec: DatasetSpec | str, *, rebuild: bool = False) -> GraphSet:
    """The dataset's GraphSet, from the cache when it is there.

    A balanced scaffold split (`split: balanced-scaffold`) is the dataset's own GraphSet with
    another split: the graphs, PEs and cycle counts are cached once, and each split seed's
    split beside them (split-balanced-scaffold-seed{N}.pt), so the cache key holds the seed.
    """
    spec = DatasetSpec(spec) if isinstance(spec, str) else spec
    if spec.split != "balanced-scaffold":
        return _load(source_for(spec), rebuild)
    source = source_for(replace(spec, split="scaffold", split_seed=0))  # the graphs every split seed shares
    graphs = _load(source, rebuild)
    path = graphs.cache_dir / f"split-balanced-scaffold-seed{spec.split_seed}.pt"
    split = None if rebuild else load_verified(path)
    if split is None:
        scaffolds = source.scaffolds(source.resolve())
        if len(scaffolds) != graphs.num_graphs:
            raise UserError(
                f"cannot align {spec.name}'s scaffolds with its graphs ({len(scaffolds)} vs {graphs.num_graphs}); "
                "rebuild it with --rebuild"
            )
        parts = balanced_scaffold_split(scaffolds, spec.split_seed)
        check_split(source.resolve(), spec.split, graphs.y.numpy(), parts, graphs.metric)
        split = {name: torch.from_numpy(rows) for name, rows in zip(SPLITS, parts, strict=True)}
        save_verified(split, path)
    graphs.split = split
    return graphs


def held_out_smiles(spec: DatasetSpec) -> set[str]:
    """Canonical SMILES of a dataset's validation and test molecules: what pre-training must not see."""
    source = source_for(spec)
    smiles = source.smiles(source.resolve())
    graphs = load_dataset(spec)
    if len(smiles) != graphs.num_graphs:
        raise UserError(
            f"cannot align {spec.name}'s SMILES with its graphs ({len(smiles)} vs {graphs.num_graphs}); "
            "rebuild it with --rebuild"
        )
    return {smiles[i] for split in ("valid", "test") for i in graphs.split[split].tolist()}


def load_corpus(
    path: Path, smiles_column: str | None, max_molecules: int | None, exclude: set[str]
) -> tuple[GraphSet, int]:
    """An unlabeled SMILES file as a GraphSet (every molecule in "train"), without the `exclude`d
    molecules; (graphs, how many were excluded)."""
    corpus = Corpus(path, smiles_column, max_molecules, exclude)
    return _load(corpus), corpus.excluded


def _load(source: Source, rebuild: bool = False) -> GraphSet:
    """What the source reads, from the cache when it is there; else read, then cached (verified)."""
    path = source.resolve()
    checksum = source.checksum(path)
    key = json.dumps([FEATURIZATION_VERSION, *source.cache_key(checksum)], sort_keys=True)
    folder = cache_root() / f"{source.cache_name()}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    stored = None if rebuild else load_verified(folder / "graphs.pt")
    if stored is not None:
        try:
            graphs = source.unpack(stored, folder)
            problem = graphs.inconsistency()
        except (KeyError, TypeError, AttributeError, IndexError, RuntimeError) as error:  # not a GraphSet's fields
            problem = f"{type(error).__name__}: {error}"
        if problem is None:
            return graphs
        print(
            f"warning: cache file {folder / 'graphs.pt'} holds no dataset ({problem}); rebuilding it", file=sys.stderr
        )
    graphs = source.read(path)
    graphs.checksum = checksum
    make_folder(folder)
    for stale in folder.glob("pe-k*.pt"):  # computed from the graphs this build replaces
        stale.unlink()
    save_verified(source.pack(graphs), folder / "graphs.pt")
    graphs.cache_dir = folder
    return graphs
