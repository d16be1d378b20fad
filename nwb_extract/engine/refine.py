"""Cell refinement and quality control: the alternating T/S loop with elimination and merging (spec §7, §2.2).

Contents
--------
* §2.2 helpers: :func:`estimate_avg_radius`, :func:`estimate_radius`, :func:`make_mask`, :func:`smooth_images`,
  :func:`smooth_traces` (the shared footprint helpers are in :mod:`footprints`);
* §7.2 metrics: :data:`METRIC_NAMES` (the 30 rows, in EXTRACT's fixed order) and :func:`quality_metrics`;
* §7.3 elimination rules :data:`RULE_NAMES`, §7.4 :func:`update_merged_images` (groups from
  :func:`matching.find_conncomp`), combined
  in :func:`remove_redundant`, which returns a :class:`Classification`;
* §7.1 the loop: :func:`refine` with a :class:`RefineSettings` -> :class:`RefinementResult`.

Shapes follow the spec: ``S`` (P, K) images (one column per cell, row-major pixels ``p = row * w + col`` of
``frame_shape = (h, w)``), ``T`` (K, n) traces, ``Mt`` (n, P) movie. Arrays stay in the inputs' namespace and
device; only small bookkeeping (bounding boxes, K x K adjacency components, the elimination decisions) goes to the
host.

Column order. The reference re-orders the columns of its classification records (cells kept first, then the
eliminated ones). Every array here stays in input order; :attr:`Classification.cell_ids` says which initial cell
each column is.

Spatio-temporal (ST) metrics (§7.6, :mod:`spatiotemporal`) take their "disabled" value 1 with EXTRACT's default
``low_ST_index_thresh = -1``; they are computed, and the ``ST_spurious`` rule applied, when the threshold is set, and
always in the tuning records (hyperparameter-tuning mode and a skipped last check, §7.5), as in the reference.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from nwb_extract.engine import backend, noise, spatiotemporal
from nwb_extract.engine.footprints import AREA_THRESHOLD, cell_area, normalize_to_one, to_columns, to_stack
from nwb_extract.engine.matching import find_conncomp, pearson_columns
from nwb_extract.engine.matlab import matlab_round
from nwb_extract.engine.morphology import dilate, disk_footprint, gaussian_kernel, grown_range
from nwb_extract.engine.robust import l1_lambda
from nwb_extract.engine.tiled import solve_S, solve_T
from nwb_extract.errors import InputError

#: The 30 quality metrics of §7.2, in EXTRACT's row order (``get_quality_metric_map``).
METRIC_NAMES: tuple[str, ...] = (
    "T_maxval", "T_corruption", "T_max_corr", "S_area_1", "S_smooth_area_1", "S_area_2", "S_smooth_area_2",
    "S_max_corr", "S_corruption", "S_eccent", "S_circularity",
    *(f"ST{j}_index_{i}" for j in (1, 2, 3) for i in range(1, 6)),
    "ST_corr_1", "ST_corr_2", "ST_corr_3", "T_dup_val",
)
#: The 9 elimination rules of §7.3, in order (a cell's eliminating rule is the first true one).
RULE_NAMES: tuple[str, ...] = (
    "T_duplicate", "S_duplicate", "T_zeroed", "T_poor", "S_tiny", "S_huge", "S_poor", "S_eccent", "ST_spurious",
)
#: Margin (px) around the ``S > 0.1`` bounding box in the median smoothing, and its window side.
SMOOTH_BOX_MARGIN = 2
SMOOTH_MEDIAN_SIZE = 5
#: Threshold of the image whose largest component gives eccentricity and circularity.
SHAPE_THRESHOLD = 0.3
#: Image value above which a pixel counts in the spatial-overlap constraint of trace duplicates.
OVERLAP_THRESHOLD = 0.05
#: ``l1_penalty_factor`` above which the T-step gets an l1 penalty (§6.5).
L1_MIN_FACTOR = 1e-6
_ST_METRICS = tuple(name for name in METRIC_NAMES if name.startswith("ST"))


# ----------------------------------------------------------------------------------------------------------------
# §0 / §2.2 helpers


def estimate_avg_radius(S: Any) -> float:
    """Median over the columns of ``sqrt(cell_area(S) / pi)`` (EXTRACT ``estimate_avg_radius``), in pixels.

    ``S`` is (P, K) with K >= 1; the median is MATLAB's (mean of the two middle values for even K).
    """
    xp = backend.get_namespace(S)
    if S.shape[1] == 0:
        raise InputError("estimate_avg_radius needs at least one cell image (S has 0 columns)")
    radii = xp.sqrt(xp.astype(cell_area(S), xp.float64) / math.pi)
    return float(backend.median(radii))


def estimate_radius(S: Any, radius: float) -> float:
    """Refined ``avg_cell_radius`` from the first cells (spec §2.2).

    ``(estimate_avg_radius(first K_sel columns) + radius) / 2`` with ``K_sel = min(K, max(5, ceil(0.1 K)))``
    (cell finding returns the brightest cells first).

    Parameters
    ----------
    S : array (P, K), float32 — initial images, each column scaled to max 1.
    radius : float — the current radius in pixels (user radius divided by the spatial downsampling factor).

    Returns
    -------
    float — radius in pixels; NaN when ``K == 0`` (the refinement loop then exits at once, spec §13 item 17).
    """
    K = S.shape[1]
    if K == 0:
        return math.nan
    k_sel = min(K, max(5, math.ceil(0.1 * K)))
    return (estimate_avg_radius(S[:, :k_sel]) + float(radius)) / 2.0


def _check_frame_shape(S: Any, frame_shape: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(v) for v in frame_shape)
    if h * w != S.shape[0]:
        raise InputError(f"frame_shape {(h, w)} has {h * w} pixels but the images have {S.shape[0]} rows; pass the "
                         "(rows, cols) the images were flattened from (row-major)")
    return h, w


def make_mask(S: Any, frame_shape: tuple[int, int], radius: float, *, threshold: float = AREA_THRESHOLD) -> Any:
    """S-step masks: ``S > threshold`` dilated by the exact disk of ``radius`` (spec §7.1, §2.2 ``pre_mask_on``).

    Parameters
    ----------
    S : array (P, K) — images (``S_smooth`` in the loop; the initial ``S`` with ``threshold=0`` for
        ``pre_mask_on``).
    frame_shape : (h, w) — image shape.
    radius : float — dilation radius in pixels (``round(avg_cell_radius)``); ``radius <= 0`` means no dilation.
    threshold : float — seed threshold (0.1 in the loop).

    Returns
    -------
    bool array (P, K)
    """
    frame_shape = _check_frame_shape(S, frame_shape)
    seeds = to_stack(S > threshold, frame_shape)
    if radius <= 0:
        return to_columns(seeds)
    xp, device = backend.get_namespace_and_device(S)
    footprint = disk_footprint(radius, xp=xp, device=device)
    # each mask can only grow by the disk's half-width around its seeds
    masks = _in_boxes(seeds, seeds, footprint.shape[0] // 2, lambda box: dilate(box, footprint))
    return to_columns(masks)


def _in_boxes(images: Any, seeds: Any, margin: int, operation: Callable[[Any], Any]) -> Any:
    """``operation`` applied to each image of a (K, h, w) stack inside the bounding box of its ``seeds`` grown by
    ``margin`` (clipped to the image); zero outside the box and for an image without seeds. Same dtype as
    ``images``."""
    xp, device = backend.get_namespace_and_device(images)
    K, h, w = images.shape
    # host step: 2 small boolean profiles per cell give every bounding box in one transfer
    rows_hit = backend.to_numpy(xp.any(seeds, axis=2)).tolist()
    cols_hit = backend.to_numpy(xp.any(seeds, axis=1)).tolist()
    out = xp.zeros(images.shape, dtype=images.dtype, device=device)
    for k in range(K):
        r0, r1 = grown_range(rows_hit[k], margin, h)
        c0, c1 = grown_range(cols_hit[k], margin, w)
        if r0 < r1:
            out[k, r0:r1, c0:c1] = operation(images[k, r0:r1, c0:c1])
    return out


def smooth_images(S: Any, frame_shape: tuple[int, int], *, method: str = "median", radius: float = 0.0) -> Any:
    """Smoothed cell images (spec §7.1 ``S_smooth``), not normalised.

    * ``method="median"`` (default): inside the bounding box of ``S_k > 0.1`` grown by 2 px (clipped to the
      image), a 5 x 5 median filter with zero padding at the box edge; zero outside the box; an image without any
      pixel above 0.1 becomes all zero. ``radius`` is not used.
    * ``method="gaussian"`` (``low_cell_area_flag``): correlation with ``fspecial('gaussian', n, radius/2.5)``,
      ``n = ceil(2 radius + 1)``, zero padding; ``radius`` is ``round(avg_cell_radius / 3)``; 0 returns a copy.

    Parameters
    ----------
    S : array (P, K), float32; frame_shape : (h, w).

    Returns
    -------
    array (P, K), dtype of ``S``
    """
    frame_shape = _check_frame_shape(S, frame_shape)
    if method == "median":
        return to_columns(_median_smooth(to_stack(S, frame_shape)))
    if method == "gaussian":
        xp, device = backend.get_namespace_and_device(S)
        if radius <= 0:
            return xp.asarray(S, copy=True)
        size = math.ceil(2 * radius + 1)
        kernel = gaussian_kernel(size, radius / 2.5, dtype=S.dtype, xp=xp, device=device)
        smoothed = backend.correlate(to_stack(S, frame_shape), kernel[None, :, :], mode="constant")
        return to_columns(smoothed)
    raise ValueError(f"method must be 'median' or 'gaussian', got {method!r}")


def _median_smooth(images: Any) -> Any:
    """Bounding-box 5 x 5 median smoothing of a (K, h, w) stack (see :func:`smooth_images`)."""
    size = (SMOOTH_MEDIAN_SIZE, SMOOTH_MEDIAN_SIZE)
    return _in_boxes(images, images > AREA_THRESHOLD, SMOOTH_BOX_MARGIN,
                     lambda box: backend.median_filter(box, size, mode="constant"))


def smooth_traces(T: Any) -> Any:
    """``smooth_T`` in the loop (spec §7.1): circular ``[1/4, 1/2, 1/4]`` filter of each trace after zero-padding
    odd lengths to even (a level-1 stationary Haar wavelet transform with the details zeroed). (K, n) -> (K, n)."""
    xp, device = backend.get_namespace_and_device(T)
    K, n = T.shape
    padded = T if n % 2 == 0 else xp.concat([T, xp.zeros((K, 1), dtype=T.dtype, device=device)], axis=1)
    smoothed = 0.5 * padded + 0.25 * (xp.roll(padded, 1, axis=1) + xp.roll(padded, -1, axis=1))
    return smoothed[:, :n]


# ----------------------------------------------------------------------------------------------------------------
# §7.2 metrics


def _matlab_divide(num: Any, den: Any, xp: Any) -> Any:
    """``num / den`` with MATLAB's zero division (x/0 = +-inf, 0/0 = NaN) and no floating-point warnings."""
    safe = xp.where(den == 0, xp.ones_like(den), den)
    by_zero = xp.where(num > 0, xp.full_like(num, math.inf),
                       xp.where(num < 0, xp.full_like(num, -math.inf), xp.full_like(num, math.nan)))
    return xp.where(den == 0, by_zero, num / safe)


