"""EXTRACT results into NWB: :func:`write_result` (a new file, or atomically into the source file) and
:func:`add_result_to_nwbfile` (an NWBFile the caller builds and writes, e.g. the neuroconv interface).

One run is: masks, traces, summary images, and the config and run info in our extension
(:mod:`nwb_extract.io.schema`); the layout is documented in ``docs/nwb-layout.md`` and its shared names are in
:mod:`nwb_extract.io.layout`. Masks and summary images index like ``data[t]`` of the series the result came from
(docs/architecture.md, axis rule). A new file is written atomically and never replaces an existing one unless
``overwrite=True``; an in-place append copies the file beside itself, appends to the copy and renames it onto the
original (:mod:`nwb_extract.io.atomic`).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nwb_extract._version import ENGINE_VERSION, __version__
from nwb_extract.config import ExtractConfig
from nwb_extract.errors import InputError
from nwb_extract.io import schema
from nwb_extract.io.atomic import atomic_path, exclusive_update
from nwb_extract.io.curation import ACCEPTED_COLUMN, COLUMN_DESCRIPTIONS, REJECTED_COLUMN
from nwb_extract.io.layout import (ELIMINATED_SERIES_NAME, MASK_TYPES, PRIMARY_SERIES_NAME, SERIES_NAMES,
                                   dataset_marker, metric_description, run_infos)
from nwb_extract.io.nwbfile import (add_imaging_plane, check_destination, check_rate, copy_imaging_plane,
                                    make_subject, new_nwbfile, new_nwbfile_like, session_start, write_atomically)
from nwb_extract.io.source import SourceInfo, find_series, open_nwb
from nwb_extract.result import ExtractResult

__all__ = ["add_result_to_nwbfile", "append_atomically", "write_result"]

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

_IMAGE_DESCRIPTIONS = {
    "summary_image": "EXTRACT's cell-finding summary image: how bright each pixel's neighbours are at the pixel's "
                     "own peak frame (cells score high, isolated hot pixels low; info.summary_image)",
    "max_image": "maximum over frames of the preprocessed movie (info.max_image)",
    "F_per_pixel": "baseline fluorescence of each pixel, the F that ΔF/F divides by (info.F_per_pixel)",
}

#: What each elimination rule of the EliminatedPlaneSegmentation means.
_RULE_TEXT = ("quality-control rule that eliminated the candidate: T_duplicate / S_duplicate (duplicate trace or "
              "footprint of a kept cell), T_zeroed (trace SNR below T_min_snr), T_poor (temporal corruption), "
              "S_tiny / S_huge (area outside the size limits), S_poor (spatial corruption), S_eccent (too "
              "elongated), ST_spurious (spatio-temporal check), or cell_finding (rejected while cells were found)")

_RESERVED_COLUMNS = frozenset({"id", "image_mask", "pixel_mask", "voxel_mask", "ROICentroids", "elimination_rule",
                               "Accepted", "Rejected"})
_PIXEL_MASK_DTYPE = np.dtype([("x", "<u4"), ("y", "<u4"), ("weight", "<f4")])
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


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
        name = append_atomically(path, lambda nwbfile: _add_run_in_source(nwbfile, result, source, **options))
        return path, name
    path = check_destination(output_path, overwrite)
    nwbfile, plane, timing = _standalone_file(result, source, rate, source_nwbfile)
    name = _add_run(nwbfile, result, plane=plane, reference=None, timing=timing, source=source, **options)
    write_atomically(nwbfile, path, overwrite)
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


# ----------------------------------------------------------------------------------------------------------------
# writing a run


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
    series = find_series(nwbfile, source.series_path, source.path)[1]
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
    runs = run_infos(nwbfile)
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
        rules = [("elimination_rule", _RULE_TEXT, list(result.eliminated.rules))]
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
    """A PlaneSegmentation with one row per footprint, its mask column and ``columns`` (name, description, data).

    A table without footprints gets only :func:`_empty_mask_columns` (docs/nwb-layout.md, "A run without cells")."""
    from pynwb.ophys import PlaneSegmentation

    empty = footprints.shape[0] == 0
    table = PlaneSegmentation(
        name=name, description=description, imaging_plane=plane,
        reference_images=None if reference is None else (reference,),
        id=list(range(footprints.shape[0])),
        columns=_empty_mask_columns() if empty else _mask_columns(footprints, mask_type),
    )
    for column, text, data in [] if empty else columns:
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


def _empty_mask_columns() -> list:
    """The mask of a table without ROIs: a ``pixel_mask`` whose index has no row and whose target holds one
    zero-weight placeholder that no ROI references.

    pynwb cannot read a PlaneSegmentation without a mask column, and nwbinspector 0.7.2 reads element 0 of every
    column and reports an ERROR for a zero-length one (nwbinspector issue #728, fixed upstream but not released);
    the placeholder keeps the file valid and inspectable. Readers going through the index see no pixel."""
    from hdmf.common import VectorData, VectorIndex

    placeholder = np.zeros(1, dtype=_PIXEL_MASK_DTYPE)
    mask = VectorData(name="pixel_mask", data=placeholder,
                      description="no ROI: the one entry is a zero-weight placeholder referenced by no ROI")
    return [mask, VectorIndex(name="pixel_mask_index", data=np.zeros(0, dtype=np.int64), target=mask)]


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
        columns.append((name, metric_description(name), values))
    if result.curation is not None:  # a reviewed result keeps its review (nwb_extract.io.curation)
        columns += [(name, COLUMN_DESCRIPTIONS[name], values) for name, values in
                    ((ACCEPTED_COLUMN, result.curation.accepted), (REJECTED_COLUMN, result.curation.rejected))]
    return columns


def _add_traces(ophys, result: ExtractResult, names: _RunNames, cells, eliminated, timing: dict[str, Any]):
    """Add a DfOverF (preprocessing on: ΔF/F) or Fluorescence container with one series per trace kind to
    ``ophys``; returns it and the ``{series name: kind}`` map, or ``(None, {})`` when the run has no traces."""
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
            name=name, data=_trace_data(result.traces[kind]), unit="n.a.",
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
            data=_trace_data(result.eliminated.traces),
            rois=eliminated.create_roi_table_region(region=list(range(len(result.eliminated.rules))),
                                                    description=f"all ROIs of {eliminated.name}"),
            description=f"traces of the candidates of {eliminated.name} when they were eliminated; values in {units}",
            **_linked_timing(timing, first),
        )
    return container, trace_series


def _trace_data(traces: np.ndarray) -> Any:
    """Traces ``(frames, cells)`` for writing: gzip, in chunks of at most 8192 frames x 4 cells, so that one
    cell's whole trace (e.g. for ``nwb-extract review``) decompresses 4 cells' worth, not every cell's."""
    from hdmf.backends.hdf5 import H5DataIO

    frames, cells = traces.shape
    chunks = (min(frames, 8192), min(cells, 4)) if frames and cells else True
    return H5DataIO(traces, compression="gzip", chunks=chunks)


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
    if result.curation is not None:
        fields.update({key: str(value) for key in ("curated_by", "curated_at")
                       if (value := getattr(result.curation, key)) is not None})
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
    settings.update({name: dataset_marker(name) for name in arrays})
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


def _jsonable(value: Any) -> Any:
    """Plain JSON-able form (NumPy scalars and arrays, tuples and nested dicts)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return value


# ----------------------------------------------------------------------------------------------------------------
# standalone files and source files


def _standalone_file(result: ExtractResult, source: SourceInfo | None, rate: float | None, source_nwbfile: Any = None):
    """A new NWBFile with the source's session metadata (or placeholders), its imaging plane and frame timing."""
    if source is None:
        if rate is None:
            raise InputError("write_result needs the frame timing: pass source=SourceInfo(...) for a movie from an "
                             "NWB file, or rate=<frames per second> for a movie without one")
        check_rate(rate)
        nwbfile = new_nwbfile({"session_description": "EXTRACT results written by nwb-extract (no source file)",
                                "session_start_time": session_start(None)}, make_subject(None))
        plane = add_imaging_plane(nwbfile, {"description": "placeholder imaging plane: the movie came without "
                                             "NWB metadata"}, rate=rate, series_type="TwoPhotonSeries")
        return nwbfile, plane, {"rate": float(rate), "starting_time": 0.0}
    _check_fits(result, source)
    if source_nwbfile is not None:
        return _copy_source_metadata(source_nwbfile, source)
    with open_nwb(source.path) as (original, _):
        return _copy_source_metadata(original, source)


def _copy_source_metadata(original, source: SourceInfo):
    """(new NWBFile with the session/subject of ``original``, its copied imaging plane, the frame timing)."""
    series = find_series(original, source.series_path, source.path)[1]
    nwbfile = new_nwbfile_like(original)
    plane = copy_imaging_plane(nwbfile, series.imaging_plane)
    return nwbfile, plane, _series_timing(series, *source.frames)


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


def append_atomically(path: Path, add: Callable[[Any], Any], after_write: Callable[[Any], None] | None = None
                      ) -> Any:
    """Apply ``add`` to a copy of ``path`` opened for appending, write it, call ``after_write(nwbfile)`` (changes
    pynwb would overwrite on write, e.g. attributes of objects read from the file), then rename the copy onto
    ``path``; returns what ``add`` returned."""
    from pynwb import NWBHDF5IO

    with exclusive_update(path), atomic_path(path) as temporary:
        shutil.copy2(path, temporary)
        with NWBHDF5IO(str(temporary), mode="a") as io:
            nwbfile = io.read()
            out = add(nwbfile)
            io.write(nwbfile)
            if after_write is not None:
                after_write(nwbfile)
    return out
