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


def _residual_gram_kernel(per_entry: bool):
    """The kernel of :func:`clipped_residual_gram` for a per-entry kappa (``per_entry``) or a scalar one, compiled
    separately: with a scalar the threshold stays in a register instead of being read per element (about 1.2x
    faster on single-cell columns); the float operations and their order are the same in both."""

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
            for j in range(m):
                e0 = indptr[j]
                e1 = indptr[j + 1]
                data = data_t[j, d0:d1]
                kappa = kappa_t[j if per_entry else 0, d0:d1]
                if e1 - e0 == 1:  # most columns: one pass, no buffer (the same float operations as below)
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
                elif e1 > e0:
                    for i in range(n):
                        residual[i] = 0.0
                    for e in range(e0, e1):
                        a = values[e]
                        x = x_t[cells[e], i0:i1]
                        for i in range(n):
                            residual[i] += a * x[i]
                    for i in range(n):
                        value = residual[i] - data[i] + (kappa[i] if per_entry else kappa_scalar)
                        residual[i] = value if value < 0 else zero
                    for e in range(e0, e1):
                        a = values[e]
                        out = out_t[cells[e], i0:i1]
                        for i in range(n):
                            out[i] += a * residual[i]
        return out_t

    return _jit(kernel)


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
