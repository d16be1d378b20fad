"""Summary image and seed images of cell finding (spec §5.2, §5.3.1, §5.1, ``get_summary_stack``,
``generate_init_image``).

The summary image marks bright, spatially coherent spots of the cell-finding movie (§5.2) and is updated
incrementally around each subtracted cell; :func:`seed_map` picks the candidate seeds from it (§5.3,
``modify_summary_image``); a seed becomes a first image either as a correlation image (§5.3.1) or as a Gaussian
template (§5.1, ``init_with_gaussian``). The movie-window helpers (:func:`bounding_box`, :func:`box_frames`,
:func:`support_rows`, :func:`pixel_major`) are shared with the single-cell fit (:mod:`cellfit`) and the search loop
(:mod:`cellfind`).

Public API
----------
* :func:`summary_stack`, :func:`update_summary_stack` (and :func:`summary_stack_on_movie`, the in-place
  :func:`refresh_summary`) — the summary image and its incremental update (§5.2), as a :class:`SummaryStack`;
* :func:`seed_map`, :func:`column_major_argmax` — the seeds above threshold and the brightest of them (§5.3);
* :func:`init_image` (:func:`init_image_on_movie` on the pixel-major ``(h, w, n)`` movie), :func:`gaussian_template` — the two
  seed images (§5.3.1, §5.1).

Layout: the public functions take the movie matrix ``Mt (n, P)`` (pixels flattened row-major, ``p = row * w + col``);
the ``*_on_movie`` functions and the search loop take the cell-finding movie pixel-major, ``Yt (h, w, n)`` float32
(:func:`pixel_major`): every per-step operation reads a few hundred pixels' whole traces, which are then contiguous
rows instead of one strided element per frame. Seed choice breaks ties in MATLAB's column-major order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nwb_extract.engine import backend, morphology, solver_kernels
from nwb_extract.errors import InputError

#: Half-width of the summary-image neighbourhood (EXTRACT ``max_spread``), also the half-width of the window that
#: is zeroed around a rejected seed (spec §5.2, §5.3).
SUMMARY_SPREAD = 2
#: Correlation-image threshold of :func:`init_image` (spec §5.3.1).
INIT_THRESHOLD = 0.5
#: Radius (px) and Gaussian sigma of the optional template seed (``init_radius = 5``, sigma = 5 / 2.5; spec §5.1).
TEMPLATE_RADIUS = 5
TEMPLATE_SIGMA = TEMPLATE_RADIUS / 2.5

_CONNECTIVITY = 8  # bwareaopen / bwconncomp connectivity in 2-D


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


# ----------------------------------------------------------------------------------------------------------------
# movie windows


def bounding_box(mask: Any, margin: int = 0) -> tuple[int, int, int, int] | None:
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


def box_frames(Yt: Any, box: tuple[int, int, int, int]) -> Any:
    """The pixel-major movie ``Yt`` (h, w, n) inside ``box`` as a ``(n, box pixels)`` matrix (frames x pixels,
    row-major within the box; NumPy: C-contiguous, as a frame-major movie's box copy was)."""
    xp = backend.get_namespace(Yt)
    r0, r1, c0, c1 = box
    rows = xp.reshape(Yt[r0:r1, c0:c1, :], ((r1 - r0) * (c1 - c0), Yt.shape[2]))
    return solver_kernels.row_major(xp.permute_dims(rows, (1, 0)))


def support_rows(Yt: Any, box: tuple[int, int, int, int], columns: Any) -> Any:
    """The traces of the box pixels ``columns`` (int (p,), row-major positions inside ``box``) of the pixel-major
    movie ``Yt`` (h, w, n), as ``(p, n)`` (pixels x frames; contiguous rows gathered straight from the movie)."""
    xp = backend.get_namespace(Yt)
    h, w, n = Yt.shape
    r0, _, c0, c1 = box
    width = c1 - c0
    pixels = (columns // width + r0) * w + (columns % width + c0)
    return xp.take(xp.reshape(Yt, (h * w, n)), pixels, axis=0)


def column_major_argmax(image: Any) -> int:
    """Flat row-major index of the maximum of a 2-D ``image``, ties broken in column-major order (MATLAB ``max``)."""
    xp = backend.get_namespace(image)
    h, w = image.shape
    j = int(xp.argmax(xp.reshape(xp.permute_dims(image, (1, 0)), (-1,))))
    col, row = divmod(j, h)
    return row * w + col


def pixel_major(Mt: Any, frame_shape: tuple[int, int]) -> Any:
    """``Mt (n, P)`` as the pixel-major movie ``Yt (h, w, n)`` of cell finding (a copy; NumPy: C-contiguous)."""
    xp = backend.get_namespace(Mt)
    h, w = (int(v) for v in frame_shape)
    if len(Mt.shape) != 2 or Mt.shape[1] != h * w:
        raise InputError(f"Mt must be (frames, pixels) with pixels = {h} x {w} = {h * w}; got shape {Mt.shape}")
    Yt = xp.reshape(xp.permute_dims(Mt, (1, 0)), (h, w, Mt.shape[0]))
    return solver_kernels.row_major(xp.asarray(Yt, copy=True))


# ----------------------------------------------------------------------------------------------------------------
# summary image (§5.2)


def _peak_frames(Yt: Any) -> Any:
    """First frame of each pixel's maximum, ``argmax`` over the last axis of ``Yt`` (h, w, n) -> int64 (h, w)
    (a pass along each pixel's contiguous trace; no temporary). The movie is finite here (the pipeline replaces
    non-finite values first), so the first maximum is well defined."""
    xp = backend.get_namespace(Yt)
    return xp.astype(xp.argmax(Yt, axis=-1), xp.int64)


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
    return summary_stack_on_movie(pixel_major(Mt, frame_shape), spread)


def summary_stack_on_movie(Yt: Any, spread: int = SUMMARY_SPREAD) -> SummaryStack:
    """:func:`summary_stack` of the pixel-major movie ``Yt`` (h, w, n)."""
    h, w, _ = Yt.shape
    peak = _peak_frames(Yt)
    return SummaryStack(image=solver_kernels.summary_window_means(Yt, peak, (0, h, 0, w), spread), peak_frame=peak)


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
    xp = backend.get_namespace(Mt)
    image = xp.asarray(stack.image, copy=True)
    peak = xp.asarray(stack.peak_frame, copy=True)
    refresh_summary(pixel_major(Mt, frame_shape), image, peak, changed, spread)
    return SummaryStack(image=image, peak_frame=peak)


def refresh_summary(Yt: Any, image: Any, peak: Any, changed: Any, spread: int) -> None:
    """In-place incremental update of ``image`` / ``peak`` (h, w) for the bool (h, w) ``changed`` pixels of the
    pixel-major movie ``Yt`` (h, w, n)."""
    xp = backend.get_namespace(Yt)
    box = bounding_box(changed)
    if box is None:
        return
    r0, r1, c0, c1 = box
    changed_box = changed[r0:r1, c0:c1]
    new_peak = _peak_frames(Yt[r0:r1, c0:c1, :])
    peak[r0:r1, c0:c1] = xp.where(changed_box, new_peak, peak[r0:r1, c0:c1])
    a0, a1, b0, b1 = bounding_box(changed, margin=spread)
    window = xp.ones((2 * spread + 1, 2 * spread + 1), dtype=xp.bool, device=changed.device)
    affected = morphology.dilate(changed[a0:a1, b0:b1], window)
    values = solver_kernels.summary_window_means(Yt, peak, (a0, a1, b0, b1), spread)
    image[a0:a1, b0:b1] = xp.where(affected, values, image[a0:a1, b0:b1])


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
    return init_image_on_movie(pixel_major(Mt, frame_shape), seed, half_width, threshold)


def init_image_on_movie(Yt: Any, seed: tuple[int, int], half_width: int,
                        threshold: float = INIT_THRESHOLD) -> Any:
    """:func:`init_image` on the pixel-major movie ``Yt`` (h, w, n)."""
    xp = backend.get_namespace(Yt)
    h, w, _ = Yt.shape
    row, col = (int(v) for v in seed)
    if not (0 <= row < h and 0 <= col < w):
        raise InputError(f"seed {seed} lies outside the {h} x {w} frame")
    r0, r1, c0, c1 = max(row - half_width, 0), min(row + half_width + 1, h), max(col - half_width, 0), \
        min(col + half_width + 1, w)
    X = box_frames(Yt, (r0, r1, c0, c1))
    X = X - xp.mean(X, axis=1, keepdims=True)
    X = X / xp.clip(xp.sqrt(xp.sum(X * X, axis=1, keepdims=True)), min=1e-6)
    seed_column = (row - r0) * (c1 - c0) + (col - c0)
    corr = xp.reshape(X[:, seed_column] @ X, (r1 - r0, c1 - c0))
    corr = corr / xp.max(corr)
    corr = xp.where(corr < threshold, xp.zeros_like(corr), corr)
    corr = _largest_component(corr)
    image = xp.zeros((h, w), dtype=xp.float32, device=Yt.device)
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
# seed choice (§5.3)


def seed_map(summary: Any, min_magnitude: float, min_region: int) -> Any:
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
