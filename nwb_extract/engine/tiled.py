"""Tiled T- and S-steps: the robust solvers of :mod:`robust` applied tile by tile over the field of view.

Spec §6.6 (``solve_T``), §6.7 (``solve_S``) and §6.8 (``solve_T_robust``). Shapes follow the spec: ``S`` (P, K)
images (one column per cell), ``T`` (K, n) traces, ``Mt`` (n, P) movie as frames x pixels, ``mask`` (P, K) bool.
Pixels are flattened **row-major** (``p = row * w + col`` for ``frame_shape = (h, w)``); tiles are rectangles of
the image, so results do not depend on the flattening (the reference flattens column-major).

Tiling changes results (each cell's trace is a power-weighted average of fits on different pixel subsets), so the
tile counts follow a fixed rule: the reference's CPU rule (``tiling="deterministic"``, tiles about ``20 r`` pixels
wide), identical on every device. The reference's GPU rule, which sizes tiles by free device memory, is not
offered: it would make results depend on the machine (spec §13 item 11).

Only pixels inside the union of the footprints (T-step) or masks (S-step) enter the solvers; per tile, only the
cells that touch it. All index bookkeeping (which pixels and cells a tile holds, scattering the tile results back)
is done with ``take``, ``nonzero`` and ``cumulative_sum`` on the arrays' own device, without host round trips.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

from nwb_extract.engine.matlab import matlab_round
from nwb_extract.engine import backend, noise, solver_kernels
from nwb_extract.engine.robust import SOLVERS
from nwb_extract.config import TILINGS
from nwb_extract.errors import ConfigError, InputError

#: Tile side of the deterministic rule, in cell radii ("~10 cells wide").
TILE_SIDE_IN_RADII = 20.0
#: Cells per tile above which the tile-count minimum grows (``round(sqrt(K / 100))`` tiles per axis).
CELLS_PER_TILE = 100
#: Frames per time chunk above which the minimum number of time chunks grows (``round(n / 20000)``).
FRAMES_PER_CHUNK = 20000
#: Iteration counts below this apply the tile-count minimum in ``solve_T`` and ``solve_S``.
MINIMUM_TILES_BELOW_ITER = 101
#: Traces are soft-thresholded by this many noise levels before the S-step (``3 sqrt(2)``).
S_STEP_TRACE_THRESHOLD = 3.0 * math.sqrt(2.0)
#: Floor of the per-image maximum in the S-step normalisation (``normalize_to_one``).
NORMALISE_FLOOR = 1e-6


class TileCounts(NamedTuple):
    """Number of tiles along x (columns), y (rows) and time."""

    n_x: int
    n_y: int
    n_time: int


class SStepResult(NamedTuple):
    """Output of :func:`solve_S`.

    Attributes
    ----------
    S : (P, K) float32 — new images, each column scaled to max 1 (``normalize_to_one``).
    scale : (K,) float32 — the per-image maxima divided out (floored at 1e-6).
    T_corr_in : (K, n) float32 — movie projected on the unnormalised new images, **multiplied** by ``scale``
        (reference behaviour, spec §13 item 8; feeds only the spatio-temporal metrics, which divide it by
        ``scale**2``: :func:`~nwb_extract.engine.spatiotemporal.inputs_from_s_step`).
    T_corr_out : (K, n) float32 — movie projected on the surround images.
    S_surround : (P, K) float32 — surround images: ``max(0, M T_thr^T)`` inside the mask where the new image is at
        most 0.01.

    The last three are None when :func:`solve_S` was asked for no ``projections``.
    """

    S: Any
    scale: Any
    T_corr_in: Any
    T_corr_out: Any
    S_surround: Any



def _check_tiling(tiling: str) -> None:
    if tiling not in TILINGS:
        raise ConfigError(f"unknown tiling {tiling!r}; choose 'deterministic' (the same tiles on every device)")


def _spatial_base(frame_shape: tuple[int, int], radius: float) -> tuple[int, int]:
    h, w = frame_shape
    side = TILE_SIDE_IN_RADII * radius
    return max(matlab_round(w / side), 1), max(matlab_round(h / side), 1)


def t_step_tiles(frame_shape: tuple[int, int], radius: float, n_cells: int, n_frames: int, *,
                 apply_minimum: bool) -> TileCounts:
    """Tile counts of the T-step (spec §6.6, deterministic CPU rule).

    ``n_x = max(round(w / (20 r)), 1)``, ``n_y = max(round(h / (20 r)), 1)``, one time chunk; with
    ``apply_minimum`` (``solve_T``: fewer than 101 iterations; ``solve_T_robust``: ``frr_edge_case_flag == 0``)
    at least ``round(sqrt(K/100))`` tiles per axis and ``round(n/20000)`` time chunks.
    """
    n_x, n_y = _spatial_base(frame_shape, radius)
    n_time = 1
    if apply_minimum:
        per_axis = matlab_round(math.sqrt(n_cells / CELLS_PER_TILE))
        n_x, n_y = max(n_x, per_axis), max(n_y, per_axis)
        n_time = max(n_time, matlab_round(n_frames / FRAMES_PER_CHUNK))
    return TileCounts(n_x, n_y, n_time)


def s_step_tiles(frame_shape: tuple[int, int], radius: float, n_cells: int, n_iter: int) -> TileCounts:
    """Tile counts of the S-step (spec §6.7, deterministic CPU rule).

    ``n_x = n_y = max(round(w / (20 r)), 1)`` (both from the width, as the reference); with fewer than 101
    iterations at least ``round(sqrt(K/100))`` per axis. No time chunks.
    """
    n_x, _ = _spatial_base(frame_shape, radius)
    if n_iter < MINIMUM_TILES_BELOW_ITER:
        n_x = max(n_x, matlab_round(math.sqrt(n_cells / CELLS_PER_TILE)))
    return TileCounts(n_x, n_x, 1)


def _ranges(length: int, count: int) -> list[tuple[int, int]]:
    """``count`` contiguous ranges of size ``ceil(length / count)`` covering ``0..length`` (empty ones dropped)."""
    size = -(-length // count)
    return [(i * size, min((i + 1) * size, length)) for i in range(count) if i * size < length]


def _tile_pixels(support: Any, frame_shape: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int],
                 xp: Any) -> Any:
    """Row-major indices (int64, ascending) of the ``support`` pixels inside the rectangle ``rows`` x ``cols``."""
    h, w = frame_shape
    block = xp.reshape(support, (h, w))[rows[0]:rows[1], cols[0]:cols[1]]
    r, c = xp.nonzero(block)
    return (xp.astype(r, xp.int64) + rows[0]) * w + (xp.astype(c, xp.int64) + cols[0])


def _tile_pixel_sets(union: Any, frame_shape: tuple[int, int], tiles: TileCounts, xp: Any):
    """Pixels of ``union`` (P,) bool in each spatial tile, tiles in the reference's order (columns outer, rows
    inner); empty tiles are skipped."""
    h, w = frame_shape
    for cols in _ranges(w, tiles.n_x):
        for rows in _ranges(h, tiles.n_y):
            pix = _tile_pixels(union, frame_shape, rows, cols, xp)
            if pix.shape[0] > 0:
                yield pix


def _slots(selected: Any, xp: Any) -> Any:
    """For each of N entries, 1 + its position among the ``selected`` ones (in order), or 0 when not selected."""
    rank = xp.cumulative_sum(xp.astype(selected, xp.int64))
    return xp.where(selected, rank, xp.zeros_like(rank))


def _spread(values: Any, slots: Any, axis: int, xp: Any, device: Any) -> Any:
    """Scatter ``values`` (k entries along ``axis``) to N entries given by :func:`_slots`; zeros elsewhere."""
    zero_shape = list(values.shape)
    zero_shape[axis] = 1
    padded = xp.concat([xp.zeros(tuple(zero_shape), dtype=values.dtype, device=device), values], axis=axis)
    return xp.take(padded, slots, axis=axis)


def _solver(solver: str | Callable) -> Callable:
    if callable(solver):
        return solver
    if solver not in SOLVERS:
        raise ConfigError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    return SOLVERS[solver]


def _check_shapes(S: Any, T: Any, Mt: Any, frame_shape: tuple[int, int]) -> None:
    h, w = frame_shape
    P, K = S.shape
    if h * w != P:
        raise InputError(f"frame_shape {tuple(frame_shape)} has {h * w} pixels but S has {P} rows; pass the "
                         "(rows, cols) of the images S was flattened from")
    if T.shape[0] != K:
        raise InputError(f"T has {T.shape[0]} rows but S has {K} cells; T must be (cells, frames)")
    if tuple(Mt.shape) != (T.shape[1], P):
        raise InputError(f"Mt has shape {tuple(Mt.shape)}; expected (frames, pixels) = ({T.shape[1]}, {P})")


def _per_cell(values: Any, K: int, xp: Any, device: Any, dtype: Any) -> Any:
    return xp.zeros((K,), dtype=dtype, device=device) if values is None else xp.astype(values, dtype)


def _t_step(T: Any, S: Any, Mt: Any, kappa: float, n_iter: int, solve: Callable, tiles: TileCounts,
            frame_shape: tuple[int, int], lam: Any, shift: str | None, solver_kwargs: dict) -> Any:
    """Shared body of :func:`solve_T` and :func:`solve_T_robust` (spec §6.6, §6.8).

    ``shift`` is None (plain power-weighted average), ``"tile"`` (each tile's traces shifted to minimum 0 before
    accumulation) or ``"running_min"`` (accumulated traces floored at the largest per-tile running minimum).
    """
    xp, device = backend.get_namespace_and_device(S, T, Mt)
    _check_shapes(S, T, Mt, frame_shape)
    K, n = T.shape
    dtype = Mt.dtype
    lam = _per_cell(lam, K, xp, device, dtype)
    union = xp.sum(S, axis=1) > 0
    accumulated = xp.zeros((K, n), dtype=dtype, device=device)
    floor = xp.full((K,), -math.inf, dtype=dtype, device=device)
    S_rows = solver_kernels.row_major(S)  # the tiles gather rows (pixels): contiguous rows make that a copy per row

    def fit_tile(pix: Any) -> tuple[Any, list] | None:
        """The tile's cells (bool (K,)) and its power-weighted fits ``(t0, t1, (k, t1 - t0))`` per time chunk."""
        S_tile = xp.take(S_rows, pix, axis=0)
        is_cell = xp.sum(S_tile, axis=0) > 0
        cells = xp.nonzero(is_cell)[0]
        if cells.shape[0] == 0:
            return None
        A = xp.matrix_transpose(xp.take(S_tile, cells, axis=1))
        power = xp.sum(A * A, axis=1)
        M_tile = xp.matrix_transpose(solver_kernels.gather_pixels_transposed(Mt, pix))  # (n, p), pixel-major in memory
        T_cells = xp.take(T, cells, axis=0)
        fits = []
        for t0, t1 in _ranges(n, tiles.n_time):
            X0 = xp.matrix_transpose(T_cells[:, t0:t1])
            X, _ = solve(X0, A, M_tile[t0:t1, :], kappa, n_iter, lam=xp.take(lam, cells), **solver_kwargs)
            if shift == "tile":
                X = X - xp.min(X, axis=0, keepdims=True)
            fits.append((t0, t1, xp.matrix_transpose(X) * power[:, None]))
        return is_cell, fits

    # tiles are fitted independently (side by side on the host's cores) and accumulated in the reference's order
    pixel_sets = list(_tile_pixel_sets(union, frame_shape, tiles, xp))
    sizes = [pix.shape[0] for pix in pixel_sets]  # a tile's work grows with its pixels
    for tile in solver_kernels.map_in_threads(fit_tile, pixel_sets, xp, sizes):
        if tile is None:
            continue
        is_cell, fits = tile
        slots = _slots(is_cell, xp)
        for t0, t1, contribution in fits:
            accumulated[:, t0:t1] = accumulated[:, t0:t1] + _spread(contribution, slots, 0, xp, device)
            if shift == "running_min":
                floor = xp.where(is_cell, xp.maximum(floor, xp.min(accumulated[:, t0:t1], axis=1)), floor)
    if shift == "running_min":
        accumulated = xp.maximum(accumulated, floor[:, None])
    total_power = xp.sum(S * S, axis=0)
    # zero-power cells (all-zero image, spec §13 item 17) get zero traces instead of 0/0
    return accumulated / xp.where(total_power > 0, total_power, xp.ones_like(total_power))[:, None]


