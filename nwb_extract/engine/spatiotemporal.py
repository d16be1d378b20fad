"""Spatio-temporal (ST) quality metrics of refined cells (spec §7.6; rows of §7.2, rule ``ST_spurious`` of §7.3).

Two families, both computed per *event* (a contiguous run of active frames of a cell's trace) and summarised by
quantiles over the cell's events (MATLAB ``quantile``: Hazen positions, NaN ignored):

* :func:`residual_indices` (EXTRACT ``find_spurious_cells``) -> ``ST1_index_1..5``, ``ST2_index_1..5``,
  ``ST3_index_1..5``, the quantiles ``[0.01, 0.25, 0.5, 0.75, 0.99]`` of three ratios. Events: frames where
  ``T > 0.5 max T``. From the movie projected on the cell image (``T_in``) and on its surround image (``T_out``):

  - ``ST1``: activity of the image region not explained by the trace, ``sum max(T_in_scaled - T, 0) / sum T``
    (near 0 for a clean cell);
  - ``ST2``: activity of the trace not explained by the surround, ``sum max(T - T_out_scaled, 0) / sum T``
    (near 1 for a clean cell, near 0 when the surround carries the same transients: a spurious component);
  - ``ST3``: ``sum max(T_in_fluo - T_out_fluo, 0) / sum T_in_fluo`` (near 1 for a clean cell).

  ``T_in_fluo = max(T_in / |S_k|, 0)`` and ``T_in_scaled = T_in_fluo max(S_k) / |S_k|`` (the movie's amplitude on
  the image in the units of ``T``), likewise ``T_out_*`` with the surround image; a zero image gives zeros.
* :func:`st_correlation` (EXTRACT ``get_st_corr_metrics``) -> ``ST_corr_1..3``, the quantiles ``[0.1, 0.5, 0.9]``
  of the Pearson correlation between the cell image and the movie's correlation-with-trace image, inside the
  bounding box of ``S_k > 0.2`` grown by ``round(radius)`` pixels. Events: ``medfilt1(T, 5) > 0.3 max``, grown by
  2 frames on each side, at least 5 frames long. An all-zero image gives 0.

A cell without events gets NaN (MATLAB ``quantile([])``); the caller's table turns NaN into 0 (§7.2), so with a
non-negative ``low_ST_index_thresh`` such a cell is flagged ``ST_spurious``.

Shapes follow :mod:`refine`: ``S`` (P, K) images with max 1 (row-major pixels of ``frame_shape``), ``T`` (K, n),
``Mt`` (n, P). Event boundaries and bounding boxes are small integer bookkeeping done on the host; all
frame- and pixel-sized work stays on the arrays' device.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from nwb_extract.engine import backend
from nwb_extract.engine.matching import pearson_columns
from nwb_extract.engine.matlab import matlab_round
from nwb_extract.engine.morphology import grown_range
from nwb_extract.errors import InputError

#: Quantiles of the per-event residual ratios (``ST1..3_index_1..5``).
INDEX_QUANTILES = (0.01, 0.25, 0.5, 0.75, 0.99)
#: Quantiles of the per-event image correlations (``ST_corr_1..3``).
CORR_QUANTILES = (0.1, 0.5, 0.9)
#: A frame is in a residual event when ``T > EVENT_FRACTION * max T``.
EVENT_FRACTION = 0.5
#: ST correlation: trace median-filter span, activity fraction, event growth (frames each side), minimum length.
CORR_MEDIAN_SPAN = 5
CORR_ACTIVITY_FRACTION = 0.3
CORR_EVENT_GROWTH = 2
CORR_MIN_EVENT_FRAMES = 5
#: ST correlation: image threshold of the bounding box.
CORR_IMAGE_THRESHOLD = 0.2
#: Bound on frames x events of one block of event weights in :func:`st_correlation` (memory only, not results).
_BLOCK_ELEMENTS = 2**20


class SpatioTemporalInputs(NamedTuple):
    """What the ST metrics need besides ``S`` and ``T`` (all from the same S-step).

    Attributes
    ----------
    Mt : (n, P) float32 — the movie, frames x pixels.
    T_in : (K, n) float32 — the movie projected on the (max-1) images ``S``: ``S^T M``.
    T_out : (K, n) float32 — the movie projected on the surround images.
    S_surround : (P, K) float32 — surround images (any positive scale; the metrics are invariant to it).
    radius : float — ``avg_cell_radius`` in pixels.
    """

    Mt: Any
    T_in: Any
    T_out: Any
    S_surround: Any
    radius: float


def inputs_from_s_step(step: Any, Mt: Any, radius: float) -> SpatioTemporalInputs:
    """:class:`SpatioTemporalInputs` from a :class:`~nwb_extract.engine.tiled.SStepResult`.

    The S-step returns ``T_corr_in`` multiplied by the image scale (the reference's ``Tin * scale``, spec §13
    item 8), i.e. ``S^T M scale^2`` for the returned max-1 images ``S``. Here it is divided by ``scale^2`` so that
    ``T_in = S^T M`` is the projection on the images the metrics are computed for (a fix, docs/decisions.md);
    otherwise ``ST1``/``ST3`` would depend on how far the unnormalised S-step image was from max 1.
    """
    scale = step.scale
    return SpatioTemporalInputs(Mt, step.T_corr_in / (scale * scale)[:, None], step.T_corr_out, step.S_surround,
                                float(radius))


def spatiotemporal_metrics(S: Any, T: Any, inputs: SpatioTemporalInputs, frame_shape: tuple[int, int]) -> Any:
    """The 18 ST rows of §7.2 in :data:`~nwb_extract.engine.quality.METRIC_NAMES` order.

    Rows ``ST1_index_1..5, ST2_index_1..5, ST3_index_1..5`` (:func:`residual_indices`) then ``ST_corr_1..3``
    (:func:`st_correlation`). Returns float64 (18, K), NaN for cells without events.
    """
    xp = backend.get_namespace(S, T)
    indices = residual_indices(S, T, inputs.T_in, inputs.T_out, inputs.S_surround)
    corr = st_correlation(S, T, inputs.Mt, frame_shape, inputs.radius)
    return xp.concat([indices, corr], axis=0)


# ----------------------------------------------------------------------------------------------------------------
# events and per-cell quantiles


class _Events(NamedTuple):
    """Contiguous runs of true frames of a (K, n) mask, ordered by cell then time (device int64 arrays (E,))."""

    cell: Any
    start: Any  # first frame
    stop: Any  # one past the last frame


def _find_events(active: Any) -> _Events:
    xp, device = backend.get_namespace_and_device(active)
    K = active.shape[0]
    edge = xp.zeros((K, 1), dtype=xp.bool, device=device)
    before = xp.concat([edge, active[:, :-1]], axis=1)
    after = xp.concat([active[:, 1:], edge], axis=1)
    cell, start = xp.nonzero(active & ~before)
    _, last = xp.nonzero(active & ~after)
    return _Events(xp.astype(cell, xp.int64), xp.astype(start, xp.int64), xp.astype(last, xp.int64) + 1)


def _select_events(events: _Events, keep: Any) -> _Events:
    xp = backend.get_namespace(keep)
    chosen = xp.nonzero(keep)[0]
    return _Events(*(xp.take(a, chosen) for a in events))


def _segment_sums(values: Any, events: _Events) -> Any:
    """Sum of ``values`` (K, n) over each event's frames: float64 (E,), from float64 running sums."""
    xp, device = backend.get_namespace_and_device(values)
    K, n = values.shape
    running = xp.cumulative_sum(xp.astype(values, xp.float64), axis=1)
    running = xp.reshape(xp.concat([xp.zeros((K, 1), dtype=xp.float64, device=device), running], axis=1), (-1,))
    row = events.cell * (n + 1)
    return xp.take(running, row + events.stop) - xp.take(running, row + events.start)


