"""Compiled CPU kernels (Numba) behind the NumPy branches of :mod:`backend` and :mod:`solver_kernels`; no other
module imports this one.

Each kernel is the NumPy implementation of one backend function whose CuPy and generic Array API implementations
live in :mod:`backend`. They compile on first use (about 2 s) and are cached on disk by Numba afterwards. All are
serial and release the GIL (``nogil``), so threads (e.g. Dask's) can run them side by side; none uses
``fastmath``, so float operations happen in the order written and results are reproducible.
"""

from __future__ import annotations

import numba
import numpy as np

#: Pixels per block of :func:`frames_into_pixel_major`.
TRANSPOSE_BLOCK = 64

_jit = numba.njit(cache=True, nogil=True, boundscheck=False)


def _jit_variant(func, name: str):
    """``_jit`` for one variant of a kernel made by a factory (a closure), under a name of its own. Numba names the
    machine code after the Python qualified name, the argument types and a per-process counter: two variants of one
    factory, compiled in separate processes, got the same symbol, and a process that loaded both from the disk cache
    ran the first one's code for both (tests/test_solver_kernels.py)."""
    func.__name__ = func.__qualname__ = name
    return _jit(func)


@_jit
def _same_cells_run(indptr, cells, j, limit):  # pragma: no cover
    """How many columns from column ``j`` on (at most ``limit``, at least 1) hold exactly the cells of column ``j``
    (the same cells in the same order): adjacent pixels of one footprint, adjacent active frames of one event."""
    m = indptr.shape[0] - 1
    e0 = indptr[j]
    count = indptr[j + 1] - e0
    run = 1
    while run < limit and j + run < m and indptr[j + run + 1] - indptr[j + run] == count:
        f = indptr[j + run]
        for e in range(count):
            if cells[f + e] != cells[e0 + e]:
                return run
        run += 1
    return run