def trace_snr(T: Any) -> Any:
    """``T_maxval``: max over frames of ``medfilt1(T_k, 3)`` / (sqrt 2 x noise std of ``T_k``). (K, n) -> (K,)."""
    xp = backend.get_namespace(T)
    peak = xp.max(backend.median_filter(T, (1, 3), mode="constant"), axis=1)
    return _matlab_divide(peak, math.sqrt(2.0) * noise.estimate_noise_std(T, axis=1), xp)


def temporal_corruption(T: Any) -> Any:
    """``T_corruption``: mean of ``|T - Tm| / max(Tm, T)`` over the frames where ``Tm > 0.3 max(Tm)``,
    ``Tm = medfilt1(T, 3)``; NaN when no frame qualifies. (K, n) -> (K,)."""
    xp = backend.get_namespace(T)
    median3 = backend.median_filter(T, (1, 3), mode="constant")
    ratio = _matlab_divide(xp.abs(T - median3), xp.maximum(median3, T), xp)
    valid = median3 > 0.3 * xp.max(median3, axis=1, keepdims=True)
    count = xp.sum(xp.astype(valid, T.dtype), axis=1)
    total = xp.sum(xp.where(valid, ratio, xp.zeros_like(ratio)), axis=1)
    return _matlab_divide(total, count, xp)