def _quantiles_by_cell(values: Any, cell: Any, K: int, quantiles: tuple[float, ...]) -> Any:
    """MATLAB ``quantile(v, q)`` of each cell's event values: float64 (len(quantiles), K).

    ``values`` (E,) ordered by ``cell`` (E,). Hazen positions with linear interpolation, clamped at both ends; NaN
    values are ignored (as MATLAB's ``quantile``); a cell without a value gets NaN.
    """
    xp, device = backend.get_namespace_and_device(values)
    values = xp.astype(values, xp.float64)
    nan_row = xp.full((len(quantiles), K), xp.nan, dtype=xp.float64, device=device)
    if values.shape[0] == 0:
        return nan_row
    first = xp.searchsorted(cell, xp.arange(K + 1, dtype=xp.int64, device=device))
    counts = first[1:] - first[:-1]
    width = int(xp.max(counts))
    slot = xp.arange(width, dtype=xp.int64, device=device)[None, :]
    in_cell = slot < counts[:, None]
    padded = xp.concat([xp.full((1,), xp.nan, dtype=xp.float64, device=device), values])
    table = xp.take(padded, xp.reshape(xp.where(in_cell, first[:-1, None] + slot + 1, 0), (-1,)))
    table = xp.reshape(table, (K, width))
    valid = ~xp.isnan(table)
    n_valid = xp.astype(xp.sum(xp.astype(valid, xp.int64), axis=1), xp.float64)
    ordered = xp.reshape(xp.sort(xp.where(valid, table, xp.inf), axis=1), (-1,))
    base = xp.arange(K, dtype=xp.int64, device=device) * width
    last = xp.clip(n_valid, min=1.0)
    rows = []
    for q in quantiles:
        h = xp.minimum(xp.clip(n_valid * q + 0.5, min=1.0), last)  # 1-based fractional position
        lo = xp.floor(h)
        hi = xp.minimum(lo + 1.0, last)
        x_lo = xp.take(ordered, base + xp.astype(lo, xp.int64) - 1)
        x_hi = xp.take(ordered, base + xp.astype(hi, xp.int64) - 1)
        same = (x_hi == x_lo) | (h == lo)  # no interpolation (also keeps inf - inf and 0 * inf out)
        step = xp.where(same, xp.zeros_like(x_hi), x_hi) - xp.where(same, xp.zeros_like(x_lo), x_lo)
        rows.append(xp.where(same, x_lo, x_lo + (h - lo) * step))
    return xp.where(n_valid[None, :] > 0, xp.stack(rows), nan_row)


