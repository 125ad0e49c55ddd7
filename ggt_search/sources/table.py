"""A table of SMILES and labels, featurized with OGB's features (`molecules.featurize`): what the
MoleculeNet, own-CSV and embedded sources share. Each says how to read its file into a frame,
its default columns, its task type and metric, and its split.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

from ggt_search.config import DatasetSpec, choices
from ggt_search.errors import UserError
from ggt_search.files import reading
from ggt_search.sources.base import DatasetSource, Flag

OPTIONS = choices(DatasetSpec)  # the dataset fields' options, from their Literal types
# Labels beyond this size overflow float32 once squared (a regression's loss and RMSE): refused, to be rescaled.
LARGEST_LABEL = 1e15

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from ggt_search.graphset import GraphSet
    from ggt_search.molecules import MolGraph


def column_list(text: str) -> list[str]:
    """`a, b,c` -> ["a", "b", "c"]."""
    return [c.strip() for c in text.split(",") if c.strip()]


class TableSource(DatasetSource):
    flags = (
        Flag(
            "--smiles-column",
            "smiles_column",
            "your table's SMILES column (default: 'smiles', any case)",
        ),
        Flag("--targets", "target_columns", "comma-separated target columns (default: all others)", type=column_list),
        Flag(
            "--invalid-smiles",
            "invalid_smiles",
            "unparsable SMILES: stop with their line numbers (default) or drop them",
            choices=OPTIONS["invalid_smiles"],
        ),
    )
    default_smiles_column = "smiles"  # the SMILES column when the spec names none (matched in any case)
    default_targets: tuple[str, ...] | None = None  # the label columns when the spec names none (None: all others)

    def frame(self, path: Path) -> pd.DataFrame:
        import pandas as pd

        return pd.read_csv(path)

    @abstractmethod
    def task(self, path: Path, y: np.ndarray) -> tuple[str, str]:
        """(task type, metric) of the labels y [G, T]."""

    def split(self, molecules: list[MolGraph]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row indices of train, valid and test: OGB's scaffold split unless a kind says otherwise."""
        from ggt_search.molecules import scaffold_split

        return scaffold_split([g.scaffold for g in molecules])

    def graph_name(self) -> str:
        return self.spec.name

    def table(self, path: Path) -> tuple[pd.Series, pd.DataFrame]:
        """(SMILES, numeric labels), with one clear error for a table that cannot be read or has no labels."""
        import pandas as pd

        spec = self.spec
        try:
            with reading(path):
                frame = self.frame(path)
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
            raise UserError(f"cannot read {path} as CSV: {str(error).splitlines()[0]}") from None
        default = self.default_smiles_column
        named = (c for c in frame.columns if str(c).lower() == default.lower())
        smiles_column = spec.smiles_column or next(named, None)
        if smiles_column is None:
            raise UserError(
                f"{path} has no {default!r} column; name it with --smiles-column "
                f"(columns: {', '.join(map(str, frame.columns))})"
            )
        targets = list(spec.target_columns or self.default_targets or [c for c in frame.columns if c != smiles_column])
        missing = [c for c in [smiles_column, *targets] if c not in frame.columns]
        if missing:
            raise UserError(f"{path} has no column(s) {missing}; columns are: {', '.join(map(str, frame.columns))}")
        if not targets:
            raise UserError(f"{path} has no target column besides {smiles_column!r}")
        if frame.empty:
            raise UserError(f"{path} has a header but no rows; add molecules (one SMILES and its labels per row)")
        labels = frame[targets].apply(pd.to_numeric, errors="coerce")
        bad = [c for c in targets if labels[c].isna().sum() > frame[c].isna().sum()]
        if bad:
            raise UserError(
                f"target column(s) {bad} of {path} hold non-numeric values; choose numeric columns with --targets"
            )
        huge = [c for c in targets if not (labels[c].dropna().abs() < LARGEST_LABEL).all()]
        if huge:
            raise UserError(
                f"target column(s) {huge} of {path} hold infinite labels or labels of {LARGEST_LABEL:g} or more, "
                "which float32 training cannot square; rescale them (or leave them out with --targets)"
            )
        empty = [c for c in targets if labels[c].isna().all()]
        if empty:
            raise UserError(
                f"target column(s) {empty} of {path} hold no labels at all; fill them or leave them out with --targets"
            )
        smiles = frame[smiles_column].astype(str)
        padded = [row + 2 for row, text in enumerate(smiles) if text != text.strip()]
        if padded:
            lines = ", ".join(map(str, padded[:10])) + (" ..." if len(padded) > 10 else "")
            raise UserError(
                f"{len(padded)} SMILES of {path} have surrounding spaces (line {lines}); strip them "
                "(RDKit reads a SMILES only up to its first space)"
            )
        return smiles, labels

    def read(self, path: Path) -> GraphSet:
        import numpy as np
        import torch

        from ggt_search.graphset import SPLITS, GraphSet
        from ggt_search.molecules import featurize, parallel_map

        smiles, labels = self.table(path)
        parsed = parallel_map(featurize, smiles.tolist(), f"featurizing {path.name}")
        invalid = [row for row, graph in enumerate(parsed) if graph is None]
        if invalid:
            lines = ", ".join(str(r + 2) for r in invalid[:10]) + (" ..." if len(invalid) > 10 else "")
            if self.spec.invalid_smiles != "skip" or len(invalid) == len(parsed):
                none = len(invalid) == len(parsed)
                what = "no SMILES could be parsed" if none else f"{len(invalid)} SMILES could not be parsed"
                fix = "check the SMILES column" if none else "fix them, or pass --invalid-smiles skip to drop them"
                raise UserError(f"{what} in {path} (line {lines}); {fix}")
            print(f"warning: skipped {len(invalid)} unparsable SMILES of {path} (line {lines})")
        keep = [row for row, graph in enumerate(parsed) if graph is not None]
        molecules = [parsed[row] for row in keep]
        y = labels.to_numpy(np.float32)[keep]
        task_type, metric = self.task(path, y)
        split = self.split(molecules)
        check_split(path, self.spec.split, y, split, metric)
        return GraphSet.from_molecules(
            molecules,
            name=self.graph_name(),
            task_type=task_type,
            metric=metric,
            task_names=list(labels.columns),
            y=torch.from_numpy(y),
            split={name: torch.from_numpy(idx).long() for name, idx in zip(SPLITS, split, strict=True)},
        )

    def smiles(self, path: Path) -> list[str]:
        from ggt_search.molecules import canonical_smiles, parallel_map

        smiles, _ = self.table(path)
        canonical = parallel_map(canonical_smiles, smiles.tolist(), f"canonical SMILES of {path.name}")
        return [c for c in canonical if c is not None]  # the GraphSet's rows

    def scaffolds(self, path: Path) -> list[str]:
        from ggt_search.molecules import parallel_map, scaffold_of_smiles

        smiles, _ = self.table(path)
        scaffolds = parallel_map(scaffold_of_smiles, smiles.tolist(), f"scaffolds of {path.name}")
        return [s for s in scaffolds if s is not None]  # the GraphSet's rows


