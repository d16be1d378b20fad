"""``extract(movie, config) -> ExtractResult``: EXTRACT's top level (spec §1) and per-partition run (spec §2).

The movie is split into partitions (§1.3); each partition is read once (a rectangular block of all frames),
trimmed of zero edges, preprocessed once, and run through cell finding (§5) or the given footprints (§2.1),
refinement and quality control (§7) and the final robust regression (§8), which produces all three trace kinds.
Partitions are stitched and seam duplicates removed (§1.4).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import array_api_compat
import numpy as np

from nwb_extract._version import ENGINE_VERSION, __version__
from nwb_extract.config import ExtractConfig, primary_trace_kind
from nwb_extract.engine import backend, cellfind, noise, partition, preprocess, refine, traces
from nwb_extract.engine.matlab import matlab_round
from nwb_extract.engine.tiled import solve_T
from nwb_extract.errors import ConfigError, InputError, NotImplementedYetError
from nwb_extract.result import EliminatedCandidates, ExtractResult

log = logging.getLogger(__name__)

#: per-cell keys of the partition results that are not trace kinds
_METRICS_KEY = "quality_metrics"
_REFINEMENT_KEY = "refinement_traces"
_STAGES = ("read", "preprocess", "cellfinding", "refinement", "frr")


def _check_movie(movie: Any) -> tuple[int, int, int]:
    shape = getattr(movie, "shape", None)
    if shape is None or not hasattr(movie, "__getitem__"):
        raise InputError("movie must be an array (frames, rows, cols) or a lazy source with .shape, .dtype and "
                         f"slicing [t0:t1, r0:r1, c0:c1] (e.g. an h5py dataset); got {type(movie).__name__}")
    if len(shape) != 3:
        raise InputError(f"movie must have 3 axes (frames, rows, cols); got shape {tuple(shape)}. For a volumetric "
                         "movie select one plane first; for a single image add a frame axis.")
    n, h, w = (int(s) for s in shape)
    if n < 2 or h < 2 or w < 2:
        raise InputError(f"movie shape {tuple(shape)} is too small: need at least 2 frames and 2 x 2 pixels")
    dtype = np.dtype(str(getattr(movie, "dtype", "float32")).replace("array_api_strict.", ""))
    if dtype.kind not in "fiub":
        raise InputError(f"movie dtype {dtype} is not numeric")
    return n, h, w


def _check_config_arrays(cfg: ExtractConfig, n: int, h: int, w: int) -> None:
    if cfg.reestimate_S_if_downsampled:
        raise NotImplementedYetError(
            "reestimate_S_if_downsampled is broken in the reference EXTRACT (spec §13 item 6) and not ported; "
            "set it to false")
    for name in ("S_init", "movie_mask", "F_per_pixel"):
        value = getattr(cfg, name)
        if value is not None and tuple(value.shape[-2:]) != (h, w):
            raise InputError(f"{name} has frame shape {tuple(value.shape[-2:])} but the movie's frames are {(h, w)}; "
                             "it must follow the movie's stored axis order (rows, cols)")
    if cfg.S_init is not None:
        S = np.clip(np.asarray(cfg.S_init, np.float32), 0, None).reshape(cfg.S_init.shape[0], -1)
        empty = np.flatnonzero(S.max(axis=1) <= 1e-6)
        if empty.size:
            raise InputError(f"S_init footprints {empty.tolist()} are all zero (or negative); remove them")
    if cfg.T_init is not None:
        if cfg.T_init.shape[0] != n:
            raise InputError(f"T_init has {cfg.T_init.shape[0]} frames but the movie has {n}")
        if cfg.downsample_time_by not in (1,):
            raise ConfigError("T_init requires downsample_time_by=1 (spec §13 item 7: the reference never "
                              "downsamples T_init); downsample T_init yourself or drop it")


def _namespace(movie: Any, cfg: ExtractConfig) -> tuple[Any, Any]:
    """Namespace and device to run on: the movie's own for non-NumPy arrays, else the configured backend."""
    if array_api_compat.is_array_api_obj(movie) and not isinstance(movie, np.ndarray):
        return backend.get_namespace_and_device(movie)
    xp = backend.select(cfg.python.backend)
    device = None
    if backend.is_cupy(xp) and cfg.python.device is not None:
        import cupy  # only reached with a GPU

        device = cupy.cuda.Device(int(cfg.python.device))
    return xp, device


