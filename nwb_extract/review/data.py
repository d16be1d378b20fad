"""What the review page shows, read from one run of a result file: :class:`ReviewData`.

Opened once per server (:func:`nwb_extract.io.nwb_read.open_run`, a local file or a streamed URL) and kept open.
At start it reads what is small: metrics, images, the elimination rules, and every mask once (in blocks of
:data:`MASK_BLOCK` rows) to keep each cell's contour and cropped footprint. Traces are read per cell on request,
in blocks of the dataset's chunk width (one chunk column holds several cells, and decompressing it costs the same
for all of them), kept in a small LRU cache, and downsampled to a min/max pair per pixel column for display.
Traces chunked across many cells (files written before nwb-extract chunked traces by cell) are loaded whole in a
background thread instead, since reading one cell of them decompresses nearly all.
"""

from __future__ import annotations

import base64
import math
import threading
from collections import OrderedDict
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np

from nwb_extract.errors import InputError
from nwb_extract.io.curation import read_curation
from nwb_extract.io.layout import ELIMINATED_SERIES_NAME, run_infos
from nwb_extract.io.nwb_read import elimination_rules, open_run, read_masks
from nwb_extract.result import Curation

__all__ = ["CONTOUR_LEVEL", "MASK_BLOCK", "ReviewData"]

CONTOUR_LEVEL = 0.5
"""Contours are drawn at this fraction of each footprint's maximum (as the PNG overview of ``nwb-extract demo``)."""
MASK_BLOCK = 64
"""Masks are read this many rows at a time at start."""
WIDE_CHUNK = 64
"""Trace datasets whose chunks span more cells than this are loaded whole at start (in the background)."""
LOAD_LIMIT = 2 * 2**30
"""At most this many bytes of such traces are loaded."""
_CACHE_BYTES = 256 * 2**20
_CROP_MARGIN = 2
_ELIMINATED_KIND = "eliminated"


@dataclass(frozen=True)
class _Cells:
    """Contours (flat ``[r0, c0, r1, c1, ...]`` lists per cell, in pixel units of the stored axes 1 and 2) and
    footprint crops (uint8 image, (row, col) of its corner) of one PlaneSegmentation."""

    contours: list[list[list[float]]]
    crops: list[tuple[np.ndarray, int, int]]
    centroids: np.ndarray


