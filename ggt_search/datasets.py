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
from pathlib import Path

from ggt_search.config import DatasetSpec
from ggt_search.errors import UserError
from ggt_search.files import make_folder
from ggt_search.graphset import GraphSet, cache_root, file_sha256, load_verified, save_verified
from ggt_search.sources import Corpus, Source, source_for

__all__ = ["GraphSet", "cache_root", "file_sha256", "held_out_smiles", "load_corpus", "load_dataset"]

FEATURIZATION_VERSION = 2  # bump when molecules.py changes what a graph holds or how it is split


def load_dataset(spec: DatasetSpec | str, *, rebuild: bool = False) -> GraphSet:
    """The dataset's GraphSet, from the cache when it is there."""
    return _load(source_for(DatasetSpec(spec) if isinstance(spec, str) else spec), rebuild)


def held_out_smiles(spec: DatasetSpec) -> set[str]:
    """Canonical SMILES of a dataset's validation and test molecules: what pre-training must not see."""
    source = source_for(spec)
    smiles = source.smiles(source.resolve())
    graphs = _load(source)
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