def _read_block(movie: Any, n_frames: int, rows: slice, cols: slice, xp: Any, device: Any, chunk: int) -> Any:
    """Frames ``0..n_frames`` of the block ``rows x cols`` as float32 (n, h, w) in ``xp`` on ``device``,
    read in frame chunks (lazy sources are never read whole)."""
    if array_api_compat.is_array_api_obj(movie) and not isinstance(movie, np.ndarray):
        return xp.astype(movie[:n_frames, rows, cols], xp.float32)
    parts = []
    for t0 in range(0, n_frames, chunk):
        block = np.asarray(movie[t0:min(t0 + chunk, n_frames), rows, cols], dtype=np.float32)
        parts.append(backend.from_numpy(block, xp, device))
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)


def _stack_to_S(stack: Any) -> Any:
    """(K, h, w) stack -> (P, K) matrix, row-major pixels."""
    xp = backend.get_namespace(stack)
    return xp.permute_dims(xp.reshape(stack, (stack.shape[0], -1)), (1, 0))


def _S_to_stack(S: Any, frame_shape: tuple[int, int]) -> Any:
    xp = backend.get_namespace(S)
    return xp.reshape(xp.permute_dims(S, (1, 0)), (S.shape[1],) + tuple(frame_shape))


def _masked_median(values: Any, keep: Any, floor: float | None) -> float:
    """Median of ``values`` where ``keep`` (and ``values > floor``); 1e-6 when nothing is left."""
    xp = backend.get_namespace(values)
    sel = xp.ones(values.shape, dtype=xp.bool, device=array_api_compat.device(values)) if keep is None else keep
    if floor is not None:
        sel = sel & (values > floor)
    chosen = values[sel]
    return 1e-6 if chosen.shape[0] == 0 else float(backend.median(chosen))


@dataclass
class _PartitionOutput:
    """One partition's results at full partition resolution (device arrays) plus host bookkeeping."""

    S: Any                      # (h*w, K)
    per_cell: dict[str, Any]    # trace kinds (n, K), quality_metrics (30, K), refinement_traces (n, K)
    images: dict[str, Any]      # summary_image, max_image, F_per_pixel (h, w)
    S_bad: Any                  # (h*w, Kb)
    T_bad: Any                  # (n, Kb)
    bad_rules: tuple[str, ...]
    stop_reason: str
    timings: dict[str, float] = field(default_factory=dict)
    run_info: dict[str, Any] = field(default_factory=dict)


