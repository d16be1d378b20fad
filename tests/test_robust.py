"""Tests of nwb_extract.engine.robust: contamination model, one-sided Huber solvers (spec §5.5, §6.1–6.5).

Golden data: ``functions.h5`` cases ``kappa_eps``, ``solve_single_source_adaptive`` and the ``fp_solve_*`` cases.
Tolerances follow README §4 of the reference pack: direct computations ``rtol = 1e-5, atol = 1e-5 * max|ref|``
(float32 reference, ~1e-7 relative error); iterative solvers ``atol = 1e-3 * max|ref|`` per array (measured
agreement ~1e-6) and the stopping iteration (loss length) exactly.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import to_xp
from scipy.optimize import minimize

from nwb_extract.engine import backend, robust, solver_kernels
from nwb_extract.engine.robust import (SOLVERS, SolveInfo, eps_func, fp_solve_admm, kappa_of_epsilon, l1_lambda,
                                       one_sided_huber, solve_single_source)

FP_CASES = [
    # (case, solver name, check_every_step)
    ("fp_solve_admm_T", "fp_solve_admm", False),
    ("fp_solve_T", "fp_solve", False),
    ("fp_solve_adaptive_T", "fp_solve_adaptive", False),
    ("fp_solve_adaptive_raw_T", "fp_solve_adaptive_raw", False),
    ("fp_solve_adaptive_baseline_T_check0", "fp_solve_adaptive_baseline", False),
    ("fp_solve_adaptive_baseline_T_check1", "fp_solve_adaptive_baseline", True),
    ("fp_solve_admm_baseline_T_check0", "fp_solve_admm_baseline", False),
    ("fp_solve_admm_baseline_T_check1", "fp_solve_admm_baseline", True),
    ("fp_solve_admm_S", "fp_solve_admm", False),
    ("fp_solve_adaptive_filter_S", "fp_solve_adaptive_filter", False),
]


@pytest.fixture(scope="module")
def functions(reference_dir):
    with h5py.File(reference_dir / "functions.h5", "r") as f:
        yield f


def _solver_inputs(group):
    """X, A, B (r, m), mask, lambda, kappa, n_iter of a golden solver case (B un-transposed when stored F x P)."""
    inputs = group["inputs"]
    B = inputs["B"][...]
    if group.attrs["transpose_B"]:
        B = np.ascontiguousarray(B.T)
    mask = inputs["mask"][...].astype(bool) if "mask" in inputs else None
    return (inputs["X"][...], inputs["A"][...], B, mask, inputs["lambda"][0, :], float(group.attrs["kappa"]),
            int(group.attrs["nIter"]))


# ------------------------------------------------------------------------------------------------------------
# contamination model


@pytest.mark.parametrize("name, v, limits", [("eps_v0_limits", 0.0, True), ("eps_v0_nolimits", 0.0, False),
                                             ("eps_v05_limits", 0.5, True), ("eps_v05_nolimits", 0.5, False)])
def test_eps_func_golden(functions, name, v, limits):
    g = functions["kappa_eps"]
    D, K = g["inputs/D"][...], g["inputs/Kgrid"][...]
    ref = g[f"outputs/{name}"][...]
    out = eps_func(D, K, v, float(g.attrs["alpha"]), step_limits=limits)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_eps_func_step_limits_snap_open_intervals():
    # "step limits" = the reference's apply_limits: values in (0.3,0.5), (0.5,0.7), (0.7,0.9) snap up
    d = np.linspace(0, 1, 21, dtype=np.float32)
    k = np.full(21, 0.7, np.float32)
    no_limits = eps_func(d, k, step_limits=False)
    limited = eps_func(d, k)
    for low, high in ((0.3, 0.5), (0.5, 0.7), (0.7, 0.9)):
        inside = (no_limits > low) & (no_limits < high)
        assert inside.sum() == 2  # this grid has two values in each interval
        np.testing.assert_array_equal(limited[inside], np.float32(high))
    outside = (no_limits <= 0.3) | (no_limits >= 0.9)
    np.testing.assert_array_equal(limited[outside], no_limits[outside])


def test_kappa_of_epsilon_golden(functions):
    g = functions["kappa_eps"]
    for grid, name, dtype in [("eps_grid", "kappa_single", np.float32),
                              ("eps_grid_double", "kappa_double", np.float64)]:
        out = kappa_of_epsilon(g[f"inputs/{grid}"][...])
        ref = g[f"outputs/{name}"][...]
        assert out.dtype == dtype
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    ref = g["outputs/kappa_of_eps_v0"][...]
    out = kappa_of_epsilon(eps_func(g["inputs/D"][...], g["inputs/Kgrid"][...], 0.0, 0.05))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_one_sided_huber_values():
    R = np.array([-3.0, -1.0, -0.5, 0.0, 0.5, 2.0])
    expected = np.where(R >= -1.0, R**2 / 2.0, -R - 0.5)  # kappa = 1: quadratic above -1, linear below
    np.testing.assert_allclose(one_sided_huber(R, 1.0), expected)
    # elementwise kappa, and continuity at the knee R = -kappa
    kappa = np.array([0.5, 2.0])
    np.testing.assert_allclose(one_sided_huber(-kappa, kappa), kappa / 2)


# ------------------------------------------------------------------------------------------------------------
# single source


@pytest.mark.parametrize("output, a_name, B_name, adaptive, kappa", [
    ("x_trace_fixed", "a_footprint", "B_pixels_by_frames", False, 0.7),
    ("x_trace_adaptive", "a_footprint", "B_pixels_by_frames", True, 1.0),  # the reference's adaptive rule starts at 1
    ("x_image_fixed", "a_trace", "B_frames_by_pixels", False, 0.7),
    ("x_image_adaptive", "a_trace", "B_frames_by_pixels", True, 1.0),
])
def test_solve_single_source_golden(functions, output, a_name, B_name, adaptive, kappa):
    g = functions["solve_single_source_adaptive"]
    x = solve_single_source(g[f"inputs/{a_name}"][...], g[f"inputs/{B_name}"][...], float(g.attrs["noise_std"]),
                            kappa, int(g.attrs["max_iter"]), adaptive=adaptive, lam=float(g.attrs["lambda"]))
    ref = g[f"outputs/{output}"][0, :]
    assert x.shape == ref.shape and x.dtype == np.float32
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-3 * np.abs(ref).max())


def _huber_objective(a, b, kappa):
    return lambda x: float(np.sum(one_sided_huber(a * x[0] - b, kappa)))


def test_solve_single_source_reaches_minimiser():
    rng = np.random.default_rng(1)
    a = np.abs(rng.normal(size=40)) + 0.1
    B = np.outer(a, rng.uniform(0.5, 3, size=6)) + 0.2 * rng.normal(size=(40, 6))
    B[rng.random(B.shape) < 0.15] += 4.0
    B[:, 0] = -np.abs(B[:, 0])  # a column whose minimiser sits on the bound x = 0
    sigma, kappa = 0.2, 0.7
    x = solve_single_source(a.astype(np.float32), B.astype(np.float32), sigma, kappa, 200)
    for j in range(B.shape[1]):
        objective = _huber_objective(a, B[:, j], kappa * sigma)
        best = minimize(objective, [1.0], method="L-BFGS-B", bounds=[(0, None)], options=dict(ftol=1e-15, gtol=1e-12))
        # the Newton scheme stops at a relative change of 1e-4; its objective must match the optimum to 1e-5
        assert objective([x[j]]) <= best.fun * (1 + 1e-5) + 1e-9
        assert abs(x[j] - best.x[0]) <= 1e-3 * max(1.0, abs(best.x[0]))
    assert x[0] == 0.0


def test_robust_fit_ignores_positive_outliers():
    rng = np.random.default_rng(2)
    a = np.exp(-np.linspace(-2, 2, 60) ** 2).astype(np.float32)
    x_true = 2.0
    B = (a * x_true + 0.05 * rng.normal(size=60)).astype(np.float32)[:, None]
    B[rng.choice(60, 12, replace=False), 0] += 3.0  # positive contamination (another cell firing)
    robust_x = solve_single_source(a, B, 0.05, 0.7, 50)[0]
    ls_x = float(a @ B[:, 0] / (a @ a))
    assert abs(robust_x - x_true) < 0.05 * x_true
    assert abs(ls_x - x_true) > 0.2 * x_true  # least squares is pulled up by the outliers
    # the many-cell solver behaves the same
    X, _ = fp_solve_admm(np.zeros((1, 1), np.float32), a[None, :], B.T.copy(), 0.7 * 0.05, 300)
    assert abs(X[0, 0] - x_true) < 0.05 * x_true


# ------------------------------------------------------------------------------------------------------------
# many-cell solvers


@pytest.mark.parametrize("case, solver, check_every", FP_CASES, ids=[c[0] for c in FP_CASES])
def test_fp_solvers_golden(functions, case, solver, check_every):
    g = functions[case]
    X, A, B, mask, lam, kappa, n_iter = _solver_inputs(g)
    out, info = SOLVERS[solver](X, A, B, kappa, n_iter, lam=lam, mask=mask, check_every_step=check_every,
                                record_loss=True)
    ref = g["outputs/X2"][...] if "X2" in g["outputs"] else g["outputs/X"][...]
    ref_loss = g["outputs/loss"][0, :]
    assert out.shape == ref.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-3 * np.abs(ref).max())
    assert info.iterations == ref_loss.size  # the stopping iteration, exactly
    assert len(info.loss) == ref_loss.size
    # the loss is a sum of ~1e4 float32 terms: 1e-4 relative (measured ~4e-6)
    np.testing.assert_allclose(info.loss, ref_loss, rtol=1e-4)


def test_fp_solve_admm_reaches_huber_minimiser():
    rng = np.random.default_rng(0)
    r, k, m, kappa = 30, 3, 60, 0.5
    A = np.abs(rng.normal(size=(k, m)))
    B = (np.abs(rng.normal(size=(r, k))) * 2) @ A + 0.3 * rng.normal(size=(r, m))
    outliers = rng.random((r, m)) < 0.1
    B[outliers] += 5 * rng.random(outliers.sum())

    def objective(x):
        R = x.reshape(r, k) @ A - B
        return float(np.sum(one_sided_huber(R, kappa))), ((np.maximum(R, -kappa) / kappa) @ A.T).ravel()

    best = minimize(objective, np.zeros(r * k), jac=True, method="L-BFGS-B", bounds=[(0, None)] * (r * k),
                    options=dict(ftol=1e-15, gtol=1e-12, maxiter=10000))
    X, info = fp_solve_admm(np.zeros((r, k), np.float32), A.astype(np.float32), B.astype(np.float32), kappa, 1000)
    assert info.iterations < 1000  # stopped on the primal/dual criterion
    # float32 iterate of an ADMM stopped at EPS_REL = 1e-3: objective within 1e-6 relative (measured 1e-11),
    # solution within 1e-4 of the largest coefficient (measured 1e-6)
    assert objective(X.astype(np.float64).ravel())[0] <= best.fun * (1 + 1e-6)
    np.testing.assert_allclose(X, best.x.reshape(r, k), rtol=0, atol=1e-4 * np.abs(best.x).max())
    assert X.min() >= 0


def test_fp_solve_admm_check_from_start_stops_a_converged_warm_start_early():
    """python.early_convergence_check: the same stopping test from iteration 1. Warm-started at the solution, the
    reference rule still runs round(N/2) + 1 = 51 iterations; checking from the start stops as soon as the dual
    variable (reset to 0 on entry) has settled (measured: 13), at the same solution (within EPS_REL = 1e-3)."""
    rng = np.random.default_rng(1)
    r, k, m, kappa = 40, 3, 80, 0.5
    A = np.abs(rng.normal(size=(k, m))).astype(np.float32)
    B = ((np.abs(rng.normal(size=(r, k))) * 2) @ A + 0.3 * rng.normal(size=(r, m))).astype(np.float32)
    X_cold, _ = fp_solve_admm(np.zeros((r, k), np.float32), A, B, kappa, 1000)
    X_ref, info_ref = fp_solve_admm(X_cold, A, B, kappa, 100)
    X_early, info_early = fp_solve_admm(X_cold, A, B, kappa, 100, check_from_start=True)
    assert info_ref.iterations == 51
    assert info_early.iterations <= 25
    np.testing.assert_allclose(X_early, X_ref, rtol=0, atol=1e-3 * np.abs(X_ref).max())


def test_solvers_share_one_signature_and_info():
    rng = np.random.default_rng(3)
    X = rng.random((20, 2)).astype(np.float32)
    A = rng.random((2, 15)).astype(np.float32)
    B = (X @ A + 0.01 * rng.normal(size=(20, 15))).astype(np.float32)
    for name, solver in SOLVERS.items():
        out, info = solver(X, A, B, 0.05, 10, lam=None, mask=None, quantile=0.25, check_every_step=False,
                           kappa_iter_nums=(0.5, 0.7, 0.9), record_loss=False)
        assert out.shape == X.shape and out.dtype == np.float32, name
        assert isinstance(info, SolveInfo) and info.loss is None and 1 <= info.iterations <= 10, name


def test_zero_power_cell_gives_finite_solution():
    rng = np.random.default_rng(4)
    A = rng.random((3, 25)).astype(np.float32)
    A[1] = 0.0  # a cell with an all-zero image
    B = rng.random((10, 25)).astype(np.float32)
    for name in ("fp_solve_admm", "fp_solve_adaptive", "fp_solve_adaptive_baseline"):
        out, _ = SOLVERS[name](np.ones((10, 3), np.float32), A, B, 0.1, 20)
        assert np.isfinite(out).all(), name


def test_l1_lambda_matches_definition():
    rng = np.random.default_rng(5)
    S = rng.random((50, 4)).astype(np.float32)
    S[:, 1] = S[:, 0] + 0.1 * rng.random(50)  # two overlapping, spatially correlated cells
    T = rng.random((4, 80)).astype(np.float32)
    T[1] = T[0] + 0.2 * rng.random(80)
    S_smooth = S * 0.5
    out = l1_lambda(S, T, S_smooth, 0.3)
    CS = np.corrcoef(S.T) - np.eye(4)
    CT = np.corrcoef(T) - np.eye(4)
    expected = 0.3 * (CT * (CS > 0.2)).max(axis=0) * S_smooth.sum(axis=0)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert out[0] > 0 and out[1] > 0


# ------------------------------------------------------------------------------------------------------------
# namespaces: same namespace, device and dtype as the input, values as the NumPy run


def _small_problem(seed=6):
    rng = np.random.default_rng(seed)
    A = np.abs(rng.normal(size=(3, 40))).astype(np.float32)
    X = np.abs(rng.normal(size=(25, 3))).astype(np.float32)
    B = (X @ A + 0.2 * rng.normal(size=(25, 40)) + 2.0 * (rng.random((25, 40)) < 0.05)).astype(np.float32)
    mask = rng.random((25, 3)) < 0.8
    return X, A, B, mask


def _check_like(out, xp, device, ref):
    assert backend.get_namespace(out) is backend.get_namespace(to_xp(np.zeros(1, np.float32), xp, device))
    if device is not None:
        assert out.device == device
    assert backend.to_numpy(out).dtype == np.float32
    # float32 rounding through up to 20 iterations on another summation order: 1e-5 of the largest value
    np.testing.assert_allclose(backend.to_numpy(out), ref, rtol=0, atol=1e-5 * max(np.abs(ref).max(), 1e-6))


@pytest.mark.parametrize("name", list(SOLVERS))
def test_solvers_under_namespaces(namespace, name):
    xp, device = namespace
    X, A, B, mask = _small_problem()
    kwargs = dict(mask=mask if name in ("fp_solve_admm", "fp_solve_adaptive_filter") else None,
                  check_every_step=name == "fp_solve_adaptive_baseline", record_loss=True)
    ref, ref_info = SOLVERS[name](X, A, B, 0.3, 20, **kwargs)
    kwargs["mask"] = None if kwargs["mask"] is None else to_xp(mask, xp, device)
    out, info = SOLVERS[name](to_xp(X, xp, device), to_xp(A, xp, device), to_xp(B, xp, device), 0.3, 20, **kwargs)
    _check_like(out, xp, device, ref)
    assert info.iterations == ref_info.iterations


def test_single_source_and_model_under_namespaces(namespace):
    xp, device = namespace
    X, A, B, _ = _small_problem()
    a, Bs = A[0], B.T.copy()
    for adaptive in (False, True):
        ref = solve_single_source(a, Bs, 0.2, 0.7, 10, adaptive=adaptive)
        _check_like(solve_single_source(to_xp(a, xp, device), to_xp(Bs, xp, device), 0.2, 0.7, 10,
                                        adaptive=adaptive), xp, device, ref)
    d, k = np.linspace(0, 1, 12, dtype=np.float32), np.linspace(0.1, 2, 12, dtype=np.float32)
    _check_like(eps_func(to_xp(d, xp, device), to_xp(k, xp, device)), xp, device, eps_func(d, k))
    _check_like(kappa_of_epsilon(to_xp(d, xp, device)), xp, device, kappa_of_epsilon(d))
    S, T = np.abs(B.T), np.abs(B)  # 25 cells on 40 pixels, 40 frames
    _check_like(l1_lambda(to_xp(S, xp, device), to_xp(T, xp, device), to_xp(S, xp, device), 0.5), xp, device,
                l1_lambda(S, T, S, 0.5))


def test_adaptive_estimation_schedule_rounds_half_up():
    # MATLAB round: 10 * [1/2, 2/3, 3/4] -> 5, 7, 8 (7.5 rounds up); Python's round would give 8 -> 8 but 2.5 -> 2
    assert robust._estimation_iterations(100, (0.5, 0.7, 0.9)) == [50, 70, 90]
    assert robust._estimation_iterations(5, (0.5, 0.7, 0.9)) == [3, 4, 5]
    assert robust._estimation_iterations(100, ()) == [50, 70, 90]


@pytest.mark.parametrize("name, check_every_step", [("fp_solve_admm", False), ("fp_solve_admm_baseline", False),
                                                    ("fp_solve_admm_baseline", True)])
@pytest.mark.parametrize("n_iter", [1, 20, 100])
def test_fixed_kappa_row_blocks_give_the_unblocked_iterates(namespace, name, check_every_step, n_iter, monkeypatch):
    """The fixed-kappa solvers run their iterations up to the first convergence test block of rows by block of rows
    (in cache). With blocks of 7 rows (4 blocks of 25 rows, the last partial) every namespace gives the iterates and
    the stopping iteration of the plain loop over all rows (the record_loss path, which never blocks): bitwise in
    NumPy, within float32 rounding elsewhere. n_iter 1 (no test), 20 (cold start: not yet converged at the first
    test, the loop goes on over all rows) and 100 (converged at iteration 51)."""
    xp, device = namespace
    X, A, B, mask = _small_problem()
    kwargs = dict(mask=mask if name == "fp_solve_admm" else None, check_every_step=check_every_step)
    ref, ref_info = SOLVERS[name](X, A, B, 0.3, n_iter, record_loss=True, **kwargs)
    calls = []
    real_row_block = solver_kernels.row_block

    def seven_rows(xp_, rows, columns, itemsize=4):
        calls.append(rows)
        assert real_row_block(xp_, rows, columns) >= min(rows, solver_kernels.MIN_ROW_BLOCK)
        return 7

    monkeypatch.setattr(solver_kernels, "row_block", seven_rows)
    kwargs["mask"] = None if kwargs["mask"] is None else to_xp(mask, xp, device)
    out, info = SOLVERS[name](to_xp(X, xp, device), to_xp(A, xp, device), to_xp(B, xp, device), 0.3, n_iter, **kwargs)
    assert info.iterations == ref_info.iterations
    assert calls == ([] if check_every_step else [25])  # the dynamic lower bound couples rows: no blocks
    if backend.is_numpy(xp):
        np.testing.assert_array_equal(backend.to_numpy(out), ref)
    _check_like(out, xp, device, ref)


def test_row_block_sizes():
    """NumPy: equal blocks of ROW_BLOCK_BYTES of data or a little more, never fewer than MIN_ROW_BLOCK rows (or
    all rows); other namespaces: one block."""
    import array_api_strict

    target = solver_kernels.ROW_BLOCK_BYTES // (1000 * 4)
    step = solver_kernels.row_block(np, 5 * target + 7, 1000)
    assert step == target + 2  # 5 blocks, the last 3 rows shorter
    assert solver_kernels.row_block(np, 2 * target - 1, 1000) == 2 * target - 1
    assert solver_kernels.row_block(np, 100, 1000) == 100
    assert solver_kernels.MIN_ROW_BLOCK <= solver_kernels.row_block(np, 10_000, 10**7) < 2 * solver_kernels.MIN_ROW_BLOCK
    assert solver_kernels.row_block(array_api_strict, 10_000, 1000) == 10_000


def test_row_ranges_share_the_threads(monkeypatch):
    """Row blocks cover the rows in order; NumPy makes their count a multiple of the threads the caller may use
    (at most one thread per MIN_THREAD_ROWS rows), other namespaces one block."""
    import array_api_strict

    monkeypatch.setattr(solver_kernels, "host_threads", lambda: 2)
    target = solver_kernels.ROW_BLOCK_BYTES // (1000 * 4)
    for rows in (1, 255, 256, 3 * target, 5 * target + 7):
        ranges = solver_kernels.row_ranges(np, rows, 1000)
        assert ranges[0][0] == 0 and ranges[-1][1] == rows
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        parallel = rows // solver_kernels.MIN_THREAD_ROWS >= 2
        assert len(ranges) % 2 == 0 if parallel else len(ranges) == 1
    assert len(solver_kernels.row_ranges(np, 3 * target, 1000)) == 4  # 3 cache blocks -> 4 for two threads
    assert solver_kernels.row_ranges(np, 0, 1000) == []
    assert solver_kernels.row_ranges(array_api_strict, 10_000, 1000) == [(0, 10_000)]
    monkeypatch.setattr(solver_kernels, "host_threads", lambda: 1)
    assert len(solver_kernels.row_ranges(np, 3 * target, 1000)) == 3


@pytest.mark.parametrize("rows", [512, 2048, 4096, 24576, 66 * 1024])
def test_row_blocks_avoid_multiples_of_256_rows(rows, monkeypatch):
    """Several blocks are never a multiple of ALIASED_ROWS rows long (the compiled solvers' cache sets collide
    there); they keep covering the rows in order, 16 rows longer than an even split into 1024-row blocks or, where
    that would leave the last one empty, 16 rows shorter (and a few more of them)."""
    monkeypatch.setattr(solver_kernels, "host_threads", lambda: 2)
    columns = solver_kernels.ROW_BLOCK_BYTES // (4 * 1024)  # cache blocks of 1024 rows
    ranges = solver_kernels.row_ranges(np, rows, columns)
    assert ranges[0][0] == 0 and ranges[-1][1] == rows
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [stop - start for start, stop in ranges]
    assert all(size % solver_kernels.ALIASED_ROWS != 0 and size % solver_kernels.ROW_ALIGNMENT == 0
               for size in sizes[:-1])
    even_split = max(2, rows // 1024)  # the count before: kept, by longer blocks, unless they would leave the last empty
    assert len(ranges) == even_split if sizes[0] > rows // even_split else len(ranges) == -(-rows // sizes[0])
    assert sizes[0] == rows // even_split + (16 if len(ranges) == even_split else -16)


@pytest.mark.parametrize("name", ["fp_solve_admm", "fp_solve_admm_baseline", "fp_solve_adaptive",
                                  "fp_solve_adaptive_raw", "fp_solve_adaptive_baseline", "fp_solve_adaptive_filter"])
@pytest.mark.parametrize("n_iter", [3, 20, 100])
def test_compiled_iterations_give_the_python_loop_bitwise(name, n_iter):
    """NumPy runs the ADMM iterations between kappa estimations, convergence tests included, in one compiled call;
    the record_loss path runs them one by one in Python (a NumPy call per operation). Same iterates, same stopping
    iteration, bit for bit (the compiled test sums its norms in NumPy's pairwise order)."""
    X, A, B, mask = _small_problem()
    kwargs = dict(mask=mask if name in ("fp_solve_admm", "fp_solve_adaptive_filter") else None)
    ref, ref_info = SOLVERS[name](X, A, B, 0.3, n_iter, record_loss=True, **kwargs)
    out, info = SOLVERS[name](X, A, B, 0.3, n_iter, **kwargs)
    assert info.iterations == ref_info.iterations
    np.testing.assert_array_equal(out, ref)
