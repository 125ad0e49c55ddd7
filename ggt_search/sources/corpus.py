"""The pre-training corpus: an unlabeled SMILES file (csv or csv.gz, e.g. ZINC) as a GraphSet with
every molecule in "train", minus the molecules the leakage guard excludes. Read in chunks, with
a progress bar, since a corpus may hold millions of molecules.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ggt_search.errors import UserError
from ggt_search.files import reading
from ggt_search.sources.base import Source

if TYPE_CHECKING:
    from ggt_search.graphset import GraphSet


class Corpus(Source):
    chunk = 50_000  # molecules featurized at a time

    def __init__(self, path: Path, smiles_column: str | None, max_molecules: int | None, exclude: set[str]):
        self.path, self.smiles_column, self.max_molecules, self.exclude = path, smiles_column, max_molecules, exclude
        self.excluded = 0  # how many of its molecules were excluded; known once read or loaded

    def resolve(self) -> Path:
        if not self.path.is_file():
            raise UserError(f"corpus file not found: {self.path}")
        return self.path

    def cache_name(self) -> str:
        return f"corpus-{self.path.name.split('.')[0]}"

    def cache_key(self, checksum: str) -> list:
        return [checksum, self.smiles_column, self.max_molecules, sorted(self.exclude)]

    def read(self, path: Path) -> GraphSet:
        import pandas as pd
        import torch

        from ggt_search.graphset import GraphSet
        from ggt_search.molecules import canonical_smiles, featurize, parallel_map
        from ggt_search.progress import Progress

        try:
            with reading(path):
                header = pd.read_csv(path, nrows=0).columns
            column = self.smiles_column or next(c for c in header if str(c).lower() == "smiles")
            reader = pd.read_csv(path, usecols=[column], nrows=self.max_molecules, chunksize=self.chunk)
        except (StopIteration, ValueError, pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError):
            raise UserError(f"{path} has no SMILES column of that name; name it with --smiles-column") from None
        molecules, self.excluded = [], 0
        with reading(path), Progress(self.max_molecules, f"featurizing {path.name}", "molecules") as bar:
            for frame in reader:
                smiles = frame[column].astype(str).tolist()
                canonical = parallel_map(canonical_smiles, smiles)
                keep = [s for s, c in zip(smiles, canonical, strict=True) if c is not None and c not in self.exclude]
                self.excluded += sum(1 for c in canonical if c is not None and c in self.exclude)
                molecules += [g for g in parallel_map(featurize, keep) if g is not None]
                bar.update(len(smiles))
        if not molecules:
            raise UserError(f"no molecule of {path} could be parsed; check the SMILES column")
        return GraphSet.from_molecules(
            molecules,
            name=path.name,
            task_type="pretraining",
            metric="masked-atom accuracy",
            task_names=[],
            y=torch.zeros(len(molecules), 0),
            split={"train": torch.arange(len(molecules)), "valid": torch.arange(0), "test": torch.arange(0)},
        )

    def pack(self, graphs: GraphSet) -> dict:
        return {"graphs": graphs.stored(), "excluded": self.excluded}

    def unpack(self, stored: dict, folder: Path) -> GraphSet:
        self.excluded = stored["excluded"]
        return super().unpack(stored["graphs"], folder)
