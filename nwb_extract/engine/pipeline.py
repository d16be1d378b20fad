"""``extract(movie, config) -> ExtractResult``: EXTRACT's top level (spec §1) and per-partition run (spec §2).

The movie is split into partitions (§1.3); each partition is read once (a rectangular block of all frames),
trimmed of zero edges, preprocessed once, and run through cell finding (§5) or the given footprints (§2.1),
refinement and quality control (§7) and the final robust regression (§8), which produces all three trace kinds.
Partitions are stitched and seam duplicates removed (§1.4).

The stage settings are built once per run (:class:`_Plan`); one partition runs as :func:`_prepare`,
:func:`_initialise`, :func:`_estimate_noise`, :func:`_refine`, :func:`_final_traces` and :func:`_partition_output`,
timed per stage by a :class:`_StageClock` that synchronises the device before reading the clock.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from nwb_extract._version import ENGINE_VERSION, __version__
from nwb_extract.config import ExtractConfig, primary_trace_kind
from nwb_extract.engine import (backend, cellfind, footprints, noise, partition, preprocess, quality, refine,
                                solver_kernels, traces)
from nwb_extract.engine.matlab import matlab_round
from nwb_extract.engine.tiled import solve_T
from nwb_extract.errors import ConfigError, InputError, NotImplementedYetError
from nwb_extract.progress import SILENT, ProgressCallback, Reporter
from nwb_extract.result import EliminatedCandidates, ExtractResult

log = logging.getLogger(__name__)

#: per-cell keys of the partition results that are not trace kinds
_METRICS_KEY = "quality_metrics"
_REFINEMENT_KEY = "refinement_traces"
_STAGES = ("read", "preprocess", "cellfinding", "refinement", "frr")
#: Fewest frames (after temporal downsampling) the noise estimate can use without the zero frequency (spec §4)
MIN_WORKING_FRAMES = 5
#: Largest magnitude of a movie value: float32 sums of squares over ~1e9 values of this size stay finite
MAX_ABS_VALUE = 1e12


def _check_movie(movie: Any) -> tuple[int, int, int]:
    shape = getattr(movie, "shape", None)
    if shape is None or not hasattr(movie, "__getitem__"):
        raise InputError("movie must be an array (frames, rows, cols) or a lazy source with .shape, .dtype and "
                         f"slicing [t0:t1, r0:r1, c0:c1] (e.g. an h5py dataset); got {type(movie).__name__}")
    if len(shape) != 3:
        raise InputError(f"movie must have 3 axes (frames, rows, cols); got shape {tuple(shape)}. For a volumetric "
                         "movie select one plane first; for a single image add a frame axis.")
    n, h, w = (int(s) for s in shape)
    if n < 1 or h < 2 or w < 2:
        raise InputError(f"movie shape {tuple(shape)} is too small: need frames of at least 2 x 2 pixels (and at "
                         f"least {MIN_WORKING_FRAMES} frames)")
    dtype = getattr(movie, "dtype", "float32")
    if backend.dtype_kind(dtype) not in "fiub":
        raise InputError(f"movie dtype {dtype} is not numeric")
    return n, h, w


def _check_length(n: int, plan: _Plan) -> None:
    """Too few frames for EXTRACT's temporal estimates: an error below :data:`MIN_WORKING_FRAMES` working frames
    (after ``downsample_time_by``), a warning below ``10 · avg_event_tau`` frames (docs/decisions.md)."""
    n_working = n // plan.dst
    if n_working < MIN_WORKING_FRAMES:
        after = f" ({n_working} after downsample_time_by={plan.dst})" if plan.dst > 1 else ""
        raise InputError(f"the movie has {n} frame{'s' * (n != 1)}{after}; EXTRACT needs at least {MIN_WORKING_FRAMES} working "
                         "frames (its noise estimate reads the upper half of each pixel's spectrum, which for fewer "
                         "frames contains the zero frequency). Give a longer movie"
                         + (" or a smaller downsample_time_by" if plan.dst > 1 else ""))
    few = 10 * plan.cfg.avg_event_tau
    if n < few:
        warnings.warn(f"the movie has only {n} frames, fewer than 10 x avg_event_tau = {few:g}: it holds few calcium "
                      "events, so cell finding may miss most cells (or find none)", stacklevel=3)


def _check_values(Y: Any) -> bool:
    """Whether the float32 block ``Y`` (n, h, w) is constant in time; an :class:`InputError` for values beyond
    :data:`MAX_ABS_VALUE`. One pass for each pixel's maximum and minimum over frames serves both checks."""
    xp = backend.get_namespace(Y)
    highest, lowest = xp.max(Y, axis=0), xp.min(Y, axis=0)
    peak = max(float(xp.max(highest)), -float(xp.min(lowest)))  # sync point: two scalars per partition
    if peak > MAX_ABS_VALUE:
        raise InputError(f"the movie holds values up to {peak:.3g} in magnitude; EXTRACT computes in float32, whose "
                         f"sums of squares over a movie overflow beyond about {MAX_ABS_VALUE:g}: rescale the movie "
                         "(its units do not matter: traces are ΔF/F)")
    return bool(xp.all(highest == lowest))


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
        host = backend.select("numpy")
        S = host.reshape(host.asarray(cfg.S_init, dtype=host.float32), (cfg.S_init.shape[0], -1))
        empty = backend.to_numpy(host.nonzero(host.max(S, axis=1) <= 1e-6)[0]).tolist()
        if empty:
            raise InputError(f"S_init footprints {empty} are all zero (or negative); remove them")
    if cfg.T_init is not None:
        if cfg.T_init.shape[0] != n:
            raise InputError(f"T_init has {cfg.T_init.shape[0]} frames but the movie has {n}")
        if cfg.downsample_time_by not in (1,):
            raise ConfigError("T_init requires downsample_time_by=1 (spec §13 item 7: the reference never "
                              "downsamples T_init); downsample T_init yourself or drop it")