def _residual_gram_kernel(per_entry: bool):
    """The kernel of :func:`clipped_residual_gram` for a per-entry kappa (``per_entry``) or a scalar one, compiled
    separately: with a scalar the threshold stays in a register instead of being read per element (about 1.2x
    faster on single-cell columns); the float operations and their order are the same in both.

    With a scalar kappa, adjacent columns of the same one cell run four or two at a time, and of the same two cells
    two at a time: each output element is loaded and stored once per group instead of once per column, its sums
    taken column after column as before (the same float operations in the same order; 1.1-1.9x faster on the
    pipeline movies' T-step tiles). Not with a per-entry kappa: its twice as many streams per group made it slower
    (0.7-0.8x on m2's final regression).
    """

    def kernel(indptr, cells, values, x_t, data_t, kappa_t, kappa_value, out_t, row_start, row_chunk):  # pragma: no cover
        k, r = x_t.shape
        m = data_t.shape[0]
        residual = np.empty(min(r, row_chunk), dtype=x_t.dtype)
        zero = residual.dtype.type(0)
        kappa_scalar = residual.dtype.type(kappa_value)
        for i0 in range(0, r, row_chunk):
            i1 = min(r, i0 + row_chunk)
            n = i1 - i0
            d0 = row_start + i0
            d1 = row_start + i1
            for c in range(k):
                out_t[c, i0:i1] = 0.0
            j = 0
            while j < m:
                e0 = indptr[j]
                e1 = indptr[j + 1]
                run = _same_cells_run(indptr, cells, j, 4) if not per_entry and 1 <= e1 - e0 <= 2 else 1
                if e1 - e0 == 1 and run >= 2:  # a run of one cell: two or four columns per pass over its output
                    group = 4 if run == 4 else 2
                    x = x_t[cells[e0], i0:i1]
                    out = out_t[cells[e0], i0:i1]
                    a0, a1 = values[e0], values[e0 + 1]
                    b0, b1 = data_t[j, d0:d1], data_t[j + 1, d0:d1]
                    k0 = kappa_t[j if per_entry else 0, d0:d1]
                    k1 = kappa_t[j + 1 if per_entry else 0, d0:d1]
                    if group == 4:
                        a2, a3 = values[e0 + 2], values[e0 + 3]
                        b2, b3 = data_t[j + 2, d0:d1], data_t[j + 3, d0:d1]
                        k2 = kappa_t[j + 2 if per_entry else 0, d0:d1]
                        k3 = kappa_t[j + 3 if per_entry else 0, d0:d1]
                        for i in range(n):
                            xi = x[i]
                            value = a0 * xi - b0[i] + (k0[i] if per_entry else kappa_scalar)
                            total = out[i] + a0 * (value if value < 0 else zero)
                            value = a1 * xi - b1[i] + (k1[i] if per_entry else kappa_scalar)
                            total = total + a1 * (value if value < 0 else zero)
                            value = a2 * xi - b2[i] + (k2[i] if per_entry else kappa_scalar)
                            total = total + a2 * (value if value < 0 else zero)
                            value = a3 * xi - b3[i] + (k3[i] if per_entry else kappa_scalar)
                            out[i] = total + a3 * (value if value < 0 else zero)
                    else:
                        for i in range(n):
                            xi = x[i]
                            value = a0 * xi - b0[i] + (k0[i] if per_entry else kappa_scalar)
                            total = out[i] + a0 * (value if value < 0 else zero)
                            value = a1 * xi - b1[i] + (k1[i] if per_entry else kappa_scalar)
                            out[i] = total + a1 * (value if value < 0 else zero)
                    j += group
                    continue
                if e1 - e0 == 2 and run >= 2:  # a run of two cells: two columns per pass over their outputs
                    x = x_t[cells[e0], i0:i1]
                    y = x_t[cells[e0 + 1], i0:i1]
                    out = out_t[cells[e0], i0:i1]
                    out_b = out_t[cells[e0 + 1], i0:i1]
                    a0, c0, a1, c1 = values[e0], values[e0 + 1], values[e0 + 2], values[e0 + 3]
                    b0, b1 = data_t[j, d0:d1], data_t[j + 1, d0:d1]
                    k0 = kappa_t[j if per_entry else 0, d0:d1]
                    k1 = kappa_t[j + 1 if per_entry else 0, d0:d1]
                    for i in range(n):
                        xi = x[i]
                        yi = y[i]
                        value = a0 * xi + c0 * yi - b0[i] + (k0[i] if per_entry else kappa_scalar)
                        value = value if value < 0 else zero
                        total = out[i] + a0 * value
                        total_b = out_b[i] + c0 * value
                        value = a1 * xi + c1 * yi - b1[i] + (k1[i] if per_entry else kappa_scalar)
                        value = value if value < 0 else zero
                        out[i] = total + a1 * value
                        out_b[i] = total_b + c1 * value
                    j += 2
                    continue
                data = data_t[j, d0:d1]
                kappa = kappa_t[j if per_entry else 0, d0:d1]
                j += 1
                if e1 - e0 == 1:  # a column of one cell: one pass, no buffer (the same float operations as below)
                    a = values[e0]
                    x = x_t[cells[e0], i0:i1]
                    out = out_t[cells[e0], i0:i1]
                    for i in range(n):
                        value = a * x[i] - data[i] + (kappa[i] if per_entry else kappa_scalar)
                        out[i] += a * (value if value < 0 else zero)
                elif e1 - e0 == 2:  # overlaps of two cells, fused the same way
                    a = values[e0]
                    b = values[e0 + 1]
                    x = x_t[cells[e0], i0:i1]
                    y = x_t[cells[e0 + 1], i0:i1]
                    out = out_t[cells[e0], i0:i1]
                    out_b = out_t[cells[e0 + 1], i0:i1]
                    for i in range(n):
                        value = a * x[i] + b * y[i] - data[i] + (kappa[i] if per_entry else kappa_scalar)
                        value = value if value < 0 else zero
                        out[i] += a * value
                        out_b[i] += b * value
                elif e1 - e0 == 3:  # three cells (a frame of the S-step's traces), fused the same way
                    a, b, c = values[e0], values[e0 + 1], values[e0 + 2]
                    x, y, z = x_t[cells[e0], i0:i1], x_t[cells[e0 + 1], i0:i1], x_t[cells[e0 + 2], i0:i1]
                    out, out_b = out_t[cells[e0], i0:i1], out_t[cells[e0 + 1], i0:i1]
                    out_c = out_t[cells[e0 + 2], i0:i1]
                    for i in range(n):
                        value = (a * x[i] + b * y[i] + c * z[i] - data[i]
                                 + (kappa[i] if per_entry else kappa_scalar))
                        value = value if value < 0 else zero
                        out[i] += a * value
                        out_b[i] += b * value
                        out_c[i] += c * value
                elif e1 - e0 == 4:  # four cells, fused the same way
                    a, b, c, d = values[e0], values[e0 + 1], values[e0 + 2], values[e0 + 3]
                    x, y = x_t[cells[e0], i0:i1], x_t[cells[e0 + 1], i0:i1]
                    z, w = x_t[cells[e0 + 2], i0:i1], x_t[cells[e0 + 3], i0:i1]
                    out, out_b = out_t[cells[e0], i0:i1], out_t[cells[e0 + 1], i0:i1]
                    out_c, out_d = out_t[cells[e0 + 2], i0:i1], out_t[cells[e0 + 3], i0:i1]
                    for i in range(n):
                        value = (a * x[i] + b * y[i] + c * z[i] + d * w[i] - data[i]
                                 + (kappa[i] if per_entry else kappa_scalar))
                        value = value if value < 0 else zero
                        out[i] += a * value
                        out_b[i] += b * value
                        out_c[i] += c * value
                        out_d[i] += d * value
                elif e1 > e0:  # five cells or more: four fused, the others a pass each, the last with the clip
                    a, b, c, d = values[e0], values[e0 + 1], values[e0 + 2], values[e0 + 3]
                    x, y = x_t[cells[e0], i0:i1], x_t[cells[e0 + 1], i0:i1]
                    z, w = x_t[cells[e0 + 2], i0:i1], x_t[cells[e0 + 3], i0:i1]
                    for i in range(n):
                        residual[i] = a * x[i] + b * y[i] + c * z[i] + d * w[i]
                    for e in range(e0 + 4, e1 - 1):
                        a = values[e]
                        x = x_t[cells[e], i0:i1]
                        for i in range(n):
                            residual[i] += a * x[i]
                    a = values[e1 - 1]
                    x = x_t[cells[e1 - 1], i0:i1]
                    for i in range(n):
                        value = residual[i] + a * x[i] - data[i] + (kappa[i] if per_entry else kappa_scalar)
                        residual[i] = value if value < 0 else zero
                    a, b, c, d = values[e0], values[e0 + 1], values[e0 + 2], values[e0 + 3]
                    out, out_b = out_t[cells[e0], i0:i1], out_t[cells[e0 + 1], i0:i1]
                    out_c, out_d = out_t[cells[e0 + 2], i0:i1], out_t[cells[e0 + 3], i0:i1]
                    for i in range(n):
                        value = residual[i]
                        out[i] += a * value
                        out_b[i] += b * value
                        out_c[i] += c * value
                        out_d[i] += d * value
                    for e in range(e0 + 4, e1):
                        a = values[e]
                        out = out_t[cells[e], i0:i1]
                        for i in range(n):
                            out[i] += a * residual[i]
        return out_t

    return _jit_variant(kernel, f"residual_gram_{'per_entry' if per_entry else 'scalar'}_kappa")


