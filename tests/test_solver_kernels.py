"""Tests of nwb_extract.engine.solver_kernels: the robust solvers' movie-sized kernels (the NumPy compiled kernels
against the direct expressions, in every namespace) and the tile thread map."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import array_api_compat
import numpy as np
import pytest
from conftest import to_xp

from nwb_extract.engine import backend, solver_kernels


@pytest.mark.parametrize("kappa_kind", ["float", "matrix"])
def test_residual_kernel_sums_column_after_column_bitwise(kappa_kind):
    """The NumPy kernel's grouped and fused paths (runs of 1 to 9 adjacent columns of the same one or two cells,
    columns of 3 to 7 cells) give bit for bit its documented float32 sums, taken column after column: per column
    ``s = a_0 x_0 + a_1 x_1 + ...`` in CSC order, ``v = s - b + kappa`` clipped at 0, then ``out_c += a_c v``."""
    rng = np.random.default_rng(11)
    k, r = 7, 45
    columns: list[list[int]] = [[], list(range(k))]  # every output non-zero before the runs: their sums' order shows
    for count in range(3, 8):
        columns += [sorted(rng.choice(k, count, replace=False).tolist())] * 3
    for length in range(1, 10):
        columns += [[length % k]] * length + [[1, 4]] * length + [[length % 3, 5]] * (length % 2)
    m = len(columns)
    A = np.zeros((k, m), dtype=np.float32)
    for j, cells in enumerate(columns):
        A[cells, j] = rng.uniform(0.1, 1.0, len(cells))
    X = rng.standard_normal((r, k), dtype=np.float32)
    B = rng.standard_normal((r, m), dtype=np.float32)
    kappa = 0.3 if kappa_kind == "float" else rng.uniform(0.1, 0.5, (r, m)).astype(np.float32)
    kappa_t = np.full((m, r), np.float32(kappa)) if kappa_kind == "float" else kappa.T
    expected = np.zeros((k, r), dtype=np.float32)
    for j, cells in enumerate(columns):
        if not cells:
            continue
        s = A[cells[0], j] * X[:, cells[0]]
        for c in cells[1:]:
            s = s + A[c, j] * X[:, c]
        v = s - B[:, j] + kappa_t[j]
        v = np.where(v < 0, v, np.float32(0))
        for c in cells:
            expected[c] = expected[c] + A[c, j] * v
    got = solver_kernels.ResidualOperator(A, B).apply(X, kappa)
    np.testing.assert_array_equal(got, expected.T)


@pytest.mark.parametrize("rows", [1, 7, 300])
@pytest.mark.parametrize("kappa_kind", ["float", "matrix", "row"])
@pytest.mark.parametrize("transposed", [False, True])
def test_residual_operator_equals_the_direct_expression(namespace, rows, kappa_kind, transposed, monkeypatch):
    """min(X A - B + kappa, 0) A^T for a sparse A (columns with 0, 1, 2, 3, 4 and 6 cells: every fused path of the
    NumPy kernel and its general one), a scalar or a per-entry kappa, B in C order or as the transposed view the
    tiled steps hand over, with row chunks of the NumPy kernel smaller than, equal to and larger than the data; and
    applied to a block of rows only, the block's rows of the whole (bitwise in NumPy)."""
    xp, device = namespace
    monkeypatch.setattr(solver_kernels, "RESIDUAL_ROW_CHUNK", rows)
    rng = np.random.default_rng(rows)
    X, A = rng.standard_normal((23, 6)), rng.standard_normal((6, 60))
    A[:, :10] = 0.0  # empty columns
    for cells, start in ((1, 10), (2, 20), (3, 30), (4, 40)):
        A[cells:, start:start + 10] = 0.0  # columns 50-59 keep all six cells
    B = rng.standard_normal((23, 60))
    kappa = {"float": 0.3, "matrix": rng.uniform(0.1, 0.5, (23, 60)), "row": rng.uniform(0.1, 0.5, (1, 60))}[kappa_kind]
    expected = np.minimum(X @ A - B + kappa, 0.0) @ A.T
    X_, A_, B_ = (to_xp(a.astype(np.float32), xp, device) for a in (X, A, B))
    if transposed:  # B as the transposed view of a (60, 23) array, as the tiled steps hand over their movie tile
        B_ = xp.matrix_transpose(to_xp(np.ascontiguousarray(B.T, dtype=np.float32), xp, device))
        if isinstance(B_, np.ndarray):
            assert B_.flags.f_contiguous and not B_.flags.c_contiguous
    k = kappa if kappa_kind == "float" else to_xp(kappa.astype(np.float32), xp, device)
    operator = solver_kernels.ResidualOperator(A_, B_)
    for _ in range(2):  # the operator is applied again with the same (cached) kappa
        got = backend.to_numpy(operator.apply(X_, k))
        assert got.shape == (23, 6)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    block = backend.to_numpy(operator.apply(X_[5:17, :], k, rows=(5, 17), cached=True))
    if backend.is_numpy(xp):
        np.testing.assert_array_equal(block, got[5:17, :])
    np.testing.assert_allclose(block, expected[5:17, :], rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("layout", ["C", "F"])
def test_single_source_update_equals_the_masked_products(namespace, layout):
    """The single-source update from the sums over ``B < a x + kappa sigma``, with columns of every kind (all, none,
    some rows in the quadratic region): a column without a quadratic row keeps its coefficient exactly, a negative
    update is clipped to 0."""
    xp, device = namespace
    rng = np.random.default_rng(11)
    a = rng.random(30).astype(np.float32)
    B = rng.standard_normal((30, 17)).astype(np.float32)
    B[:, 3] = 50.0  # no row quadratic: the coefficient is kept
    B[:, 5] = -5.0  # every row quadratic, a negative least-squares value: clipped to 0
    x = rng.random(17).astype(np.float32)
    kappa = rng.uniform(0.0, 2.0, 17).astype(np.float32)
    sigma, lam = 0.3, 0.01
    threshold = kappa.astype(np.float64) * sigma
    quadratic = B < a[:, None] * x[None, :] + threshold[None, :]
    weighted, on_quadratic, denominator = ((a[:, None] * B * quadratic).sum(0), (a[:, None] * quadratic).sum(0),
                                           (a[:, None] ** 2 * quadratic).sum(0))
    with np.errstate(divide="ignore", invalid="ignore"):
        update = np.maximum((weighted + threshold * (a.sum() - on_quadratic - lam)) / denominator, 0.0)
    expected = np.where(denominator > 0, update, x)
    data = B if layout == "C" else np.asfortranarray(B)
    a_, data_, x_, kappa_ = (to_xp(v, xp, device) for v in (a, data, x, kappa))
    got, done, converged = solver_kernels.single_source_iterations(a_, data_, x_, kappa_, sigma, xp.sum(a_), lam,
                                                                   1, 1, 0.0)  # one update, no stop
    assert (done, converged) == (1, False)
    got = backend.to_numpy(got)
    assert got.dtype == np.float32 and got.shape == (17,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert got[3] == x[3] and got[5] == 0.0


def test_gather_pixels_transposed(namespace):
    """(n, P) movie and pixel indices -> (p, n) pixels x frames, blocks of the NumPy kernel crossed."""
    xp, device = namespace
    rng = np.random.default_rng(2)
    movie = rng.standard_normal((150, 300)).astype(np.float32)
    pixels = np.sort(rng.choice(300, size=130, replace=False)).astype(np.int64)
    got = backend.to_numpy(solver_kernels.gather_pixels_transposed(to_xp(movie, xp, device), to_xp(pixels, xp, device)))
    np.testing.assert_array_equal(got, movie[:, pixels].T)
    if xp is array_api_compat.array_namespace(np.empty(0)):
        assert solver_kernels.gather_pixels_transposed(movie, pixels).flags.c_contiguous


@pytest.mark.parametrize("frames", [1, 8, 13])
def test_gather_pixels(namespace, frames):
    """(n, P) movie and pixel indices -> (n, p) frames x pixels, C-contiguous in NumPy: fewer frames than, as many
    as and more than the NumPy kernel reads side by side (not a multiple of them); and of some frames only."""
    xp, device = namespace
    rng = np.random.default_rng(frames)
    movie = rng.standard_normal((frames, 300)).astype(np.float32)
    pixels = np.sort(rng.choice(300, size=130, replace=False)).astype(np.int64)
    got = solver_kernels.gather_pixels(to_xp(movie, xp, device), to_xp(pixels, xp, device))
    np.testing.assert_array_equal(backend.to_numpy(got), movie[:, pixels])
    if backend.is_numpy(xp):
        assert got.flags.c_contiguous
    chosen = np.sort(rng.choice(frames, size=max(1, frames // 2), replace=False)).astype(np.int64)  # some frames
    got = solver_kernels.gather_pixels(to_xp(movie, xp, device), to_xp(pixels, xp, device), to_xp(chosen, xp, device))
    np.testing.assert_array_equal(backend.to_numpy(got), movie[chosen][:, pixels])


def test_write_pixel_major_transposes_a_block_of_frames_in_place(namespace):
    """Blocks of frames written at their frame offsets fill the pixel-major movie; pixel blocks of the NumPy kernel
    crossed (more pixels than one block) and a last block shorter than the others."""
    xp, device = namespace
    movie = np.random.default_rng(4).standard_normal((11, 9, 13)).astype(np.float32)  # 117 pixels
    Yt = xp.zeros((9, 13, 11), dtype=xp.float32, device=device)
    for start in (0, 4, 8):
        solver_kernels.write_pixel_major(Yt, to_xp(movie[start:start + 4], xp, device), start)
    np.testing.assert_array_equal(backend.to_numpy(Yt), movie.transpose(1, 2, 0))


@pytest.mark.parametrize("box", [(0, 9, 0, 11), (3, 7, 2, 6), (8, 9, 10, 11)])
def test_subtract_outer_changes_the_positive_pixels_of_the_box_only(namespace, box):
    """Cell finding's subtraction ``Yt[r, c, :] -= image[r, c] * trace`` inside a box: every namespace gives the
    float32 values of the slice expression bit for bit; pixels outside the box or where the image is 0 keep their
    values (including -0.0), and a zero trace sample leaves its frame as it was."""
    xp, device = namespace
    rng = np.random.default_rng(9)
    h, w, n = 9, 11, 13
    Yt = rng.standard_normal((h, w, n)).astype(np.float32)
    Yt[4, 5, :] = -0.0
    image = np.where(rng.random((h, w)) < 0.6, rng.uniform(0.1, 1.0, (h, w)), 0.0).astype(np.float32)
    image[4, 5] = 0.0
    trace = rng.uniform(0.0, 2.0, n).astype(np.float32)
    trace[3] = 0.0
    r0, r1, c0, c1 = box
    expected = Yt.copy()
    expected[r0:r1, c0:c1, :] = Yt[r0:r1, c0:c1, :] - image[r0:r1, c0:c1, None] * trace[None, None, :]
    assert np.any(expected != Yt)
    got = to_xp(Yt, xp, device)
    solver_kernels.subtract_outer(got, box, to_xp(image, xp, device), to_xp(trace, xp, device))
    got = backend.to_numpy(got)
    np.testing.assert_array_equal(got, expected)
    assert np.array_equal(np.signbit(got), np.signbit(expected))


@pytest.mark.parametrize("box", [(0, 9, 0, 11), (3, 7, 2, 6), (0, 1, 10, 11)])
def test_summary_window_means_are_the_window_mean_at_each_peak_frame(namespace, box):
    """Cell finding's summary values of a box (whole frame, inside, a corner pixel): every namespace gives exactly
    the float32 mean over the clipped window, the pixel itself left out, at the pixel's own peak frame."""
    xp, device = namespace
    rng = np.random.default_rng(8)
    h, w, n, spread = 9, 11, 13, 2
    Yt = rng.standard_normal((h, w, n)).astype(np.float32)
    peak = rng.integers(0, n, (h, w)).astype(np.int64)
    r0, r1, c0, c1 = box
    expected = np.empty((r1 - r0, c1 - c0), np.float32)
    for r in range(r0, r1):
        for c in range(c0, c1):
            window = [Yt[q, p, peak[r, c]] for q in range(max(r - spread, 0), min(r + spread + 1, h))
                      for p in range(max(c - spread, 0), min(c + spread + 1, w)) if (q, p) != (r, c)]
            total = np.float32(0.0)
            for value in window:
                total = np.float32(total + value)
            expected[r - r0, c - c0] = total / np.float32(len(window))
    got = solver_kernels.summary_window_means(to_xp(Yt, xp, device), to_xp(peak, xp, device), box, spread)
    np.testing.assert_array_equal(backend.to_numpy(got), expected)


def test_map_in_threads_keeps_order_and_runs_side_by_side(monkeypatch):
    """Results come back in the order of the items, whatever the thread count; NumPy uses several threads."""
    import threading

    xp = array_api_compat.array_namespace(np.empty(0))
    seen = set()

    def work(i):
        seen.add(threading.get_ident())
        return np.full(3, i)

    for threads in (1, 3):
        monkeypatch.setattr(solver_kernels, "host_threads", lambda threads=threads: threads)
        seen.clear()
        out = solver_kernels.map_in_threads(work, list(range(12)), xp)
        assert [int(o[0]) for o in out] == list(range(12))
        assert len(seen) <= threads


def test_map_in_threads_starts_the_largest_items_first(monkeypatch):
    """With sizes, the items start largest first (one thread: in order, as before) and the results come back in the
    order of the items."""
    import threading
    import time

    xp = array_api_compat.array_namespace(np.empty(0))
    started, lock = [], threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        time.sleep(0.05)  # both threads busy before either takes a third item
        return i * 10

    sizes = [3, 9, 1, 7, 5]
    monkeypatch.setattr(solver_kernels, "host_threads", lambda: 2)
    assert solver_kernels.map_in_threads(work, list(range(5)), xp, sizes) == [0, 10, 20, 30, 40]
    assert sorted(started[:2]) == [1, 3]  # the two largest start first
    assert sorted(started) == [0, 1, 2, 3, 4]
    started.clear()
    monkeypatch.setattr(solver_kernels, "host_threads", lambda: 1)
    assert solver_kernels.map_in_threads(work, list(range(5)), xp, sizes) == [0, 10, 20, 30, 40]
    assert started == [0, 1, 2, 3, 4]


def test_single_threaded_blas_limits_and_restores():
    """Inside the block NumPy's BLAS runs one thread; after it, the machine's setting is back."""
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    xp = array_api_compat.array_namespace(np.empty(0))
    before = blas_threads()
    with solver_kernels.single_threaded_blas(xp):
        assert all(n == 1 for n in blas_threads())
    assert blas_threads() == before


def test_map_in_threads_shares_the_threads_and_idle_lanes_help(monkeypatch):
    """On 2 threads: a single item may use both (its own map then runs two lanes); two items get one each, and the
    lane that finishes its short item runs the other item's inner items, so the inner work spreads over both
    threads. Results come back in order either way."""
    import threading
    import time

    xp = array_api_compat.array_namespace(np.empty(0))
    monkeypatch.setattr(solver_kernels, "host_threads", lambda: 2)
    shares, inner_threads, lock = [], set(), threading.Lock()

    def inner(i):
        with lock:
            inner_threads.add(threading.get_ident())
        time.sleep(0.02)
        return i

    def outer(kind):
        shares.append(solver_kernels.available_threads())
        if kind == "long":
            return solver_kernels.map_in_threads(inner, list(range(12)), xp)
        return "short"

    assert solver_kernels.map_in_threads(outer, ["long"], xp) == [list(range(12))]
    assert shares == [2] and len(inner_threads) == 2
    shares.clear()
    inner_threads.clear()
    assert solver_kernels.map_in_threads(outer, ["long", "short"], xp) == [list(range(12)), "short"]
    assert shares == [1, 1]
    assert len(inner_threads) == 2  # the idle lane helped the long item's inner map


def test_map_in_threads_raises_the_first_error_and_stops(monkeypatch):
    """An item that raises stops the map: items not started are skipped and the error reaches the caller."""
    xp = array_api_compat.array_namespace(np.empty(0))
    monkeypatch.setattr(solver_kernels, "host_threads", lambda: 2)
    ran = []

    def work(i):
        ran.append(i)
        if i == 1:
            raise ValueError("item 1 failed")
        return i

    with pytest.raises(ValueError, match="item 1 failed"):
        solver_kernels.map_in_threads(work, list(range(50)), xp)
    assert len(ran) < 50
    assert solver_kernels.map_in_threads(work, [0, 2], xp) == [0, 2]  # the next map runs normally


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_map_in_threads_works_in_a_forked_child(monkeypatch):
    """A child forked after the pool started still runs maps on two lanes (it makes its own pool)."""
    xp = array_api_compat.array_namespace(np.empty(0))
    monkeypatch.setattr(solver_kernels, "host_threads", lambda: 2)
    assert solver_kernels.map_in_threads(lambda i: i + 1, [1, 2, 3], xp) == [2, 3, 4]  # the parent's pool runs
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 only if the map gives the right answer
        ok = solver_kernels.map_in_threads(lambda i: i * 2, list(range(20)), xp) == [i * 2 for i in range(20)]
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


def test_compiled_pairwise_sum_is_numpys_float32_sum():
    """The compiled convergence test sums its norms as ``numpy.sum`` does a contiguous float32 array (one pairwise
    summation of the whole array): bit for bit for every length up to 8192, for longer arrays, and for 2-D arrays
    in C order (NumPy sums a C-contiguous one as its flat array)."""
    from nwb_extract.engine import cpu_kernels

    rng = np.random.default_rng(17)
    values = (rng.standard_normal(400_000) * 7).astype(np.float32)
    lengths = list(range(1, 8193)) + [int(n) for n in rng.integers(8193, 400_000, 40)]
    for n in lengths:
        part = values[:n] * values[:n]
        assert np.float32(cpu_kernels._pairwise_sum(part, 0, n)) == np.sum(part), n
    for r, k in [(1200, 5), (3000, 131)]:
        x = values[:r * k].reshape(r, k)
        z = values[-r * k:].reshape(r, k)
        scratch = np.empty(r * k, np.float32)
        assert cpu_kernels._frobenius(x, None, scratch) == float(np.sqrt(np.sum(x * x)))
        assert cpu_kernels._frobenius(x, z, scratch) == float(np.sqrt(np.sum((x - z) * (x - z))))


_VARIANTS_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from nwb_extract.engine import cpu_kernels

    rng = np.random.default_rng(3)
    k, m, r = 3, 40, 24
    A = np.where(rng.random((k, m)) < 0.5, rng.uniform(0.2, 1.0, (k, m)), 0.0).astype(np.float32)
    columns, cells = np.nonzero(A.T)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(columns, minlength=m))]).astype(np.int64)
    values = np.ascontiguousarray(A.T[columns, cells])
    data_t = rng.standard_normal((m, r)).astype(np.float32)
    kappa = {"scalar": 0.4, "per_entry": rng.uniform(0.0, 2.0, (m, r)).astype(np.float32)}
    q = np.eye(k, dtype=np.float32) * 0.5
    x = rng.standard_normal((r, k)).astype(np.float32)
    for variant in sys.argv[1].split(","):  # the first compiled call of the process (as in a fresh run)
        X = cpu_kernels.admm_iterations(indptr, cells.astype(np.int64), values, data_t, kappa[variant], 0, 16384, q,
                                        q * 0.1, x, None, None, x, x, np.zeros_like(x), 1, 5, 10, 0.1, 1e-4, 1e-3)[0]
        print(variant, repr(float(np.abs(X).sum())))
""")


def test_kernel_variants_loaded_from_the_cache_keep_their_own_code(tmp_path):
    """The scalar- and per-entry-kappa variants of the compiled kernels, compiled in separate processes and then
    both loaded from Numba's disk cache into one process, each run their own code. Variants made by one factory
    share a Python name; compiled under it, the two got the same machine-code symbol, and in a process that loaded
    both from the cache the second ran the first's kernel (wrong traces)."""
    script = tmp_path / "variants.py"
    script.write_text(_VARIANTS_SCRIPT)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))

    def run(variants: str) -> dict[str, str]:
        done = subprocess.run([sys.executable, str(script), variants], env=env, capture_output=True, text=True,
                              check=True, timeout=600)
        return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in done.stdout.splitlines()}

    alone = {**run("scalar"), **run("per_entry")}  # each compiled (and cached) in a process of its own
    assert alone["scalar"] != alone["per_entry"]
    assert run("scalar,per_entry") == alone  # both loaded from the cache, in either order
    assert run("per_entry,scalar") == alone
