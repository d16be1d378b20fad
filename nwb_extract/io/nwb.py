"""NWB files: write calcium-imaging movies, write EXTRACT results, read results back.

- :func:`write_movie_nwb` / :func:`write_simulated_nwb`: a movie in a new file;
- :func:`write_result`: one EXTRACT run (masks, traces, summary images, config and run info in our extension,
  :mod:`nwb_extract.io.schema`) into a new file or, atomically, into the source file; :class:`SourceInfo` names
  the input series;
- :func:`list_runs`, :func:`read_result`, :func:`read_config`: the runs of a file back as Python objects.

The layout is documented in ``docs/nwb-layout.md``.

Axis rule (docs/architecture.md): a movie ``(frames, rows, cols)`` is stored in ``ImageSeries.data`` exactly as given,
so ``data[t]`` is frame ``t`` with the same axis order; nothing is transposed on write, and ``nwb-extract run`` passes
the stored frames to the engine as they are. Masks and summary images of a result index like ``data[t]`` of the
series the result came from.

Every writer here is atomic: it writes to a temporary file in the destination directory and renames it into place,
so an interrupted write never leaves a partial file at the requested path, and it refuses to replace an existing
file unless ``overwrite=True``. An in-place append copies the file first, appends to the copy and renames it onto
the original.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from nwb_extract._version import ENGINE_VERSION, __version__
from nwb_extract.config import ExtractConfig
from nwb_extract.errors import InputError
from nwb_extract.io import schema
from nwb_extract.io.atomic import atomic_path
from nwb_extract.result import EliminatedCandidates, ExtractResult

if TYPE_CHECKING:
    from nwb_extract.simulate import SimulatedMovie

__all__ = [
    "ELIMINATED_SERIES_NAME",
    "MASK_TYPES",
    "PRIMARY_SERIES_NAME",
    "SERIES_NAMES",
    "SERIES_TYPES",
    "SourceInfo",
    "add_result_to_nwbfile",
    "list_runs",
    "read_config",
    "read_result",
    "read_timing",
    "write_movie_nwb",
    "write_result",
    "write_simulated_nwb",
]

SERIES_TYPES = ("TwoPhotonSeries", "OnePhotonSeries")
"""Imaging series types :func:`write_movie_nwb` can write."""

DEFAULT_SUBJECT = {
    "subject_id": "unknown",
    "species": "Mus musculus",
    "sex": "U",
    "age": "P90D",
    "description": "placeholder subject written by nwb-extract; no subject metadata was given",
}
"""Subject written when none is given (NWB/DANDI require one; pass the real subject for real data)."""

MAX_CHUNK_BYTES = 10 * 2**20
"""Upper bound on the size of one HDF5 chunk of the movie (10 MiB, the size DANDI recommends for streaming)."""

_WAVELENGTHS_NM = {"TwoPhotonSeries": (920.0, 510.0), "OnePhotonSeries": (470.0, 510.0)}  # (excitation, emission)

_IMAGING_PLANE_KEYS = {
    "name": "ImagingPlane",
    "description": "imaging plane of the movie",
    "location": "root",
    "indicator": "unknown",
    "excitation_lambda": None,
    "emission_lambda": None,
    "grid_spacing": None,
    "grid_spacing_unit": "meters",
    "origin_coords": None,
    "origin_coords_unit": "meters",
    "reference_frame": None,
    "optical_channel_name": "OpticalChannel",
    "optical_channel_description": "emission channel",
    "device_name": "Microscope",
    "device_description": "microscope that recorded the movie",
    "device_manufacturer": None,
    "device_model": None,
}
"""Keys accepted in ``imaging_plane=`` with their defaults (``location`` "root" is the Allen CCF whole-brain term;
``excitation_lambda``/``emission_lambda`` in nm default to typical GCaMP values for the series type; a
``device_manufacturer`` is stored in a DeviceModel named ``device_model``, default ``<device_name>Model``)."""


def write_movie_nwb(
    path: str | os.PathLike,
    movie: np.ndarray,
    *,
    rate: float,
    series_type: str = "TwoPhotonSeries",
    series_name: str | None = None,
    starting_time: float = 0.0,
    unit: str = "a.u.",
    description: str = "calcium-imaging movie, data axes (frames, rows, cols)",
    session_description: str = "calcium-imaging movie written by nwb-extract",
    identifier: str | None = None,
    session_start_time: datetime | None = None,
    subject: Mapping[str, Any] | None = None,
    imaging_plane: Mapping[str, Any] | None = None,
    chunk_frames: int = 100,
    compression: str | None = "gzip",
    overwrite: bool = False,
) -> Path:
    """Write a movie to a new NWB file as a TwoPhotonSeries or OnePhotonSeries in ``acquisition``.

    The file holds a Device, an OpticalChannel, an ImagingPlane (``imaging_rate = rate``), a Subject and the series,
    whose ``data`` is ``movie`` unchanged (same dtype, same axis order, byte-identical on read).

    Parameters
    ----------
    path : str or os.PathLike
        Destination file (conventionally ``*.nwb``); its directory must exist.
    movie : numpy.ndarray
        ``(frames, rows, cols)`` array of any real numeric dtype (float32 or uint16 typically).
    rate : float
        Frame rate in Hz; also the ImagingPlane's ``imaging_rate``.
    series_type : {"TwoPhotonSeries", "OnePhotonSeries"}
        Neurodata type of the series.
    series_name : str, optional
        Name in ``acquisition``; defaults to ``series_type``.
    starting_time : float
        Time of the first frame in seconds, relative to ``session_start_time``.
    unit : str
        Unit of the pixel values.
    description : str
        Description of the series.
    session_description : str
        Description of the session (NWBFile).
    identifier : str, optional
        Unique file identifier; a random UUID4 by default.
    session_start_time : datetime.datetime, optional
        Timezone-aware start of the session; now (local time zone) by default.
    subject : mapping, optional
        Keyword arguments of ``pynwb.file.Subject`` (``subject_id``, ``species``, ``sex``, ``age`` as ISO 8601
        duration, ...); :data:`DEFAULT_SUBJECT` when None.
    imaging_plane : mapping, optional
        Imaging metadata; keys and defaults in ``_IMAGING_PLANE_KEYS`` (``location``, ``indicator``,
        ``excitation_lambda`` and ``emission_lambda`` in nm, ``grid_spacing`` with ``grid_spacing_unit``,
        ``device_name``, ``device_manufacturer``, ...). Unknown keys are an error.
    chunk_frames : int
        HDF5 chunks are whole frames, at most ``chunk_frames`` of them (fewer when a chunk would exceed
        :data:`MAX_CHUNK_BYTES`, at least one).
    compression : {"gzip", "lzf", None}
        HDF5 compression filter of the movie (None: uncompressed).
    overwrite : bool
        Replace an existing file at ``path``; otherwise an existing file is an error.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    InputError
        Bad movie shape or dtype, bad metadata, missing directory, or an existing file without ``overwrite=True``.
    """
    from hdmf.backends.hdf5 import H5DataIO
    from pynwb import NWBFile
    from pynwb.ophys import OnePhotonSeries, TwoPhotonSeries

    path = _check_destination(path, overwrite)
    movie = _check_movie(movie)
    _check_options(rate, series_type, chunk_frames, compression)
    nwbfile = NWBFile(
        session_description=session_description,
        identifier=identifier or str(uuid.uuid4()),
        session_start_time=_session_start(session_start_time),
        subject=_subject(subject),
    )
    plane = _add_imaging_plane(nwbfile, imaging_plane, rate=rate, series_type=series_type)
    series_class = TwoPhotonSeries if series_type == "TwoPhotonSeries" else OnePhotonSeries
    data = H5DataIO(data=movie, chunks=_chunk_shape(movie, chunk_frames), compression=compression)
    nwbfile.add_acquisition(
        series_class(
            name=series_name or series_type, imaging_plane=plane, data=data, unit=unit, rate=float(rate),
            starting_time=float(starting_time), description=description,
        )
    )
    _write_atomically(nwbfile, path, overwrite)
    return path


def write_simulated_nwb(path: str | os.PathLike, sim: SimulatedMovie, **kwargs: Any) -> Path:
    """Write a simulated movie (:mod:`nwb_extract.simulate`) with :func:`write_movie_nwb`.

    The series type follows the simulation (2-p: TwoPhotonSeries, 1-p: OnePhotonSeries), the rate is
    ``sim.frame_rate``, and the session description states that the movie is simulated and gives every simulation
    setting as JSON after ``"settings: "``. Ground-truth arrays are not written to the NWB file; save them next to
    it with ``sim.save_truth(...)`` (a ``.npz`` file). ``kwargs`` go to :func:`write_movie_nwb` and override these
    choices (e.g. ``subject``, ``overwrite``).
    """
    series_type = "TwoPhotonSeries" if sim.modality == "2p" else "OnePhotonSeries"
    settings = json.dumps(sim.params, sort_keys=True)
    options: dict[str, Any] = {
        "rate": sim.frame_rate,
        "series_type": series_type,
        "unit": "dF/F + 1",
        "description": f"simulated {sim.modality} calcium-imaging movie (EXTRACT simulation model), "
        "data axes (frames, rows, cols)",
        "session_description": f"Simulated {sim.modality} calcium-imaging movie with {sim.n_cells} ground-truth "
        f"cells (nwb_extract.simulate, EXTRACT simulation model); settings: {settings}",
        "imaging_plane": {"description": "simulated imaging plane", "device_description": "simulation"},
        "subject": {**DEFAULT_SUBJECT, "subject_id": "simulated", "description": "simulated data, no animal"},
    }
    options.update(kwargs)
    return write_movie_nwb(path, sim.movie, **options)


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _check_destination(path: str | os.PathLike, overwrite: bool) -> Path:
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path}: directory {path.parent} does not exist; create it first")
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a directory; give a file name such as {path / 'movie.nwb'}")
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; pass overwrite=True to replace it or choose another path")
    return path


def _check_movie(movie: Any) -> np.ndarray:
    movie = np.asarray(movie)
    if movie.ndim != 3 or 0 in movie.shape:
        raise InputError(f"movie must be a non-empty (frames, rows, cols) array, got shape {movie.shape}")
    if not (np.issubdtype(movie.dtype, np.integer) or np.issubdtype(movie.dtype, np.floating)):
        raise InputError(f"movie must have an integer or floating dtype, got {movie.dtype}")
    return movie


def _check_options(rate: float, series_type: str, chunk_frames: int, compression: str | None) -> None:
    if not (isinstance(rate, (int, float, np.number)) and np.isfinite(rate) and rate > 0):
        raise InputError(f"rate must be a positive frame rate in Hz, got {rate!r}")
    if series_type not in SERIES_TYPES:
        raise InputError(f"series_type must be one of {', '.join(SERIES_TYPES)}, got {series_type!r}")
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, (int, np.integer)) or chunk_frames < 1:
        raise InputError(f"chunk_frames must be an integer >= 1, got {chunk_frames!r}")
    if compression not in ("gzip", "lzf", None):
        raise InputError(f"compression must be 'gzip', 'lzf' or None, got {compression!r}")


def _chunk_shape(movie: np.ndarray, chunk_frames: int) -> tuple[int, int, int]:
    """Whole-frame chunks: ``min(chunk_frames, frames, frames per MAX_CHUNK_BYTES)`` frames, at least 1."""
    n_frames, rows, cols = movie.shape
    fitting = max(1, MAX_CHUNK_BYTES // (rows * cols * movie.dtype.itemsize))
    return (int(min(chunk_frames, n_frames, fitting)), rows, cols)


def _session_start(start: datetime | None) -> datetime:
    if start is None:
        return datetime.now().astimezone()
    if not isinstance(start, datetime) or start.tzinfo is None:
        raise InputError(
            f"session_start_time must be a timezone-aware datetime, got {start!r}; "
            "e.g. datetime(2024, 1, 1, tzinfo=zoneinfo.ZoneInfo('UTC'))"
        )
    return start


def _subject(fields: Mapping[str, Any] | None):
    from pynwb.file import Subject

    fields = dict(DEFAULT_SUBJECT if fields is None else fields)
    try:
        return Subject(**fields)
    except TypeError as err:  # docval: unknown or wrongly typed field
        raise InputError(f"invalid subject {fields!r}: {err}; use pynwb.file.Subject's fields") from None


def _add_imaging_plane(nwbfile, metadata: Mapping[str, Any] | None, *, rate: float, series_type: str):
    """Device, OpticalChannel and ImagingPlane from ``metadata`` (see ``_IMAGING_PLANE_KEYS``)."""
    from pynwb.ophys import OpticalChannel

    unknown = set(metadata or {}) - set(_IMAGING_PLANE_KEYS)
    if unknown:
        raise InputError(
            f"unknown imaging_plane keys {sorted(unknown)}; allowed: {', '.join(sorted(_IMAGING_PLANE_KEYS))}"
        )
    meta = {**_IMAGING_PLANE_KEYS, **(metadata or {})}
    excitation, emission = _WAVELENGTHS_NM[series_type]
    excitation = excitation if meta["excitation_lambda"] is None else meta["excitation_lambda"]
    emission = emission if meta["emission_lambda"] is None else meta["emission_lambda"]
    model = None
    if meta["device_manufacturer"] is not None:  # pynwb 4 keeps the manufacturer on a DeviceModel
        model = nwbfile.create_device_model(
            name=meta["device_model"] or f"{meta['device_name']}Model", manufacturer=meta["device_manufacturer"]
        )
    device = nwbfile.create_device(name=meta["device_name"], description=meta["device_description"], model=model)
    channel = OpticalChannel(
        name=meta["optical_channel_name"], description=meta["optical_channel_description"],
        emission_lambda=float(emission),
    )
    optional = {key: meta[key] for key in ("grid_spacing", "origin_coords", "reference_frame") if meta[key] is not None}
    if "grid_spacing" in optional:
        optional["grid_spacing_unit"] = meta["grid_spacing_unit"]
    if "origin_coords" in optional:
        optional["origin_coords_unit"] = meta["origin_coords_unit"]
    try:
        return nwbfile.create_imaging_plane(
            name=meta["name"], optical_channel=channel, description=meta["description"], device=device,
            excitation_lambda=float(excitation), imaging_rate=float(rate), indicator=meta["indicator"],
            location=meta["location"], **optional,
        )
    except (TypeError, ValueError) as err:  # docval: wrongly typed metadata
        raise InputError(f"invalid imaging_plane metadata: {err}") from None


def _write_atomically(nwbfile, path: Path, overwrite: bool) -> None:
    """Write ``nwbfile`` to a temporary file beside ``path``, then rename it onto ``path``."""
    from pynwb import NWBHDF5IO

    with atomic_path(path, overwrite=overwrite) as temporary, NWBHDF5IO(str(temporary), mode="w") as io:
        io.write(nwbfile)


# ----------------------------------------------------------------------------------------------------------------
# EXTRACT results: write_result / list_runs / read_result / read_config (layout: docs/nwb-layout.md)

MASK_TYPES = ("image", "pixel")
"""Mask columns :func:`write_result` can write: dense weighted ``image_mask`` or sparse ``pixel_mask``."""

PRIMARY_SERIES_NAME = "RoiResponseSeries"

#: RoiResponseSeries name of each trace kind that is not the run's primary kind (the primary kind is always
#: :data:`PRIMARY_SERIES_NAME`).
SERIES_NAMES = MappingProxyType({
    "baseline_adjusted": "BaselineAdjustedRoiResponseSeries",
    "nonneg": "NonnegRoiResponseSeries",
    "raw": "RawRoiResponseSeries",
    "least_squares": "LeastSquaresRoiResponseSeries",
    "nonnegative_least_squares": "NonnegativeLeastSquaresRoiResponseSeries",
})

ELIMINATED_SERIES_NAME = "EliminatedRoiResponseSeries"

_KIND_DESCRIPTIONS = {
    "baseline_adjusted": "robust (one-sided Huber) fit with each trace's lower bound at its trace_quantile "
                         "quantile, shifted to minimum 0 (trace_output_option 'baseline_adjusted')",
    "nonneg": "robust (one-sided Huber) fit constrained >= 0 (trace_output_option 'nonneg')",
    "raw": "robust (one-sided Huber) fit without constraint, may be negative (trace_output_option "
           "'no_constraint', alias 'raw')",
    "least_squares": "least-squares fit (trace_output_option 'least_squares')",
    "nonnegative_least_squares": "non-negative least-squares fit (trace_output_option "
                                 "'nonnegative_least_squares')",
}

_METRIC_DESCRIPTIONS = {
    "area": "pixels of the footprint above 0.1 (footprints are scaled to max 1)",
    "trace_snr": "trace SNR: max of the 3-frame median-filtered trace over sqrt(2) times its noise std",
    "T_maxval": "trace SNR: max of the 3-frame median-filtered trace over sqrt(2) times its noise std (spec §7.2)",
    "T_corruption": "temporal corruption: mean relative deviation from the median-filtered trace (spec §7.2)",
    "S_area_1": "pixels of the footprint above 0.2 (spec §7.2)",
    "S_smooth_area_1": "pixels of the smoothed footprint above 0.2 (spec §7.2)",
    "S_area_2": "pixels of the footprint above 0.1 (spec §7.2)",
    "S_smooth_area_2": "pixels of the smoothed footprint above 0.1 (spec §7.2)",
    "S_corruption": "spatial corruption: local over global variance of the footprint (spec §7.2)",
    "S_eccent": "eccentricity (major / minor axis) of the footprint's largest component above 0.3 (spec §7.2)",
    "S_circularity": "circularity 4 pi area / perimeter^2 of the footprint's largest component (spec §7.2)",
    "partition": "index of the partition the cell was found in",
}

_IMAGE_DESCRIPTIONS = {
    "summary_image": "EXTRACT's summary image (info.summary_image)",
    "max_image": "maximum over frames of the preprocessed movie (info.max_image)",
    "F_per_pixel": "baseline fluorescence of each pixel (info.F_per_pixel, spec §3.1)",
}

_RESERVED_COLUMNS = frozenset({"id", "image_mask", "pixel_mask", "voxel_mask", "ROICentroids", "elimination_rule"})
_PIXEL_MASK_DTYPE = np.dtype([("x", "<u4"), ("y", "<u4"), ("weight", "<f4")])
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SESSION_FIELDS = (
    "session_description", "session_start_time", "timestamps_reference_time", "experimenter",
    "experiment_description", "session_id", "institution", "lab", "keywords", "related_publications", "notes",
    "pharmacology", "protocol", "surgery", "virus", "stimulus_notes", "data_collection", "slices",
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
        """The SourceInfo of a series, reading its shape and dtype from the file (local path or URL).

        ``dandi`` takes the optional DANDI fields (``dandiset_id``, ``dandiset_version``, ``asset_id``,
        ``asset_path``).
        """
        with _read_only(os.fspath(path)) as nwbfile:
            series = _find_series(nwbfile, os.fspath(path), series_path)
            return cls(path=os.fspath(path), series_path=series_path, shape=tuple(series.data.shape),
                       dtype=str(series.data.dtype), frame_range=frame_range, **dandi)


def write_result(
    result: ExtractResult,
    output_path: str | os.PathLike,
    *,
    source: SourceInfo | None = None,
    in_place: bool = False,
    overwrite: bool = False,
    run_name: str | None = None,
    mask_type: str = "image",
    include_eliminated: bool = False,
    rate: float | None = None,
    source_nwbfile: Any = None,
) -> tuple[Path, str]:
    """Write an EXTRACT result into NWB: masks, traces, summary images, config and run info (docs/nwb-layout.md).

    By default a new file is written at ``output_path``; with a ``source`` its session, subject, device and
    imaging-plane metadata are copied from the source file, so the result stands alone, and the source is
    recorded in the run info. With ``in_place=True`` the run is appended to the source file itself, atomically:
    the file is copied beside itself, the copy is appended to and renamed onto the original, so a crash at any
    point leaves the original intact (a leftover hidden ``.<name>.<hex>.partial.nwb`` may remain). Masks keep
    the axis order of the source series as stored: ``image_mask[k]`` indexes like ``data[t]``.

    Parameters
    ----------
    result : ExtractResult
        The run to write; footprints ``(cells, x, y)`` in the source's stored frame axes, traces
        ``(frames, cells)`` covering ``source.frame_range``.
    output_path : str or os.PathLike
        The new file; with ``in_place=True`` the source file itself (``source.path``).
    source : SourceInfo, optional
        The input series. Required for ``in_place``; without it the new file gets placeholder metadata and
        ``rate`` gives the frame timing.
    in_place : bool
        Append to the source file instead of writing a new file.
    overwrite : bool
        Replace an existing ``output_path`` (new-file mode only).
    run_name : str, optional
        Name of the run (letters, digits, ``_ . -``); default ``run<n>`` for the n-th run of the file. The
        first run of a file gets the plain container names (``PlaneSegmentation``, ``DfOverF``, ...); later
        runs get ``_<run_name>`` appended to each.
    mask_type : {"image", "pixel"}
        ``image``: dense float32 ``image_mask`` (chunked per ROI, gzip); ``pixel``: ``pixel_mask`` of the
        non-zero pixels (not readable by roiextractors' NwbSegmentationExtractor).
    include_eliminated : bool
        Also write the candidates quality control eliminated (``result.eliminated``), with the rule that
        eliminated each, in a second PlaneSegmentation.
    rate : float, optional
        Frame rate in Hz of the traces when there is no ``source``.
    source_nwbfile : pynwb.NWBFile, optional
        The source file, already open (e.g. ``ImagingSource.nwbfile``): its metadata are copied from it instead of
        opening ``source.path`` again, which for a streamed URL would fetch the file's metadata a second time.

    Returns
    -------
    (pathlib.Path, str)
        The written file and the run name.

    Raises
    ------
    InputError
        A result that does not fit the source series (frame shape, frame count), a bad option, an existing
        output without ``overwrite``, a taken run name, or an unreadable source.
    """
    _check_run_options(result, mask_type, run_name)
    options = {"run_name": run_name, "mask_type": mask_type, "include_eliminated": include_eliminated}
    if in_place:
        path = _check_in_place(output_path, source)
        name = _append_atomically(path, lambda nwbfile: _add_run_in_source(nwbfile, result, source, **options))
        return path, name
    path = _check_destination(output_path, overwrite)
    nwbfile, plane, timing = _standalone_file(result, source, rate, source_nwbfile)
    name = _add_run(nwbfile, result, plane=plane, reference=None, timing=timing, source=source, **options)
    _write_atomically(nwbfile, path, overwrite)
    return path, name


def add_result_to_nwbfile(
    nwbfile: Any,
    result: ExtractResult,
    *,
    imaging_plane: Any,
    timing: Mapping[str, Any],
    reference_series: Any = None,
    source: SourceInfo | None = None,
    run_name: str | None = None,
    mask_type: str = "image",
    include_eliminated: bool = False,
) -> str:
    """Add one EXTRACT run to an in-memory NWBFile, with exactly the containers of :func:`write_result`.

    For callers that build the file themselves (the neuroconv interface, :mod:`nwb_extract.neuroconv`); the
    caller writes it. Masks are written as given: ``result.footprints`` must index like the frames of the movie
    as stored (docs/nwb-layout.md).

    Parameters
    ----------
    nwbfile : pynwb.NWBFile
        The file to add to (``processing/ophys`` is created when missing).
    result : ExtractResult
        The run; footprints ``(cells, x, y)``, traces ``(frames, cells)``.
    imaging_plane : pynwb.ophys.ImagingPlane
        The plane the PlaneSegmentations link to (already in ``nwbfile``).
    timing : mapping
        Frame timing of the traces: ``{"rate": Hz, "starting_time": s}`` or ``{"timestamps": (frames,) s}``.
    reference_series : pynwb.ophys.TwoPhotonSeries or OnePhotonSeries, optional
        The movie in ``nwbfile`` the masks were computed from (listed in ``reference_images``).
    source : SourceInfo, optional
        The input series, recorded in the run info.
    run_name, mask_type, include_eliminated
        As in :func:`write_result`.

    Returns
    -------
    str
        The run name.
    """
    _check_run_options(result, mask_type, run_name)
    timing = dict(timing)
    if set(timing) not in ({"rate", "starting_time"}, {"timestamps"}):
        raise InputError(f"timing must be {{'rate', 'starting_time'}} or {{'timestamps'}}, got keys {sorted(timing)}")
    if "timestamps" in timing:
        timing["timestamps"] = np.asarray(timing["timestamps"], dtype=np.float64)
    else:
        timing = {"rate": float(timing["rate"]), "starting_time": float(timing["starting_time"])}
    n_times = timing["timestamps"].shape[0] if "timestamps" in timing else None
    for name, traces in _all_traces(result):
        if n_times is not None and traces.shape[0] != n_times:
            raise InputError(f"{name} has {traces.shape[0]} frames but timing has {n_times} timestamps")
    return _add_run(nwbfile, result, plane=imaging_plane, reference=reference_series, timing=timing, source=source,
                    run_name=run_name, mask_type=mask_type, include_eliminated=include_eliminated)


def read_timing(path: str | os.PathLike, run: str | None = None) -> dict[str, Any]:
    """Frame timing of a stored run's traces: ``{"rate", "starting_time"}`` or ``{"timestamps"}`` (float64, s).

    ``{}`` for a run without traces (``trace_output_option='none'``).
    """
    with _read_only(os.fspath(path)) as nwbfile:
        info = _select_run(nwbfile, os.fspath(path), run)
        roi_responses = _find_object(nwbfile, info.roi_responses_path)
        if roi_responses is None:
            return {}
        series = roi_responses[PRIMARY_SERIES_NAME]
        if series.timestamps is not None:
            return {"timestamps": np.asarray(series.timestamps[:], dtype=np.float64)}
        return {"rate": float(series.rate), "starting_time": float(series.starting_time or 0.0)}


def list_runs(path: str | os.PathLike) -> list[str]:
    """Names of the nwb-extract runs stored in an NWB file, in the order they were written."""
    with _read_only(os.fspath(path)) as nwbfile:
        return [info.run_name for info in _run_infos(nwbfile)]


def read_result(path: str | os.PathLike, run: str | None = None) -> ExtractResult:
    """Read a run written by :func:`write_result` back as an :class:`ExtractResult`.

    Footprints come back ``(cells, x, y)`` in the stored axis order (the engine's orientation for a movie run
    untransposed), traces as the result's dict ``{kind: (frames, cells)}`` with the same primary kind, and the
    images, per-ROI metrics, eliminated candidates (when written), config, timings, versions and run info.

    Parameters
    ----------
    path : str or os.PathLike
        NWB file (local path or URL).
    run : str, optional
        Run name (:func:`list_runs`); the first run written by default.
    """
    with _read_only(os.fspath(path)) as nwbfile:
        info = _select_run(nwbfile, os.fspath(path), run)
        run_json = json.loads(_text(info.run_info_json))
        plane = info.plane_segmentation
        footprints = _read_masks(plane, _frame_shape(info))
        roi_responses = _find_object(nwbfile, info.roi_responses_path)
        traces = {kind: np.asarray(roi_responses[name].data[:], dtype=np.float32)
                  for name, kind in run_json["trace_series"].items()}
        images = {name: np.asarray(image.data[()]) for name, image in info.summary_images.images.items()}
        return ExtractResult(
            footprints=footprints,
            traces=traces,
            primary_trace=run_json["primary_trace"],
            summary_image=images["summary_image"],
            max_image=images["max_image"],
            F_per_pixel=images["F_per_pixel"],
            config=_config_of(info),
            roi_metrics={name: np.asarray(plane[name].data[:]) for name in run_json["roi_metrics"]},
            eliminated=_read_eliminated(nwbfile, info, roi_responses),
            timings=run_json["timings"],
            stop_reason=run_json["stop_reason"],
            versions=run_json["versions"],
            backend=run_json["backend"],
            device=run_json["device"],
            run_info=run_json["run_info"],
        )


def read_config(path: str | os.PathLike, run: str | None = None) -> ExtractConfig:
    """The exact (resolved) config a run stored in an NWB file used; also ``ExtractConfig.from_nwb``."""
    with _read_only(os.fspath(path)) as nwbfile:
        return _config_of(_select_run(nwbfile, os.fspath(path), run))


# -- writing a run


def _check_run_options(result: ExtractResult, mask_type: str, run_name: str | None) -> None:
    """Checks shared by the writers; also loads our namespace (an IO's type map is fixed when it opens a file)."""
    if not isinstance(result, ExtractResult):
        raise InputError(f"result must be an ExtractResult, got {type(result).__name__}")
    if mask_type not in MASK_TYPES:
        raise InputError(f"mask_type must be one of {', '.join(map(repr, MASK_TYPES))}, got {mask_type!r}")
    if run_name is not None and (not isinstance(run_name, str) or not _RUN_NAME.fullmatch(run_name)):
        raise InputError(f"run_name {run_name!r} is not valid: use letters, digits, '_', '.' and '-', starting "
                         "with a letter or digit")
    schema.get_run_info_class()


@dataclass(frozen=True)
class _RunNames:
    """Container names of one run (the first run of a file has no suffix, later ones ``_<run_name>``)."""

    run_name: str
    plane: str
    eliminated: str
    images: str
    run_info: str
    dff: str
    fluorescence: str

    @classmethod
    def with_suffix(cls, run_name: str, suffix: str) -> _RunNames:
        plain = ("PlaneSegmentation", "EliminatedPlaneSegmentation", "SegmentationImages", "ExtractRunInfo",
                 "DfOverF", "Fluorescence")
        return cls(run_name, *(name + suffix for name in plain))


def _add_run_in_source(nwbfile, result: ExtractResult, source: SourceInfo, **options: Any) -> str:
    """Add a run to the (temporary copy of the) source file: the series is there, so it is linked."""
    series = _find_series(nwbfile, source.path, source.series_path)
    if tuple(series.data.shape) != source.shape:
        raise InputError(f"{source.series_path} in {source.path} has shape {tuple(series.data.shape)}, but the "
                         f"SourceInfo says {source.shape}; build it with SourceInfo.from_nwb")
    _check_fits(result, source)
    return _add_run(nwbfile, result, plane=series.imaging_plane, reference=series,
                    timing=_series_timing(series, *source.frames), source=source, **options)


def _add_run(nwbfile, result: ExtractResult, *, plane, reference, timing: dict[str, Any], source: SourceInfo | None,
             run_name: str | None, mask_type: str, include_eliminated: bool) -> str:
    """Add every container of one run to ``nwbfile`` (docs/nwb-layout.md); returns the run name."""
    from pynwb.ophys import ImageSegmentation

    ophys = nwbfile.processing.get("ophys") or nwbfile.create_processing_module(
        name="ophys", description="optical physiology: processed calcium-imaging data")
    runs = _run_infos(nwbfile)
    names = _run_names(ophys, runs, run_name)
    segmentation = ophys.data_interfaces.get("ImageSegmentation")
    if segmentation is None:
        segmentation = ImageSegmentation(name="ImageSegmentation")
        ophys.add(segmentation)
    cells = _plane_segmentation(names.plane, f"EXTRACT cells of run {names.run_name!r}", result.footprints,
                                plane, reference, mask_type, _cell_columns(result))
    segmentation.add_plane_segmentation(cells)
    eliminated = None
    if include_eliminated and result.eliminated is not None and len(result.eliminated.rules) > 0:
        rules = [("elimination_rule", "quality-control rule that eliminated the candidate (spec §7.3 names, or a "
                  "cell-finding check)", list(result.eliminated.rules))]
        eliminated = _plane_segmentation(names.eliminated, f"candidates eliminated in run {names.run_name!r}",
                                         result.eliminated.footprints, plane, reference, mask_type, rules)
        segmentation.add_plane_segmentation(eliminated)
    roi_responses, trace_series = _add_traces(ophys, result, names, cells, eliminated, timing)
    images = _summary_images(result, names)
    ophys.add(images)
    ophys.add(_run_info(result, names, len(runs) + 1, source, mask_type, trace_series,
                        cells=cells, eliminated=eliminated, roi_responses=roi_responses, images=images))
    return names.run_name


def _run_names(ophys, runs: list, run_name: str | None) -> _RunNames:
    taken = {info.run_name for info in runs}
    if run_name is None:
        run_name = next(f"run{i}" for i in itertools.count(len(runs) + 1) if f"run{i}" not in taken)
    if run_name in taken:
        raise InputError(f"a run named {run_name!r} already exists in this file (runs: {', '.join(sorted(taken))}); "
                         "choose another run_name")
    segmentation = ophys.data_interfaces.get("ImageSegmentation")
    planes = set(segmentation.plane_segmentations) if segmentation is not None else set()

    def clashes(names: _RunNames) -> list[str]:
        return [name for name in (names.plane, names.eliminated) if name in planes] + [
            name for name in (names.images, names.run_info, names.dff, names.fluorescence)
            if name in ophys.data_interfaces]

    if not runs and not clashes(_RunNames.with_suffix(run_name, "")):
        return _RunNames.with_suffix(run_name, "")
    names = _RunNames.with_suffix(run_name, f"_{run_name}")
    if clashes(names):
        raise InputError(f"processing/ophys already holds {', '.join(clashes(names))}; choose another run_name")
    return names


def _plane_segmentation(name: str, description: str, footprints: np.ndarray, plane, reference, mask_type: str,
                        columns: list[tuple[str, str, Any]]):
    """A PlaneSegmentation with one row per footprint, its mask column and ``columns`` (name, description, data)."""
    from pynwb.ophys import PlaneSegmentation

    table = PlaneSegmentation(
        name=name, description=description, imaging_plane=plane,
        reference_images=None if reference is None else (reference,),
        id=list(range(footprints.shape[0])), columns=_mask_columns(footprints, mask_type),
    )
    for column, text, data in columns:
        table.add_column(name=column, description=text, data=data)
    return table


def _mask_columns(footprints: np.ndarray, mask_type: str) -> list:
    """``image_mask`` (dense, one gzip chunk per ROI) or ``pixel_mask`` (+ its index) columns of ``footprints``."""
    from hdmf.backends.hdf5 import H5DataIO
    from hdmf.common import VectorData, VectorIndex

    n, nx, ny = footprints.shape
    axes = "x indexes the source series' stored axis 1 and y its stored axis 2 (docs/nwb-layout.md)"
    if mask_type == "image":
        data = H5DataIO(footprints, chunks=(1, nx, ny), compression="gzip") if n else footprints
        return [VectorData(name="image_mask", data=data,
                           description=f"weighted footprint of each ROI, float32 scaled to max 1; {axes}")]
    k, x, y = np.nonzero(footprints)
    pixels = np.empty(k.size, dtype=_PIXEL_MASK_DTYPE)
    pixels["x"], pixels["y"], pixels["weight"] = x, y, footprints[k, x, y]
    mask = VectorData(name="pixel_mask", data=H5DataIO(pixels, compression="gzip", chunks=True) if k.size else pixels,
                      description=f"non-zero pixels of each ROI's weighted footprint (x, y, weight); {axes}")
    index = VectorIndex(name="pixel_mask_index", data=np.cumsum(np.bincount(k, minlength=n)), target=mask)
    return [mask, index]


def _cell_columns(result: ExtractResult) -> list[tuple[str, str, Any]]:
    """ROICentroids plus one column per quality metric of ``result.roi_metrics``."""
    columns = [("ROICentroids", "footprint-weighted centroid [x, y] of each ROI in pixels, 0-based, pixel centres "
                "at integers; x along the source series' stored axis 1, y along stored axis 2 (NaN for an all-zero "
                "footprint)", result.centroids())]
    for name, values in result.roi_metrics.items():
        values = np.asarray(values)
        if name in _RESERVED_COLUMNS or values.shape != (result.n_cells,):
            raise InputError(f"roi_metrics[{name!r}] must be a ({result.n_cells},) array with a name other than "
                             f"{', '.join(sorted(_RESERVED_COLUMNS))}; got shape {values.shape}")
        columns.append((name, _METRIC_DESCRIPTIONS.get(name, f"EXTRACT quality metric {name!r} (spec §7.2)"),
                        values))
    return columns


def _add_traces(ophys, result: ExtractResult, names: _RunNames, cells, eliminated, timing: dict[str, Any]):
    """Add a DfOverF (preprocessing on: ΔF/F) or Fluorescence container with one series per trace kind to
    ``ophys``; returns it and the ``{series name: kind}`` map, or ``(None, {})`` when the run has no traces."""
    from hdmf.backends.hdf5 import H5DataIO
    from pynwb.ophys import DfOverF, Fluorescence

    if not result.traces:
        return None, {}
    dff = bool(result.config.preprocess)
    container = (DfOverF if dff else Fluorescence)(name=names.dff if dff else names.fluorescence)
    ophys.add(container)  # before the series, so their ROI regions share an ancestor with the tables
    units = ("ΔF/F (ΔF divided by each cell's footprint-weighted baseline fluorescence)" if dff else
             "movie units divided by each cell's footprint-weighted F_per_pixel (no preprocessing)")
    kinds = [result.primary_trace] * (result.primary_trace is not None) + \
        [kind for kind in result.traces if kind != result.primary_trace]
    trace_series: dict[str, str] = {}
    first = None
    for kind in kinds:
        name = PRIMARY_SERIES_NAME if kind == result.primary_trace else SERIES_NAMES[kind]
        role = "the run's primary trace kind" if kind == result.primary_trace else "a secondary trace kind"
        series = container.create_roi_response_series(
            name=name, data=H5DataIO(result.traces[kind], compression="gzip", chunks=True), unit="n.a.",
            rois=cells.create_roi_table_region(region=list(range(result.n_cells)), description=f"all ROIs of "
                                               f"{cells.name}"),
            description=f"EXTRACT traces (frames x ROIs of {cells.name}), kind {kind!r} ({role}): "
                        f"{_KIND_DESCRIPTIONS[kind]}; values in {units}",
            **(timing if first is None else _linked_timing(timing, first)),
        )
        first = first or series
        trace_series[name] = kind
    if eliminated is not None:
        container.create_roi_response_series(
            name=ELIMINATED_SERIES_NAME, unit="n.a.",
            data=H5DataIO(result.eliminated.traces, compression="gzip", chunks=True),
            rois=eliminated.create_roi_table_region(region=list(range(len(result.eliminated.rules))),
                                                    description=f"all ROIs of {eliminated.name}"),
            description=f"traces of the candidates of {eliminated.name} when they were eliminated; values in {units}",
            **_linked_timing(timing, first),
        )
    return container, trace_series


def _linked_timing(timing: dict[str, Any], first) -> dict[str, Any]:
    """Timing of a further series: timestamps link to the first series' (stored once), a rate is repeated."""
    return {"timestamps": first} if "timestamps" in timing else timing


def _summary_images(result: ExtractResult, names: _RunNames):
    from hdmf.backends.hdf5 import H5DataIO
    from pynwb.base import Images
    from pynwb.image import GrayscaleImage

    images = Images(name=names.images, description=f"summary images of EXTRACT run {names.run_name!r}; each "
                    "image indexes like the source series' data[t] (stored axes 1 and 2)")
    for name, text in _IMAGE_DESCRIPTIONS.items():
        images.add_image(GrayscaleImage(name=name, data=H5DataIO(getattr(result, name), compression="gzip"),
                                        description=text))
    return images


def _run_info(result: ExtractResult, names: _RunNames, run_index: int, source: SourceInfo | None, mask_type: str,
              trace_series: dict[str, str], *, cells, eliminated, roi_responses, images):
    """The ExtractRunInfo object of the run (config attributes and JSON, run information, links)."""
    from hdmf.backends.hdf5 import H5DataIO

    run_json = {
        "run_name": names.run_name, "versions": result.versions, "backend": result.backend, "device": result.device,
        "timings": result.timings, "stop_reason": result.stop_reason, "run_info": result.run_info,
        "primary_trace": result.primary_trace, "trace_series": trace_series, "mask_type": mask_type,
        "roi_metrics": list(result.roi_metrics), "n_cells": result.n_cells,
        "source": None if source is None else {**asdict(source), "frame_range": list(source.frames)},
    }
    fields: dict[str, Any] = {
        "name": names.run_info, "run_name": names.run_name, "run_index": np.int32(run_index),
        "package_version": __version__, "engine_version": ENGINE_VERSION,
        "backend": str(result.backend), "device": str(result.device), "axis_order": schema.AXIS_ORDER,
        "run_info_json": json.dumps(_jsonable(run_json), indent=1),
        "plane_segmentation": cells, "summary_images": images,
    }
    if result.stop_reason is not None:
        fields["stop_reason"] = str(result.stop_reason)
    ophys_path = "processing/ophys"
    if eliminated is not None:
        fields["eliminated_plane_segmentation_path"] = f"{ophys_path}/ImageSegmentation/{eliminated.name}"
    if roi_responses is not None:
        fields["roi_responses_path"] = f"{ophys_path}/{roi_responses.name}"
    fields.update({f"seconds_{stage}": float(seconds) for stage, seconds in result.timings.items()
                   if stage in schema.TIMING_STAGES})
    if source is not None:
        fields.update(_source_fields(source))
    fields.update(_config_fields(result.config))
    arrays = {name: getattr(result.config, name) for name in schema.CONFIG_DATASETS}
    arrays = {name: value for name, value in arrays.items() if value is not None}
    settings = result.config.replace(**dict.fromkeys(arrays)).to_dict()
    settings.update({name: _dataset_marker(name) for name in arrays})
    fields["config_json"] = json.dumps(settings, indent=1)
    fields.update({name: H5DataIO(np.asarray(value), compression="gzip") for name, value in arrays.items()})
    return schema.get_run_info_class()(**fields)


def _source_fields(source: SourceInfo) -> dict[str, Any]:
    start, stop = source.frames
    fields = {"source_path": source.path, "source_series": source.series_path,
              "source_shape": np.asarray(source.shape, dtype=np.int32), "source_dtype": source.dtype,
              "source_frame_start": np.int32(start), "source_frame_stop": np.int32(stop)}
    dandi = {"dandiset_id": source.dandiset_id, "dandiset_version": source.dandiset_version,
             "dandi_asset_id": source.asset_id, "dandi_asset_path": source.asset_path}
    fields.update({key: str(value) for key, value in dandi.items() if value is not None})
    return fields


def _config_fields(config: ExtractConfig) -> dict[str, Any]:
    """Typed attributes of every config key with a fixed type (:func:`schema.config_attributes`); None is left out."""
    cast = {"bool": bool, "int32": np.int32, "float64": float, "text": str}
    fields = {}
    for attribute, (group, param, dtype) in schema.config_attributes().items():
        value = getattr(getattr(config, group) if group else config, param.name)
        if value is not None:
            fields[attribute] = cast[dtype](value)
    return fields


def _dataset_marker(name: str) -> str:
    return f"<dataset {name}>"


def _jsonable(value: Any) -> Any:
    """Plain JSON-able form (NumPy scalars and arrays, tuples and nested dicts)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return value


# -- standalone files and source files


def _standalone_file(result: ExtractResult, source: SourceInfo | None, rate: float | None, source_nwbfile: Any = None):
    """A new NWBFile with the source's session metadata (or placeholders), its imaging plane and frame timing."""
    if source is None:
        if rate is None:
            raise InputError("write_result needs the frame timing: pass source=SourceInfo(...) for a movie from an "
                             "NWB file, or rate=<frames per second> for a movie without one")
        _check_options(rate, "TwoPhotonSeries", 1, None)
        nwbfile = _new_nwbfile({"session_description": "EXTRACT results written by nwb-extract (no source file)",
                                "session_start_time": _session_start(None)}, _subject(None))
        plane = _add_imaging_plane(nwbfile, {"description": "placeholder imaging plane: the movie came without "
                                             "NWB metadata"}, rate=rate, series_type="TwoPhotonSeries")
        return nwbfile, plane, {"rate": float(rate), "starting_time": 0.0}
    _check_fits(result, source)
    if source_nwbfile is not None:
        return _copy_source_metadata(source_nwbfile, source)
    with _read_only(source.path) as original:
        return _copy_source_metadata(original, source)


def _copy_source_metadata(original, source: SourceInfo):
    """(new NWBFile with the session/subject of ``original``, its copied imaging plane, the frame timing)."""
    series = _find_series(original, source.path, source.series_path)
    session = {name: _plain_value(getattr(original, name, None)) for name in _SESSION_FIELDS}
    subject = None if original.subject is None else _copy_container(original.subject)
    nwbfile = _new_nwbfile(session, subject)
    plane = _copy_imaging_plane(nwbfile, series.imaging_plane)
    return nwbfile, plane, _series_timing(series, *source.frames)


def _new_nwbfile(session: dict[str, Any], subject):
    from pynwb import NWBFile

    fields = {name: value for name, value in session.items() if value is not None}
    return NWBFile(identifier=str(uuid.uuid4()), subject=subject, **fields)


def _copy_imaging_plane(nwbfile, plane):
    """Copies of ``plane``, its optical channels, device and device model, added to ``nwbfile``."""
    device = plane.device
    model = getattr(device, "model", None)
    if model is not None:
        model = _copy_container(model)
        nwbfile.add_device_model(model)
    device = _copy_container(device, model=model)
    nwbfile.add_device(device)
    channels = [_copy_container(channel) for channel in plane.optical_channel]
    copy = _copy_container(plane, optical_channel=channels, device=device)
    nwbfile.add_imaging_plane(copy)
    return copy


def _copy_container(obj, **replace: Any):
    """A new object of ``obj``'s class from the constructor fields ``obj`` has set (not None, not the default)."""
    from hdmf.utils import get_docval

    cls = type(obj)
    fields = {}
    for arg in get_docval(cls.__init__):
        name = arg["name"]
        value = replace[name] if name in replace else _plain_value(getattr(obj, name, None))
        if value is None or (name not in replace and _is_default(value, arg)):
            continue
        fields[name] = value
    return cls(**fields)


def _is_default(value: Any, arg: dict) -> bool:
    default = arg.get("default", object())
    return isinstance(default, (str, int, float, bool)) and isinstance(value, type(default)) and value == default


def _plain_value(value: Any) -> Any:
    """An in-memory value of a field read from a file (datasets loaded, bytes decoded)."""
    if hasattr(value, "shape") and not isinstance(value, np.ndarray) and hasattr(value, "dtype"):  # h5py/zarr
        value = value[()]
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in value.tolist())
    return value


def _series_timing(series, start: int, stop: int) -> dict[str, Any]:
    """Timing of frames ``start:stop`` of ``series``: its timestamps, or its rate and shifted starting time."""
    timestamps = series.timestamps
    if timestamps is not None:
        timestamps = getattr(timestamps, "timestamps", timestamps)  # linked from another TimeSeries
        return {"timestamps": np.asarray(timestamps[start:stop], dtype=np.float64)}
    return {"rate": float(series.rate), "starting_time": float(series.starting_time or 0.0) + start / series.rate}


def _check_fits(result: ExtractResult, source: SourceInfo) -> None:
    """Footprints must have the series' stored frame shape, traces one row per frame used."""
    where = f"{source.series_path} in {source.path}"
    if result.frame_shape != source.shape[1:]:
        raise InputError(f"footprints have frame shape {result.frame_shape} but {where} stores frames of shape "
                         f"{source.shape[1:]}; run the engine on the series' frames as stored (untransposed) so "
                         "masks follow its axis order")
    start, stop = source.frames
    for name, traces in _all_traces(result):
        if traces.shape[0] != stop - start:
            raise InputError(f"{name} has {traces.shape[0]} frames but frames {start}:{stop} of {where} are "
                             f"{stop - start}; give SourceInfo.frame_range the frames the engine ran on (time "
                             "downsampling without reestimate_T_if_downsampled is not supported in NWB output)")


def _all_traces(result: ExtractResult):
    yield from ((f"traces[{kind!r}]", traces) for kind, traces in result.traces.items())
    if result.eliminated is not None:
        yield "eliminated.traces", result.eliminated.traces


def _check_in_place(output_path: str | os.PathLike, source: SourceInfo | None) -> Path:
    path = Path(output_path)
    if source is None:
        raise InputError("in_place=True needs source=SourceInfo(...) naming the series the result was computed from")
    if not path.is_file():
        raise InputError(f"cannot append to {path}: no such file")
    if not Path(source.path).is_file() or not os.path.samefile(path, source.path):
        raise InputError(f"in_place=True appends to the source file, but output_path {path} is not source.path "
                         f"{source.path}; pass output_path=source.path, or in_place=False for a new file")
    return path


def _append_atomically(path: Path, add: Callable[[Any], str]) -> str:
    """Apply ``add`` to a copy of ``path`` opened for appending, then rename the copy onto ``path``."""
    from pynwb import NWBHDF5IO

    with atomic_path(path) as temporary:
        shutil.copy2(path, temporary)
        with NWBHDF5IO(str(temporary), mode="a") as io:
            nwbfile = io.read()
            out = add(nwbfile)
            io.write(nwbfile)
    return out


# -- reading


@contextmanager
def _read_only(path: str):
    """The NWBFile at ``path`` (local HDF5 or Zarr, or URL), opened read-only and closed on exit."""
    import pynwb

    if "://" not in path and not os.path.exists(path):
        raise InputError(f"no such NWB file: {path}")
    try:
        nwbfile = pynwb.read_nwb(path)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read {path} as an NWB file: {err}") from None
    try:
        yield nwbfile
    finally:
        nwbfile.read_io.close()


def _find_series(nwbfile, path: str, series_path: str):
    """The imaging series (an ImageSeries with an imaging plane) at ``series_path`` inside ``nwbfile``."""
    series = _find_object(nwbfile, series_path)
    if series is None:
        raise InputError(f"no series {series_path!r} in {path}; give its path inside the file, e.g. "
                         "'acquisition/TwoPhotonSeries' or 'processing/ophys/<name>'")
    if getattr(series, "imaging_plane", None) is None:
        raise InputError(f"{series_path} in {path} is a {type(series).__name__}, not an imaging series with an "
                         "imaging plane (TwoPhotonSeries or OnePhotonSeries)")
    return series


def _find_object(nwbfile, object_path: str | None):
    """The container stored at ``object_path`` (e.g. ``"acquisition/TwoPhotonSeries"``) of a file read from
    disk, or None (also for ``object_path`` None)."""
    if object_path is None:
        return None
    manager = nwbfile.read_io.manager
    wanted = "root/" + object_path.strip("/")
    for obj in nwbfile.objects.values():
        builder = manager.get_builder(obj)
        if builder is not None and builder.path == wanted:
            return obj
    return None


def _run_infos(nwbfile) -> list:
    """The ExtractRunInfo objects of ``processing/ophys``, in writing order."""
    ophys = nwbfile.processing.get("ophys")
    if ophys is None:
        return []
    runs = [obj for obj in ophys.data_interfaces.values() if getattr(obj, "neurodata_type", None) ==
            schema.RUN_INFO_TYPE and getattr(obj, "namespace", None) == schema.NAMESPACE]
    return sorted(runs, key=lambda info: int(info.run_index))


def _select_run(nwbfile, path: str, run: str | None):
    runs = _run_infos(nwbfile)
    if not runs:
        raise InputError(f"{path} holds no nwb-extract run (no ExtractRunInfo in processing/ophys)")
    if run is None:
        return runs[0]
    for info in runs:
        if info.run_name == run:
            return info
    raise InputError(f"no run named {run!r} in {path}; its runs are {', '.join(i.run_name for i in runs)}")


def _text(value: Any) -> str:
    value = value[()] if hasattr(value, "shape") and not isinstance(value, str) else value
    return value.decode() if isinstance(value, bytes) else str(value)


def _config_of(info) -> ExtractConfig:
    settings = json.loads(_text(info.config_json))
    for name in schema.CONFIG_DATASETS:
        if settings.get(name) == _dataset_marker(name):
            settings[name] = np.asarray(getattr(info, name)[()])
    return ExtractConfig.from_dict(settings)


def _frame_shape(info) -> tuple[int, int]:
    return tuple(int(n) for n in info.summary_images.images["summary_image"].data.shape)


def _read_masks(plane, frame_shape: tuple[int, int]) -> np.ndarray:
    """Dense float32 footprints ``(rois, x, y)`` from an ``image_mask`` or ``pixel_mask`` column."""
    if "image_mask" in plane.colnames:
        return np.asarray(plane["image_mask"].data[:], dtype=np.float32).reshape(-1, *frame_shape)
    ends = np.asarray(plane["pixel_mask"].data[:], dtype=np.int64)
    pixels = np.asarray(plane["pixel_mask"].target.data[:])
    footprints = np.zeros((ends.size, *frame_shape), dtype=np.float32)
    rois = np.repeat(np.arange(ends.size), np.diff(ends, prepend=0))
    footprints[rois, pixels["x"], pixels["y"]] = pixels["weight"]
    return footprints


def _read_eliminated(nwbfile, info, roi_responses) -> EliminatedCandidates | None:
    plane = _find_object(nwbfile, info.eliminated_plane_segmentation_path)
    if plane is None:
        return None
    footprints = _read_masks(plane, _frame_shape(info))
    series = None if roi_responses is None else roi_responses.roi_response_series.get(ELIMINATED_SERIES_NAME)
    traces = (np.zeros((0, footprints.shape[0]), dtype=np.float32) if series is None
              else np.asarray(series.data[:], dtype=np.float32))
    return EliminatedCandidates(footprints=footprints, traces=traces,
                                rules=tuple(_text(rule) for rule in plane["elimination_rule"].data[:]))
