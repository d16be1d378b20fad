"""Cell refinement: the alternating T/S loop with quality control, merging and elimination (spec §7.1, §2.2).

Contents
--------
* §2.2 helpers: :func:`estimate_avg_radius`, :func:`estimate_radius`, :func:`make_mask`, :func:`smooth_images`,
  :func:`smooth_traces` (the shared footprint helpers are in :mod:`footprints`);
* §7.1 the loop: :func:`refine` with a :class:`RefineSettings` -> :class:`RefinementResult`. Each iteration's
  quality control (§7.2-7.5: metrics, elimination rules, duplicate groups, merging, tuning records) is
  :mod:`quality`.

Shapes follow the spec: ``S`` (P, K) images (one column per cell, row-major pixels ``p = row * w + col`` of
``frame_shape = (h, w)``), ``T`` (K, n) traces, ``Mt`` (n, P) movie. Arrays stay in the inputs' namespace and
device; only small bookkeeping (bounding boxes, the elimination decisions) goes to the host.

Column order. The reference re-orders the columns of its classification records (cells kept first, then the
eliminated ones). Every array here stays in input order; :attr:`~quality.Classification.cell_ids` says which
initial cell each column is.

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

from nwb_extract.engine import backend, spatiotemporal
from nwb_extract.engine.footprints import (AREA_THRESHOLD, cell_area, check_frame_shape, normalize_to_one, to_columns,
                                           to_stack)
from nwb_extract.engine.matlab import matlab_divide, matlab_round
from nwb_extract.engine.morphology import dilate, disk_footprint, gaussian_kernel, grown_range
from nwb_extract.engine.quality import (METRIC_NAMES, Classification, remove_redundant, st_enabled, tuning_record,
                                        update_merged_images)
from nwb_extract.engine.robust import l1_lambda
from nwb_extract.engine.tiled import solve_S, solve_T
from nwb_extract.errors import InputError
from nwb_extract.progress import SILENT, Reporter

#: Margin (px) around the ``S > 0.1`` bounding box in the median smoothing, and its window side.
SMOOTH_BOX_MARGIN = 2
SMOOTH_MEDIAN_SIZE = 5
#: ``l1_penalty_factor`` above which the T-step gets an l1 penalty (§6.5).
L1_MIN_FACTOR = 1e-6


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
    frame_shape = check_frame_shape(S, frame_shape)
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
    frame_shape = check_frame_shape(S, frame_shape)
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
    return matlab_divide(xp.sqrt(xp.sum((new - old) ** 2, axis=axis)), xp.sqrt(xp.sum(old * old, axis=axis)), xp)


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
    ``tiling`` and ``early_convergence_check`` are the Python settings of the same names. ``progress`` receives
    the ``refinement`` stage's events (one per iteration, with the cell count).
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
    progress: Reporter = field(default=SILENT, compare=False, repr=False)

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
    frame_shape = check_frame_shape(S, frame_shape)
    constants = _loop_constants(settings, frame_shape, radius, kappa)
    K0, max_iter = S.shape[1], settings.max_iter
    pre_mask = make_mask(S, frame_shape, settings.pre_mask_radius, threshold=0.0) if settings.pre_mask_on else None
    state = _LoopState(S=S, T=T, S_smooth=S, cell_ids=list(range(K0)), pre_mask=pre_mask,
                       S_change=xp.zeros((K0, max_iter), dtype=xp.float32, device=device),
                       T_change=xp.zeros((K0, max_iter), dtype=xp.float32, device=device))
    iterations, stop = 0, "max_iter"
    settings.progress("refinement", 0, max_iter, f"{K0} cells", "iterations")
    for it in range(max_iter):
        iterations = it + 1
        if state.S.shape[1] == 0:
            stop = "no_cells"
            break
        reason = _iterate(state, Mt, constants, it)
        if reason is not None:
            stop = reason
            break
        if iterations < max_iter:  # the last iteration reports with the stop reason below
            settings.progress("refinement", iterations, max_iter, f"{state.S.shape[1]} cells", "iterations")
    settings.progress("refinement", iterations, iterations, f"stopped: {stop}, {state.S.shape[1]} cells",
                      "iterations")
    return _refinement_result(state, iterations, stop)


def _iterate(state: _LoopState, Mt: Any, constants: _LoopConstants, it: int) -> str | None:
    """Iteration ``it`` (0-based) of spec §7.1 on ``state``; the stop reason when the loop ends here, else None."""
    settings = constants.settings
    iterations, max_iter = it + 1, settings.max_iter
    skip_checks = settings.num_iter_stop_quality_checks
    tuning = settings.hyperparameter_tuning_flag or (iterations in skip_checks and iterations == max_iter)
    st_needed = tuning or st_enabled(constants.thresholds)
    s_step = _alternate(state, Mt, constants, it, projections=st_needed)
    st = spatiotemporal.inputs_from_s_step(s_step, Mt, constants.radius) if st_needed else None
    if settings.hyperparameter_tuning_flag:
        state.records.append(tuning_record(state.S, state.S_smooth, state.T, constants.frame_shape,
                                            state.cell_ids, st))
        return "hyperparameter_tuning"
    if iterations in skip_checks:
        if iterations == max_iter:
            state.records.append(tuning_record(state.S, state.S_smooth, state.T, constants.frame_shape,
                                                state.cell_ids, st))
        return None
    _quality_control(state, constants, st)
    if settings.smooth_S:
        state.S = state.S_smooth
    if (it > 0 and state.S.shape[1] > 0 and _nanmax_below(state.S_change[:, it], settings.TOL_main)
            and _nanmax_below(state.T_change[:, it], settings.TOL_main)):
        return "converged"
    return None


def _alternate(state: _LoopState, Mt: Any, constants: _LoopConstants, it: int, *, projections: bool) -> Any:
    """The T-step (with ``smooth_T``) and the S-step of iteration ``it``, recording the relative changes in column
    ``it``; returns the S-step result (:class:`tiled.SStepResult`; its projections and surround images only with
    ``projections``: the spatio-temporal metrics are their only reader)."""
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
                     projections=projections, **constants.s_kwargs)
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
