"""Lazy movie sources: the imaging series of an NWB file, read block by block.

:func:`open_series` opens a local NWB file (HDF5, or a Zarr folder through hdmf-zarr), an ``http(s)://`` URL
(streamed with ``remfile``: only the bytes of the blocks read are fetched), or an NWBFile / ``h5py.File`` that is
already open; finds every TwoPhotonSeries and OnePhotonSeries anywhere in it (``acquisition`` and every processing
module); and returns an :class:`ImagingSource` whose ``data`` reads frame x row x col blocks on demand.

Axis rule (docs/architecture.md): frames come back exactly as stored, ``(frames, x, y)`` with ``data[t]`` the stored
frame ``t``; nothing is transposed, so footprints computed from them index like the stored frames.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from nwb_extract.errors import (
    AmbiguousSeriesError,
    InputError,
    NoImagingSeriesError,
    NotNwbError,
    SeriesNotFoundError,
    SourceNotFoundError,
    UnsupportedSeriesError,
)
from nwb_extract.io.nwb import SERIES_TYPES

__all__ = ["FrameBlockReader", "ImagingSource", "find_imaging_series", "open_series"]

# (NWBFile attribute, group path in the file) of the top-level groups that can hold time series
_ROOT_GROUPS = (
    ("acquisition", "acquisition"),
    ("processing", "processing"),
    ("analysis", "analysis"),
    ("stimulus", "stimulus/presentation"),
    ("stimulus_template", "stimulus/templates"),
)


class FrameBlockReader:
    """Lazy ``(frames, x, y)`` view of a 3-D series dataset, restricted to the stored frames ``[start, stop)``.

    Indexing ``reader[t0:t1, r0:r1, c0:c1]`` (integers, positive-step slices and ``...`` allowed; frame indices
    are relative to ``start``) reads only that block from the file and returns a NumPy array of the stored dtype.

    Parameters
    ----------
    dataset : h5py.Dataset, zarr.Array or numpy.ndarray
        The series' ``data``, shape ``(frames, x, y)``.
    start, stop : int
        Stored frame range this reader exposes.
    on_read : callable, optional
        Called with the number of frames after every read (progress reporting).
    """

    def __init__(self, dataset: Any, start: int, stop: int, on_read: Callable[[int], None] | None = None) -> None:
        self._dataset = dataset
        self._start = int(start)
        self._stop = int(stop)
        self._on_read = on_read

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(frames, x, y)`` of the selected frame range."""
        _, n_x, n_y = self._dataset.shape
        return self._stop - self._start, int(n_x), int(n_y)

    @property
    def dtype(self) -> np.dtype:
        """The stored dtype (e.g. uint16, float32); blocks are returned in it."""
        return np.dtype(self._dataset.dtype)

    @property
    def ndim(self) -> int:
        """Always 3."""
        return 3

    def __len__(self) -> int:
        return self.shape[0]

    def observed(self, on_read: Callable[[int], None] | None) -> FrameBlockReader:
        """The same view, calling ``on_read(frames)`` after every read (None: no callback)."""
        return FrameBlockReader(self._dataset, self._start, self._stop, on_read)

    def __getitem__(self, key: Any) -> np.ndarray:
        frames, rows, cols = _expand_key(key)
        n_frames = self.shape[0]
        if isinstance(frames, slice):
            first, last, step = frames.indices(n_frames)
            if step < 1:
                raise IndexError(f"frame slices must have a positive step, got {frames}")
            count = len(range(first, last, step))
            stored = slice(self._start + first, self._start + max(last, first), step)
        else:
            index = int(frames)
            if not -n_frames <= index < n_frames:
                raise IndexError(f"frame {index} is outside the {n_frames} selected frames")
            count = 1
            stored = self._start + index % n_frames
        block = np.asarray(self._dataset[stored, rows, cols])
        if self._on_read is not None:
            self._on_read(count)
        return block

    def __repr__(self) -> str:
        return f"FrameBlockReader(frames {self._start}:{self._stop}, shape={self.shape}, dtype={self.dtype})"


