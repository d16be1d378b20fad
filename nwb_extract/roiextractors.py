"""roiextractors plugin: EXTRACT as a ``SegmentationExtractor``, and an ``ImagingExtractor`` over any NWB series.

- :class:`NwbSeriesImagingExtractor` reads any TwoPhotonSeries / OnePhotonSeries of an NWB file (acquisition or a
  processing module; local HDF5, Zarr or an http(s) URL, streamed) through :func:`nwb_extract.io.movie.open_series`.
  roiextractors' own ``NwbImagingExtractor`` only sees ``acquisition``.
- :class:`NwbExtractSegmentationExtractor` runs EXTRACT on an ``ImagingExtractor`` (TIFF, Suite2p binary, NWB, ...)
  or on an NWB series directly, or reloads a run stored by this package (:meth:`~NwbExtractSegmentationExtractor.
  from_nwb`). Named so as not to clash with roiextractors' ``ExtractSegmentationExtractor``, which reads MATLAB
  ``.mat`` output.

Axis rule (docs/architecture.md): roiextractors frames are ``(height, width)`` and an NWB series stores
``(frames, x, y)`` with x = width, so :class:`NwbSeriesImagingExtractor` returns the stored frames transposed,
``(T, y, x)``. The engine always runs on frames in NWB stored order ``(T, x, y)`` (for an ``ImagingExtractor``: its
frames transposed back, which is how neuroconv stores them), so the masks written to NWB are byte-identical to
those of ``nwb-extract run`` on the same stored movie; the extractor exposes them roiextractors' way, ``(H, W, N)``.

The engine runs lazily, once: on the first access to masks, traces, images, properties or ROI ids. Timestamps,
sampling frequency, frame shape and number of samples come from the input without running it (so neuroconv's
``get_original_timestamps``, which builds a second extractor, never runs the engine).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from roiextractors import ImagingExtractor, SegmentationExtractor
from roiextractors.segmentationextractor import _ROIMasks, _RoiResponse

from nwb_extract.config import TRACE_KIND_TO_OPTION, ExtractConfig
from nwb_extract.errors import InputError
from nwb_extract.io.layout import metric_description
from nwb_extract.result import ExtractResult

__all__ = ["NwbExtractSegmentationExtractor", "NwbSeriesImagingExtractor"]

ACCEPTED_PROPERTY = "is_accepted"
CENTROID_PROPERTY = "roi_centroids"


def trace_names(result: ExtractResult) -> dict[str, str]:
    """roiextractors trace name -> ``result.traces`` key (docs/nwb-layout.md, "Trace names").

    The primary kind comes first under the ecosystem's name: ``dff`` when preprocessing ran (the traces are ΔF/F),
    else ``raw`` (movie units, fluorescence), as roiextractors' own EXTRACT reader names it. Then every kind under
    its ``trace_output_option`` name (``baseline_adjusted``, ``nonneg``, ``no_constraint`` for our ``raw`` kind,
    the least-squares kinds), so no kind is called ``raw`` when it is not raw fluorescence.
    """
    names = {}
    if result.primary_trace is not None:
        names["dff" if result.config.preprocess else "raw"] = result.primary_trace
    kinds = [result.primary_trace] * (result.primary_trace is not None) + \
        [kind for kind in result.traces if kind != result.primary_trace]
    names.update({TRACE_KIND_TO_OPTION.get(kind, kind): kind for kind in kinds})
    return names


class NwbSeriesImagingExtractor(ImagingExtractor):
    """roiextractors ``ImagingExtractor`` over one TwoPhotonSeries / OnePhotonSeries anywhere in an NWB file.

    Frames are returned ``(samples, height, width)`` = the stored ``(frames, x, y)`` transposed to ``(T, y, x)``
    (roiextractors' and neuroconv's convention: NWB x is the width). Reads are lazy and block-wise.

    Parameters
    ----------
    file_path : str or os.PathLike
        Local NWB file (HDF5) or NWB Zarr folder, or an ``http(s)://`` URL (streamed).
    series_name : str, optional
        Name or path of the series (e.g. ``"processing/ophys/MotionCorrected"``); needed when the file holds
        several imaging series.
    frames : (int, int), optional
        Stored frame range ``(start, stop)`` to expose; all frames by default.
    """

    extractor_name = "NwbSeriesImagingExtractor"

    def __init__(self, file_path: str | os.PathLike, series_name: str | None = None, *,
                 frames: tuple[int | None, int | None] | None = None) -> None:
        from nwb_extract.io.movie import open_series

        super().__init__(file_path=file_path, series_name=series_name, frames=frames)
        self.source = open_series(file_path, series_name, frames=frames)
        """The :class:`nwb_extract.io.movie.ImagingSource` (stored-order reader ``source.data``, series, timing)."""

    def get_image_shape(self) -> tuple[int, int]:
        """(height, width) = (stored y, stored x)."""
        _, n_x, n_y = self.source.data.shape
        return n_y, n_x

    def get_num_samples(self) -> int:
        """Number of frames exposed."""
        return self.source.data.shape[0]

    def get_sampling_frequency(self) -> float:
        """The series' rate in Hz, or 1 / median frame interval of its timestamps."""
        if self.source.rate is not None:
            return self.source.rate
        return float(1.0 / np.median(np.diff(self.source.timestamps)))

    def get_dtype(self) -> np.dtype:
        """The stored dtype."""
        return self.source.data.dtype

    def get_series(self, start_sample: int | None = None, end_sample: int | None = None) -> np.ndarray:
        """Frames ``[start_sample, end_sample)`` as ``(samples, height, width)``, stored dtype."""
        return self.source.data[start_sample:end_sample].transpose(0, 2, 1)

    def get_native_timestamps(self, start_sample: int | None = None,
                              end_sample: int | None = None) -> np.ndarray:
        """float64 times in s of the exposed frames: the series' timestamps, or ``starting_time + i / rate``."""
        return _series_times(self.source)[start_sample:end_sample]

    def close(self) -> None:
        """Close the file (or stream) opened for reading."""
        self.source.close()


