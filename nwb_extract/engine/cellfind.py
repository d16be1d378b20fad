"""Cell finding: EXTRACT's greedy one-cell-at-a-time robust initialisation (spec §5, ``cw_extract``).

The cell-finding copy of the movie is filtered (§3.5); a *summary image* marks bright, spatially coherent spots
(§5.2); the brightest remaining spot seeds a correlation image (§5.3.1) from which one cell is fitted by alternating
one-sided Huber regressions of its trace and image (§5.4, solver
:func:`~nwb_extract.engine.robust.solve_single_source`); the fitted cell is checked, its least-squares companion is subtracted from the copy, the summary image is updated
around it, and the loop goes on until the seeds are too dim, the yield of good cells drops, or the step limit is
reached (§5.3).

Public API
----------
* :func:`find_cells` — the whole of §5 on one partition, with a :class:`CellFindSettings`; returns a
  :class:`CellFindingResult`;
* :func:`summary_stack`, :func:`update_summary_stack` — the summary image and its incremental update (§5.2);
* :func:`init_image`, :func:`gaussian_template` — the two seed images (§5.3.1, §5.1);
* :func:`fit_single_cell` — ``alt_opt_single`` (§5.4), returning a :class:`SingleCellFit`;

Layout: the movie is ``(n, h, w)`` float32 (or the matrix ``Mt (n, P)``), pixels flattened row-major
(``p = row * w + col``); images ``S (P, K)``, traces ``T (K, n)``. Seed choice breaks ties in MATLAB's
column-major order. Per step only the bounding box of the candidate's support moves (gathers by standard slicing;
the movie copy is updated by slice assignment), as spec §12 asks; the bookkeeping (per-step metrics, flags,
seeds) is small and lives on the host as NumPy arrays.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from nwb_extract.engine import backend, morphology, noise, preprocess
from nwb_extract.engine.footprints import cell_area
from nwb_extract.engine.matlab import matlab_round
from nwb_extract.engine.robust import solve_single_source
from nwb_extract.errors import InputError

logger = logging.getLogger(__name__)

#: Half-width of the summary-image neighbourhood (EXTRACT ``max_spread``), also the half-width of the window that
#: is zeroed around a rejected seed (spec §5.2, §5.3).
SUMMARY_SPREAD = 2
#: Correlation-image threshold of :func:`init_image` (spec §5.3.1).
INIT_THRESHOLD = 0.5
#: Radius (px) and Gaussian sigma of the optional template seed (``init_radius = 5``, sigma = 5 / 2.5; spec §5.1).
TEMPLATE_RADIUS = 5
TEMPLATE_SIGMA = TEMPLATE_RADIUS / 2.5
#: Support radii of :func:`fit_single_cell`: the core that must stay inside the cached support, and the support.
SUPPORT_CORE_RADIUS = 3
SUPPORT_RADIUS = 6
#: Pixels above this fraction of the image maximum seed the supports (spec §5.4).
SUPPORT_LEVEL = 0.1
#: Relative change of image and trace below which the alternation stops (spec §5.4).
ALTERNATION_TOL = 0.1
#: Trace samples above ``ACTIVE_NOISE_FACTOR * noise_std(t)`` are the active frames of the image update (§5.4).
ACTIVE_NOISE_FACTOR = 3.0 * math.sqrt(2.0)
#: Starting kappa of the adaptive trace fit (the reference passes a kappa function, which starts at 1; robust.py).
ADAPTIVE_KAPPA_START = 1.0
#: Duplicate test of a candidate against accepted cells: image proximity and trace correlation (spec §5.3).
DUPLICATE_PROXIMITY = 0.1
DUPLICATE_CORRELATION = 0.7
#: Pixels whose unfiltered temporal maximum is at most this are ignored by the noise median (spec §5.1).
VALID_PIXEL_LEVEL = 1e-6
#: Stop reasons of :func:`find_cells`.
STOP_REASONS = ("min_magnitude", "yield", "max_iter")

_CONNECTIVITY = 8  # bwareaopen / bwconncomp connectivity in 2-D


# ----------------------------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class SummaryStack:
    """Summary image of the cell-finding movie and the peak frame of every pixel (spec §5.2).

    Attributes
    ----------
    image : float32 array (h, w)
        ``image[p]`` = mean over the other pixels ``q`` of the ``(2 spread + 1)^2`` window around ``p`` (clipped at
        the borders) of the movie at ``p``'s own peak frame.
    peak_frame : int64 array (h, w)
        0-based frame of each pixel's temporal maximum (first maximum).
    """

    image: Any
    peak_frame: Any


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


@dataclass(frozen=True)
class CellFindingResult:
    """Output of :func:`find_cells` (spec §5.3, the reference's ``cw_extract`` outputs and ``init_summary``).

    Arrays marked *device* stay in the input's namespace and device; the rest are small NumPy arrays.

    Attributes
    ----------
    S : float32 array (P, K), device
        Accepted cell images in acceptance order, each column max 1 (pixels row-major).
    T : float32 array (K, n), device
        Their traces (units of the movie).
    summary_image : float32 array (h, w), device
        Summary image of the filtered movie before any subtraction.
    noise_per_pixel : float32 array (h, w), device
        Noise level of every pixel of the filtered movie (spec §4), not restricted to the mask.
    noise_std : float
        Median noise over the valid (and masked-in) pixels.
    min_magnitude : float
        Seed and trace-maximum threshold (spec §5.1).
    stop_reason : str
        ``'min_magnitude'``, ``'yield'`` or ``'max_iter'``.
    seeds : int64 (n_fitted, 2)
        ``[row, col]`` (0-based) of the seed of every fitted candidate, accepted or rejected, in step order.
    max_values : float32 (K,)
        Summary value at the seed of each accepted cell.
    metrics : float32 (n_steps, 4)
        Per step ``[area, max(t), trace snr, duplicate]``; ``n_steps`` includes the step at which the loop stopped
        (a zero row when it stopped on ``min_magnitude`` before fitting). A zero trace gives snr NaN.
    is_attr_bad : bool (n_steps, 5)
        Per step ``[too small, too large, below min magnitude, low trace snr, duplicate]``.
    is_good : bool (n_steps,)
        Accepted steps.
    S_trash : float32 array (P, n_rejected), device
        Images of the rejected candidates in step order (the reference keeps every unused slot; we keep only these).
    T_trash : float32 array (n_rejected, n), device
    S_change, T_change : float32 (n_fitted, cellfind_max_iter)
        Relative changes per alternation of every fitted candidate.
    """

    S: Any
    T: Any
    summary_image: Any
    noise_per_pixel: Any
    noise_std: float
    min_magnitude: float
    stop_reason: str
    seeds: Any
    max_values: Any
    metrics: Any
    is_attr_bad: Any
    is_good: Any
    S_trash: Any
    T_trash: Any
    S_change: Any
    T_change: Any

    @property
    def n_cells(self) -> int:
        """Number of accepted cells K."""
        return int(self.S.shape[1])


# ----------------------------------------------------------------------------------------------------------------
# small helpers


def _bounding_box(mask: Any, margin: int = 0) -> tuple[int, int, int, int] | None:
    """``(r0, r1, c0, c1)`` (stop exclusive) of the true pixels of a 2-D ``mask`` grown by ``margin`` and clipped
    to the frame; None when the mask is empty. One host sync (the box decides the slices)."""
    xp = backend.get_namespace(mask)
    h, w = mask.shape
    rows = xp.any(mask, axis=1)
    cols = xp.any(mask, axis=0)
    row_idx = backend.to_numpy(xp.nonzero(rows)[0])
    if row_idx.size == 0:
        return None
    col_idx = backend.to_numpy(xp.nonzero(cols)[0])
    return (max(int(row_idx[0]) - margin, 0), min(int(row_idx[-1]) + 1 + margin, h),
            max(int(col_idx[0]) - margin, 0), min(int(col_idx[-1]) + 1 + margin, w))


def _box_pixels(Y: Any, box: tuple[int, int, int, int]) -> Any:
    """The movie inside ``box`` as a ``(n, box pixels)`` matrix (row-major within the box)."""
    xp = backend.get_namespace(Y)
    r0, r1, c0, c1 = box
    return xp.reshape(Y[:, r0:r1, c0:c1], (Y.shape[0], (r1 - r0) * (c1 - c0)))


def _scatter_to_mask(values: Any, mask_flat: Any) -> Any:
    """Vector over ``mask_flat`` (bool (m,)) holding ``values`` (k,) at its true positions, in order, 0 elsewhere.

    Integer-array assignment is not in the Array API standard; a cumulative count of the true positions gives each
    of them the index of its value instead.
    """
    xp = backend.get_namespace(values)
    if values.shape[0] == 0:
        return xp.zeros(mask_flat.shape, dtype=values.dtype, device=values.device)
    slot = xp.cumulative_sum(xp.astype(mask_flat, xp.int64)) - 1
    slot = xp.clip(slot, min=0, max=values.shape[0] - 1)
    return xp.where(mask_flat, xp.take(values, slot), xp.zeros((), dtype=values.dtype, device=values.device))


def _column_major_argmax(image: Any) -> int:
    """Flat row-major index of the maximum of a 2-D ``image``, ties broken in column-major order (MATLAB ``max``)."""
    xp = backend.get_namespace(image)
    h, w = image.shape
    j = int(xp.argmax(xp.reshape(xp.permute_dims(image, (1, 0)), (-1,))))
    col, row = divmod(j, h)
    return row * w + col


def _movie(Mt: Any, frame_shape: tuple[int, int]) -> Any:
    """``Mt (n, P)`` as a ``(n, h, w)`` movie (a view where the namespace allows)."""
    xp = backend.get_namespace(Mt)
    h, w = (int(v) for v in frame_shape)
    if len(Mt.shape) != 2 or Mt.shape[1] != h * w:
        raise InputError(f"Mt must be (frames, pixels) with pixels = {h} x {w} = {h * w}; got shape {Mt.shape}")
    return xp.reshape(Mt, (Mt.shape[0], h, w))


# ----------------------------------------------------------------------------------------------------------------
# summary image (§5.2)


def _peak_frames(Y: Any, xp: Any, block: int = 64) -> Any:
    """First frame of each pixel's maximum, ``argmax`` over axis 0 of ``Y`` (n, h, w) -> int64 (h, w), computed in
    blocks of ``block`` frames: an argmax along the frame axis of the whole movie would make a movie-sized
    temporary. A later block wins only with a strictly larger value, so ties keep the first frame."""
    best_value = best_frame = None
    for t0 in range(0, Y.shape[0], block):
        chunk = Y[t0:min(t0 + block, Y.shape[0]), ...]
        frame = xp.astype(xp.argmax(chunk, axis=0), xp.int64) + t0
        value = xp.max(chunk, axis=0)
        if best_value is None:
            best_value, best_frame = value, frame
        else:
            better = value > best_value
            best_value = xp.where(better, value, best_value)
            best_frame = xp.where(better, frame, best_frame)
    return best_frame


def summary_stack(Mt: Any, frame_shape: tuple[int, int], spread: int = SUMMARY_SPREAD) -> SummaryStack:
    """Summary image of a movie: how bright each pixel's neighbours are at the pixel's own peak frame (spec §5.2).

    One argmax over time and ``(2 spread + 1)^2 - 1`` gathers; isolated hot pixels score low, cells high.

    Parameters
    ----------
    Mt : float32 array (n, P)
        Movie as frames x pixels (pixels row-major over ``frame_shape``).
    frame_shape : (h, w)
    spread : int
        Half-width of the neighbourhood (EXTRACT ``max_spread`` = 2).

    Returns
    -------
    SummaryStack
        ``image`` float32 (h, w) and ``peak_frame`` int64 (h, w), same namespace and device as ``Mt``.
    """
    Y = _movie(Mt, frame_shape)
    xp = backend.get_namespace(Y)
    _, h, w = Y.shape
    peak = _peak_frames(Y, xp)
    return SummaryStack(image=_window_means(Y, peak, (0, h, 0, w), spread), peak_frame=peak)


def update_summary_stack(Mt: Any, frame_shape: tuple[int, int], stack: SummaryStack, changed: Any,
                         spread: int = SUMMARY_SPREAD) -> SummaryStack:
    """Summary stack after the pixels ``changed`` of the movie were modified (spec §5.2, incremental update).

    The peak frame is recomputed for the changed pixels only, the summary value for every pixel within Chebyshev
    distance ``spread`` of them; the rest is kept.

    Parameters
    ----------
    Mt : float32 array (n, P)
        The modified movie.
    frame_shape : (h, w)
    stack : SummaryStack
        The stack before the modification (not changed by this call).
    changed : bool array (h, w)
        Modified pixels.
    spread : int

    Returns
    -------
    SummaryStack
        New arrays.
    """
    Y = _movie(Mt, frame_shape)
    xp = backend.get_namespace(Y)
    image = xp.asarray(stack.image, copy=True)
    peak = xp.asarray(stack.peak_frame, copy=True)
    _refresh_summary(Y, image, peak, changed, spread)
    return SummaryStack(image=image, peak_frame=peak)


def _refresh_summary(Y: Any, image: Any, peak: Any, changed: Any, spread: int) -> None:
    """In-place incremental update of ``image`` / ``peak`` (h, w) for the bool (h, w) ``changed`` pixels."""
    xp = backend.get_namespace(Y)
    box = _bounding_box(changed)
    if box is None:
        return
    r0, r1, c0, c1 = box
    changed_box = changed[r0:r1, c0:c1]
    new_peak = _peak_frames(Y[:, r0:r1, c0:c1], xp)
    peak[r0:r1, c0:c1] = xp.where(changed_box, new_peak, peak[r0:r1, c0:c1])
    a0, a1, b0, b1 = _bounding_box(changed, margin=spread)
    window = xp.ones((2 * spread + 1, 2 * spread + 1), dtype=xp.bool, device=changed.device)
    affected = morphology.dilate(changed[a0:a1, b0:b1], window)
    values = _window_means(Y, peak, (a0, a1, b0, b1), spread)
    image[a0:a1, b0:b1] = xp.where(affected, values, image[a0:a1, b0:b1])


def _window_means(Y: Any, peak: Any, box: tuple[int, int, int, int], spread: int) -> Any:
    """Summary values (float32 (r1-r0, c1-c0)) of the pixels of ``box``: for each pixel p, the mean over the other
    pixels q of its clipped window of ``Y[peak[p], q]``. One gather per window offset from the movie region that
    the windows reach."""
    xp = backend.get_namespace(Y)
    device = Y.device
    _, h, w = Y.shape
    r0, r1, c0, c1 = box
    g0, g1, f0, f1 = max(r0 - spread, 0), min(r1 + spread, h), max(c0 - spread, 0), min(c1 + spread, w)
    region = xp.reshape(Y[:, g0:g1, f0:f1], (-1,))
    region_h, region_w = g1 - g0, f1 - f0
    frame_base = peak[r0:r1, c0:c1] * (region_h * region_w)
    rows = xp.arange(r0, r1, dtype=xp.int64, device=device)[:, None]
    cols = xp.arange(c0, c1, dtype=xp.int64, device=device)[None, :]
    total = xp.zeros((r1 - r0, c1 - c0), dtype=xp.float32, device=device)
    count = xp.zeros((r1 - r0, c1 - c0), dtype=xp.float32, device=device)
    zero = xp.zeros((), dtype=xp.float32, device=device)
    for dy in range(-spread, spread + 1):
        r = rows + dy
        row_ok = (r >= 0) & (r < h)
        r_local = xp.clip(r, min=g0, max=g1 - 1) - g0
        for dx in range(-spread, spread + 1):
            if dy == 0 and dx == 0:
                continue
            c = cols + dx
            ok = row_ok & (c >= 0) & (c < w)
            c_local = xp.clip(c, min=f0, max=f1 - 1) - f0
            index = frame_base + r_local * region_w + c_local
            values = xp.reshape(xp.take(region, xp.reshape(index, (-1,))), index.shape)
            total = total + xp.where(ok, values, zero)
            count = count + xp.astype(ok, xp.float32)
    return total / count


# ----------------------------------------------------------------------------------------------------------------
# seed images (§5.3.1, §5.1)


def init_image(Mt: Any, frame_shape: tuple[int, int], seed: tuple[int, int], half_width: int,
               threshold: float = INIT_THRESHOLD) -> Any:
    """Correlation seed image around ``seed`` (spec §5.3.1, ``generate_init_image``).

    In the ``(2 half_width + 1)^2`` window around the seed (clipped), every frame is centred on its mean over the
    window and scaled to unit norm (``max(1e-6, norm)``); each pixel's value is the inner product of its trace
    with the seed's, divided by the largest value; values below ``threshold`` are zeroed, only the largest
    8-connected component (all of them on a size tie) is kept, and the image is scaled to max 1.

    Parameters
    ----------
    Mt : float32 array (n, P)
        Cell-finding movie, pixels row-major over ``frame_shape``.
    frame_shape : (h, w)
    seed : (row, col)
        0-based seed pixel.
    half_width : int
        Window half-width; cell finding uses ``floor(1.5 avg_cell_radius)``.
    threshold : float

    Returns
    -------
    float32 array (h, w), zero outside the window, max 1.
    """
    return _init_image(_movie(Mt, frame_shape), seed, half_width, threshold)


def _init_image(Y: Any, seed: tuple[int, int], half_width: int, threshold: float = INIT_THRESHOLD) -> Any:
    """:func:`init_image` on the movie ``Y`` (n, h, w)."""
    xp = backend.get_namespace(Y)
    n, h, w = Y.shape
    row, col = (int(v) for v in seed)
    if not (0 <= row < h and 0 <= col < w):
        raise InputError(f"seed {seed} lies outside the {h} x {w} frame")
    r0, r1, c0, c1 = max(row - half_width, 0), min(row + half_width + 1, h), max(col - half_width, 0), \
        min(col + half_width + 1, w)
    X = _box_pixels(Y, (r0, r1, c0, c1))
    X = X - xp.mean(X, axis=1, keepdims=True)
    X = X / xp.clip(xp.sqrt(xp.sum(X * X, axis=1, keepdims=True)), min=1e-6)
    seed_column = (row - r0) * (c1 - c0) + (col - c0)
    corr = xp.reshape(X[:, seed_column] @ X, (r1 - r0, c1 - c0))
    corr = corr / xp.max(corr)
    corr = xp.where(corr < threshold, xp.zeros_like(corr), corr)
    corr = _largest_component(corr)
    image = xp.zeros((h, w), dtype=xp.float32, device=Y.device)
    image[r0:r1, c0:c1] = xp.astype(corr, xp.float32)
    return image / xp.max(image)


def _largest_component(image: Any) -> Any:
    """``image`` with every 8-connected component of its non-zero pixels zeroed except the largest (all the
    largest on a tie)."""
    xp = backend.get_namespace(image)
    labels, count = backend.label(image != 0, connectivity=_CONNECTIVITY)
    if count <= 1:
        return image
    sizes = _component_sizes(labels, count)
    largest = xp.max(sizes[1:])
    keep = (xp.take(sizes, xp.reshape(labels, (-1,))) == largest) & (xp.reshape(labels, (-1,)) > 0)
    return xp.where(xp.reshape(keep, image.shape), image, xp.zeros_like(image))


def _component_sizes(labels: Any, count: int) -> Any:
    """Pixel count of every label ``0..count`` of an int label image: int64 (count + 1,)."""
    xp = backend.get_namespace(labels)
    flat = xp.reshape(xp.astype(labels, xp.int64), (-1, 1))
    return xp.reshape(backend.column_histogram(flat, count + 1), (-1,))


def gaussian_template(frame_shape: tuple[int, int], seed: tuple[int, int], *, xp: Any = None,
                      device: Any = None) -> Any:
    """Gaussian seed image (``init_with_gaussian``, spec §5.1): ``exp(-(dy^2 + dx^2) / (2 * 2^2))`` on the
    11 x 11 offsets around ``seed``, cropped at the frame border, max 1.

    Parameters
    ----------
    frame_shape : (h, w)
    seed : (row, col), 0-based
    xp, device : optional
        Namespace and device of the result (NumPy on the CPU by default).

    Returns
    -------
    float32 array (h, w)
    """
    xp = backend.select("numpy") if xp is None else xp
    h, w = (int(v) for v in frame_shape)
    row, col = (int(v) for v in seed)
    size = 2 * TEMPLATE_RADIUS + 1
    kernel = morphology.gaussian_kernel(size, TEMPLATE_SIGMA, dtype=xp.float32, xp=xp, device=device)
    kernel = kernel / xp.max(kernel)
    image = xp.zeros((h, w), dtype=xp.float32, device=device)
    r0, r1 = max(row - TEMPLATE_RADIUS, 0), min(row + TEMPLATE_RADIUS + 1, h)
    c0, c1 = max(col - TEMPLATE_RADIUS, 0), min(col + TEMPLATE_RADIUS + 1, w)
    k0, k1 = r0 - (row - TEMPLATE_RADIUS), r1 - (row - TEMPLATE_RADIUS)
    j0, j1 = c0 - (col - TEMPLATE_RADIUS), c1 - (col - TEMPLATE_RADIUS)
    image[r0:r1, c0:c1] = kernel[k0:k1, j0:j1]
    return image


# ----------------------------------------------------------------------------------------------------------------
# single-cell fit (§5.4)


@dataclass(frozen=True)
class _Support:
    """A support: its box, its mask inside the box (flat, row-major) and the movie on it ``(p, n)``."""

    box: tuple[int, int, int, int]
    mask_flat: Any
    mask: Any
    B: Any


def _support_footprints(support: str, xp: Any, device: Any) -> tuple[Any, Any]:
    if support == "strel":
        return (morphology.strel_disk(SUPPORT_CORE_RADIUS, xp=xp, device=device),
                morphology.strel_disk(SUPPORT_RADIUS, xp=xp, device=device))
    if support == "disk":
        return (morphology.disk_footprint(SUPPORT_CORE_RADIUS, xp=xp, device=device),
                morphology.disk_footprint(SUPPORT_RADIUS, xp=xp, device=device))
    raise InputError(f"support must be 'strel' (MATLAB's approximated disk, the reference CPU path) or 'disk' "
                     f"(exact disk); got {support!r}")


def _dilated_core(s: Any, footprint: Any) -> Any:
    """``dilate(s > 0.1 max(s), footprint)`` as a bool (h, w) mask, dilating only the region the result can reach."""
    xp = backend.get_namespace(s)
    seed = s > SUPPORT_LEVEL * xp.max(s)
    out = xp.zeros(s.shape, dtype=xp.bool, device=s.device)
    box = _bounding_box(seed, margin=footprint.shape[0] // 2)
    if box is None:
        return out
    r0, r1, c0, c1 = box
    out[r0:r1, c0:c1] = morphology.dilate(seed[r0:r1, c0:c1], footprint)
    return out


def _load_support(Y: Any, mask: Any) -> _Support:
    """The movie on the pixels of ``mask`` (bool (h, w), non-empty) as ``B (p, n)``."""
    xp = backend.get_namespace(Y)
    box = _bounding_box(mask)
    r0, r1, c0, c1 = box
    mask_flat = xp.reshape(mask[r0:r1, c0:c1], (-1,))
    columns = xp.nonzero(mask_flat)[0]
    B = xp.permute_dims(xp.take(_box_pixels(Y, box), columns, axis=1), (1, 0))
    return _Support(box=box, mask_flat=mask_flat, mask=mask, B=B)


def _on_support(values: Any, support: _Support, frame_shape: tuple[int, int]) -> Any:
    """Full (h, w) float32 image holding ``values`` (p,) on the support pixels, zero elsewhere."""
    xp = backend.get_namespace(values)
    r0, r1, c0, c1 = support.box
    image = xp.zeros(frame_shape, dtype=xp.float32, device=values.device)
    image[r0:r1, c0:c1] = xp.reshape(_scatter_to_mask(values, support.mask_flat), (r1 - r0, c1 - c0))
    return image


def _support_values(image: Any, support: _Support) -> Any:
    """``image`` (h, w) on the support pixels: (p,)."""
    xp = backend.get_namespace(image)
    r0, r1, c0, c1 = support.box
    return xp.reshape(image[r0:r1, c0:c1], (-1,))[support.mask_flat]


def _relative_change(new: Any, old: Any) -> float:
    """``sum |new - old| / sum(new + old) * 2`` (float32 arithmetic, spec §5.4)."""
    xp = backend.get_namespace(new)
    return float(xp.sum(xp.abs(new - old)) / xp.sum(new + old) * 2.0)


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
    return _fit_single_cell(_movie(Mt, frame_shape), s0, noise_std, size_limit, kappa_t=kappa_t, kappa_s=kappa_s,
                            max_iter=max_iter, adaptive_kappa=adaptive_kappa, support=support)


def _fit_single_cell(Y: Any, s0: Any, noise_std: float, size_limit: float, *, kappa_t: float, kappa_s: float,
                     max_iter: int, adaptive_kappa: bool, support: str) -> SingleCellFit:
    """:func:`fit_single_cell` on the movie ``Y`` (n, h, w)."""
    xp = backend.get_namespace(Y)
    device = Y.device
    frame_shape = (Y.shape[1], Y.shape[2])
    core_fp, support_fp = _support_footprints(support, xp, device)
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
    active: tuple[_Support, Any, Any] | None = None  # (support, t on active frames, B on active frames)
    kappa_trace = ADAPTIVE_KAPPA_START if adaptive_kappa else kappa_t
    for it in range(max_iter):
        s_before, t_before = s, t
        core = _dilated_core(s, core_fp)
        if current is None or bool(xp.any(core & ~current.mask)):
            current = _load_support(Y, _dilated_core(s, support_fp))
        t = solve_single_source(_support_values(s, current), current.B, noise_std, kappa_trace, max_iter,
                                adaptive=adaptive_kappa)
        if float(xp.sum(t)) == 0:
            active = None
            break
        is_active = t > ACTIVE_NOISE_FACTOR * noise.estimate_noise_std(t)
        frames = xp.nonzero(is_active)[0]
        if frames.shape[0] == 0:  # no active frame: the reference's image turns NaN and fails the area check
            s = xp.zeros(frame_shape, dtype=xp.float32, device=device)
            active = None
            break
        t_act = xp.take(t, frames)
        B_act = xp.take(current.B, frames, axis=1)
        active = (current, t_act, B_act)
        s_sub = solve_single_source(t_act, xp.permute_dims(B_act, (1, 0)), noise_std, kappa_s, max_iter)
        s = _on_support(s_sub, current, frame_shape)
        s = s / xp.clip(xp.max(s), min=1e-10)
        n_support = current.B.shape[0]
        if float(xp.sum(s)) == 0 or n_support > size_limit:
            break
        s_change[it] = _relative_change(s, s_before)
        t_change[it] = (_relative_change(t, xp.full_like(t, 1e6)) if t_before is None
                        else _relative_change(t, t_before))
        if s_change[it] < ALTERNATION_TOL and t_change[it] < ALTERNATION_TOL:
            break
    if t is None:  # max_iter == 0
        t = xp.zeros((Y.shape[0],), dtype=xp.float32, device=device)
    return SingleCellFit(s=xp.reshape(s, (-1,)), t=t, t_corr=_least_squares_trace(Y, s),
                         s_corr=xp.reshape(_least_squares_image(active, frame_shape, xp, device), (-1,)),
                         s_change=s_change, t_change=t_change)


def _least_squares_image(active: tuple[_Support, Any, Any] | None, frame_shape: tuple[int, int], xp: Any,
                         device: Any) -> Any:
    """``s_corr`` (h, w): ``max(0, B_act t_act / (t_act^T t_act))`` on the support, zero without at least two
    active frames (spec §5.4)."""
    if active is None or active[1].shape[0] <= 1:
        return xp.zeros(frame_shape, dtype=xp.float32, device=device)
    support, t_act, B_act = active
    values = xp.clip(B_act @ (t_act / xp.sum(t_act * t_act)), min=0.0)
    return _on_support(values, support, frame_shape)


def _least_squares_trace(Y: Any, s: Any) -> Any:
    """``t_corr`` (n,): ``max(0, (s / sum s^2)[s > 0]^T Mt[:, s > 0]^T)`` (spec §5.4)."""
    xp = backend.get_namespace(Y)
    positive = s > 0
    box = _bounding_box(positive)
    if box is None:
        return xp.zeros((Y.shape[0],), dtype=xp.float32, device=Y.device)
    r0, r1, c0, c1 = box
    weights = xp.where(positive, s, xp.zeros_like(s)) / xp.sum(s * s)
    weights_box = xp.reshape(weights[r0:r1, c0:c1], (-1,))
    mask_flat = xp.reshape(positive[r0:r1, c0:c1], (-1,))
    columns = xp.nonzero(mask_flat)[0]
    return xp.clip(xp.take(_box_pixels(Y, box), columns, axis=1) @ weights_box[mask_flat], min=0.0)


# ----------------------------------------------------------------------------------------------------------------
# the main loop (§5.1, §5.3)


class _Rows:
    """Growable stack of equal-length rows on a device (amortised doubling; standard slice assignment only)."""

    def __init__(self, width: int, xp: Any, device: Any):
        self._xp = xp
        self._data = xp.zeros((4, width), dtype=xp.float32, device=device)
        self.count = 0

    def append(self, row: Any) -> None:
        if self.count == self._data.shape[0]:
            self._data = self._xp.concat([self._data, self._xp.zeros_like(self._data)], axis=0)
        self._data[self.count, :] = row
        self.count += 1

    def rows(self) -> Any:
        """The stacked rows, a copy ``(count, width)`` that owns its memory."""
        return self._xp.asarray(self._data[:self.count, :], copy=True)

    def view(self) -> Any:
        """The stacked rows ``(count, width)`` as a view of the buffer (read only)."""
        return self._data[:self.count, :]


def _bias(k: float) -> float:
    """Upper bound of the robust estimator's under-estimation bias at kappa ``k`` (spec §5.1):
    ``2 (phi(k) + k Phi(k) - k) / Phi(k)``; ``_bias(0.7)`` ~ 0.377."""
    cdf = 0.5 * (1.0 + math.erf(k / math.sqrt(2.0)))
    pdf = math.exp(-0.5 * k * k) / math.sqrt(2.0 * math.pi)
    return 2.0 * (pdf + k * cdf - k) / cdf


def _seed_map(summary: Any, min_magnitude: float, min_region: int) -> Any:
    """Summary values above ``min_magnitude``, with 8-connected regions smaller than ``min_region`` pixels zeroed
    (the reference's ``modify_summary_image``: ``bwareaopen``)."""
    xp = backend.get_namespace(summary)
    above = summary > min_magnitude
    m = xp.where(above, summary, xp.zeros_like(summary))
    if min_region <= 0:
        return m
    labels, count = backend.label(above, connectivity=_CONNECTIVITY)
    if count == 0:
        return m
    sizes = _component_sizes(labels, count)
    big = xp.reshape(xp.take(sizes, xp.reshape(xp.astype(labels, xp.int64), (-1,))) >= min_region, summary.shape)
    return xp.where(big, m, xp.zeros_like(m))


def _trace_snr(t: Any) -> float:
    """``max(medfilt1(t, 3)) / noise_std(t) / sqrt(2)`` (spec §5.3 check 4); NaN for an all-zero trace."""
    xp = backend.get_namespace(t)
    peak = float(xp.max(backend.median_filter(t, (3,), mode="constant")))
    sigma = float(noise.estimate_noise_std(t))
    if sigma == 0:
        return math.nan if peak == 0 else math.inf
    return peak / sigma / math.sqrt(2.0)


def _zscore_unit(x: Any) -> Any:
    """Rows of ``x`` (..., n) centred, divided by their ddof-1 std and by sqrt(n) (spec §13 item 18)."""
    xp = backend.get_namespace(x)
    n = x.shape[-1]
    centred = x - xp.mean(x, axis=-1, keepdims=True)
    std = xp.std(x, axis=-1, correction=1, keepdims=True)
    nonconstant = std > 0  # a constant row has no correlation: NaN, which never exceeds a threshold (MATLAB)
    scaled = centred / xp.where(nonconstant, std, xp.ones_like(std)) / math.sqrt(n)
    return xp.where(nonconstant, scaled, xp.full_like(scaled, math.nan))


def _is_duplicate(s: Any, t: Any, S_rows: _Rows, T_rows: _Rows) -> bool:
    """Spec §5.3 check 5: an accepted cell overlaps (``s^T S_j / sum s^2 > 0.1`` on ``s > 0``) and its trace
    correlates above 0.7 with ``t``."""
    if S_rows.count == 0:
        return False
    xp = backend.get_namespace(s)
    s_flat = xp.reshape(s, (-1,))
    columns = xp.nonzero(s_flat > 0)[0]
    s_pos = xp.take(s_flat, columns)
    proximity = (xp.take(S_rows.view(), columns, axis=1) @ s_pos) / xp.sum(s_pos * s_pos)
    near = xp.nonzero(proximity > DUPLICATE_PROXIMITY)[0]
    if near.shape[0] == 0:
        return False
    corr = _zscore_unit(xp.take(T_rows.view(), near, axis=0)) @ _zscore_unit(t)
    return bool(xp.any(corr > DUPLICATE_CORRELATION))


@dataclass(frozen=True)
class CellFindSettings:
    """Settings of cell finding (spec §5, §3.5), by EXTRACT config name; built once per run by the pipeline.

    ``filter_*`` are the cell-finding filter's settings (``cellfind_filter_type``, ``spatial_lowpass_cutoff``,
    ``cellfind_spatial_highpass_cutoff``, ``smoothing_ratio_x2y``, ``moving_radius_spatial``,
    ``moving_radius_temporal``, ``filter_sigma``); ``size_lower_limit`` / ``size_upper_limit`` are multiples of
    ``pi r^2`` (``thresholds.*``), as in the config.
    """

    filter_type: str
    filter_lowpass_cutoff: float
    filter_highpass_cutoff: float
    filter_smoothing_ratio: float
    filter_moving_radius_spatial: float
    filter_moving_radius_temporal: float
    filter_sigma: tuple[float, ...]
    min_snr: float
    kappa_std_ratio: float
    adaptive_kappa: bool
    max_iter: int
    max_steps: int
    numpix_threshold: int
    check_min_magnitude: bool
    init_with_gaussian: bool
    avg_yield_threshold: float
    high2low_brightness_ratio: float
    T_min_snr: float
    size_lower_limit: float
    size_upper_limit: float

    @classmethod
    def from_config(cls, cfg: Any) -> CellFindSettings:
        """The settings of a resolved :class:`~nwb_extract.config.ExtractConfig`."""
        return cls(
            filter_type=cfg.cellfind_filter_type, filter_lowpass_cutoff=cfg.spatial_lowpass_cutoff,
            filter_highpass_cutoff=cfg.cellfind_spatial_highpass_cutoff,
            filter_smoothing_ratio=cfg.smoothing_ratio_x2y, filter_moving_radius_spatial=cfg.moving_radius_spatial,
            filter_moving_radius_temporal=cfg.moving_radius_temporal,
            filter_sigma=tuple(float(v) for v in cfg.filter_sigma), min_snr=cfg.cellfind_min_snr,
            kappa_std_ratio=cfg.cellfind_kappa_std_ratio, adaptive_kappa=bool(cfg.cellfind_adaptive_kappa),
            max_iter=int(cfg.cellfind_max_iter), max_steps=int(cfg.cellfind_max_steps),
            numpix_threshold=int(cfg.cellfind_numpix_threshold),
            check_min_magnitude=bool(cfg.cellfind_check_min_magnitude),
            init_with_gaussian=bool(cfg.init_with_gaussian), avg_yield_threshold=cfg.avg_yield_threshold,
            high2low_brightness_ratio=cfg.high2low_brightness_ratio, T_min_snr=cfg.thresholds.T_min_snr,
            size_lower_limit=cfg.thresholds.size_lower_limit, size_upper_limit=cfg.thresholds.size_upper_limit)


@dataclass
class _Search:
    """State of the cell-finding loop (spec §5.3): the filtered movie copy with its summary stack, the limits,
    and the per-step records (device rows for images and traces, host lists for the rest)."""

    work: Any                   # (n, h, w) filtered copy, modified in place
    summary: Any                # (h, w) summary image, updated around each subtracted cell
    peak: Any                   # (h, w) peak frame of every pixel
    summary_image: Any          # (h, w) summary image before any subtraction
    noise_per_pixel: Any        # (h, w)
    noise_std: float
    min_magnitude: float
    min_px: float               # size limits in pixels
    max_px: float
    half_width: int             # seed-image window half-width
    accepted: tuple[_Rows, _Rows]
    rejected: tuple[_Rows, _Rows]
    seeds: list = field(default_factory=list)
    max_values: list = field(default_factory=list)
    metrics: list = field(default_factory=list)
    attr_bad: list = field(default_factory=list)
    good: list = field(default_factory=list)
    s_changes: list = field(default_factory=list)
    t_changes: list = field(default_factory=list)


def find_cells(Y: Any, settings: CellFindSettings, *, radius: float, movie_mask: Any = None) -> CellFindingResult:
    """Find cells one at a time on one partition (spec §5, ``cw_extract``; the §2.1 branch without ``S_init``).

    Setup (§5.1): the cell-finding copy of ``Y`` is filtered (``cellfind_filter_type``), each pixel's noise is
    estimated, sigma is their median over pixels whose unfiltered temporal maximum exceeds 1e-6 (and inside
    ``movie_mask``), and the seed threshold is
    ``min_magnitude = max(sigma (cellfind_min_snr + bias(cellfind_kappa_std_ratio)), q_0.999(summary) /
    high2low_brightness_ratio)``. Main loop (§5.3): pick the brightest seed of the summary image (regions of fewer
    than ``cellfind_numpix_threshold`` pixels ignored; ties in column-major order), stop if it is below
    ``min_magnitude`` (``cellfind_check_min_magnitude``), fit a cell from a correlation (or Gaussian) seed image,
    check area, trace maximum, trace SNR (``thresholds.T_min_snr``) and duplication, subtract its least-squares
    companion from the copy, update the summary image around it, and either accept it or zero the 5 x 5 window
    around the seed; stop when the yield over the last ``round(1 / avg_yield_threshold)`` steps is at most
    ``avg_yield_threshold`` (after twice that many steps) or after ``cellfind_max_steps`` steps.

    Parameters
    ----------
    Y : float32 array (n, h, w)
        Preprocessed (unfiltered) movie at working resolution; not modified.
    settings : CellFindSettings
        E.g. ``CellFindSettings.from_config(cfg)``.
    radius : float
        Working-resolution ``avg_cell_radius`` (px).
    movie_mask : bool array (h, w), optional
        Pixels that count for the noise median.

    Returns
    -------
    CellFindingResult
    """
    if len(Y.shape) != 3:
        raise InputError(f"find_cells needs a movie (frames, rows, cols); got shape {tuple(Y.shape)}")
    if not radius > 0:
        raise InputError(f"avg_cell_radius must be > 0 pixels at working resolution; got {radius}")
    search, has_valid = _start_search(Y, settings, radius, movie_mask)
    stop_reason = "max_iter" if has_valid else "min_magnitude"  # nothing valid: stop as on a dim seed
    if has_valid:
        stop_reason = _run_search(search, settings)
    else:
        logger.warning("cell finding: every pixel is (near) zero; no cell can be found")
    if stop_reason == "min_magnitude":  # the stopping step keeps a row of zeros, as in the reference
        search.metrics.append([0.0] * 4)
        search.attr_bad.append([False] * 5)
        search.good.append(False)
    logger.info("cell finding: %d cells after %d steps (stop: %s)", search.accepted[0].count, len(search.good),
                stop_reason)
    return _search_result(search, stop_reason, settings.max_iter)


def _cellfind_copy(Y: Any, settings: CellFindSettings, radius: float) -> Any:
    """The filtered cell-finding copy of ``Y`` (n, h, w) (spec §3.5); never ``Y`` itself."""
    xp = backend.get_namespace(Y)
    work = preprocess.cellfind_filter(
        Y, settings.filter_type, radius, spatial_lowpass_cutoff=settings.filter_lowpass_cutoff,
        cellfind_spatial_highpass_cutoff=settings.filter_highpass_cutoff,
        smoothing_ratio_x2y=settings.filter_smoothing_ratio,
        moving_radius_spatial=settings.filter_moving_radius_spatial,
        moving_radius_temporal=settings.filter_moving_radius_temporal, filter_sigma=settings.filter_sigma)
    if work is Y:  # 'none' filter: the copy is modified by the search, the caller's movie must not be
        work = xp.asarray(Y, copy=True)
    return work


def _start_search(Y: Any, settings: CellFindSettings, radius: float, movie_mask: Any) -> tuple[_Search, bool]:
    """Setup of spec §5.1: the filtered copy, its noise and summary stack, the thresholds; and whether any pixel
    is valid."""
    xp, device = backend.get_namespace_and_device(Y)
    n, h, w = Y.shape
    P = h * w
    valid = xp.reshape(xp.max(Y, axis=0) > VALID_PIXEL_LEVEL, (-1,))
    if movie_mask is not None:
        valid = valid & xp.reshape(xp.astype(movie_mask, xp.bool), (-1,))
    work = _cellfind_copy(Y, settings, radius)
    # the loop works on the (n, h, w) copy itself; the (n, P) matrix is only read here, before any change
    Mt = xp.reshape(work, (n, P))
    noise_per_pixel = noise.estimate_noise_std(Mt, axis=0)
    stack = summary_stack(Mt, (h, w))
    has_valid = bool(xp.any(valid))
    noise_std = float(backend.median(noise_per_pixel[valid])) if has_valid else 0.0
    min_magnitude = _min_magnitude(noise_std, stack.image, settings)
    cell_px = math.pi * radius ** 2
    logger.info("cell finding: noise std %.4g, minimum magnitude %.4g", noise_std, min_magnitude)
    search = _Search(
        work=work, summary=stack.image, peak=stack.peak_frame, summary_image=xp.asarray(stack.image, copy=True),
        noise_per_pixel=xp.reshape(noise_per_pixel, (h, w)), noise_std=noise_std, min_magnitude=min_magnitude,
        min_px=cell_px * settings.size_lower_limit, max_px=cell_px * settings.size_upper_limit,
        half_width=math.floor(1.5 * radius), accepted=(_Rows(P, xp, device), _Rows(n, xp, device)),
        rejected=(_Rows(P, xp, device), _Rows(n, xp, device)))
    return search, has_valid


def _min_magnitude(noise_std: float, summary: Any, settings: CellFindSettings) -> float:
    """Seed threshold of spec §5.1: ``max(sigma (min_snr + bias(kappa)), q_0.999(summary) / ratio)``."""
    noise_limit = noise_std * settings.min_snr + noise_std * _bias(settings.kappa_std_ratio)
    ratio = settings.high2low_brightness_ratio
    dim_limit = 0.0 if math.isinf(ratio) else float(backend.quantile(summary, 0.999)) / ratio
    return max(noise_limit, dim_limit)


def _run_search(search: _Search, settings: CellFindSettings) -> str:
    """The main loop of spec §5.3 until a stop rule fires; returns the stop reason."""
    window = matlab_round(1.0 / settings.avg_yield_threshold)
    w = search.summary.shape[1]
    for step in range(1, settings.max_steps + 1):
        seed_map = _seed_map(search.summary, search.min_magnitude, settings.numpix_threshold)
        row, col = divmod(_column_major_argmax(seed_map), w)
        value = float(seed_map[row, col])
        if settings.check_min_magnitude and value < search.min_magnitude:
            return "min_magnitude"
        _search_step(search, settings, (row, col), value)
        good = search.good
        if step > 2 * window and sum(good[-window:]) / window <= settings.avg_yield_threshold:
            return "yield"
        if step % 100 == 0:
            logger.info("cell finding: step %d, %d cells found", step, search.accepted[0].count)
    return "max_iter"


def _search_step(search: _Search, settings: CellFindSettings, seed: tuple[int, int], value: float) -> None:
    """One step of spec §5.3 at ``seed`` (summary ``value``): fit, check, subtract, accept or reject."""
    xp, device = backend.get_namespace_and_device(search.work)
    _, h, w = search.work.shape
    row, col = seed
    search.seeds.append(seed)
    if settings.init_with_gaussian:
        s0 = gaussian_template((h, w), seed, xp=xp, device=device)
    else:
        s0 = _init_image(search.work, seed, search.half_width)
    fit = _fit_single_cell(search.work, s0, search.noise_std, search.max_px, kappa_t=settings.kappa_std_ratio,
                           kappa_s=settings.kappa_std_ratio, max_iter=settings.max_iter,
                           adaptive_kappa=settings.adaptive_kappa, support="strel")
    search.s_changes.append(fit.s_change)
    search.t_changes.append(fit.t_change)

    area = int(cell_area(fit.s))
    max_t = float(xp.max(fit.t))
    snr = _trace_snr(fit.t)
    duplicate = _is_duplicate(fit.s, fit.t, *search.accepted)
    flags = [area < search.min_px, area > search.max_px, max_t < search.min_magnitude, snr < settings.T_min_snr,
             duplicate]
    search.metrics.append([float(area), max_t, snr, float(duplicate)])
    search.attr_bad.append(flags)
    is_bad = any(flags)

    _subtract(search.work, search.summary, search.peak, fit)
    if is_bad:
        r0, r1, c0, c1 = (max(row - SUMMARY_SPREAD, 0), min(row + SUMMARY_SPREAD + 1, h),
                          max(col - SUMMARY_SPREAD, 0), min(col + SUMMARY_SPREAD + 1, w))
        search.work[:, r0:r1, c0:c1] = 0.0
        search.summary[r0:r1, c0:c1] = 0.0
        rows = search.rejected
    else:
        rows = search.accepted
        search.max_values.append(value)
    rows[0].append(fit.s)
    rows[1].append(fit.t)
    search.good.append(not is_bad)


def _search_result(search: _Search, stop_reason: str, max_iter: int) -> CellFindingResult:
    """The :class:`CellFindingResult` of a finished search; the step records become host arrays."""
    xp = backend.get_namespace(search.work)
    host = backend.select("numpy")
    n_fitted, n_steps = len(search.seeds), len(search.good)

    def records(values: list, dtype: Any, shape: tuple[int, ...]) -> Any:
        return host.reshape(host.asarray(values, dtype=dtype), shape)

    (S_rows, T_rows), (S_bad, T_bad) = search.accepted, search.rejected
    return CellFindingResult(
        S=xp.permute_dims(S_rows.rows(), (1, 0)),
        T=T_rows.rows(),
        summary_image=search.summary_image,
        noise_per_pixel=search.noise_per_pixel,
        noise_std=search.noise_std,
        min_magnitude=search.min_magnitude,
        stop_reason=stop_reason,
        seeds=records(search.seeds, host.int64, (n_fitted, 2)),
        max_values=host.asarray(search.max_values, dtype=host.float32),
        metrics=records(search.metrics, host.float32, (n_steps, 4)),
        is_attr_bad=records(search.attr_bad, host.bool, (n_steps, 5)),
        is_good=host.asarray(search.good, dtype=host.bool),
        S_trash=xp.permute_dims(S_bad.rows(), (1, 0)),
        T_trash=T_bad.rows(),
        S_change=records(search.s_changes, host.float32, (n_fitted, max_iter)),
        T_change=records(search.t_changes, host.float32, (n_fitted, max_iter)),
    )


def _subtract(work: Any, summary: Any, peak: Any, fit: SingleCellFit) -> None:
    """Subtract ``t_corr s_corr^T`` from the movie copy ``work`` (n, h, w) on the pixels where ``s_corr > 0`` and
    refresh the summary stack there (spec §5.3). Frames with ``t_corr == 0`` and pixels with ``s_corr == 0`` are
    left exactly unchanged, as in the reference's index-set update."""
    xp = backend.get_namespace(work)
    _, h, w = work.shape
    s_corr = xp.reshape(fit.s_corr, (h, w))
    changed = s_corr > 0
    box = _bounding_box(changed)
    if box is None:
        return
    r0, r1, c0, c1 = box
    work[:, r0:r1, c0:c1] = work[:, r0:r1, c0:c1] - fit.t_corr[:, None, None] * s_corr[None, r0:r1, c0:c1]
    _refresh_summary(work, summary, peak, changed, SUMMARY_SPREAD)
