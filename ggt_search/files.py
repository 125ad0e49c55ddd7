"""Files written whole or not at all, and file-system faults said in one line.

Every file ggt-search writes (a run's weights and metrics, the dataset cache, a study's
artifacts, summaries and reports) goes through `atomic_write`: it is written to a temporary
file beside its real name and renamed onto it only once complete, so a full disk or a killed
process never leaves a half-written file under the real name, nor the temporary one behind.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ggt_search.errors import UserError


class DiskFull(UserError):
    """The disk (or quota) filled while writing: a search stops instead of failing every trial after."""


# What a user can fix, and how; any other OSError is a bug and keeps its traceback.
FIXES = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a parent of it is a file, not a folder",
    errno.EEXIST: "a file is in the way of a folder",
    errno.EISDIR: "it is a folder",
}


def file_error(error: OSError, path: Path | str | None = None) -> UserError | None:
    """The one-line UserError for a file-system fault a user can fix (None for any other OSError)."""
    problem = FIXES.get(error.errno)
    if problem is None:
        return None
    where = error.filename or path
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"{problem} writing {where}; free some space (or pass another --out) and rerun the command")
    return UserError(f"cannot write {where}: {problem}; choose a writable place (e.g. another --out or --storage)")


@contextmanager
def file_faults(path: Path | str) -> Iterator[None]:
    """File-system faults a user can fix, raised as one-line UserErrors naming `path`."""
    try:
        yield
    except OSError as error:
        user_error = file_error(error, path)
        if user_error is None:
            raise
        raise user_error from None


@contextmanager
def reading(path: Path | str) -> Iterator[None]:
    """Reading `path`: a damaged or truncated .gz, or a file that may not be read, said in one line."""
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise UserError(f"cannot read {path}: damaged or truncated compressed file ({error}); get it again") from None
    except PermissionError:
        raise UserError(f"cannot read {path}: permission denied") from None


def check_folder(path: Path | str, what: str) -> None:
    """Refuse, before anything is made, a folder's path that a file is in the way of (at it or at a parent)."""
    path = Path(path)
    for place in (path, *path.parents):
        if place.exists():
            if not place.is_dir():
                where = "" if place == path else f" ({place} is a file)"
                raise UserError(f"{what} {path} must be a folder, but a file is in the way{where}; choose another")
            return


def make_folder(path: Path | str) -> Path:
    """mkdir -p, with a read-only place or a file in the way said in one line."""
    path = Path(path)
    with file_faults(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A temporary path beside `path` for the block to write; renamed onto `path` when the block
    succeeds, removed when it fails (a full disk says so in one line)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with file_faults(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path | str, write: Callable[[BinaryIO], None]) -> None:
    """`write(file)` into a temporary file, renamed onto `path` only once complete."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def write_text(path: Path | str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def save_tensors(obj, path: Path | str) -> None:
    """torch.save, atomically. Through a Python file, so a full disk raises OSError(ENOSPC)
    (torch's own writer raises a RuntimeError that does not say why)."""
    import torch  # here: the command line imports this module, and starts faster without torch

    atomic_write(path, lambda f: torch.save(obj, f))


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