def _namespace(movie: Any, cfg: ExtractConfig) -> tuple[Any, Any]:
    """Namespace and device to run on: the movie's own for non-NumPy arrays, else the configured backend."""
    if backend.is_device_array(movie):
        return backend.get_namespace_and_device(movie)
    xp = backend.select(cfg.python.backend)
    return xp, backend.gpu_device(xp, cfg.python.device)


def _read_block(movie: Any, n_frames: int, block: partition.Block, *, xp: Any, device: Any, chunk: int,
                progress: Reporter = SILENT) -> Any:
    """Frames ``0..n_frames`` of ``block`` as float32 (n, h, w) in ``xp`` on ``device``, read in frame chunks
    (lazy sources are never read whole); a ``read`` progress event after each chunk."""
    rows, cols = block.slices
    if backend.is_device_array(movie):
        Y = xp.astype(movie[:n_frames, rows, cols], xp.float32)
        progress("read", n_frames, n_frames, unit="frames")
        return Y
    # chunks go straight into the block (HDF5 reads into it without an intermediate array where it can)
    Y = xp.empty((n_frames, *block.shape), dtype=xp.float32, device=device)
    for t0 in range(0, n_frames, chunk):
        t1 = min(t0 + chunk, n_frames)
        index = (slice(t0, t1), rows, cols)
        if not backend.read_float32_into(movie, index, Y[t0:t1, ...]):
            Y[t0:t1, ...] = backend.read_float32(movie, index, xp, device)
        progress("read", t1, n_frames, unit="frames")
    return Y


def _masked_median(values: Any, keep: Any, floor: float | None) -> float:
    """Median of ``values`` where ``keep`` (and ``values > floor``); 1e-6 when nothing is left."""
    xp, device = backend.get_namespace_and_device(values)
    sel = xp.ones(values.shape, dtype=xp.bool, device=device) if keep is None else keep
    if floor is not None:
        sel = sel & (values > floor)
    chosen = values[sel]
    return 1e-6 if chosen.shape[0] == 0 else float(backend.median(chosen))


@dataclass(frozen=True)
class _Plan:
    """What every partition run needs from the config, built once per run: the stage settings, the downsampling
    factors (spec §3.6) and the working-resolution ``avg_cell_radius``; ``cfg`` for the pipeline's own switches;
    ``progress`` for the events the pipeline itself emits (the stage settings carry the same reporter)."""

    cfg: ExtractConfig
    dss: int
    dst: int
    radius: float
    preprocess: preprocess.PreprocessSettings
    cellfind: cellfind.CellFindSettings
    refine: refine.RefineSettings
    progress: Reporter = SILENT

    @classmethod
    def from_config(cls, cfg: ExtractConfig, progress: ProgressCallback | None = None) -> _Plan:
        dss, dst = preprocess.resolve_downsampling(
            cfg.avg_cell_radius, cfg.avg_event_tau, downsample_space_by=cfg.downsample_space_by,
            downsample_time_by=cfg.downsample_time_by,
            min_radius_after_downsampling=cfg.min_radius_after_downsampling,
            min_tau_after_downsampling=cfg.min_tau_after_downsampling)
        return cls(cfg=cfg, dss=dss, dst=dst, radius=cfg.avg_cell_radius / dss,
                   preprocess=preprocess.PreprocessSettings.from_config(cfg),
                   cellfind=cellfind.CellFindSettings.from_config(cfg),
                   refine=refine.RefineSettings.from_config(cfg), progress=Reporter(progress))

    def for_partition(self, index: int, count: int) -> _Plan:
        """The plan whose progress events name partition ``index`` of ``count``."""
        if self.progress.callback is None:
            return self
        reporter = self.progress.for_partition(index, count)
        return replace(self, progress=reporter, preprocess=replace(self.preprocess, progress=reporter),
                       cellfind=replace(self.cellfind, progress=reporter),
                       refine=replace(self.refine, progress=reporter))