def solve_T(T: Any, S: Any, Mt: Any, kappa: float, n_iter: int, *, solver: str | Callable = "fp_solve_admm",
            frame_shape: tuple[int, int], radius: float, lam: Any = None, tiling: str = "deterministic",
            **solver_kwargs: Any) -> Any:
    """Tiled robust T-step: new traces given the images (spec §6.6).

    For every spatial tile (and time chunk) the chosen solver fits the traces of the cells touching the tile to the
    movie on the tile's footprint pixels, warm-started from ``T``; each cell's trace is the average of its tile
    fits weighted by the image power ``sum S**2`` inside each tile.

    Parameters
    ----------
    T : array (K, n), float32 — current traces (warm start).
    S : array (P, K), float32 — images, row-major pixels of ``frame_shape``.
    Mt : array (n, P), float32 — movie, frames x pixels.
    kappa : float — Huber threshold (``kappa_std_ratio * sigma``); the adaptive solvers read it as the noise level.
    n_iter : int — solver iterations (``max_iter_T`` / ``max_iter_T_final``).
    solver : str or callable — a name in :data:`~nwb_extract.engine.robust.SOLVERS` (``fp_solve_admm`` in
        refinement; ``fp_solve_adaptive``, ``fp_solve_adaptive_raw``, ``fp_solve`` in the final regression).
    frame_shape : (h, w) — image shape; ``radius`` : float — ``avg_cell_radius`` in pixels (sets the tiling).
    lam : array (K,), optional — l1 penalty per cell (§6.5).
    tiling : ``"deterministic"`` (the only rule offered).
    **solver_kwargs : passed to the solver (e.g. ``kappa_iter_nums``).

    Returns
    -------
    array (K, n), float32 — traces; cells with an all-zero image get zero traces.
    """
    _check_tiling(tiling)
    tiles = t_step_tiles(frame_shape, radius, S.shape[1], T.shape[1],
                         apply_minimum=n_iter < MINIMUM_TILES_BELOW_ITER)
    return _t_step(T, S, Mt, kappa, n_iter, _solver(solver), tiles, frame_shape, lam, None, solver_kwargs)


