"""A person's review of a run's cells in NWB and in JSON: :func:`read_curation`, :func:`write_curation`,
:func:`export_curation`, :func:`import_curation`.

In NWB (docs/nwb-layout.md) the review is two boolean columns of the run's PlaneSegmentation, ``Accepted`` and
``Rejected`` (the names roiextractors' ``NwbSegmentationExtractor`` reads into its ``accepted`` / ``rejected``
properties; a cell with both False was not reviewed), and who saved it and when in the run info's ``curated_by``
and ``curated_at`` attributes (extension 0.3.0). :func:`write_curation` writes them atomically into a local file
(a copy is changed and renamed onto the original, :func:`nwb_extract.io.nwb_write.append_atomically`); saving
again overwrites the columns and the note in place. A streamed (read-only) file's review goes to a JSON file
instead (:func:`export_curation`), which :func:`import_curation` reads back.
"""

from __future__ import annotations

import getpass
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from nwb_extract.errors import InputError, SourceNotFoundError
from nwb_extract.io import schema
from nwb_extract.io.atomic import atomic_path
from nwb_extract.result import Curation

__all__ = ["ACCEPTED_COLUMN", "COLUMN_DESCRIPTIONS", "JSON_FORMAT", "REJECTED_COLUMN", "current_user", "export_curation", "import_curation",
           "now_text", "read_curation", "write_curation"]

ACCEPTED_COLUMN = "Accepted"
REJECTED_COLUMN = "Rejected"
COLUMN_DESCRIPTIONS = {
    ACCEPTED_COLUMN: "True where a person accepted the ROI when reviewing the cells (nwb-extract review); an ROI "
                     "neither accepted nor rejected was not reviewed",
    REJECTED_COLUMN: "True where a person rejected the ROI when reviewing the cells (nwb-extract review); an ROI "
                     "neither accepted nor rejected was not reviewed",
}
JSON_FORMAT = "nwb-extract curation"
"""Value of the ``format`` key of a curation JSON file (version 1)."""


def current_user() -> str:
    """The login name of the user running the process ('unknown' when the system has none)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def now_text() -> str:
    """The current local date and time, ISO 8601 to the second with its UTC offset."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def read_curation(info: Any, plane: Any) -> Curation | None:
    """The review stored with a run (its run info and PlaneSegmentation, as read by pynwb), or None if the plane
    has neither an ``Accepted`` nor a ``Rejected`` column."""
    columns = {name: np.asarray(plane[name].data[:], dtype=bool) for name in (ACCEPTED_COLUMN, REJECTED_COLUMN)
               if name in plane.colnames}
    if not columns:
        return None
    absent = np.zeros(len(plane.id), dtype=bool)
    return Curation(accepted=columns.get(ACCEPTED_COLUMN, absent), rejected=columns.get(REJECTED_COLUMN, absent),
                    curated_by=_optional_text(getattr(info, "curated_by", None)),
                    curated_at=_optional_text(getattr(info, "curated_at", None)))


def write_curation(path: str | os.PathLike, curation: Curation, run: str | None = None) -> str:
    """Write a review into a run of a local result file, atomically; returns the run name.

    The run's PlaneSegmentation gets (or has overwritten) its ``Accepted`` and ``Rejected`` columns, and the run
    info its ``curated_by`` / ``curated_at`` attributes. The file is copied beside itself, the copy is changed and
    renamed onto the original: a crash leaves the original intact.

    Raises
    ------
    SourceNotFoundError
        No file at ``path``.
    InputError
        No such run, or the review does not cover the run's cells.
    """
    from nwb_extract.io.nwb_read import select_run
    from nwb_extract.io.nwb_write import append_atomically

    path = Path(path)
    if not path.is_file():
        raise SourceNotFoundError(f"no such file: {path}")
    schema.get_run_info_class()  # the extension (with curated_by / curated_at) is cached in the file on write

    def add(nwbfile: Any) -> str:
        info = select_run(nwbfile, str(path), run)
        plane = info.plane_segmentation
        if curation.accepted.shape != (len(plane.id),):
            raise InputError(f"the review covers {curation.accepted.size} cells but run {info.run_name!r} of {path} "
                             f"has {len(plane.id)}; it belongs to another run or file")
        for name, values in ((ACCEPTED_COLUMN, curation.accepted), (REJECTED_COLUMN, curation.rejected)):
            if name in plane.colnames:
                plane[name].data[:] = values  # an h5py dataset of the copy, open for writing
            else:
                plane.add_column(name=name, description=COLUMN_DESCRIPTIONS[name], data=values)
        return info

    def note(nwbfile: Any) -> None:  # after pynwb's write, which rewrites the attributes it read
        info = select_run(nwbfile, str(path), run)
        group = info.plane_segmentation.id.data.file[nwbfile.read_io.manager.get_builder(info).path.removeprefix(
            "root")]
        group.attrs["curated_by"] = curation.curated_by or current_user()
        group.attrs["curated_at"] = curation.curated_at or now_text()

    return str(append_atomically(path, add, note).run_name)


def export_curation(output: str | os.PathLike, curation: Curation, *, source: str, run: str) -> Path:
    """Write a review as JSON (atomically): the source file, the run, its cell count, the 0-based indices of the
    accepted and of the rejected cells (rows of the PlaneSegmentation), who and when."""
    output = Path(output)
    document = {
        "format": JSON_FORMAT, "version": 1, "source": str(source), "run": run,
        "n_cells": int(curation.accepted.size),
        "accepted": np.flatnonzero(curation.accepted).tolist(),
        "rejected": np.flatnonzero(curation.rejected).tolist(),
        "curated_by": curation.curated_by, "curated_at": curation.curated_at,
    }
    with atomic_path(output) as temporary:
        temporary.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return output


def import_curation(path: str | os.PathLike, *, run: str, n_cells: int) -> Curation:
    """Read a review written by :func:`export_curation`, checked against the run it is applied to.

    Raises
    ------
    SourceNotFoundError
        No file at ``path``.
    InputError
        Not a curation file, or one of another run or cell count.
    """
    path = Path(path)
    if not path.is_file():
        raise SourceNotFoundError(f"no such curation file: {path}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is not a curation JSON file ({err}); give a file written by "
                         "`nwb-extract review --export`") from None
    if not isinstance(document, dict) or document.get("format") != JSON_FORMAT:
        raise InputError(f"{path} is not a curation file (no \"format\": \"{JSON_FORMAT}\"); give a file written by "
                         "`nwb-extract review --export`")
    if document.get("run") != run or document.get("n_cells") != n_cells:
        raise InputError(f"{path} reviews run {document.get('run')!r} with {document.get('n_cells')} cells, not run "
                         f"{run!r} with {n_cells} cells; choose the run with --run")
    flags = {}
    for key in ("accepted", "rejected"):
        indices = np.asarray(document.get(key, []), dtype=np.int64)
        if indices.ndim != 1 or np.any((indices < 0) | (indices >= n_cells)):
            raise InputError(f"{path}: {key!r} must list cell indices in 0..{n_cells - 1}")
        flags[key] = np.isin(np.arange(n_cells), indices)
    return Curation(accepted=flags["accepted"], rejected=flags["rejected"], curated_by=document.get("curated_by"),
                    curated_at=document.get("curated_at"))


def _optional_text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