# ----------------------------------------------------------------------------------------------------------------
# find_spurious_cells


def _projected_amplitudes(images: Any, projection: Any) -> tuple[Any, Any]:
    """``(fluo, scaled)`` (K, n): ``max(projection / |s|, 0)`` and ``fluo * max(s) / |s|``; 0 for a zero image
    (MATLAB's ``max(NaN, 0) = 0``)."""
    xp = backend.get_namespace(images, projection)
    norm = xp.sqrt(xp.sum(images * images, axis=0))
    nonzero = norm > 0
    safe = xp.where(nonzero, norm, xp.ones_like(norm))
    fluo = xp.where(nonzero[:, None], xp.clip(projection / safe[:, None], min=0.0), xp.zeros_like(projection))
    ratio = xp.where(nonzero, xp.max(images, axis=0) / safe, xp.zeros_like(norm))
    return fluo, fluo * ratio[:, None]


def _event_ratio(residual: Any, total: Any) -> Any:
    """``residual / total`` per event with MATLAB's division by zero for a non-negative ``residual`` (x/0 = inf,
    0/0 = NaN, which the quantile ignores), without floating-point warnings."""
    xp = backend.get_namespace(residual, total)
    by_zero = xp.where(residual > 0, xp.full_like(residual, xp.inf), xp.full_like(residual, xp.nan))
    return xp.where(total == 0, by_zero, residual / xp.where(total == 0, xp.ones_like(total), total))


