"""Movie preprocessing (spec §3): ΔF baseline, spatial band-pass, masks, outlier pixels, baseline drift,
cell-finding filters, downsampling and zero-edge trimming.

Every function takes a movie ``(frames, rows, cols)`` = ``(n, h, w)`` of any Array API namespace and returns
arrays of the same namespace on the same device, float32 for movie-sized arrays. Pixels flatten row-major
(``p = row * w + col``). Scalars are read back to the host only where a decision is taken on them (the
"centred movie" test of :func:`compute_df`, edge profiles, outlier positions); these are the documented sync points.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nwb_extract.engine.matlab import matlab_round
from nwb_extract.engine import backend, solver_kernels
from nwb_extract.errors import ConfigError, InputError, NotImplementedYetError
from nwb_extract.progress import SILENT, Reporter

logger = logging.getLogger(__name__)

#: Cell-finding filters of spec §3.5 (``cellfind_filter_type``).
FILTER_TYPES = ("butter", "gauss", "wiener", "movavg", "median", "gaus", "none")

#: Frames band-passed at once by default (an ``nf × nf`` complex64 half-spectrum per frame). Small enough that a
#: block's spectrum stays under glibc's 32 MiB mmap threshold (128 frames of 256 x 256 exceeded it, and every block
#: paid fresh page faults): measured on 1500 frames of 256 x 256, 32 frames at a time took 0.77 s against 1.45 s for
#: 128 (session 5; the values do not depend on it).
DEFAULT_CHUNK_FRAMES = 32

_BUTTER_ORDER = 4  # degree of the Butterworth polynomial (spec §3.2)
_CENTRED_ABS_LEVEL = 1e-2  # compute_df: a baseline level below this means "movie already centred"
_OUTLIER_DEVIATION = 0.5  # medfilt_outliers: flag pixels whose max/median ratio leaves [0.5, 1.5]
_HIST_BINS_PER_STAT = 5  # correct_baseline: histogram step = stat / 5 ...
_HIST_HALF_WIDTH = 10  # ... over [-10 stat, 10 stat]
_BASELINE_SMOOTH_HALF = 5  # correct_baseline: moving mean over [j - 5, j + 5] of the baseline samples
_WIENER_SIZE = 7
_FILL_CHUNK_ELEMENTS = 2**22  # fill_nonfinite: values sorted at once (a 16 MiB float32 chunk)


# ----------------------------------------------------------------------------------------------------------------
# input hygiene


def fill_nonfinite(movie: Any, *, chunk_elements: int = _FILL_CHUNK_ELEMENTS) -> tuple[Any, int, Any]:
    """Movie as float32 with every NaN and ±inf replaced by its pixel's temporal median of the finite values
    (decision: docs/decisions.md, "NaN and infinite values").

    A pixel without any finite value gets the median over pixels of the per-pixel mean of finite values (a neutral
    level: its ΔF is 0) and is reported in ``no_data``, so the pipeline can leave it out like a pixel outside
    ``movie_mask``. Filling with a pixel's own median keeps its ΔF near 0 at the bad frames, so a hole neither
    looks like an event (the old fill with 0 made a deep negative one that the band-pass spread to its
    neighbours) nor hides one. The medians are computed only for pixels that have a bad value, in pixel chunks of
    about ``chunk_elements`` values (one sorted copy of a chunk at a time).

    Parameters
    ----------
    movie : array (n, h, w) of any real or integer dtype

    Returns
    -------
    movie : float32 array (n, h, w)
        The input itself when it is already float32 and finite.
    n_bad : int
        How many values were not finite.
    no_data : bool array (h, w) or None
        Pixels with no finite value at all; None when every pixel has one.
    """
    xp, device = backend.get_namespace_and_device(movie)
    movie = _as_float32(xp, movie)
    if math.isfinite(float(xp.max(movie))) and math.isfinite(float(xp.min(movie))):  # NaN and inf show in
        return movie, 0, None  # the extremes: two reductions instead of a movie-sized mask
    bad = ~xp.isfinite(movie)
    n_bad = int(xp.count_nonzero(bad))  # no int64 copy of the movie-sized mask
    if not n_bad:
        return movie, 0, None
    n, h, w = movie.shape
    M = xp.reshape(movie, (n, h * w))
    n_finite = n - xp.count_nonzero(xp.reshape(bad, (n, h * w)), axis=0)  # (P,)
    if not bool(xp.any(n_finite > 0)):
        raise InputError(f"the movie has no finite value: all {n_bad} values are NaN or infinite")
    fill = xp.zeros((h * w,), dtype=xp.float32, device=device)
    mean_finite = xp.zeros((h * w,), dtype=xp.float32, device=device)
    step = max(1, chunk_elements // n)
    for p0 in range(0, h * w, step):
        p1 = min(h * w, p0 + step)
        fill[p0:p1], mean_finite[p0:p1] = _finite_median_and_mean(xp, M[:, p0:p1], n_finite[p0:p1])
    has_data = n_finite > 0
    neutral = float(backend.median(mean_finite[has_data]))
    fill = xp.where(has_data, fill, xp.full_like(fill, neutral))
    movie = xp.where(bad, xp.reshape(fill, (1, h, w)), movie)
    no_data = xp.reshape(~has_data, (h, w))
    return movie, n_bad, (no_data if bool(xp.any(no_data)) else None)


def _finite_median_and_mean(xp: Any, traces: Any, n_finite: Any) -> tuple[Any, Any]:
    """Median (MATLAB ``median``: mean of the two middle values for an even count) and mean of the finite values of
    every column of ``traces`` (n, m) with ``n_finite`` (m,) of them, float32 (m,); 0 for a column without any.
    The medians are only computed when a column has a bad value (else they are not needed: 0)."""
    _, device = backend.get_namespace_and_device(traces)
    m = traces.shape[1]
    bad = ~xp.isfinite(traces)
    n_safe = xp.clip(n_finite, 1, None)
    mean = xp.sum(xp.where(bad, xp.zeros_like(traces), traces), axis=0) / xp.astype(n_safe, xp.float32)
    if not bool(xp.any(bad)):
        return xp.zeros_like(mean), mean
    ordered = xp.reshape(xp.sort(xp.where(bad, xp.full_like(traces, math.inf), traces), axis=0), (-1,))
    column = xp.arange(m, dtype=xp.int64, device=device)
    low = xp.take(ordered, xp.astype((n_safe - 1) // 2, xp.int64) * m + column)
    high = xp.take(ordered, xp.astype(n_safe // 2, xp.int64) * m + column)
    median = xp.where(n_finite > 0, (low + high) / 2, xp.zeros_like(low))
    return median, xp.where(n_finite > 0, mean, xp.zeros_like(mean))


def remove_zero_edge_pixels(movie: Any) -> tuple[Any, tuple[int, int, int, int]]:
    """Crop near-zero strips at the movie's edges, as left by motion registration (spec §3.8).

    For columns, the profile ``mean over rows of |movie|`` is taken per frame and its minimum over frames kept;
    a column is a problem when that minimum is below ``median - 10 · std (ddof=1)`` of all columns. The low side
    is cut up to the last problem column in ``1..round(w/2)`` (1-based); on the high side, from the first problem
    column in ``round(w/2)..w`` on, **plus the column before it**, as the reference does. Same for rows.

    Parameters
    ----------
    movie : float32 array (n, h, w)

    Returns
    -------
    cropped : float32 array (n, h - top - bottom, w - left - right)
        A view (slice) of ``movie``.
    trims : tuple of int
        ``(top, bottom, left, right)``: rows/columns removed on each side.
    """
    xp, _ = backend.get_namespace_and_device(movie)
    n, h, w = movie.shape
    col_mins, row_mins = None, None
    for start in range(0, n, DEFAULT_CHUNK_FRAMES):  # frame chunks: no movie-sized |movie|; the same sums per frame
        magnitude = xp.abs(movie[start:min(n, start + DEFAULT_CHUNK_FRAMES), ...])
        cols = xp.min(xp.mean(magnitude, axis=1), axis=0)  # (w,)
        rows = xp.min(xp.mean(magnitude, axis=2), axis=0)  # (h,)
        col_mins = cols if col_mins is None else xp.minimum(col_mins, cols)
        row_mins = rows if row_mins is None else xp.minimum(row_mins, rows)
    left, right = _problem_edges(xp, col_mins, w)
    top, bottom = _problem_edges(xp, row_mins, h)
    return movie[:, top:h - bottom, left:w - right], (top, bottom, left, right)


def _problem_edges(xp: Any, mins: Any, size: int) -> tuple[int, int]:
    """``(cut_low, cut_high)`` of spec §3.8 for one axis from its per-line minimum profile ``mins`` (size,)."""
    threshold = backend.median(mins) - 10.0 * xp.std(mins, correction=1)
    is_problem = [bool(v) for v in backend.to_numpy(mins < threshold).tolist()]  # host: one flag per line
    middle = matlab_round(size / 2)  # 1-based
    low = [i + 1 for i in range(middle) if is_problem[i]]
    high = [i + 1 for i in range(middle - 1, size) if is_problem[i]]
    cut_low = low[-1] if low else 0
    cut_high = size - high[0] + 2 if high else 0  # removes the first problem line and the one before it
    return cut_low, cut_high


def medfilt_outliers(movie: Any) -> tuple[Any, int]:
    """Replace hot and dead pixels by the median of their 3 × 3 neighbourhood (spec §3.7).

    ``ratio = max_t movie / medfilt2(max_t movie, 5 × 5, zero padding)``; pixels with ``ratio < 0.5`` or ``> 1.5``
    are outliers (border pixels can be flagged because the zero padding pulls their median down). Each outlier's
    whole trace becomes, frame by frame, the median of the 9 traces of its 3 × 3 neighbourhood with indices clamped
    at the borders (the centre included). Outliers are replaced one after the other in column-major order, each
    seeing the replacements made before it, as in the reference.

    Parameters
    ----------
    movie : float32 array (n, h, w)

    Returns
    -------
    movie : float32 array (n, h, w)
        A new array when outliers were found, else the input.
    n_outliers : int
        Number of replaced pixels.
    """
    xp, _ = backend.get_namespace_and_device(movie)
    movie = _as_float32(xp, movie)
    _, h, w = movie.shape
    max_image = xp.max(movie, axis=0)
    local_median = backend.median_filter(max_image, (5, 5), mode="constant")
    has_median = local_median != 0
    ratio = max_image / xp.where(has_median, local_median, xp.ones_like(local_median))
    # a zero median gives ratio ±inf (an outlier) for a non-zero max and NaN (not an outlier) for a zero max
    outlier = xp.where(has_median, (ratio < 1 - _OUTLIER_DEVIATION) | (ratio > 1 + _OUTLIER_DEVIATION),
                       max_image != 0)
    rows, cols = (backend.to_numpy(a).tolist() for a in xp.nonzero(outlier))  # host: the few outlier positions
    if not rows:
        return movie, 0
    movie = xp.asarray(movie, copy=True)
    for col, row in sorted(zip(cols, rows)):  # MATLAB's column-major order
        neighbours = [movie[:, min(max(r, 0), h - 1), min(max(c, 0), w - 1)]
                      for c in (col - 1, col, col + 1) for r in (row - 1, row, row + 1)]
        movie[:, row, col] = backend.median(xp.stack(neighbours, axis=0), axis=0)
    return movie, len(rows)


# ----------------------------------------------------------------------------------------------------------------
# baseline (ΔF) and masks


def compute_df(movie: Any, baseline_quantile: float | None = None, skip_dff: bool = False, *,
               overwrite: bool = False) -> tuple[Any, Any]:
    """Subtract the per-pixel baseline: the movie becomes ΔF (not ΔF/F) (spec §3.1).

    The baseline ``m`` is the temporal mean (``baseline_quantile=None``), or the temporal Hazen quantile at
    ``baseline_quantile`` (0.5 = median). The movie counts as already centred when the level of ``m`` (its mean
    over pixels, or its Hazen quantile at ``baseline_quantile``) is below a tenth of the sample std of the centre
    pixel's trace (pixel ``(round(h/2), round(w/2))``, MATLAB 1-based rounding) or below 0.01.

    Parameters
    ----------
    movie : array (n, h, w), float32 (other dtypes are converted)
    baseline_quantile : float in (0, 1) or None
        EXTRACT ``baseline_quantile``.
    skip_dff : bool
        EXTRACT ``skip_dff``: keep the movie, only report the baseline.
    overwrite : bool, keyword-only
        Subtract in the input's own memory (float32 input only; saves one movie-sized array).

    Returns
    -------
    movie_df : float32 array (n, h, w)
        ``movie - m`` per pixel (in the input's memory with ``overwrite``); the (float32) input itself, unchanged,
        when the movie is centred or ``skip_dff``.
    F_per_pixel : float32 array (h, w)
        ``m``; ``max(m, 1)`` when the movie is centred or ``skip_dff`` (used at the end to divide traces, §8.4).
    """
    xp, _ = backend.get_namespace_and_device(movie)
    overwrite = overwrite and movie.dtype == xp.float32
    movie = _as_float32(xp, movie)
    n, h, w = movie.shape
    if baseline_quantile is None:
        baseline = xp.mean(movie, axis=0)
        level = xp.mean(baseline)
    else:
        baseline = backend.quantile(movie, baseline_quantile, axis=0)
        level = backend.quantile(baseline, baseline_quantile)
    centre = movie[:, matlab_round(h / 2) - 1, matlab_round(w / 2) - 1]
    centre_std = float(xp.std(centre, correction=1)) if n > 1 else math.nan
    level = float(level)  # sync point: one decision for the whole movie
    if level < centre_std / 10 or level < _CENTRED_ABS_LEVEL or skip_dff:
        return movie, xp.maximum(baseline, xp.ones_like(baseline))
    if overwrite:
        movie -= baseline
        return movie, baseline
    return movie - baseline, baseline


def apply_movie_mask(movie: Any, mask: Any) -> Any:
    """Multiply every frame by ``mask`` (spec §3 step 6, §3.4).

    Parameters
    ----------
    movie : float32 array (n, h, w)
    mask : bool or real array (h, w)
        EXTRACT ``movie_mask`` (True inside the field to analyse).

    Returns
    -------
    float32 array (n, h, w)
    """
    xp, _ = backend.get_namespace_and_device(movie)
    if tuple(mask.shape) != tuple(movie.shape[1:]):
        raise InputError(f"movie_mask has shape {tuple(mask.shape)} but the movie frames are {tuple(movie.shape[1:])}"
                         "; give a (rows, cols) mask of the frame shape")
    return movie * xp.astype(mask, movie.dtype)


def apply_second_df(movie: Any, quantile: float) -> Any:
    """Subtract the per-pixel temporal median (``quantile == 0.5``) or Hazen quantile (EXTRACT ``second_df``,
    spec §3 step 8).

    Parameters
    ----------
    movie : float32 array (n, h, w)
    quantile : float in [0, 1]

    Returns
    -------
    float32 array (n, h, w)
    """
    return movie - backend.quantile(movie, quantile, axis=0)


def correct_baseline(movie: Any, avg_event_tau: float) -> Any:
    """Remove a static background and the slowly wandering baseline of every pixel (spec §3.3).

    Only called when ``remove_background`` is true (the reference's default path skips it, spec §13 item 4).
    Steps: one rank-1 static-background fit ``M ← M - s tᵀ`` (``s`` starts at the per-pixel std, ``t`` is
    3-median-filtered); per-pixel mean removal; the baseline is sampled every ``k = round(50 τ)`` frames as the
    centre of the most populated bin of a histogram (bin width ``stat/5`` over ``±10 stat``, ``stat`` = median
    population std of the pixels) over a window of ``±round(k)`` frames; the samples are smoothed by an 11-point
    moving mean, interpolated linearly to every frame and subtracted; finally the mean is removed again. The whole
    movie is one chunk (on the GPU the reference chunks by memory, which changes ``stat``; we never do).

    Parameters
    ----------
    movie : float32 array (n, h, w) (or (n, pixels))
    avg_event_tau : float
        EXTRACT ``avg_event_tau``, the calcium event decay time in frames.

    Returns
    -------
    float32 array of the input shape
        The input itself when no pixel has a positive std (nothing to remove).
    """
    xp, device = backend.get_namespace_and_device(movie)
    movie = _as_float32(xp, movie)
    n = movie.shape[0]
    if n < 3:
        raise InputError(f"correct_baseline needs at least 3 frames, the movie has {n}")
    if not avg_event_tau > 0:
        raise InputError(f"correct_baseline needs avg_event_tau > 0 (frames), got {avg_event_tau}")
    M = xp.reshape(movie, (n, -1))  # (n, P)
    std_per_pixel = xp.std(M, axis=0, correction=1)
    if not bool(xp.any(std_per_pixel > 0)):
        return movie
    M = _remove_static_background(xp, M, std_per_pixel)
    M = M - xp.mean(M, axis=0)
    stds = xp.std(M, axis=0)
    stds = stds[stds > 1e-6]
    if stds.shape[0] == 0:  # the reference would fill the movie with NaN here
        return xp.reshape(M, movie.shape)
    stat = float(backend.median(stds))
    period = max(matlab_round(50 * avg_event_tau), 1)
    half_window = matlab_round(matlab_round(2 * period) / 2)
    n_samples = max(3, math.ceil(n / period))
    centres = [matlab_round(1 + i * (n - 1) / (n_samples - 1)) for i in range(n_samples)]  # 1-based frames
    edges, step = _histogram_edges(xp, device, stat)
    samples = []
    for c in centres:
        window = M[max(1, c - half_window) - 1:min(n, c + half_window), :]
        samples.append(_histogram_mode(xp, window, edges) + step / 2)
    smooth = _moving_mean(xp, xp.stack(samples, axis=0), _BASELINE_SMOOTH_HALF)  # (n_samples, P)
    M = M - _linear_interpolation_weights(xp, device, centres, n) @ smooth
    M = M - xp.mean(M, axis=0)
    return xp.reshape(M, movie.shape)


def _remove_static_background(xp: Any, M: Any, std_per_pixel: Any) -> Any:
    """One rank-1 step of spec §3.3 item 2 on ``M`` (n, P): ``M - t sᵀ``."""
    s = std_per_pixel
    t = (M @ s) / max(1e-6, float(xp.sum(s * s)))  # (n,)
    s = xp.clip((t @ M) / max(1e-30, float(xp.sum(t * t))), 0.0, None)  # (P,); guard t = 0 (reference: NaN)
    t = backend.median_filter(t, (3,), mode="constant")  # MATLAB medfilt1(t): zero-padded 3-median
    return M - t[:, None] * s[None, :]


def _histogram_edges(xp: Any, device: Any, stat: float) -> tuple[Any, float]:
    """Edges ``-10 stat : stat/5 : 10 stat`` (101 values, float32) and the step, like MATLAB's colon operator
    (lower half counted up from the start, upper half down from the end)."""
    step = stat / _HIST_BINS_PER_STAT
    n_steps = 2 * _HIST_HALF_WIDTH * _HIST_BINS_PER_STAT
    start, stop = -_HIST_HALF_WIDTH * stat, _HIST_HALF_WIDTH * stat
    values = [start + k * step if 2 * k <= n_steps else stop - (n_steps - k) * step for k in range(n_steps + 1)]
    return xp.asarray(values, dtype=xp.float32, device=device), step


def _histogram_mode(xp: Any, window: Any, edges: Any) -> Any:
    """Per column of ``window`` (L, P): left edge of the most populated bin (first on ties), float32 (P,).

    Bins follow MATLAB ``histc``: ``[e_k, e_k+1)``, and the last bin holds values equal to the last edge only;
    values outside the edges are not counted (an all-empty histogram gives the first edge, as ``max`` does).
    """
    n_edges = edges.shape[0]
    bins = xp.searchsorted(edges, window, side="right") - 1
    counted = (bins < n_edges - 1) | (window == edges[-1])
    bins = xp.where(counted, bins, xp.full_like(bins, -1))
    counts = backend.column_histogram(bins, n_edges)  # (n_edges, P)
    return xp.take(edges, xp.argmax(counts, axis=0))


def _moving_mean(xp: Any, samples: Any, half: int) -> Any:
    """Mean of rows ``j - half .. j + half`` (clipped at both ends) for every row ``j`` of ``samples``."""
    n = samples.shape[0]
    rows = [xp.mean(samples[max(0, j - half):min(n, j + half + 1), :], axis=0) for j in range(n)]
    return xp.stack(rows, axis=0)


def _linear_interpolation_weights(xp: Any, device: Any, knots: Sequence[int], n: int) -> Any:
    """``(n, len(knots))`` float32 matrix ``W`` with ``W @ y`` = linear interpolation (MATLAB ``interp1``) of
    values ``y`` at the increasing 1-based frame ``knots`` onto frames ``1..n`` (hat functions)."""
    frames = xp.arange(1, n + 1, dtype=xp.float32, device=device)
    columns = []
    for j, k in enumerate(knots):
        hat = xp.ones_like(frames)
        if j > 0:
            left = 1 - (k - frames) / (k - knots[j - 1])
            hat = xp.where(frames < k, left, hat)
        if j < len(knots) - 1:
            right = 1 - (frames - k) / (knots[j + 1] - k)
            hat = xp.where(frames > k, right, hat)
        columns.append(xp.clip(hat, 0.0, 1.0))
    return xp.stack(columns, axis=1)


# ----------------------------------------------------------------------------------------------------------------
# spatial filters


def spatial_bandpass(movie: Any, radius: float, f_lower_scale: float, f_upper_scale: float,
                     smoothing_ratio: float = 1.0, *, chunk_frames: int = DEFAULT_CHUNK_FRAMES,
                     overwrite: bool = False, on_chunk: Callable[[int], None] | None = None) -> Any:
    """Butterworth (order 4) spatial band-pass of every frame in the Fourier domain (spec §3.2).

    A cell is modelled as a Gaussian of σ = r/2, with corner frequency ``f_c = 2/(π r)`` cycles/pixel; the
    high-pass corner is ``f_c / f_lower_scale`` and the low-pass corner ``f_c · f_upper_scale`` (an infinite scale
    switches that side off; both infinite returns the input). Frames are padded symmetrically (edge included) by
    ``floor((nf - h)/2)`` rows and ``floor((nf - w)/2)`` columns and then with zeros to the square
    ``nf = 2^ceil(log2 max(h, w))``, filtered by ``H(f) = H_lp H_hp`` with
    ``f = sqrt((s_y f_y)² + (s_x f_x)²)`` on the FFT grid, and cropped back.

    The smoothing ratio scales ``f_x`` by ``s_x = ratio`` (ratio > 1) or ``f_y`` by ``s_y = 1/ratio`` (ratio <= 1).
    Decision (spec §13 item 9): for ratio > 1 the reference mis-centres the x frequency
    (``s_x k/nf - 1/2`` instead of ``s_x (k/nf - 1/2)``); we implement the intended ``s_x f_x``.

    Parameters
    ----------
    movie : array (n, h, w) or one image (h, w); converted to float32
    radius : float
        Average cell radius in pixels (> 0).
    f_lower_scale, f_upper_scale : float (> 0, may be inf)
        EXTRACT's ``spatial_highpass_cutoff``-style scales of the high-pass and low-pass corners.
    smoothing_ratio : float
        EXTRACT ``smoothing_ratio_x2y`` (> 0).
    chunk_frames : int, keyword-only
        Frames transformed at once (memory bound; no effect on values).
    on_chunk : callable, keyword-only
        Called with the number of frames filtered so far after each chunk (progress; chunks run side by side on
        the host's cores, one call at a time).

    Returns
    -------
    float32 array of the input's shape
        The input itself (whatever its dtype) when both scales are inf; the input's own memory, filtered in
        place chunk by chunk, with ``overwrite=True`` (float32 input only; saves one movie-sized copy).
    """
    if math.isinf(f_lower_scale) and math.isinf(f_upper_scale):
        return movie
    if not radius > 0 or not f_lower_scale > 0 or not f_upper_scale > 0 or not smoothing_ratio > 0:
        raise InputError(f"spatial_bandpass needs radius, cut-off scales and smoothing ratio > 0; got radius={radius}, "
                         f"f_lower_scale={f_lower_scale}, f_upper_scale={f_upper_scale}, "
                         f"smoothing_ratio={smoothing_ratio}")
    xp, device = backend.get_namespace_and_device(movie)
    movie = _as_float32(xp, movie)
    frames = movie[None, ...] if len(movie.shape) == 2 else movie
    n, h, w = frames.shape
    nf = 1 << (max(h, w) - 1).bit_length()  # MATLAB 2^nextpow2(max(h, w))
    pad_h, pad_w = (nf - h) // 2, (nf - w) // 2
    rows = _runs(_symmetric_indices(h, pad_h))
    cols = _runs(_symmetric_indices(w, pad_w))
    response = _butterworth_response(nf, radius, f_lower_scale, f_upper_scale, smoothing_ratio, xp=xp, device=device)
    out = xp.empty(frames.shape, dtype=xp.float32, device=device) if not overwrite else frames
    done = [0]
    lock = threading.Lock()

    def filter_chunk(start: int) -> None:
        stop = min(n, start + max(1, chunk_frames))
        fft = backend.fft(xp)
        # the 2-D transform of the padded frames axis by axis (rfftn's own order: rows, then columns), with the
        # rows transformed before they are repeated by the padding and only the kept rows transformed back; the
        # inverse's 1 / nf^2 is applied as two exact factors 1 / nf (nf is a power of two): the same values as
        # irfftn(rfftn(padded) * response) cropped, with less work where the frame is padded
        spectrum = fft.rfft(_take_runs(xp, frames[start:stop, ...], cols, 2), n=nf, axis=2)
        spectrum = fft.fft(_take_runs(xp, spectrum, rows, 1), n=nf, axis=1) * response
        kept_rows = fft.ifft(spectrum, axis=1, norm="forward")[:, pad_h:pad_h + h, :]
        out[start:stop, ...] = fft.irfft(kept_rows, n=nf, axis=2)[:, :, pad_w:pad_w + w] * (1.0 / nf)
        if on_chunk is not None:
            with lock:
                done[0] += stop - start
                on_chunk(done[0])

    # every frame on its own: chunks side by side on the host's cores (the same values)
    solver_kernels.map_in_threads(filter_chunk, list(range(0, n, max(1, chunk_frames))), xp)
    return out[0, ...] if len(movie.shape) == 2 else out


def _butterworth_response(nf: int, radius: float, f_lower_scale: float, f_upper_scale: float, smoothing_ratio: float,
                          *, xp: Any, device: Any) -> Any:
    """Band-pass ``H`` of spec §3.2 on the ``rfft2`` grid of an ``nf × nf`` image: float32 ``(nf, nf//2 + 1)``.

    Built in float64 (a one-off ``nf²`` array), then cast, as the reference does (``single(lpf .* hpf)``).
    """
    scale_x, scale_y = (smoothing_ratio, 1.0) if smoothing_ratio > 1 else (1.0, 1.0 / smoothing_ratio)
    f_y = scale_y * xp.fft.fftfreq(nf, dtype=xp.float64, device=device)
    f_x = scale_x * xp.fft.rfftfreq(nf, dtype=xp.float64, device=device)
    dist = xp.sqrt(f_y[:, None] ** 2 + f_x[None, :] ** 2)
    dist = xp.maximum(dist, xp.full_like(dist, 1e-6))
    f_corner = 2.0 / (math.pi * radius)
    response = xp.ones_like(dist)
    if not math.isinf(f_upper_scale):
        response = response / (1 + (dist / (f_corner * f_upper_scale)) ** (2 * _BUTTER_ORDER))
    if not math.isinf(f_lower_scale):
        response = response * (1 - 1 / (1 + (dist / (f_corner / f_lower_scale)) ** (2 * _BUTTER_ORDER)))
    return xp.astype(response, xp.float32)


def _symmetric_indices(size: int, pad: int) -> list[int]:
    """Indices ``-pad .. size + pad - 1`` folded into ``0 .. size - 1`` by symmetric reflection (the edge sample
    repeated, repeated periodically when ``pad > size``: MATLAB ``padarray(..., 'symmetric')``)."""
    period = 2 * size
    return [(i % period) if (i % period) < size else period - 1 - (i % period) for i in range(-pad, size + pad)]


def _runs(indices: list[int]) -> list[tuple[int, int, bool]]:
    """``indices`` (host ints) split into runs of step +1 or -1: ``(low, high, flipped)`` per run, the slice
    ``low:high`` read backwards when ``flipped``. Computed once per filter call (a Python loop over the indices)."""
    runs, start = [], 0
    while start < len(indices):
        step = indices[start + 1] - indices[start] if start + 1 < len(indices) else 1
        step = step if step in (1, -1) else 1
        stop = start + 1
        while stop < len(indices) and indices[stop] - indices[stop - 1] == step:
            stop += 1
        low, high = min(indices[start], indices[stop - 1]), max(indices[start], indices[stop - 1]) + 1
        runs.append((low, high, step == -1 and stop - start > 1))
        start = stop
    return runs


def _take_runs(xp: Any, x: Any, runs: list[tuple[int, int, bool]], axis: int) -> Any:
    """``take(x, indices, axis=axis)`` built from the slices of :func:`_runs` of the indices, concatenated. The same
    values as the gather, copied a run at a time instead of an element at a time; a single increasing run is a
    view of ``x``."""
    pieces = []
    for low, high, flipped in runs:
        piece = x[(slice(None),) * axis + (slice(low, high), ...)]
        pieces.append(xp.flip(piece, axis=axis) if flipped else piece)
    return pieces[0] if len(pieces) == 1 else xp.concat(pieces, axis=axis)


def cellfind_filter(movie: Any, filter_type: str, radius: float, *, spatial_lowpass_cutoff: float = 2.0,
                    cellfind_spatial_highpass_cutoff: float = math.inf, smoothing_ratio_x2y: float = 1.0,
                    moving_radius_spatial: float = 3.0, moving_radius_temporal: float = 3.0,
                    filter_sigma: Sequence[float] = (2.0, 2.0, 10.0),
                    chunk_frames: int = DEFAULT_CHUNK_FRAMES) -> Any:
    """Filter the cell-finding copy of the movie (spec §3.5, EXTRACT ``cellfind_filter_type``).

    ``butter``: :func:`spatial_bandpass` with ``(cellfind_spatial_highpass_cutoff, spatial_lowpass_cutoff,
    smoothing_ratio_x2y)``. ``gauss``: 2-D Gaussian σ = r/2 of size ``2 ceil(r) + 1`` (decision, spec §13 item 10:
    the reference's ``2r + 1`` is rounded up for non-integer r), sum 1, replicate padding. ``wiener``: 7 × 7
    adaptive Wiener filter per frame, noise = mean local variance over the whole movie. ``movavg``: box mean of
    ``r_t × r_s × r_s`` (frames × rows × cols), ``r_s = max(floor(moving_radius_spatial), 2)``,
    ``r_t = max(floor(moving_radius_temporal), 1)``, zero padding, MATLAB ``'same'`` alignment. ``median``:
    3 × 3 × 3 median, symmetric padding. ``gaus``: 3-D Gaussian with σ = ``filter_sigma`` given as
    (rows, cols, frames), size ``2 ceil(2σ) + 1`` per axis, replicate padding. ``none``: the input.

    Parameters
    ----------
    movie : float32 array (n, h, w)
    filter_type : str
        One of :data:`FILTER_TYPES`.
    radius : float
        Average cell radius in pixels after spatial downsampling.
    spatial_lowpass_cutoff, cellfind_spatial_highpass_cutoff, smoothing_ratio_x2y, moving_radius_spatial,
    moving_radius_temporal, filter_sigma :
        The EXTRACT config values of the same names (their defaults here are EXTRACT's).
    chunk_frames : int
        Frames band-passed at once by ``butter``.

    Returns
    -------
    float32 array (n, h, w)
    """
    if filter_type not in FILTER_TYPES:
        raise ConfigError(f"cellfind_filter_type={filter_type!r} is not supported; "
                          f"use one of {', '.join(FILTER_TYPES)}")
    xp, device = backend.get_namespace_and_device(movie)
    movie = _as_float32(xp, movie)
    if filter_type == "butter":
        return spatial_bandpass(movie, radius, cellfind_spatial_highpass_cutoff, spatial_lowpass_cutoff,
                                smoothing_ratio_x2y, chunk_frames=chunk_frames)
    if filter_type == "gauss":
        kernel = _gaussian_kernel(xp, device, radius / 2, math.ceil(radius))
        return _separable_correlate(movie, [None, kernel, kernel], mode="nearest")
    if filter_type == "wiener":
        return _wiener(xp, movie)
    if filter_type == "movavg":
        r_s = max(math.floor(moving_radius_spatial), 2)
        r_t = max(math.floor(moving_radius_temporal), 1)
        kernels = [xp.full((size,), 1.0 / size, dtype=xp.float32, device=device) for size in (r_t, r_s, r_s)]
        return _separable_correlate(movie, kernels, mode="constant")
    if filter_type == "median":
        return backend.median_filter(movie, (3, 3, 3), mode="reflect")
    if filter_type == "gaus":
        sigma_y, sigma_x, sigma_t = (float(s) for s in filter_sigma)
        kernels = [_gaussian_kernel(xp, device, s, math.ceil(2 * s)) for s in (sigma_t, sigma_y, sigma_x)]
        return _separable_correlate(movie, kernels, mode="nearest")
    return movie


def _gaussian_kernel(xp: Any, device: Any, sigma: float, half: int) -> Any:
    """1-D ``exp(-k²/(2σ²))``, ``k = -half..half``, normalised to sum 1 (float32): one axis of MATLAB
    ``fspecial('gaussian')`` / ``imgaussfilt3``, whose N-D kernels are products of these."""
    offsets = xp.arange(-half, half + 1, dtype=xp.float64, device=device)
    kernel = xp.exp(-(offsets ** 2) / (2 * sigma ** 2))
    return xp.astype(kernel / xp.sum(kernel), xp.float32)


def _separable_correlate(movie: Any, kernels: Sequence[Any | None], mode: str) -> Any:
    """Correlate ``movie`` (n, h, w) with one 1-D kernel per axis (None = leave that axis), MATLAB ``imfilter``
    alignment (even lengths: offsets ``-(len/2 - 1) .. len/2``)."""
    xp, _ = backend.get_namespace_and_device(movie)
    for axis, kernel in enumerate(kernels):
        if kernel is None or kernel.shape[0] == 1:  # kernels sum to 1: length 1 is the identity
            continue
        shape = [1, 1, 1]
        shape[axis] = kernel.shape[0]
        origin = [0, 0, 0]
        origin[axis] = -1 if kernel.shape[0] % 2 == 0 else 0
        movie = backend.correlate(movie, xp.reshape(kernel, tuple(shape)), mode=mode, origin=tuple(origin))
    return movie


def _wiener(xp: Any, movie: Any) -> Any:
    """Adaptive 7 × 7 Wiener filter of every frame (MATLAB ``wiener2`` with the noise power averaged over the
    whole movie): ``μ + max(v - noise, 0) / max(v, noise) · (x - μ)`` with local mean μ and variance v."""
    _, device = backend.get_namespace_and_device(movie)
    box = xp.full((_WIENER_SIZE,), 1.0 / _WIENER_SIZE, dtype=xp.float32, device=device)
    kernels = [None, box, box]
    local_mean = _separable_correlate(movie, kernels, mode="constant")
    local_var = _separable_correlate(movie * movie, kernels, mode="constant") - local_mean * local_mean
    noise = float(xp.mean(local_var))  # one scalar for the whole movie
    gain_num = xp.clip(local_var - noise, 0.0, None)
    gain_den = xp.clip(local_var, noise, None)
    safe_den = xp.where(gain_den > 0, gain_den, xp.ones_like(gain_den))
    return local_mean + (gain_num / safe_den) * (movie - local_mean)


# ----------------------------------------------------------------------------------------------------------------
# downsampling


def downsample_time(movie: Any, d: int) -> Any:
    """Average blocks of ``d`` consecutive frames; leftover frames at the end are dropped (spec §3.6).

    Parameters
    ----------
    movie : float32 array (n, ...) with time on axis 0 (a movie (n, h, w) or a matrix (n, P))
    d : int >= 1

    Returns
    -------
    float32 array (n // d, ...); the input itself for ``d == 1``
    """
    d = _check_factor(d, "downsample_time_by")
    if d == 1:
        return movie
    xp, _ = backend.get_namespace_and_device(movie)
    n_out = movie.shape[0] // d
    if n_out == 0:
        raise InputError(f"cannot downsample {movie.shape[0]} frames by {d}: fewer frames than the factor")
    blocks = xp.reshape(_as_float32(xp, movie)[:n_out * d, ...], (n_out, d) + tuple(movie.shape[1:]))
    return xp.mean(blocks, axis=1)


def downsample_space(movie: Any, d: int) -> Any:
    """Average ``d × d`` pixel blocks; leftover rows and columns at the end are dropped (spec §3.6).

    Parameters
    ----------
    movie : float32 array (..., h, w), e.g. a movie (n, h, w) or footprints (K, h, w)
    d : int >= 1

    Returns
    -------
    float32 array (..., h // d, w // d); the input itself for ``d == 1``
    """
    d = _check_factor(d, "downsample_space_by")
    if d == 1:
        return movie
    xp, _ = backend.get_namespace_and_device(movie)
    *lead, h, w = movie.shape
    h_out, w_out = h // d, w // d
    if h_out == 0 or w_out == 0:
        raise InputError(f"cannot downsample frames of {h} x {w} pixels by {d}")
    cropped = _as_float32(xp, movie)[..., :h_out * d, :w_out * d]
    blocks = xp.reshape(cropped, tuple(lead) + (h_out, d, w_out, d))
    return xp.mean(blocks, axis=(-3, -1))


def resolve_downsampling(avg_cell_radius: float, avg_event_tau: float, *,
                         downsample_space_by: int | str | None = 1, downsample_time_by: int | str | None = 1,
                         min_radius_after_downsampling: float = 5.0,
                         min_tau_after_downsampling: float = 5.0) -> tuple[int, int]:
    """Spatial and temporal downsampling factors (spec §2, §3.6).

    ``'auto'`` (or None / empty) resolves to ``max(round(avg_cell_radius / min_radius_after_downsampling), 1)``
    in space and ``max(round(avg_event_tau / min_tau_after_downsampling), 1)`` in time, with MATLAB's ``round``
    (halves away from zero); integers >= 1 are used as given.

    Returns
    -------
    (dss, dst) : tuple of int
    """
    def resolve(value: int | str | None, ratio: float, key: str) -> int:
        if value is None or (isinstance(value, str) and value in ("auto", "")):
            return max(matlab_round(ratio), 1)
        return _check_factor(value, key)

    return (resolve(downsample_space_by, avg_cell_radius / min_radius_after_downsampling, "downsample_space_by"),
            resolve(downsample_time_by, avg_event_tau / min_tau_after_downsampling, "downsample_time_by"))


# ----------------------------------------------------------------------------------------------------------------
# the whole preprocessing


@dataclass(frozen=True)
class PreprocessSettings:
    """Settings of :func:`preprocess_movie`: the EXTRACT config values of the same names (spec §3), and
    ``chunk_frames``, the frames band-passed at once; ``progress`` receives the ``preprocess`` stage's events
    (frames band-passed). The defaults are EXTRACT's."""

    spatial_highpass_cutoff: float = 5.0
    baseline_quantile: float | None = None
    skip_dff: bool = False
    remove_background: bool = False
    avg_event_tau: float = 10.0
    medfilt_outlier_pixels: bool = False
    second_df: float | None = None
    fix_zero_FOV_strips: bool = False
    temporal_denoising: bool = False
    chunk_frames: int = DEFAULT_CHUNK_FRAMES
    progress: Reporter = field(default=SILENT, compare=False, repr=False)

    @classmethod
    def from_config(cls, cfg: Any) -> PreprocessSettings:
        """The settings of a resolved :class:`~nwb_extract.config.ExtractConfig`."""
        return cls(spatial_highpass_cutoff=cfg.spatial_highpass_cutoff, baseline_quantile=cfg.baseline_quantile,
                   skip_dff=cfg.skip_dff, remove_background=cfg.remove_background, avg_event_tau=cfg.avg_event_tau,
                   medfilt_outlier_pixels=cfg.medfilt_outlier_pixels, second_df=cfg.second_df,
                   fix_zero_FOV_strips=cfg.fix_zero_FOV_strips, temporal_denoising=cfg.temporal_denoising)


def preprocess_movie(movie: Any, settings: PreprocessSettings, *, radius: float,
                     movie_mask: Any = None, overwrite: bool = False) -> tuple[Any, Any]:
    """EXTRACT's preprocessing of one partition in the order of spec §3 (run only when ``preprocess`` is true).

    1. ``fix_zero_FOV_strips``: a logged no-op (decision, spec §13 item 5: the reference calls the *cropping*
       edge trimmer here, which would change the frame size; every partition is already trimmed by
       :func:`remove_zero_edge_pixels`); 2. :func:`medfilt_outliers`; 3. :func:`compute_df`;
    4. :func:`spatial_bandpass` high-pass ``(spatial_highpass_cutoff, inf)`` unless the cutoff is inf;
    5. ``temporal_denoising``: not implemented yet (raises); 6. :func:`apply_movie_mask`;
    7. :func:`correct_baseline` only when ``remove_background``; 8. :func:`apply_second_df` when ``second_df``.

    Parameters
    ----------
    movie : array (n, h, w), any real dtype (converted to float32; NaN and inf must already be replaced, see
        :func:`fill_nonfinite`)
    settings : PreprocessSettings
        Which steps run, with which values.
    radius : float
        ``avg_cell_radius`` after spatial downsampling, in pixels.
    movie_mask : bool array (h, w), optional
        EXTRACT's ``movie_mask``: pixels outside are zeroed.
    overwrite : bool
        The input is the caller's to give up: ΔF and the band-pass are computed in its memory (float32 input; saves
        one movie-sized array). The values are the same.

    Returns
    -------
    movie : float32 array (n, h, w)
        The preprocessed ΔF movie.
    F_per_pixel : float32 array (h, w)
        Per-pixel baseline from :func:`compute_df`.
    """
    if settings.temporal_denoising:
        raise NotImplementedYetError("temporal_denoising (wavelet denoising of every pixel's trace) is not "
                                     "implemented yet; set temporal_denoising=False")
    xp, _ = backend.get_namespace_and_device(movie)
    movie = _as_float32(xp, movie)
    n_frames = movie.shape[0]

    def report(done: int, message: str = "band-pass") -> None:
        settings.progress("preprocess", done, n_frames, message, "frames")

    report(0, "baseline")
    if settings.fix_zero_FOV_strips:
        logger.info("fix_zero_FOV_strips: zero edge strips were already trimmed from this partition; "
                    "no further change (the reference's in-preprocessing crop is not replicated)")
    if settings.medfilt_outlier_pixels:
        movie, n_outliers = medfilt_outliers(movie)
        logger.info("medfilt_outlier_pixels: replaced %d hot or dead pixels", n_outliers)
    df_movie, F_per_pixel = compute_df(movie, settings.baseline_quantile, settings.skip_dff, overwrite=overwrite)
    owned = overwrite or df_movie is not movie  # our own array: the band-pass may filter it in place
    movie = df_movie
    if not math.isinf(settings.spatial_highpass_cutoff):
        movie = spatial_bandpass(movie, radius, settings.spatial_highpass_cutoff, math.inf,
                                 chunk_frames=settings.chunk_frames, overwrite=owned and movie.dtype == xp.float32,
                                 on_chunk=lambda done: report(min(done, n_frames - 1)))
    if movie_mask is not None:
        movie = apply_movie_mask(movie, movie_mask)
    if settings.remove_background:
        movie = correct_baseline(movie, settings.avg_event_tau)
    if settings.second_df is not None:
        movie = apply_second_df(movie, settings.second_df)
    report(n_frames, "done")
    return movie, F_per_pixel


# ----------------------------------------------------------------------------------------------------------------
# small helpers


def _as_float32(xp: Any, x: Any) -> Any:
    """``x`` as float32 without a copy when it already is."""
    return x if x.dtype == xp.float32 else xp.astype(x, xp.float32)



def _check_factor(d: Any, key: str) -> int:
    """A downsampling factor as an int >= 1, else :class:`ConfigError` naming ``key``."""
    try:
        valid = not isinstance(d, bool) and float(d) == int(d) and int(d) >= 1
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ConfigError(f"{key} must be an integer >= 1 or 'auto', got {d!r}")
    return int(d)
