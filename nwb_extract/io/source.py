"""Opening NWB files and finding imaging series: the one way every reader of the package does both.

:func:`open_nwb` opens a local NWB file (HDF5, or a Zarr folder through hdmf-zarr), an ``http(s)://`` URL (streamed
with ``remfile``: only the bytes read are fetched), or an NWBFile / ``h5py.File`` that is already open;
:func:`find_series` finds a TwoPhotonSeries / OnePhotonSeries by name or path anywhere in it (``acquisition`` and
every processing module), with :class:`~nwb_extract.errors.SeriesNotFoundError` (an ``InputError``) when there is
none of that name; :class:`SourceInfo` names the series a result was computed from.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nwb_extract.errors import (
    AmbiguousSeriesError,
    InputError,
    NoImagingSeriesError,
    NotNwbError,
    RemoteReadError,
    SeriesNotFoundError,
    SourceNotFoundError,
)
from nwb_extract.io.remote import HTTPStatusError, RemoteFile, network_errors

__all__ = ["SERIES_TYPES", "SourceInfo", "find_imaging_series", "find_series", "open_nwb", "unwrap"]

SERIES_TYPES = ("TwoPhotonSeries", "OnePhotonSeries")
"""The imaging series types the package reads and writes."""

# (NWBFile attribute, group path in the file) of the top-level groups that can hold time series
_ROOT_GROUPS = (
    ("acquisition", "acquisition"),
    ("processing", "processing"),
    ("analysis", "analysis"),
    ("stimulus", "stimulus/presentation"),
    ("stimulus_template", "stimulus/templates"),
)


@dataclass(frozen=True)
class SourceInfo:
    """Identity of the imaging series a result was computed from (recorded in the run info).

    Attributes
    ----------
    path : str
        Local path or URL of the NWB file that holds the series.
    series_path : str
        Path of the series inside the file, e.g. ``"acquisition/TwoPhotonSeries"`` or
        ``"processing/ophys/MotionCorrected"``.
    shape : tuple of int
        Stored shape of the whole series' ``data``, ``(frames, x, y)``.
    dtype : str
        NumPy dtype name of the series' ``data``.
    frame_range : (int, int) or None
        ``(start, stop)`` frames used (0-based, ``stop`` exclusive); None: all frames.
    dandiset_id, dandiset_version, asset_id, asset_path : str or None
        DANDI identity of the file, when it came from DANDI.
    """

    path: str
    series_path: str
    shape: tuple[int, ...]
    dtype: str
    frame_range: tuple[int, int] | None = None
    dandiset_id: str | None = None
    dandiset_version: str | None = None
    asset_id: str | None = None
    asset_path: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", os.fspath(self.path))
        object.__setattr__(self, "series_path", self.series_path.strip("/"))
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "dtype", str(np.dtype(self.dtype)))
        if len(self.shape) != 3:
            raise InputError(f"SourceInfo.shape must be the stored (frames, x, y) shape of {self.series_path}, "
                             f"got {self.shape}")
        start, stop = self.frames
        if not 0 <= start < stop <= self.shape[0]:
            raise InputError(f"SourceInfo.frame_range {self.frame_range} is not a non-empty range inside the "
                             f"{self.shape[0]} frames of {self.series_path} in {self.path}")

    @property
    def frames(self) -> tuple[int, int]:
        """``(start, stop)`` of the frames used (all frames when ``frame_range`` is None)."""
        if self.frame_range is None:
            return 0, self.shape[0]
        return int(self.frame_range[0]), int(self.frame_range[1])

    @classmethod
    def from_nwb(cls, path: str | os.PathLike, series_path: str, frame_range: tuple[int, int] | None = None,
                 **dandi: str | None) -> SourceInfo:
        """The SourceInfo of a series (name or path), reading its shape and dtype from the file (path or URL).

        ``dandi`` takes the optional DANDI fields (``dandiset_id``, ``dandiset_version``, ``asset_id``,
        ``asset_path``).
        """
        with open_nwb(path) as (nwbfile, location):
            found, series = find_series(nwbfile, series_path, location)
            data = unwrap(series.data)
            return cls(path=os.fspath(path), series_path=found, shape=tuple(data.shape), dtype=str(data.dtype),
                       frame_range=frame_range, **dandi)


@contextmanager
def open_nwb(source: Any) -> Iterator[tuple[Any, str]]:
    """``(NWBFile, location)`` of an NWB source, open for reading; closes what it opened on exit.

    ``source`` is a local NWB file (HDF5) or NWB Zarr folder, an ``http(s)://`` URL (streamed), or an NWBFile /
    ``h5py.File`` that is already open (left open). ``location`` names the source in messages.

    Raises
    ------
    SourceNotFoundError
        No file, folder or URL at ``source``.
    NotNwbError
        ``source`` is not an NWB HDF5 file or NWB Zarr store.
    InputError
        An unsupported kind of source.
    """
    with ExitStack() as stack:
        remotes: list[RemoteFile] = []
        nwbfile, location = _open_nwbfile(source, stack, remotes)
        with network_errors(remotes[0] if remotes else None, location):
            yield nwbfile, location


def find_series(nwbfile: Any, series: str | None, location: str) -> tuple[str, Any]:
    """``(path, series)`` of the imaging series named ``series`` (a name or a path inside the file; None: the only
    one) in ``nwbfile``; ``location`` names the file in messages.

    Raises
    ------
    NoImagingSeriesError, SeriesNotFoundError, AmbiguousSeriesError
        No imaging series at all, none named ``series``, or several candidates and no (unique) choice.
    """
    found = find_imaging_series(nwbfile)
    path = _select_series(found, series, location)
    return path, found[path]


def find_imaging_series(nwbfile: Any) -> dict[str, Any]:
    """Every TwoPhotonSeries and OnePhotonSeries (subtypes included) in ``nwbfile``, keyed by path, sorted."""
    from pynwb.ophys import OnePhotonSeries, TwoPhotonSeries

    found = {_container_path(obj, nwbfile): obj for obj in nwbfile.objects.values()
             if isinstance(obj, (TwoPhotonSeries, OnePhotonSeries))}
    return dict(sorted(found.items()))


def unwrap(data: Any) -> Any:
    """The array behind hdmf's ``DataIO`` wrappers (series of an NWBFile built in memory)."""
    from hdmf.data_utils import DataIO

    return data.data if isinstance(data, DataIO) else data