_per_entry_kernel = _residual_gram_kernel(True)
_scalar_kernel = _residual_gram_kernel(False)


def clipped_residual_gram(indptr, cells, values, x_t, data_t, kappa, out_t, row_start, row_chunk):
    """``out_t = (min(X A - B + kappa, 0) A^T)^T`` with A sparse, visiting only A's non-zeros.

    indptr (m + 1,) int64, cells (nnz,) int64, values (nnz,) float32: A (k, m) by columns (CSC): the cells of
    column j are ``cells[indptr[j]:indptr[j + 1]]``. x_t (k, n) = X^T for the n rows ``row_start`` to
    ``row_start + n`` of the problem; data_t (m, r) = B^T, all rows, both C-contiguous float32. kappa: a float (the
    same threshold everywhere) or the per-entry kappa^T (m, r), C-contiguous float32. out_t (k, n) is overwritten.
    Rows are processed ``row_chunk`` at a time (the chunk's slices of X^T and the output stay in cache while B
    streams past). Per entry: ``s = sum_e a_e x_e`` (in CSC order), ``s = min(s - b + kappa, 0)``; then
    ``out[c] += a_c s``. Columns of 1 to 4 cells run in one fused pass (no buffer; the same float operations, in the
    same order, as the general path for more cells). Work is proportional to nnz(A) x r instead of k x m x r.
    """
    if isinstance(kappa, np.ndarray):
        return _per_entry_kernel(indptr, cells, values, x_t, data_t, kappa, 0.0, out_t, row_start, row_chunk)
    # the scalar variant never reads its kappa_t argument (data_t stands in for it, to keep one signature)
    return _scalar_kernel(indptr, cells, values, x_t, data_t, data_t, float(kappa), out_t, row_start, row_chunk)


#: Pixels and frames of the blocks of :func:`gather_transposed` and :func:`gather_columns`. Few frames per block: rows
#: of a movie whose frame is a power of two of bytes wide (a 64 x 64 tile) fall into the same cache sets, so a block
#: of 64 of them evicted itself (measured on the 2-core CI machine: 64 x 8 blocks gather a 800 x 4096 movie
#: transposed in a third of the time of 64 x 64 ones, a 64 x 64 tile of the standard movie in 60 %; 16 x 8 blocks
#: gather active frames 1.3-1.8x faster than 8 whole frames at a time).
TRANSPOSED_GATHER_BLOCK = (64, 8)
COLUMN_GATHER_BLOCK = (16, 8)


@_jit
def gather_transposed(movie, pixels, out):  # pragma: no cover
    """``out[q, t] = movie[t, pixels[q]]``: columns of a C-contiguous (n, P) movie gathered into a C-contiguous
    (p, n) array, in blocks of :data:`TRANSPOSED_GATHER_BLOCK` pixels x frames."""
    n = movie.shape[0]
    p = pixels.shape[0]
    pixel_block, frame_block = TRANSPOSED_GATHER_BLOCK
    for q0 in range(0, p, pixel_block):
        q1 = min(p, q0 + pixel_block)
        for t0 in range(0, n, frame_block):
            t1 = min(n, t0 + frame_block)
            for q in range(q0, q1):
                column = pixels[q]
                for t in range(t0, t1):
                    out[q, t] = movie[t, column]
    return out


@_jit
def gather_columns(movie, frames, pixels, out):  # pragma: no cover
    """``out[i, q] = movie[frames[i], pixels[q]]``: columns of some frames of a C-contiguous (n, P) movie gathered
    into a C-contiguous (f, p) array, in blocks of :data:`COLUMN_GATHER_BLOCK` pixels x frames (several frames'
    reads in flight, each output row written a run at a time)."""
    n = frames.shape[0]
    p = pixels.shape[0]
    pixel_block, frame_block = COLUMN_GATHER_BLOCK
    for t0 in range(0, n, frame_block):
        t1 = min(n, t0 + frame_block)
        for q0 in range(0, p, pixel_block):
            q1 = min(p, q0 + pixel_block)
            for t in range(t0, t1):
                row = frames[t]
                for q in range(q0, q1):
                    out[t, q] = movie[row, pixels[q]]
    return out


@_jit
def frames_into_pixel_major(frames, out, start):  # pragma: no cover
    """``out[p, start + t] = frames[t, p]``: a block of c frames (c, P) C-contiguous written transposed into frames
    ``start .. start + c`` of the pixel-major movie out (P, n), C-contiguous. Blocks of :data:`TRANSPOSE_BLOCK` pixels:
    each frame's slice of the block is read contiguously while the block's rows of ``out`` stay in cache."""
    c, n_pixels = frames.shape
    for p0 in range(0, n_pixels, TRANSPOSE_BLOCK):
        p1 = min(n_pixels, p0 + TRANSPOSE_BLOCK)
        for t in range(c):
            row = frames[t]
            for p in range(p0, p1):
                out[p, start + t] = row[p]
    return out