def _run_partition(load_block: Callable[[], tuple[Any, partition.PartitionInputs]],
                   cfg: ExtractConfig) -> _PartitionOutput:
    """Spec §2 on one partition: ``load_block()`` gives its movie ``Y`` (n, h, w) float32 (trimmed of zero edges)
    and its cut config arrays; ``Y`` is dropped as soon as the preprocessed copy exists."""
    Y, inputs = load_block()
    xp, device = backend.get_namespace_and_device(Y)
    timings: dict[str, float] = {}
    n_full, h0, w0 = Y.shape
    dss, dst = preprocess.resolve_downsampling(
        cfg.avg_cell_radius, cfg.avg_event_tau, downsample_space_by=cfg.downsample_space_by,
        downsample_time_by=cfg.downsample_time_by, min_radius_after_downsampling=cfg.min_radius_after_downsampling,
        min_tau_after_downsampling=cfg.min_tau_after_downsampling)
    radius = cfg.avg_cell_radius / dss
    movie_mask, S_init = inputs.movie_mask, inputs.S_init

    t0 = time.perf_counter()
    if dss > 1:
        Y = preprocess.downsample_space(Y, dss)
        if S_init is not None:
            S_init = preprocess.downsample_space(S_init, dss)
        if movie_mask is not None:
            movie_mask = preprocess.downsample_space(xp.astype(movie_mask, xp.float32)[None, ...], dss)[0] > 0.5
    _, h, w = Y.shape
    frame_shape = (h, w)
    if cfg.preprocess:
        Y, F_per_pixel = preprocess.preprocess_movie(
            Y, radius=radius, spatial_highpass_cutoff=cfg.spatial_highpass_cutoff,
            baseline_quantile=cfg.baseline_quantile, skip_dff=cfg.skip_dff, movie_mask=movie_mask,
            remove_background=cfg.remove_background, avg_event_tau=cfg.avg_event_tau,
            medfilt_outlier_pixels=cfg.medfilt_outlier_pixels, second_df=cfg.second_df,
            fix_zero_FOV_strips=cfg.fix_zero_FOV_strips, temporal_denoising=cfg.temporal_denoising)
    elif inputs.F_per_pixel is not None:
        F_per_pixel = inputs.F_per_pixel if dss == 1 else preprocess.downsample_space(inputs.F_per_pixel[None], dss)[0]
    else:
        warnings.warn("preprocess=False and no F_per_pixel given: traces are not divided by a baseline "
                      "(F_per_pixel = 1)", stacklevel=4)
        F_per_pixel = xp.ones(frame_shape, dtype=xp.float32, device=device)
    max_image = xp.max(Y, axis=0)
    M_full = None
    if dst > 1:
        M_full = xp.reshape(Y, (n_full, h * w))
        Y = preprocess.downsample_time(Y, dst)
    n = Y.shape[0]
    Mt = xp.reshape(Y, (n, h * w))
    pixel_ok = None if movie_mask is None else xp.reshape(movie_mask, (-1,))
    timings["preprocess"] = time.perf_counter() - t0

    # §2.1 initialisation
    t0 = time.perf_counter()
    noise_per_pixel = None
    stop_reason = "external init"
    S_trash = T_trash = None
    if S_init is None:
        found = cellfind.find_cells(Y, cfg, radius=radius, movie_mask=movie_mask)
        S, T = found.S, found.T
        summary_image = found.summary_image
        stop_reason = found.stop_reason
        S_trash, T_trash = found.S_trash, found.T_trash
        if cfg.cellfind_filter_type == "none":
            noise_per_pixel = xp.reshape(found.noise_per_pixel, (-1,))
    else:
        S = refine.normalize_to_one(xp.clip(_stack_to_S(S_init), 0.0, None))
        summary_image = xp.max(Y, axis=0)
        if inputs.T_init is None:
            noise_per_pixel = noise.estimate_noise_std(Mt, axis=0)
            sigma_ls = _masked_median(noise_per_pixel, pixel_ok, floor=None)
            T = solve_T(xp.zeros((S.shape[1], n), dtype=xp.float32, device=device), S, Mt, 10.0 * sigma_ls,
                        cfg.max_iter_T, solver="fp_solve_admm", frame_shape=frame_shape, radius=radius,
                        tiling=cfg.python.tiling)
        else:
            T = xp.clip(xp.permute_dims(xp.astype(inputs.T_init, xp.float32), (1, 0)), 0.0, None)
    timings["cellfinding"] = time.perf_counter() - t0

    k = S.shape[1]
    run_info: dict[str, Any] = {"dss": dss, "dst": dst, "n_found": k}
    if k == 0:
        return _empty_partition(frame_shape, (h0, w0), n_full, dss, summary_image, max_image, F_per_pixel,
                                S_trash, T_trash, stop_reason, timings, run_info, cfg)

    # §2.2 radius, noise, kappa
    radius = refine.estimate_radius(S, radius)
    if noise_per_pixel is None:
        noise_per_pixel = noise.estimate_noise_std(Mt, axis=0)
    sigma = _masked_median(noise_per_pixel, pixel_ok, floor=1e-12)
    kappa = cfg.kappa_std_ratio * sigma
    run_info.update(noise_std=sigma, kappa=kappa, avg_cell_radius=radius)

    # §7 refinement and quality control
    t0 = time.perf_counter()
    S_bad = xp.zeros((h * w, 0), dtype=xp.float32, device=device)
    T_bad = xp.zeros((0, n), dtype=xp.float32, device=device)
    bad_rules: tuple[str, ...] = ()
    cell_metrics = None
    option = cfg.trace_output_option
    if cfg.max_iter > 0:
        refined = refine.refine(S, T, Mt, cfg, radius=radius, kappa=kappa, frame_shape=frame_shape)
        S, T = refined.S, refined.T
        S_bad, T_bad, bad_rules = refined.S_bad, refined.T_bad, refined.bad_rules
        cell_metrics = refined.metrics or None
        run_info.update(refinement_iterations=refined.iterations, refinement_stop=refined.stop_reason)
        if refined.converged_early:
            log.info("refinement converged early (TOL_main); the final regression still runs (docs/decisions.md)")
        if cfg.hyperparameter_tuning_flag:
            option = "none"
    timings["refinement"] = time.perf_counter() - t0
    k = S.shape[1]
    if k == 0:
        out = _empty_partition(frame_shape, (h0, w0), n_full, dss, summary_image, max_image, F_per_pixel,
                               S_trash, T_trash, "no cells after refinement", timings, run_info, cfg)
        out.S_bad, out.T_bad, out.bad_rules = _finish_bad(S_bad, T_bad, bad_rules, S_trash, T_trash, F_per_pixel,
                                                          n_full, dst, dss, (h0, w0), frame_shape, cfg)
        out.stop_reason = stop_reason
        return out
    if cell_metrics is None:  # no refinement ran: quality metrics of the given / found cells
        S_smooth = refine.normalize_to_one(refine.smooth_images(S, frame_shape))
        table = refine.quality_metrics(S, S_smooth, T, frame_shape)
        cell_metrics = {name: table[i, :] for i, name in enumerate(refine.METRIC_NAMES)}

    # §8 final robust regression, always run (decision), all three kinds
    t0 = time.perf_counter()
    settings = traces.RegressionSettings(
        kappa=kappa, kappa_std_ratio=cfg.kappa_std_ratio, adaptive_kappa=cfg.adaptive_kappa,
        n_iter=cfg.max_iter_T_final, radius=radius, frame_shape=frame_shape, trace_quantile=cfg.trace_quantile,
        frr_check_every_step=bool(cfg.frr_check_every_step), frr_edge_case_flag=bool(cfg.frr_edge_case_flag),
        kappa_iter_nums=tuple(cfg.kappa_iter_nums) if cfg.kappa_iter_nums is not None else (0.5, 0.7, 0.9),
        max_iter=0, tiling=cfg.python.tiling)
    if dst > 1 and cfg.reestimate_T_if_downsampled:
        full_rate = replace(settings, kappa=kappa * math.sqrt(dst))
        results = traces.regress(M_full, S, traces.interpolate_time(T, n_full), full_rate, option)
        if cfg.smooth_T:
            results = {key: backend.median_filter(v, (1, 3)) for key, v in results.items()}
    else:
        results = traces.regress(Mt, S, T, settings, option)
        if dst > 1:
            results = {key: traces.interpolate_time(v, n_full) for key, v in results.items()}
    T_out = traces.interpolate_time(T, n_full) if dst > 1 else T
    F_flat = xp.reshape(F_per_pixel, (-1,))
    per_cell = {key: xp.permute_dims(traces.divide_by_cell_baseline(v, S, F_flat), (1, 0))
                for key, v in results.items()}
    per_cell[_REFINEMENT_KEY] = xp.permute_dims(traces.divide_by_cell_baseline(T_out, S, F_flat), (1, 0))
    per_cell[_METRICS_KEY] = xp.stack([xp.astype(cell_metrics[name], xp.float64) for name in refine.METRIC_NAMES])
    timings["frr"] = time.perf_counter() - t0

    S_bad, T_bad, bad_rules = _finish_bad(S_bad, T_bad, bad_rules, S_trash, T_trash, F_per_pixel, n_full, dst, dss,
                                          (h0, w0), frame_shape, cfg)
    images = {"summary_image": summary_image, "max_image": max_image, "F_per_pixel": F_per_pixel}
    if dss > 1:
        S = _stack_to_S(_upsample_space(_S_to_stack(S, frame_shape), dss, (h0, w0)))
        S = refine.normalize_to_one(S)
        images = {key: _upsample_space(img[None, ...], dss, (h0, w0))[0] for key, img in images.items()}
    return _PartitionOutput(S=S, per_cell=per_cell, images=images, S_bad=S_bad, T_bad=T_bad, bad_rules=bad_rules,
                            stop_reason=stop_reason, timings=timings, run_info=run_info)