def residual_indices(S: Any, T: Any, T_in: Any, T_out: Any, S_surround: Any) -> Any:
    """``ST1/ST2/ST3_index_1..5``: quantiles over events of the residual ratios (spec §7.6, ``find_spurious_cells``).

    See the module docstring for the three ratios. Events are the runs of ``T_k > 0.5 max T_k``; each event's
    ratio is ``sum residual / sum T`` over its frames (``sum T_in_fluo`` for ST3); a 0/0 ratio is ignored by the
    quantile.

    Parameters
    ----------
    S : array (P, K) — images (max 1); T : array (K, n) — traces.
    T_in : array (K, n) — movie projected on ``S`` (``S^T M``); T_out : array (K, n) — on ``S_surround``.
    S_surround : array (P, K) — surround images.

    Returns
    -------
    array (15, K), float64 — rows ST1_index_1..5, ST2_index_1..5, ST3_index_1..5 (quantiles 0.01, 0.25, 0.5,
    0.75, 0.99); NaN for a cell without events (e.g. an all-zero trace).
    """
    xp = backend.get_namespace(S, T, T_in, T_out, S_surround)
    K = T.shape[0]
    if tuple(T_in.shape) != tuple(T.shape) or tuple(T_out.shape) != tuple(T.shape):
        raise InputError(f"T_in {tuple(T_in.shape)} and T_out {tuple(T_out.shape)} must have the shape of T "
                         f"{tuple(T.shape)} (cells, frames)")
    if tuple(S_surround.shape) != tuple(S.shape):
        raise InputError(f"S_surround {tuple(S_surround.shape)} must have the shape of S {tuple(S.shape)}")
    in_fluo, in_scaled = _projected_amplitudes(S, T_in)
    out_fluo, out_scaled = _projected_amplitudes(S_surround, T_out)
    events = _find_events(T > EVENT_FRACTION * xp.max(T, axis=1, keepdims=True))
    trace_sum = _segment_sums(T, events)
    ratios = (
        _event_ratio(_segment_sums(xp.clip(in_scaled - T, min=0.0), events), trace_sum),
        _event_ratio(_segment_sums(xp.clip(T - out_scaled, min=0.0), events), trace_sum),
        _event_ratio(_segment_sums(xp.clip(in_fluo - out_fluo, min=0.0), events), _segment_sums(in_fluo, events)),
    )
    return xp.concat([_quantiles_by_cell(r, events.cell, K, INDEX_QUANTILES) for r in ratios], axis=0)


# ----------------------------------------------------------------------------------------------------------------
# get_st_corr_metrics


def _correlation_events(T: Any) -> tuple[Any, _Events]:
    """Median-filtered traces (K, n) and their ST-correlation events (grown, at least 5 frames)."""
    xp, device = backend.get_namespace_and_device(T)
    K, n = T.shape
    smooth = backend.median_filter(T, (1, CORR_MEDIAN_SPAN), mode="constant")
    active = smooth > CORR_ACTIVITY_FRACTION * xp.max(smooth, axis=1, keepdims=True)
    pad = xp.zeros((K, CORR_EVENT_GROWTH), dtype=xp.bool, device=device)
    padded = xp.concat([pad, active, pad], axis=1)
    grown = active
    for shift in range(2 * CORR_EVENT_GROWTH + 1):
        grown = grown | padded[:, shift:shift + n]
    events = _find_events(grown)
    return smooth, _select_events(events, events.stop - events.start >= CORR_MIN_EVENT_FRAMES)


def _blocks(starts: list[int], stops: list[int]) -> list[tuple[int, int]]:
    """Consecutive event ranges [i, j) whose frame span x event count stays within the block budget."""
    out, i = [], 0
    while i < len(starts):
        j = i + 1
        while j < len(starts) and (stops[j] - starts[i]) * (j + 1 - i) <= _BLOCK_ELEMENTS:
            j += 1
        out.append((i, j))
        i = j
    return out


def _event_weights(trace: Any, starts: list[int], stops: list[int]) -> Any:
    """(stops[-1] - starts[0], G) columns: the trace centred on each event's frames, 0 elsewhere; 0 for a constant
    event (MATLAB ``zscore`` of a constant is 0). The unit-norm scaling of the reference is left out: the Pearson
    correlation that follows does not depend on it."""
    xp, device = backend.get_namespace_and_device(trace)
    first = starts[0]
    segment = trace[first:stops[-1]]
    frame = xp.arange(first, stops[-1], dtype=xp.int64, device=device)[:, None]
    lo = xp.asarray(starts, dtype=xp.int64, device=device)[None, :]
    hi = xp.asarray(stops, dtype=xp.int64, device=device)[None, :]
    inside = (frame >= lo) & (frame < hi)
    zero = xp.zeros(inside.shape, dtype=trace.dtype, device=device)
    values = xp.where(inside, segment[:, None], zero)
    mean = xp.sum(values, axis=0) / xp.astype(hi - lo, trace.dtype)[0, :]
    infinite = xp.full(inside.shape, xp.inf, dtype=trace.dtype, device=device)
    varies = xp.max(xp.where(inside, values, -infinite), axis=0) > xp.min(xp.where(inside, values, infinite), axis=0)
    return xp.where(inside & varies[None, :], values - mean[None, :], zero)