#: Columns of :func:`quadratic_region_sums` summed at a time (their three float64 sums, coefficients and thresholds:
#: 16 KiB). Measured on the 2-core CI machine (session 5): 1.6x faster on a 300 x 3000 trace fit and 1.8x on 120 x
#: 1500 than all columns at once, the same on 3000 x 300; the values do not depend on it.
REGION_SUM_COLUMNS = 512


@_jit
def quadratic_region_sums(a, data, x, threshold, out):  # pragma: no cover
    """Sums over the quadratic region of the single-source fit, every column at once.

    a (p,) profile, data (p, m) = B C-contiguous, x (m,) coefficients, threshold (m,), all float32; out (3, m)
    float64, overwritten, receives for every column j, over the rows i where ``b_ij < a_i x_j + threshold_j`` (the
    product and sum rounded to float32, as the array expression does): ``sum a_i b_ij``, ``sum a_i`` and
    ``sum a_i^2``, accumulated in float64 in row order (the inner loop runs over columns, so it vectorises).
    Columns go :data:`REGION_SUM_COLUMNS` at a time, so that their sums stay in L1 while every row passes.
    """
    p, m = data.shape
    out[:] = 0.0
    for j0 in range(0, m, REGION_SUM_COLUMNS):
        j1 = min(m, j0 + REGION_SUM_COLUMNS)
        weighted = out[0, j0:j1]
        total = out[1, j0:j1]
        squares = out[2, j0:j1]
        xs = x[j0:j1]
        thresholds = threshold[j0:j1]
        for i in range(p):
            ai = a[i]
            row = data[i, j0:j1]
            for j in range(j1 - j0):
                b = row[j]
                quadratic = b < ai * xs[j] + thresholds[j]
                weighted[j] += ai * b if quadratic else 0.0
                total[j] += ai if quadratic else 0.0
                squares[j] += ai * ai if quadratic else 0.0
    return out


@_jit
def single_source_step(a, data, x, kappa, noise_std, a_sum, lam, sums, out):  # pragma: no cover
    """One update of the single-source fit (see :func:`solver_kernels.single_source_iterations`): thresholds ``kappa_j
    noise_std``, the sums of :func:`quadratic_region_sums` (into ``sums`` (3, m) float64), each rounded to float32,
    and ``out[j] = max(numerator_j / denominator_j, 0)``, or ``x[j]`` where the denominator is 0; float32
    arithmetic in the order of the array expressions (``a_sum``, ``lam``: float32 scalars)."""
    m = x.shape[0]
    threshold = np.empty(m, dtype=x.dtype)
    scale = x.dtype.type(noise_std)
    for j in range(m):
        threshold[j] = kappa[j] * scale
    quadratic_region_sums(a, data, x, threshold, sums)
    zero = x.dtype.type(0)
    for j in range(m):
        weighted = x.dtype.type(sums[0, j])
        on_quadratic = x.dtype.type(sums[1, j])
        denominator = x.dtype.type(sums[2, j])
        if denominator > 0:
            value = (weighted + threshold[j] * ((a_sum - on_quadratic) - lam)) / denominator
            out[j] = value if (value >= zero or value != value) else zero  # NumPy's maximum: NaN propagates
        else:
            out[j] = x[j]
    return out


@_jit
def single_source_iterations(a, data, x, kappa, noise_std, a_sum, lam, first, last, tol):  # pragma: no cover
    """Iterations ``first .. last`` of the single-source fit (see :func:`solver_kernels.single_source_iterations`):
    :func:`single_source_step` each, stopping after the first whose change ``sum |x - x_before|`` is below
    ``tol * sum x_before`` (float32 sums in NumPy's pairwise order, compared in float64 as ``float()`` of them).
    Returns ``(x, last iteration run, whether it stopped on the test)``."""
    m = x.shape[0]
    current = x.copy()
    new = np.empty_like(current)
    change = np.empty_like(current)
    sums = np.empty((3, m), dtype=np.float64)
    for it in range(first, last + 1):
        single_source_step(a, data, current, kappa, noise_std, a_sum, lam, sums, new)
        for j in range(m):
            change[j] = abs(new[j] - current[j])
        moved = float(_pairwise_sum(change, 0, m))
        before = float(_pairwise_sum(current, 0, m))
        current, new = new, current
        if moved < tol * before:
            return current, it, True
    return current, last, False


@_jit
def any_outside(inner, outer):  # pragma: no cover
    """Whether a true pixel of the bool image ``inner`` is false in ``outer`` (same shape)."""
    a = inner.ravel()
    b = outer.ravel()
    for i in range(a.shape[0]):
        if a[i] and not b[i]:
            return True
    return False


@_jit
def entries_above(values, threshold):  # pragma: no cover
    """The positions (int64) and values of the entries of the 1-D ``values`` above ``threshold``, in order."""
    count = 0
    for i in range(values.shape[0]):
        if values[i] > threshold:
            count += 1
    positions = np.empty(count, dtype=np.int64)
    kept = np.empty(count, dtype=values.dtype)
    k = 0
    for i in range(values.shape[0]):
        if values[i] > threshold:
            positions[k] = i
            kept[k] = values[i]
            k += 1
    return positions, kept


@_jit
def scaled_image(values, pixels, h, w, floor):  # pragma: no cover
    """An (h, w) image holding ``values`` at the flat (row-major) ``pixels``, zero elsewhere, divided by
    ``max(max(image), floor)`` (float32 division), and whether a pixel of the result is non-zero."""
    out = np.zeros((h, w), dtype=values.dtype)
    flat = out.ravel()
    for q in range(pixels.shape[0]):
        flat[pixels[q]] = values[q]
    top = np.max(out)
    divisor = floor if top < floor else top  # NumPy's clip: a NaN maximum propagates
    nonzero = False
    for i in range(flat.shape[0]):
        flat[i] = flat[i] / divisor
        if flat[i] != 0:
            nonzero = True
    return out, nonzero


