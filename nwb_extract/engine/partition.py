"""Partitions of the field of view and stitching of their results (spec §1.3–1.4).

Large movies are cut into ``npy x npx`` overlapping rectangular blocks ("partitions"); EXTRACT runs on each block
independently and the per-partition cells are put back into the field of view (FOV), concatenated in partition
order, and cells found twice across a seam are removed. This module holds that bookkeeping:

- geometry: :func:`partition_overlap`, :func:`partition_grid`, :func:`partition_blocks` (:class:`Block`);
- per-partition inputs cut from the full-FOV config: :func:`partition_inputs` (:class:`PartitionInputs`);
- stitching: :func:`embed_footprints`, :func:`embed_images`, :func:`coverage`, :func:`overlap_pixels`,
  :func:`seam_fragments` (ours, docs/decisions.md), :func:`find_duplicate_cells`, :func:`match_to_init` and the
  whole of §1.4 in :func:`stitch`
  (:class:`PartitionResult` in, :class:`Stitched` out).

Conventions: pixels are flattened row-major (``p = row * W + col``); partition ``i`` (0-based here, ``i + 1`` in
the reference) sits at grid position ``(iy, ix) = (i mod npy, i div npy)`` (column-major, "running down rows
first"); row and column ranges are 0-based and half-open. Every per-cell array carries its cells on the **last**
axis (footprints ``(P, K)``, traces ``(n, K)``, metric tables ``(30, K)``), so one rule concatenates and selects
them all. Arrays stay in their namespace and device; cell indices (small bookkeeping) are host Python ints.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nwb_extract.config import ExtractConfig
from nwb_extract.engine import backend, preprocess
from nwb_extract.engine.matching import find_conncomp, match_sets
from nwb_extract.errors import ConfigError, InputError

log = logging.getLogger(__name__)

#: a partition's side, in (downsampled) pixels, above which the automatic rule adds partitions (spec §1.3)
PARTITION_SIDE = 512
#: ``S_init`` columns whose sum inside a partition is at most this are not given to that partition (spec §1.3)
S_INIT_MIN_SUM = 1e-6
#: the last threshold of the reference's ``regression_only`` matching loop ``0.99, 0.98, ...`` (spec §1.4)
_REGRESSION_ONLY_MIN_CORR = 0.01

# ----------------------------------------------------------------------------------------------------------------
# geometry (§1.3)


@dataclass(frozen=True)
class Block:
    """One rectangular partition of the FOV.

    Attributes
    ----------
    index : int
        0-based partition index (the reference's ``i - 1``); partitions are concatenated in this order.
    iy, ix : int
        0-based grid position; ``index = iy + npy * ix``.
    rows, cols : tuple of int
        0-based half-open pixel ranges ``(start, stop)`` in the FOV.
    """

    index: int
    iy: int
    ix: int
    rows: tuple[int, int]
    cols: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the block."""
        return self.rows[1] - self.rows[0], self.cols[1] - self.cols[0]

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(row slice, col slice)`` that cut the block out of a ``(..., H, W)`` array."""
        return slice(*self.rows), slice(*self.cols)

    def trimmed(self, trims: tuple[int, int, int, int]) -> Block:
        """The block after zero-edge trimming (spec §3.8): the pixels the partition actually keeps.

        Parameters
        ----------
        trims : tuple of int
            ``(top, bottom, left, right)`` as returned by :func:`preprocess.remove_zero_edge_pixels`.
        """
        top, bottom, left, right = trims
        rows = (self.rows[0] + top, self.rows[1] - bottom)
        cols = (self.cols[0] + left, self.cols[1] - right)
        if rows[1] <= rows[0] or cols[1] <= cols[0]:
            raise InputError(f"partition {self.index + 1}: trimming {trims} (top, bottom, left, right) leaves no "
                             f"pixels of its {self.shape} block; the movie is zero there")
        return Block(self.index, self.iy, self.ix, rows, cols)

    def occupation(self, frame_shape: tuple[int, int], *, xp: Any, device: Any = None) -> Any:
        """The reference's ``fov_occupation``: bool ``(H, W)`` mask of the block's pixels in the FOV."""
        h, w = frame_shape
        r = xp.arange(h, device=device)[:, None]
        c = xp.arange(w, device=device)[None, :]
        return (r >= self.rows[0]) & (r < self.rows[1]) & (c >= self.cols[0]) & (c < self.cols[1])


def partition_overlap(avg_cell_radius: float) -> int:
    """Overlap of neighbouring partitions in pixels, ``ceil(2 * avg_cell_radius)`` (user radius; spec §1.3)."""
    return math.ceil(2.0 * avg_cell_radius)


def partition_grid(cfg: ExtractConfig, frame_shape: tuple[int, int]) -> tuple[int, int]:
    """Number of partitions ``(npy, npx)`` along rows and columns (spec §1.3).

    ``num_partitions_y`` / ``num_partitions_x`` when both are set; otherwise the automatic rule
    ``max(ceil((side / dss) / 512), 1)`` per axis, with the spatial downsampling factor ``dss`` resolved by
    :func:`preprocess.resolve_downsampling` (``'auto'`` rule included) and ``dss = 1`` when
    ``reestimate_S_if_downsampled`` (the reference then also writes ``dss = 1`` back into the config; the caller
    applies that, the config being immutable).

    Parameters
    ----------
    cfg : ExtractConfig
        Resolved config.
    frame_shape : tuple of int
        ``(H, W)`` of the full FOV in pixels.

    Returns
    -------
    (npy, npx) : tuple of int
    """
    if cfg.num_partitions_x is not None and cfg.num_partitions_y is not None:
        return int(cfg.num_partitions_y), int(cfg.num_partitions_x)
    dss = 1
    if not cfg.reestimate_S_if_downsampled:
        dss, _ = preprocess.resolve_downsampling(
            cfg.avg_cell_radius, cfg.avg_event_tau, downsample_space_by=cfg.downsample_space_by,
            downsample_time_by=cfg.downsample_time_by, min_radius_after_downsampling=cfg.min_radius_after_downsampling,
            min_tau_after_downsampling=cfg.min_tau_after_downsampling)
    h, w = frame_shape
    return max(math.ceil((h / dss) / PARTITION_SIDE), 1), max(math.ceil((w / dss) / PARTITION_SIDE), 1)


def partition_blocks(frame_shape: tuple[int, int], npy: int, npx: int, overlap: int) -> list[Block]:
    """The ``npy * npx`` overlapping blocks of the FOV in partition index order (spec §1.3).

    Block side ``b = ceil((L + (n - 1) overlap) / n)`` per axis (``L`` = FOV side, ``n`` = partitions along it);
    block ``j`` (0-based) starts at ``j (b - overlap)`` and ends at ``min(start + b, L)``.

    Parameters
    ----------
    frame_shape : tuple of int
        ``(H, W)`` of the FOV.
    npy, npx : int
        Partitions along rows and columns (>= 1).
    overlap : int
        Overlap of neighbours in pixels (>= 0), see :func:`partition_overlap`.

    Returns
    -------
    list of Block
        ``blocks[i]`` is partition ``i`` (0-based), at ``iy = i mod npy``, ``ix = i div npy``.

    Raises
    ------
    ConfigError
        When the blocks would not advance (``b <= overlap``) or a block would be empty: too many partitions for
        the FOV and overlap.
    """
    h, w = frame_shape
    if npy < 1 or npx < 1 or overlap < 0:
        raise ConfigError(f"need num_partitions_y, num_partitions_x >= 1 and overlap >= 0; got {npy}, {npx}, {overlap}")
    row_ranges = _axis_ranges(h, npy, overlap, "num_partitions_y", "rows")
    col_ranges = _axis_ranges(w, npx, overlap, "num_partitions_x", "columns")
    return [Block(i, i % npy, i // npy, row_ranges[i % npy], col_ranges[i // npy]) for i in range(npy * npx)]


def _axis_ranges(length: int, count: int, overlap: int, key: str, axis: str) -> list[tuple[int, int]]:
    """Half-open ranges of ``count`` blocks overlapping by ``overlap`` along an axis of ``length`` pixels."""
    side = math.ceil((length + (count - 1) * overlap) / count)
    if count > 1 and side <= overlap:
        raise ConfigError(f"{key}={count} is too many for {length} {axis}: blocks of {side} pixels would not advance "
                          f"past their {overlap}-pixel overlap (2 x avg_cell_radius); use fewer partitions")
    ranges = [(j * (side - overlap), min(j * (side - overlap) + side, length)) for j in range(count)]
    if any(stop <= start for start, stop in ranges):
        raise ConfigError(f"{key}={count} leaves an empty partition on {length} {axis} with overlap {overlap}; "
                          "use fewer partitions")
    return ranges


# ----------------------------------------------------------------------------------------------------------------
# per-partition inputs (§1.3)


@dataclass(frozen=True)
class PartitionInputs:
    """The full-FOV config arrays cut to one partition's kept pixels (``None`` where the config has none).

    Attributes
    ----------
    movie_mask : bool array (h, w) or None
    F_per_pixel : float32 array (h, w) or None
    S_init : float32 array (K_i, h, w) or None
        The ``S_init`` cells whose sum inside the block is above 1e-6, in ``S_init`` order.
    T_init : float32 array (n, K_i) or None
        The matching ``T_init`` columns (only when ``S_init`` is given too, as in the reference).
    init_cells : tuple of int
        Index in the config's ``S_init`` of each ``S_init`` cell given to this partition (empty without ``S_init``).
    """

    movie_mask: Any
    F_per_pixel: Any
    S_init: Any
    T_init: Any
    init_cells: tuple[int, ...]


def partition_inputs(cfg: ExtractConfig, kept: Block, *, xp: Any, device: Any = None) -> PartitionInputs:
    """Cut ``movie_mask``, ``F_per_pixel``, ``S_init`` and ``T_init`` to a partition's kept pixels (spec §1.3).

    Parameters
    ----------
    cfg : ExtractConfig
        Resolved full-FOV config; its arrays are ``(H, W)``, ``S_init`` ``(K, H, W)``, ``T_init`` ``(n, K)``.
    kept : Block
        The partition's pixels after zero-edge trimming (:meth:`Block.trimmed`).
    xp, device :
        Namespace and device of the returned arrays (the config holds host arrays).

    Returns
    -------
    PartitionInputs
    """
    rows, cols = kept.slices

    def cut(a: Any) -> Any:
        """Host array ``(..., H, W)`` -> the block's ``(..., h, w)`` pixels as an array of ``xp`` on ``device``."""
        return None if a is None else xp.asarray(backend.from_numpy(a[..., rows, cols], xp, device), copy=True)

    S_init = T_init = None
    init_cells: tuple[int, ...] = ()
    if cfg.S_init is not None:
        inside = cut(cfg.S_init)
        sums = xp.sum(xp.reshape(xp.astype(inside, xp.float64), (inside.shape[0], -1)), axis=1)
        init_cells = tuple(_host_indices(xp.nonzero(sums > S_INIT_MIN_SUM)[0]))
        index = xp.asarray(init_cells, dtype=xp.int64, device=device)
        S_init = xp.take(inside, index, axis=0)
        if cfg.T_init is not None:
            T_init = xp.take(backend.from_numpy(cfg.T_init, xp, device), index, axis=1)
    return PartitionInputs(cut(cfg.movie_mask), cut(cfg.F_per_pixel), S_init, T_init, init_cells)


# ----------------------------------------------------------------------------------------------------------------
# stitching (§1.3 end, §1.4)


def embed_footprints(S_block: Any, kept: Block, frame_shape: tuple[int, int]) -> Any:
    """Un-trim a partition's footprints: ``(h*w, K)`` block pixels -> ``(H*W, K)`` FOV pixels, zero elsewhere.

    Parameters
    ----------
    S_block : array (h * w, K)
        Footprints on the kept block ``kept.shape == (h, w)``, row-major pixels.
    kept : Block
        The partition's kept pixels.
    frame_shape : tuple of int
        ``(H, W)`` of the FOV.

    Returns
    -------
    S : array (H * W, K), dtype of ``S_block``
    """
    xp, device = backend.get_namespace_and_device(S_block)
    (h, w), k = kept.shape, S_block.shape[1]
    if S_block.shape[0] != h * w:
        raise ValueError(f"S_block has {S_block.shape[0]} pixels but the kept block is {h} x {w}")
    H, W = frame_shape
    full = xp.zeros((H, W, k), dtype=S_block.dtype, device=device)
    rows, cols = kept.slices
    full[rows, cols, :] = xp.reshape(S_block, (h, w, k))
    return xp.reshape(full, (H * W, k))


def embed_images(images: Sequence[Any], kept: Sequence[Block], frame_shape: tuple[int, int],
                 fill: float = 0.0) -> Any:
    """One FOV image from per-partition images; in overlaps the **lowest** partition index wins.

    The reference's serial loop writes partitions ``n, ..., 1`` so partition 1 wins, but its parallel assembly
    writes ``1, ..., n`` so the last wins (spec §13.12); we always give the first partition precedence, whatever
    executor ran them.

    Parameters
    ----------
    images : sequence of arrays (h_i, w_i)
        One image per partition (e.g. ``F_per_pixel``, ``summary_image``, ``max_image``), on ``kept[i]``.
    kept : sequence of Block
        Kept pixels of each partition, same length.
    frame_shape : tuple of int
        ``(H, W)``.
    fill : float
        Value of pixels no partition covers (trimmed edges); the reference uses 0.

    Returns
    -------
    image : array (H, W), dtype of ``images[0]``
    """
    xp, device = backend.get_namespace_and_device(*images)
    canvas = xp.full(frame_shape, fill, dtype=images[0].dtype, device=device)
    for image, block in reversed(list(zip(images, kept, strict=True))):
        if tuple(image.shape) != block.shape:
            raise ValueError(f"partition {block.index + 1}: image shape {tuple(image.shape)} != block {block.shape}")
        canvas[block.slices] = xp.astype(image, canvas.dtype)
    return canvas


def coverage(kept: Sequence[Block], frame_shape: tuple[int, int], *, xp: Any, device: Any = None) -> Any:
    """``fov_occupation_total``: how many partitions keep each pixel, int32 ``(H, W)``."""
    count = xp.zeros(frame_shape, dtype=xp.int32, device=device)
    for block in kept:
        count[block.slices] += 1
    return count


def overlap_pixels(count: Any) -> Any:
    """Row-major indices (int64, ascending) of pixels whose coverage is not 1: seams and trimmed edges (§1.4)."""
    xp = backend.get_namespace(count)
    return xp.astype(xp.nonzero(xp.reshape(count, (-1,)) != 1)[0], xp.int64)


def partition_cores(kept: Sequence[Block]) -> list[Block]:
    """The part of the FOV each partition owns: its block cut at the middle of every overlap with a neighbour.

    Cores tile the FOV without overlap (half-open ranges). Neighbours are the blocks one grid step away; at the FOV
    edge a core keeps its block's edge. Returned in the order of ``kept``.
    """
    by_position = {(b.iy, b.ix): b for b in kept}

    def cut(block: Block, axis: int) -> tuple[int, int]:
        lo, hi = block.rows if axis == 0 else block.cols
        step = (1, 0) if axis == 0 else (0, 1)
        before = by_position.get((block.iy - step[0], block.ix - step[1]))
        after = by_position.get((block.iy + step[0], block.ix + step[1]))
        if before is not None:
            lo = ((before.rows if axis == 0 else before.cols)[1] + lo) // 2
        if after is not None:
            hi = ((after.rows if axis == 0 else after.cols)[0] + hi) // 2
        return lo, hi

    return [Block(b.index, b.iy, b.ix, cut(b, 0), cut(b, 1)) for b in kept]


def seam_fragments(S: Any, origin: Sequence[int], kept: Sequence[Block], frame_shape: tuple[int, int]) -> list[int]:
    """Cells that a partition found in a neighbour's core where that neighbour found a cell too (ours; see
    docs/decisions.md, "partition ownership").

    A cell's centroid (footprint-weighted mean pixel position) falls in exactly one partition's core
    (:func:`partition_cores`). If that owner is not the partition the cell came from, and a cell of the owner
    shares at least one pixel with it, the cell is a copy or a cut-off fragment of what the owner (which sees that
    area with at least half an overlap of margin) found, and is removed. Cells in an area the owner left empty are
    kept, so no cell is lost at a seam.

    Parameters
    ----------
    S : array (H * W, K)
        Footprints in the FOV, row-major pixels.
    origin : sequence of int
        0-based partition index of each of the K cells.
    kept, frame_shape :
        The partitions' kept blocks (any order) and ``(H, W)``.

    Returns
    -------
    list of int
        0-based cell indices to remove, ascending.
    """
    xp, device = backend.get_namespace_and_device(S)
    if S.shape[1] == 0 or len(kept) < 2:
        return []
    h, w = frame_shape
    rows = xp.astype(xp.arange(h * w, device=device) // w, S.dtype)
    cols = xp.astype(xp.arange(h * w, device=device) % w, S.dtype)
    mass = xp.sum(S, axis=0)
    safe = xp.where(mass > 0, mass, xp.ones_like(mass))
    centroid_r = _host_floats((rows[None, :] @ S)[0, :] / safe)
    centroid_c = _host_floats((cols[None, :] @ S)[0, :] / safe)
    cores = partition_cores(kept)
    support = xp.astype(S > 0, S.dtype)
    shared = _host_floats(xp.reshape(xp.matrix_transpose(support) @ support, (-1,)))
    K = S.shape[1]
    fragments = []
    for j in range(K):
        owner = next((c.index for c in cores
                      if c.rows[0] <= centroid_r[j] < c.rows[1] and c.cols[0] <= centroid_c[j] < c.cols[1]), None)
        if owner is None or owner == origin[j]:
            continue
        if any(origin[i] == owner and shared[j * K + i] > 0 for i in range(K)):
            fragments.append(j)
    return fragments


def _host_floats(values: Any) -> list[float]:
    return [float(v) for v in backend.to_numpy(values).tolist()]


def find_duplicate_cells(S: Any, T: Any, overlap: Any, T_dup_thresh: float = 0.9, T_corr_thresh: float = 0.8,
                         S_corr_thresh: float = 0.1) -> list[int]:
    """Cells found twice across partition seams, to be removed (spec §1.4 item 4).

    Candidates are the cells with positive total weight on the ``overlap`` pixels. They are grouped by image
    correlation (:func:`matching.find_conncomp` with ``S_corr_thresh``); in each group

    1. trace components at ``T_dup_thresh`` keep only their member with the largest support ``count(S > 0)``
       (first in component order on ties);
    2. on the remaining members (ascending), trace components at ``T_corr_thresh``: while a component has more
       than 2 members and an edge among them, the member with most edges (first on ties) is removed; of a final
       pair (connected or not) the one with the smaller trace maximum (first on ties) is removed.

    Parameters
    ----------
    S : array (P, K)
        Footprints of all partitions' cells in the FOV (any consistent pixel order).
    T : array (n, K)
        Their traces (frames x cells).
    overlap : int array (m,)
        Pixel indices (rows of ``S``) where partitions overlap, see :func:`overlap_pixels`.
    T_dup_thresh, T_corr_thresh, S_corr_thresh : float
        EXTRACT's config values of the same names.

    Returns
    -------
    list of int
        0-based cell indices to remove, in the order found (the reference's ``idx_trash`` minus 1).
    """
    xp, device = backend.get_namespace_and_device(S, T)
    if S.shape[1] != T.shape[1]:
        raise ValueError(f"S {S.shape} and T {T.shape} must have the same number of cells (last axis)")
    if S.shape[1] == 0 or overlap.shape[0] == 0:
        return []
    weight_on_overlap = xp.sum(xp.take(S, overlap, axis=0), axis=0)
    candidates = _host_indices(xp.nonzero(weight_on_overlap > 0)[0])
    if not candidates:
        return []
    groups, _ = find_conncomp(_columns(S, candidates, xp, device), S_corr_thresh)
    trash: list[int] = []
    for group in groups:
        members = [candidates[j] for j in group]
        duplicates = _keep_largest_support(S, T, members, T_dup_thresh, xp, device)
        trash += duplicates
        remaining = sorted(set(members) - set(duplicates))
        trash += _remove_most_connected(T, remaining, T_corr_thresh, xp, device)
    return trash


def _host_indices(indices: Any) -> list[int]:
    return [int(i) for i in backend.to_numpy(indices).tolist()]


def _columns(X: Any, cells: list[int], xp: Any, device: Any) -> Any:
    return xp.take(X, xp.asarray(cells, dtype=xp.int64, device=device), axis=1)


def _keep_largest_support(S: Any, T: Any, members: list[int], threshold: float, xp: Any, device: Any) -> list[int]:
    """Pass 1 of :func:`find_duplicate_cells`: all but the largest-support cell of each near-identical trace set."""
    components, _ = find_conncomp(_columns(T, members, xp, device), threshold)
    support = _host_indices(xp.sum(xp.astype(_columns(S, members, xp, device) > 0, xp.int64), axis=0))
    duplicates = []
    for component in components:
        areas = [support[j] for j in component]
        largest = areas.index(max(areas))
        duplicates += [members[j] for pos, j in enumerate(component) if pos != largest]
    return duplicates


def _remove_most_connected(T: Any, cells: list[int], threshold: float, xp: Any, device: Any) -> list[int]:
    """Pass 2 of :func:`find_duplicate_cells` on ``cells`` (ascending)."""
    if len(cells) < 2:
        return []
    traces = _columns(T, cells, xp, device)
    components, adjacency = find_conncomp(traces, threshold)
    adj = [[int(v) for v in row] for row in backend.to_numpy(adjacency).tolist()]
    peaks = [float(v) for v in backend.to_numpy(xp.max(traces, axis=0)).tolist()]
    removed = []
    for component in components:
        left = list(component)
        while len(left) > 2:
            # the reference's edge table minus the identity: a self-loop does not count, a missing one counts -1
            edges = [[adj[i][j] - (i == j) for i in left] for j in left]  # edges[b][a]: column b, row a
            if all(max(column) < threshold for column in edges):
                break
            degree = [sum(column) for column in edges]
            discard = left[degree.index(max(degree))]
            left = sorted(set(left) - {discard})
            removed.append(cells[discard])
        if len(left) == 2:
            weaker = min(left, key=lambda j: peaks[j])  # first on ties
            removed.append(cells[weaker])
    return removed


def match_to_init(S_init: Any, S: Any) -> list[int]:
    """``regression_only`` stitching: the found cell standing for each ``S_init`` cell (spec §1.4 item 3).

    The reference retries ``match_sets(S_init, S, c)`` for ``c = 0.99, 0.98, ..., 0.01`` until every ``S_init``
    cell is matched. ``match_sets`` is greedy over correlations in descending order and only stops at ``c``, so
    its pairs at a threshold are a prefix of its pairs at any lower one, and once every ``S_init`` cell is matched
    no further pair exists: one call at the last threshold, 0.01, gives the reference's result.

    Parameters
    ----------
    S_init : array (K0, ...)
        The user's footprints, cells first (``(K0, H, W)`` or ``(K0, P)``).
    S : array (P, K)
        Stitched footprints, row-major pixels.

    Returns
    -------
    list of int
        Indices into the columns of ``S``, in ``S_init`` order; shorter than ``K0`` when some ``S_init`` cell has
        no match with correlation > 0.01 (a warning is logged).
    """
    xp = backend.get_namespace(S_init, S)
    k0 = S_init.shape[0]
    pairs = match_sets(xp.reshape(S_init, (k0, -1)), xp.permute_dims(S, (1, 0)), _REGRESSION_ONLY_MIN_CORR, xp=xp)
    matched = [(int(a), int(b)) for a, b in backend.to_numpy(pairs).tolist()]
    if len(matched) < k0:
        missing = sorted(set(range(k0)) - {a for a, _ in matched})
        log.warning("regression_only: S_init cells %s match no estimated footprint (correlation > %.2f) and are "
                    "dropped", missing, _REGRESSION_ONLY_MIN_CORR)
    return [b for _, b in matched]


@dataclass(frozen=True)
class PartitionResult:
    """What one partition's run hands to :func:`stitch`.

    Attributes
    ----------
    kept : Block
        The partition's kept pixels after zero-edge trimming.
    S : array (h * w, K_i)
        Footprints on the kept block, row-major pixels.
    per_cell : mapping of str to arrays (..., K_i)
        Every per-cell array, cells on the last axis: the trace kinds ``(n, K_i)``, metric tables ``(30, K_i)``...
        Every partition must give the same keys.
    images : mapping of str to arrays (h, w)
        Partition images to assemble into the FOV (``F_per_pixel``, ``summary_image``, ``max_image``...).
    """

    kept: Block
    S: Any
    per_cell: Mapping[str, Any]
    images: Mapping[str, Any]


@dataclass(frozen=True)
class Stitched:
    """Result of :func:`stitch`.

    Attributes
    ----------
    S : array (H * W, K)
        Footprints of the kept cells, row-major pixels.
    per_cell : dict of str to arrays (..., K)
        The partitions' per-cell arrays, concatenated and selected like ``S``.
    images : dict of str to arrays (H, W)
        FOV images (:func:`embed_images`: partition 1 wins in overlaps, 0 where nothing is kept).
    coverage : int32 array (H, W)
        Partitions keeping each pixel (the reference's ``fov_occupation_total``).
    n_found : int
        Cells of all partitions before duplicate removal / ``S_init`` matching.
    selected : tuple of int
        For each output cell, its index among the ``n_found`` concatenated cells.
    removed : tuple of int
        Concatenated indices left out: seam duplicates in the order found (``idx_trash - 1``), or, with
        ``regression_only``, the unmatched cells ascending.
    fragments : tuple of int
        Concatenated indices left out before that by :func:`seam_fragments` (``python.seam_ownership``).
    cell_partition : tuple of int
        0-based partition index of each output cell.
    """

    S: Any
    per_cell: dict[str, Any]
    images: dict[str, Any]
    coverage: Any
    n_found: int
    selected: tuple[int, ...]
    removed: tuple[int, ...]
    fragments: tuple[int, ...]
    cell_partition: tuple[int, ...]


def stitch(results: Sequence[PartitionResult], frame_shape: tuple[int, int], cfg: ExtractConfig,
           trace_key: str) -> Stitched:
    """Put the partitions' results back into the FOV and remove seam duplicates (spec §1.3 end, §1.4).

    Footprints are un-trimmed (:func:`embed_footprints`) and, with every per-cell array, concatenated in partition
    order. Then, if ``cfg.remove_duplicate_cells``: with ``regression_only`` the cells are matched to ``cfg.S_init``
    and put in its order (:func:`match_to_init`); otherwise, with ``cfg.python.seam_ownership`` (default, ours),
    :func:`seam_fragments` removes the cells a partition found in a neighbour's core where the neighbour found a
    cell too, and then :func:`find_duplicate_cells` runs on the remaining cells' traces ``per_cell[trace_key]``
    with the pixels not covered exactly once, and the duplicates are deleted.

    Parameters
    ----------
    results : sequence of PartitionResult
        One per partition, in partition order (as :func:`nwb_extract.engine.pipeline.extract` runs them).
    frame_shape : tuple of int
        ``(H, W)`` of the FOV.
    cfg : ExtractConfig
        Resolved config: ``remove_duplicate_cells``, ``regression_only``, ``S_init``, ``T_dup_thresh``,
        ``T_corr_thresh``, ``S_corr_thresh``.
    trace_key : str
        Key of ``per_cell`` whose ``(n, K_i)`` traces decide duplicates (the primary trace kind, as the reference
        uses its output traces).

    Returns
    -------
    Stitched
    """
    if not results:
        raise ValueError("stitch needs at least one partition result")
    xp, device = backend.get_namespace_and_device(results[0].S)
    keys = list(results[0].per_cell)  # in the partitions' order, so the result's trace kinds keep theirs
    if any(set(r.per_cell) != set(keys) for r in results) or trace_key not in keys:
        raise ValueError(f"every partition must give the same per-cell arrays, including {trace_key!r}")
    S = xp.concat([embed_footprints(r.S, r.kept, frame_shape) for r in results], axis=1)
    per_cell = {key: xp.concat([r.per_cell[key] for r in results], axis=-1) for key in keys}
    origin = [r.kept.index for r in results for _ in range(r.S.shape[1])]
    kept = [r.kept for r in results]
    count = coverage(kept, frame_shape, xp=xp, device=device)
    images = {name: embed_images([r.images[name] for r in results], kept, frame_shape) for name in results[0].images}

    n_found = S.shape[1]
    selected, removed, fragments = list(range(n_found)), [], []
    if cfg.remove_duplicate_cells and cfg.regression_only:
        S_init = backend.from_numpy(cfg.S_init, xp, device)
        selected = match_to_init(S_init, S)
        removed = sorted(set(range(n_found)) - set(selected))
    elif cfg.remove_duplicate_cells:
        if cfg.python.seam_ownership:
            fragments = seam_fragments(S, origin, kept, frame_shape)
        dropped = set(fragments)
        rest = [i for i in range(n_found) if i not in dropped]
        index = xp.asarray(rest, dtype=xp.int64, device=device)
        duplicates = find_duplicate_cells(xp.take(S, index, axis=1), xp.take(per_cell[trace_key], index, axis=1),
                                          overlap_pixels(count), cfg.T_dup_thresh, cfg.T_corr_thresh,
                                          cfg.S_corr_thresh)
        removed = [rest[i] for i in duplicates]
        trash = set(removed) | dropped
        selected = [i for i in range(n_found) if i not in trash]
    if selected != list(range(n_found)):
        index = xp.asarray(selected, dtype=xp.int64, device=device)
        S = xp.take(S, index, axis=1)
        per_cell = {key: xp.take(v, index, axis=v.ndim - 1) for key, v in per_cell.items()}
    return Stitched(S=S, per_cell=per_cell, images=images, coverage=count, n_found=n_found,
                    selected=tuple(selected), removed=tuple(removed), fragments=tuple(fragments),
                    cell_partition=tuple(origin[i] for i in selected))