def spatial_corruption(S: Any, frame_shape: tuple[int, int]) -> Any:
    """``S_corruption``: local / global normalised variance inside ``S > 1e-3`` (spec §7.2). (P, K) -> (K,).

    ``v_global = sum_I (S - mu)^2 / max(mu, 0.01) / |I|``; ``v_local`` the same with the 4 x 4 box mean
    (offsets -1..+2, replicate padding) in place of ``mu``.
    """
    xp, device = backend.get_namespace_and_device(S)
    frame_shape = _check_frame_shape(S, frame_shape)
    inside = S > 1e-3
    count = xp.sum(xp.astype(inside, S.dtype), axis=0)
    zero = xp.zeros_like(S)
    mean = _matlab_divide(xp.sum(xp.where(inside, S, zero), axis=0), count, xp)
    global_dev = xp.where(inside, (S - mean[None, :]) ** 2, zero) / xp.clip(mean, min=0.01)[None, :]
    box = xp.full((1, 4, 4), 1.0 / 16.0, dtype=S.dtype, device=device)
    local_mean = to_columns(backend.correlate(to_stack(S, frame_shape), box, mode="nearest", origin=(0, -1, -1)))
    local_dev = xp.where(inside, (S - local_mean) ** 2 / xp.clip(local_mean, min=0.01), zero)
    v_global = _matlab_divide(xp.sum(global_dev, axis=0), count, xp)
    v_local = _matlab_divide(xp.sum(local_dev, axis=0), count, xp)
    return _matlab_divide(v_local, v_global, xp)


def shape_metrics(S: Any, frame_shape: tuple[int, int]) -> tuple[Any, Any]:
    """``(S_eccent, S_circularity)`` of the largest 8-connected component of ``S_k > 0.3`` (spec §7.2).

    Eccentricity = major / minor axis length, circularity = ``4 pi area / perimeter^2`` (MATLAB ``regionprops``,
    :func:`backend.largest_component_shape`); ``inf`` for an image without such a component. Both float64 (K,).
    """
    xp = backend.get_namespace(S)
    frame_shape = _check_frame_shape(S, frame_shape)
    area, perimeter, major, minor = backend.largest_component_shape(to_stack(S > SHAPE_THRESHOLD, frame_shape))
    eccent = _matlab_divide(major, minor, xp)
    circularity = _matlab_divide(4.0 * math.pi * area, perimeter * perimeter, xp)
    inf = xp.full_like(area, math.inf)
    return xp.where(xp.isnan(eccent), inf, eccent), xp.where(xp.isnan(circularity), inf, circularity)


def _max_off_diagonal(C: Any) -> Any:
    """Column maxima of a K x K correlation matrix with its diagonal replaced by 0 (EXTRACT's ``C - diag(C)``)."""
    xp, device = backend.get_namespace_and_device(C)
    eye = xp.eye(C.shape[0], dtype=xp.bool, device=device)
    return xp.max(xp.where(eye, xp.zeros_like(C), C), axis=0)


def trace_mixing(T: Any, S_smooth: Any) -> Any | None:
    """``X = T^T corr(S_smooth)`` (n, K): each trace mixed with its spatially correlated neighbours (spec §7.4).

    Returns None when a smoothed image is constant (e.g. all zero): MATLAB's ``corr`` is then NaN in that row and
    column, the product is NaN everywhere, and the reference's trace-duplicate detection and ``T_dup_val`` are
    silently off for every cell of that iteration (reference quirk §5 item 3; reproduced).
    """
    xp = backend.get_namespace(T, S_smooth)
    if bool(xp.any(xp.max(S_smooth, axis=0) == xp.min(S_smooth, axis=0))):
        return None
    corr = pearson_columns(xp.astype(S_smooth, xp.float64), xp=xp)
    return xp.astype(xp.matrix_transpose(T), xp.float64) @ corr