def solve_T_robust(T: Any, S: Any, Mt: Any, kappa: float, n_iter: int, *,
                   solver: str | Callable = "fp_solve_adaptive_baseline", frame_shape: tuple[int, int],
                   radius: float, lam: Any = None, quantile: float = 0.25, check_every_step: bool = False,
                   edge_case_flag: bool = False, tiling: str = "deterministic", **solver_kwargs: Any) -> Any:
    """Tiled T-step with a per-cell lower bound: the ``baseline_adjusted`` final regression (spec §6.8).

    As :func:`solve_T` with a baseline solver (``fp_solve_adaptive_baseline``, or ``fp_solve_admm_baseline``
    without adaptive kappa) and:

    * ``edge_case_flag`` false (``frr_edge_case_flag = 0``, default): the tile-count minimum always applies and
      every tile's traces are shifted to minimum 0 over frames before they are accumulated;
    * ``edge_case_flag`` true: no minimum and no per-tile shift; the accumulated traces are floored at
      ``max over tiles`` of their running minimum after each tile.

    Parameters are those of :func:`solve_T` plus ``quantile`` (``trace_quantile``) and ``check_every_step``
    (``frr_check_every_step``), passed to the solver. The caller shifts each returned trace to minimum 0 (spec
    §8.2). Returns (K, n) float32.
    """
    _check_tiling(tiling)
    tiles = t_step_tiles(frame_shape, radius, S.shape[1], T.shape[1], apply_minimum=not edge_case_flag)
    kwargs = dict(solver_kwargs, quantile=quantile, check_every_step=check_every_step)
    shift = "running_min" if edge_case_flag else "tile"
    return _t_step(T, S, Mt, kappa, n_iter, _solver(solver), tiles, frame_shape, lam, shift, kwargs)