# ----------------------------------------------------------------------------------------------------------------
# opening


def _open_nwbfile(source: Any, stack: ExitStack, remotes: list[RemoteFile]) -> tuple[Any, str]:
    """(NWBFile, location text) for any supported source; files opened here are registered on ``stack``, a
    streamed URL's file object is added to ``remotes``."""
    import h5py
    from pynwb import NWBFile

    if isinstance(source, NWBFile):
        return source, source.container_source or f"NWBFile {source.identifier!r}"
    if isinstance(source, h5py.File):
        return _read_hdf5(source, source.filename, stack, owned=False), source.filename
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"cannot read a movie from a {type(source).__name__}; give an NWB file path, an http(s) "
                         "URL, a pynwb.NWBFile or an h5py.File")
    text = os.fspath(source)
    if isinstance(text, str) and text.startswith(("http://", "https://")):
        return _open_url(text, stack, remotes), text
    if isinstance(text, str) and "://" in text:
        raise InputError(f"cannot open {text}: only local paths and http(s):// URLs are supported")
    return _open_local(Path(text), stack), str(text)


def _open_local(path: Path, stack: ExitStack) -> Any:
    import h5py

    if not path.exists():
        raise SourceNotFoundError(f"no such file: {path}")
    if path.is_dir():
        if not any((path / marker).exists() for marker in (".zgroup", "zarr.json")):
            raise NotNwbError(f"{path} is a folder, not an NWB file or NWB Zarr store; give the .nwb file")
        return _open_zarr(path, stack)
    if not h5py.is_hdf5(path):
        raise NotNwbError(f"{path} is not an NWB file (not HDF5); convert the movie to NWB first, e.g. with "
                          "neuroconv's imaging interfaces")
    return _read_hdf5(stack.enter_context(h5py.File(path, "r")), str(path), stack)