@_jit
def relative_change(new, old, scratch):  # pragma: no cover
    """``sum(|new - old|) / sum(new + old) * 2`` of C-contiguous float arrays of one shape, as NumPy computes it in
    their precision (both sums pairwise, :func:`_pairwise_sum`); ``scratch`` holds ``2 * new.size`` values."""
    a = new.ravel()
    b = old.ravel()
    n = a.shape[0]
    for i in range(n):
        scratch[i] = abs(a[i] - b[i])
        scratch[n + i] = a[i] + b[i]
    return (_pairwise_sum(scratch, 0, n) / _pairwise_sum(scratch, n, n)) * scratch.dtype.type(2.0)


@_jit
def subtract_outer(movie, width, r0, r1, c0, c1, image, trace):  # pragma: no cover
    """``movie[p, :] -= image[p] * trace`` in place for the pixels p of a box whose ``image`` value is positive.

    movie (P, n) pixel-major, C-contiguous float32 (P = h * width, row-major pixels); image (h, width) and trace (n,)
    float32. Each value is ``x - image[p] * trace[t]``, the float32 operations of the Array API implementation;
    pixels with ``image[p] <= 0`` are not visited (there it subtracts zero, which leaves every value as it is).
    """
    n = movie.shape[1]
    for r in range(r0, r1):
        for c in range(c0, c1):
            weight = image[r, c]
            if weight > 0:
                row = movie[r * width + c]
                for t in range(n):
                    row[t] = row[t] - weight * trace[t]
    return movie


@_jit
def summary_window_means(movie, peak, width, r0, r1, c0, c1, spread, out):  # pragma: no cover
    """Summary values of the pixels of a box (spec §5.2): ``out[r - r0, c - c0]`` = mean over the other pixels q of
    the ``(2 spread + 1)^2`` window around (r, c), clipped at the frame, of ``movie[q, peak[r, c]]``.

    movie (P, n) pixel-major, C-contiguous float32 (P = h * width, row-major pixels); peak (h, width) int64; out
    (r1 - r0, c1 - c0) float32, overwritten. Sum and count in float32, in row-major window order (dy, then dx), as
    the Array API implementation adds them (its zeros for outside pixels change nothing).
    """
    h = movie.shape[0] // width
    for r in range(r0, r1):
        for c in range(c0, c1):
            frame = peak[r, c]
            total = np.float32(0.0)
            count = np.float32(0.0)
            for rr in range(max(r - spread, 0), min(r + spread + 1, h)):
                for cc in range(max(c - spread, 0), min(c + spread + 1, width)):
                    if rr != r or cc != c:
                        total += movie[rr * width + cc, frame]
                        count += np.float32(1.0)
            out[r - r0, c - c0] = total / count
    return out


@_jit
def dilate_stack(masks, rows, cols, out):  # pragma: no cover
    """Binary dilation of each image of a bool stack ``masks`` (K, H, W) by the neighbourhood whose true entries lie
    at offsets ``(rows[o], cols[o])`` (int64, from its centre), zero padding: ``out[k]`` (K, H, W) bool, overwritten,
    is true at every ``p + offset`` of a true pixel p (the Minkowski sum, as ``scipy.ndimage.binary_dilation``)."""
    k_count, h, w = masks.shape
    out[...] = False
    for k in range(k_count):
        for r in range(h):
            for c in range(w):
                if masks[k, r, c]:
                    for o in range(rows.shape[0]):
                        rr = r + rows[o]
                        cc = c + cols[o]
                        if rr >= 0 and rr < h and cc >= 0 and cc < w:
                            out[k, rr, cc] = True
    return out


@_jit
def largest_component(image, labels, stack):  # pragma: no cover
    """The largest 8-connected component of a bool image (H, W): components numbered in column-major scan order of
    their first pixel, the first of several largest taken (MATLAB ``bwconncomp`` / ``regionprops`` order).

    labels (H, W) int64 and stack (H * W, 2) int64 are work buffers (overwritten). Returns the component's pixel
    count (0 for an empty image) and its number (1-based); ``labels == number`` is the component.
    """
    h, w = image.shape
    labels[...] = 0
    best_area = 0
    best_label = 0
    count = 0
    for c in range(w):
        for r in range(h):
            if not image[r, c] or labels[r, c] != 0:
                continue
            count += 1
            labels[r, c] = count
            stack[0, 0] = r
            stack[0, 1] = c
            top = 1
            area = 0
            while top > 0:
                top -= 1
                pr = stack[top, 0]
                pc = stack[top, 1]
                area += 1
                for dr in range(-1, 2):
                    for dc in range(-1, 2):
                        rr = pr + dr
                        cc = pc + dc
                        if rr >= 0 and rr < h and cc >= 0 and cc < w and image[rr, cc] and labels[rr, cc] == 0:
                            labels[rr, cc] = count
                            stack[top, 0] = rr
                            stack[top, 1] = cc
                            top += 1
            if area > best_area:
                best_area = area
                best_label = count
    return best_area, best_label


#: Moore neighbourhood (row, col) offsets, clockwise from north: the boundary tracer's search order.
_MOORE_ROWS = np.array([-1, -1, 0, 1, 1, 1, 0, -1], dtype=np.int64)
_MOORE_COLS = np.array([0, 1, 1, 1, 0, -1, -1, -1], dtype=np.int64)


