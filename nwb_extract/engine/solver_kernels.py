"""The robust solvers' movie-sized kernels, and the work counter and thread map that go with them.

Like :mod:`backend` (of which it is the solver-specific half), this module may import NumPy: each kernel has one
NumPy implementation (compiled, in :mod:`cpu_kernels`) and one CuPy / generic Array API implementation behind one
function or class:

* :class:`ResidualOperator`: ``min(X A - B + kappa, 0) A^T`` over the non-zeros of a sparse factor (spec §6.2);
* :func:`single_source_iterations`: updates of the single-source fit, from sums over its quadratic region (spec §5.5);
* :func:`gather_pixels_transposed` / :func:`gather_pixels`: a movie tile gathered pixel-major (as the T-step's
  kernel reads it) or frame-major (the S-step's);
* :func:`row_block` / :func:`row_ranges`: cache-sized blocks of independent rows for the solvers that iterate on
  them, as many as the threads share;
* :func:`write_pixel_major`, :func:`summary_window_means`: cell finding's pixel-major movie, written from blocks
  of frames, and its summary values of a box of pixels (spec §5.2);
* :func:`map_in_threads` / :func:`available_threads`: independent pieces of work (partitions, tiles, row blocks,
  frame chunks) side by side on the host's cores, nested maps sharing the threads (NumPy only);
* :class:`WorkCount` / :func:`counting_work` / :func:`work_stage`: FLOPs and bytes of these kernels per pipeline
  stage, counted from their shapes, for the benchmark's roofline.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np

from nwb_extract.engine.backend import get_namespace, is_cupy, is_numpy, to_numpy


class WorkCount:
    """Arithmetic and memory traffic of the movie-sized kernels, counted from their shapes while
    :func:`counting_work` is active (for the benchmark's roofline; costs nothing otherwise).

    ``stages`` maps a stage name (set by the pipeline through :func:`work_stage`) to ``[flops, bytes, cache_bytes]``:
    floating-point operations (a multiply-add counts 2), the least memory traffic the kernels need (each movie
    element read once per call, plus a per-entry kappa), in bytes, and the data the kernels read again from cache
    (the row blocks of the fixed-kappa solvers after their first iteration), in bytes.
    """

    def __init__(self) -> None:
        self.stages: dict[str, list[float]] = {}
        self.stage = "other"
        self._lock = threading.Lock()

    def add(self, flops: float, nbytes: float, cache_bytes: float = 0.0) -> None:
        with self._lock:
            totals = self.stages.setdefault(self.stage, [0.0, 0.0, 0.0])
            totals[0] += flops
            totals[1] += nbytes
            totals[2] += cache_bytes


_work: WorkCount | None = None


@contextmanager
def counting_work() -> Iterator[WorkCount]:
    """Count the work of the movie-sized kernels run inside the block (see :class:`WorkCount`)."""
    global _work
    _work = WorkCount()
    try:
        yield _work
    finally:
        _work = None


def work_stage(name: str) -> None:
    """Attribute the work counted from now on to stage ``name`` (no effect unless :func:`counting_work` is on)."""
    if _work is not None:
        _work.stage = name


def count_work(flops: float, nbytes: float, cache_bytes: float = 0.0) -> None:
    """Add one kernel call's work to the active :class:`WorkCount` (nothing when counting is off)."""
    if _work is not None:
        _work.add(flops, nbytes, cache_bytes)


#: Rows of the data the NumPy residual kernel takes at a time. Long contiguous runs of the data matter more than
#: keeping the chunk's slices of X and of the output in L2 (a column touches one or two cells): measured on the 2-core
#: CI machine, 16384 rows ran 1.5-1.6x faster than 1024 on T- and S-step tiles (7000 px x 3000 frames, 9000 px x
#: 2500 frames), and as fast as one whole movie-tile copy.
RESIDUAL_ROW_CHUNK = 16384


#: Data bytes of one row block of the fixed-kappa solvers (:func:`row_block`): small enough that a block of B stays
#: in the L3 cache share of one core of the 2-core CI machine (32 MiB shared) while the solver iterates on it.
ROW_BLOCK_BYTES = 4 * 2**20
#: Fewest rows in a row block: the kernel has a fixed cost per column and block, which short blocks of wide data
#: (a T-step tile of 1500 frames x 3100 pixels) pay more often than the cache saves them.
#: Measured on the 2-core CI machine (session 5, shared with other jobs), one solve of 51 iterations each, against
#: one block of all rows: S-step tiles of 2800-6000 pixels x 1400-2600 frames 1.2-1.5x faster with blocks of
#: 4 MiB and at least 768 rows, a 3000 x 1100 T-step tile 1.1x, the 1500 x 3100 one 1.15x (0.85x with 256 rows).
MIN_ROW_BLOCK = 768


#: Row counts of a block that the compiled solvers run slowly: a multiple of 256 float32 rows puts every row of the
#: block's (cells, rows) iterates at the same offset modulo 4 KiB, so the kernel's loads and stores of different
#: cells compete for the same L1 cache sets (measured on m2's S-step, 4096 pixels: blocks of 1024 rows took 1.45x
#: as long per row as blocks of 1008 or 1040, 768 and 512 1.2-1.3x as long as 776 and 520).
ALIASED_ROWS = 256
#: What :func:`row_ranges` adds to a block of :data:`ALIASED_ROWS` rows or a multiple of it (keeps 64-byte rows).
ROW_ALIGNMENT = 16


def row_block(xp: Any, rows: int, columns: int, itemsize: int = 4) -> int:
    """Rows per block for solvers that iterate on independent rows of a (rows, columns) data matrix: NumPy gets
    equal blocks of :data:`ROW_BLOCK_BYTES` of data or a little more (at least :data:`MIN_ROW_BLOCK` rows, or all
    rows); other namespaces one block of all rows (a GPU gains nothing from cache blocking and would launch more,
    smaller kernels)."""
    rows = max(int(rows), 1)
    if not is_numpy(xp):
        return rows
    target = max(MIN_ROW_BLOCK, ROW_BLOCK_BYTES // max(itemsize * int(columns), 1))
    return -(-rows // max(1, rows // target))


def row_ranges(xp: Any, rows: int, columns: int, itemsize: int = 4) -> list[tuple[int, int]]:
    """``(start, stop)`` blocks of independent rows of a (rows, columns) data matrix for solvers that iterate on
    them: blocks of :func:`row_block` rows, made smaller where needed so that their count is a multiple of the
    threads the caller may use (:func:`available_threads`, at most one per :data:`MIN_THREAD_ROWS` rows), so that
    they share the cores evenly; a size that is a multiple of :data:`ALIASED_ROWS` changes by :data:`ROW_ALIGNMENT`.
    No blocks for no rows."""
    rows = int(rows)
    if rows <= 0:
        return []
    count = -(-rows // row_block(xp, rows, columns, itemsize))
    threads = min(available_threads() if is_numpy(xp) else 1, rows // MIN_THREAD_ROWS)
    if threads > 1:
        count = -(-count // threads) * threads
    size = -(-rows // count)
    if count > 1 and size % ALIASED_ROWS == 0:  # the last block a little shorter (or, failing that, a few more)
        size += ROW_ALIGNMENT if (count - 1) * (size + ROW_ALIGNMENT) < rows else -ROW_ALIGNMENT
    return [(start, min(rows, start + size)) for start in range(0, rows, size)]


class ResidualOperator:
    """``min(X A - B + kappa, 0) A^T`` for a fixed factor A (k, m) and data B (r, m): the one movie-sized step of
    the robust fixed-point iteration (spec §6.2, §12), prepared once per solve and applied every iteration.

    ``apply(X, kappa)`` takes X (r, k) and kappa (a float, or an array broadcastable to (r, m): adaptive kappa) and
    returns (r, k). The solvers multiply the result by their k x k matrix Q, which gives the spec's
    ``min(X A - B + kappa, 0) A^T Q`` (``= ... Pm`` with ``Pm = A^T Q``, summed in another order).

    A is sparse: a footprint pixel lies in one or two cells of a tile, a frame of the thresholded S-step traces in
    a few. NumPy uses a compiled kernel (:func:`cpu_kernels.clipped_residual_gram`) that visits only A's non-zeros,
    reading B once per call as ``B^T`` in C order: free when B is F-contiguous (the tiled steps hand over a
    transposed tile), one copy at construction otherwise. CuPy and other namespaces evaluate the dense expression
    (CuPy in one reused buffer).
    """

    def __init__(self, A: Any, B: Any) -> None:
        self.xp = get_namespace(A, B)
        self.A, self.B = A, B
        self.shape = (B.shape[0], A.shape[0])
        self._nonzeros: tuple[int, int] | None = None  # (non-zeros of A, used columns), for counting work
        if is_numpy(self.xp):
            self._prepare_numpy(A, B)
        elif is_cupy(self.xp):
            cupy = __import__("cupy")
            self._buffer = cupy.empty(B.shape, dtype=B.dtype)
            self._A_t = cupy.ascontiguousarray(A.T)

    def _count(self, kappa: Any, r: int, cached: bool) -> None:
        """Work of one application to r rows on the non-zeros of A (the NumPy kernel's; the dense paths do more):
        two products over the non-zeros and three operations per used column and row; B's rows (and a per-entry
        kappa) read once, from memory, or from cache when ``cached``."""
        if self._nonzeros is None:
            A = to_numpy(self.A)
            self._nonzeros = int(np.count_nonzero(A)), int(np.count_nonzero(np.any(A != 0, axis=0)))
        nnz, used = self._nonzeros
        per_entry = getattr(kappa, "ndim", 0) > 0
        data = 4 * used * r * (2 if per_entry else 1)
        count_work((4 * nnz + 3 * used) * r, 0 if cached else data, data if cached else 0)

    def _prepare_numpy(self, A: np.ndarray, B: np.ndarray) -> None:
        A_t = np.asarray(A.T, dtype=B.dtype)
        columns, cells = np.nonzero(A_t)  # row-major over A^T: by column of A, then cell
        self._indptr = np.concatenate([[0], np.cumsum(np.bincount(columns, minlength=A_t.shape[0]))])
        self._cells = cells.astype(np.int64)
        self._values = np.ascontiguousarray(A_t[columns, cells])
        self._data_t = np.ascontiguousarray(B.T)  # a view when B is F-contiguous
        self._kappa_t: tuple[Any, Any] = (None, None)  # (per-entry kappa, its transposed C-order copy)

    def _numpy_kappa(self, kappa: Any) -> Any:
        """kappa for the kernel: a scalar as a float; a per-entry kappa transposed to C order once per new array (the
        cache is one tuple, replaced whole: the row blocks of one solve call this from several threads)."""
        if getattr(kappa, "ndim", 0) == 0:
            return float(kappa)
        source, kappa_t = self._kappa_t
        if kappa is not source:
            kappa_t = np.ascontiguousarray(np.broadcast_to(kappa, self.B.shape).T, dtype=self.B.dtype)
            self._kappa_t = (kappa, kappa_t)
        return kappa_t

    def apply(self, X: Any, kappa: Any, rows: tuple[int, int] | None = None, cached: bool = False) -> Any:
        """``min(X A - B + kappa, 0) A^T``: X (r, k) -> (r, k). With ``rows = (start, stop)``, X holds only those
        rows of the problem (``stop - start``, k) and the result is theirs (kappa is a scalar, or per-entry for all
        r rows). ``cached``: the caller applied the operator to these rows just before, so their data come from
        cache (counted as FLOPs without memory traffic)."""
        xp = self.xp
        start, stop = (0, self.shape[0]) if rows is None else rows
        if _work is not None:
            self._count(kappa, stop - start, cached)
        if is_numpy(xp):
            from nwb_extract.engine import cpu_kernels

            x_t = np.ascontiguousarray(X.T, dtype=self.B.dtype)
            out_t = np.empty_like(x_t)
            cpu_kernels.clipped_residual_gram(self._indptr, self._cells, self._values, x_t, self._data_t,
                                              self._numpy_kappa(kappa), out_t, start, RESIDUAL_ROW_CHUNK)
            return out_t.T
        B = self.B if rows is None else self.B[start:stop, :]
        if getattr(kappa, "ndim", 0) > 0 and rows is not None:
            kappa = kappa[start:stop, ...] if kappa.shape[0] == self.shape[0] else kappa
        if is_cupy(xp):
            cupy = __import__("cupy")
            residual = self._buffer[:stop - start, :]
            cupy.matmul(X, self.A, out=residual)
            residual -= B
            residual += kappa
            cupy.minimum(residual, 0.0, out=residual)
            return residual @ self._A_t
        return xp.clip(X @ self.A - B + kappa, max=0.0) @ xp.matrix_transpose(self.A)

    def runs_admm_compiled(self, lower: Any) -> bool:
        """Whether :meth:`admm_iterations` applies: NumPy and a fixed (or no) lower bound."""
        return is_numpy(self.xp) and not callable(lower)

    def admm_iterations(self, Q: Any, rho_Q: Any, X: Any, Z: Any, U: Any, offset: Any, lower: Any, mask: Any,
                        kappa: Any, rows: tuple[int, int], first: int, last: int, test_after: int,
                        rho: float, eps: tuple[float, float]) -> tuple[Any, Any, Any, Any, int, bool]:
        """ADMM iterations ``first .. last`` (spec §6.2) on the rows ``rows = (start, stop)`` of the problem in one
        compiled call (:func:`cpu_kernels.admm_iterations`; only where :meth:`runs_admm_compiled`): each ``X =
        apply(X) Q + offset + (Z - U) rho_Q``, ``Z = max(X + U, lower) * mask``, ``U + X - Z``, then, after iteration ``test_after``, the
        primal/dual residual test with tolerances ``eps = (absolute, relative)`` and penalty ``rho``: the same float
        operations as those calls made one by one. X, Z, U, offset, mask (stop - start, k); Q, rho_Q (k, k); kappa a
        float or per-entry (all rows); lower None or (k,). Returns ``(X, Z, Z_prev, U)`` after the last
        iteration run, its number and whether the test passed there (it stops at the first pass)."""
        from nwb_extract.engine import cpu_kernels

        start, stop = rows
        with single_threaded_blas(self.xp):  # k x k products: BLAS threads would only wait for each other
            out = cpu_kernels.admm_iterations(self._indptr, self._cells, self._values, self._data_t,
                                              self._numpy_kappa(kappa), start, RESIDUAL_ROW_CHUNK, Q, rho_Q, offset,
                                              lower, mask, X, Z, U, first, last, test_after, rho, eps[0], eps[1])
        if _work is not None:
            for it in range(first, out[4] + 1):
                self._count(kappa, stop - start, it > first and test_after >= last)
        return out


def gather_pixels_transposed(movie: Any, pixels: Any) -> Any:
    """``movie[:, pixels]`` transposed: (n, P) frames x pixels and (p,) int indices -> (p, n) pixels x frames.

    NumPy returns a C-contiguous array built in cache-sized blocks (a compiled kernel), so that its transpose
    (n, p) is F-contiguous and :class:`ResidualOperator` reads it without a copy. Other namespaces return the
    transposed ``take`` (on CuPy a C-contiguous copy).
    """
    xp = get_namespace(movie, pixels)
    count_work(0, 8 * pixels.shape[0] * movie.shape[0])
    if is_numpy(xp) and movie.flags.c_contiguous:
        from nwb_extract.engine import cpu_kernels

        out = np.empty((pixels.shape[0], movie.shape[0]), dtype=movie.dtype)
        return cpu_kernels.gather_transposed(movie, np.asarray(pixels, dtype=np.int64), out)
    gathered = xp.matrix_transpose(xp.take(movie, pixels, axis=1))
    return __import__("cupy").ascontiguousarray(gathered) if is_cupy(xp) else gathered


def gather_pixels(movie: Any, pixels: Any, frames: Any = None) -> Any:
    """``movie[frames][:, pixels]``: (n, P) frames x pixels, (p,) int pixel indices and optionally (f,) int frame
    indices (default: all) -> (f, p). NumPy gathers a C-contiguous movie in a compiled kernel that reads several
    frames side by side (:func:`cpu_kernels.gather_columns`); other namespaces use ``take``."""
    xp = get_namespace(movie, pixels)
    n_out = movie.shape[0] if frames is None else frames.shape[0]
    count_work(0, 8 * pixels.shape[0] * n_out)
    if is_numpy(xp) and movie.flags.c_contiguous:
        from nwb_extract.engine import cpu_kernels

        frames = np.arange(n_out, dtype=np.int64) if frames is None else np.asarray(frames, dtype=np.int64)
        out = np.empty((n_out, pixels.shape[0]), dtype=movie.dtype)
        return cpu_kernels.gather_columns(movie, frames, np.asarray(pixels, dtype=np.int64), out)
    rows = movie if frames is None else xp.take(movie, frames, axis=0)
    return xp.take(rows, pixels, axis=1)


def row_major(x: Any) -> Any:
    """``x`` with its rows contiguous in memory: NumPy returns a C-contiguous array (``x`` itself when it already
    is one); other namespaces do not expose layout and get ``x`` back."""
    xp = get_namespace(x)
    return np.ascontiguousarray(x) if is_numpy(xp) else x


def _single_source_step(a: Any, B: Any, x: Any, kappa: Any, noise_std: float, a_sum: Any, lam: float) -> Any:
    """One reweighted Newton update of the single-source fit (spec §5.5), every column of ``B`` at once, as array
    expressions (NumPy runs :func:`cpu_kernels.single_source_step` instead, inside its compiled iterations).

    a (p,), B (p, m), x (m,), kappa (m,) float32 (noise units), a_sum the float32 sum of ``a``. With threshold
    ``kappa_j noise_std``, the quadratic region of column j is the rows where ``B_ij < a_i x_j + threshold_j``; over
    it ``w_j = sum a_i B_ij``, ``q_j = sum a_i`` and ``d_j = sum a_i^2``, and the new coefficient is
    ``max((w_j + threshold_j (a_sum - q_j - lam)) / d_j, 0)``, or ``x_j`` unchanged where ``d_j = 0`` (no row
    quadratic). Returns (m,) float32.
    """
    xp = get_namespace(a, B, x, kappa)
    threshold = kappa * noise_std
    quadratic = xp.astype(B < a[:, None] * x[None, :] + threshold[None, :], B.dtype)
    profiles = xp.stack([a, a * a], axis=0)
    on_quadratic = profiles @ quadratic
    weighted = (a[None, :] @ (B * quadratic))[0, :]
    numerator = weighted + threshold * (a_sum - on_quadratic[0, :] - lam)
    denominator = on_quadratic[1, :]
    has_quadratic = denominator > 0
    safe = xp.where(has_quadratic, denominator, xp.ones_like(denominator))
    return xp.where(has_quadratic, xp.maximum(numerator / safe, 0.0), x)


def single_source_iterations(a: Any, B: Any, x: Any, kappa: Any, noise_std: float, a_sum: Any, lam: float,
                             first: int, last: int, tol: float) -> tuple[Any, int, bool]:
    """Iterations ``first .. last`` of the single-source fit (spec §5.5) at a fixed kappa, each one reweighted Newton
    update (:func:`_single_source_step`), stopping after the first whose change ``sum |x - x_before|`` is below
    ``tol * sum x_before``. Returns ``(x, last iteration run, whether it stopped on the test)``. NumPy runs them in
    one compiled call over B in C order (:func:`cpu_kernels.single_source_iterations`: the same float operations,
    region sums accumulated in float64 in row order, the change sums in NumPy's order); other namespaces evaluate
    the masked products one update at a time."""
    xp = get_namespace(a, B, x, kappa)
    if is_numpy(xp):
        from nwb_extract.engine import cpu_kernels

        x, done, converged = cpu_kernels.single_source_iterations(
            np.ascontiguousarray(a, dtype=B.dtype), np.ascontiguousarray(B), np.ascontiguousarray(x),
            np.ascontiguousarray(kappa), noise_std, B.dtype.type(a_sum), B.dtype.type(lam), first, last, tol)
        count_work(8 * B.shape[0] * B.shape[1] * (done - first + 1), 4 * B.shape[0] * B.shape[1] * (done - first + 1))
        return x, done, converged
    for it in range(first, last + 1):
        count_work(8 * B.shape[0] * B.shape[1], 4 * B.shape[0] * B.shape[1])
        x_before = x
        x = _single_source_step(a, B, x, kappa, noise_std, a_sum, lam)
        if float(xp.sum(xp.abs(x - x_before))) < tol * float(xp.sum(x_before)):
            return x, it, True
    return x, last, False


def write_pixel_major(Yt: Any, frames: Any, start: int) -> None:
    """``Yt[:, :, start:start + c] = frames`` transposed: a block of c frames (c, h, w) written into the pixel-major
    movie Yt (h, w, n) in place. NumPy (both C-contiguous float32): a compiled blocked transpose, several times
    faster than NumPy's strided copy; other namespaces: slice assignment."""
    xp = get_namespace(Yt, frames)
    c, h, w = frames.shape
    if is_numpy(xp) and Yt.flags.c_contiguous and frames.flags.c_contiguous and frames.dtype == Yt.dtype:
        from nwb_extract.engine import cpu_kernels

        cpu_kernels.frames_into_pixel_major(frames.reshape(c, h * w), Yt.reshape(h * w, Yt.shape[2]), start)
        return
    Yt[:, :, start:start + c] = xp.permute_dims(frames, (1, 2, 0))


def compiled_host(*arrays: Any) -> bool:
    """Whether the compiled NumPy helpers below apply: NumPy arrays, each C-contiguous. Cell finding's single-cell
    fit (:mod:`~nwb_extract.engine.cellfit`) takes them for its per-alternation bookkeeping (a few calls instead of
    dozens of small array operations, most of them holding the GIL); the Array API code beside each call computes
    the same values in every namespace."""
    return all(type(a) is np.ndarray and a.flags.c_contiguous for a in arrays)


def threshold_dilate(image: np.ndarray, level: float, offsets: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``dilate(image > level * max(image), footprint)`` for a float32 (h, w) NumPy image (:func:`compiled_host`):
    bool (h, w); ``offsets`` are the (rows, cols) int64 offsets of the symmetric footprint's pixels from its
    centre (the compiled dilation of :func:`cpu_kernels.dilate_stack`); the threshold is the float32 product."""
    from nwb_extract.engine import cpu_kernels

    seed = image > np.float32(level) * np.max(image)
    out = np.empty((1, *image.shape), dtype=np.bool_)
    return cpu_kernels.dilate_stack(seed[None], offsets[0], offsets[1], out)[0]


def any_outside(inner: np.ndarray, outer: np.ndarray) -> bool:
    """``any(inner & ~outer)`` of two bool NumPy images of one shape (:func:`compiled_host`)."""
    from nwb_extract.engine import cpu_kernels

    return bool(cpu_kernels.any_outside(inner, outer))


def entries_above(values: np.ndarray, threshold: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(nonzero(values > threshold)[0], values there)`` of a 1-D float32 NumPy array (:func:`compiled_host`); the
    threshold is compared in float32."""
    from nwb_extract.engine import cpu_kernels

    return cpu_kernels.entries_above(values, np.float32(threshold))


def scaled_image(values: np.ndarray, pixels: np.ndarray, frame_shape: tuple[int, int],
                 floor: float) -> tuple[np.ndarray, bool]:
    """The (h, w) float32 image holding ``values`` (p,) at the flat row-major ``pixels`` (int64 (p,)), zero
    elsewhere, divided by ``max(max(image), floor)``; and whether it has a non-zero pixel (NumPy,
    :func:`compiled_host`)."""
    from nwb_extract.engine import cpu_kernels

    image, nonzero = cpu_kernels.scaled_image(values, pixels, int(frame_shape[0]), int(frame_shape[1]),
                                              np.float32(floor))
    return image, bool(nonzero)


def relative_change(new: np.ndarray, old: np.ndarray) -> float:
    """``float(sum(|new - old|) / sum(new + old) * 2)`` of float NumPy arrays of one shape and dtype
    (:func:`compiled_host`), the sums in NumPy's pairwise order: the value NumPy's own expression gives."""
    from nwb_extract.engine import cpu_kernels

    return float(cpu_kernels.relative_change(new, old, np.empty(2 * new.size, dtype=new.dtype)))


def subtract_outer(Yt: Any, box: tuple[int, int, int, int], image: Any, trace: Any) -> None:
    """``Yt[r, c, :] -= image[r, c] * trace`` in place inside ``box`` ``(r0, r1, c0, c1)`` (stop exclusive): Yt (h, w, n)
    float32 pixel-major, image (h, w) and trace (n,) float32, the image non-negative and the trace finite (pixels where
    the image is 0 keep their values). NumPy (Yt C-contiguous): one compiled pass over the positive pixels' traces;
    other namespaces: the box's slice expression. The float32 operations are the same."""
    xp = get_namespace(Yt, image, trace)
    h, w, n = Yt.shape
    r0, r1, c0, c1 = box
    if is_numpy(xp) and Yt.flags.c_contiguous:
        from nwb_extract.engine import cpu_kernels

        cpu_kernels.subtract_outer(Yt.reshape(h * w, n), w, r0, r1, c0, c1,
                                   np.ascontiguousarray(image, dtype=np.float32),
                                   np.ascontiguousarray(trace, dtype=np.float32))
        return
    Yt[r0:r1, c0:c1, :] = Yt[r0:r1, c0:c1, :] - image[r0:r1, c0:c1, None] * trace[None, None, :]


def summary_window_means(Yt: Any, peak: Any, box: tuple[int, int, int, int], spread: int) -> Any:
    """Summary values of the pixels of ``box`` (spec §5.2): for each pixel p, the mean over the other pixels q of its
    ``(2 spread + 1)^2`` window, clipped at the frame, of the movie at q in p's peak frame, ``Yt[q, peak[p]]``.

    Yt (h, w, n) float32, pixel-major; peak (h, w) int64; box ``(r0, r1, c0, c1)`` (stop exclusive). Returns float32
    (r1 - r0, c1 - c0). NumPy runs a compiled loop over the box (Yt C-contiguous); other namespaces one gather per
    window offset from the flat movie. Both add in float32 in the same order, so the values are identical.
    """
    xp = get_namespace(Yt, peak)
    h, w, n = Yt.shape
    r0, r1, c0, c1 = box
    if is_numpy(xp) and Yt.flags.c_contiguous:
        from nwb_extract.engine import cpu_kernels

        out = np.empty((r1 - r0, c1 - c0), dtype=np.float32)
        return cpu_kernels.summary_window_means(Yt.reshape(h * w, n), np.ascontiguousarray(peak, dtype=np.int64), w,
                                                r0, r1, c0, c1, spread, out)
    device = Yt.device
    flat = xp.reshape(Yt, (-1,))
    frame = peak[r0:r1, c0:c1]
    rows = xp.arange(r0, r1, dtype=xp.int64, device=device)[:, None]
    cols = xp.arange(c0, c1, dtype=xp.int64, device=device)[None, :]
    total = xp.zeros((r1 - r0, c1 - c0), dtype=xp.float32, device=device)
    count = xp.zeros((r1 - r0, c1 - c0), dtype=xp.float32, device=device)
    zero = xp.zeros((), dtype=xp.float32, device=device)
    for dy in range(-spread, spread + 1):
        r = rows + dy
        row_ok = (r >= 0) & (r < h)
        row_base = xp.clip(r, min=0, max=h - 1) * w
        for dx in range(-spread, spread + 1):
            if dy == 0 and dx == 0:
                continue
            c = cols + dx
            ok = row_ok & (c >= 0) & (c < w)
            index = (row_base + xp.clip(c, min=0, max=w - 1)) * n + frame
            values = xp.reshape(xp.take(flat, xp.reshape(index, (-1,))), index.shape)
            total = total + xp.where(ok, values, zero)
            count = count + xp.astype(ok, xp.float32)
    return total / count


def host_threads() -> int:
    """Worker threads for independent pieces of NumPy work: the CPU cores this process may use, at most
    :data:`MAX_HOST_THREADS`."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_HOST_THREADS))


#: Upper bound of :func:`host_threads` (each thread holds one tile of the movie).
MAX_HOST_THREADS = 4

#: Fewest rows per thread when a solve splits its row blocks over threads (:func:`row_ranges`): below that the
#: per-block overheads cost more than the second core gains.
MIN_THREAD_ROWS = 128

_share = threading.local()  # .threads: the share of the host's threads that the current map item may use
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_blas_lock = threading.Lock()
_blas_depth = 0
_blas_limits: Any = None
_blas_controller: Any = None  # threadpoolctl's view of the BLAS libraries loaded (made on first use)


def available_threads() -> int:
    """Threads the calling code may keep busy with NumPy work: :func:`host_threads` at the top level; inside an item
    of :func:`map_in_threads`, the item's share (the map's threads divided among its lanes, at least 1)."""
    share = getattr(_share, "threads", None)
    return host_threads() if share is None else share


@contextmanager
def single_threaded_blas(xp: Any) -> Iterator[None]:
    """NumPy: BLAS limited to one thread inside the block (restored when the last such block, in any thread, ends);
    other namespaces: no effect.

    :func:`map_in_threads` runs its items under it: idle BLAS threads would spin on the cores the tile threads and
    compiled kernels use (measured on the 2-core CI machine: refinement 1.7x slower with 2 BLAS threads), and the
    items' arithmetic then does not depend on the machine's BLAS thread count. Nested blocks cost nothing.
    """
    global _blas_depth, _blas_limits, _blas_controller
    if not is_numpy(xp):
        yield
        return
    with _blas_lock:
        if _blas_depth == 0:
            if _blas_controller is None:  # finding the loaded BLAS libraries reads /proc: once per process
                # SciPy's BLAS (a library of its own, beside NumPy's) is the one the compiled kernels' products call
                # (Numba's np.dot): loaded first, so that it is found and limited too
                import scipy.linalg.cython_blas  # noqa: F401
                from threadpoolctl import ThreadpoolController

                _blas_controller = ThreadpoolController()
            _blas_limits = _blas_controller.limit(limits=1, user_api="blas")
        _blas_depth += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_depth -= 1
            if _blas_depth == 0:
                _blas_limits.restore_original_limits()
                _blas_limits = None


def _forget_pool_in_child() -> None:
    """After ``fork`` the child has none of the parent's threads: it makes its own pool on first use."""
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def _thread_pool() -> ThreadPoolExecutor:
    """The process's worker threads for :func:`map_in_threads` (made on first use, :data:`MAX_HOST_THREADS`)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=MAX_HOST_THREADS, thread_name_prefix="nwb-extract")
        return _pool


class _Map:
    """One :func:`map_in_threads` call on NumPy: its items not started yet (largest first), their results, how many
    are running, and the first error raised by one. Guarded by :data:`_open_maps_changed`."""

    def __init__(self, func: Callable[[Any], Any], items: list, order: list[int], share: int) -> None:
        self.func, self.items, self.share = func, items, share
        self.todo = deque(order)
        self.results: list = [None] * len(items)
        self.running = 0
        self.error: BaseException | None = None

    def take(self) -> int | None:
        """The next item to run (counted as running), or None when none is left or an item failed."""
        if not self.todo or self.error is not None:
            return None
        self.running += 1
        return self.todo.popleft()

    def run(self, i: int) -> None:
        """Run item ``i`` on this thread with the map's share of the threads; record its result or error."""
        previous = getattr(_share, "threads", None)
        _share.threads = self.share
        try:
            self.results[i] = self.func(self.items[i])
        except BaseException as error:
            with _open_maps_changed:
                if self.error is None:
                    self.error = error
                self.todo.clear()
        finally:
            _share.threads = previous
            with _open_maps_changed:
                self.running -= 1
                _open_maps_changed.notify_all()


_open_maps: list[_Map] = []  # maps with items left, newest (innermost) last: idle lanes take items from them
_open_maps_changed = threading.Condition()


def _lane(own: _Map) -> None:
    """Run items of ``own`` until none is left; then, until the last of them has finished elsewhere, help: run items
    of the newest open map (the innermost work of the other lanes, e.g. the row blocks of the tile fitted last)."""
    while True:
        with _open_maps_changed:
            target, i = own, own.take()
            if i is None:
                if own.running == 0:
                    return
                target = next((m for m in reversed(_open_maps) if m.todo and m.error is None), None)
                if target is None:
                    _open_maps_changed.wait()
                    continue
                i = target.take()
        target.run(i)


def map_in_threads(func: Callable[[Any], Any], items: list, xp: Any, sizes: list[float] | None = None, *,
                   threads: int | None = None) -> list:
    """``[func(item) for item in items]``, results in order.

    NumPy runs the items in lanes on :func:`available_threads` threads (the calling thread is one of them) with
    single-threaded BLAS (the compiled kernels and large NumPy operations release the GIL; each item's arithmetic
    is the same on any thread, so results do not depend on the thread count), the largest of ``sizes`` (work per
    item, any unit) first when there are several lanes. Each item may itself use its lane's share of the threads (:func:`available_threads`):
    one item on two threads splits its own work, two items on two threads do not. A lane that finds no item left
    helps the others with the items of their own maps (e.g. the row blocks of the last tile), so that no core
    idles while one item runs alone. ``threads`` caps the lanes (e.g. by memory; the items then get a larger share, and no other lane takes
    them). Other namespaces run the items
    in turn.
    """
    available = available_threads() if is_numpy(xp) else 1
    lanes = min(available, threads or available, len(items))
    with single_threaded_blas(xp):
        if not is_numpy(xp) or len(items) <= 1:
            return [func(item) for item in items]
        by_size = sizes is not None and lanes > 1  # one lane: in order
        order = sorted(range(len(items)), key=lambda i: -sizes[i]) if by_size else list(range(len(items)))
        job = _Map(func, items, order, max(1, available // lanes))
        helped = threads is None  # a capped map keeps to its lanes: no other lane takes its items
        if helped:
            with _open_maps_changed:
                _open_maps.append(job)
                _open_maps_changed.notify_all()
        try:
            for _ in range(lanes - 1):
                _thread_pool().submit(_lane, job)
            _lane(job)
        finally:
            if helped:
                with _open_maps_changed:
                    _open_maps.remove(job)
        if job.error is not None:
            raise job.error
        return job.results