class ReviewData:
    """One run of a result file, open for the review server (thread-safe reads).

    Parameters
    ----------
    source : str
        Local NWB file or http(s) URL (streamed).
    run : str, optional
        Run name; the file's first run by default.
    label : str, optional
        How to name the file on the page (e.g. a DANDI asset); ``source`` by default.
    """

    def __init__(self, source: str, run: str | None = None, *, label: str | None = None) -> None:
        self.source = source
        self.label = label or source
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._whole: dict[str, np.ndarray] = {}
        self._closed = threading.Event()
        self._loader: threading.Thread | None = None
        self._stack = ExitStack()
        try:
            self._open(run)
        except BaseException:
            self._stack.close()
            raise
        self._start_loading_wide()

    def _open(self, run: str | None) -> None:
        stored = self._stack.enter_context(open_run(self.source, run))
        self.runs = [str(info.run_name) for info in run_infos(stored.nwbfile)]
        self.run_name = stored.name
        self.frame_shape = stored.frame_shape
        self.primary = stored.run_json.get("primary_trace")
        self._traces = stored.trace_data()
        self.n_cells = len(stored.plane.id)
        self.metric_names = [name for name in stored.run_json.get("roi_metrics", []) if name in stored.plane.colnames]
        self.metrics = {name: np.asarray(stored.plane[name].data[:], dtype=np.float64) for name in self.metric_names}
        images = stored.info.summary_images.images
        self.images = {name: _image_bytes(np.asarray(images[name].data[()], dtype=np.float64))
                       for name in ("summary_image", "max_image") if name in images}
        self.curation = read_curation(stored.info, stored.plane)
        self.cells = _read_cells(stored.plane, self.frame_shape)
        self.times = _frame_times(stored.timing(), self._n_frames())
        eliminated = stored.eliminated_plane()
        self.rules: list[str] = []
        self.eliminated = _Cells([], [], np.zeros((0, 2)))
        if eliminated is not None:
            self.rules = list(elimination_rules(eliminated))
            self.eliminated = _read_cells(eliminated, self.frame_shape)
            series = stored.roi_responses.roi_response_series.get(ELIMINATED_SERIES_NAME) if stored.roi_responses \
                else None
            if series is not None:
                self._traces[_ELIMINATED_KIND] = series.data

    def close(self) -> None:
        """Stop loading and close the file."""
        self._closed.set()
        if self._loader is not None:
            self._loader.join()
        self._stack.close()

    # -- what the page asks for

    @property
    def kinds(self) -> list[str]:
        """The trace kinds of the cells, the primary kind first."""
        return [kind for kind in self._traces if kind != _ELIMINATED_KIND]

    def _n_frames(self) -> int:
        return int(next(iter(self._traces.values())).shape[0]) if self._traces else 0

    def overview(self) -> dict[str, Any]:
        """Everything the page draws first: the run, images, metrics, contours and the stored review."""
        curation = self.curation
        status = np.zeros(self.n_cells, dtype=int)
        if curation is not None:
            status[curation.accepted] = 1
            status[curation.rejected] = 2
        times = self.times
        return {
            "file": self.label, "run": self.run_name, "runs": self.runs, "n_cells": self.n_cells,
            "frame_shape": list(self.frame_shape), "kinds": self.kinds, "primary": self.primary,
            "time": {"start": float(times[0]) if times.size else 0.0, "end": float(times[-1]) if times.size else 0.0,
                     "n_frames": int(times.size)},
            "images": {name: base64.b64encode(data).decode() for name, data in self.images.items()},
            "metric_names": self.metric_names,
            "metrics": [[_json_number(value) for value in self.metrics[name]] for name in self.metric_names],
            "status": status.tolist(),
            "contours": self.cells.contours,
            "eliminated": {"rules": self.rules, "contours": self.eliminated.contours,
                           "has_traces": _ELIMINATED_KIND in self._traces},
            "curated_by": None if curation is None else curation.curated_by,
            "curated_at": None if curation is None else curation.curated_at,
        }

    def cell(self, index: int, eliminated: bool = False) -> dict[str, Any]:
        """One cell's (or eliminated candidate's) footprint crop (uint8, base64), corner, centroid, and metrics."""
        cells = self._cells(eliminated, index)
        crop, row, col = cells.crops[index]
        out = {"index": index, "eliminated": eliminated, "crop": base64.b64encode(crop.tobytes()).decode(),
               "crop_shape": list(crop.shape), "corner": [row, col],
               "centroid": [_json_number(v) for v in cells.centroids[index]]}
        if eliminated:
            out["rule"] = self.rules[index]
        else:
            out["metrics"] = {name: _json_number(self.metrics[name][index]) for name in self.metric_names}
        return out

    def trace(self, index: int, *, start: float | None = None, stop: float | None = None, bins: int = 1000,
              eliminated: bool = False) -> dict[str, Any]:
        """Traces of one cell between times ``start`` and ``stop`` (s; the whole recording by default), as the min
        and max of each of ``bins`` equal frame ranges (the raw samples when there are fewer than ``2 * bins``).

        Returns ``{"t": bin start times (s), "kinds": {kind: {"min": [...], "max": [...]}}, "frames": [i0, i1]}``.
        """
        self._cells(eliminated, index)
        bins = int(min(max(bins, 16), 8192))
        times = self.times
        kinds = [kind for kind in ([_ELIMINATED_KIND] if eliminated else self.kinds) if kind in self._traces]
        if times.size == 0 or not kinds:  # a run without traces, or candidates whose traces were not written
            return {"t": [], "frames": [0, 0], "kinds": {}}
        i0 = 0 if start is None else int(np.searchsorted(times, start, side="left"))
        i1 = times.size if stop is None else int(np.searchsorted(times, stop, side="right"))
        i0 = max(0, min(i0, times.size - 1))
        i1 = max(i0 + 1, min(i1, times.size))
        if i1 - i0 <= 2 * bins:
            edges = np.arange(i0, i1)
        else:
            edges = np.unique(np.linspace(i0, i1, bins + 1).astype(np.int64)[:-1])
        out: dict[str, Any] = {"t": _rounded(times[edges], 6), "frames": [i0, i1], "kinds": {}}
        for kind in kinds:
            column = self._column(kind, index)[i0:i1]
            low = np.minimum.reduceat(column, edges - i0)
            high = np.maximum.reduceat(column, edges - i0)
            out["kinds"]["traces" if eliminated else kind] = {"min": _rounded(low, 5), "max": _rounded(high, 5)}
        return out

    def prefetch(self, indices: list[int]) -> None:
        """Read the trace blocks of these cells into the cache (for the next and previous cells)."""
        for index in indices:
            if 0 <= index < self.n_cells:
                for kind in self.kinds:
                    self._column(kind, index)

    def curation_with(self, accepted: list[int], rejected: list[int], curated_by: str, curated_at: str) -> Curation:
        """A :class:`Curation` of this run from the page's lists of accepted and rejected cell indices."""
        flags = {}
        for name, indices in (("accepted", accepted), ("rejected", rejected)):
            array = np.asarray(indices, dtype=np.int64)
            if array.ndim != 1 or np.any((array < 0) | (array >= self.n_cells)):
                raise InputError(f"{name} must list cell indices in 0..{self.n_cells - 1}")
            flags[name] = np.isin(np.arange(self.n_cells), array)
        return Curation(accepted=flags["accepted"], rejected=flags["rejected"], curated_by=curated_by,
                        curated_at=curated_at)

    # -- helpers

    def _cells(self, eliminated: bool, index: int) -> _Cells:
        cells = self.eliminated if eliminated else self.cells
        if not 0 <= index < len(cells.crops):
            raise InputError(f"no {'eliminated candidate' if eliminated else 'cell'} {index}")
        return cells

    def _column(self, kind: str, index: int) -> np.ndarray:
        """Trace ``index`` of ``kind`` (frames,) float32: from the whole traces when they were loaded, else from
        the cached block of cells (one chunk column) that holds it."""
        if kind not in self._traces:
            raise InputError(f"this run has no {kind!r} traces")
        whole = self._whole.get(kind)
        if whole is not None:
            return whole[:, index]
        data = self._traces[kind]
        width = _chunk_width(data)
        block = index // width
        key = (kind, block)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key][:, index - block * width]
            values = np.asarray(data[:, block * width:(block + 1) * width], dtype=np.float32)
            self._cache[key] = values
            while sum(v.nbytes for v in self._cache.values()) > _CACHE_BYTES and len(self._cache) > 1:
                self._cache.popitem(last=False)
            return values[:, index - block * width]

    def _start_loading_wide(self) -> None:
        """Load, in a background thread, the traces whose chunks span more than :data:`WIDE_CHUNK` cells (e.g.
        files written before nwb-extract chunked traces by cell): reading one cell of those decompresses nearly
        every cell. Up to :data:`LOAD_LIMIT` bytes in all; larger ones are read per cell (slowly)."""
        wide = [kind for kind, data in self._traces.items() if _chunk_width(data) > WIDE_CHUNK]
        if not wide or sum(int(np.prod(self._traces[k].shape)) * 4 for k in wide) > LOAD_LIMIT:
            return

        def load() -> None:
            for kind in wide:
                data = self._traces[kind]
                rows = int(data.chunks[0]) if data.chunks else 4096
                whole = np.empty(data.shape, dtype=np.float32)
                for start in range(0, data.shape[0], rows):
                    if self._closed.is_set():
                        return
                    with self._lock:
                        whole[start:start + rows] = data[start:start + rows]
                self._whole[kind] = whole

        self._loader = threading.Thread(target=load, name="review-trace-loader", daemon=True)
        self._loader.start()