@_jit
def boundary_step_counts(image):  # pragma: no cover
    """Moore-neighbour trace (8-connectivity, clockwise, closed) of the outer boundary of the one component of a
    bool image (H, W) whose border rows and columns are false; starts at its first pixel in column-major order
    (entered from the west) and stops on re-entering the start towards the first step.

    Returns ``(steps, axis_steps, corners)``: boundary steps, those along an axis, and changes of the squared step
    between consecutive steps (cyclically); all 0 for fewer than two steps (a single pixel has none).
    """
    h, w = image.shape
    pixels = 0
    sr = -1
    sc = -1
    for c in range(w):
        for r in range(h):
            if image[r, c]:
                pixels += 1
                if sr < 0:
                    sr = r
                    sc = c
    if pixels <= 1:
        return 0, 0, 0
    # index in the Moore order of each unit offset, (dr + 1) * 3 + (dc + 1)
    index = np.empty(9, dtype=np.int64)
    for d in range(8):
        index[(_MOORE_ROWS[d] + 1) * 3 + _MOORE_COLS[d] + 1] = d
    cr, cc = sr, sc
    backtrack = 6
    first_r = -1
    first_c = -1
    steps = 0
    axis_steps = 0
    corners = 0
    first_dr2 = -1
    first_dc2 = -1
    prev_dr2 = -1
    prev_dc2 = -1
    while True:
        turn = 0
        nr, nc = cr, cc
        for turn in range(8):
            d = (backtrack + 1 + turn) % 8
            nr = cr + _MOORE_ROWS[d]
            nc = cc + _MOORE_COLS[d]
            if image[nr, nc]:
                break
        b = (backtrack + turn) % 8
        backtrack = index[(cr + _MOORE_ROWS[b] - nr + 1) * 3 + (cc + _MOORE_COLS[b] - nc) + 1]
        if first_r < 0:
            first_r = nr
            first_c = nc
        elif cr == sr and cc == sc and nr == first_r and nc == first_c:
            break
        dr2 = (nr - cr) * (nr - cr)
        dc2 = (nc - cc) * (nc - cc)
        if steps == 0:
            first_dr2 = dr2
            first_dc2 = dc2
        elif dr2 != prev_dr2 or dc2 != prev_dc2:
            corners += 1
        if dr2 == 0 or dc2 == 0:
            axis_steps += 1
        prev_dr2 = dr2
        prev_dc2 = dc2
        steps += 1
        cr, cc = nr, nc
    if steps <= 1:
        return 0, 0, 0
    if prev_dr2 != first_dr2 or prev_dc2 != first_dc2:
        corners += 1
    return steps, axis_steps, corners


@_jit
def _admm_update(gq, offset, dr, u, lower, mask, bounded, masked, x_out, z_out, u_out, x_t, z_minus_u):  # pragma: no cover
    """The elementwise part of an ADMM iteration after its two small products: ``x = gq + offset + dr``, ``z =
    max(x + u, lower)`` (with ``bounded``) times ``mask`` (with ``masked``), ``u_out = u + x - z``, in that order;
    (r, k) arrays, ``lower`` (k,). Also writes what the next iteration reads first: ``x_t`` (k, r), x transposed, and
    ``z_minus_u = z - u_out`` (r, k)."""
    r, k = gq.shape
    for i in range(r):
        for j in range(k):
            x = (gq[i, j] + offset[i, j]) + dr[i, j]
            z = x + u[i, j]
            if bounded:  # NumPy's maximum: NaN in either operand propagates
                bound = lower[j]
                z = z if (z >= bound or z != z) else bound
            if masked:
                z = z * mask[i, j]
            u_new = (u[i, j] + x) - z
            x_out[i, j] = x
            z_out[i, j] = z
            u_out[i, j] = u_new
            x_t[j, i] = x
            z_minus_u[i, j] = z - u_new


@_jit
def _block_sum(a, start, n):  # pragma: no cover
    """NumPy's float32 sum of at most 128 elements ``a[start:start + n]``: 8 running sums combined as
    ``((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))``, then the rest one by one (fewer than 8: one by one)."""
    if n < 8:
        total = a.dtype.type(0)
        for i in range(start, start + n):
            total += a[i]
        return total
    s0, s1, s2, s3 = a[start], a[start + 1], a[start + 2], a[start + 3]
    s4, s5, s6, s7 = a[start + 4], a[start + 5], a[start + 6], a[start + 7]
    i = 8
    while i < n - n % 8:
        j = start + i
        s0 += a[j]
        s1 += a[j + 1]
        s2 += a[j + 2]
        s3 += a[j + 3]
        s4 += a[j + 4]
        s5 += a[j + 5]
        s6 += a[j + 6]
        s7 += a[j + 7]
        i += 8
    total = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    while i < n:
        total += a[start + i]
        i += 1
    return total