def quality_metrics(S: Any, S_smooth: Any, T: Any, frame_shape: tuple[int, int], *,
                    mixing: Any | None = None, st: spatiotemporal.SpatioTemporalInputs | None = None) -> Any:
    """The 30 metrics of §7.2 for every cell, rows in :data:`METRIC_NAMES` order; NaN set to 0.

    Parameters
    ----------
    S : array (P, K) float32 — images; S_smooth : array (P, K) — smoothed images (normalised);
    T : array (K, n) float32 — traces; frame_shape : (h, w).
    mixing : array (n, K), optional — :func:`trace_mixing` when the caller has it (None: computed here).
    st : :class:`~nwb_extract.engine.spatiotemporal.SpatioTemporalInputs`, optional — when given, the 18 ST rows
        are computed (:func:`~nwb_extract.engine.spatiotemporal.spatiotemporal_metrics`); else they are 1 (the
        disabled value).

    Returns
    -------
    array (30, K), float64
    """
    xp, device = backend.get_namespace_and_device(S, S_smooth, T)
    K = S.shape[1]
    if mixing is None:
        mixing = trace_mixing(T, S_smooth)
    eccent, circularity = shape_metrics(S, frame_shape)
    median3 = backend.median_filter(T, (1, 3), mode="constant")
    rows = {
        "T_maxval": trace_snr(T),
        "T_corruption": temporal_corruption(T),
        "T_max_corr": xp.max(pearson_columns(xp.matrix_transpose(median3), xp=xp), axis=0),
        "S_area_1": cell_area(S, 0.2),
        "S_smooth_area_1": cell_area(S_smooth, 0.2),
        "S_area_2": cell_area(S),
        "S_smooth_area_2": cell_area(S_smooth),
        "S_max_corr": _max_off_diagonal(pearson_columns(S_smooth, xp=xp)),
        "S_corruption": spatial_corruption(S, frame_shape),
        "S_eccent": eccent,
        "S_circularity": circularity,
        "T_dup_val": (xp.zeros((K,), dtype=xp.float64, device=device) if mixing is None
                      else _max_off_diagonal(pearson_columns(mixing, xp=xp))),
    }
    ones = xp.ones((K,), dtype=xp.float64, device=device)
    if st is not None:
        st_rows = spatiotemporal.spatiotemporal_metrics(S, T, st, frame_shape)
        rows.update({name: st_rows[i, :] for i, name in enumerate(_ST_METRICS)})
    table = xp.stack([xp.astype(rows[name], xp.float64) if name in rows else ones for name in METRIC_NAMES])
    return xp.where(xp.isnan(table), xp.zeros_like(table), table)


# ----------------------------------------------------------------------------------------------------------------
# §7.4 duplicates


def update_merged_images(S: Any, T: Any, groups: list[tuple[int, ...]] | tuple[tuple[int, ...], ...]) -> Any:
    """Merge trace duplicates into their kept member (spec §7.4 ``update_merged_images``).

    For each group (kept member first) ``S[:, kept] = sum_j ||T_j||_2 S[:, j]`` over all its members, then
    :func:`normalize_to_one` of every column. T is unchanged (the reference returns it as is).

    Parameters
    ----------
    S : array (P, K); T : array (K, n); groups : groups of 0-based cell indices, e.g. :attr:`Classification.merge_groups`.

    Returns
    -------
    array (P, K) — new images.
    """
    xp, device = backend.get_namespace_and_device(S, T)
    power = xp.sqrt(xp.sum(T * T, axis=1))
    merged = xp.asarray(S, copy=True)
    for group in groups:
        members = xp.asarray(list(group), dtype=xp.int64, device=device)
        weights = xp.take(power, members)
        merged[:, group[0]] = xp.take(S, members, axis=1) @ xp.astype(weights, S.dtype)
    return normalize_to_one(merged)


# ----------------------------------------------------------------------------------------------------------------
# §7.2-7.4 classification


@dataclass(frozen=True)
class Classification:
    """One quality-control record (one refinement iteration), every column in input order.

    Attributes
    ----------
    cell_ids : tuple of int — index of each classified cell among the initial cells given to :func:`refine`
        (``0..K-1`` from :func:`remove_redundant`).
    metrics : array (30, K), float64 — rows :data:`METRIC_NAMES`.
    is_attr_bad : bool array (9, K) — rows :data:`RULE_NAMES`.
    is_bad : bool array (K,) — eliminated (any rule true, except the kept member of a trace-duplicate group).
    merge_groups : tuple of tuples of int — trace-duplicate groups as column positions; the first member is kept
        and receives the merged image.
    """

    cell_ids: tuple[int, ...]
    metrics: Any
    is_attr_bad: Any
    is_bad: Any
    merge_groups: tuple[tuple[int, ...], ...]

    def metric(self, name: str) -> Any:
        """Row ``name`` of :attr:`metrics` (K,)."""
        return self.metrics[METRIC_NAMES.index(name), :]

    def rules(self) -> tuple[str | None, ...]:
        """Per cell, the first true rule in :data:`RULE_NAMES` order for eliminated cells, else None."""
        flags = backend.to_numpy(self.is_attr_bad).tolist()
        bad = backend.to_numpy(self.is_bad).tolist()
        return tuple(next((RULE_NAMES[r] for r in range(len(RULE_NAMES)) if flags[r][k]), None) if bad[k] else None
                     for k in range(len(bad)))


def st_enabled(thresholds: Mapping[str, float]) -> bool:
    """True when the ST check is on (``low_ST_index_thresh != -1``, spec §7.2)."""
    return thresholds["low_ST_index_thresh"] != -1