def _series_times(source: Any) -> np.ndarray:
    if source.timestamps is not None:
        return source.timestamps
    return source.starting_time + np.arange(source.data.shape[0], dtype=np.float64) / source.rate


class _StoredOrderFrames:
    """Lazy ``(frames, x, y)`` view of an ImagingExtractor: its ``(T, H, W)`` frames transposed to NWB stored
    order, read with ``get_series`` only for the frames a slice asks for (the engine's lazy-movie protocol)."""

    ndim = 3

    def __init__(self, imaging: ImagingExtractor) -> None:
        self._imaging = imaging
        height, width = imaging.get_image_shape()
        self.shape = (int(imaging.get_num_samples()), int(width), int(height))
        self.dtype = np.dtype(imaging.get_dtype())

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        frames, rest = key[0], key[1:]
        if not isinstance(frames, slice) or frames.step not in (None, 1):
            raise IndexError(f"frames must be read as a contiguous slice, got {frames!r}")
        start, stop, _ = frames.indices(self.shape[0])
        block = _series(self._imaging, start, max(start, stop), (self.shape[2], self.shape[1]))
        return block.transpose(0, 2, 1)[(slice(None), *rest)]


def _series(imaging: ImagingExtractor, start: int, stop: int, frame_shape: tuple[int, int]) -> np.ndarray:
    """Frames ``start:stop`` of ``imaging`` as ``(samples, height, width)``, checked against its own shapes.

    roiextractors' ``NumpyImagingExtractor`` given a 3-D ``(T, H, W)`` array stores it as ``(1, T, H, W)`` and its
    ``get_series`` returns ``(1, T, H)`` (roiextractors 0.10); its frames are then read from that array. A trailing
    single channel axis is dropped. Any other shape is an :class:`InputError` naming the extractor.
    """
    expected = (stop - start, *frame_shape)
    block = np.asarray(imaging.get_series(start_sample=start, end_sample=stop))
    if block.shape == expected:
        return block
    if block.shape == (*expected, 1):
        return block[..., 0]
    video = getattr(imaging, "_video", None)
    if video is not None and tuple(video.shape) == (1, imaging.get_num_samples(), *frame_shape):
        return np.asarray(video[0, start:stop])
    raise InputError(f"{type(imaging).__name__}.get_series({start}, {stop}) returned an array of shape "
                     f"{block.shape}, but the extractor reports {imaging.get_num_samples()} samples of "
                     f"{frame_shape[0]} x {frame_shape[1]} px, so frames of shape {expected} were expected; pass a "
                     "single-plane, single-channel extractor whose get_series returns (samples, height, width)")