def _assemble_rows(blocks: list[Any], pixels: list[Any], support: Any, xp: Any, device: Any) -> Any:
    """Stack per-tile row blocks (p_t, K) into a (P, K) array whose rows are the tiles' pixels (zeros elsewhere).

    The tiles partition the ``support`` pixels, so sorting the concatenated pixel list gives ``nonzero(support)``;
    the argsort maps each support pixel to its row in the concatenated blocks.
    """
    stacked = xp.concat(blocks, axis=0)
    order = xp.argsort(xp.concat(pixels))
    rank = xp.cumulative_sum(xp.astype(support, xp.int64))
    position = xp.take(order, xp.clip(rank - 1, min=0))
    slots = xp.where(support, position + 1, xp.zeros_like(position))
    return _spread(stacked, slots, 0, xp, device)


_FRAME_SEPARABLE_SOLVER = SOLVERS["fp_solve_admm"]


def _active_frames(A: Any, xp: Any) -> Any:
    """The frames where some cell's thresholded trace is > 0, or None when that is every frame. Elsewhere ``A`` has
    a zero column, so the frame adds nothing to the fixed-kappa ADMM's operators (its row of ``A^T Q`` is 0) and
    the solution is exactly the same (up to float summation order) while the movie-sized work shrinks to the active
    frames. At least one frame is kept so the shapes stay valid. A (k, n) -> (n_active,) int64 or None."""
    active = xp.any(A > 0, axis=0)
    n_active = int(xp.sum(xp.astype(active, xp.int64)))
    if n_active == A.shape[1]:
        return None
    if n_active == 0:
        active = xp.arange(A.shape[1], device=A.device) == 0
    return xp.nonzero(active)[0]