class _StageClock:
    """Seconds per stage. The device is synchronised before each clock reading, so GPU work queued by a stage
    counts for that stage."""

    def __init__(self, xp: Any, device: Any):
        self._xp, self._device = xp, device
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        backend.synchronize(self._xp, self._device)
        solver_kernels.work_stage(name)
        start = time.perf_counter()
        yield
        backend.synchronize(self._xp, self._device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


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


@dataclass
class _Prepared:
    """One partition after preprocessing (spec §3) at working resolution ``(n, h, w)``, and its full-resolution
    size ``(n_full, h0, w0)`` for the way back."""

    Y: Any                      # (n, h, w) float32 working movie
    Mt: Any                     # (n, h*w) the same movie as a matrix
    M_full: Any                 # (n_full, h*w) full-rate movie when dst > 1, else None
    F_per_pixel: Any            # (h, w) baseline of every pixel
    max_image: Any              # (h, w)
    movie_mask: Any             # bool (h, w) or None
    S_init: Any                 # (K, h, w) given footprints, or None
    T_init: Any                 # (n, K) given traces, or None
    n_full: int
    full_shape: tuple[int, int]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (self.Y.shape[1], self.Y.shape[2])

    @property
    def pixel_ok(self) -> Any:
        """Bool (h*w,) pixels inside ``movie_mask``; None without a mask."""
        xp = backend.get_namespace(self.Y)
        return None if self.movie_mask is None else xp.reshape(self.movie_mask, (-1,))


@dataclass
class _Cells:
    """A partition's cells at working resolution as the stages change them: images ``S`` (h*w, K), traces ``T``
    (K, n), and what the stages report (cell-finding rejects, noise level, refinement eliminations, metrics)."""

    S: Any
    T: Any
    summary_image: Any                  # (h, w)
    stop_reason: str
    S_trash: Any = None                 # (h*w, Kt) cell-finding rejects, or None
    T_trash: Any = None                 # (Kt, n)
    noise_per_pixel: Any = None         # (h*w,) when cell finding measured it on the working movie
    radius: float = math.nan            # refined avg_cell_radius (px, §2.2)
    kappa: float = math.nan             # kappa_std_ratio * noise std (§2.2)
    S_bad: Any = None                   # (h*w, Kb) refinement eliminations
    T_bad: Any = None                   # (Kb, n)
    bad_rules: tuple[str, ...] = ()
    metrics: dict[str, Any] | None = None
    option: str = "none"                # the trace_output_option of the final regression
    run_info: dict[str, Any] = field(default_factory=dict)


def _run_partition(load_block: Callable[[], tuple[Any, partition.PartitionInputs]], plan: _Plan,
                   clock: _StageClock) -> _PartitionOutput:
    """Spec §2 on one partition: ``load_block()`` gives its movie ``Y`` (n, h, w) float32 (trimmed of zero edges)
    and its cut config arrays; ``Y`` is dropped as soon as the preprocessed copy exists."""
    prepared = _prepare(load_block, plan, clock)
    with clock.stage("cellfinding"):
        cells = _initialise(prepared, plan)
    cells.run_info = {"dss": plan.dss, "dst": plan.dst, "n_found": cells.S.shape[1]}
    if cells.S.shape[1] == 0:
        _skipped(plan, ("refinement", "frr"))
        return _partition_output(prepared, cells, plan, clock, per_cell=None)
    _estimate_noise(prepared, cells, plan)
    with clock.stage("refinement"):
        _refine(prepared, cells, plan)
    if cells.S.shape[1] == 0:
        _skipped(plan, ("frr",))
        return _partition_output(prepared, cells, plan, clock, per_cell=None)
    with clock.stage("frr"):
        per_cell = _final_traces(prepared, cells, plan)
    return _partition_output(prepared, cells, plan, clock, per_cell=per_cell)


def _skipped(plan: _Plan, stages: tuple[str, ...]) -> None:
    """A finished (0 of 0) progress event for each stage that does not run (no cells left)."""
    for stage in stages:
        plan.progress(stage, 0, 0, "skipped: no cells")


def _prepare(load_block: Callable[[], tuple[Any, partition.PartitionInputs]], plan: _Plan,
             clock: _StageClock) -> _Prepared:
    """Load the partition, downsample it in space, preprocess it (or take the given baseline) and downsample it in
    time (spec §2, §3). The raw block is referenced only here, so it is freed once preprocessed."""
    Y, inputs = load_block()
    xp = backend.get_namespace(Y)
    n_full, h0, w0 = Y.shape
    movie_mask, S_init = inputs.movie_mask, inputs.S_init
    with clock.stage("preprocess"):
        if plan.dss > 1:
            Y = preprocess.downsample_space(Y, plan.dss)
            if S_init is not None:
                S_init = preprocess.downsample_space(S_init, plan.dss)
            if movie_mask is not None:
                mask = xp.astype(movie_mask, xp.float32)[None, ...]
                movie_mask = preprocess.downsample_space(mask, plan.dss)[0] > 0.5
        Y, F_per_pixel = _baseline(Y, inputs, plan, movie_mask)
        max_image = xp.max(Y, axis=0)
        _, h, w = Y.shape
        M_full = None
        if plan.dst > 1:
            M_full = xp.reshape(Y, (n_full, h * w))
            Y = preprocess.downsample_time(Y, plan.dst)
        Mt = xp.reshape(Y, (Y.shape[0], h * w))
    return _Prepared(Y=Y, Mt=Mt, M_full=M_full, F_per_pixel=F_per_pixel, max_image=max_image,
                     movie_mask=movie_mask, S_init=S_init, T_init=inputs.T_init, n_full=n_full, full_shape=(h0, w0))


def _baseline(Y: Any, inputs: partition.PartitionInputs, plan: _Plan, movie_mask: Any) -> tuple[Any, Any]:
    """The movie (n, h, w) and its per-pixel baseline (h, w): preprocessed (spec §3), or as given with the
    config's ``F_per_pixel`` (downsampled as the movie), or with a baseline of 1."""
    xp, device = backend.get_namespace_and_device(Y)
    if plan.cfg.preprocess:  # Y is the partition's own copy (read, filled, trimmed), not needed afterwards
        return preprocess.preprocess_movie(Y, plan.preprocess, radius=plan.radius, movie_mask=movie_mask,
                                           overwrite=True)
    if inputs.F_per_pixel is None:
        return Y, xp.ones((Y.shape[1], Y.shape[2]), dtype=xp.float32, device=device)
    if plan.dss == 1:
        return Y, inputs.F_per_pixel
    return Y, preprocess.downsample_space(inputs.F_per_pixel[None], plan.dss)[0]


def _initialise(prepared: _Prepared, plan: _Plan) -> _Cells:
    """Initial cells (spec §2.1): found (§5), or the given ``S_init`` with ``T_init`` or traces fitted to it."""
    xp, device = backend.get_namespace_and_device(prepared.Y)
    if prepared.S_init is None:
        found = cellfind.find_cells(prepared.Y, plan.cellfind, radius=plan.radius, movie_mask=prepared.movie_mask)
        noise_per_pixel = None
        if plan.cellfind.filter_type == "none":  # the noise was measured on the working movie itself
            noise_per_pixel = xp.reshape(found.noise_per_pixel, (-1,))
        return _Cells(S=found.S, T=found.T, summary_image=found.summary_image, stop_reason=found.stop_reason,
                      S_trash=found.S_trash, T_trash=found.T_trash, noise_per_pixel=noise_per_pixel)
    S = footprints.normalize_to_one(xp.clip(footprints.to_columns(prepared.S_init), 0.0, None))
    plan.progress("cellfinding", S.shape[1], S.shape[1], "given footprints", "cells")
    cells = _Cells(S=S, T=None, summary_image=xp.max(prepared.Y, axis=0), stop_reason="external init")
    if prepared.T_init is not None:
        cells.T = xp.clip(xp.permute_dims(xp.astype(prepared.T_init, xp.float32), (1, 0)), 0.0, None)
        return cells
    Mt = prepared.Mt
    cells.noise_per_pixel = noise.estimate_noise_std(Mt, axis=0)
    sigma_ls = _masked_median(cells.noise_per_pixel, prepared.pixel_ok, floor=None)
    T0 = xp.zeros((S.shape[1], Mt.shape[0]), dtype=xp.float32, device=device)
    cells.T = solve_T(T0, S, Mt, 10.0 * sigma_ls, plan.cfg.max_iter_T, solver="fp_solve_admm",
                      frame_shape=prepared.frame_shape, radius=plan.radius, tiling=plan.cfg.python.tiling)
    return cells


def _estimate_noise(prepared: _Prepared, cells: _Cells, plan: _Plan) -> None:
    """Refined radius, noise level and kappa of the partition (spec §2.2)."""
    cells.radius = refine.estimate_radius(cells.S, plan.radius)
    if cells.noise_per_pixel is None:
        cells.noise_per_pixel = noise.estimate_noise_std(prepared.Mt, axis=0)
    sigma = _masked_median(cells.noise_per_pixel, prepared.pixel_ok, floor=1e-12)
    cells.kappa = plan.cfg.kappa_std_ratio * sigma
    cells.run_info.update(noise_std=sigma, kappa=cells.kappa, avg_cell_radius=cells.radius)


def _refine(prepared: _Prepared, cells: _Cells, plan: _Plan) -> None:
    """Refinement and quality control (spec §7) when ``max_iter > 0``; the metrics of the cells either way."""
    xp, device = backend.get_namespace_and_device(cells.S)
    cells.S_bad = xp.zeros((cells.S.shape[0], 0), dtype=xp.float32, device=device)
    cells.T_bad = xp.zeros((0, prepared.Mt.shape[0]), dtype=xp.float32, device=device)
    cells.option = plan.cfg.trace_output_option
    if plan.refine.max_iter > 0:
        refined = refine.refine(cells.S, cells.T, prepared.Mt, plan.refine, radius=cells.radius, kappa=cells.kappa,
                                frame_shape=prepared.frame_shape)
        cells.S, cells.T = refined.S, refined.T
        cells.S_bad, cells.T_bad, cells.bad_rules = refined.S_bad, refined.T_bad, refined.bad_rules
        cells.metrics = refined.metrics or None
        cells.run_info.update(refinement_iterations=refined.iterations, refinement_stop=refined.stop_reason)
        if refined.converged_early:
            log.info("refinement converged early (TOL_main); the final regression still runs (docs/decisions.md)")
        if plan.refine.hyperparameter_tuning_flag:
            cells.option = "none"
    else:
        plan.progress("refinement", 0, 0, "skipped: max_iter = 0")
    if cells.metrics is None and cells.S.shape[1] > 0:  # no refinement ran: metrics of the given / found cells
        S_smooth = footprints.normalize_to_one(refine.smooth_images(cells.S, prepared.frame_shape))
        table = quality.quality_metrics(cells.S, S_smooth, cells.T, prepared.frame_shape)
        cells.metrics = {name: table[i, :] for i, name in enumerate(quality.METRIC_NAMES)}


def _final_traces(prepared: _Prepared, cells: _Cells, plan: _Plan) -> dict[str, Any]:
    """Per-cell results at full frame rate (spec §8): every trace kind, the refinement traces, both divided by the
    cell baselines (n_full, K), and the quality metrics (30, K) float64."""
    xp = backend.get_namespace(cells.S)
    cfg, dst, n_full, S = plan.cfg, plan.dst, prepared.n_full, cells.S
    settings = traces.RegressionSettings.from_config(cfg, kappa=cells.kappa, radius=cells.radius,
                                                     frame_shape=prepared.frame_shape, progress=plan.progress)
    if dst > 1 and cfg.reestimate_T_if_downsampled:
        full_rate = replace(settings, kappa=cells.kappa * math.sqrt(dst))
        results = traces.regress(prepared.M_full, S, traces.interpolate_time(cells.T, n_full), full_rate,
                                 cells.option)
        if cfg.smooth_T:
            results = {key: backend.median_filter(v, (1, 3)) for key, v in results.items()}
    else:
        results = traces.regress(prepared.Mt, S, cells.T, settings, cells.option)
        if dst > 1:
            results = {key: traces.interpolate_time(v, n_full) for key, v in results.items()}
    T_out = traces.interpolate_time(cells.T, n_full) if dst > 1 else cells.T
    F_flat = xp.reshape(prepared.F_per_pixel, (-1,))
    per_cell = {key: xp.permute_dims(traces.divide_by_cell_baseline(v, S, F_flat), (1, 0))
                for key, v in results.items()}
    per_cell[_REFINEMENT_KEY] = xp.permute_dims(traces.divide_by_cell_baseline(T_out, S, F_flat), (1, 0))
    per_cell[_METRICS_KEY] = xp.stack([xp.astype(cells.metrics[name], xp.float64) for name in quality.METRIC_NAMES])
    return per_cell


def _partition_output(prepared: _Prepared, cells: _Cells, plan: _Plan, clock: _StageClock, *,
                      per_cell: dict[str, Any] | None) -> _PartitionOutput:
    """The partition's output at full partition resolution (spec §8.5); ``per_cell=None`` for a partition
    without cells (empty per-cell arrays)."""
    xp, device = backend.get_namespace_and_device(prepared.max_image)
    full_shape, dss = prepared.full_shape, plan.dss
    if per_cell is None:
        S = xp.zeros((full_shape[0] * full_shape[1], 0), dtype=xp.float32, device=device)
        per_cell = _empty_per_cell(plan.cfg.trace_output_option, prepared.n_full, xp, device)
    elif dss > 1:
        S = footprints.to_columns(_upsample_space(footprints.to_stack(cells.S, prepared.frame_shape), dss,
                                                  full_shape))
        S = footprints.normalize_to_one(S)
    else:
        S = cells.S
    images = {"summary_image": cells.summary_image, "max_image": prepared.max_image,
              "F_per_pixel": prepared.F_per_pixel}
    if dss > 1:
        images = {key: _upsample_space(img[None, ...], dss, full_shape)[0] for key, img in images.items()}
    S_bad, T_bad, bad_rules = _eliminated_in_partition(prepared, cells, plan)
    return _PartitionOutput(S=S, per_cell=per_cell, images=images, S_bad=S_bad, T_bad=T_bad, bad_rules=bad_rules,
                            stop_reason=cells.stop_reason, timings=clock.seconds, run_info=cells.run_info)


def _empty_per_cell(option: str, n_full: int, xp: Any, device: Any) -> dict[str, Any]:
    """Per-cell arrays of a partition without cells: (n_full, 0) traces and (30, 0) metrics."""
    per_cell = {kind: xp.zeros((n_full, 0), dtype=xp.float32, device=device) for kind in traces.trace_kinds(option)}
    per_cell[_REFINEMENT_KEY] = xp.zeros((n_full, 0), dtype=xp.float32, device=device)
    per_cell[_METRICS_KEY] = xp.zeros((len(quality.METRIC_NAMES), 0), dtype=xp.float64, device=device)
    return per_cell


def _eliminated_in_partition(prepared: _Prepared, cells: _Cells,
                             plan: _Plan) -> tuple[Any, Any, tuple[str, ...]]:
    """Eliminated candidates (refinement, then cell-finding rejects) at full resolution: S (h0*w0, Kb), T (n, Kb)
    F-normalised and time-interpolated as the kept cells (spec §8.3, §8.4, §8.5). Empty with ``compact_output``."""
    xp, device = backend.get_namespace_and_device(prepared.max_image)
    h, w = prepared.frame_shape
    S_bad = xp.zeros((h * w, 0), dtype=xp.float32, device=device) if cells.S_bad is None else cells.S_bad
    T_bad = xp.zeros((0, prepared.Mt.shape[0]), dtype=xp.float32, device=device) if cells.T_bad is None \
        else cells.T_bad
    rules = list(cells.bad_rules)
    if cells.S_trash is not None and cells.S_trash.shape[1] > 0:
        S_bad = xp.concat([S_bad, xp.astype(cells.S_trash, xp.float32)], axis=1)
        T_bad = xp.concat([T_bad, xp.astype(cells.T_trash, xp.float32)], axis=0)
        rules += ["cell_finding"] * cells.S_trash.shape[1]
    full_shape, n_full = prepared.full_shape, prepared.n_full
    if plan.cfg.compact_output or S_bad.shape[1] == 0:
        return (xp.zeros((full_shape[0] * full_shape[1], 0), dtype=xp.float32, device=device),
                xp.zeros((n_full, 0), dtype=xp.float32, device=device), ())
    if plan.dst > 1:
        T_bad = traces.interpolate_time(T_bad, n_full)
    T_bad = traces.divide_by_cell_baseline(T_bad, S_bad, xp.reshape(prepared.F_per_pixel, (-1,)))
    if plan.dss > 1:
        stack = _upsample_space(footprints.to_stack(S_bad, prepared.frame_shape), plan.dss, full_shape)
        S_bad = footprints.normalize_to_one(footprints.to_columns(stack))
    return S_bad, xp.permute_dims(T_bad, (1, 0)), tuple(rules)


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


def extract(movie: Any, config: ExtractConfig | dict | None = None, *, progress: ProgressCallback | None = None,
            runner: PartitionRunner | None = None, **overrides: Any) -> ExtractResult:
    """Run EXTRACT on ``movie`` (the engine call; :func:`nwb_extract.extract` adds the default progress display and
    the Dask execution).

    Parameters
    ----------
    movie : array (frames, rows, cols) of any supported namespace (NumPy, CuPy, ...), or a lazy source with
        ``.shape``, ``.dtype`` and slicing ``[t0:t1, r0:r1, c0:c1]`` such as an h5py dataset.
    config : :class:`ExtractConfig`, a dict of EXTRACT parameters, or None for the defaults.
    progress : callable, optional
        Receives a :class:`nwb_extract.progress.ProgressEvent` as each stage advances (read, preprocess,
        cellfinding, refinement, frr; per partition); None reports nothing. Partitions run by ``runner`` report
        nothing here (they run elsewhere; the runner reports them). Partitions that run side by side call it from
        their threads, so their events interleave.
    runner : callable, optional
        ``runner(jobs) -> runs`` runs the partitions (:class:`PartitionJob` -> :class:`PartitionRun`, in order)
        elsewhere, e.g. as Dask tasks that read their own blocks (:mod:`nwb_extract.distributed`); stitching stays
        here. None: one after the other in this process.
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
    ran = "cupy" if backend.is_cupy(xp) else ("numpy" if backend.is_numpy(xp) else xp.__name__)
    if ran in ("numpy", "cupy"):  # the config records what actually ran, not what was asked for
        cfg = cfg.replace(backend=ran, use_gpu=ran == "cupy")
    if not cfg.preprocess and cfg.F_per_pixel is None:
        warnings.warn("preprocess=False and no F_per_pixel given: traces are not divided by a baseline "
                      "(F_per_pixel = 1)", stacklevel=2)
    n_read = min(n, int(cfg.num_frames)) if (not backend.is_array(movie) and cfg.num_frames) else n
    plan = _Plan.from_config(cfg, progress)
    _check_length(n_read, plan)
    outputs, timings, bad = _run_partitions(movie, partition_jobs((h, w), n_read, cfg), plan, xp, device, runner)
    if bad.n_values:
        warnings.warn(bad.message(n_read * h * w), stacklevel=2)
    if bad.n_constant == len(outputs):
        raise InputError(f"the movie is constant in time (every pixel holds one value in all {n_read} frames): "
                         "there is no activity to extract; check that this is the right series or channel")
    frame_shape = (h, w)
    primary = primary_trace_kind(cfg.trace_output_option)
    stitched = partition.stitch(
        [partition.PartitionResult(kept=kept, S=out.S, per_cell=out.per_cell, images=out.images)
         for kept, out in outputs], frame_shape, cfg, trace_key=primary or _REFINEMENT_KEY)
    per_cell = {key: backend.to_host(v, "float32") for key, v in stitched.per_cell.items()
                if key not in (_METRICS_KEY, _REFINEMENT_KEY)}
    stop_reasons = [out.stop_reason for _, out in outputs]
    timings["total"] = time.perf_counter() - t_start
    return ExtractResult(
        footprints=backend.to_host(footprints.to_stack(stitched.S, frame_shape), "float32"),
        traces=per_cell,
        primary_trace=primary,
        summary_image=backend.to_host(stitched.images["summary_image"], "float64"),
        max_image=backend.to_host(stitched.images["max_image"], "float64"),
        F_per_pixel=backend.to_host(stitched.images["F_per_pixel"], "float64"),
        config=cfg,
        roi_metrics=_roi_metrics(stitched, st_computed=cfg.max_iter > 0 and (
            cfg.hyperparameter_tuning_flag or quality.st_enabled(cfg.thresholds.to_dict()))),
        eliminated=None if cfg.compact_output else _eliminated(outputs, frame_shape),
        timings=timings,
        stop_reason=stop_reasons[0] if len(set(stop_reasons)) == 1 else ", ".join(stop_reasons),
        versions={"nwb_extract": __version__, "engine": ENGINE_VERSION, "numpy": backend.numpy_version(),
                  "array_namespace": xp.__name__},
        backend=ran,
        device=str(device if device is not None else "cpu"),
        run_info={**_run_info(outputs, stitched), "n_nonfinite_values": bad.n_values,
                  "n_pixels_without_data": bad.n_pixels},
    )


@dataclass
class _ReadChecks:
    """What reading found: NaN / inf values (summed over partitions; overlaps count twice), the pixels without any
    finite value, which are left out like pixels outside ``movie_mask`` (docs/decisions.md), and the partitions
    that are constant in time."""

    n_values: int = 0
    n_pixels: int = 0
    n_constant: int = 0

    def message(self, n_total: int) -> str:
        """The user-facing warning: how many values, and what was done with them."""
        text = (f"the movie holds {self.n_values} NaN or infinite values ({100 * self.n_values / n_total:.2g}% of "
                f"{n_total}); each was replaced by its pixel's temporal median of finite values")
        if self.n_pixels:
            text += f"; {self.n_pixels} pixels without any finite value were left out (as outside movie_mask)"
        return text


def _without_pixels(mask: Any, no_data: Any) -> Any:
    """``mask`` (h, w) (or None: all pixels) with the ``no_data`` pixels (bool (h, w)) switched off."""
    xp = backend.get_namespace(no_data)
    if mask is None:
        return ~no_data
    return xp.where(no_data, xp.zeros_like(mask), mask)


@dataclass(frozen=True)
class PartitionJob:
    """One partition's run, everything but the movie: small and picklable (what a Dask task is given).

    Attributes
    ----------
    cfg : ExtractConfig
        The resolved config of the whole run (its arrays are full-FOV; :func:`partition.partition_inputs` cuts them).
    n_read : int
        Frames ``0..n_read`` of the movie are used.
    block : partition.Block
        The partition's pixels, overlap included.
    n_blocks : int
        Partitions in the run (for messages).
    """

    cfg: ExtractConfig
    n_read: int
    block: partition.Block
    n_blocks: int

    @property
    def block_bytes(self) -> int:
        """Size of the partition's movie block as float32 (bytes): ``n_read * rows * cols * 4``."""
        rows, cols = self.block.shape
        return self.n_read * rows * cols * 4


@dataclass
class PartitionRun:
    """What one partition's run gives back for stitching: its kept pixels, its output, what reading its block found
    (NaN / inf values, pixels without data, constant in time) and the seconds it spent reading."""

    kept: partition.Block
    output: _PartitionOutput
    checks: _ReadChecks
    read_seconds: float


#: Memory set aside for one partition's run per byte of its float32 movie block: the measured peaks were 2.8x to
#: 4.6x the block (docs/cluster.md), with room to spare. Partitions run side by side only while that much fits in
#: the free memory (:mod:`nwb_extract.distributed` sizes its workers by it too).
PARTITION_MEMORY_FACTOR = 5

#: ``runner(jobs) -> runs``, one :class:`PartitionRun` per job in job order (e.g. as Dask tasks).
PartitionRunner = Callable[[list[PartitionJob]], list[PartitionRun]]


def partition_jobs(frame_shape: tuple[int, int], n_read: int, cfg: ExtractConfig) -> list[PartitionJob]:
    """The partitions of a ``frame_shape`` movie (frames ``0..n_read``) under the resolved ``cfg`` (spec §1.3)."""
    npy, npx = partition.partition_grid(cfg, frame_shape)
    blocks = partition.partition_blocks(frame_shape, npy, npx, partition.partition_overlap(cfg.avg_cell_radius))
    return [PartitionJob(cfg=cfg, n_read=n_read, block=block, n_blocks=len(blocks)) for block in blocks]


def run_partition_job(movie: Any, job: PartitionJob) -> PartitionRun:
    """Run one partition of ``movie`` where the movie is (e.g. on a Dask worker): read the job's block, run it,
    and bring the output to host (NumPy) arrays so that it can be sent back for stitching."""
    xp, device = _namespace(movie, job.cfg)
    run = _run_job(movie, job, _Plan.from_config(job.cfg), xp, device)
    if not backend.is_numpy(xp):
        run.output = _output_to_host(run.output)
    return run


def _output_to_host(out: _PartitionOutput) -> _PartitionOutput:
    def host(x: Any) -> Any:
        return backend.to_host(x, str(backend.to_numpy(x).dtype))

    return replace(out, S=host(out.S), per_cell={k: host(v) for k, v in out.per_cell.items()},
                   images={k: host(v) for k, v in out.images.items()}, S_bad=host(out.S_bad), T_bad=host(out.T_bad))


def _run_job(movie: Any, job: PartitionJob, plan: _Plan, xp: Any, device: Any) -> PartitionRun:
    """Read the job's block of ``movie`` (NaN / inf filled, trimmed of zero edges; pixels without any finite value
    left out) and run :func:`_run_partition` on it, reporting progress as partition ``index`` of ``n_blocks``."""
    cfg, block = plan.cfg, job.block
    part_plan = plan.for_partition(block.index, job.n_blocks)
    read_clock = _StageClock(xp, device)
    checks = _ReadChecks()
    loaded: dict[str, Any] = {}

    def load_block() -> tuple[Any, partition.PartitionInputs]:
        with read_clock.stage("read"):
            Y = _read_block(movie, job.n_read, block, xp=xp, device=device, chunk=int(cfg.python.chunk_frames),
                            progress=part_plan.progress)
        Y, checks.n_values, no_data = preprocess.fill_nonfinite(Y)
        if _check_values(Y):
            checks.n_constant = 1
            log.warning("partition %d/%d is constant in time: no cell can be found there", block.index + 1,
                        job.n_blocks)
        Y, trims = preprocess.remove_zero_edge_pixels(Y)
        loaded["kept"] = kept = block.trimmed(trims)
        inputs = partition.partition_inputs(cfg, kept, xp=xp, device=device)
        if no_data is not None:
            no_data = no_data[trims[0]:no_data.shape[0] - trims[1], trims[2]:no_data.shape[1] - trims[3]]
            checks.n_pixels = int(xp.count_nonzero(no_data))
            inputs = replace(inputs, movie_mask=_without_pixels(inputs.movie_mask, no_data))
        log.info("partition %d/%d: rows %s, cols %s", block.index + 1, job.n_blocks, kept.rows, kept.cols)
        return Y, inputs

    out = _run_partition(load_block, part_plan, _StageClock(xp, device))
    return PartitionRun(kept=loaded["kept"], output=out, checks=checks,
                        read_seconds=read_clock.seconds.get("read", 0.0))


def _run_partitions(movie: Any, jobs: list[PartitionJob], plan: _Plan, xp: Any, device: Any,
                    runner: PartitionRunner | None) -> tuple[list[tuple[partition.Block, _PartitionOutput]],
                                                             dict[str, float], _ReadChecks]:
    """Every partition job through :func:`_run_job` (spec §1.3): through ``runner``; else here, side by side on the
    host's cores when there are several (NumPy; at most as many at once as the free memory holds at
    :data:`PARTITION_MEMORY_FACTOR` times their block each; each partition then runs its own work on one thread),
    or one after the other. Returns the kept block and output of each, the stage timings summed over partitions
    (s), and what reading found (summed over partitions; overlaps count twice)."""
    if runner is not None:
        runs = runner(jobs)
    elif len(jobs) > 1 and backend.is_numpy(xp) and solver_kernels.available_threads() > 1:
        # several partitions on a multi-core host: side by side, as many at once as fit in the free memory
        at_once = max(1, min(solver_kernels.available_threads(),
                             backend.free_memory_bytes() // (PARTITION_MEMORY_FACTOR * jobs[0].block_bytes)))
        runs = solver_kernels.map_in_threads(lambda job: _run_job(movie, job, plan, xp, device), jobs, xp,
                                             [job.block_bytes for job in jobs], threads=at_once)
    else:
        runs = [_run_job(movie, job, plan, xp, device) for job in jobs]
    timings = {stage: 0.0 for stage in _STAGES}
    for run in runs:
        timings["read"] += run.read_seconds
        for stage, seconds in run.output.timings.items():
            timings[stage] += seconds
    found = _ReadChecks(n_values=sum(run.checks.n_values for run in runs),
                        n_pixels=sum(run.checks.n_pixels for run in runs),
                        n_constant=sum(run.checks.n_constant for run in runs))
    return [(run.kept, run.output) for run in runs], timings, found


def _roi_metrics(stitched: partition.Stitched, *, st_computed: bool) -> dict[str, Any]:
    """Per-cell quality metrics (K,) float64 by name, and the partition of every cell (K,) int64; the
    spatio-temporal metrics only when they were computed (``st_computed``), not their placeholder 1."""
    table = backend.to_host(stitched.per_cell[_METRICS_KEY], "float64")
    roi_metrics = {name: table[i] for i, name in enumerate(quality.METRIC_NAMES)
                   if st_computed or name not in quality.ST_METRIC_NAMES}
    roi_metrics["partition"] = backend.to_host(stitched.cell_partition, "int64")
    return roi_metrics


def _run_info(outputs: list[tuple[partition.Block, _PartitionOutput]],
              stitched: partition.Stitched) -> dict[str, Any]:
    """Per-partition run info and the stitching counts; a single partition's info also at the top level."""
    run_info = {
        "partitions": [{"rows": [kept.rows[0], kept.rows[1]], "cols": [kept.cols[0], kept.cols[1]],
                        **{k: v for k, v in out.run_info.items()}} for kept, out in outputs],
        "n_found_before_stitching": stitched.n_found, "seam_duplicates_removed": len(stitched.removed),
        "seam_fragments_removed": len(stitched.fragments),
    }
    if len(outputs) == 1:
        run_info.update(outputs[0][1].run_info)
    return run_info


def _eliminated(outputs: list[tuple[partition.Block, _PartitionOutput]],
                frame_shape: tuple[int, int]) -> EliminatedCandidates | None:
    """Eliminated candidates of all partitions, embedded in the FOV (None when there are none)."""
    host = backend.select("numpy")
    stacks, trace_blocks, rules = [], [], []
    for kept, out in outputs:
        if out.S_bad.shape[1] == 0:
            continue
        S_fov = partition.embed_footprints(out.S_bad, kept, frame_shape)
        stacks.append(backend.to_host(footprints.to_stack(S_fov, frame_shape), "float32"))
        trace_blocks.append(backend.to_host(out.T_bad, "float32"))
        rules.extend(out.bad_rules)
    if not stacks:
        return None
    return EliminatedCandidates(footprints=host.concat(stacks, axis=0), traces=host.concat(trace_blocks, axis=1),
                                rules=tuple(rules))
