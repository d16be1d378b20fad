"""Quality control of refinement: the 30 metrics, the elimination rules and duplicate merging (spec §7.2-7.5).

Each refinement iteration classifies the current cells: :func:`quality_metrics` computes the 30 metrics of §7.2
(the 18 spatio-temporal rows through :mod:`spatiotemporal`, §7.6), :func:`remove_redundant` applies the 9
elimination rules of §7.3 and finds the trace- and image-duplicate groups of §7.4 (:func:`matching.find_conncomp`),
and :func:`update_merged_images` merges each trace-duplicate group into its kept member (§7.4). The loop itself
is :mod:`refine`.

Public API
----------
* :data:`METRIC_NAMES` (the 30 rows, in EXTRACT's fixed order), :func:`quality_metrics` and the single metrics
  :func:`trace_snr`, :func:`temporal_corruption`, :func:`spatial_corruption`, :func:`shape_metrics`,
  :func:`trace_mixing` (§7.2);
* :data:`RULE_NAMES`, :func:`st_enabled`, :func:`remove_redundant` -> :class:`Classification` (§7.3, §7.4);
* :func:`tuning_record` — the hyperparameter-tuning record, nobody eliminated (§7.5);
* :func:`update_merged_images` (§7.4).

Shapes follow the spec: ``S`` (P, K) images (one column per cell, row-major pixels ``p = row * w + col`` of
``frame_shape = (h, w)``), ``T`` (K, n) traces. Arrays stay in the inputs' namespace and device; only the K x K
adjacency components and the elimination decisions go to the host. Every array stays in input order;
:attr:`Classification.cell_ids` says which initial cell each column is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from nwb_extract.engine import backend, noise, spatiotemporal
from nwb_extract.engine.footprints import cell_area, check_frame_shape, normalize_to_one, to_stack
from nwb_extract.engine.matching import find_conncomp, pearson_columns
from nwb_extract.engine.matlab import matlab_divide
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
#: Threshold of the image whose largest component gives eccentricity and circularity.
SHAPE_THRESHOLD = 0.3
#: Image value above which a pixel counts in the spatial-overlap constraint of trace duplicates.
OVERLAP_THRESHOLD = 0.05
#: The 18 spatio-temporal rows of METRIC_NAMES: computed only when the ST check is on or in tuning records (else 1).
ST_METRIC_NAMES = tuple(name for name in METRIC_NAMES if name.startswith("ST"))


# ----------------------------------------------------------------------------------------------------------------
# §7.2 metrics


def trace_snr(T: Any) -> Any:
    """``T_maxval``: max over frames of ``medfilt1(T_k, 3)`` / (sqrt 2 x noise std of ``T_k``). (K, n) -> (K,)."""
    xp = backend.get_namespace(T)
    peak = xp.max(backend.median_filter(T, (1, 3), mode="constant"), axis=1)
    return matlab_divide(peak, math.sqrt(2.0) * noise.estimate_noise_std(T, axis=1), xp)


def temporal_corruption(T: Any) -> Any:
    """``T_corruption``: mean of ``|T - Tm| / max(Tm, T)`` over the frames where ``Tm > 0.3 max(Tm)``,
    ``Tm = medfilt1(T, 3)``; NaN when no frame qualifies. (K, n) -> (K,)."""
    xp = backend.get_namespace(T)
    median3 = backend.median_filter(T, (1, 3), mode="constant")
    ratio = matlab_divide(xp.abs(T - median3), xp.maximum(median3, T), xp)
    valid = median3 > 0.3 * xp.max(median3, axis=1, keepdims=True)
    count = xp.sum(xp.astype(valid, T.dtype), axis=1)
    total = xp.sum(xp.where(valid, ratio, xp.zeros_like(ratio)), axis=1)
    return matlab_divide(total, count, xp)


def spatial_corruption(S: Any, frame_shape: tuple[int, int]) -> Any:
    """``S_corruption``: local / global normalised variance inside ``S > 1e-3`` (spec §7.2). (P, K) -> (K,).

    ``v_global = sum_I (S - mu)^2 / max(mu, 0.01) / |I|``; ``v_local`` the same with the 4 x 4 box mean
    (offsets -1..+2, replicate padding) in place of ``mu``.
    """
    xp = backend.get_namespace(S)
    frame_shape = check_frame_shape(S, frame_shape)
    local_mean = _box_means_near_support(S, frame_shape)
    # only the pixels inside some image add to the sums: the others add exact zeros to each column's running sum
    rows = xp.nonzero(xp.any(S > 1e-3, axis=1))[0]
    S, local_mean = xp.take(S, rows, axis=0), xp.take(local_mean, rows, axis=0)
    inside = S > 1e-3
    count = xp.astype(xp.count_nonzero(inside, axis=0), S.dtype)
    zero = xp.zeros_like(S)
    mean = matlab_divide(xp.sum(xp.where(inside, S, zero), axis=0), count, xp)
    global_dev = xp.where(inside, (S - mean[None, :]) ** 2, zero) / xp.clip(mean, min=0.01)[None, :]
    local_dev = xp.where(inside, (S - local_mean) ** 2 / xp.clip(local_mean, min=0.01), zero)
    v_global = matlab_divide(xp.sum(global_dev, axis=0), count, xp)
    v_local = matlab_divide(xp.sum(local_dev, axis=0), count, xp)
    return matlab_divide(v_local, v_global, xp)


#: Side of the box of :func:`spatial_corruption`'s local mean and its reach before / after a pixel (MATLAB's
#: anchor of an even-length ``imfilter`` kernel: offsets -1..+2).
_BOX, _BOX_BEFORE, _BOX_AFTER = 4, 1, 2


def _box_means_near_support(S: Any, frame_shape: tuple[int, int]) -> Any:
    """4 x 4 box means of each image (offsets -1..+2, replicate padding), (P, K) -> (P, K), exact on the image's
    non-zero pixels; elsewhere 0 or values :func:`spatial_corruption` does not use.

    Each image is filtered on its own crop: the bounding box of its non-zero pixels widened by the box's reach (one
    pixel before, two after; clipped at the frame). Every box around a non-zero pixel then lies in the crop, or
    crosses the frame's edge where the crop's edge is the frame's, so its mean is the full-frame filter's, value for
    value, at a fraction of the cost (a cell covers a few hundred of the frame's pixels).
    """
    xp, device = backend.get_namespace_and_device(S)
    h, w = frame_shape
    K = S.shape[1]
    cube = xp.reshape(S, (h, w, K))
    nonzero = cube != 0
    rows_used, cols_used = xp.any(nonzero, axis=1), xp.any(nonzero, axis=0)  # (h, K), (w, K)
    spans = [backend.to_numpy(xp.stack(_first_last(used, xp))) for used in (rows_used, cols_used)]
    box = xp.full((_BOX, _BOX), 1.0 / (_BOX * _BOX), dtype=S.dtype, device=device)
    means = xp.zeros((h, w, K), dtype=S.dtype, device=device)
    for k in range(K):
        (first_row, last_row), (first_col, last_col) = (int(spans[0][0, k]), int(spans[0][1, k])), \
            (int(spans[1][0, k]), int(spans[1][1, k]))
        if last_row < first_row:  # an all-zero image
            continue
        r0, r1 = max(first_row - _BOX_BEFORE, 0), min(last_row + _BOX_AFTER + 1, h)
        c0, c1 = max(first_col - _BOX_BEFORE, 0), min(last_col + _BOX_AFTER + 1, w)
        means[r0:r1, c0:c1, k] = backend.correlate(cube[r0:r1, c0:c1, k], box, mode="nearest", origin=(-1, -1))
    return xp.reshape(means, (h * w, K))


def _first_last(used: Any, xp: Any) -> tuple[Any, Any]:
    """First and last true index along axis 0 of a bool (n, K) array; (n, -1) for a column with none."""
    n = used.shape[0]
    index = xp.arange(n, device=used.device)[:, None]
    first = xp.min(xp.where(used, index, xp.full_like(index, n)), axis=0)
    last = xp.max(xp.where(used, index, xp.full_like(index, -1)), axis=0)
    return first, last


def shape_metrics(S: Any, frame_shape: tuple[int, int]) -> tuple[Any, Any]:
    """``(S_eccent, S_circularity)`` of the largest 8-connected component of ``S_k > 0.3`` (spec §7.2).

    Eccentricity = major / minor axis length, circularity = ``4 pi area / perimeter^2`` (MATLAB ``regionprops``,
    :func:`backend.largest_component_shape`); ``inf`` for an image without such a component. Both float64 (K,).
    """
    xp = backend.get_namespace(S)
    frame_shape = check_frame_shape(S, frame_shape)
    area, perimeter, major, minor = backend.largest_component_shape(to_stack(S > SHAPE_THRESHOLD, frame_shape))
    eccent = matlab_divide(major, minor, xp)
    circularity = matlab_divide(4.0 * math.pi * area, perimeter * perimeter, xp)
    inf = xp.full_like(area, math.inf)
    return xp.where(xp.isnan(eccent), inf, eccent), xp.where(xp.isnan(circularity), inf, circularity)


def _max_off_diagonal(C: Any) -> Any:
    """Column maxima of a K x K correlation matrix with its diagonal replaced by 0 (EXTRACT's ``C - diag(C)``)."""
    xp, device = backend.get_namespace_and_device(C)
    eye = xp.eye(C.shape[0], dtype=xp.bool, device=device)
    return xp.max(xp.where(eye, xp.zeros_like(C), C), axis=0)


def trace_mixing(T: Any, S_smooth: Any, smooth_corr: Any = None) -> Any | None:
    """``X = T^T corr(S_smooth)`` (n, K): each trace mixed with its spatially correlated neighbours (spec §7.4).

    ``smooth_corr`` is :func:`smooth_correlation` of ``S_smooth`` when the caller has it. Returns None when a
    smoothed image is constant (e.g. all zero): MATLAB's ``corr`` is then NaN in that row and column, the product
    is NaN everywhere, and the reference's trace-duplicate detection and ``T_dup_val`` are silently off for every
    cell of that iteration (reference quirk §5 item 3; reproduced).
    """
    xp = backend.get_namespace(T, S_smooth)
    if bool(xp.any(xp.max(S_smooth, axis=0) == xp.min(S_smooth, axis=0))):
        return None
    corr = smooth_correlation(S_smooth) if smooth_corr is None else smooth_corr
    return xp.astype(xp.matrix_transpose(T), xp.float64) @ corr


def smooth_correlation(S_smooth: Any, *, overwrite: bool = False) -> Any:
    """Pearson correlation of the smoothed images, float64 (K, K). Its float32 cast is ``pearson_columns`` of a
    float32 ``S_smooth`` value for value (both are computed in float64 from the same values). ``overwrite``: a
    float64 ``S_smooth`` that the caller gives up is centred in place."""
    xp = backend.get_namespace(S_smooth)
    return pearson_columns(S_smooth, xp=xp, dtype=xp.float64, overwrite=overwrite)


def quality_metrics(S: Any, S_smooth: Any, T: Any, frame_shape: tuple[int, int], *,
                    mixing: Any | None = None, smooth_corr: Any | None = None,
                    st: spatiotemporal.SpatioTemporalInputs | None = None) -> Any:
    """The 30 metrics of §7.2 for every cell, rows in :data:`METRIC_NAMES` order; NaN set to 0.

    Parameters
    ----------
    S : array (P, K) float32 — images; S_smooth : array (P, K) — smoothed images (normalised);
    T : array (K, n) float32 — traces; frame_shape : (h, w).
    mixing : array (n, K), optional — :func:`trace_mixing` when the caller has it (None: computed here).
    smooth_corr : array (K, K), optional — :func:`smooth_correlation` when the caller has it (None: computed here).
    st : :class:`~nwb_extract.engine.spatiotemporal.SpatioTemporalInputs`, optional — when given, the 18 ST rows
        are computed (:func:`~nwb_extract.engine.spatiotemporal.spatiotemporal_metrics`); else they are 1 (the
        disabled value).

    Returns
    -------
    array (30, K), float64
    """
    xp, device = backend.get_namespace_and_device(S, S_smooth, T)
    K = S.shape[1]
    if smooth_corr is None:
        smooth_corr = smooth_correlation(S_smooth)
    if mixing is None:
        mixing = trace_mixing(T, S_smooth, smooth_corr)
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
        "S_max_corr": _max_off_diagonal(xp.astype(smooth_corr, S_smooth.dtype)),
        "S_corruption": spatial_corruption(S, frame_shape),
        "S_eccent": eccent,
        "S_circularity": circularity,
        "T_dup_val": (xp.zeros((K,), dtype=xp.float64, device=device) if mixing is None
                      else _max_off_diagonal(pearson_columns(mixing, xp=xp))),
    }
    ones = xp.ones((K,), dtype=xp.float64, device=device)
    if st is not None:
        st_rows = spatiotemporal.spatiotemporal_metrics(S, T, st, frame_shape)
        rows.update({name: st_rows[i, :] for i, name in enumerate(ST_METRIC_NAMES)})
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
    cell_ids : tuple of int — index of each classified cell among the initial cells given to
        :func:`~nwb_extract.engine.refine.refine`
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
    # one float64 copy of the smoothed images serves both: the image duplicates' Gram products read it, then the
    # correlations centre it in place
    smooth64 = xp.astype(S_smooth, xp.float64)
    s_groups, _ = find_conncomp(smooth64, thresholds["S_dup_corr_thresh"])
    smooth_corr = smooth_correlation(smooth64, overwrite=True)
    del smooth64
    mixing = trace_mixing(T, S_smooth, smooth_corr)
    metrics = quality_metrics(S, S_smooth, T, frame_shape, mixing=mixing, smooth_corr=smooth_corr,
                              st=st if check_st else None)
    row = {name: metrics[i, :] for i, name in enumerate(METRIC_NAMES)}
    t_groups: list[tuple[int, ...]] = []
    if mixing is not None:
        overlap = xp.astype(S > OVERLAP_THRESHOLD, xp.float32)
        t_groups, _ = find_conncomp(mixing, thresholds["T_dup_corr_thresh"],
                                    xp.matrix_transpose(overlap) @ overlap > 0)
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


def tuning_record(S: Any, S_smooth: Any, T: Any, frame_shape: tuple[int, int], cell_ids: list[int],
                   st: spatiotemporal.SpatioTemporalInputs) -> Classification:
    """Hyperparameter-tuning record (§7.5): all 30 metrics (ST included), nobody eliminated."""
    xp, device = backend.get_namespace_and_device(S)
    K = S.shape[1]
    metrics = quality_metrics(S, S_smooth, T, frame_shape, st=st)
    return Classification(tuple(cell_ids), metrics, xp.zeros((len(RULE_NAMES), K), dtype=xp.bool, device=device),
                          xp.zeros((K,), dtype=xp.bool, device=device), ())
