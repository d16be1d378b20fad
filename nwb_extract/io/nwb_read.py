"""EXTRACT results back from NWB: :func:`list_runs`, :func:`read_result`, :func:`read_config`, :func:`read_timing`,
and :func:`open_run` for lazy access to one stored run (what ``nwb-extract review`` reads).

Reads what :mod:`nwb_extract.io.nwb_write` writes (docs/nwb-layout.md), from a local file (HDF5 or Zarr) or a URL,
opened with :func:`nwb_extract.io.source.open_nwb`. Files written by earlier versions of the extension
(:data:`nwb_extract.io.schema.NAMESPACE_VERSION`) read the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from nwb_extract.config import ExtractConfig
from nwb_extract.errors import InputError
from nwb_extract.io import schema
from nwb_extract.io.curation import read_curation
from nwb_extract.io.layout import ELIMINATED_SERIES_NAME, PRIMARY_SERIES_NAME, dataset_marker, run_infos
from nwb_extract.io.source import open_nwb
from nwb_extract.result import EliminatedCandidates, ExtractResult

__all__ = ["StoredRun", "elimination_rules", "list_runs", "open_run", "read_config", "read_masks", "read_result",
           "read_timing", "select_run"]


@dataclass(frozen=True)
class StoredRun:
    """One run of an open result file, read lazily (datasets are read only when sliced).

    Attributes
    ----------
    nwbfile : pynwb.NWBFile
        The open file.
    location : str
        The file's path or URL (for messages).
    info : ExtractRunInfo
        The run's run-info object.
    run_json : dict
        Its ``run_info_json`` (trace series by name, primary kind, metric names, ...).
    plane : pynwb.ophys.PlaneSegmentation
        The run's cells.
    roi_responses : pynwb.ophys.DfOverF or Fluorescence or None
        The container of its trace series (None for a run without traces).
    """

    nwbfile: Any
    location: str
    info: Any
    run_json: dict
    plane: Any
    roi_responses: Any

    @property
    def name(self) -> str:
        """The run name."""
        return str(self.info.run_name)

    @property
    def frame_shape(self) -> tuple[int, int]:
        """Stored (x, y) frame shape of the masks and images."""
        return _frame_shape(self.info)

    def trace_data(self) -> dict[str, Any]:
        """``{kind: (frames, cells) dataset}``, the run's primary kind first; unread (slice to read)."""
        return {kind: self.roi_responses[name].data for name, kind in self.run_json["trace_series"].items()}

    def timing(self) -> dict[str, Any]:
        """Frame timing of the traces: ``{"rate", "starting_time"}`` or ``{"timestamps"}`` (float64, s); ``{}``
        without traces."""
        if self.roi_responses is None:
            return {}
        series = self.roi_responses[PRIMARY_SERIES_NAME]
        if series.timestamps is not None:
            return {"timestamps": np.asarray(series.timestamps[:], dtype=np.float64)}
        return {"rate": float(series.rate), "starting_time": float(series.starting_time or 0.0)}

    def eliminated_plane(self) -> Any:
        """The PlaneSegmentation of the eliminated candidates (with ``elimination_rule``), or None."""
        return _find_object(self.nwbfile, self.info.eliminated_plane_segmentation_path)


@contextmanager
def open_run(path: Any, run: str | None = None) -> Iterator[StoredRun]:
    """Open a result file (local path or URL, :func:`nwb_extract.io.source.open_nwb`) and yield one run, lazily.

    Raises :class:`InputError` when the file holds no nwb-extract run or no run named ``run``.
    """
    with open_nwb(path) as (nwbfile, location):
        info = select_run(nwbfile, location, run)
        yield StoredRun(nwbfile=nwbfile, location=location, info=info, run_json=json.loads(_text(info.run_info_json)),
                        plane=info.plane_segmentation,
                        roi_responses=_find_object(nwbfile, info.roi_responses_path))


def list_runs(path: str | os.PathLike) -> list[str]:
    """Names of the nwb-extract runs stored in an NWB file, in the order they were written."""
    with open_nwb(path) as (nwbfile, location):
        return [info.run_name for info in run_infos(nwbfile)]


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
    with open_run(path, run) as stored:
        info, run_json, plane = stored.info, stored.run_json, stored.plane
        footprints = read_masks(plane, stored.frame_shape)
        traces = {kind: np.asarray(data[:], dtype=np.float32) for kind, data in stored.trace_data().items()}
        images = {name: np.asarray(image.data[()]) for name, image in info.summary_images.images.items()}
        return ExtractResult(
            footprints=footprints,
            traces=traces,
            primary_trace=run_json["primary_trace"],
            summary_image=images["summary_image"],
            max_image=images["max_image"],
            F_per_pixel=images["F_per_pixel"],
            config=_config_of(info),
            roi_metrics={name: np.asarray(plane[name].data[:]) if name in plane.colnames else np.zeros(0)
                         for name in run_json["roi_metrics"]},
            eliminated=_read_eliminated(stored),
            timings=run_json["timings"],
            stop_reason=run_json["stop_reason"],
            versions=run_json["versions"],
            backend=run_json["backend"],
            device=run_json["device"],
            run_info=run_json["run_info"],
            curation=read_curation(stored.info, plane),
        )