def remove_redundant(S: Any, S_smooth: Any, T: Any, frame_shape: tuple[int, int],
                     thresholds: Mapping[str, float], *,
                     st: spatiotemporal.SpatioTemporalInputs | None = None) -> Classification:
    """Quality metrics, elimination rules and duplicate groups of the current cells (spec §7.2-7.4).

    Rules (:data:`RULE_NAMES`): trace duplicates (:func:`find_conncomp` of :func:`trace_mixing` at
    ``T_dup_corr_thresh`` under the spatial-overlap constraint ``(S > 0.05)^T (S > 0.05) > 0``; every member but the
    first of each group), image duplicates (:func:`find_conncomp` of ``S_smooth`` at ``S_dup_corr_thresh``; every
    member but the first), ``T_maxval <= T_min_snr``, ``T_corruption >= temporal_corrupt_thresh``,
    ``max(S_area_1, S_smooth_area_1) <= size_lower_limit`` or ``S_smooth_area_1 == 0``,
    ``S_area_2 / max(1, S_eccent - 2) >= size_upper_limit``, ``S_corruption >= spatial_corrupt_thresh``,
    ``S_eccent >= eccent_thresh``, and, when the ST check is on (:func:`st_enabled`), ``ST2_index_4 <=
    low_ST_index_thresh`` or ``ST_corr_3 < low_ST_corr_thresh`` (never true when it is off). A cell is eliminated
    if any rule is true, except the kept (first) member of each trace-duplicate group.

    Parameters
    ----------
    S : array (P, K) float32; S_smooth : array (P, K) — normalised smoothed images; T : array (K, n) float32.
    frame_shape : (h, w).
    thresholds : mapping by EXTRACT name (``cfg.thresholds`` keys); ``size_lower_limit`` and ``size_upper_limit``
        **in pixels** (already multiplied by ``pi r^2``, as the reference passes them).
    st : :class:`~nwb_extract.engine.spatiotemporal.SpatioTemporalInputs` — required when the ST check is on.

    Returns
    -------
    Classification — in input order, ``cell_ids = 0..K-1``.
    """
    check_st = st_enabled(thresholds)
    if check_st and st is None:
        raise InputError("the spatio-temporal check is on (thresholds.low_ST_index_thresh != -1) but no movie and "
                         "S-step projections were given: pass st=spatiotemporal.inputs_from_s_step(...), or set "
                         "low_ST_index_thresh to -1")
    xp, device = backend.get_namespace_and_device(S, S_smooth, T)
    K = S.shape[1]
    mixing = trace_mixing(T, S_smooth)
    metrics = quality_metrics(S, S_smooth, T, frame_shape, mixing=mixing, st=st if check_st else None)
    row = {name: metrics[i, :] for i, name in enumerate(METRIC_NAMES)}
    t_groups: list[tuple[int, ...]] = []
    if mixing is not None:
        overlap = xp.astype(S > OVERLAP_THRESHOLD, xp.float32)
        t_groups, _ = find_conncomp(mixing, thresholds["T_dup_corr_thresh"],
                                    xp.matrix_transpose(overlap) @ overlap > 0)
    s_groups, _ = find_conncomp(S_smooth, thresholds["S_dup_corr_thresh"])
    flags = {
        "T_duplicate": _members_flag([j for g in t_groups for j in g[1:]], K, xp, device),
        "S_duplicate": _members_flag([j for g in s_groups for j in g[1:]], K, xp, device),
        "T_zeroed": row["T_maxval"] <= thresholds["T_min_snr"],
        "T_poor": row["T_corruption"] >= thresholds["temporal_corrupt_thresh"],
        "S_tiny": ((xp.maximum(row["S_area_1"], row["S_smooth_area_1"]) <= thresholds["size_lower_limit"])
                   | (row["S_smooth_area_1"] == 0)),
        "S_huge": (row["S_area_2"] / xp.clip(row["S_eccent"] - 2.0, min=1.0)) >= thresholds["size_upper_limit"],
        "S_poor": row["S_corruption"] >= thresholds["spatial_corrupt_thresh"],
        "S_eccent": row["S_eccent"] >= thresholds["eccent_thresh"],
        "ST_spurious": ((row["ST2_index_4"] <= thresholds["low_ST_index_thresh"])
                        | (row["ST_corr_3"] < thresholds["low_ST_corr_thresh"])) if check_st
                       else xp.zeros((K,), dtype=xp.bool, device=device),
    }
    is_attr_bad = xp.stack([flags[name] for name in RULE_NAMES])
    kept = _members_flag([g[0] for g in t_groups], K, xp, device)
    is_bad = xp.any(is_attr_bad, axis=0) & ~kept
    return Classification(tuple(range(K)), metrics, is_attr_bad, is_bad, tuple(t_groups))


def _members_flag(indices: list[int], K: int, xp: Any, device: Any) -> Any:
    """Bool (K,) true at ``indices``."""
    chosen = set(indices)
    return xp.asarray([k in chosen for k in range(K)], dtype=xp.bool, device=device)


def _tuning_record(S: Any, S_smooth: Any, T: Any, frame_shape: tuple[int, int], cell_ids: list[int],
                   st: spatiotemporal.SpatioTemporalInputs) -> Classification:
    """Hyperparameter-tuning record (§7.5): all 30 metrics (ST included), nobody eliminated."""
    xp, device = backend.get_namespace_and_device(S)
    K = S.shape[1]
    metrics = quality_metrics(S, S_smooth, T, frame_shape, st=st)
    return Classification(tuple(cell_ids), metrics, xp.zeros((len(RULE_NAMES), K), dtype=xp.bool, device=device),
                          xp.zeros((K,), dtype=xp.bool, device=device), ())


# ----------------------------------------------------------------------------------------------------------------
# §7.1 the loop