def _finish_bad(S_bad: Any, T_bad: Any, bad_rules: tuple[str, ...], S_trash: Any, T_trash: Any, F_per_pixel: Any,
                n_full: int, dst: int, dss: int, full_shape: tuple[int, int], frame_shape: tuple[int, int],
                cfg: ExtractConfig) -> tuple[Any, Any, tuple[str, ...]]:
    """Eliminated candidates (refinement, then cell-finding rejects) at full resolution: S (h0*w0, Kb), T (n, Kb)
    F-normalised and time-interpolated as the kept cells (spec §8.3, §8.4, §8.5). Empty with ``compact_output``."""
    xp, device = backend.get_namespace_and_device(S_bad)
    rules = list(bad_rules)
    if S_trash is not None and S_trash.shape[1] > 0:
        S_bad = xp.concat([S_bad, xp.astype(S_trash, xp.float32)], axis=1)
        T_bad = xp.concat([T_bad, xp.astype(T_trash, xp.float32)], axis=0)
        rules += ["cell_finding"] * S_trash.shape[1]
    if cfg.compact_output or S_bad.shape[1] == 0:
        return (xp.zeros((full_shape[0] * full_shape[1], 0), dtype=xp.float32, device=device),
                xp.zeros((n_full, 0), dtype=xp.float32, device=device), ())
    if dst > 1:
        T_bad = traces.interpolate_time(T_bad, n_full)
    T_bad = traces.divide_by_cell_baseline(T_bad, S_bad, xp.reshape(F_per_pixel, (-1,)))
    if dss > 1:
        S_bad = refine.normalize_to_one(_stack_to_S(_upsample_space(_S_to_stack(S_bad, frame_shape), dss, full_shape)))
    return S_bad, xp.permute_dims(T_bad, (1, 0)), tuple(rules)