def solve_S(S: Any, T: Any, Mt: Any, mask: Any, kappa: float, n_iter: int, *,
            solver: str | Callable = "fp_solve_admm", frame_shape: tuple[int, int], radius: float,
            tiling: str = "deterministic", projections: bool = True, **solver_kwargs: Any) -> SStepResult:
    """Tiled robust S-step: new images given the traces, inside the masks (spec §6.7).

    The traces are soft-thresholded first, ``T_thr = max(0, T - 3 sqrt(2) sigma_T)`` per cell (``sigma_T`` from
    :func:`~nwb_extract.engine.noise.estimate_noise_std`). For every tile the solver fits the images of the cells
    whose mask touches the tile, on the mask pixels, warm-started from ``S`` and constrained to the mask (no l1
    penalty); the images are then scaled to max 1. The S-step is separable per pixel, so tiling changes only the
    solver's conditioning and stopping.

    Parameters
    ----------
    S : array (P, K), float32 — current images (warm start), row-major pixels of ``frame_shape``.
    T : array (K, n), float32 — traces from the T-step.
    Mt : array (n, P), float32 — movie, frames x pixels (the solver receives its tile transposed, pixels x frames).
    mask : bool array (P, K) — where each image may be non-zero.
    kappa : float — Huber threshold; ``n_iter`` : int — solver iterations (``max_iter_S``).
    solver : ``"fp_solve_admm"`` (default) or ``"fp_solve_adaptive_filter"`` (``adaptive_kappa_filter``).
    frame_shape, radius, tiling : as in :func:`solve_T`.
    projections : bool — also compute ``T_corr_in``, ``T_corr_out`` and ``S_surround`` (three dense products
        per tile, read only by the spatio-temporal metrics); None in the result otherwise.
    **solver_kwargs : passed to the solver (e.g. ``check_from_start``).

    Returns
    -------
    SStepResult
        ``(S, scale, T_corr_in, T_corr_out, S_surround)``, see :class:`SStepResult`.
    """
    _check_tiling(tiling)
    xp, device = backend.get_namespace_and_device(S, T, Mt)
    _check_shapes(S, T, Mt, frame_shape)
    if tuple(mask.shape) != tuple(S.shape):
        raise InputError(f"mask has shape {tuple(mask.shape)}; it must match S {tuple(S.shape)} (pixels, cells)")
    solve = _solver(solver)
    K, n = T.shape
    dtype = Mt.dtype
    T_thr = xp.clip(T - S_STEP_TRACE_THRESHOLD * noise.estimate_noise_std(T, axis=1)[:, None], min=0.0)
    tiles = s_step_tiles(frame_shape, radius, K, n_iter)
    union = xp.any(mask, axis=1)
    corr_in = xp.zeros((K, n), dtype=dtype, device=device)
    corr_out = xp.zeros((K, n), dtype=dtype, device=device)
    image_blocks, surround_blocks, pixel_blocks = [], [], []
    S_rows, mask_rows = solver_kernels.row_major(S), solver_kernels.row_major(mask)  # tiles gather their rows

    def fit_tile(pix: Any) -> tuple[Any, Any, Any, Any, Any]:
        """The tile's cells (bool (K,)), images and surround images (p, k), and the movie projected on each (k, n)."""
        mask_tile = xp.take(mask_rows, pix, axis=0)
        is_cell = xp.any(mask_tile, axis=0)
        cells = xp.nonzero(is_cell)[0]
        mask_sub = xp.take(mask_tile, cells, axis=1)
        A = xp.take(T_thr, cells, axis=0)
        X0 = xp.take(xp.take(S_rows, pix, axis=0), cells, axis=1)
        frames = _active_frames(A, xp) if solve is _FRAME_SEPARABLE_SOLVER else None
        A_fit = A if frames is None else xp.take(A, frames, axis=1)
        M_fit = solver_kernels.gather_pixels(Mt, pix, frames)  # (f, p); the solver gets it transposed (a view)
        image, _ = solve(X0, A_fit, xp.matrix_transpose(M_fit), kappa, n_iter, mask=mask_sub, **solver_kwargs)
        if not projections:
            return is_cell, image, None, None, None
        M_tile = M_fit if frames is None else solver_kernels.gather_pixels(Mt, pix)  # (n, p): every frame
        del M_fit
        surround = xp.clip(xp.matrix_transpose(A @ M_tile), min=0.0)
        surround = xp.where((image > 0.01) | ~mask_sub, xp.zeros_like(surround), surround)
        return (is_cell, image, surround, xp.matrix_transpose(M_tile @ image),
                xp.matrix_transpose(M_tile @ surround))

    # tiles are fitted independently (side by side on the host's cores) and collected in the reference's order
    pixel_sets = list(_tile_pixel_sets(union, frame_shape, tiles, xp))
    for pix, (is_cell, image, surround, on_image, on_surround) in zip(
            pixel_sets, solver_kernels.map_in_threads(fit_tile, pixel_sets, xp, [pix.shape[0] for pix in pixel_sets])):
        slots = _slots(is_cell, xp)
        image_blocks.append(_spread(image, slots, 1, xp, device))
        pixel_blocks.append(pix)
        if projections:
            corr_in = corr_in + _spread(on_image, slots, 0, xp, device)
            corr_out = corr_out + _spread(on_surround, slots, 0, xp, device)
            surround_blocks.append(_spread(surround, slots, 1, xp, device))
    if not pixel_blocks:
        zeros = xp.zeros(S.shape, dtype=dtype, device=device)
        return SStepResult(zeros, xp.full((K,), NORMALISE_FLOOR, dtype=dtype, device=device),
                           *((corr_in, corr_out, zeros) if projections else (None, None, None)))
    images = _assemble_rows(image_blocks, pixel_blocks, union, xp, device)
    scale = xp.clip(xp.max(images, axis=0), min=NORMALISE_FLOOR)
    if not projections:
        return SStepResult(images / scale[None, :], scale, None, None, None)
    surround_images = _assemble_rows(surround_blocks, pixel_blocks, union, xp, device)
    return SStepResult(images / scale[None, :], scale, corr_in * scale[:, None], corr_out, surround_images)