@dataclass(frozen=True)
class RefinementResult:
    """Output of :func:`refine`. Arrays are in the inputs' namespace and device.

    Attributes
    ----------
    S : (P, K) float32 — refined images (the smoothed ones when ``smooth_S``), columns max 1.
    T : (K, n) float32 — refinement traces (the final regression re-estimates them).
    S_smooth : (P, K) float32 — smoothed images (normalised), e.g. for the FRR l1 penalty.
    cell_ids : tuple of int — index of each kept cell among the initial cells.
    classifications : tuple of :class:`Classification` — one per iteration that ran quality control (or the
        tuning record), in iteration order.
    metrics : dict name -> (K,) float64 — the last record's metrics of the kept cells (EXTRACT's ``cellcheck``);
        empty when no record was made.
    S_bad : (P, Kb) float32 and T_bad : (Kb, n) float32 — eliminated cells, most recent iteration first (the
        reference's order), within an iteration in index order.
    bad_cell_ids : tuple of int — initial index of each eliminated cell; bad_rules : tuple of str — the rule that
        eliminated it (first true rule in :data:`RULE_NAMES` order).
    S_change, T_change : (K, max_iter) float32 — relative change of each kept cell's image / trace per iteration
        (zeros for iterations not run).
    iterations : int — iterations started (including the one that stopped on zero cells, as the reference).
    converged_early : bool — stopped on ``TOL_main`` (the reference then skips the final regression, spec §13 item 2).
    stop_reason : str — ``"max_iter"``, ``"converged"``, ``"no_cells"`` or ``"hyperparameter_tuning"``.
    """

    S: Any
    T: Any
    S_smooth: Any
    cell_ids: tuple[int, ...]
    classifications: tuple[Classification, ...]
    metrics: dict[str, Any]
    S_bad: Any
    T_bad: Any
    bad_cell_ids: tuple[int, ...]
    bad_rules: tuple[str, ...]
    S_change: Any
    T_change: Any
    iterations: int
    converged_early: bool
    stop_reason: str


def _relative_change(new: Any, old: Any, axis: int) -> Any:
    xp = backend.get_namespace(new)
    return _matlab_divide(xp.sqrt(xp.sum((new - old) ** 2, axis=axis)), xp.sqrt(xp.sum(old * old, axis=axis)), xp)


def _nanmax_below(values: Any, tol: float) -> bool:
    """MATLAB ``max(values) < tol`` (NaN ignored; all NaN is not below)."""
    xp = backend.get_namespace(values)
    finite = values[~xp.isnan(values)]
    return finite.shape[0] > 0 and float(xp.max(finite)) < tol


def _keep_columns(a: Any, keep: Any, axis: int) -> Any:
    xp = backend.get_namespace(a)
    return xp.take(a, xp.nonzero(keep)[0], axis=axis)


@dataclass(frozen=True)
class RefineSettings:
    """Settings of the refinement loop (spec §7.1), by EXTRACT config name; built once per run by the pipeline.

    ``thresholds`` holds ``cfg.thresholds`` by name, size limits as multiples of ``pi r^2`` (as in the config);
    ``tiling`` and ``early_convergence_check`` are the Python settings of the same names.
    """

    max_iter: int
    max_iter_T: int
    max_iter_S: int
    adaptive_kappa: int
    adaptive_kappa_filter: bool
    l1_penalty_factor: float
    smooth_T: bool
    smooth_S: bool
    low_cell_area_flag: bool
    pre_mask_on: bool
    pre_mask_radius: float
    num_iter_stop_quality_checks: frozenset[int]
    hyperparameter_tuning_flag: bool
    TOL_main: float
    thresholds: Mapping[str, float]
    tiling: str
    early_convergence_check: bool

    @classmethod
    def from_config(cls, cfg: Any) -> RefineSettings:
        """The settings of a resolved :class:`~nwb_extract.config.ExtractConfig`."""
        return cls(
            max_iter=int(cfg.max_iter), max_iter_T=cfg.max_iter_T, max_iter_S=cfg.max_iter_S,
            adaptive_kappa=cfg.adaptive_kappa, adaptive_kappa_filter=cfg.adaptive_kappa_filter,
            l1_penalty_factor=cfg.l1_penalty_factor, smooth_T=cfg.smooth_T, smooth_S=cfg.smooth_S,
            low_cell_area_flag=cfg.low_cell_area_flag, pre_mask_on=cfg.pre_mask_on,
            pre_mask_radius=cfg.pre_mask_radius,
            num_iter_stop_quality_checks=frozenset(int(i) for i in cfg.num_iter_stop_quality_checks),
            hyperparameter_tuning_flag=cfg.hyperparameter_tuning_flag, TOL_main=cfg.TOL_main,
            thresholds=MappingProxyType(cfg.thresholds.to_dict()), tiling=cfg.python.tiling,
            early_convergence_check=cfg.python.early_convergence_check)

    def pixel_thresholds(self, radius: float) -> dict[str, float]:
        """:attr:`thresholds` with the size limits turned from multiples of ``pi r^2`` into pixels (spec §2.2)."""
        values = dict(self.thresholds)
        area = math.pi * radius * radius
        values["size_lower_limit"] = float(values["size_lower_limit"]) * area
        values["size_upper_limit"] = float(values["size_upper_limit"]) * area
        return values


@dataclass(frozen=True)
class _LoopConstants:
    """What one :func:`refine` call fixes: settings, geometry, noise level, thresholds in pixels and the solvers
    (names and keyword arguments) of the T- and S-steps."""

    settings: RefineSettings
    frame_shape: tuple[int, int]
    radius: float
    kappa: float
    thresholds: dict[str, float]
    mask_radius: int
    t_solver: str
    s_solver: str
    t_kwargs: dict[str, Any]
    s_kwargs: dict[str, Any]