@_jit
def _pairwise_sum(a, start, n):  # pragma: no cover
    """NumPy's pairwise float32 summation of ``a[start:start + n]`` (a contiguous array, or a C-contiguous one of any
    rank, is summed in one pass of it, without pieces or blocks): ranges of more than 128
    elements split in two halves, the first rounded down to a multiple of 8, each summed the same way
    (:func:`_block_sum` below 129) and added, left + right. Evaluated with an explicit stack (Numba does not cache
    recursive functions). Checked against ``numpy.sum`` for every n up to 8192 and longer arrays
    (tests/test_solver_kernels.py).
    """
    if n <= 128:
        return _block_sum(a, start, n)
    depth = 32
    starts = np.empty(depth, dtype=np.int64)
    counts = np.empty(depth, dtype=np.int64)
    phase = np.zeros(depth, dtype=np.int64)  # 0: left half next, 1: right half next, 2: both summed
    lefts = np.empty(depth, dtype=a.dtype)
    sums = np.empty(depth, dtype=a.dtype)
    top = 0
    starts[0], counts[0], phase[0] = start, n, 0
    while True:
        count = counts[top]
        half = count // 2
        half -= half % 8
        if phase[top] == 2:
            value = lefts[top] + sums[top]
        elif count <= 128:
            value = _block_sum(a, starts[top], count)
        else:  # descend into the next half
            child = top + 1
            starts[child] = starts[top] + (0 if phase[top] == 0 else half)
            counts[child] = half if phase[top] == 0 else count - half
            phase[child] = 0
            top = child
            continue
        if top == 0:
            return value
        top -= 1  # hand the value to the parent
        if phase[top] == 0:
            lefts[top] = value
            phase[top] = 1
        else:
            sums[top] = value
            phase[top] = 2


@_jit
def _frobenius(a, b, scratch):  # pragma: no cover
    """``float(sqrt(sum((a - b)^2)))`` of C-contiguous 2-D float32 arrays (``b`` None: of ``a``), as NumPy computes
    ``xp.sqrt(xp.sum(x * x))`` in float32; ``scratch`` holds ``a.size`` values."""
    flat_a = a.ravel()
    n = flat_a.shape[0]
    if b is None:
        for i in range(n):
            scratch[i] = flat_a[i] * flat_a[i]
    else:
        flat_b = b.ravel()
        for i in range(n):
            d = flat_a[i] - flat_b[i]
            scratch[i] = d * d
    return float(np.sqrt(_pairwise_sum(scratch, 0, n)))


#: Elements NumPy casts at a time (its buffer) when it sums integers as float64: each piece is summed pairwise and
#: the pieces one after the other.
CAST_BUFFER = 8192


@_jit
def _mean_of_ints(values):  # pragma: no cover
    """``numpy.mean`` of a 1-D int64 array: float64 sums of pieces of :data:`CAST_BUFFER` values, then / n."""
    n = values.shape[0]
    piece = np.empty(min(n, CAST_BUFFER), dtype=np.float64)
    total = 0.0
    for start in range(0, n, CAST_BUFFER):
        count = min(CAST_BUFFER, n - start)
        for i in range(count):
            piece[i] = float(values[start + i])
        total += _pairwise_sum(piece, 0, count)
    return total / n


@_jit
def _axis_lengths(rows, cols):  # pragma: no cover
    """MATLAB's major and minor axis lengths of a component from its pixels' int64 coordinates (in
    ``numpy.nonzero`` order): second central moments plus 1/12, as ``var`` and ``mean`` of NumPy compute them."""
    n = rows.shape[0]
    mean_r = _mean_of_ints(rows)
    mean_c = _mean_of_ints(cols)
    squares = np.empty(n, dtype=np.float64)
    for i in range(n):
        d = float(cols[i]) - mean_c
        squares[i] = d * d
    uxx = _pairwise_sum(squares, 0, n) / n + 1.0 / 12.0
    for i in range(n):
        d = float(rows[i]) - mean_r
        squares[i] = d * d
    uyy = _pairwise_sum(squares, 0, n) / n + 1.0 / 12.0
    for i in range(n):
        squares[i] = (float(cols[i]) - mean_c) * (float(rows[i]) - mean_r)
    uxy = _pairwise_sum(squares, 0, n) / n
    common = np.sqrt((uxx - uyy) * (uxx - uyy) + 4.0 * uxy * uxy)
    smaller = uxx + uyy - common
    return (2.0 * np.sqrt(2.0) * np.sqrt(uxx + uyy + common),
            2.0 * np.sqrt(2.0) * np.sqrt(smaller if not 0.0 > smaller else 0.0))


@_jit
def component_shapes(masks, out):  # pragma: no cover
    """Area, perimeter, major and minor axis length of the largest 8-connected component of each image of a bool
    stack (K, H, W) (see :func:`backend.largest_component_shape`) into ``out`` (4, K) float64, left as it is (NaN)
    for an image without a true pixel. Each image is measured inside its bounding box grown by one pixel (clipped),
    the frame in which the axis moments are taken."""
    count, h, w = masks.shape
    for k in range(count):
        r0, r1, c0, c1 = -1, -1, w, -1
        for r in range(h):
            for c in range(w):
                if masks[k, r, c]:
                    if r0 < 0:
                        r0 = r
                    r1 = r
                    c0 = min(c0, c)
                    c1 = max(c1, c)
        if r0 < 0:
            continue
        r0, r1, c0, c1 = max(r0 - 1, 0), min(r1 + 2, h), max(c0 - 1, 0), min(c1 + 2, w)
        image = masks[k, r0:r1, c0:c1]
        labels = np.empty((r1 - r0, c1 - c0), dtype=np.int64)
        area, label = largest_component(image, labels, np.empty((labels.size, 2), dtype=np.int64))
        padded = np.zeros((r1 - r0 + 2, c1 - c0 + 2), dtype=np.bool_)
        rows = np.empty(area, dtype=np.int64)
        cols = np.empty(area, dtype=np.int64)
        i = 0
        for r in range(r1 - r0):
            for c in range(c1 - c0):
                if labels[r, c] == label:
                    padded[r + 1, c + 1] = True
                    rows[i] = r
                    cols[i] = c
                    i += 1
        steps, axis_steps, corners = boundary_step_counts(padded)
        out[0, k] = area
        out[1, k] = 0.980 * axis_steps + 1.406 * (steps - axis_steps) - 0.091 * corners
        out[2, k], out[3, k] = _axis_lengths(rows, cols)
    return out


