"""Atomic file writes: the one temp-file-and-rename helper of the package, and the lock of an in-place update.

:func:`atomic_path` hands out a hidden temporary sibling of the destination (``.<stem>.<hex>.partial<suffix>``,
same directory and suffix, so the rename is atomic and a suffix-driven writer picks the same format), and renames
it onto the destination once the block has written it and the bytes are on disk. A failure or a kill at any point
leaves the destination as it was; a leftover temporary file may remain after a kill. A full disk (or any other
operating-system error while writing) is an :class:`OutputNotWritableError` naming the file.

:func:`exclusive_update` guards a read-copy-rename update of an existing file against a second process doing the
same at once, which would silently drop the first one's change: an exclusive, non-blocking ``flock`` on a lock file
beside it (docs/decisions.md, "Concurrent appends").
"""

from __future__ import annotations

import errno
import gc
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nwb_extract.errors import InputError, OutputNotWritableError

__all__ = ["atomic_path", "exclusive_update", "temporary_sibling"]


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
        with _quiet_failed_hdf5_writes():
            yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        if path.exists() and not overwrite:
            raise InputError(f"{path} appeared while writing; pass overwrite=True to replace it")
        os.replace(temporary, path)
    except OSError as err:
        failure = _write_failure(path, err)
    except RuntimeError as err:  # h5py reports a failed HDF5 write (e.g. a full disk) as RuntimeError
        if not _is_disk_error(err):
            raise
        failure = _write_failure(path, err)
    else:
        return
    finally:
        temporary.unlink(missing_ok=True)
    raise OutputNotWritableError(failure)


@contextmanager
def exclusive_update(path: str | os.PathLike) -> Iterator[None]:
    """Hold the update lock of the file ``path`` for the block (an in-place update of it).

    The lock is a non-blocking ``flock`` on a hidden lock file beside ``path`` (``.<name>.lock``), removed when the
    block ends; the kernel releases it when the process dies, so a kill leaves no stale lock (at most the empty
    file, which the next update takes over). Not a lock on ``path`` itself: HDF5 locks the files it opens with
    ``flock`` too, and readers of ``path`` must not be refused. A lock file removed between opening and locking
    (its holder finished meanwhile) counts as busy. Without ``fcntl`` (Windows) the block runs unlocked.

    Raises
    ------
    OutputNotWritableError
        Another process is updating ``path``, or the lock file cannot be created.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    busy = OutputNotWritableError(f"another process is appending to {path} (it holds {lock}); nothing was "
                                  "written: run again when it has finished")
    try:
        handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise OutputNotWritableError(f"cannot create the lock file {lock} for updating {path}: {err}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy from None
        try:
            current = os.stat(lock).st_ino == os.fstat(handle).st_ino
        except FileNotFoundError:
            current = False
        if not current:
            raise busy
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)  # while still locked: a waiting process then sees it gone
    finally:
        os.close(handle)


@contextmanager
def _quiet_failed_hdf5_writes() -> Iterator[None]:
    """Inside the block, drop h5py's reports of a failed write: once an HDF5 write has failed (e.g. a full disk),
    every HDF5 object freed afterwards retries it and prints the failure as a traceback (Cython prints it through
    ``sys.excepthook``, then "Exception ignored" through ``sys.unraisablehook``), which the one error raised by
    :func:`atomic_path` already says. Every other error is reported as usual."""
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def failed_write(error: BaseException | None) -> bool:
        return isinstance(error, (RuntimeError, OSError)) and "file write failed" in str(error)

    def on_exception(kind: Any, error: BaseException, trace: Any) -> None:
        if not failed_write(error):
            excepthook(kind, error, trace)

    def on_unraisable(unraisable: Any) -> None:
        printed = unraisable.exc_value is None and "h5py" in repr(unraisable.object)  # after the excepthook
        if not (failed_write(unraisable.exc_value) or printed):
            unraisablehook(unraisable)

    sys.excepthook, sys.unraisablehook = on_exception, on_unraisable
    try:
        yield
    except BaseException:
        gc.collect()  # free what a failed write left now, while the hooks are in place
        raise
    finally:
        sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


def _is_disk_error(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT) or \
        any(text in str(err).lower() for text in ("no space left", "disk quota", "file write failed"))


def _write_failure(path: Path, err: BaseException) -> str:
    what = "the disk is full" if _is_disk_error(err) else f"{type(err).__name__}: {err}"
    return (f"writing {path} failed: {what}; nothing was changed there (the partial file was removed). Free some "
            "space or write elsewhere with -o")
