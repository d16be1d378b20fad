"""``extract(movie, config) -> ExtractResult``: EXTRACT's top level (spec §1) and per-partition run (spec §2).

Implemented today: the known-footprints path (EXTRACT's ``regression_only``, or any run with ``S_init`` and
``max_iter == 0``) on one partition: the movie is read once, preprocessed once, the initial traces are a robust
nonneg fit (§2.1), and the final robust regression (§8) produces all three trace kinds. Cell finding, refinement
and partitions (engine II) raise :class:`~nwb_extract.errors.NotImplementedYetError`.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Any

import array_api_compat
import numpy as np

from nwb_extract.engine.matlab import matlab_round
from nwb_extract._version import ENGINE_VERSION, __version__
from nwb_extract.config import ExtractConfig, primary_trace_kind
from nwb_extract.engine import backend, noise, preprocess, traces
from nwb_extract.engine.tiled import solve_T
from nwb_extract.errors import ConfigError, InputError, NotImplementedYetError
from nwb_extract.result import ExtractResult

log = logging.getLogger(__name__)

#: frames read per chunk from a lazy source when the config does not say otherwise
_DEFAULT_CHUNK = 1000



def _make_config(config: ExtractConfig | dict | None, overrides: dict) -> ExtractConfig:
    if config is None:
        cfg = ExtractConfig(**overrides)
    elif isinstance(config, ExtractConfig):
        cfg = config.replace(**overrides) if overrides else config
    elif isinstance(config, dict):
        cfg = ExtractConfig.from_dict({**config, **overrides})
    else:
        raise ConfigError(f"config must be an ExtractConfig, a dict or None; got {type(config).__name__}")
    return cfg.resolved()


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


def _namespace(movie: Any, cfg: ExtractConfig) -> tuple[Any, Any]:
    """Namespace and device to run on: the movie's own for non-NumPy arrays, else the configured backend."""
    if array_api_compat.is_array_api_obj(movie) and not isinstance(movie, np.ndarray):
        return backend.get_namespace_and_device(movie)
    xp = backend.select(cfg.python.backend)
    device = None if backend.is_numpy(xp) else (cfg.python.device if backend.is_cupy(xp) else None)
    if backend.is_cupy(xp) and device is not None:
        import cupy  # only reached with a GPU

        device = cupy.cuda.Device(int(device))
    return xp, device


def _read_movie(movie: Any, n_frames: int, xp: Any, device: Any, chunk: int) -> Any:
    """The first ``n_frames`` of ``movie`` as float32 (n, h, w) in ``xp`` on ``device``, read in frame chunks."""
    if array_api_compat.is_array_api_obj(movie) and not isinstance(movie, np.ndarray):
        return xp.astype(movie[:n_frames, ...], xp.float32)
    parts = []
    for t0 in range(0, n_frames, chunk):
        block = np.asarray(movie[t0:min(t0 + chunk, n_frames), :, :], dtype=np.float32)
        parts.append(backend.from_numpy(block, xp, device))
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)


def _partition_grid(cfg: ExtractConfig, h: int, w: int) -> tuple[int, int]:
    """(npy, npx) partition counts (spec §1.3)."""
    if cfg.num_partitions_x is not None and cfg.num_partitions_y is not None:
        return int(cfg.num_partitions_y), int(cfg.num_partitions_x)
    dss, _ = _downsampling(cfg)
    return max(math.ceil((h / dss) / 512), 1), max(math.ceil((w / dss) / 512), 1)


def _downsampling(cfg: ExtractConfig) -> tuple[int, int]:
    """(dss, dst): spatial and temporal downsampling factors with the 'auto' rules (spec §3.6)."""
    return preprocess.resolve_downsampling(
        cfg.avg_cell_radius, cfg.avg_event_tau, downsample_space_by=cfg.downsample_space_by,
        downsample_time_by=cfg.downsample_time_by, min_radius_after_downsampling=cfg.min_radius_after_downsampling,
        min_tau_after_downsampling=cfg.min_tau_after_downsampling)


def _footprints_to_S(footprints: Any, xp: Any) -> Any:
    """(K, h, w) stack -> (P, K) matrix, row-major pixels."""
    k = footprints.shape[0]
    return xp.permute_dims(xp.reshape(footprints, (k, -1)), (1, 0))