def _expand_key(key: Any) -> tuple[Any, Any, Any]:
    """``key`` as a (frames, rows, cols) triple: ``...`` expanded, missing axes filled with ``slice(None)``."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        at = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:at] + (slice(None),) * (3 - len(key) + 1) + key[at + 1:]
    if len(key) > 3 or any(k is Ellipsis for k in key):
        raise IndexError(f"a movie has 3 axes (frames, x, y); got the index {key!r}")
    return tuple(key) + (slice(None),) * (3 - len(key))


class ImagingSource:
    """One imaging series opened for reading; a context manager that closes what :func:`open_series` opened.

    Attributes
    ----------
    data : FrameBlockReader
        Lazy ``(frames, x, y)`` reader over the selected frames, stored dtype and axis order.
    series : pynwb.ophys.TwoPhotonSeries or pynwb.ophys.OnePhotonSeries
        The series object.
    series_path : str
        Its path in the file, e.g. ``"acquisition/TwoPhotonSeries"`` or ``"processing/ophys/MotionCorrected"``.
    series_type : str
        ``"TwoPhotonSeries"`` or ``"OnePhotonSeries"`` (the neurodata type).
    frames : tuple of int
        ``(start, stop)``: the stored frames ``data`` exposes.
    rate : float or None
        Frame rate in Hz (None when the series has timestamps instead).
    starting_time : float or None
        Time in s of the first selected frame (the series' ``starting_time + start / rate``; None with timestamps).
    timestamps : numpy.ndarray or None
        float64 ``(frames,)`` times in s of the selected frames, when the series stores timestamps.
    imaging_plane : pynwb.ophys.ImagingPlane
        The series' imaging plane.
    nwbfile : pynwb.NWBFile
        The file the series belongs to.
    location : str
        The source as given: a path or URL (for an open object, the file it was read from, else a description).
    """

    def __init__(self, *, series: Any, series_path: str, frames: tuple[int, int], nwbfile: Any, location: str,
                 closer: ExitStack) -> None:
        start, stop = frames
        self.series = series
        self.series_path = series_path
        self.series_type = series.neurodata_type
        self.frames = (start, stop)
        self.data = FrameBlockReader(_unwrap(series.data), start, stop)
        self.imaging_plane = series.imaging_plane
        self.nwbfile = nwbfile
        self.location = location
        self.rate = None if series.rate is None else float(series.rate)
        self.timestamps = None
        self.starting_time = None
        if series.timestamps is not None:
            self.timestamps = np.asarray(series.timestamps[start:stop], dtype=np.float64)
        elif self.rate is not None:
            self.starting_time = float(series.starting_time or 0.0) + start / self.rate
        self._closer = closer

    def source_info(self, **dandi: str | None) -> Any:
        """The writer's :class:`nwb_extract.io.nwb.SourceInfo` of this series and frame range.

        ``dandi`` passes the optional DANDI identity (``dandiset_id``, ``dandiset_version``, ``asset_id``,
        ``asset_path``).
        """
        from nwb_extract.io.nwb import SourceInfo

        return SourceInfo(path=self.location, series_path=self.series_path,
                          shape=tuple(_unwrap(self.series.data).shape), dtype=str(self.data.dtype),
                          frame_range=self.frames, **dandi)

    def close(self) -> None:
        """Close the files :func:`open_series` opened (an object passed in stays open)."""
        self._closer.close()

    def __enter__(self) -> ImagingSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"ImagingSource({self.location!s} :: {self.series_path}, {self.series_type}, frames "
                f"{self.frames[0]}:{self.frames[1]}, {self.data.shape[1]} x {self.data.shape[2]})")


def open_series(source: Any, series: str | None = None, *,
                frames: tuple[int | None, int | None] | None = None) -> ImagingSource:
    """Open the imaging series ``series`` of an NWB file for lazy, block-wise reading.

    Parameters
    ----------
    source : str, os.PathLike, pynwb.NWBFile or h5py.File
        A local NWB file (HDF5) or NWB Zarr folder, an ``http://`` / ``https://`` URL of an NWB HDF5 file
        (streamed; never downloaded whole), or an NWBFile / h5py File that is already open (left open on close).
    series : str, optional
        Name (``"TwoPhotonSeries"``) or path (``"processing/ophys/MotionCorrected"``) of the series; may be left
        out when the file holds exactly one TwoPhotonSeries / OnePhotonSeries.
    frames : tuple (start, stop), optional
        Stored frame range to expose (``None`` for either end: the series' start or end); all frames by default.

    Returns
    -------
    ImagingSource
        Use it as a context manager: ``with open_series(path) as src: extract(src.data, ...)``.

    Raises
    ------
    SourceNotFoundError
        No file, folder or URL at ``source``.
    NotNwbError
        ``source`` is not an NWB HDF5 file or NWB Zarr store.
    NoImagingSeriesError
        The file has no TwoPhotonSeries or OnePhotonSeries.
    SeriesNotFoundError, AmbiguousSeriesError
        ``series`` names nothing, or several candidates and no (unique) choice.
    UnsupportedSeriesError
        A volumetric (4-D) series, or one whose frames are in external files.
    InputError
        A frame range outside the series, or an unsupported kind of source.
    """
    stack = ExitStack()
    try:
        nwbfile, location = _open_nwbfile(source, stack)
        found = find_imaging_series(nwbfile)
        path = _select_series(found, series, location)
        chosen = found[path]
        n_frames = _check_series(chosen, path, location)
        frame_range = _frame_range(frames, n_frames, path)
        return ImagingSource(series=chosen, series_path=path, frames=frame_range, nwbfile=nwbfile,
                             location=location, closer=stack)
    except BaseException:
        stack.close()
        raise


def find_imaging_series(nwbfile: Any) -> dict[str, Any]:
    """Every TwoPhotonSeries and OnePhotonSeries (subtypes included) in ``nwbfile``, keyed by path, sorted."""
    from pynwb.ophys import OnePhotonSeries, TwoPhotonSeries

    found = {_container_path(obj, nwbfile): obj for obj in nwbfile.objects.values()
             if isinstance(obj, (TwoPhotonSeries, OnePhotonSeries))}
    return dict(sorted(found.items()))


# ----------------------------------------------------------------------------------------------------------------
# opening


def _open_nwbfile(source: Any, stack: ExitStack) -> tuple[Any, str]:
    """(NWBFile, location text) for any supported source; files opened here are registered on ``stack``."""
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
        return _open_url(text, stack), text
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


def _open_url(url: str, stack: ExitStack) -> Any:
    import h5py
    import remfile

    try:
        remote = remfile.File(url)  # asks the server for the size: HTTP and connection errors surface here
    except Exception as err:  # remfile raises plain Exceptions with the HTTP status in the message
        if re.search(r"\b(404|410)\b", str(err)):
            raise SourceNotFoundError(f"no such file: {url} ({err})") from None
        raise InputError(f"cannot read {url}: {err}") from None
    stack.callback(remote.close)
    try:
        h5file = stack.enter_context(h5py.File(remote, "r"))
    except OSError as err:
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


def _unwrap(data: Any) -> Any:
    """The array behind hdmf's ``DataIO`` wrappers (series of an NWBFile built in memory)."""
    from hdmf.data_utils import DataIO

    return data.data if isinstance(data, DataIO) else data


# ----------------------------------------------------------------------------------------------------------------
# selection and checks


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
        raise SeriesNotFoundError(f"{location} has no imaging series {choice!r}; its imaging series: {listing}")
    return named[0]


def _shape_text(series: Any) -> str:
    shape = getattr(_unwrap(series.data), "shape", None)
    return "external files" if series.external_file is not None else f"shape {tuple(shape) if shape else '?'}"


def _check_series(series: Any, path: str, location: str) -> int:
    """Number of stored frames of a readable 3-D series, else :class:`UnsupportedSeriesError`."""
    if series.external_file is not None:
        files = ", ".join(str(f) for f in series.external_file[:3])
        raise UnsupportedSeriesError(
            f"{path} in {location} keeps its frames in external files ({files}); nwb-extract reads frames stored "
            "in the NWB file: convert the movie into NWB (e.g. with neuroconv's imaging interfaces), or read it "
            "yourself (e.g. with roiextractors) and pass the array to nwb_extract.extract()")
    data = _unwrap(series.data)
    shape = getattr(data, "shape", None)
    if shape is None or not hasattr(data, "__getitem__"):
        raise UnsupportedSeriesError(f"{path} in {location}: data is a {type(data).__name__}, not a sliceable "
                                     "array; write the NWB file first and open it from disk")
    if len(shape) == 4:
        raise UnsupportedSeriesError(
            f"{path} in {location} is volumetric, data shape {tuple(shape)} (frames, x, y, z); EXTRACT runs on one "
            "plane: store each plane as its own 3-D series and pick it with --series, or pass one plane "
            "(data[:, :, :, z]) to nwb_extract.extract()")
    if len(shape) != 3 or 0 in tuple(shape):
        raise UnsupportedSeriesError(f"{path} in {location} has data shape {tuple(shape)}; a movie needs "
                                     "(frames, x, y) with at least one frame")
    return int(shape[0])


def _frame_range(frames: tuple[int | None, int | None] | None, n_frames: int, path: str) -> tuple[int, int]:
    if frames is None:
        return 0, n_frames
    try:
        start, stop = frames
    except (TypeError, ValueError):
        raise InputError(f"frames must be a (start, stop) pair, got {frames!r}") from None
    start = 0 if start is None else start
    stop = n_frames if stop is None else stop
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (start, stop)):
        raise InputError(f"frames must be integers (start, stop), got {frames!r}")
    if not 0 <= start < stop <= n_frames:
        raise InputError(f"frames {start}:{stop} are outside {path}'s {n_frames} frames; choose 0 <= START < "
                         f"STOP <= {n_frames}")
    return int(start), int(stop)