def read_config(path: str | os.PathLike, run: str | None = None) -> ExtractConfig:
    """The exact (resolved) config a run stored in an NWB file used; pass it to ``extract`` to reproduce the run."""
    with open_nwb(path) as (nwbfile, location):
        return _config_of(select_run(nwbfile, location, run))


def read_timing(path: str | os.PathLike, run: str | None = None) -> dict[str, Any]:
    """Frame timing of a stored run's traces: ``{"rate", "starting_time"}`` or ``{"timestamps"}`` (float64, s).

    ``{}`` for a run without traces (``trace_output_option='none'``).
    """
    with open_run(path, run) as stored:
        return stored.timing()


# ----------------------------------------------------------------------------------------------------------------
# helpers


def select_run(nwbfile: Any, path: str, run: str | None) -> Any:
    """The ExtractRunInfo of the run named ``run`` (the first run when None) of an open file; ``path`` names the
    file in messages. Raises :class:`InputError` when there is none."""
    runs = run_infos(nwbfile)
    if not runs:
        raise InputError(f"{path} holds no nwb-extract run (no ExtractRunInfo in processing/ophys)")
    if run is None:
        return runs[0]
    for info in runs:
        if info.run_name == run:
            return info
    raise InputError(f"no run named {run!r} in {path}; its runs are {', '.join(i.run_name for i in runs)}")


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


def _text(value: Any) -> str:
    value = value[()] if hasattr(value, "shape") and not isinstance(value, str) else value
    return value.decode() if isinstance(value, bytes) else str(value)


def _config_of(info) -> ExtractConfig:
    settings = json.loads(_text(info.config_json))
    for name in schema.CONFIG_DATASETS:
        if settings.get(name) == dataset_marker(name):
            settings[name] = np.asarray(getattr(info, name)[()])
    return ExtractConfig.from_dict(settings)


def _frame_shape(info) -> tuple[int, int]:
    return tuple(int(n) for n in info.summary_images.images["summary_image"].data.shape)


def read_masks(plane: Any, frame_shape: tuple[int, int], start: int = 0, stop: int | None = None) -> np.ndarray:
    """Dense float32 footprints ``(rois, x, y)`` of rows ``start:stop`` of a PlaneSegmentation's ``image_mask`` or
    ``pixel_mask`` column (all rows by default); only those rows are read."""
    stop = len(plane.id) if stop is None else stop
    if stop <= start:  # also skips the placeholder of a run without cells (nwb_write._empty_mask_columns)
        return np.zeros((0, *frame_shape), dtype=np.float32)
    if "image_mask" in plane.colnames:
        return np.asarray(plane["image_mask"].data[start:stop], dtype=np.float32).reshape(-1, *frame_shape)
    ends = np.asarray(plane["pixel_mask"].data[:stop], dtype=np.int64)
    first = int(ends[start - 1]) if start > 0 else 0
    ends = ends[start:]
    pixels = np.asarray(plane["pixel_mask"].target.data[first:int(ends[-1]) if ends.size else first])
    footprints = np.zeros((ends.size, *frame_shape), dtype=np.float32)
    rois = np.repeat(np.arange(ends.size), np.diff(ends, prepend=first))
    footprints[rois, pixels["x"], pixels["y"]] = pixels["weight"]
    return footprints


def _read_eliminated(stored: StoredRun) -> EliminatedCandidates | None:
    plane = stored.eliminated_plane()
    if plane is None:
        return None
    footprints = read_masks(plane, stored.frame_shape)
    roi_responses = stored.roi_responses
    series = None if roi_responses is None else roi_responses.roi_response_series.get(ELIMINATED_SERIES_NAME)
    traces = (np.zeros((0, footprints.shape[0]), dtype=np.float32) if series is None
              else np.asarray(series.data[:], dtype=np.float32))
    return EliminatedCandidates(footprints=footprints, traces=traces,
                                rules=elimination_rules(plane))


def elimination_rules(plane: Any) -> tuple[str, ...]:
    """The ``elimination_rule`` of each row of an eliminated candidates' PlaneSegmentation."""
    return tuple(_text(rule) for rule in plane["elimination_rule"].data[:])
