"""Calcium-imaging movies into new NWB files: :func:`write_movie_nwb` and, for simulations, :func:`write_simulated_nwb`.

Axis rule (docs/architecture.md): a movie ``(frames, rows, cols)`` is stored in ``ImageSeries.data`` exactly as given,
so ``data[t]`` is frame ``t`` with the same axis order; nothing is transposed on write. The write is atomic
(:func:`nwb_extract.io.nwbfile.write_atomically`) and refuses to replace an existing file unless
``overwrite=True``.
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
from nwb_extract.io.nwbfile import (DEFAULT_SUBJECT, add_imaging_plane, check_destination, check_rate, make_subject,
                                   session_start, write_atomically)
from nwb_extract.io.source import SERIES_TYPES

if TYPE_CHECKING:
    from nwb_extract.simulate import SimulatedMovie

__all__ = ["MAX_CHUNK_BYTES", "write_movie_nwb", "write_simulated_nwb"]

MAX_CHUNK_BYTES = 10 * 2**20
"""Upper bound on the size of one HDF5 chunk of the movie (10 MiB, the size DANDI recommends for streaming)."""


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
        duration, ...); :data:`~nwb_extract.io.nwbfile.DEFAULT_SUBJECT` when None.
    imaging_plane : mapping, optional
        Imaging metadata; keys and defaults in ``IMAGING_PLANE_KEYS`` (``location``, ``indicator``,
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

    path = check_destination(path, overwrite)
    movie = _check_movie(movie)
    _check_options(rate, series_type, chunk_frames, compression)
    nwbfile = NWBFile(
        session_description=session_description,
        identifier=identifier or str(uuid.uuid4()),
        session_start_time=session_start(session_start_time),
        subject=make_subject(subject),
    )
    plane = add_imaging_plane(nwbfile, imaging_plane, rate=rate, series_type=series_type)
    series_class = TwoPhotonSeries if series_type == "TwoPhotonSeries" else OnePhotonSeries
    data = H5DataIO(data=movie, chunks=_chunk_shape(movie, chunk_frames), compression=compression)
    nwbfile.add_acquisition(
        series_class(
            name=series_name or series_type, imaging_plane=plane, data=data, unit=unit, rate=float(rate),
            starting_time=float(starting_time), description=description,
        )
    )
    write_atomically(nwbfile, path, overwrite)
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


def _check_movie(movie: Any) -> np.ndarray:
    movie = np.asarray(movie)
    if movie.ndim != 3 or 0 in movie.shape:
        raise InputError(f"movie must be a non-empty (frames, rows, cols) array, got shape {movie.shape}")
    if not (np.issubdtype(movie.dtype, np.integer) or np.issubdtype(movie.dtype, np.floating)):
        raise InputError(f"movie must have an integer or floating dtype, got {movie.dtype}")
    return movie


def _check_options(rate: float, series_type: str, chunk_frames: int, compression: str | None) -> None:
    check_rate(rate)
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
