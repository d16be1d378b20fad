"""Atomic file writes: the one temp-file-and-rename helper of the package.

:func:`atomic_path` hands out a hidden temporary sibling of the destination (``.<stem>.<hex>.partial<suffix>``,
same directory and suffix, so the rename is atomic and a suffix-driven writer picks the same format), and renames
it onto the destination once the block has written it and the bytes are on disk. A failure or a kill at any point
leaves the destination as it was; a leftover temporary file may remain after a kill.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nwb_extract.errors import InputError

__all__ = ["atomic_path", "temporary_sibling"]


def temporary_sibling(path: Path) -> Path:
    """A fresh hidden sibling of ``path`` (same directory and suffix)."""
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex}.partial{path.suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block returns, move what it wrote onto ``path``.

    The temporary file is flushed to disk (``fsync``) before ``os.replace`` puts it in place, and removed when the
    block raises. With ``overwrite=False`` a file that appeared at ``path`` meanwhile is an :class:`InputError`.
    """
    path = Path(path)
    temporary = temporary_sibling(path)
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        if path.exists() and not overwrite:
            raise InputError(f"{path} appeared while writing; pass overwrite=True to replace it")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
