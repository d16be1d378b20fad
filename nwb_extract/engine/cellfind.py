"""Cell finding: EXTRACT's greedy one-cell-at-a-time robust initialisation (spec §5.1, §5.3, ``cw_extract``).

This module is the search loop. The cell-finding copy of the movie is filtered (§3.5); its noise level and seed
threshold are set (§5.1); the brightest remaining spot of the summary image (§5.2, :mod:`seeds`) seeds a
correlation image (§5.3.1, :mod:`seeds`) from which one cell is fitted by alternating one-sided Huber regressions of
its trace and image (§5.4, :mod:`cellfit`); the fitted cell is checked (area, trace maximum, trace SNR,
duplication), its least-squares companion is subtracted from the copy, the summary image is updated around it, and
the loop goes on until the seeds are too dim, the yield of good cells drops, or the step limit is reached (§5.3).

Public API
----------
* :func:`find_cells` — the whole of §5 on one partition, with a :class:`CellFindSettings`; returns a
  :class:`CellFindingResult`;
* :data:`STOP_REASONS` — the reasons the loop stops.

Layout: the movie is ``(n, h, w)`` float32, pixels flattened row-major (``p = row * w + col``); images
``S (P, K)``, traces ``T (K, n)``. The filtered copy that the search modifies is pixel-major, ``(h, w, n)``
(:func:`~nwb_extract.engine.seeds.pixel_major`): every step reads and writes the whole traces of a few hundred pixels,
which are then contiguous. Per step only the bounding box of the candidate's support moves (gathers by standard
slicing; the movie copy is updated by slice assignment), as spec §12 asks; the bookkeeping (per-step metrics, flags,
seeds) is small and lives on the host as NumPy arrays.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from nwb_extract.engine import backend, noise, preprocess, solver_kernels
from nwb_extract.engine.cellfit import SingleCellFit, fit_single_cell_on_movie
from nwb_extract.engine.footprints import cell_area
from nwb_extract.engine.matlab import matlab_round
from nwb_extract.engine.seeds import (SUMMARY_SPREAD, bounding_box, column_major_argmax, gaussian_template,
                                      init_image_on_movie, refresh_summary, seed_map, summary_stack_on_movie)
from nwb_extract.errors import InputError
from nwb_extract.progress import SILENT, Reporter

logger = logging.getLogger(__name__)

#: Duplicate test of a candidate against accepted cells: image proximity and trace correlation (spec §5.3).
DUPLICATE_PROXIMITY = 0.1
DUPLICATE_CORRELATION = 0.7
#: Pixels whose unfiltered temporal maximum is at most this are ignored by the noise median (spec §5.1).
VALID_PIXEL_LEVEL = 1e-6
#: Stop reasons of :func:`find_cells`.
STOP_REASONS = ("min_magnitude", "yield", "max_iter")
#: Cell-finding filters that treat every frame on its own: the pixel-major copy is filtered a block of frames at a
#: time (the same values as the whole movie at once).
FRAME_BY_FRAME_FILTERS = ("butter", "gauss", "none")
#: Frames per block of the copy: small blocks keep the band-pass's spectra in reused memory (a 128-frame spectrum of
#: 256 x 256 frames exceeds glibc's 32 MB mmap threshold, so each block paid fresh page faults).
COPY_CHUNK_FRAMES = 32
#: Rows per block of the accepted and rejected cells' images and traces kept during the search (:class:`_Rows`).
ROWS_PER_BLOCK = 32


# ----------------------------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class CellFindingResult:
    """Output of :func:`find_cells` (spec §5.3, the reference's ``cw_extract`` outputs and ``init_summary``).

    Arrays marked *device* stay in the input's namespace and device; the rest are small NumPy arrays.

    Attributes
    ----------
    S : float32 array (P, K), device
        Accepted cell images in acceptance order, each column max 1 (pixels row-major).
    T : float32 array (K, n), device
        Their traces (units of the movie).
    summary_image : float32 array (h, w), device
        Summary image of the filtered movie before any subtraction.
    noise_per_pixel : float32 array (h, w), device
        Noise level of every pixel of the filtered movie (spec §4), not restricted to the mask.
    noise_std : float
        Median noise over the valid (and masked-in) pixels.
    min_magnitude : float
        Seed and trace-maximum threshold (spec §5.1).
    stop_reason : str
        ``'min_magnitude'``, ``'yield'`` or ``'max_iter'``.
    seeds : int64 (n_fitted, 2)
        ``[row, col]`` (0-based) of the seed of every fitted candidate, accepted or rejected, in step order.
    max_values : float32 (K,)
        Summary value at the seed of each accepted cell.
    metrics : float32 (n_steps, 4)
        Per step ``[area, max(t), trace snr, duplicate]``; ``n_steps`` includes the step at which the loop stopped
        (a zero row when it stopped on ``min_magnitude`` before fitting). A zero trace gives snr NaN.
    is_attr_bad : bool (n_steps, 5)
        Per step ``[too small, too large, below min magnitude, low trace snr, duplicate]``.
    is_good : bool (n_steps,)
        Accepted steps.
    S_trash : float32 array (P, n_rejected), device
        Images of the rejected candidates in step order (the reference keeps every unused slot; we keep only these).
    T_trash : float32 array (n_rejected, n), device
    S_change, T_change : float32 (n_fitted, cellfind_max_iter)
        Relative changes per alternation of every fitted candidate.
    """

    S: Any
    T: Any
    summary_image: Any
    noise_per_pixel: Any
    noise_std: float
    min_magnitude: float
    stop_reason: str
    seeds: Any
    max_values: Any
    metrics: Any
    is_attr_bad: Any
    is_good: Any
    S_trash: Any
    T_trash: Any
    S_change: Any
    T_change: Any

    @property
    def n_cells(self) -> int:
        """Number of accepted cells K."""
        return int(self.S.shape[1])


# ----------------------------------------------------------------------------------------------------------------
# the main loop (§5.1, §5.3)


class _Rows:
    """Growable stack of equal-length rows on a device, kept in blocks of :data:`ROWS_PER_BLOCK` rows: growing never
    copies the rows and holds at most one block of unused rows (a doubling buffer held up to twice the rows, and
    three times while it grew: the accepted images of a 256 x 256 movie are 0.26 MB a row)."""

    def __init__(self, width: int, xp: Any, device: Any):
        self._xp, self._device, self._width = xp, device, width
        self._blocks: list[Any] = []
        self.count = 0

    def append(self, row: Any) -> None:
        if self.count == len(self._blocks) * ROWS_PER_BLOCK:
            self._blocks.append(self._xp.zeros((ROWS_PER_BLOCK, self._width), dtype=self._xp.float32,
                                               device=self._device))
        self._blocks[-1][self.count % ROWS_PER_BLOCK, :] = row
        self.count += 1

    def _filled(self) -> list[Any]:
        """The blocks, the last one cut to its filled rows."""
        if not self._blocks:
            return [self._xp.zeros((0, self._width), dtype=self._xp.float32, device=self._device)]
        last = self.count - (len(self._blocks) - 1) * ROWS_PER_BLOCK
        return self._blocks[:-1] + [self._blocks[-1][:last, :]]

    def rows(self) -> Any:
        """The stacked rows, a new array ``(count, width)``."""
        return self._xp.concat(self._filled(), axis=0)

    def take_columns(self, columns: Any) -> Any:
        """``rows()[:, columns]`` without stacking the rows: (count, len(columns))."""
        return self._xp.concat([self._xp.take(block, columns, axis=1) for block in self._filled()], axis=0)

    def take_rows(self, indices: list[int]) -> Any:
        """``rows()[indices, :]`` for host indices: (len(indices), width)."""
        return self._xp.stack([self._blocks[i // ROWS_PER_BLOCK][i % ROWS_PER_BLOCK, :] for i in indices], axis=0)


def _bias(k: float) -> float:
    """Upper bound of the robust estimator's under-estimation bias at kappa ``k`` (spec §5.1):
    ``2 (phi(k) + k Phi(k) - k) / Phi(k)``; ``_bias(0.7)`` ~ 0.377."""
    cdf = 0.5 * (1.0 + math.erf(k / math.sqrt(2.0)))
    pdf = math.exp(-0.5 * k * k) / math.sqrt(2.0 * math.pi)
    return 2.0 * (pdf + k * cdf - k) / cdf


def _trace_snr(t: Any) -> float:
    """``max(medfilt1(t, 3)) / noise_std(t) / sqrt(2)`` (spec §5.3 check 4); NaN for an all-zero trace."""
    xp = backend.get_namespace(t)
    peak = float(xp.max(backend.median_filter(t, (3,), mode="constant")))
    sigma = float(noise.estimate_noise_std(t))
    if sigma == 0:
        return math.nan if peak == 0 else math.inf
    return peak / sigma / math.sqrt(2.0)


def _zscore_unit(x: Any) -> Any:
    """Rows of ``x`` (..., n) centred, divided by their ddof-1 std and by sqrt(n) (spec §13 item 18)."""
    xp = backend.get_namespace(x)
    n = x.shape[-1]
    centred = x - xp.mean(x, axis=-1, keepdims=True)
    std = xp.std(x, axis=-1, correction=1, keepdims=True)
    nonconstant = std > 0  # a constant row has no correlation: NaN, which never exceeds a threshold (MATLAB)
    scaled = centred / xp.where(nonconstant, std, xp.ones_like(std)) / math.sqrt(n)
    return xp.where(nonconstant, scaled, xp.full_like(scaled, math.nan))


def _is_duplicate(s: Any, t: Any, S_rows: _Rows, T_rows: _Rows) -> bool:
    """Spec §5.3 check 5: an accepted cell overlaps (``s^T S_j / sum s^2 > 0.1`` on ``s > 0``) and its trace
    correlates above 0.7 with ``t``."""
    if S_rows.count == 0:
        return False
    xp = backend.get_namespace(s)
    s_flat = xp.reshape(s, (-1,))
    columns = xp.nonzero(s_flat > 0)[0]
    s_pos = xp.take(s_flat, columns)
    proximity = (S_rows.take_columns(columns) @ s_pos) / xp.sum(s_pos * s_pos)
    near = backend.to_numpy(xp.nonzero(proximity > DUPLICATE_PROXIMITY)[0]).tolist()
    if not near:
        return False
    corr = _zscore_unit(T_rows.take_rows(near)) @ _zscore_unit(t)
    return bool(xp.any(corr > DUPLICATE_CORRELATION))


@dataclass(frozen=True)
class CellFindSettings:
    """Settings of cell finding (spec §5, §3.5), by EXTRACT config name; built once per run by the pipeline.

    ``filter_*`` are the cell-finding filter's settings (``cellfind_filter_type``, ``spatial_lowpass_cutoff``,
    ``cellfind_spatial_highpass_cutoff``, ``smoothing_ratio_x2y``, ``moving_radius_spatial``,
    ``moving_radius_temporal``, ``filter_sigma``); ``size_lower_limit`` / ``size_upper_limit`` are multiples of
    ``pi r^2`` (``thresholds.*``), as in the config. ``progress`` receives the ``cellfinding`` stage's events
    (one per step: cells found so far; the last one names the stop criterion).
    """

    filter_type: str
    filter_lowpass_cutoff: float
    filter_highpass_cutoff: float
    filter_smoothing_ratio: float
    filter_moving_radius_spatial: float
    filter_moving_radius_temporal: float
    filter_sigma: tuple[float, ...]
    min_snr: float
    kappa_std_ratio: float
    adaptive_kappa: bool
    max_iter: int
    max_steps: int
    numpix_threshold: int
    check_min_magnitude: bool
    init_with_gaussian: bool
    avg_yield_threshold: float
    high2low_brightness_ratio: float
    T_min_snr: float
    size_lower_limit: float
    size_upper_limit: float
    progress: Reporter = field(default=SILENT, compare=False, repr=False)

    @classmethod
    def from_config(cls, cfg: Any) -> CellFindSettings:
        """The settings of a resolved :class:`~nwb_extract.config.ExtractConfig`."""
        return cls(
            filter_type=cfg.cellfind_filter_type, filter_lowpass_cutoff=cfg.spatial_lowpass_cutoff,
            filter_highpass_cutoff=cfg.cellfind_spatial_highpass_cutoff,
            filter_smoothing_ratio=cfg.smoothing_ratio_x2y, filter_moving_radius_spatial=cfg.moving_radius_spatial,
            filter_moving_radius_temporal=cfg.moving_radius_temporal,
            filter_sigma=tuple(float(v) for v in cfg.filter_sigma), min_snr=cfg.cellfind_min_snr,
            kappa_std_ratio=cfg.cellfind_kappa_std_ratio, adaptive_kappa=bool(cfg.cellfind_adaptive_kappa),
            max_iter=int(cfg.cellfind_max_iter), max_steps=int(cfg.cellfind_max_steps),
            numpix_threshold=int(cfg.cellfind_numpix_threshold),
            check_min_magnitude=bool(cfg.cellfind_check_min_magnitude),
            init_with_gaussian=bool(cfg.init_with_gaussian), avg_yield_threshold=cfg.avg_yield_threshold,
            high2low_brightness_ratio=cfg.high2low_brightness_ratio, T_min_snr=cfg.thresholds.T_min_snr,
            size_lower_limit=cfg.thresholds.size_lower_limit, size_upper_limit=cfg.thresholds.size_upper_limit)


@dataclass
class _Search:
    """State of the cell-finding loop (spec §5.3): the filtered movie copy with its summary stack, the limits,
    and the per-step records (device rows for images and traces, host lists for the rest)."""

    work: Any                   # (h, w, n) filtered copy, pixel-major, modified in place
    summary: Any                # (h, w) summary image, updated around each subtracted cell
    peak: Any                   # (h, w) peak frame of every pixel
    summary_image: Any          # (h, w) summary image before any subtraction
    noise_per_pixel: Any        # (h, w)
    noise_std: float
    min_magnitude: float
    min_px: float               # size limits in pixels
    max_px: float
    half_width: int             # seed-image window half-width
    accepted: tuple[_Rows, _Rows]
    rejected: tuple[_Rows, _Rows]
    seeds: list = field(default_factory=list)
    max_values: list = field(default_factory=list)
    metrics: list = field(default_factory=list)
    attr_bad: list = field(default_factory=list)
    good: list = field(default_factory=list)
    s_changes: list = field(default_factory=list)
    t_changes: list = field(default_factory=list)


def find_cells(Y: Any, settings: CellFindSettings, *, radius: float, movie_mask: Any = None) -> CellFindingResult:
    """Find cells one at a time on one partition (spec §5, ``cw_extract``; the §2.1 branch without ``S_init``).

    Setup (§5.1): the cell-finding copy of ``Y`` is filtered (``cellfind_filter_type``), each pixel's noise is
    estimated, sigma is their median over pixels whose unfiltered temporal maximum exceeds 1e-6 (and inside
    ``movie_mask``), and the seed threshold is
    ``min_magnitude = max(sigma (cellfind_min_snr + bias(cellfind_kappa_std_ratio)), q_0.999(summary) /
    high2low_brightness_ratio)``. Main loop (§5.3): pick the brightest seed of the summary image (regions of fewer
    than ``cellfind_numpix_threshold`` pixels ignored; ties in column-major order), stop if it is below
    ``min_magnitude`` (``cellfind_check_min_magnitude``), fit a cell from a correlation (or Gaussian) seed image,
    check area, trace maximum, trace SNR (``thresholds.T_min_snr``) and duplication, subtract its least-squares
    companion from the copy, update the summary image around it, and either accept it or zero the 5 x 5 window
    around the seed; stop when the yield over the last ``round(1 / avg_yield_threshold)`` steps is at most
    ``avg_yield_threshold`` (after twice that many steps) or after ``cellfind_max_steps`` steps.

    Parameters
    ----------
    Y : float32 array (n, h, w)
        Preprocessed (unfiltered) movie at working resolution; not modified.
    settings : CellFindSettings
        E.g. ``CellFindSettings.from_config(cfg)``.
    radius : float
        Working-resolution ``avg_cell_radius`` (px).
    movie_mask : bool array (h, w), optional
        Pixels that count for the noise median.

    Returns
    -------
    CellFindingResult
    """
    if len(Y.shape) != 3:
        raise InputError(f"find_cells needs a movie (frames, rows, cols); got shape {tuple(Y.shape)}")
    if not radius > 0:
        raise InputError(f"avg_cell_radius must be > 0 pixels at working resolution; got {radius}")
    settings.progress("cellfinding", 0, None, "summary image", "cells")
    search, has_valid = _start_search(Y, settings, radius, movie_mask)
    stop_reason = "max_iter" if has_valid else "min_magnitude"  # nothing valid: stop as on a dim seed
    if has_valid:
        # the loop's products are small (a support's pixels x frames): one BLAS thread runs them several times
        # faster than two that wait for each other, and the results no longer depend on the machine's BLAS
        # threads (docs/decisions.md, "Cell finding's BLAS runs on one thread")
        with solver_kernels.single_threaded_blas(backend.get_namespace(Y)):
            stop_reason = _run_search(search, settings)
    else:
        logger.warning("cell finding: every pixel is (near) zero; no cell can be found")
    if stop_reason == "min_magnitude":  # the stopping step keeps a row of zeros, as in the reference
        search.metrics.append([0.0] * 4)
        search.attr_bad.append([False] * 5)
        search.good.append(False)
    logger.info("cell finding: %d cells after %d steps (stop: %s)", search.accepted[0].count, len(search.good),
                stop_reason)
    n_cells = search.accepted[0].count
    settings.progress("cellfinding", n_cells, n_cells, f"stopped: {stop_reason} after {len(search.good)} steps",
                      "cells")
    return _search_result(search, stop_reason, settings.max_iter)


def _cellfind_copy(Y: Any, settings: CellFindSettings, radius: float) -> Any:
    """The filtered cell-finding copy of ``Y`` (n, h, w) (spec §3.5), pixel-major: float32 (h, w, n), a new array.

    Filters of :data:`FRAME_BY_FRAME_FILTERS` run on :data:`COPY_CHUNK_FRAMES` frames at a time (blocks side by
    side on the host's cores), each block written transposed into the copy, so that the copy is the only
    movie-sized array made; the others filter the whole movie first (one more movie-sized array while it is
    transposed)."""
    xp, device = backend.get_namespace_and_device(Y)
    n, h, w = Y.shape

    def filtered(frames: Any) -> Any:
        return preprocess.cellfind_filter(
            frames, settings.filter_type, radius, spatial_lowpass_cutoff=settings.filter_lowpass_cutoff,
            cellfind_spatial_highpass_cutoff=settings.filter_highpass_cutoff,
            smoothing_ratio_x2y=settings.filter_smoothing_ratio,
            moving_radius_spatial=settings.filter_moving_radius_spatial,
            moving_radius_temporal=settings.filter_moving_radius_temporal, filter_sigma=settings.filter_sigma)

    by_frame = settings.filter_type in FRAME_BY_FRAME_FILTERS
    whole = None if by_frame else filtered(Y)
    work = xp.empty((h, w, n), dtype=xp.float32, device=device)

    def write(start: int) -> None:
        stop = min(n, start + COPY_CHUNK_FRAMES)
        block = filtered(Y[start:stop, ...]) if by_frame else whole[start:stop, ...]
        solver_kernels.write_pixel_major(work, block, start)

    # the blocks write disjoint frames of the copy: side by side on the host's cores (the same values)
    solver_kernels.map_in_threads(write, list(range(0, n, COPY_CHUNK_FRAMES)), xp)
    return work


def _start_search(Y: Any, settings: CellFindSettings, radius: float, movie_mask: Any) -> tuple[_Search, bool]:
    """Setup of spec §5.1: the filtered copy, its noise and summary stack, the thresholds; and whether any pixel
    is valid."""
    xp, device = backend.get_namespace_and_device(Y)
    n, h, w = Y.shape
    P = h * w
    valid = xp.reshape(xp.max(Y, axis=0) > VALID_PIXEL_LEVEL, (-1,))
    if movie_mask is not None:
        valid = valid & xp.reshape(xp.astype(movie_mask, xp.bool), (-1,))
    work = _cellfind_copy(Y, settings, radius)
    noise_per_pixel = xp.reshape(noise.estimate_noise_std(work, axis=-1), (-1,))
    stack = summary_stack_on_movie(work)
    has_valid = bool(xp.any(valid))
    noise_std = float(backend.median(noise_per_pixel[valid])) if has_valid else 0.0
    min_magnitude = _min_magnitude(noise_std, stack.image, settings)
    cell_px = math.pi * radius ** 2
    logger.info("cell finding: noise std %.4g, minimum magnitude %.4g", noise_std, min_magnitude)
    search = _Search(
        work=work, summary=stack.image, peak=stack.peak_frame, summary_image=xp.asarray(stack.image, copy=True),
        noise_per_pixel=xp.reshape(noise_per_pixel, (h, w)), noise_std=noise_std, min_magnitude=min_magnitude,
        min_px=cell_px * settings.size_lower_limit, max_px=cell_px * settings.size_upper_limit,
        half_width=math.floor(1.5 * radius), accepted=(_Rows(P, xp, device), _Rows(n, xp, device)),
        rejected=(_Rows(P, xp, device), _Rows(n, xp, device)))
    return search, has_valid


def _min_magnitude(noise_std: float, summary: Any, settings: CellFindSettings) -> float:
    """Seed threshold of spec §5.1: ``max(sigma (min_snr + bias(kappa)), q_0.999(summary) / ratio)``."""
    noise_limit = noise_std * settings.min_snr + noise_std * _bias(settings.kappa_std_ratio)
    ratio = settings.high2low_brightness_ratio
    dim_limit = 0.0 if math.isinf(ratio) else float(backend.quantile(summary, 0.999)) / ratio
    return max(noise_limit, dim_limit)


def _run_search(search: _Search, settings: CellFindSettings) -> str:
    """The main loop of spec §5.3 until a stop rule fires; returns the stop reason."""
    window = matlab_round(1.0 / settings.avg_yield_threshold)
    w = search.summary.shape[1]
    for step in range(1, settings.max_steps + 1):
        candidates = seed_map(search.summary, search.min_magnitude, settings.numpix_threshold)
        row, col = divmod(column_major_argmax(candidates), w)
        value = float(candidates[row, col])
        if settings.check_min_magnitude and value < search.min_magnitude:
            return "min_magnitude"
        _search_step(search, settings, (row, col), value)
        settings.progress("cellfinding", search.accepted[0].count, None, f"step {step}", "cells")
        good = search.good
        if step > 2 * window and sum(good[-window:]) / window <= settings.avg_yield_threshold:
            return "yield"
        if step % 100 == 0:
            logger.info("cell finding: step %d, %d cells found", step, search.accepted[0].count)
    return "max_iter"


def _search_step(search: _Search, settings: CellFindSettings, seed: tuple[int, int], value: float) -> None:
    """One step of spec §5.3 at ``seed`` (summary ``value``): fit, check, subtract, accept or reject."""
    xp, device = backend.get_namespace_and_device(search.work)
    h, w, _ = search.work.shape
    row, col = seed
    search.seeds.append(seed)
    if settings.init_with_gaussian:
        s0 = gaussian_template((h, w), seed, xp=xp, device=device)
    else:
        s0 = init_image_on_movie(search.work, seed, search.half_width)
    fit = fit_single_cell_on_movie(search.work, s0, search.noise_std, search.max_px,
                                   kappa_t=settings.kappa_std_ratio, kappa_s=settings.kappa_std_ratio,
                                   max_iter=settings.max_iter, adaptive_kappa=settings.adaptive_kappa,
                                   support="strel")
    search.s_changes.append(fit.s_change)
    search.t_changes.append(fit.t_change)

    area = int(cell_area(fit.s))
    max_t = float(xp.max(fit.t))
    snr = _trace_snr(fit.t)
    duplicate = _is_duplicate(fit.s, fit.t, *search.accepted)
    flags = [area < search.min_px, area > search.max_px, max_t < search.min_magnitude, snr < settings.T_min_snr,
             duplicate]
    search.metrics.append([float(area), max_t, snr, float(duplicate)])
    search.attr_bad.append(flags)
    is_bad = any(flags)

    _subtract(search.work, search.summary, search.peak, fit)
    if is_bad:
        r0, r1, c0, c1 = (max(row - SUMMARY_SPREAD, 0), min(row + SUMMARY_SPREAD + 1, h),
                          max(col - SUMMARY_SPREAD, 0), min(col + SUMMARY_SPREAD + 1, w))
        search.work[r0:r1, c0:c1, :] = 0.0
        search.summary[r0:r1, c0:c1] = 0.0
        rows = search.rejected
    else:
        rows = search.accepted
        search.max_values.append(value)
    rows[0].append(fit.s)
    rows[1].append(fit.t)
    search.good.append(not is_bad)


def _search_result(search: _Search, stop_reason: str, max_iter: int) -> CellFindingResult:
    """The :class:`CellFindingResult` of a finished search; the step records become host arrays."""
    xp = backend.get_namespace(search.work)
    host = backend.select("numpy")
    n_fitted, n_steps = len(search.seeds), len(search.good)

    def records(values: list, dtype: Any, shape: tuple[int, ...]) -> Any:
        return host.reshape(host.asarray(values, dtype=dtype), shape)

    (S_rows, T_rows), (S_bad, T_bad) = search.accepted, search.rejected
    return CellFindingResult(
        S=xp.permute_dims(S_rows.rows(), (1, 0)),
        T=T_rows.rows(),
        summary_image=search.summary_image,
        noise_per_pixel=search.noise_per_pixel,
        noise_std=search.noise_std,
        min_magnitude=search.min_magnitude,
        stop_reason=stop_reason,
        seeds=records(search.seeds, host.int64, (n_fitted, 2)),
        max_values=host.asarray(search.max_values, dtype=host.float32),
        metrics=records(search.metrics, host.float32, (n_steps, 4)),
        is_attr_bad=records(search.attr_bad, host.bool, (n_steps, 5)),
        is_good=host.asarray(search.good, dtype=host.bool),
        S_trash=xp.permute_dims(S_bad.rows(), (1, 0)),
        T_trash=T_bad.rows(),
        S_change=records(search.s_changes, host.float32, (n_fitted, max_iter)),
        T_change=records(search.t_changes, host.float32, (n_fitted, max_iter)),
    )


def _subtract(work: Any, summary: Any, peak: Any, fit: SingleCellFit) -> None:
    """Subtract ``t_corr s_corr^T`` from the pixel-major movie copy ``work`` (h, w, n) on the pixels where
    ``s_corr > 0`` and refresh the summary stack there (spec §5.3). Frames with ``t_corr == 0`` and pixels with
    ``s_corr == 0`` are left exactly unchanged, as in the reference's index-set update."""
    xp = backend.get_namespace(work)
    h, w, _ = work.shape
    s_corr = xp.reshape(fit.s_corr, (h, w))
    changed = s_corr > 0
    box = bounding_box(changed)
    if box is None:
        return
    r0, r1, c0, c1 = box
    solver_kernels.subtract_outer(work, box, s_corr, fit.t_corr)
    refresh_summary(work, summary, peak, changed, SUMMARY_SPREAD)