def _open_zarr(path: Path, stack: ExitStack) -> Any:
    from hdmf_zarr import NWBZarrIO

    try:
        io = NWBZarrIO(str(path), mode="r")
    except Exception as err:  # hdmf-zarr raises various types for a non-NWB store
        raise NotNwbError(f"{path} is a Zarr store but not a readable NWB file: {err}") from None
    stack.callback(io.close)
    return _read(io, str(path))


def _open_url(url: str, stack: ExitStack, remotes: list[RemoteFile]) -> Any:
    import h5py

    try:
        remote = RemoteFile(url)  # asks the server for the size: HTTP and connection errors surface here
    except HTTPStatusError as err:
        if err.status in (404, 410):
            raise SourceNotFoundError(f"no such file: {url} ({err})") from None
        raise RemoteReadError(f"cannot read {url}: {err}") from None
    except Exception as err:  # the connection error (or timeout) of the last try
        raise RemoteReadError(f"cannot read {url}: {type(err).__name__}: {err}") from None
    stack.callback(remote.close)
    remotes.append(remote)
    try:
        h5file = stack.enter_context(h5py.File(remote, "r"))
    except OSError as err:
        if remote.error is not None:
            raise RemoteReadError(f"reading {url} failed after retries: {remote.error}") from None
        raise NotNwbError(f"{url} is not an NWB HDF5 file ({err}); NWB Zarr stores can be read from a local "
                          "folder only") from None
    return _read_hdf5(h5file, url, stack)


def _read_hdf5(h5file: Any, location: str, stack: ExitStack, *, owned: bool = True) -> Any:
    """NWBFile of an open HDF5 file; closing ``stack`` closes ``h5file`` only when ``owned`` (we opened it)."""
    from pynwb import NWBHDF5IO

    if "nwb_version" not in h5file.attrs:
        raise NotNwbError(f"{location} is an HDF5 file but not an NWB file (no 'nwb_version' attribute)")
    io = NWBHDF5IO(file=h5file, mode=h5file.mode, load_namespaces=True)
    stack.callback(io.close if owned else io.close_linked_files)  # io.close() would close the caller's file
    return _read(io, location)


def _read(io: Any, location: str) -> Any:
    try:
        return io.read()
    except Exception as err:  # hdmf raises many types for a broken file
        raise NotNwbError(f"{location} could not be read as NWB: {type(err).__name__}: {err}") from None


# ----------------------------------------------------------------------------------------------------------------
# selection


def _container_path(obj: Any, nwbfile: Any) -> str:
    """Path of ``obj`` in the file, e.g. ``acquisition/TwoPhotonSeries``, ``processing/ophys/MotionCorrected``."""
    parts = []
    while obj.parent is not None and obj is not nwbfile:
        if obj.parent is nwbfile:
            group = next((path for attr, path in _ROOT_GROUPS if getattr(nwbfile, attr).get(obj.name) is obj), None)
            parts.append(obj.name if group is None else f"{group}/{obj.name}")
        else:
            parts.append(obj.name)
        obj = obj.parent
    return "/".join(reversed(parts))


def _select_series(found: dict[str, Any], choice: str | None, location: str) -> str:
    listing = ", ".join(f"{path} ({s.neurodata_type}, {_shape_text(s)})" for path, s in found.items())
    if not found:
        raise NoImagingSeriesError(f"{location} holds no {' or '.join(SERIES_TYPES)} (searched acquisition and "
                                   "every processing module); EXTRACT needs a calcium-imaging movie")
    if choice is None:
        if len(found) == 1:
            return next(iter(found))
        raise AmbiguousSeriesError(f"{location} holds {len(found)} imaging series: {listing}; choose one with "
                                   "--series NAME or PATH (series= in Python)")
    wanted = choice.strip("/")
    if wanted in found:
        return wanted
    named = [path for path, s in found.items() if s.name == wanted]
    if len(named) > 1:
        raise AmbiguousSeriesError(f"{location} holds {len(named)} imaging series named {wanted!r}: "
                                   f"{', '.join(named)}; give the full path")
    if not named:
        raise SeriesNotFoundError(f"no series {choice!r} in {location}: it has no imaging series {choice!r}; its "
                                  f"imaging series: {listing}")
    return named[0]


def _shape_text(series: Any) -> str:
    shape = getattr(unwrap(series.data), "shape", None)
    return "external files" if series.external_file is not None else f"shape {tuple(shape) if shape else '?'}"