def _cell_st_correlations(image: Any, trace: Any, Mt: Any, width: int, events: tuple[list[int], list[int]],
                          box: tuple[tuple[int, int], tuple[int, int]]) -> Any:
    """One cell's per-event correlations (G,) between its boxed image and the movie's trace-correlation image;
    ``events`` are the (starts, stops) frames of its G events, ``box`` the (rows, cols) ranges of its image."""
    xp, device = backend.get_namespace_and_device(image, Mt)
    starts, stops = events
    box_rows, box_cols = box
    rows = xp.arange(box_rows[0], box_rows[1], dtype=xp.int64, device=device)
    cols = xp.arange(box_cols[0], box_cols[1], dtype=xp.int64, device=device)
    pixels = xp.reshape(rows[:, None] * width + cols[None, :], (-1,))
    boxed = xp.take(image, pixels)[:, None]
    out = []
    for i, j in _blocks(starts, stops):
        weights = _event_weights(trace, starts[i:j], stops[i:j])
        movie = xp.take(Mt[starts[i]:stops[j - 1], :], pixels, axis=1)
        correlation_image = xp.matrix_transpose(movie) @ weights
        out.append(pearson_columns(boxed, correlation_image, xp=xp)[0, :])
    return xp.concat(out) if out else xp.zeros((0,), dtype=image.dtype, device=device)


def st_correlation(S: Any, T: Any, Mt: Any, frame_shape: tuple[int, int], radius: float) -> Any:
    """``ST_corr_1..3``: quantiles over events of the image / movie correlation (spec §7.6, ``get_st_corr``).

    For each event of ``medfilt1(T_k, 5)`` (runs of ``> 0.3 max``, grown by 2 frames, at least 5 frames), the
    movie inside the bounding box of ``S_k > 0.2`` grown by ``round(radius)`` pixels is correlated with the
    event's centred trace (one value per pixel), and the Pearson correlation of that image with ``S_k`` in the box
    is the event's value. A constant image or event gives 0.

    Parameters
    ----------
    S : array (P, K) — images (max 1); T : array (K, n) — traces; Mt : array (n, P) — movie.
    frame_shape : (h, w); radius : float — ``avg_cell_radius`` in pixels (the box margin is its MATLAB round).

    Returns
    -------
    array (3, K), float64 — quantiles 0.1, 0.5, 0.9; 0 for an all-zero image; NaN for a cell without events or
    without any pixel above 0.2.
    """
    xp, device = backend.get_namespace_and_device(S, T, Mt)
    h, w = (int(v) for v in frame_shape)
    P, K = S.shape
    if h * w != P or tuple(Mt.shape) != (T.shape[1], P) or T.shape[0] != K:
        raise InputError(f"st_correlation needs S (h*w, K), T (K, n), Mt (n, h*w) with frame_shape {(h, w)}; got "
                         f"S {tuple(S.shape)}, T {tuple(T.shape)}, Mt {tuple(Mt.shape)}")
    margin = matlab_round(radius)
    smooth, events = _correlation_events(T)
    # host step: per-cell event boundaries and image bounding boxes (small integer bookkeeping)
    cells = backend.to_numpy(events.cell).tolist()
    starts = backend.to_numpy(events.start).tolist()
    stops = backend.to_numpy(events.stop).tolist()
    seeds = xp.reshape(xp.permute_dims(S > CORR_IMAGE_THRESHOLD, (1, 0)), (K, h, w))
    rows_hit = backend.to_numpy(xp.any(seeds, axis=2)).tolist()
    cols_hit = backend.to_numpy(xp.any(seeds, axis=1)).tolist()
    empty = backend.to_numpy(xp.all(S == 0, axis=0)).tolist()
    values, owner = [], []
    position = 0
    for k in range(K):
        end = position
        while end < len(cells) and cells[end] == k:
            end += 1
        box_rows, box_cols = grown_range(rows_hit[k], margin, h), grown_range(cols_hit[k], margin, w)
        if empty[k]:
            values.append(xp.zeros((1,), dtype=xp.float64, device=device))
            owner.append(k)
        elif end > position and box_rows[0] < box_rows[1]:
            cell_events = (starts[position:end], stops[position:end])
            values.append(xp.astype(_cell_st_correlations(S[:, k], smooth[k, :], Mt, w, cell_events,
                                                          (box_rows, box_cols)), xp.float64))
            owner.extend([k] * (end - position))
        position = end
    if not values:
        return xp.full((len(CORR_QUANTILES), K), xp.nan, dtype=xp.float64, device=device)
    return _quantiles_by_cell(xp.concat(values), xp.asarray(owner, dtype=xp.int64, device=device), K,
                              CORR_QUANTILES)
