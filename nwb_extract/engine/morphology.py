"""MATLAB's structuring elements and small filter kernels, and mask dilation (spec §0, reference README §5.1).

* :func:`strel_disk` — ``getnhood(strel('disk', R))``: MATLAB's default *approximated* disk (N = 4 periodic
  lines), which the reference's CPU path uses for cell-finding supports (R = 3 gives a 5 x 5 square, R = 6 an
  11 x 11 octagon);
* :func:`disk_footprint` — ``fspecial('disk', R) > 0``, the exact disk of ``dilate_disk`` (spec §0);
* :func:`gaussian_kernel` — ``fspecial('gaussian', size, sigma)``;
* :func:`dilate` — binary dilation of a stack of masks with zero padding;
* :func:`grown_range` — a bounding range along one axis, grown by a margin (host bookkeeping).

The neighbourhoods are built from small integer offset sets in plain Python, then put on the requested namespace
and device (NumPy by default).
"""

from __future__ import annotations

import functools
import math
from typing import Any

from nwb_extract.engine import backend

# direction vectors (row, col) of the four periodic lines of strel('disk', R, 4)
_PERIODIC_LINES_N4 = ((1, 0), (1, 1), (0, 1), (-1, 1))


def strel_disk(radius: int, *, xp: Any = None, device: Any = None) -> Any:
    """Neighbourhood of MATLAB ``strel('disk', radius)`` (default N = 4 periodic-line approximation).

    MATLAB's documented construction, reproduced as a Minkowski sum of offset sets:

    1. ``radius < 3``: no approximation, the Euclidean disk ``dx^2 + dy^2 <= radius^2``.
    2. Otherwise, with ``theta = pi / (2N)`` and ``k = 2 radius / (cot(theta) + 1/sin(theta))``, each of the
       four direction vectors ``v`` (0, 45, 90, 135 degrees) gives a periodic line ``{p v : |p| <= floor(k/|v|)}``;
       their dilation is an octagon (or square) of vertical radius ``r0``.
    3. When ``d = radius - r0 >= 2``, a horizontal and a vertical line of ``2(d - 1) + 1`` pixels are added, i.e.
       a final dilation by a square of half-width ``d - 1``.

    Parameters
    ----------
    radius : int
        Disk radius in pixels, >= 0.
    xp, device : optional
        Namespace and device of the result (NumPy on the CPU by default).

    Returns
    -------
    nhood : bool array of shape (2 r + 1, 2 r + 1)
        ``r`` is the half-width reached (``radius`` for R = 3 and R = 6; the approximation is never larger).
    """
    radius = _check_radius(radius, integer=True)
    if radius < 3:
        offsets = {(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
                   if dy * dy + dx * dx <= radius * radius}
        return _offsets_to_mask(offsets, xp, device)
    theta = math.pi / (2 * len(_PERIODIC_LINES_N4))
    k = 2 * radius / (1 / math.tan(theta) + 1 / math.sin(theta))
    offsets = {(0, 0)}
    for v in _PERIODIC_LINES_N4:
        reps = math.floor(k / math.hypot(*v))
        offsets = _minkowski_sum(offsets, {(p * v[0], p * v[1]) for p in range(-reps, reps + 1)})
    extra = radius - max(dy for dy, _ in offsets) - 1
    if extra >= 1:
        square = {(dy, dx) for dy in range(-extra, extra + 1) for dx in range(-extra, extra + 1)}
        offsets = _minkowski_sum(offsets, square)
    return _offsets_to_mask(offsets, xp, device)


def disk_footprint(radius: float, *, xp: Any = None, device: Any = None) -> Any:
    """Exact disk support ``fspecial('disk', radius) > 0`` (spec §0).

    Offsets ``(dy, dx)`` with ``|dy|, |dx| <= ceil(radius - 0.5)`` and
    ``max(|dy| - 0.5, 0)^2 + max(|dx| - 0.5, 0)^2 < radius^2``: the pixels whose square the disk touches.
    Verified against MATLAB's ``fspecial`` for integer radii 1..10.

    Parameters
    ----------
    radius : float
        Disk radius in pixels, > 0.
    xp, device : optional
        Namespace and device of the result (NumPy on the CPU by default).

    Returns
    -------
    mask : bool array of shape (2 c + 1, 2 c + 1), ``c = ceil(radius - 0.5)``
    """
    return _rows_to_mask(_disk_rows(_check_radius(radius, integer=False)), xp, device)


@functools.lru_cache(maxsize=64)
def _disk_rows(radius: float) -> tuple[tuple[bool, ...], ...]:
    """The rows of :func:`disk_footprint`'s mask as host booleans (built once per radius: refinement asks for
    the same disk at every iteration)."""
    half = math.ceil(radius - 0.5)
    offsets = {(dy, dx) for dy in range(-half, half + 1) for dx in range(-half, half + 1)
               if max(abs(dy) - 0.5, 0) ** 2 + max(abs(dx) - 0.5, 0) ** 2 < radius * radius}
    return _mask_rows(offsets, half)


def gaussian_kernel(size: int | tuple[int, int], sigma: float, *, dtype: Any = None, xp: Any = None,
                    device: Any = None) -> Any:
    """MATLAB ``fspecial('gaussian', size, sigma)``: ``exp(-(dy^2 + dx^2) / (2 sigma^2))`` normalised to sum 1.

    Offsets are centred (``-(n-1)/2 .. (n-1)/2``, half-integers for even ``n``); as in MATLAB, values below
    ``eps * max`` are set to 0 before normalising.

    Parameters
    ----------
    size : int or (int, int)
        Kernel shape ``(rows, cols)``; an int gives a square.
    sigma : float
        Standard deviation in pixels, > 0.
    dtype : optional
        Floating dtype of the result (float64 by default, as MATLAB).
    xp, device : optional
        Namespace and device of the result (NumPy on the CPU by default).

    Returns
    -------
    kernel : array of shape ``size``
    """
    rows, cols = (size, size) if isinstance(size, int) else tuple(size)
    if rows < 1 or cols < 1 or not sigma > 0:
        raise ValueError(f"need size >= 1 and sigma > 0, got size={size!r}, sigma={sigma!r}")
    xp = backend.select("numpy") if xp is None else xp
    dtype = xp.float64 if dtype is None else dtype
    dy = xp.arange(rows, dtype=dtype, device=device) - (rows - 1) / 2
    dx = xp.arange(cols, dtype=dtype, device=device) - (cols - 1) / 2
    kernel = xp.exp(-(dy[:, None] ** 2 + dx[None, :] ** 2) / (2.0 * sigma * sigma))
    kernel = xp.where(kernel < xp.finfo(xp.float64).eps * xp.max(kernel), xp.zeros_like(kernel), kernel)
    return kernel / xp.sum(kernel)


def dilate(masks: Any, footprint: Any) -> Any:
    """Binary dilation of each mask by ``footprint``, zero padding at the borders (MATLAB ``imdilate``).

    Parameters
    ----------
    masks : bool array of shape (K, H, W) or (H, W)
        One image per cell (a single image is accepted too).
    footprint : bool array of shape (h, w), odd h and w, symmetric
        Neighbourhood, e.g. :func:`strel_disk` or :func:`disk_footprint`; any namespace.

    Returns
    -------
    dilated : bool array, same shape, namespace and device as ``masks``
    """
    xp = backend.get_namespace(masks)
    if footprint.ndim != 2 or footprint.shape[0] % 2 == 0 or footprint.shape[1] % 2 == 0:
        raise ValueError(f"footprint must be 2-D with odd sides, got shape {footprint.shape}")
    if masks.ndim == 2:
        return backend.binary_dilation(xp.astype(masks, xp.bool), footprint)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (K, H, W) or (H, W), got shape {masks.shape}")
    fxp = backend.get_namespace(footprint)
    structure = fxp.reshape(footprint, (1, *footprint.shape))  # singleton cell axis: each image on its own
    return backend.binary_dilation(xp.astype(masks, xp.bool), structure)


def _check_radius(radius: float, *, integer: bool) -> float:
    if integer:
        if int(radius) != radius or radius < 0:
            raise ValueError(f"strel('disk') radius must be a non-negative integer, got {radius!r}")
        return int(radius)
    if not radius > 0:
        raise ValueError(f"disk radius must be > 0, got {radius!r}")
    return float(radius)


def _minkowski_sum(a: set[tuple[int, int]], b: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """All sums of an offset of ``a`` and an offset of ``b`` (dilation of one offset set by another)."""
    return {(ya + yb, xa + xb) for ya, xa in a for yb, xb in b}


def _offsets_to_mask(offsets: set[tuple[int, int]], xp: Any, device: Any) -> Any:
    """Centred square boolean mask, true at ``offsets`` (half-width: the largest offset)."""
    return _rows_to_mask(_mask_rows(offsets, max(max(abs(dy), abs(dx)) for dy, dx in offsets)), xp, device)


def _mask_rows(offsets: set[tuple[int, int]], half: int) -> tuple[tuple[bool, ...], ...]:
    """Rows of the centred square of half-width ``half``, true at ``offsets``."""
    return tuple(tuple((dy, dx) in offsets for dx in range(-half, half + 1)) for dy in range(-half, half + 1))


def _rows_to_mask(rows: tuple[tuple[bool, ...], ...], xp: Any, device: Any) -> Any:
    """Boolean (side, side) array of ``rows`` in namespace ``xp`` (NumPy when None) on ``device``."""
    xp = backend.select("numpy") if xp is None else xp
    return xp.asarray(rows, dtype=xp.bool, device=device)


def grown_range(hit: list[bool], margin: int, length: int) -> tuple[int, int]:
    """``[first, last + 1)`` of the true entries of ``hit`` grown by ``margin`` on both sides and clipped to
    ``[0, length)``; ``(0, 0)`` when none is true. One axis of a bounding box (host lists, small bookkeeping)."""
    idx = [i for i, v in enumerate(hit) if v]
    if not idx:
        return 0, 0
    return max(0, idx[0] - margin), min(length, idx[-1] + margin + 1)