def _normalize_columns(S: Any) -> Any:
    """Each column divided by ``max(1e-6, column max)`` (spec §0 ``normalize_to_one``)."""
    xp = backend.get_namespace(S)
    return S / xp.clip(xp.max(S, axis=0), 1e-6, None)


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
    cfg = _make_config(config, overrides)
    n, h, w = _check_movie(movie)
    if cfg.S_init is None:
        raise NotImplementedYetError(
            "cell finding (EXTRACT engine II) is not implemented yet; today extract() estimates traces for known "
            "footprints only: pass S_init=<footprints (cells, rows, cols)> with regression_only=True")
    if cfg.max_iter > 0:
        raise NotImplementedYetError(
            "refining given footprints (S_init with max_iter > 0) is part of EXTRACT engine II and not implemented "
            "yet; use regression_only=True (or max_iter=0) to estimate traces for fixed footprints")
    if tuple(cfg.S_init.shape[1:]) != (h, w):
        raise InputError(f"S_init has frame shape {tuple(cfg.S_init.shape[1:])} but the movie's frames are {(h, w)}; "
                         "S_init must be (cells, rows, cols) in the movie's stored axis order")
    if cfg.reestimate_S_if_downsampled:
        raise NotImplementedYetError(
            "reestimate_S_if_downsampled is broken in the reference EXTRACT (spec §13 item 6) and not ported; "
            "set it to false")
    if cfg.T_init is not None:
        raise NotImplementedYetError("T_init (initial traces) is part of EXTRACT engine II and not implemented yet")
    npy, npx = _partition_grid(cfg, h, w)
    if npy * npx > 1:
        raise NotImplementedYetError(
            f"this movie needs {npy} x {npx} partitions; partitions are part of EXTRACT engine II and not "
            "implemented yet (set num_partitions_x=1 and num_partitions_y=1 to run it as one block)")
    S_host = np.asarray(cfg.S_init, dtype=np.float32)
    empty = np.flatnonzero(np.clip(S_host, 0, None).reshape(S_host.shape[0], -1).max(axis=1) <= 1e-6)
    if empty.size:
        raise InputError(f"S_init footprints {empty.tolist()} are all zero (or negative); remove them")

    xp, device = _namespace(movie, cfg)
    is_lazy = not array_api_compat.is_array_api_obj(movie)
    n_read = min(n, int(cfg.num_frames)) if (is_lazy and cfg.num_frames) else n
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    Y = _read_movie(movie, n_read, xp, device, int(cfg.python.chunk_frames or _DEFAULT_CHUNK))
    timings["read"] = time.perf_counter() - t0

    Y, n_bad = preprocess.sanitize(Y)
    if n_bad:
        warnings.warn(f"the movie holds {n_bad} NaN or infinite values; they were set to 0", stacklevel=2)
    Y, trims = preprocess.remove_zero_edge_pixels(Y)
    top, bottom, left, right = trims
    rows = slice(top, h - bottom)
    cols = slice(left, w - right)
    S_block = backend.from_numpy(np.ascontiguousarray(S_host[:, rows, cols]), xp, device)
    lost = np.flatnonzero(np.clip(S_host[:, rows, cols], 0, None).reshape(S_host.shape[0], -1).max(axis=1) <= 1e-6)
    if lost.size:
        raise InputError(f"S_init footprints {lost.tolist()} lie entirely in the movie's zero-valued edge strips, "
                         "which EXTRACT trims; their traces cannot be estimated")
    mask_block = None
    if cfg.movie_mask is not None:
        mask_block = backend.from_numpy(np.ascontiguousarray(np.asarray(cfg.movie_mask, bool)[rows, cols]), xp,
                                        device)

    block = _run_known_footprints(Y, S_block, mask_block, cfg, timings)

    # embed the partition-local results back into the full field of view
    def embed(img: np.ndarray, fill: float = 0.0) -> np.ndarray:
        out = np.full(img.shape[:-2] + (h, w), fill, dtype=img.dtype)
        out[..., rows, cols] = img
        return out

    footprints = embed(block["footprints"].astype(np.float32))
    trace_dict = {k: np.ascontiguousarray(v.T.astype(np.float32)) for k, v in block["traces"].items()}
    timings["total"] = time.perf_counter() - t_start
    return ExtractResult(
        footprints=footprints,
        traces=trace_dict,
        primary_trace=primary_trace_kind(cfg.trace_output_option),
        summary_image=embed(block["summary_image"]),
        max_image=embed(block["max_image"]),
        F_per_pixel=embed(block["F_per_pixel"], 1.0),
        config=cfg,
        roi_metrics=block["roi_metrics"],
        timings=timings,
        stop_reason="external init",
        versions={"nwb_extract": __version__, "engine": ENGINE_VERSION, "numpy": np.__version__},
        backend=xp.__name__.split(".")[-1],
        device=str(device if device is not None else "cpu"),
        run_info={**block["run_info"], "edge_trims": trims},
    )


