"""What every source says: where its file is, what names its cache entry, how it reads into a GraphSet.

`datasets.py` does the rest the same way for every source: hashes the featurization version
with `cache_key` into the cache folder's name, loads the verified cache file or `read`s and
caches it, and aligns `smiles` with the split for the leakage guard.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ggt_search.config import DatasetSpec
    from ggt_search.graphset import GraphSet


@dataclass(frozen=True)
class Flag:
    """A dataset flag of the command line; it sets one DatasetSpec field."""

    name: str  # --smiles-column
    field: str  # the DatasetSpec field it sets
    help: str
    type: Callable[[str], Any] = str  # the flag's text -> the field's value
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:  # argparse's attribute name for the flag
        return self.name.removeprefix("--").replace("-", "_")


class Source(ABC):
    """A place molecules come from, read once into a GraphSet and then served from the cache."""

    @abstractmethod
    def resolve(self) -> Path:
        """The file (or folder) it is built from; one clear error when there is none."""

    def checksum(self, path: Path) -> str:
        """What stands for the file's content in the cache key and in `GraphSet.checksum`."""
        from ggt_search.graphset import file_sha256

        return file_sha256(path)

    @abstractmethod
    def cache_name(self) -> str:
        """The readable start of its cache folder's name."""

    @abstractmethod
    def cache_key(self, checksum: str) -> list:
        """Everything, with the file's checksum, that decides the GraphSet's content (hashed, JSON)."""

    @abstractmethod
    def read(self, path: Path) -> GraphSet:
        """The GraphSet, built from the file, with its task type and metric."""

    def pack(self, graphs: GraphSet) -> dict:
        """What its cache file holds."""
        return graphs.stored()

    def unpack(self, stored: dict, folder: Path) -> GraphSet:
        from ggt_search.graphset import GraphSet

        return GraphSet(**stored, cache_dir=folder)


class DatasetSource(Source):
    """A labelled dataset that a DatasetSpec names; `sources.SOURCES` asks each kind in turn if it `claims` one."""

    names: ClassVar[tuple[str, ...]] = ()  # the dataset names it answers to, listed when a name is unknown
    flags: ClassVar[tuple[Flag, ...]] = ()  # the DatasetSpec fields it reads beyond the name, as CLI flags
    what: ClassVar[str] = ""  # what kind of dataset it is, for the message that refuses a flag it does not read

    def __init__(self, spec: DatasetSpec):
        self.spec = spec

    @classmethod
    @abstractmethod
    def claims(cls, spec: DatasetSpec) -> bool:
        """Whether this kind reads the spec."""

    def cache_name(self) -> str:
        return Path(self.spec.name).stem

    def cache_key(self, checksum: str) -> list:
        content = {k: v for k, v in self.spec.to_dict().items() if k != "source"}  # the checksum stands for the file
        return [content, checksum]

    @abstractmethod
    def smiles(self, path: Path) -> list[str]:
        """The canonical SMILES of its GraphSet's molecules, in order: what the leakage guard compares."""

    @abstractmethod
    def scaffolds(self, path: Path) -> list[str]:
        """The Bemis-Murcko scaffold of each of its GraphSet's molecules, in order: what a seeded split groups."""