def _loop_constants(settings: RefineSettings, frame_shape: tuple[int, int], radius: float,
                    kappa: float) -> _LoopConstants:
    t_solver = "fp_solve_adaptive" if settings.adaptive_kappa == 2 else "fp_solve_admm"
    s_solver = "fp_solve_adaptive_filter" if settings.adaptive_kappa_filter else "fp_solve_admm"
    steps = dict(frame_shape=frame_shape, radius=radius, tiling=settings.tiling)
    early = {"check_from_start": True} if settings.early_convergence_check else {}
    return _LoopConstants(
        settings=settings, frame_shape=frame_shape, radius=radius, kappa=kappa,
        thresholds=settings.pixel_thresholds(radius), mask_radius=matlab_round(radius), t_solver=t_solver,
        s_solver=s_solver, t_kwargs={**steps, **(early if t_solver == "fp_solve_admm" else {})},
        s_kwargs={**steps, **(early if s_solver == "fp_solve_admm" else {})})


@dataclass
class _LoopState:
    """The cells as the loop changes them: images, smoothed images, traces, initial ids, per-iteration relative
    changes (K, max_iter), fixed masks, quality-control records and the eliminated cells (newest first)."""

    S: Any
    T: Any
    S_smooth: Any
    cell_ids: list[int]
    S_change: Any
    T_change: Any
    pre_mask: Any
    records: list[Classification] = field(default_factory=list)
    bad_S: list[Any] = field(default_factory=list)
    bad_T: list[Any] = field(default_factory=list)
    bad_ids: list[int] = field(default_factory=list)
    bad_rules: list[str] = field(default_factory=list)


def refine(S: Any, T: Any, Mt: Any, settings: RefineSettings, *, radius: float, kappa: float,
           frame_shape: tuple[int, int]) -> RefinementResult:
    """EXTRACT's cell refinement (spec §7.1): alternate robust T- and S-steps, smooth, check quality, merge and
    eliminate, for ``max_iter`` iterations or until ``TOL_main``.

    Per iteration: T-step (:func:`tiled.solve_T`, ``fp_solve_adaptive`` when ``adaptive_kappa == 2`` else
    ``fp_solve_admm``, l1 penalty when ``l1_penalty_factor > 1e-6``), optional ``smooth_T``; masks
    (:func:`make_mask` of ``S_smooth`` by ``round(radius)``, or the fixed ``pre_mask_on`` masks); S-step
    (:func:`tiled.solve_S`); ``S_smooth``; then, unless the iteration is in ``num_iter_stop_quality_checks``,
    :func:`remove_redundant`, merging of trace duplicates, elimination, ``S <- S_smooth`` (``smooth_S``) and the
    convergence test. With ``hyperparameter_tuning_flag`` the loop stops after the first S-step with a tuning record.

    Parameters
    ----------
    S : array (P, K) float32 — initial images (columns max 1), row-major pixels of ``frame_shape``.
    T : array (K, n) float32 — initial traces.
    Mt : array (n, P) float32 — the preprocessed (downsampled) movie, frames x pixels.
    settings : :class:`RefineSettings` — e.g. ``RefineSettings.from_config(cfg)``.
    radius : float — refined ``avg_cell_radius`` in pixels (:func:`estimate_radius`).
    kappa : float — ``kappa_std_ratio * noise std`` (§2.2).
    frame_shape : (h, w).

    Returns
    -------
    RefinementResult
    """
    xp, device = backend.get_namespace_and_device(S, T, Mt)
    frame_shape = _check_frame_shape(S, frame_shape)
    constants = _loop_constants(settings, frame_shape, radius, kappa)
    K0, max_iter = S.shape[1], settings.max_iter
    pre_mask = make_mask(S, frame_shape, settings.pre_mask_radius, threshold=0.0) if settings.pre_mask_on else None
    state = _LoopState(S=S, T=T, S_smooth=S, cell_ids=list(range(K0)), pre_mask=pre_mask,
                       S_change=xp.zeros((K0, max_iter), dtype=xp.float32, device=device),
                       T_change=xp.zeros((K0, max_iter), dtype=xp.float32, device=device))
    iterations, stop = 0, "max_iter"
    for it in range(max_iter):
        iterations = it + 1
        if state.S.shape[1] == 0:
            stop = "no_cells"
            break
        reason = _iterate(state, Mt, constants, it)
        if reason is not None:
            stop = reason
            break
    return _refinement_result(state, iterations, stop)


def _iterate(state: _LoopState, Mt: Any, constants: _LoopConstants, it: int) -> str | None:
    """Iteration ``it`` (0-based) of spec §7.1 on ``state``; the stop reason when the loop ends here, else None."""
    settings = constants.settings
    s_step = _alternate(state, Mt, constants, it)
    iterations, max_iter = it + 1, settings.max_iter
    skip_checks = settings.num_iter_stop_quality_checks
    tuning = settings.hyperparameter_tuning_flag or (iterations in skip_checks and iterations == max_iter)
    st = (spatiotemporal.inputs_from_s_step(s_step, Mt, constants.radius)
          if tuning or st_enabled(constants.thresholds) else None)
    if settings.hyperparameter_tuning_flag:
        state.records.append(_tuning_record(state.S, state.S_smooth, state.T, constants.frame_shape,
                                            state.cell_ids, st))
        return "hyperparameter_tuning"
    if iterations in skip_checks:
        if iterations == max_iter:
            state.records.append(_tuning_record(state.S, state.S_smooth, state.T, constants.frame_shape,
                                                state.cell_ids, st))
        return None
    _quality_control(state, constants, st)
    if settings.smooth_S:
        state.S = state.S_smooth
    if (it > 0 and state.S.shape[1] > 0 and _nanmax_below(state.S_change[:, it], settings.TOL_main)
            and _nanmax_below(state.T_change[:, it], settings.TOL_main)):
        return "converged"
    return None