class _RunOnAccess:
    """Data descriptor for the private stores of ``SegmentationExtractor``: reading one runs the engine once (via
    ``obj._ensure_result()``) so every inherited method sees the results; assignment stores the value."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = f"_stored{name}"

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        obj._ensure_result()
        return obj.__dict__[self._slot]

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self._slot] = value


class NwbExtractSegmentationExtractor(SegmentationExtractor):
    """EXTRACT cell extraction as a roiextractors ``SegmentationExtractor`` (runs the engine lazily, once).

    Give either an ``imaging`` extractor or an NWB ``file_path`` (with ``series_name`` and ``frames`` as in
    :func:`nwb_extract.io.movie.open_series`). Use :meth:`from_nwb` to reload a run stored by this package.

    Exposes: ROI ids ``0..K-1``; image masks ``(height, width, K)`` float32 (each footprint scaled to max 1) and
    pixel masks; the traces ``(samples, K)`` float32 named as :func:`trace_names` says: ``dff`` (the primary kind,
    ΔF/F; ``raw`` instead when preprocessing is off), then ``baseline_adjusted``, ``nonneg`` and ``no_constraint``
    (our ``raw`` kind, the unconstrained robust fit); the images
    ``summary_image``, ``max_image``, ``F_per_pixel`` ``(height, width)``; the properties ``roi_centroids``
    ``(K, 2)`` [row, col], ``is_accepted`` (all True: EXTRACT returns only cells that passed quality control;
    for a reviewed run loaded with :meth:`from_nwb`, False for the cells rejected in the review, and the review's
    ``accepted`` / ``rejected`` properties as roiextractors' ``NwbSegmentationExtractor`` names them) and
    every quality metric of ``ExtractResult.roi_metrics``; timestamps of the input frames.

    Parameters
    ----------
    imaging : roiextractors.ImagingExtractor, optional
        The movie (single plane). Frames ``(T, H, W)`` are handed to the engine as ``(T, W, H)`` (NWB order).
    file_path : str or os.PathLike, optional
        NWB file, NWB Zarr folder or http(s) URL holding the movie (read by :class:`NwbSeriesImagingExtractor`).
    series_name : str, optional
        Series name or path inside ``file_path``.
    frames : (int, int), optional
        Stored frame range of ``file_path``'s series.
    config : ExtractConfig, dict, str or os.PathLike, optional
        EXTRACT config (anything :meth:`ExtractConfig.coerce` takes: a dict, a .json, .yaml or .mat
        file); defaults when None.
    backend : {"auto", "numpy", "cupy"}, optional
        Array backend, overriding the config's.
    """

    extractor_name = "NwbExtractSegmentationExtractor"

    _roi_ids = _RunOnAccess()
    _roi_masks = _RunOnAccess()
    _roi_responses = _RunOnAccess()
    _summary_images = _RunOnAccess()
    _properties = _RunOnAccess()

    def __init__(self, imaging: ImagingExtractor | None = None, *, file_path: str | os.PathLike | None = None,
                 series_name: str | None = None, frames: tuple[int | None, int | None] | None = None,
                 config: ExtractConfig | Mapping[str, Any] | str | os.PathLike | None = None,
                 backend: str | None = None) -> None:
        if (imaging is None) == (file_path is None):
            raise InputError("give exactly one input: imaging=<roiextractors ImagingExtractor> or "
                             "file_path=<NWB file, Zarr folder or URL>")
        if imaging is None:
            imaging = NwbSeriesImagingExtractor(file_path, series_name, frames=frames)
        elif not isinstance(imaging, ImagingExtractor):
            raise InputError(f"imaging must be a roiextractors ImagingExtractor, got {type(imaging).__name__}")
        elif getattr(imaging, "is_volumetric", False):
            raise InputError("imaging is volumetric; EXTRACT runs on one plane: pass a single-plane extractor")
        self.config = ExtractConfig.coerce(config)
        if backend is not None:
            self.config = self.config.replace(backend=backend)
        height, width = imaging.get_image_shape()
        self._start(n_samples=imaging.get_num_samples(), frame_shape=(int(height), int(width)),
                    sampling_frequency=imaging.get_sampling_frequency())
        self.imaging = imaging
        """The input ImagingExtractor (for a ``file_path``: the :class:`NwbSeriesImagingExtractor`)."""

    def _start(self, *, n_samples: int, frame_shape: tuple[int, int], sampling_frequency: float) -> None:
        self._result: ExtractResult | None = None
        self._filling = True  # the base initialiser assigns the stores: no run for that
        super().__init__()
        self._filling = False
        self._n_samples = int(n_samples)
        self._frame_shape = frame_shape
        self._sampling_frequency = float(sampling_frequency)

    @classmethod
    def from_nwb(cls, file_path: str | os.PathLike, run: str | None = None) -> NwbExtractSegmentationExtractor:
        """Reload a run written by this package (``nwb-extract run``, ``write_result`` or the neuroconv interface)
        without rerunning: footprints, the three traces, images, metrics, timing and the exact config.

        Parameters
        ----------
        file_path : str or os.PathLike
            The result NWB file (local path or URL).
        run : str, optional
            Run name (``nwb_extract.io.nwb_read.list_runs``); the first run by default.
        """
        from nwb_extract.io.nwb_read import read_result, read_timing

        result = read_result(file_path, run)
        timing = read_timing(file_path, run)
        if result.n_frames is None:
            raise InputError(f"run {run or 'run1'} of {file_path} has no traces (trace_output_option 'none'); "
                             "a SegmentationExtractor needs them")
        self = cls.__new__(cls)
        self.config = result.config
        self.imaging = None
        _, n_x, n_y = result.footprints.shape
        rate = timing.get("rate") or float(1.0 / np.median(np.diff(timing["timestamps"])))
        self._start(n_samples=result.n_frames, frame_shape=(n_y, n_x), sampling_frequency=rate)
        self._loaded_times = (timing["timestamps"] if "timestamps" in timing else
                              timing["starting_time"] + np.arange(result.n_frames, dtype=np.float64) / rate)
        self._fill(result)
        return self

    # -- the run

    @property
    def result(self) -> ExtractResult:
        """The :class:`ExtractResult` (footprints in NWB stored order ``(K, x, y)``); runs the engine on first use."""
        self._ensure_result()
        return self._result

    @property
    def has_run(self) -> bool:
        """Whether the result exists already (computed or loaded)."""
        return self._result is not None

    def _ensure_result(self) -> None:
        if self._result is not None or self.__dict__.get("_filling", True):
            return
        from nwb_extract.workflow import extract_frames

        result = extract_frames(self.stored_frames(), self.config)
        if result.n_frames is not None and result.n_frames != self._n_samples:
            raise InputError(f"the engine returned {result.n_frames} trace frames for {self._n_samples} input "
                             "frames (time downsampling or num_frames); a SegmentationExtractor needs one trace "
                             "sample per frame: set reestimate_T_if_downsampled and leave num_frames empty")
        self._fill(result)

    def stored_frames(self) -> Any:
        """The movie in NWB stored order ``(frames, x, y)``, lazy: what the engine runs on."""
        if isinstance(self.imaging, NwbSeriesImagingExtractor):
            return self.imaging.source.data  # as stored, untransposed: the same bytes `nwb-extract run` reads
        return _StoredOrderFrames(self.imaging)

    def _fill(self, result: ExtractResult) -> None:
        """Fill roiextractors' private stores from ``result`` (masks and images transposed to (H, W))."""
        self._filling = True
        self._result = result
        self.config = result.config  # what ran (the backend that ran, use_gpu accordingly)
        ids = list(range(result.n_cells))
        self._roi_ids = ids
        self._roi_masks = _ROIMasks(data=result.footprints.transpose(2, 1, 0), mask_tpe="nwb-image_mask",
                                    field_of_view_shape=self._frame_shape, roi_id_map={i: i for i in ids})
        self._roi_responses = [_RoiResponse(name, result.traces[kind], list(ids))
                               for name, kind in trace_names(result).items()]
        self._summary_images = {name: getattr(result, name).T for name in ("summary_image", "max_image",
                                                                           "F_per_pixel")}
        self._properties = {}
        self._filling = False
        if ids:
            self.set_property(CENTROID_PROPERTY, result.centroids()[:, ::-1], ids,
                              description="footprint-weighted centroid [row, col] (height, width axes), 0-based")
            curation = result.curation
            if curation is None:
                self.set_property(ACCEPTED_PROPERTY, np.ones(len(ids), dtype=bool), ids,
                                  description="EXTRACT keeps only cells that passed quality control")
            else:  # a reviewed run: roiextractors' NwbSegmentationExtractor names, plus is_accepted
                self.set_property("accepted", curation.accepted, ids, description="accepted in a review")
                self.set_property("rejected", curation.rejected, ids, description="rejected in a review")
                self.set_property(ACCEPTED_PROPERTY, ~curation.rejected, ids,
                                  description="passed EXTRACT's quality control and was not rejected in a review")
            for name, values in result.roi_metrics.items():
                self.set_property(name, np.asarray(values), ids, description=metric_description(name))

    # -- what needs no run

    def get_frame_shape(self) -> tuple[int, int]:
        """(height, width) of the input frames."""
        return self._frame_shape

    def get_image_shape(self) -> tuple[int, int]:
        """(height, width) of the input frames."""
        return self._frame_shape

    def get_num_samples(self) -> int:
        """Number of input frames (= trace samples)."""
        return self._n_samples

    def get_native_timestamps(self, start_sample: int | None = None,
                              end_sample: int | None = None) -> np.ndarray:
        """float64 times in s of the input frames (the input's timestamps, aligned ones included)."""
        if self.imaging is None:
            return self._loaded_times[start_sample:end_sample]
        return np.asarray(self.imaging.get_timestamps(), dtype=np.float64)[start_sample:end_sample]

    def __repr__(self) -> str:
        state = f"{self.get_num_rois()} ROIs" if self.has_run else "not run yet"
        height, width = self._frame_shape
        return (f"{type(self).__name__}({self._n_samples} samples of {height} x {width} px at "
                f"{self._sampling_frequency:g} Hz, {state})")
