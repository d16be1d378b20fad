"""Single-cell alternating robust fit of cell finding (spec §5.4, ``alt_opt_single``).

From a seed image, one cell's trace and image are fitted in turn by one-sided Huber regressions on a support
around the image (solver :func:`~nwb_extract.engine.robust.solve_single_source`, spec §5.5), until both change by
less than 10 %; the least-squares companions that cell finding subtracts from its movie copy come with the fit.

Public API
----------
* :func:`fit_single_cell` (:func:`fit_single_cell_on_movie` on the pixel-major movie ``(h, w, n)`` of cell
  finding) — returns a :class:`SingleCellFit`.

Layout: the movie is the matrix ``Mt (n, P)``, pixels flattened row-major (``p = row * w + col``), or the pixel-major
``Yt (h, w, n)`` float32 (:func:`~nwb_extract.engine.seeds.pixel_major`). Only the support's pixels are gathered per
alternation (spec §12), as contiguous traces; the per-alternation changes are small host NumPy arrays.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from nwb_extract.engine import backend, morphology, noise, solver_kernels
from nwb_extract.engine.robust import solve_single_source
from nwb_extract.engine.seeds import bounding_box, pixel_major, support_rows
from nwb_extract.errors import InputError

#: Support radii of :func:`fit_single_cell`: the core that must stay inside the cached support, and the support.
SUPPORT_CORE_RADIUS = 3
SUPPORT_RADIUS = 6
#: Pixels above this fraction of the image maximum seed the supports (spec §5.4).
SUPPORT_LEVEL = 0.1
#: Relative change of image and trace below which the alternation stops (spec §5.4).
ALTERNATION_TOL = 0.1
#: Trace samples above ``ACTIVE_NOISE_FACTOR * noise_std(t)`` are the active frames of the image update (§5.4).
ACTIVE_NOISE_FACTOR = 3.0 * math.sqrt(2.0)
#: Floor of the maximum that the fitted image is divided by (spec §5.4).
IMAGE_FLOOR = 1e-10
#: Starting kappa of the adaptive trace fit (the reference passes a kappa function, which starts at 1; robust.py).
ADAPTIVE_KAPPA_START = 1.0


@dataclass(frozen=True)
class SingleCellFit:
    """One cell fitted by :func:`fit_single_cell` (spec §5.4, ``alt_opt_single``).

    Attributes
    ----------
    s : float32 array (P,)
        Robust image, max 1 (pixels row-major), zero outside the last support.
    t : float32 array (n,)
        Robust non-negative trace.
    t_corr : float32 array (n,)
        Least-squares trace of the image: ``max(0, (s / sum s^2)^T Mt[:, s > 0]^T)``; subtracted from the movie.
    s_corr : float32 array (P,)
        Least-squares image on the support from the active frames; zero when the fit stopped before any image
        update or had at most one active frame.
    s_change, t_change : float32 NumPy arrays (max_iter,)
        Relative change of image and trace at each alternation (zeros after the last one recorded).
    """

    s: Any
    t: Any
    t_corr: Any
    s_corr: Any
    s_change: Any
    t_change: Any


# ----------------------------------------------------------------------------------------------------------------
# supports


@dataclass(frozen=True)
class _Support:
    """A support: its mask (bool (h, w)), its pixels (flat row-major indices into the frame, int (p,)) and the
    movie on them, ``B`` ``(p, n)`` with contiguous rows (pixels' traces)."""

    mask: Any
    pixels: Any
    B: Any


def _support_footprints(support: str, xp: Any, device: Any) -> tuple[Any, Any]:
    """The core and support neighbourhoods (bool) in namespace ``xp`` on ``device``."""
    return tuple(backend.from_numpy(footprint, xp, device) for footprint in _host_footprints(support))


@functools.lru_cache(maxsize=None)
def _host_offsets(support: str) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """The core and support neighbourhoods as (rows, cols) offsets of their pixels from the centre (host int64
    arrays, read only): the form the compiled dilation takes."""
    host = backend.select("numpy")
    offsets = []
    for footprint in _host_footprints(support):
        rows, cols = host.nonzero(footprint)
        offsets.append((host.astype(rows - footprint.shape[0] // 2, host.int64),
                        host.astype(cols - footprint.shape[1] // 2, host.int64)))
    return offsets[0], offsets[1]


@functools.lru_cache(maxsize=None)
def _host_footprints(support: str) -> tuple[Any, Any]:
    """The core and support neighbourhoods as NumPy arrays, built once per kind (read only)."""
    if support == "strel":
        return morphology.strel_disk(SUPPORT_CORE_RADIUS), morphology.strel_disk(SUPPORT_RADIUS)
    if support == "disk":
        return morphology.disk_footprint(SUPPORT_CORE_RADIUS), morphology.disk_footprint(SUPPORT_RADIUS)
    raise InputError(f"support must be 'strel' (MATLAB's approximated disk, the reference CPU path) or 'disk' "
                     f"(exact disk); got {support!r}")


def _dilated_core(s: Any, footprint: Any, offsets: tuple[Any, Any]) -> Any:
    """``dilate(s > 0.1 max(s), footprint)`` as a bool (h, w) mask, dilating only the region the result can reach
    (NumPy: one compiled pass, the footprint given by its pixels' ``offsets`` from the centre)."""
    if solver_kernels.compiled_host(s):
        return solver_kernels.threshold_dilate(s, SUPPORT_LEVEL, offsets)
    xp = backend.get_namespace(s)
    seed = s > SUPPORT_LEVEL * xp.max(s)
    out = xp.zeros(s.shape, dtype=xp.bool, device=s.device)
    box = bounding_box(seed, margin=footprint.shape[0] // 2)
    if box is None:
        return out
    r0, r1, c0, c1 = box
    out[r0:r1, c0:c1] = morphology.dilate(seed[r0:r1, c0:c1], footprint)
    return out


def _leaves(core: Any, mask: Any) -> bool:
    """Whether the core (bool (h, w)) has a pixel outside the support mask."""
    if solver_kernels.compiled_host(core, mask):
        return solver_kernels.any_outside(core, mask)
    xp = backend.get_namespace(core)
    return bool(xp.any(core & ~mask))


def _load_support(Yt: Any, mask: Any) -> _Support:
    """The pixel-major movie ``Yt`` (h, w, n) on the pixels of ``mask`` (bool (h, w), non-empty) as ``B (p, n)``."""
    xp = backend.get_namespace(Yt)
    h, w, n = Yt.shape
    pixels = xp.nonzero(xp.reshape(mask, (-1,)))[0]
    return _Support(mask=mask, pixels=pixels, B=xp.take(xp.reshape(Yt, (h * w, n)), pixels, axis=0))


def _on_support(values: Any, support: _Support, frame_shape: tuple[int, int]) -> Any:
    """Full (h, w) float32 image holding ``values`` (p,) on the support pixels, zero elsewhere."""
    xp = backend.get_namespace(values)
    image = xp.zeros((frame_shape[0] * frame_shape[1],), dtype=xp.float32, device=values.device)
    image[xp.reshape(support.mask, (-1,))] = values
    return xp.reshape(image, frame_shape)


def _support_values(image: Any, support: _Support) -> Any:
    """``image`` (h, w) on the support pixels: (p,)."""
    xp = backend.get_namespace(image)
    return xp.take(xp.reshape(image, (-1,)), support.pixels)


def _relative_change(new: Any, old: Any) -> float:
    """``sum |new - old| / sum(new + old) * 2`` (float32 arithmetic, spec §5.4; NumPy: one compiled pass, the sums
    in NumPy's order)."""
    if solver_kernels.compiled_host(new, old):
        return solver_kernels.relative_change(new, old)
    xp = backend.get_namespace(new)
    return float(xp.sum(xp.abs(new - old)) / xp.sum(new + old) * 2.0)


def _active_frames(t: Any, noise_std: Any) -> tuple[Any, Any]:
    """The frames where the trace ``t`` (n,) exceeds ``3 sqrt(2) noise_std`` (int (f,)) and its values there (f,)."""
    threshold = ACTIVE_NOISE_FACTOR * noise_std
    if solver_kernels.compiled_host(t):
        return solver_kernels.entries_above(t, threshold)
    xp = backend.get_namespace(t)
    frames = xp.nonzero(t > threshold)[0]
    return frames, xp.take(t, frames)


def _unit_image(values: Any, support: _Support, frame_shape: tuple[int, int]) -> tuple[Any, bool]:
    """The (h, w) image holding ``values`` (p,) on the support pixels, scaled to max 1 (divided by
    ``max(max, 1e-10)``), and whether it has a non-zero pixel."""
    if solver_kernels.compiled_host(values, support.pixels):
        return solver_kernels.scaled_image(values, support.pixels, frame_shape, IMAGE_FLOOR)
    xp = backend.get_namespace(values)
    s = _on_support(values, support, frame_shape)
    s = s / xp.clip(xp.max(s), min=IMAGE_FLOOR)
    return s, float(xp.sum(s)) != 0


# ----------------------------------------------------------------------------------------------------------------
# the fit


def fit_single_cell(Mt: Any, frame_shape: tuple[int, int], s0: Any, noise_std: float, size_limit: float, *,
                    kappa_t: float = 0.7, kappa_s: float = 0.7, max_iter: int = 10, adaptive_kappa: bool = False,
                    support: str = "strel") -> SingleCellFit:
    """Fit one cell by alternating robust trace and image updates (spec §5.4, ``alt_opt_single``).

    Each alternation takes the support ``dilate(s > 0.1 max s, R=6)`` (recomputed only when the core
    ``dilate(s > 0.1 max s, R=3)`` leaves it), fits the trace on the support with the one-sided Huber solver,
    then the image from the frames where the trace exceeds ``3 sqrt(2) noise_std(t)``, scales the image to max 1,
    and stops when both change by less than 10 % (or the trace vanishes, or the support exceeds ``size_limit``).
    Finally the least-squares companions ``t_corr`` and ``s_corr`` used for subtraction are computed.

    Parameters
    ----------
    Mt : float32 array (n, P)
        Cell-finding movie (pixels row-major over ``frame_shape``).
    frame_shape : (h, w)
    s0 : float array (h, w)
        Seed image (its maximum must be > 0).
    noise_std : float
        Noise level sigma of the movie; Huber thresholds are ``kappa * noise_std``.
    size_limit : float
        Largest support (pixels) for which the alternation continues (``pi r^2 size_upper_limit``).
    kappa_t, kappa_s : float
        Thresholds (noise units) of the trace and image fits (``cellfind_kappa_std_ratio``).
    max_iter : int
        Alternations, and iterations of each inner fit (``cellfind_max_iter``).
    adaptive_kappa : bool
        Adaptive kappa in the trace fit (``cellfind_adaptive_kappa``); it starts from 1.0 as in the reference,
        and ``kappa_t`` is then not used.
    support : {'strel', 'disk'}
        ``'strel'`` (default): MATLAB's approximated ``strel('disk', 3 | 6)`` (5 x 5 square, 11 x 11 octagon) of
        the reference CPU path, which the golden data follow; ``'disk'``: the exact disks of the GPU path.

    Returns
    -------
    SingleCellFit
    """
    return fit_single_cell_on_movie(pixel_major(Mt, frame_shape), s0, noise_std, size_limit, kappa_t=kappa_t,
                                    kappa_s=kappa_s, max_iter=max_iter, adaptive_kappa=adaptive_kappa,
                                    support=support)


def fit_single_cell_on_movie(Yt: Any, s0: Any, noise_std: float, size_limit: float, *, kappa_t: float,
                             kappa_s: float, max_iter: int, adaptive_kappa: bool, support: str) -> SingleCellFit:
    """:func:`fit_single_cell` on the pixel-major movie ``Yt`` (h, w, n)."""
    xp = backend.get_namespace(Yt)
    device = Yt.device
    frame_shape = (Yt.shape[0], Yt.shape[1])
    core_fp, support_fp = _support_footprints(support, xp, device)
    core_offsets, support_offsets = _host_offsets(support)
    s = xp.astype(s0, xp.float32)
    if tuple(s.shape) != frame_shape:
        raise InputError(f"seed image s0 must have the frame shape {frame_shape}; got {tuple(s.shape)}")
    if not float(xp.max(s)) > 0:
        raise InputError("seed image s0 has no positive pixel; a cell cannot be fitted from it")
    t: Any = None  # the reference's scalar placeholder 1e6
    host = backend.select("numpy")  # per-alternation bookkeeping lives on the host
    s_change = host.zeros((max_iter,), dtype=host.float32)
    t_change = host.zeros((max_iter,), dtype=host.float32)
    current: _Support | None = None
    active: tuple[_Support, Any, Any] | None = None  # (support, t on active frames, the active frames)
    kappa_trace = ADAPTIVE_KAPPA_START if adaptive_kappa else kappa_t
    for it in range(max_iter):
        s_before, t_before = s, t
        core = _dilated_core(s, core_fp, core_offsets)
        if current is None or _leaves(core, current.mask):
            current = _load_support(Yt, _dilated_core(s, support_fp, support_offsets))
        t = solve_single_source(_support_values(s, current), current.B, noise_std, kappa_trace, max_iter,
                                adaptive=adaptive_kappa)
        if float(xp.sum(t)) == 0:
            active = None
            break
        frames, t_act = _active_frames(t, noise.estimate_noise_std(t))
        if frames.shape[0] == 0:  # no active frame: the reference's image turns NaN and fails the area check
            s = xp.zeros(frame_shape, dtype=xp.float32, device=device)
            active = None
            break
        active = (current, t_act, frames)
        B_act = solver_kernels.gather_pixels_transposed(current.B, frames)  # the active frames' rows (f, p)
        s, nonzero = _unit_image(solve_single_source(t_act, B_act, noise_std, kappa_s, max_iter), current,
                                 frame_shape)
        if not nonzero or current.B.shape[0] > size_limit:
            break
        s_change[it] = _relative_change(s, s_before)
        t_change[it] = (_relative_change(t, xp.full_like(t, 1e6)) if t_before is None
                        else _relative_change(t, t_before))
        if s_change[it] < ALTERNATION_TOL and t_change[it] < ALTERNATION_TOL:
            break
    if t is None:  # max_iter == 0
        t = xp.zeros((Yt.shape[2],), dtype=xp.float32, device=device)
    return SingleCellFit(s=xp.reshape(s, (-1,)), t=t, t_corr=_least_squares_trace(Yt, s),
                         s_corr=xp.reshape(_least_squares_image(active, frame_shape, xp, device), (-1,)),
                         s_change=s_change, t_change=t_change)


def _least_squares_image(active: tuple[_Support, Any, Any] | None, frame_shape: tuple[int, int], xp: Any,
                         device: Any) -> Any:
    """``s_corr`` (h, w): ``max(0, B_act t_act / (t_act^T t_act))`` on the support, zero without at least two
    active frames (spec §5.4)."""
    if active is None or active[1].shape[0] <= 1:
        return xp.zeros(frame_shape, dtype=xp.float32, device=device)
    support, t_act, frames = active
    values = xp.maximum(xp.take(support.B, frames, axis=1) @ (t_act / xp.sum(t_act * t_act)), 0.0)
    return _on_support(values, support, frame_shape)


def _least_squares_trace(Yt: Any, s: Any) -> Any:
    """``t_corr`` (n,): ``max(0, (s / sum s^2)[s > 0]^T Mt[:, s > 0]^T)`` (spec §5.4), from the pixel-major movie
    ``Yt`` (h, w, n)."""
    xp = backend.get_namespace(Yt)
    positive = s > 0
    box = bounding_box(positive)
    if box is None:
        return xp.zeros((Yt.shape[2],), dtype=xp.float32, device=Yt.device)
    r0, r1, c0, c1 = box
    weights = xp.where(positive, s, xp.zeros_like(s)) / xp.sum(s * s)
    weights_box = xp.reshape(weights[r0:r1, c0:c1], (-1,))
    mask_flat = xp.reshape(positive[r0:r1, c0:c1], (-1,))
    columns = xp.nonzero(mask_flat)[0]
    # frames x pixels in row-major order: the same matrix-vector product (and BLAS summation order) as ever
    frames = solver_kernels.row_major(xp.permute_dims(support_rows(Yt, box, columns), (1, 0)))
    return xp.maximum(frames @ weights_box[mask_flat], 0.0)