def _run_known_footprints(Y: Any, S_stack: Any, movie_mask: Any, cfg: ExtractConfig,
                          timings: dict[str, float]) -> dict[str, Any]:
    """Spec §2 for one partition with footprints given (§2.1 second branch) and no refinement (max_iter 0).

    Y : float32 (n, h, w) block; S_stack : float32 (K, h, w) footprints; movie_mask : bool (h, w) or None.
    Returns host (NumPy) arrays: footprints (K, h, w), traces {kind: (K, n_full)}, images (h, w), roi_metrics.
    """
    xp, device = backend.get_namespace_and_device(Y)
    n_full, h0, w0 = Y.shape
    dss, dst = _downsampling(cfg)
    radius = cfg.avg_cell_radius / dss
    t0 = time.perf_counter()
    if dss > 1:
        Y = preprocess.downsample_space(Y, dss)
        S_stack = preprocess.downsample_space(S_stack, dss)
        if movie_mask is not None:
            movie_mask = preprocess.downsample_space(xp.astype(movie_mask, xp.float32)[None, ...], dss)[0] > 0.5
    _, h, w = Y.shape
    if cfg.preprocess:
        Y, F_per_pixel = preprocess.preprocess_movie(
            Y, radius=radius, spatial_highpass_cutoff=cfg.spatial_highpass_cutoff,
            baseline_quantile=cfg.baseline_quantile, skip_dff=cfg.skip_dff, movie_mask=movie_mask,
            remove_background=cfg.remove_background, avg_event_tau=cfg.avg_event_tau,
            medfilt_outlier_pixels=cfg.medfilt_outlier_pixels, second_df=cfg.second_df,
            fix_zero_FOV_strips=cfg.fix_zero_FOV_strips, temporal_denoising=cfg.temporal_denoising)
    else:
        if cfg.F_per_pixel is None:
            warnings.warn("preprocess=False and no F_per_pixel given: traces are not divided by a baseline "
                          "(F_per_pixel = 1)", stacklevel=3)
            F_per_pixel = xp.ones((h, w), dtype=xp.float32, device=device)
        else:
            F_per_pixel = backend.from_numpy(np.asarray(cfg.F_per_pixel, np.float32), xp, device)
    max_image = xp.max(Y, axis=0)
    M_full = None
    if dst > 1:
        M_full = xp.reshape(Y, (n_full, h * w))
        Y = preprocess.downsample_time(Y, dst)
    n = Y.shape[0]
    timings["preprocess"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    Mt = xp.reshape(Y, (n, h * w))
    S = _normalize_columns(xp.clip(_footprints_to_S(S_stack, xp), 0.0, None))
    k = S.shape[1]
    pixel_ok = None if movie_mask is None else xp.reshape(movie_mask, (-1,))
    noise_per_pixel = noise.estimate_noise_std(Mt, axis=0)
    sigma_init = _masked_median(noise_per_pixel, pixel_ok, floor=None)
    T = solve_T(xp.zeros((k, n), dtype=xp.float32, device=device), S, Mt, 10.0 * sigma_init, cfg.max_iter_T,
                solver="fp_solve_admm", frame_shape=(h, w), radius=radius, tiling=cfg.python.tiling)
    summary_image = xp.max(Y, axis=0)
    timings["initialisation"] = time.perf_counter() - t0

    # §2.2: radius refined from the brightest footprints, noise level and kappa
    k_sel = min(k, max(5, math.ceil(0.1 * k)))
    areas = xp.sum(xp.astype(S[:, :k_sel] > 0.1, xp.float32), axis=0)
    r_est = float(backend.median(xp.sqrt(areas / math.pi)))
    radius = (r_est + radius) / 2.0
    sigma = _masked_median(noise_per_pixel, pixel_ok, floor=1e-12)
    settings = traces.RegressionSettings(
        kappa=cfg.kappa_std_ratio * sigma, kappa_std_ratio=cfg.kappa_std_ratio, adaptive_kappa=cfg.adaptive_kappa,
        n_iter=cfg.max_iter_T_final, radius=radius, frame_shape=(h, w), trace_quantile=cfg.trace_quantile,
        frr_check_every_step=bool(cfg.frr_check_every_step), frr_edge_case_flag=bool(cfg.frr_edge_case_flag),
        kappa_iter_nums=tuple(cfg.kappa_iter_nums) if cfg.kappa_iter_nums is not None else (0.5, 0.7, 0.9),
        max_iter=cfg.max_iter, tiling=cfg.python.tiling)

    t0 = time.perf_counter()
    option = cfg.trace_output_option
    if dst > 1 and cfg.reestimate_T_if_downsampled:
        # §8.3: the regression runs on the full-rate movie, from the interpolated traces, kappa scaled by sqrt(dst)
        full_rate = traces.RegressionSettings(**{**settings.__dict__, "kappa": settings.kappa * math.sqrt(dst)})
        results = traces.regress(M_full, S, traces.interpolate_time(T, n_full), full_rate, option)
        if cfg.smooth_T:
            results = {key: backend.median_filter(v, (1, 3)) for key, v in results.items()}
    else:
        results = traces.regress(Mt, S, T, settings, option)
        if dst > 1:
            results = {key: traces.interpolate_time(v, n_full) for key, v in results.items()}
    F_flat = xp.reshape(F_per_pixel, (-1,))
    results = {key: traces.divide_by_cell_baseline(v, S, F_flat) for key, v in results.items()}
    timings["frr"] = time.perf_counter() - t0

    footprints = xp.reshape(xp.permute_dims(S, (1, 0)), (k, h, w))
    if dss > 1:
        footprints = _normalize_columns_stack(_upsample_space(footprints, dss, (h0, w0)))
        summary_image, max_image, F_per_pixel = (
            _upsample_space(img[None, ...], dss, (h0, w0))[0] for img in (summary_image, max_image, F_per_pixel))
    host = {key: backend.to_numpy(v) for key, v in results.items()}
    snr = _trace_snr(results["baseline_adjusted"]) if results else None
    roi_metrics = {"area": backend.to_numpy(xp.sum(xp.astype(S > 0.1, xp.float32), axis=0)).astype(np.int64)}
    if snr is not None:
        roi_metrics["trace_snr"] = backend.to_numpy(snr).astype(np.float64)
    return {
        "footprints": backend.to_numpy(footprints),
        "traces": host,
        "summary_image": backend.to_numpy(summary_image).astype(np.float64),
        "max_image": backend.to_numpy(max_image).astype(np.float64),
        "F_per_pixel": backend.to_numpy(F_per_pixel).astype(np.float64),
        "roi_metrics": roi_metrics,
        "run_info": {"noise_std": sigma, "kappa": settings.kappa, "avg_cell_radius": radius, "dss": dss, "dst": dst},
    }


def _masked_median(values: Any, keep: Any, floor: float | None) -> float:
    """Median of ``values`` where ``keep`` (and ``values > floor``); 1e-6 when nothing is left."""
    xp = backend.get_namespace(values)
    sel = xp.ones(values.shape, dtype=xp.bool, device=array_api_compat.device(values)) if keep is None else keep
    if floor is not None:
        sel = sel & (values > floor)
    chosen = values[sel]
    if chosen.shape[0] == 0:
        return 1e-6
    return float(backend.median(chosen))


def _trace_snr(T: Any) -> Any:
    """Trace SNR per cell (spec §7.2 ``T_maxval``): max of the 3-median-filtered trace / (sqrt 2 noise std)."""
    xp = backend.get_namespace(T)
    filtered = backend.median_filter(T, (1, 3))
    return xp.max(filtered, axis=1) / (math.sqrt(2.0) * xp.clip(noise.estimate_noise_std(T, axis=1), 1e-12, None))


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


def _normalize_columns_stack(stack: Any) -> Any:
    """``normalize_to_one`` for a (K, h, w) stack."""
    xp = backend.get_namespace(stack)
    return stack / xp.clip(xp.max(stack, axis=(1, 2), keepdims=True), 1e-6, None)