def _admm_iterations_source(per_entry: bool):
    """:func:`admm_iterations` for a per-entry or a scalar kappa (compiled separately, as the residual kernel)."""

    def iterations(indptr, cells, values, data_t, kappa_t, kappa, row_start, row_chunk, q, rho_q, offset, lower,
                   mask, bounded, masked, x, z, u, first, last, test_after, rho, eps_abs, eps_rel):  # pragma: no cover
        r, k = x.shape
        # every buffer made once (allocations per iteration page-fault and contend between threads): two for X and
        # U (the new one and the one read), three for Z (new, current and previous)
        xs = np.empty((2, r, k), dtype=x.dtype)
        us = np.empty((2, r, k), dtype=x.dtype)
        zs = np.empty((3, r, k), dtype=x.dtype)
        xs[0] = x
        us[0] = u
        zs[0] = z
        xi, ui, zi, zp = 0, 0, 0, 0
        gq = np.empty((r, k), dtype=x.dtype)
        dr = np.empty((r, k), dtype=x.dtype)
        z_minus_u = np.empty((r, k), dtype=x.dtype)
        x_t = np.empty((k, r), dtype=x.dtype)
        out_t = np.empty((k, r), dtype=x.dtype)
        scratch = np.empty(r * k, dtype=x.dtype)
        root_n = np.sqrt(float(r * k))
        done = last
        converged = False
        for i in range(r):  # the first iteration's inputs (the update writes the next one's)
            for c in range(k):
                x_t[c, i] = x[i, c]
                z_minus_u[i, c] = z[i, c] - u[i, c]
        for it in range(first, last + 1):
            u_now = us[ui]
            if per_entry:
                _per_entry_kernel(indptr, cells, values, x_t, data_t, kappa_t, kappa, out_t, row_start, row_chunk)
            else:
                _scalar_kernel(indptr, cells, values, x_t, data_t, kappa_t, kappa, out_t, row_start, row_chunk)
            np.dot(out_t.T, q, gq)
            np.dot(z_minus_u, rho_q, dr)
            xn, un = 1 - xi, 1 - ui
            zn = 3 - zi - zp if zi != zp else (zi + 1) % 3
            _admm_update(gq, offset, dr, u_now, lower, mask, bounded, masked, xs[xn], zs[zn], us[un], x_t, z_minus_u)
            xi, ui, zp, zi = xn, un, zi, zn
            if it > test_after:  # robust._converged, the same float operations
                norm_x = _frobenius(xs[xi], None, scratch)
                norm_z = _frobenius(zs[zi], None, scratch)
                tol_primal = eps_abs * root_n + eps_rel * (norm_z if norm_z > norm_x else norm_x)
                if _frobenius(xs[xi], zs[zi], scratch) < tol_primal:
                    tol_dual = eps_abs * root_n + eps_rel * rho * _frobenius(us[ui], None, scratch)
                    if rho * _frobenius(zs[zi], zs[zp], scratch) < tol_dual:
                        done = it
                        converged = True
                        break
        return xs[xi].copy(), zs[zi].copy(), zs[zp].copy(), us[ui].copy(), done, converged

    return iterations


_ADMM_ITERATION_KERNELS = {per_entry: _jit_variant(_admm_iterations_source(per_entry),
                                                    f"admm_iterations_{'per_entry' if per_entry else 'scalar'}_kappa")
                           for per_entry in (False, True)}


def admm_iterations(indptr, cells, values, data_t, kappa, row_start, row_chunk, q, rho_q, offset, lower, mask, x, z,
                    u, first, last, test_after, rho, eps_abs, eps_rel):
    """ADMM iterations ``first .. last`` on rows ``row_start ..`` of a problem (see
    :meth:`solver_kernels.ResidualOperator.admm_iterations`) without returning to Python: each one
    :func:`clipped_residual_gram` (``kappa`` a float or the per-entry kappa^T), the products by ``q`` and ``rho_q``
    (k, k) through BLAS (NumPy's ``@`` calls the same sgemm: the same values), :func:`_admm_update` and, after
    iteration ``test_after``, the residual test of ``robust._converged`` (norms summed as NumPy sums them).
    Returns C-ordered ``(X, Z, Z_prev, U)``, the last iteration run and whether
    the test passed there."""
    per_entry = isinstance(kappa, np.ndarray)
    kernel = _ADMM_ITERATION_KERNELS[per_entry]
    q, rho_q, offset, lower, mask, x, z, u = _c_order(q, rho_q, offset, lower, mask, x, z, u)
    # the scalar variant never reads its kappa_t argument (data_t stands in for it, as in clipped_residual_gram)
    return kernel(indptr, cells, values, data_t, kappa if per_entry else data_t, 0.0 if per_entry else float(kappa),
                  row_start, row_chunk, q, rho_q, offset, x[0] if lower is None else lower,
                  x if mask is None else mask, lower is not None, mask is not None, x, z, u, first, last, test_after,
                  rho, eps_abs, eps_rel)


def _c_order(*arrays):
    """The arrays (or None) C-contiguous, copied only where they are not: one compiled variant per kernel serves
    every caller, and the values are the same."""
    return tuple(None if a is None else np.ascontiguousarray(a) for a in arrays)
