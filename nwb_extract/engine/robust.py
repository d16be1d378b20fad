"""One-sided Huber robust regression: the contamination model, the single-source solver and the many-cell solvers.

This module is the numerical heart of EXTRACT (spec §5.5 and §6.1–6.5). Every solver minimises, over ``X`` in a
constraint set, the one-sided Huber loss of the residual ``R = X A - B``: quadratic where the model exceeds the
data or falls short by less than ``kappa``, linear where the data exceed the model by more than ``kappa`` (positive
contamination by other cells, neuropil or events is down-weighted, negative deviations are not).

Contents
--------
* contamination model: :func:`eps_func`, :func:`kappa_of_epsilon`; the loss :func:`one_sided_huber` (§5.5, §6.1);
* :func:`solve_single_source`: column-wise 1-D robust fits used by cell finding (§5.5);
* the many-cell solvers (§6.2–6.4), all with one call signature
  ``solver(X, A, B, kappa, n_iter, *, lam, mask, quantile, check_every_step, kappa_iter_nums, record_loss)``
  returning ``(X, SolveInfo)``; :data:`SOLVERS` maps their names to them;
* :func:`l1_lambda`: the optional l1 penalty of the T-step (§6.5).

Shapes (spec §6.1): ``X`` (r, k), ``A`` (k, m), ``B`` (r, m). T-step: ``X = T^T`` (frames x cells), ``A = S^T``
(cells x pixels), ``B`` = movie tile (frames x pixels). S-step: ``X`` = images (pixels x cells), ``A`` = traces
(cells x frames), ``B`` = movie tile transposed (pixels x frames). The reference's ``transpose_B`` flag is not
offered: callers pass ``B`` already as (r, m) (``tiled.solve_S`` does the transposition).

Precision: ``X``, ``A``, ``B`` and every (r, m) temporary are float32 (the dtype of ``B``); the k x k Gram matrix,
its eigenvalues and its inverse are computed in float64 and cast back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from nwb_extract.engine.matching import pearson_columns
from nwb_extract.engine.matlab import matlab_round
from nwb_extract.engine import backend, solver_kernels
from nwb_extract.errors import InputError

#: Starting kappa of the adaptive solvers, in units of the noise level they are given (spec §6.4).
ADAPTIVE_KAPPA_START = 0.6361
#: ADMM stopping tolerances (absolute, relative), spec §6.2.
EPS_ABS = 1e-6
EPS_REL = 1e-3
#: First iteration after which ``fp_solve_admm_baseline`` tests convergence (spec §6.3).
BASELINE_CHECK_AFTER = 50
#: Relative change at which :func:`solve_single_source` has converged (spec §5.5).
SINGLE_SOURCE_TOL = 1e-4
#: Fractions of ``max_iter`` at which :func:`solve_single_source` re-estimates kappa (spec §5.5).
SINGLE_SOURCE_KAPPA_FRACTIONS = (1 / 2, 2 / 3, 3 / 4)
#: ``normcdf(0)`` and ``normpdf(0)`` as the reference rounds them when ``v == 0`` (reference quirk §5 item 7).
_CDF_AT_ZERO = 0.5
_PDF_AT_ZERO = 0.3989


@dataclass(frozen=True)
class SolveInfo:
    """How a many-cell solver ran.

    Attributes
    ----------
    iterations : int
        Number of iterations executed (the reference's stopping iteration; for the adaptive solvers, iterations
        skipped by the jump to the next kappa estimation are not counted, as the reference's loss history).
    loss : list of float or None
        Objective after each executed iteration (``len(loss) == iterations``), only with ``record_loss=True``:
        ``sum(one_sided_huber(X A - B, kappa)) + sum(lam * X)`` evaluated at the constrained iterate, in the units
        of the data (the reference's ``loss`` output).
    """

    iterations: int
    loss: list[float] | None = None


# ----------------------------------------------------------------------------------------------------------------
# contamination model and loss (§5.5, §6.1)



def _jump(it: int, stops: list[int]) -> int:
    """After convergence at iteration ``it``: the iteration preceding the next stop (a kappa estimation or the
    limit, the last element of the sorted ``stops``), so that the loop's next step re-estimates kappa. Returns the
    limit when no stop lies ahead."""
    return next((s - 1 for s in stops if s > it), stops[-1])


def eps_func(d: Any, k: Any, v: float = 0.0, alpha: float = 0.05, step_limits: bool = True) -> Any:
    """Contamination fraction epsilon implied by a data statistic (spec §5.5, "Contamination model").

    Parameters
    ----------
    d : array (any shape), float
        Data statistic: the (weighted) fraction of residuals above ``v`` noise levels, in [0, 1].
    k : array (same shape as ``d``), float
        Current kappa (in noise units) of each element.
    v : float
        Threshold of the statistic in noise units. ``v == 0`` uses the reference's rounded constants
        ``normcdf(0) = 0.5`` and ``normpdf(0) = 0.3989``.
    alpha : float
        Slope parameter of the model (0.05 in every reference call of the many-cell solvers).
    step_limits : bool
        Snap epsilon in the open intervals (0.3, 0.5), (0.5, 0.7), (0.7, 0.9) up to 0.5, 0.7, 0.9, sequentially (the
        reference's default ``apply_limits = true``).

    Returns
    -------
    array, dtype of ``d``
        Epsilon clipped to [0.001, 0.99].
    """
    xp = backend.get_namespace(d, k)
    pdf_k = backend.normal_pdf(k)
    cdf_k = backend.normal_cdf(k)
    if v == 0:
        cdf_v, pdf_v = _CDF_AT_ZERO, _PDF_AT_ZERO
    else:
        cdf_v = 0.5 * (1.0 + math.erf(v / math.sqrt(2.0)))
        pdf_v = math.exp(-0.5 * v * v) / math.sqrt(2.0 * math.pi)
    f_k = pdf_k / cdf_k + k
    e0 = 1.0 - 1.0 / (pdf_k / k + cdf_k)
    numerator = 1.0 - (1.0 - e0) * cdf_v - d
    denominator = cdf_v - (alpha * pdf_v) * f_k
    eps = xp.clip(e0 - numerator / denominator, min=0.001, max=0.99)
    if step_limits:
        for low, high in ((0.3, 0.5), (0.5, 0.7), (0.7, 0.9)):
            eps = xp.where((eps > low) & (eps < high), xp.asarray(high, dtype=eps.dtype, device=eps.device), eps)
    return xp.astype(eps, d.dtype)


def kappa_of_epsilon(eps: Any) -> Any:
    """Huber threshold kappa (noise units) that is optimal for contamination fraction ``eps`` (spec §5.5).

    ``kappa = -0.3775 ln(max(eps, 0.001)) - 0.0597 eps + 0.0544``, elementwise; keeps the dtype of ``eps``
    (float32 or float64).
    """
    xp = backend.get_namespace(eps)
    eps = xp.maximum(eps, 0.001)  # a new array: the steps below work in place (movie-sized in _adaptive_kappa)
    kappa = xp.log(eps)
    kappa *= -0.3775
    eps *= 0.0597
    kappa -= eps
    kappa += 0.0544
    return kappa


def one_sided_huber(R: Any, kappa: Any) -> Any:
    """Elementwise one-sided Huber loss of residuals ``R = model - data`` (spec §6.1).

    ``R**2 / (2 kappa)`` where ``R >= -kappa``; ``-R - kappa/2`` where the data exceed the model by more than
    ``kappa``. ``kappa`` is a positive scalar or an array broadcastable to ``R``. Returns an array shaped like ``R``
    (sum it for the objective).
    """
    xp = backend.get_namespace(R)
    y = xp.maximum(R, -kappa)
    return y * (R - 0.5 * y) / kappa


# ----------------------------------------------------------------------------------------------------------------
# single source (§5.5)


def solve_single_source(a: Any, B: Any, noise_std: float, kappa: float, max_iter: int, *, adaptive: bool = False,
                        lam: float = 0.0) -> Any:
    """Column-wise non-negative one-sided Huber regression of ``B`` on one profile ``a`` (spec §5.5).

    For every column j solves ``min_{x_j >= 0} sum_i h(b_ij - a_i x_j)`` with ``h`` the one-sided Huber loss of
    threshold ``kappa_j * noise_std`` (plus ``lam * kappa_j * noise_std * x_j``), by the reference's reweighted
    Newton iteration started from the clipped least-squares solution; stops when the relative change of ``x`` is
    below 1e-4. Used twice per alternation of cell finding: trace fit (``a`` = image on the support, ``B`` = pixels
    x frames) and image fit (``a`` = trace on active frames, ``B`` = frames x pixels).

    Parameters
    ----------
    a : array (p,) or (p, 1), float32
        The fixed profile.
    B : array (p, m), float32
        Data, one regression per column.
    noise_std : float
        Noise level sigma; the Huber threshold is ``kappa * noise_std``.
    kappa : float
        Threshold in noise units (``cellfind_kappa_std_ratio``, 0.7 by default). With ``adaptive=True`` it is the
        starting value of the adaptive rule; the reference's adaptive rule (``cellfind_adaptive_kappa``) starts
        from 1.0, so pass ``kappa=1.0`` to reproduce it.
    max_iter : int
        Iteration limit N (``cellfind_max_iter``).
    adaptive : bool
        Re-estimate a per-column kappa at iterations ``round(N * [1/2, 2/3, 3/4])`` from the fraction of positive
        residuals (weights ``1/(1+a)`` on ``a > 0``) through :func:`eps_func` / :func:`kappa_of_epsilon`. On
        convergence the iteration jumps to the next estimation; it stops when none remains.
    lam : float
        l1 penalty (0 in every reference call).

    Returns
    -------
    array (m,), dtype of ``B``
        The non-negative coefficients. A column whose residuals all lie in the linear region (no quadratic term,
        which the reference turns into inf) keeps its previous value.
    """
    xp, device = backend.get_namespace_and_device(a, B)
    p, m = B.shape
    a = xp.reshape(a, (1, p))
    a2 = a * a
    x = xp.maximum((a @ B)[0, :] / xp.sum(a2), 0.0)
    kappa_vec = xp.full((m,), float(kappa), dtype=B.dtype, device=device)
    estimate_at: set[int] = set()
    if adaptive:
        estimate_at = {matlab_round(max_iter * f) for f in SINGLE_SOURCE_KAPPA_FRACTIONS}
        positive = a > 0
        weights = xp.where(positive, 1.0 / (1.0 + a), xp.zeros_like(a))
        weights = weights / xp.sum(weights)
        alpha = float(0.05 * xp.sum(a) / xp.sum(xp.astype(positive, a.dtype)) * xp.mean(a) / xp.mean(a2))
    stops = sorted(estimate_at | {max_iter})
    # one pass over B sums a, a^2 and a B over the quadratic region; the sum of a over the linear region is the
    # full sum minus that (the denominator stays a direct sum, exactly 0 when no pixel is quadratic)
    a_sum = xp.sum(a)
    profile = a[0, :]
    B = solver_kernels.row_major(B)  # the region sums read B row by row
    it = 0
    while it < max_iter:
        if it + 1 in estimate_at:
            d = (weights @ xp.astype(B > profile[:, None] * x[None, :], B.dtype))[0, :]
            kappa_vec = kappa_of_epsilon(eps_func(d, kappa_vec, 0.0, alpha))
        # the iterations up to the next estimation (or the limit), stopping at the first small change
        last = min([e - 1 for e in estimate_at if e > it + 1] + [max_iter])
        x, it, converged = solver_kernels.single_source_iterations(profile, B, x, kappa_vec, noise_std, a_sum, lam,
                                                                   it + 1, last, SINGLE_SOURCE_TOL)
        if converged:
            it = _jump(it, stops)
            if it >= max_iter - 1:
                break
    return x


# ----------------------------------------------------------------------------------------------------------------
# many-cell solvers (§6.2–6.4)


@dataclass
class _System:
    """Scaled, preconditioned linear algebra shared by the ADMM solvers (spec §6.2), computed once per solve.

    ``A_hat = A / scale`` (rows), ``Q = (A_hat A_hat^T + rho I)^-1``, ``X_ls = B A_hat^T Q`` (r, k),
    ``rho_Q = rho Q``, and ``residual``, the operator ``X -> min(X A_hat - B + kappa, 0) A_hat^T`` (the spec's
    ``... Pm`` is ``residual(X) Q``); float32 except the scalar ``rho``.
    """

    scale: Any
    A_hat: Any
    Q: Any
    rho_Q: Any
    X_ls: Any
    residual: solver_kernels.ResidualOperator
    rho: float


def _scaled_system(A: Any, B: Any, xp: Any, device: Any) -> _System:
    """Row-scale ``A``, clamp the condition number and precompute the fixed-point operators (spec §6.2)."""
    k = A.shape[0]
    scale = xp.clip(xp.sqrt(xp.sum(A * A, axis=1)), min=1e-8)
    A_hat = A / scale[:, None]
    A64 = xp.astype(A_hat, xp.float64)
    gram = A64 @ xp.matrix_transpose(A64)
    eig = xp.linalg.eigvalsh(gram)
    e_min, e_max = float(eig[0]), float(eig[-1])
    e_min = max(e_min, e_max / (k / 3.0))
    # an all-zero A (every cell silent) makes rho 0 and the system singular; any rho > 0 then leaves X unchanged
    rho = math.sqrt(e_min * e_max) if e_max > 0 else 1.0
    eye = xp.eye(k, dtype=xp.float64, device=device)
    Q = xp.astype(xp.linalg.inv(gram + rho * eye), A.dtype)
    X_ls = B @ (xp.matrix_transpose(A_hat) @ Q)
    return _System(scale=scale, A_hat=A_hat, Q=Q, rho_Q=rho * Q, X_ls=X_ls, rho=rho,
                   residual=solver_kernels.ResidualOperator(A_hat, B))


def _frobenius(x: Any, xp: Any) -> float:
    return float(xp.sqrt(xp.sum(x * x)))


def _converged(X: Any, Z: Any, Z_prev: Any, U: Any, rho: float, xp: Any) -> bool:
    """ADMM primal/dual residual test with EPS_ABS / EPS_REL (spec §6.2)."""
    root_n = math.sqrt(X.shape[0] * X.shape[1])
    tol_primal = EPS_ABS * root_n + EPS_REL * max(_frobenius(X, xp), _frobenius(Z, xp))
    tol_dual = EPS_ABS * root_n + EPS_REL * rho * _frobenius(U, xp)
    return _frobenius(X - Z, xp) < tol_primal and rho * _frobenius(Z - Z_prev, xp) < tol_dual


def _masked(Z: Any, mask: Any) -> Any:
    """``Z`` times the support mask (float, converted once per solve by the caller), or ``Z`` without one."""
    return Z if mask is None else Z * mask


def _objective(Z: Any, system: _System, B: Any, kappa: Any, lam_hat: Any, xp: Any) -> float:
    """Loss of the constrained iterate in scaled units (equal to the unscaled objective)."""
    value = xp.sum(one_sided_huber(Z @ system.A_hat - B, kappa)) + xp.sum(Z * lam_hat[None, :])
    return float(value)


def _adaptive_kappa(E: Any, images: Any, pre_kappa: Any, xp: Any) -> tuple[Any, Any]:
    """Elementwise kappa from the residual statistics of each cell's support (spec §6.4).

    Parameters
    ----------
    E : (n_obs, p) float32 data minus model; rows are the independent observations (frames), columns pixels.
    images : (k, p) float32 non-negative cell images in the same pixel order (any per-cell scale).
    pre_kappa : (n_obs, k) float32 per-cell kappa of the previous estimation (noise units).

    Returns
    -------
    kappa : (n_obs, p) float32, absolute thresholds ``sigma * kappa_of_epsilon(eps_pre @ Omega)``.
    pre_kappa : (n_obs, k) float32, ``kappa_of_epsilon(eps_pre)`` for the next estimation.
    """
    if E.shape[1] > 1:
        sigma = backend.median(xp.std(E, axis=1, correction=1))
    else:  # MATLAB's std of a single sample is 0 (not NaN): a one-pixel tile
        sigma = xp.zeros((), dtype=E.dtype, device=E.device)
    maxes = xp.max(images, axis=1, keepdims=True)
    unit = images / xp.where(maxes > 0, maxes, xp.ones_like(maxes))
    support = xp.astype(unit > 0.01, E.dtype)
    support_size = xp.sum(support, axis=1, keepdims=True)
    support_weights = xp.matrix_transpose(support / xp.clip(support_size, min=1.0))
    positive_fraction = xp.astype(E > 0, E.dtype) @ support_weights
    eps_pre = eps_func(positive_fraction, pre_kappa, 0.0, 0.05)
    eps_pre = backend.median_filter(eps_pre, (5, 1), mode="constant")
    mixing = unit + 1e-6
    mixing = mixing / xp.sum(mixing, axis=0, keepdims=True)
    # formed as (p, n_obs) and returned as its transposed view: the residual kernel reads kappa pixel by pixel, so
    # no transposed copy of this movie-sized array is needed (the same k-term sums, so the same values)
    kappa_t = kappa_of_epsilon(xp.matrix_transpose(mixing) @ xp.matrix_transpose(eps_pre))
    kappa_t *= sigma
    return xp.matrix_transpose(kappa_t), kappa_of_epsilon(eps_pre)


def _estimation_iterations(n_iter: int, fractions: tuple[float, ...] | None) -> list[int]:
    fractions = (0.5, 0.7, 0.9) if fractions is None or len(fractions) == 0 else fractions
    return [matlab_round(n_iter * f) for f in fractions]


def _admm(X: Any, A: Any, B: Any, kappa: float, n_iter: int, *, lam: Any, mask: Any,
          make_lower: Callable[[Any], Any], adaptive: str | None, use_decay: bool,
          check_after: int | None, kappa_iter_nums: tuple[float, ...] | None,
          record_loss: bool, rows_independent: bool = False) -> tuple[Any, SolveInfo]:
    """Inexact ADMM with one fixed-point step per iteration (spec §6.2–6.4); the engine of every ADMM solver.

    ``make_lower(X_ls)`` returns the lower bound of the constraint step ``Z = max(X + U, lower)`` (the mask is
    applied afterwards): None, a per-cell (k,) bound or a function of ``X + U`` returning one; it receives the
    scaled ridge solution, from which the baseline solvers take their bound. ``adaptive`` is None
    (fixed ``kappa``), ``"traces"`` (kappa from the cells' images ``A_hat``, §6.4) or ``"images"`` (the S-step
    filter variant, kappa from the current images ``Z``). With fixed kappa, convergence is tested once
    ``it > check_after`` and stops the solve; with adaptive kappa it is tested from iteration 2 on and jumps to the
    next estimation iteration. ``rows_independent``: the projection acts on each row alone, so with fixed kappa
    the iterations up to the first convergence test run block of rows by block of rows (:func:`_row_blocks`).
    """
    xp, device = backend.get_namespace_and_device(X, A, B)
    if X.shape[0] != B.shape[0] or X.shape[1] != A.shape[0] or A.shape[1] != B.shape[1]:
        raise InputError(f"shapes do not chain: X {X.shape}, A {A.shape}, B {B.shape}; need X (r, k), A (k, m), "
                         "B (r, m)")
    dtype = B.dtype
    k = A.shape[0]
    lam = xp.zeros((k,), dtype=dtype, device=device) if lam is None else xp.astype(lam, dtype)
    system = _scaled_system(xp.astype(A, dtype), B, xp, device)
    mask = None if mask is None else xp.astype(mask, dtype)
    lam_hat = lam / system.scale
    X = xp.astype(X, dtype) * system.scale[None, :]
    if adaptive is None:
        kappa_now: Any = float(kappa)
        estimate_at: list[int] = []
    else:
        kappa_now = ADAPTIVE_KAPPA_START * float(kappa)
        estimate_at = _estimation_iterations(n_iter, kappa_iter_nums)
        rows_obs = X.shape[0] if adaptive == "traces" else B.shape[1]
        pre_kappa = xp.full((rows_obs, k), ADAPTIVE_KAPPA_START, dtype=dtype, device=device)
    lower = make_lower(system.X_ls)
    offset = system.X_ls
    if use_decay and adaptive is None:
        offset = offset - float(kappa) * (lam_hat[None, :] @ system.Q)
    Z = X
    U = xp.zeros_like(X)
    stops = sorted(set(estimate_at) | {n_iter})
    loss: list[float] | None = [] if record_loss else None
    it = executed = 0
    if adaptive is None and rows_independent and loss is None and n_iter > 0:
        # no row meets another before the first convergence test: run up to it block by block, in cache
        it = executed = min(check_after + 1, n_iter)
        X, Z, Z_prev, U = _row_blocks(X, Z, U, system, offset, lower, mask, kappa_now, it)
        if it > check_after and _converged(X, Z, Z_prev, U, system.rho, xp):
            return Z / system.scale[None, :], SolveInfo(iterations=executed, loss=loss)
    test_after = check_after if adaptive is None else 1  # adaptive kappa: tested from iteration 2 on
    compiled = loss is None and system.residual.runs_admm_compiled(lower)
    while it < n_iter:
        if it + 1 in estimate_at:
            E = B - X @ system.A_hat
            if adaptive == "traces":
                kappa_now, pre_kappa = _adaptive_kappa(E, system.A_hat, pre_kappa, xp)
            else:
                kappa_t, pre_kappa = _adaptive_kappa(xp.matrix_transpose(E), xp.matrix_transpose(Z), pre_kappa, xp)
                kappa_now = xp.matrix_transpose(kappa_t)
        # the iterations up to the next estimation (or the limit), stopping at the first passed test
        last = min([e - 1 for e in estimate_at if e > it + 1] + [n_iter])
        if compiled:  # NumPy: in one compiled call
            X, Z, Z_prev, U, done, converged = system.residual.admm_iterations(
                system.Q, system.rho_Q, X, Z, U, offset, lower, mask, kappa_now, (0, X.shape[0]), it + 1, last,
                test_after, system.rho, (EPS_ABS, EPS_REL))
        else:
            done, converged = last, False
            for step in range(it + 1, last + 1):
                X, Z_prev, Z, U = _update(system, X, Z, U, kappa_now, offset, mask, lower)
                if loss is not None:
                    loss.append(_objective(Z, system, B, kappa_now, lam_hat, xp))
                if step > test_after and _converged(X, Z, Z_prev, U, system.rho, xp):
                    done, converged = step, True
                    break
        executed += done - it
        it = done
        if converged:
            if adaptive is None:
                break
            it = _jump(it, stops)  # on to the next estimation
            if it >= n_iter - 1:
                break
    return Z / system.scale[None, :], SolveInfo(iterations=executed, loss=loss)


def _update(system: _System, X: Any, Z: Any, U: Any, kappa: Any, offset: Any, mask: Any, lower: Any,
            rows: tuple[int, int] | None = None, cached: bool = False) -> tuple[Any, Any, Any, Any]:
    """One ADMM iteration (spec §6.2): the fixed-point step of X, the constrained iterate Z and the dual U; for
    ``rows`` of the problem only when given (see :meth:`solver_kernels.ResidualOperator.apply`). Returns
    ``(X, Z_prev, Z, U)``."""
    xp = backend.get_namespace(X)
    X = system.residual.apply(X, kappa, rows, cached) @ system.Q + offset + (Z - U) @ system.rho_Q
    Z_new = X + U
    if lower is not None:
        Z_new = xp.maximum(Z_new, lower(Z_new) if callable(lower) else lower)
    Z_new = _masked(Z_new, mask)
    return X, Z, Z_new, U + X - Z_new


def _row_blocks(X: Any, Z: Any, U: Any, system: _System, offset: Any, lower: Any, mask: Any, kappa: float,
                n: int) -> tuple[Any, Any, Any, Any]:
    """``n`` fixed-kappa ADMM iterations (the update of :func:`_admm`), run on blocks of rows.

    Rows of X, Z, U (r, k) are independent until a convergence test, so each block of
    :func:`solver_kernels.row_ranges` runs all ``n`` iterations while its rows of the data stay in cache (NumPy),
    and the blocks run side by side on the threads the solve may use (a tile fitted alone splits its rows over the
    cores); the arithmetic per row is the same as iterating on all rows at once. Returns ``(X, Z, Z_prev, U)``
    after the n-th iteration, ``Z_prev`` the constrained iterate before it.
    """
    xp = backend.get_namespace(X)
    ranges = solver_kernels.row_ranges(xp, X.shape[0], system.A_hat.shape[1])
    if not ranges:  # no rows
        return X, Z, Z, U

    def run(rows: tuple[int, int]) -> tuple[Any, Any, Any, Any]:
        x, z, u = X[rows[0]:rows[1], :], Z[rows[0]:rows[1], :], U[rows[0]:rows[1], :]
        offset_rows = offset[rows[0]:rows[1], :]
        mask_rows = None if mask is None else mask[rows[0]:rows[1], :]
        if system.residual.runs_admm_compiled(lower):  # NumPy: one compiled call
            return system.residual.admm_iterations(system.Q, system.rho_Q, x, z, u, offset_rows, lower, mask_rows,
                                                   kappa, rows, 1, n, n, system.rho, (EPS_ABS, EPS_REL))[:4]
        for i in range(n):
            x, z_prev, z, u = _update(system, x, z, u, kappa, offset_rows, mask_rows, lower, rows, i > 0)
        return x, z, z_prev, u

    blocks = solver_kernels.map_in_threads(run, ranges, xp, [stop - start for start, stop in ranges])
    if len(blocks) == 1:
        return blocks[0]
    x, z, z_prev, u = (xp.concat([block[i] for block in blocks], axis=0) for i in range(4))
    return x, z, z_prev, u


def _nonneg(X_ls: Any) -> Any:
    """Lower bound 0 for every cell (non-negative traces or images)."""
    xp, device = backend.get_namespace_and_device(X_ls)
    return xp.zeros((X_ls.shape[1],), dtype=X_ls.dtype, device=device)


def _unconstrained(X_ls: Any) -> None:
    """No constraint step."""
    return None


def _lower_bound(quantile: float, check_every_step: bool) -> Callable[[Any], Any]:
    """Factory of the per-cell bound ``L = min(0, Hazen quantile over rows)`` (spec §6.3) of the ridge solution
    ``X_ls`` (computed once) or, with ``check_every_step``, of each step's ``X + U`` (a function of it)."""
    def of(V: Any) -> Any:
        xp = backend.get_namespace(V)
        return xp.clip(backend.quantile(V, quantile, axis=0), max=0.0)

    return lambda X_ls: of if check_every_step else of(X_ls)


_PARAMETERS_DOC = """
    Parameters
    ----------
    X : array (r, k), float32
        Warm start.
    A : array (k, m), float32
        Fixed factor (T-step: footprints^T; S-step: thresholded traces).
    B : array (r, m), float32
        Data (T-step: frames x pixels; S-step: pixels x frames).
    kappa : float
        Huber threshold in data units; the adaptive solvers read it as the noise level sigma_0 and start from
        ``0.6361 * sigma_0`` (the pipeline passes ``kappa_std_ratio * sigma``).
    n_iter : int
        Iteration limit.
    lam : array (k,), optional
        l1 penalty per cell (§6.5); zero when None. The adaptive solvers ignore it in the update (reference), but
        it enters the recorded loss.
    mask : bool array (r, k), optional
        Support constraint: the constrained iterate is multiplied by it (S-step).
    quantile : float
        Lower-bound quantile of the baseline solvers (``trace_quantile``); ignored by the others.
    check_every_step : bool
        Baseline solvers: recompute the bound from the current iterate every iteration (``frr_check_every_step``)
        instead of once from the ridge solution; ignored by the others.
    kappa_iter_nums : tuple of float
        Fractions of ``n_iter`` at which the adaptive solvers re-estimate kappa (rounded half up).
    record_loss : bool
        Record the objective after every iteration in ``SolveInfo.loss``.

    Returns
    -------
    X : array (r, k), dtype of ``B``
        The solution (constrained iterate ``Z``, unscaled).
    info : SolveInfo
"""


def _with_parameters(func: Callable) -> Callable:
    func.__doc__ = (func.__doc__ or "") + _PARAMETERS_DOC
    return func


@_with_parameters
def fp_solve_admm(X: Any, A: Any, B: Any, kappa: float, n_iter: int, *, lam: Any = None, mask: Any = None,
                  quantile: float = 0.25, check_every_step: bool = False,
                  kappa_iter_nums: tuple[float, ...] = (0.5, 0.7, 0.9),
                  record_loss: bool = False, check_from_start: bool = False) -> tuple[Any, SolveInfo]:
    """Non-negative robust regression by inexact ADMM, fixed kappa (spec §6.2): T- and S-steps, ``nonneg`` FRR.

    Convergence is tested after ``round(n_iter / 2)`` iterations (the reference), or from the first iteration on
    with ``check_from_start`` (ours, ``python.early_convergence_check``; the same test, so a warm-started solve that
    is already converged stops early).
    """
    return _admm(X, A, B, kappa, n_iter, lam=lam, mask=mask, make_lower=_nonneg, adaptive=None,
                 use_decay=True, check_after=0 if check_from_start else matlab_round(n_iter / 2),
                 kappa_iter_nums=None, record_loss=record_loss, rows_independent=True)


@_with_parameters
def fp_solve_admm_baseline(X: Any, A: Any, B: Any, kappa: float, n_iter: int, *, lam: Any = None, mask: Any = None,
                           quantile: float = 0.25, check_every_step: bool = False,
                           kappa_iter_nums: tuple[float, ...] = (0.5, 0.7, 0.9),
                           record_loss: bool = False) -> tuple[Any, SolveInfo]:
    """ADMM with a per-cell lower bound instead of non-negativity, fixed kappa (spec §6.3): ``baseline_adjusted``
    FRR without adaptive kappa. Convergence is tested from iteration 51 on.
    """
    return _admm(X, A, B, kappa, n_iter, lam=lam, mask=mask, make_lower=_lower_bound(quantile, check_every_step),
                 adaptive=None, use_decay=True, check_after=BASELINE_CHECK_AFTER, kappa_iter_nums=None,
                 record_loss=record_loss, rows_independent=not check_every_step)


@_with_parameters
def fp_solve_adaptive(X: Any, A: Any, B: Any, kappa: float, n_iter: int, *, lam: Any = None, mask: Any = None,
                      quantile: float = 0.25, check_every_step: bool = False,
                      kappa_iter_nums: tuple[float, ...] = (0.5, 0.7, 0.9),
                      record_loss: bool = False) -> tuple[Any, SolveInfo]:
    """Non-negative ADMM with elementwise adaptive kappa (spec §6.4): ``nonneg`` FRR (and the refinement T-step
    with ``adaptive_kappa == 2``).
    """
    return _admm(X, A, B, kappa, n_iter, lam=lam, mask=mask, make_lower=_nonneg, adaptive="traces",
                 use_decay=False,
                 check_after=None, kappa_iter_nums=kappa_iter_nums, record_loss=record_loss)


@_with_parameters
def fp_solve_adaptive_raw(X: Any, A: Any, B: Any, kappa: float, n_iter: int, *, lam: Any = None, mask: Any = None,
                          quantile: float = 0.25, check_every_step: bool = False,
                          kappa_iter_nums: tuple[float, ...] = (0.5, 0.7, 0.9),
                          record_loss: bool = False) -> tuple[Any, SolveInfo]:
    """Unconstrained robust regression with adaptive kappa (spec §6.3–6.4): ``no_constraint`` ("raw") FRR.

    Without a constraint the ADMM reduces to a damped fixed-point iteration (``Z == X``, ``U == 0``).
    """
    return _admm(X, A, B, kappa, n_iter, lam=lam, mask=mask, make_lower=_unconstrained, adaptive="traces",
                 use_decay=False, check_after=None, kappa_iter_nums=kappa_iter_nums, record_loss=record_loss)


@_with_parameters
def fp_solve_adaptive_baseline(X: Any, A: Any, B: Any, kappa: float, n_iter: int, *, lam: Any = None,
                               mask: Any = None, quantile: float = 0.25, check_every_step: bool = False,
                               kappa_iter_nums: tuple[float, ...] = (0.5, 0.7, 0.9),
                               record_loss: bool = False) -> tuple[Any, SolveInfo]:
    """Adaptive kappa with the per-cell lower bound (spec §6.3–6.4): the default ``baseline_adjusted`` FRR."""
    return _admm(X, A, B, kappa, n_iter, lam=lam, mask=mask, make_lower=_lower_bound(quantile, check_every_step),
                 adaptive="traces", use_decay=False,
                 check_after=None, kappa_iter_nums=kappa_iter_nums, record_loss=record_loss)


@_with_parameters
def fp_solve_adaptive_filter(X: Any, A: Any, B: Any, kappa: float, n_iter: int, *, lam: Any = None,
                             mask: Any = None, quantile: float = 0.25, check_every_step: bool = False,
                             kappa_iter_nums: tuple[float, ...] = (0.5, 0.7, 0.9),
                             record_loss: bool = False) -> tuple[Any, SolveInfo]:
    """Non-negative S-step ADMM with adaptive kappa (spec §6.4, ``adaptive_kappa_filter``).

    Rows of the problem are pixels: sigma is the median over frames of the across-pixel std of the residual, and
    the cells' supports come from the current images ``Z`` instead of ``A``.
    """
    return _admm(X, A, B, kappa, n_iter, lam=lam, mask=mask, make_lower=_nonneg, adaptive="images",
                 use_decay=False,
                 check_after=None, kappa_iter_nums=kappa_iter_nums, record_loss=record_loss)


@_with_parameters
def fp_solve(X: Any, A: Any, B: Any, kappa: float, n_iter: int, *, lam: Any = None, mask: Any = None,
             quantile: float = 0.25, check_every_step: bool = False,
             kappa_iter_nums: tuple[float, ...] = (0.5, 0.7, 0.9),
             record_loss: bool = False) -> tuple[Any, SolveInfo]:
    """Plain unconstrained fixed-point iteration, fixed kappa, no scaling and no early stop (spec §6.3):
    ``no_constraint`` FRR without adaptive kappa and ``least_squares``.

    ``X <- min(X A - B + kappa, 0) A^T Q + B A^T Q - lam Q`` with ``Q = (A A^T)^-1``, ``n_iter`` times. ``mask``
    multiplies the iterate when given. Unlike the ADMM solvers, its recorded loss is that of the iterate *entering*
    each iteration (the warm start first), as in the reference.
    """
    xp, device = backend.get_namespace_and_device(X, A, B)
    dtype = B.dtype
    A = xp.astype(A, dtype)
    k = A.shape[0]
    lam = xp.zeros((k,), dtype=dtype, device=device) if lam is None else xp.astype(lam, dtype)
    A64 = xp.astype(A, xp.float64)
    Q = xp.astype(xp.linalg.inv(A64 @ xp.matrix_transpose(A64)), dtype)
    offset = B @ (xp.matrix_transpose(A) @ Q) - lam[None, :] @ Q
    residual = solver_kernels.ResidualOperator(A, B)
    X = xp.astype(X, dtype)
    mask = None if mask is None else xp.astype(mask, dtype)
    loss: list[float] | None = [] if record_loss else None
    for _ in range(n_iter):
        if loss is not None:  # the reference records the objective of the iterate entering each iteration
            loss.append(float(xp.sum(one_sided_huber(X @ A - B, float(kappa))) + xp.sum(X * lam[None, :])))
        X = _masked(residual.apply(X, float(kappa)) @ Q + offset, mask)
    return X, SolveInfo(iterations=n_iter, loss=loss)


#: The many-cell solvers by reference name (config / tiled-step ``solver=`` argument).
SOLVERS: dict[str, Callable[..., tuple[Any, SolveInfo]]] = {
    "fp_solve": fp_solve,
    "fp_solve_admm": fp_solve_admm,
    "fp_solve_adaptive": fp_solve_adaptive,
    "fp_solve_adaptive_raw": fp_solve_adaptive_raw,
    "fp_solve_admm_baseline": fp_solve_admm_baseline,
    "fp_solve_adaptive_baseline": fp_solve_adaptive_baseline,
    "fp_solve_adaptive_filter": fp_solve_adaptive_filter,
}


# ----------------------------------------------------------------------------------------------------------------
# l1 penalty (§6.5)


def l1_lambda(S: Any, T: Any, S_smooth: Any, factor: float) -> Any:
    """Per-cell l1 penalty of the T-step (spec §6.5, ``l1_penalty_factor``).

    ``lambda_k = factor * max_j C[j, k] * sum_p S_smooth[p, k]`` with ``C = CT * (CS > 0.2)``, ``CS`` the Pearson
    correlation of the images and ``CT`` that of the traces, both with the diagonal removed.

    Parameters
    ----------
    S : array (P, K), float32 — images.  T : array (K, n), float32 — traces.
    S_smooth : array (P, K), float32 — smoothed images.  factor : float — ``l1_penalty_factor``.

    Returns
    -------
    array (K,), float32
    """
    xp, device = backend.get_namespace_and_device(S, T, S_smooth)
    K = S.shape[1]
    eye = xp.eye(K, dtype=S.dtype, device=device)
    corr_s = pearson_columns(S, xp=xp) - eye
    corr_t = pearson_columns(xp.matrix_transpose(T), xp=xp) - eye
    coupling = corr_t * xp.astype(corr_s > 0.2, S.dtype)
    return factor * xp.max(coupling, axis=0) * xp.sum(S_smooth, axis=0)