FIXES = {
    "scaffold": "use more molecules, or --split random",
    "balanced-scaffold": "use more molecules, or other split seeds",
}


def check_split(path: Path, kind: str, y: np.ndarray, split, metric: str) -> None:
    """Refuse, before any training, a split that cannot train or score: an empty part, or no scorable labels."""
    import numpy as np

    from ggt_search.graphset import SPLITS

    fix = FIXES.get(kind, "use more molecules")
    for name, rows in zip(SPLITS, split, strict=True):
        labelled = ~np.isnan(y[rows])
        if not labelled.any():
            held = "no molecules" if len(rows) == 0 else f"{len(rows)} molecules but no labels"
            raise UserError(f"the {kind} split of {path} leaves {name} with {held}; {fix}")
        unlabelled = [t for t in range(y.shape[1]) if not labelled[:, t].any()]
        if metric not in ("rocauc", "ap") and unlabelled:  # a regression scores every task: one empty is NaN
            raise UserError(
                f"the {kind} split of {path} leaves {name} with no labels of task(s) {unlabelled}, so {metric} is "
                f"undefined there; {fix}, or leave those tasks out with --targets"
            )
        if metric in ("rocauc", "ap") and name != "train":
            both = [
                ((y[rows, t][labelled[:, t]] == 1).any() and (y[rows, t][labelled[:, t]] == 0).any())
                for t in range(y.shape[1])
            ]
            if not any(both):
                raise UserError(
                    f"the {kind} split of {path} leaves {name} with one class only, "
                    f"so {metric} is undefined there; {fix}"
                )
