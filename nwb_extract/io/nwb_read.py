"""EXTRACT results back from NWB: :func:`list_runs`, :func:`read_result`, :func:`read_config`, :func:`read_timing`.

Reads what :mod:`nwb_extract.io.nwb_write` writes (docs/nwb-layout.md), from a local file (HDF5 or Zarr) or a URL,
opened with :func:`nwb_extract.io.source.open_nwb`. Files written by earlier versions of the extension
(:data:`nwb_extract.io.schema.NAMESPACE_VERSION`) read the same way.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from nwb_extract.config import ExtractConfig
from nwb_extract.errors import InputError
from nwb_extract.io import schema
from nwb_extract.io.layout import ELIMINATED_SERIES_NAME, PRIMARY_SERIES_NAME, dataset_marker, run_infos
from nwb_extract.io.source import open_nwb
from nwb_extract.result import EliminatedCandidates, ExtractResult

__all__ = ["list_runs", "read_config", "read_result", "read_timing"]


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
    with open_nwb(path) as (nwbfile, location):
        info = _select_run(nwbfile, location, run)
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
            roi_metrics={name: np.asarray(plane[name].data[:]) if name in plane.colnames else np.zeros(0)
                         for name in run_json["roi_metrics"]},
            eliminated=_read_eliminated(nwbfile, info, roi_responses),
            timings=run_json["timings"],
            stop_reason=run_json["stop_reason"],
            versions=run_json["versions"],
            backend=run_json["backend"],
            device=run_json["device"],
            run_info=run_json["run_info"],
        )


def read_config(path: str | os.PathLike, run: str | None = None) -> ExtractConfig:
    """The exact (resolved) config a run stored in an NWB file used; pass it to ``extract`` to reproduce the run."""
    with open_nwb(path) as (nwbfile, location):
        return _config_of(_select_run(nwbfile, location, run))


def read_timing(path: str | os.PathLike, run: str | None = None) -> dict[str, Any]:
    """Frame timing of a stored run's traces: ``{"rate", "starting_time"}`` or ``{"timestamps"}`` (float64, s).

    ``{}`` for a run without traces (``trace_output_option='none'``).
    """
    with open_nwb(path) as (nwbfile, location):
        info = _select_run(nwbfile, location, run)
        roi_responses = _find_object(nwbfile, info.roi_responses_path)
        if roi_responses is None:
            return {}
        series = roi_responses[PRIMARY_SERIES_NAME]
        if series.timestamps is not None:
            return {"timestamps": np.asarray(series.timestamps[:], dtype=np.float64)}
        return {"rate": float(series.rate), "starting_time": float(series.starting_time or 0.0)}


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _select_run(nwbfile, path: str, run: str | None):
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


def _read_masks(plane, frame_shape: tuple[int, int]) -> np.ndarray:
    """Dense float32 footprints ``(rois, x, y)`` from an ``image_mask`` or ``pixel_mask`` column."""
    if len(plane) == 0:  # also skips the placeholder of a run without cells (nwb_write._empty_mask_columns)
        return np.zeros((0, *frame_shape), dtype=np.float32)
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