def _alternate(state: _LoopState, Mt: Any, constants: _LoopConstants, it: int) -> Any:
    """The T-step (with ``smooth_T``) and the S-step of iteration ``it``, recording the relative changes in column
    ``it``; returns the S-step result (:class:`tiled.SStepResult`)."""
    xp = backend.get_namespace(Mt)
    settings = constants.settings
    lam = (l1_lambda(state.S, state.T, state.S_smooth, settings.l1_penalty_factor)
           if settings.l1_penalty_factor > L1_MIN_FACTOR else None)
    T_before = state.T
    T = solve_T(state.T, state.S, Mt, constants.kappa, settings.max_iter_T, solver=constants.t_solver, lam=lam,
                **constants.t_kwargs)
    if settings.smooth_T:
        T = smooth_traces(T)
    state.T = T
    state.T_change[:, it] = xp.astype(_relative_change(T, T_before, axis=1), xp.float32)
    mask = (state.pre_mask if state.pre_mask is not None
            else make_mask(state.S_smooth, constants.frame_shape, constants.mask_radius))
    S_before = state.S
    s_step = solve_S(state.S, T, Mt, mask, constants.kappa, settings.max_iter_S, solver=constants.s_solver,
                     **constants.s_kwargs)
    state.S = s_step.S
    state.S_smooth = _smoothed(state.S, constants.frame_shape, constants.radius, settings.low_cell_area_flag)
    state.S_change[:, it] = xp.astype(_relative_change(state.S, S_before, axis=0), xp.float32)
    return s_step


def _quality_control(state: _LoopState, constants: _LoopConstants, st: Any) -> None:
    """Spec §7.2-7.4 on ``state``: record the classification, merge trace duplicates, drop eliminated cells."""
    record = dataclasses.replace(
        remove_redundant(state.S, state.S_smooth, state.T, constants.frame_shape, constants.thresholds, st=st),
        cell_ids=tuple(state.cell_ids))
    state.records.append(record)
    if record.merge_groups:
        state.S = update_merged_images(state.S, state.T, record.merge_groups)
        state.S_smooth = _resmooth_merged(state.S, state.S_smooth, constants.frame_shape,
                                          [g[0] for g in record.merge_groups])
    rules = record.rules()
    if any(rule is not None for rule in rules):
        _eliminate(state, record.is_bad, rules)


def _eliminate(state: _LoopState, bad: Any, rules: tuple[str | None, ...]) -> None:
    """Move the ``bad`` cells (bool (K,)) of ``state`` to the front of the eliminated ones, with their rules."""
    keep = ~bad
    eliminated = [k for k, rule in enumerate(rules) if rule is not None]
    state.bad_S.insert(0, _keep_columns(state.S, bad, 1))
    state.bad_T.insert(0, _keep_columns(state.T, bad, 0))
    state.bad_ids[:0] = [state.cell_ids[k] for k in eliminated]
    state.bad_rules[:0] = [rules[k] for k in eliminated]
    state.S, state.S_smooth = _keep_columns(state.S, keep, 1), _keep_columns(state.S_smooth, keep, 1)
    state.T = _keep_columns(state.T, keep, 0)
    state.S_change, state.T_change = _keep_columns(state.S_change, keep, 0), _keep_columns(state.T_change, keep, 0)
    if state.pre_mask is not None:
        state.pre_mask = _keep_columns(state.pre_mask, keep, 1)
    state.cell_ids = [c for k, c in enumerate(state.cell_ids) if rules[k] is None]


def _refinement_result(state: _LoopState, iterations: int, stop: str) -> RefinementResult:
    """The :class:`RefinementResult` of a finished loop; metrics of the kept cells from the last record."""
    xp, device = backend.get_namespace_and_device(state.S)
    S, T = state.S, state.T
    n, P = T.shape[1], S.shape[0]
    metrics = {}
    if state.records:
        last = state.records[-1]
        kept_now = [last.cell_ids.index(c) for c in state.cell_ids]
        columns = xp.asarray(kept_now, dtype=xp.int64, device=device)
        metrics = {name: xp.take(last.metrics[i, :], columns) for i, name in enumerate(METRIC_NAMES)}
    return RefinementResult(
        S=S, T=T, S_smooth=state.S_smooth, cell_ids=tuple(state.cell_ids), classifications=tuple(state.records),
        metrics=metrics,
        S_bad=xp.concat(state.bad_S, axis=1) if state.bad_S else xp.zeros((P, 0), dtype=S.dtype, device=device),
        T_bad=xp.concat(state.bad_T, axis=0) if state.bad_T else xp.zeros((0, n), dtype=T.dtype, device=device),
        bad_cell_ids=tuple(state.bad_ids), bad_rules=tuple(state.bad_rules), S_change=state.S_change,
        T_change=state.T_change, iterations=iterations, converged_early=stop == "converged", stop_reason=stop)


def _smoothed(S: Any, frame_shape: tuple[int, int], radius: float, low_cell_area_flag: bool) -> Any:
    """Normalised ``S_smooth`` of the loop: median smoothing, or Gaussian of radius ``round(r/3)``."""
    if low_cell_area_flag:
        return normalize_to_one(smooth_images(S, frame_shape, method="gaussian", radius=matlab_round(radius / 3)))
    return normalize_to_one(smooth_images(S, frame_shape, method="median"))


def _resmooth_merged(S: Any, S_smooth: Any, frame_shape: tuple[int, int], kept: list[int]) -> Any:
    """``S_smooth`` with the merged cells' columns re-smoothed (median, as the reference) and renormalised."""
    xp, device = backend.get_namespace_and_device(S)
    columns = xp.asarray(kept, dtype=xp.int64, device=device)
    fresh = smooth_images(xp.take(S, columns, axis=1), frame_shape, method="median")
    out = xp.asarray(S_smooth, copy=True)
    for j, k in enumerate(kept):
        out[:, k] = fresh[:, j]
    return normalize_to_one(out)