def _empty_partition(frame_shape, full_shape, n_full, dss, summary_image, max_image, F_per_pixel, S_trash, T_trash,
                     stop_reason, timings, run_info, cfg) -> _PartitionOutput:
    """A partition without cells: empty per-cell arrays with the right leading shapes."""
    xp, device = backend.get_namespace_and_device(max_image)
    P = full_shape[0] * full_shape[1]
    per_cell = {kind: xp.zeros((n_full, 0), dtype=xp.float32, device=device)
                for kind in _trace_kinds(cfg.trace_output_option)}
    per_cell[_REFINEMENT_KEY] = xp.zeros((n_full, 0), dtype=xp.float32, device=device)
    per_cell[_METRICS_KEY] = xp.zeros((len(refine.METRIC_NAMES), 0), dtype=xp.float64, device=device)
    images = {"summary_image": summary_image, "max_image": max_image, "F_per_pixel": F_per_pixel}
    if dss > 1:
        images = {key: _upsample_space(img[None, ...], dss, full_shape)[0] for key, img in images.items()}
    dst = run_info.get("dst", 1)
    S_bad, T_bad, rules = _finish_bad(xp.zeros((frame_shape[0] * frame_shape[1], 0), dtype=xp.float32,
                                               device=device),
                                      xp.zeros((0, n_full // max(dst, 1)), dtype=xp.float32, device=device), (),
                                      S_trash, T_trash, F_per_pixel, n_full, dst, dss, full_shape, frame_shape, cfg)
    return _PartitionOutput(S=xp.zeros((P, 0), dtype=xp.float32, device=device), per_cell=per_cell, images=images,
                            S_bad=S_bad, T_bad=T_bad, bad_rules=rules, stop_reason=stop_reason, timings=timings,
                            run_info=run_info)


def _trace_kinds(option: str) -> list[str]:
    from nwb_extract.config import TRACE_KINDS, TRACE_OPTION_TO_KIND

    if option == "none":
        return []
    kinds = list(TRACE_KINDS)
    extra = TRACE_OPTION_TO_KIND[option]
    return kinds if extra in kinds else kinds + [extra]


def _upsample_space(stack: Any, dss: int, full_shape: tuple[int, int]) -> Any:
    """Spline-upsample a (K, h, w) stack from the dss-downsampled grid to ``full_shape`` (spec §8.5).

    Sample positions (1-based) ``round(linspace(1 + b0, N - (N mod dss) - b0, n))`` with ``b0 = dss/2 - 0.5`` per
    axis; MATLAB's ``interp2(..., 'spline')`` = separable not-a-knot cubic splines, extrapolating at the edges.
    Values are not clipped (decision: docs/decisions.md).
    """
    out = stack
    for axis, full in ((1, full_shape[0]), (2, full_shape[1])):
        n = stack.shape[axis]
        b0 = dss / 2.0 - 0.5
        stop = full - (full % dss) - b0
        pos = [float(matlab_round(1 + b0 + j * (stop - 1 - b0) / max(n - 1, 1))) for j in range(n)]
        out = backend.cubic_spline(out, pos, [float(i) for i in range(1, full + 1)], axis=axis)
    return out


def extract(movie: Any, config: ExtractConfig | dict | None = None, **overrides: Any) -> ExtractResult:
    """Run EXTRACT on ``movie``.

    Parameters
    ----------
    movie : array (frames, rows, cols) of any supported namespace (NumPy, CuPy, ...), or a lazy source with
        ``.shape``, ``.dtype`` and slicing ``[t0:t1, r0:r1, c0:c1]`` such as an h5py dataset.
    config : :class:`ExtractConfig`, a dict of EXTRACT parameters, or None for the defaults.
    **overrides : EXTRACT parameters (or Python-only settings such as ``backend``) applied on top of ``config``.

    Returns
    -------
    ExtractResult with footprints (cells, rows, cols) and the traces ``baseline_adjusted``, ``nonneg``, ``raw``
    (frames, cells).
    """
    t_start = time.perf_counter()
    cfg = ExtractConfig.coerce(config, **overrides).resolved()
    n, h, w = _check_movie(movie)
    _check_config_arrays(cfg, n, h, w)
    xp, device = _namespace(movie, cfg)
    is_lazy = not array_api_compat.is_array_api_obj(movie)
    n_read = min(n, int(cfg.num_frames)) if (is_lazy and cfg.num_frames) else n
    frame_shape = (h, w)
    npy, npx = partition.partition_grid(cfg, frame_shape)
    blocks = partition.partition_blocks(frame_shape, npy, npx, partition.partition_overlap(cfg.avg_cell_radius))
    timings = {stage: 0.0 for stage in _STAGES}
    n_bad_values = 0

    def load(block: partition.Block) -> tuple[Any, partition.Block]:
        """The block's movie, sanitized and trimmed of zero edges, and its kept pixels."""
        nonlocal n_bad_values
        t0 = time.perf_counter()
        rows, cols = block.slices
        Y = _read_block(movie, n_read, rows, cols, xp, device, int(cfg.python.chunk_frames))
        timings["read"] += time.perf_counter() - t0
        Y, n_bad = preprocess.sanitize(Y)
        n_bad_values += n_bad
        Y, trims = preprocess.remove_zero_edge_pixels(Y)
        kept = block.trimmed(trims)
        log.info("partition %d/%d: rows %s, cols %s", block.index + 1, len(blocks), kept.rows, kept.cols)
        return Y, kept

    def run_one(block: partition.Block) -> tuple[partition.Block, _PartitionOutput]:
        kept_blocks: list[partition.Block] = []

        def load_block() -> tuple[Any, partition.PartitionInputs]:
            # the raw block is referenced only inside _run_partition, so it is freed once preprocessed
            Y, kept = load(block)
            kept_blocks.append(kept)
            return Y, partition.partition_inputs(cfg, kept, xp=xp, device=device)

        out = _run_partition(load_block, cfg)
        return kept_blocks[0], out

    outputs = partition.run_partitions(blocks, run_one)
    if n_bad_values:
        warnings.warn(f"the movie holds {n_bad_values} NaN or infinite values; they were set to 0", stacklevel=2)
    for _, out in outputs:
        for stage, seconds in out.timings.items():
            timings[stage] += seconds
    primary = primary_trace_kind(cfg.trace_output_option)
    stitched = partition.stitch(
        [partition.PartitionResult(kept=kept, S=out.S, per_cell=out.per_cell, images=out.images)
         for kept, out in outputs], frame_shape, cfg, trace_key=primary or _REFINEMENT_KEY)

    footprints = backend.to_numpy(_S_to_stack(stitched.S, frame_shape)).astype(np.float32)
    per_cell = {key: backend.to_numpy(v) for key, v in stitched.per_cell.items()}
    metrics_table = per_cell.pop(_METRICS_KEY)
    per_cell.pop(_REFINEMENT_KEY)
    trace_dict = {key: np.ascontiguousarray(v, dtype=np.float32) for key, v in per_cell.items()}
    roi_metrics = {name: metrics_table[i].astype(np.float64) for i, name in enumerate(refine.METRIC_NAMES)}
    roi_metrics["partition"] = np.asarray(stitched.cell_partition, dtype=np.int64)
    eliminated = _eliminated(outputs, frame_shape, n_read, cfg)
    stop_reasons = [out.stop_reason for _, out in outputs]
    timings["total"] = time.perf_counter() - t_start
    run_info = {
        "partitions": [{"rows": [kept.rows[0], kept.rows[1]], "cols": [kept.cols[0], kept.cols[1]],
                        **{k: v for k, v in out.run_info.items()}} for kept, out in outputs],
        "n_found_before_stitching": stitched.n_found, "seam_duplicates_removed": len(stitched.removed),
        "seam_fragments_removed": len(stitched.fragments),
    }
    if len(outputs) == 1:
        run_info.update(outputs[0][1].run_info)
    return ExtractResult(
        footprints=footprints,
        traces=trace_dict,
        primary_trace=primary,
        summary_image=backend.to_numpy(stitched.images["summary_image"]).astype(np.float64),
        max_image=backend.to_numpy(stitched.images["max_image"]).astype(np.float64),
        F_per_pixel=backend.to_numpy(stitched.images["F_per_pixel"]).astype(np.float64),
        config=cfg,
        roi_metrics=roi_metrics,
        eliminated=eliminated,
        timings=timings,
        stop_reason=stop_reasons[0] if len(set(stop_reasons)) == 1 else ", ".join(stop_reasons),
        versions={"nwb_extract": __version__, "engine": ENGINE_VERSION, "numpy": np.__version__,
                  "array_namespace": xp.__name__},
        backend="cupy" if backend.is_cupy(xp) else ("numpy" if backend.is_numpy(xp) else xp.__name__),
        device=str(device if device is not None else "cpu"),
        run_info=run_info,
    )


def _eliminated(outputs: list, frame_shape: tuple[int, int], n_frames: int,
                cfg: ExtractConfig) -> EliminatedCandidates | None:
    """Eliminated candidates of all partitions, embedded in the FOV (None with compact_output or none)."""
    if cfg.compact_output:
        return None
    stacks, trace_blocks, rules = [], [], []
    for kept, out in outputs:
        if out.S_bad.shape[1] == 0:
            continue
        S_fov = partition.embed_footprints(out.S_bad, kept, frame_shape)
        stacks.append(backend.to_numpy(_S_to_stack(S_fov, frame_shape)))
        trace_blocks.append(backend.to_numpy(out.T_bad))
        rules.extend(out.bad_rules)
    if not stacks:
        return None
    return EliminatedCandidates(footprints=np.concatenate(stacks).astype(np.float32),
                                traces=np.concatenate(trace_blocks, axis=1).astype(np.float32), rules=tuple(rules))
