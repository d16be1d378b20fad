"""New NWB files: session, subject, device and imaging plane (given or copied from a source file), atomic write.

The building blocks the movie writer (:mod:`nwb_extract.io.movie_write`) and the result writer
(:mod:`nwb_extract.io.nwb_write`) share; :func:`write_atomically` writes through :mod:`nwb_extract.io.atomic`, so an
interrupted write never leaves a partial file at the requested path.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from nwb_extract.errors import InputError
from nwb_extract.io.atomic import atomic_path

__all__ = ["DEFAULT_SUBJECT", "IMAGING_PLANE_KEYS", "SESSION_FIELDS", "add_imaging_plane", "check_destination",
           "check_rate", "copy_container", "copy_imaging_plane", "make_subject", "new_nwbfile", "new_nwbfile_like",
           "plain_value", "session_start", "write_atomically"]

DEFAULT_SUBJECT = {
    "subject_id": "unknown",
    "species": "Mus musculus",
    "sex": "U",
    "age": "P90D",
    "description": "placeholder subject written by nwb-extract; no subject metadata was given",
}
"""Subject written when none is given (NWB/DANDI require one; pass the real subject for real data)."""

_WAVELENGTHS_NM = {"TwoPhotonSeries": (920.0, 510.0), "OnePhotonSeries": (470.0, 510.0)}  # (excitation, emission)

IMAGING_PLANE_KEYS = {
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

SESSION_FIELDS = (
    "session_description", "session_start_time", "timestamps_reference_time", "experimenter",
    "experiment_description", "session_id", "institution", "lab", "keywords", "related_publications", "notes",
    "pharmacology", "protocol", "surgery", "virus", "stimulus_notes", "data_collection", "slices",
)
"""NWBFile fields copied from a source file into a result file."""


def check_destination(path: str | os.PathLike, overwrite: bool) -> Path:
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path}: directory {path.parent} does not exist; create it first")
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a directory; give a file name such as {path / 'movie.nwb'}")
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; pass overwrite=True to replace it or choose another path")
    return path


def check_rate(rate: float) -> None:
    """A frame rate must be a positive finite number of Hz."""
    if not (isinstance(rate, (int, float, np.number)) and np.isfinite(rate) and rate > 0):
        raise InputError(f"rate must be a positive frame rate in Hz, got {rate!r}")


def session_start(start: datetime | None) -> datetime:
    if start is None:
        return datetime.now().astimezone()
    if not isinstance(start, datetime) or start.tzinfo is None:
        raise InputError(
            f"session_start_time must be a timezone-aware datetime, got {start!r}; "
            "e.g. datetime(2024, 1, 1, tzinfo=zoneinfo.ZoneInfo('UTC'))"
        )
    return start


def make_subject(fields: Mapping[str, Any] | None):
    from pynwb.file import Subject

    fields = dict(DEFAULT_SUBJECT if fields is None else fields)
    try:
        return Subject(**fields)
    except TypeError as err:  # docval: unknown or wrongly typed field
        raise InputError(f"invalid subject {fields!r}: {err}; use pynwb.file.Subject's fields") from None


def add_imaging_plane(nwbfile, metadata: Mapping[str, Any] | None, *, rate: float, series_type: str):
    """Device, OpticalChannel and ImagingPlane from ``metadata`` (see ``IMAGING_PLANE_KEYS``)."""
    from pynwb.ophys import OpticalChannel

    unknown = set(metadata or {}) - set(IMAGING_PLANE_KEYS)
    if unknown:
        raise InputError(
            f"unknown imaging_plane keys {sorted(unknown)}; allowed: {', '.join(sorted(IMAGING_PLANE_KEYS))}"
        )
    meta = {**IMAGING_PLANE_KEYS, **(metadata or {})}
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


def write_atomically(nwbfile, path: Path, overwrite: bool) -> None:
    """Write ``nwbfile`` to a temporary file beside ``path``, then rename it onto ``path``."""
    from pynwb import NWBHDF5IO

    with atomic_path(path, overwrite=overwrite) as temporary, NWBHDF5IO(str(temporary), mode="w") as io:
        io.write(nwbfile)


def new_nwbfile(session: dict[str, Any], subject):
    """A new NWBFile (fresh identifier) with the ``session`` fields that are not None and ``subject``."""
    from pynwb import NWBFile

    fields = {name: value for name, value in session.items() if value is not None}
    return NWBFile(identifier=str(uuid.uuid4()), subject=subject, **fields)


def new_nwbfile_like(original) -> Any:
    """A new NWBFile (fresh identifier) with the session fields and a copy of the subject of ``original``."""
    session = {name: plain_value(getattr(original, name, None)) for name in SESSION_FIELDS}
    subject = None if original.subject is None else copy_container(original.subject)
    return new_nwbfile(session, subject)


def copy_imaging_plane(nwbfile, plane):
    """Copies of ``plane``, its optical channels, device and device model, added to ``nwbfile``."""
    device = plane.device
    model = getattr(device, "model", None)
    if model is not None:
        model = copy_container(model)
        nwbfile.add_device_model(model)
    device = copy_container(device, model=model)
    nwbfile.add_device(device)
    channels = [copy_container(channel) for channel in plane.optical_channel]
    copy = copy_container(plane, optical_channel=channels, device=device)
    nwbfile.add_imaging_plane(copy)
    return copy


def copy_container(obj, **replace: Any):
    """A new object of ``obj``'s class from the constructor fields ``obj`` has set (not None, not the default)."""
    from hdmf.utils import get_docval

    cls = type(obj)
    fields = {}
    for arg in get_docval(cls.__init__):
        name = arg["name"]
        value = replace[name] if name in replace else plain_value(getattr(obj, name, None))
        if value is None or (name not in replace and _is_default(value, arg)):
            continue
        fields[name] = value
    return cls(**fields)


def _is_default(value: Any, arg: dict) -> bool:
    default = arg.get("default", object())
    return isinstance(default, (str, int, float, bool)) and isinstance(value, type(default)) and value == default


def plain_value(value: Any) -> Any:
    """An in-memory value of a field read from a file (datasets loaded, bytes decoded)."""
    if hasattr(value, "shape") and not isinstance(value, np.ndarray) and hasattr(value, "dtype"):  # h5py/zarr
        value = value[()]
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in value.tolist())
    return value
