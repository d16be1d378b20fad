"""Lazy movie sources: the imaging series of an NWB file, read block by block.

:func:`open_series` opens a local NWB file (HDF5, or a Zarr folder through hdmf-zarr), an ``http(s)://`` URL
(streamed with ``remfile``: only the bytes of the blocks read are fetched), or an NWBFile / ``h5py.File`` that is
already open; finds every TwoPhotonSeries and OnePhotonSeries anywhere in it (``acquisition`` and every processing
module); and returns an :class:`ImagingSource` whose ``data`` reads frame x row x col blocks on demand.

Axis rule (docs/architecture.md): frames come back exactly as stored, ``(frames, x, y)`` with ``data[t]`` the stored
frame ``t``; nothing is transposed, so footprints computed from them index like the stored frames.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import numpy as np

from nwb_extract.errors import InputError, UnsupportedSeriesError
from nwb_extract.io.source import SourceInfo, find_series, open_nwb, unwrap

__all__ = ["FrameBlockReader", "ImagingSource", "open_series"]


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

    Progress of the reads is reported by the engine (``read`` events of :mod:`nwb_extract.progress`).
    """

    def __init__(self, dataset: Any, start: int, stop: int) -> None:
        self._dataset = dataset
        self._start = int(start)
        self._stop = int(stop)

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

    def __getitem__(self, key: Any) -> np.ndarray:
        frames, rows, cols = _expand_key(key)
        n_frames = self.shape[0]
        if isinstance(frames, slice):
            first, last, step = frames.indices(n_frames)
            if step < 1:
                raise IndexError(f"frame slices must have a positive step, got {frames}")
            stored = slice(self._start + first, self._start + max(last, first), step)
        else:
            index = int(frames)
            if not -n_frames <= index < n_frames:
                raise IndexError(f"frame {index} is outside the {n_frames} selected frames")
            stored = self._start + index % n_frames
        return np.asarray(self._dataset[stored, rows, cols])

    def read_direct(self, dest: np.ndarray, source_sel: Any) -> None:
        """``dest[...] = self[source_sel]``, read by HDF5 straight into ``dest`` (converted to its dtype) when the
        series is an h5py dataset; frames must be a slice."""
        frames, rows, cols = _expand_key(source_sel)
        first, last, step = frames.indices(self.shape[0])
        stored = (slice(self._start + first, self._start + max(last, first), step), rows, cols)
        if hasattr(self._dataset, "read_direct"):
            self._dataset.read_direct(dest, source_sel=stored)
        else:
            dest[...] = np.asarray(self._dataset[stored], dtype=dest.dtype)

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
        self.data = FrameBlockReader(unwrap(series.data), start, stop)
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

    def source_info(self, **dandi: str | None) -> SourceInfo:
        """The :class:`~nwb_extract.io.source.SourceInfo` of this series and frame range (for the result writer).

        ``dandi`` passes the optional DANDI identity (``dandiset_id``, ``dandiset_version``, ``asset_id``,
        ``asset_path``).
        """
        return SourceInfo(path=self.location, series_path=self.series_path,
                          shape=tuple(unwrap(self.series.data).shape), dtype=str(self.data.dtype),
                          frame_range=self.frames, **dandi)

    def close(self) -> None:
        """Close the files :func:`open_series` opened (an object passed in stays open)."""
        self._closer.close()

    def __enter__(self) -> ImagingSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._closer.__exit__(*exc)  # the error passes through open_nwb, which names a network failure as such

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
    SourceNotFoundError, NotNwbError
        As :func:`nwb_extract.io.source.open_nwb`.
    NoImagingSeriesError, SeriesNotFoundError, AmbiguousSeriesError
        As :func:`nwb_extract.io.source.find_series`.
    UnsupportedSeriesError
        A volumetric (4-D) series, or one whose frames are in external files.
    InputError
        A frame range outside the series, or an unsupported kind of source.
    """
    stack = ExitStack()
    try:
        nwbfile, location = stack.enter_context(open_nwb(source))
        path, chosen = find_series(nwbfile, series, location)
        n_frames = _check_series(chosen, path, location)
        frame_range = _frame_range(frames, n_frames, path)
        return ImagingSource(series=chosen, series_path=path, frames=frame_range, nwbfile=nwbfile,
                             location=location, closer=stack)
    except BaseException:
        stack.close()
        raise


# ----------------------------------------------------------------------------------------------------------------
# checks


def _check_series(series: Any, path: str, location: str) -> int:
    """Number of stored frames of a readable 3-D series, else :class:`UnsupportedSeriesError`."""
    if series.external_file is not None:
        files = ", ".join(str(f) for f in series.external_file[:3])
        raise UnsupportedSeriesError(
            f"{path} in {location} keeps its frames in external files ({files}); nwb-extract reads frames stored "
            "in the NWB file: convert the movie into NWB (e.g. with neuroconv's imaging interfaces), or read it "
            "yourself (e.g. with roiextractors) and pass the array to nwb_extract.extract()")
    data = unwrap(series.data)
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
    """``(start, stop)`` of a frame selection; negative values count from the end, as in Python slicing."""
    if frames is None:
        return 0, n_frames
    try:
        start, stop = frames
    except (TypeError, ValueError):
        raise InputError(f"frames must be a (start, stop) pair, got {frames!r}") from None
    given = f"{'' if start is None else start}:{'' if stop is None else stop}"
    start = 0 if start is None else start
    stop = n_frames if stop is None else stop
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (start, stop)):
        raise InputError(f"frames must be integers (start, stop), got {frames!r}")
    first, end = (int(v) + n_frames if v < 0 else int(v) for v in (start, stop))
    if not (0 <= first <= n_frames and 0 <= end <= n_frames):
        raise InputError(f"frames {given} are outside {path}'s {n_frames} frames; choose START and STOP in "
                         f"-{n_frames}..{n_frames} (negative counts from the end)")
    if first > end:
        raise InputError(f"frames {given} of {path} are reversed: START (frame {first}) comes after STOP (frame "
                         f"{end}); give START < STOP, e.g. {end}:{first}")
    if first == end:
        raise InputError(f"frames {given} of {path} select no frame; give START < STOP")
    return first, end