def _chunk_width(data: Any) -> int:
    """Cells per chunk of a ``(frames, cells)`` dataset (all cells when it is not chunked)."""
    chunks = getattr(data, "chunks", None)
    return int(chunks[1]) if chunks else int(data.shape[1])


def _read_cells(plane: Any, frame_shape: tuple[int, int]) -> _Cells:
    """Contours, crops and centroids of every row of a PlaneSegmentation, reading masks in blocks."""
    import contourpy

    contours, crops, centroids = [], [], []
    n = len(plane.id)
    for start in range(0, n, MASK_BLOCK):
        for footprint in read_masks(plane, frame_shape, start, min(n, start + MASK_BLOCK)):
            peak = float(footprint.max())
            positive = footprint > 0
            rows, cols = np.flatnonzero(positive.any(axis=1)), np.flatnonzero(positive.any(axis=0))
            if peak <= 0:
                contours.append([])
                crops.append((np.zeros((1, 1), dtype=np.uint8), 0, 0))
                centroids.append((np.nan, np.nan))
                continue
            r0, r1 = max(rows.min() - _CROP_MARGIN, 0), min(rows.max() + _CROP_MARGIN + 1, frame_shape[0])
            c0, c1 = max(cols.min() - _CROP_MARGIN, 0), min(cols.max() + _CROP_MARGIN + 1, frame_shape[1])
            crop = np.clip(footprint[r0:r1, c0:c1] / peak, 0, 1)
            lines = contourpy.contour_generator(z=crop, line_type="Separate").lines(CONTOUR_LEVEL)
            contours.append([_rounded(np.asarray(line)[:, ::-1] + (r0, c0), 2) for line in lines])
            crops.append(((crop * 255).round().astype(np.uint8), int(r0), int(c0)))
            weights = np.clip(crop, 0, None)
            grid_r, grid_c = np.mgrid[r0:r1, c0:c1]
            centroids.append((float((weights * grid_r).sum() / weights.sum()),
                              float((weights * grid_c).sum() / weights.sum())))
    return _Cells(contours, crops, np.asarray(centroids, dtype=np.float64).reshape(-1, 2))


def _image_bytes(image: np.ndarray) -> bytes:
    """An image as uint8 bytes (row-major), scaled from its 0.5th to 99.5th percentile."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.zeros(image.shape, dtype=np.uint8).tobytes()
    low, high = np.percentile(finite, [0.5, 99.5])
    scaled = (np.nan_to_num(image, nan=low) - low) / (high - low if high > low else 1.0)
    return (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8).tobytes()


def _frame_times(timing: dict[str, Any], n_frames: int) -> np.ndarray:
    """float64 time in s of each trace frame (frame numbers when the run has no traces)."""
    if "timestamps" in timing:
        return np.asarray(timing["timestamps"], dtype=np.float64)
    if "rate" in timing:
        return timing["starting_time"] + np.arange(n_frames, dtype=np.float64) / timing["rate"]
    return np.arange(n_frames, dtype=np.float64)


def _rounded(values: np.ndarray, decimals: int) -> list:
    """A JSON-able flat list, rounded (NaN / inf become None)."""
    values = np.round(np.asarray(values, dtype=np.float64).ravel(), decimals)
    return [v if math.isfinite(v) else None for v in values.tolist()]


def _json_number(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
