"""NWB files: write calcium-imaging movies (and, later, find series and write EXTRACT results).

Axis rule (docs/architecture.md): a movie ``(frames, rows, cols)`` is stored in ``ImageSeries.data`` exactly as given,
so ``data[t]`` is frame ``t`` with the same axis order; nothing is transposed on write, and ``nwb-extract run`` passes
the stored frames to the engine as they are.

Every writer here is atomic: it writes to a temporary file in the destination directory and renames it into place,
so an interrupted write never leaves a partial file at the requested path, and it refuses to replace an existing
file unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nwb_extract.errors import InputError

if TYPE_CHECKING:
    from nwb_extract.simulate import SimulatedMovie

__all__ = ["SERIES_TYPES", "write_movie_nwb", "write_simulated_nwb"]

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

    temporary = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.partial{path.suffix}")  # keeps ".nwb"
    try:
        with NWBHDF5IO(str(temporary), mode="w") as io:
            io.write(nwbfile)
        if path.exists() and not overwrite:  # appeared while we were writing
            raise InputError(f"{path} appeared while writing; pass overwrite=True to replace it")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
