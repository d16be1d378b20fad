"""Remote HDF5 files for h5py: ``remfile`` with a time limit on every HTTP request, and the error of a failed read
kept, so that a network failure is reported as one (h5py turns a file object's error into its own).

remfile retries a failed request (connection dropped, HTTP 429/5xx, a body shorter than the range asked for) with
exponential backoff (0.1 s, 0.2 s, ...; ``remfile.RemFile._num_request_retries`` retries), but sends its requests
without a timeout, so a server that stops answering would hold a run forever. Here every request, the first one
that learns the file size included, gives up after :data:`TIMEOUT_S` seconds without data and counts as a failed
try (docs/dandi.md, "Network failures").
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from nwb_extract.errors import RemoteReadError

__all__ = ["TIMEOUT_S", "RemoteFile", "network_errors"]

#: Seconds an HTTP request may wait to connect, or between bytes of the answer, before it counts as failed.
TIMEOUT_S = 60.0


class HTTPStatusError(Exception):
    """A remote file answered with an HTTP error status (``status``); the message carries the number."""

    def __init__(self, url: str, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status} {reason} from {url}")
        self.status = status


class RemoteFile:
    """A read-only file object over an http(s) URL for ``h5py.File``: remfile, with :data:`TIMEOUT_S` on every
    request and the error of a failed read kept in :attr:`error`.

    Parameters
    ----------
    url : str
    cache_dir : str or os.PathLike, optional
        remfile's on-disk chunk cache.

    Raises
    ------
    HTTPStatusError
        The size request answered an error status: at once for a 4xx other than 429, after the retries otherwise.
    requests.RequestException
        The server could not be reached (or timed out) in any try.
    """

    def __init__(self, url: str, cache_dir: str | os.PathLike | None = None) -> None:
        import remfile

        cache = None if cache_dir is None else remfile.DiskCache(str(cache_dir))
        self.url = url
        self.error: BaseException | None = None
        self._file = remfile.File(url, disk_cache=cache, _size=_content_length(url))
        self._file.session = _session()

    def read(self, size: int = -1) -> bytes:
        try:
            return self._file.read(size)
        except Exception as err:
            self.error = err
            raise

    def seek(self, offset: int, whence: int = 0) -> int:
        self._file.seek(offset, whence)
        return self._file.tell()

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()

    def __repr__(self) -> str:  # h5py names a file object by its repr: messages then show the URL
        return self.url


@contextmanager
def network_errors(remote: RemoteFile | None, label: str) -> Iterator[None]:
    """Inside the block, an error raised while ``remote`` had a failed read becomes :class:`RemoteReadError`
    (whatever h5py or the caller made of it)."""
    try:
        yield
    except Exception:
        if remote is not None and remote.error is not None:
            raise RemoteReadError(f"reading {label} failed after retries with backoff: "
                                  f"{type(remote.error).__name__}: {remote.error}") from None
        raise


def _retries() -> int:
    import remfile.RemFile

    return int(remfile.RemFile._num_request_retries)


def _content_length(url: str) -> int:
    """The file size from the headers of a GET that is dropped before its body (presigned S3 URLs refuse HEAD),
    with remfile's retries and backoff; 4xx answers other than 429 are not retried."""
    import requests

    attempt = 0
    while True:
        try:
            with requests.get(url, stream=True, timeout=TIMEOUT_S) as response:
                if response.status_code != 200:
                    raise HTTPStatusError(url, response.status_code, response.reason)
                return int(response.headers["Content-Length"])
        except HTTPStatusError as err:
            if 400 <= err.status < 500 and err.status != 429 or attempt >= _retries():
                raise
        except (requests.RequestException, KeyError, ValueError):
            if attempt >= _retries():
                raise
        time.sleep(0.1 * 2 ** attempt)
        attempt += 1


def _session() -> Any:
    """A ``requests.Session`` whose requests time out after :data:`TIMEOUT_S` unless given another timeout."""
    import requests

    class _TimedSession(requests.Session):
        def request(self, *args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", TIMEOUT_S)
            return super().request(*args, **kwargs)

    return _TimedSession()
