"""Final robust regression (FRR, spec §8): the three trace kinds from one movie and one set of footprints.

Every run computes all three kinds of the architecture.md trace table from the same preprocessed movie and the
same footprints (the reference computes only the one named by ``trace_output_option``):

=====================  ==============================================================================
``baseline_adjusted``  ``solve_T_robust`` with a per-cell lower bound at the ridge-LS trace's quantile
                       (``fp_solve_adaptive_baseline``, or ``fp_solve_admm_baseline`` without adaptive
                       kappa), then each trace shifted to minimum 0
``nonneg``             ``solve_T`` with ``fp_solve_adaptive`` (or ``fp_solve_admm``): constrained >= 0
``raw``                ``solve_T`` with ``fp_solve_adaptive_raw`` (or ``fp_solve``): unconstrained
=====================  ==============================================================================

plus ``least_squares`` / ``nonnegative_least_squares`` when that option is chosen. Shapes follow the spec:
``S`` (P, K), ``T`` (K, n), ``Mt`` (n, P).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

from nwb_extract.config import TRACE_KINDS, TRACE_OPTION_TO_KIND
from nwb_extract.engine import backend, solver_kernels
from nwb_extract.engine.tiled import solve_T, solve_T_robust
from nwb_extract.progress import SILENT, Reporter


@dataclass(frozen=True)
class RegressionSettings:
    """Settings of the final regression (EXTRACT config names; spec §8.2, §6.3, §6.8).

    ``kappa`` is ``kappa_std_ratio * noise_std``; the adaptive solvers read it as their initial noise level.
    ``progress`` receives the ``frr`` stage's events (one per trace kind).
    """

    kappa: float
    kappa_std_ratio: float
    adaptive_kappa: int
    n_iter: int
    radius: float
    frame_shape: tuple[int, int]
    trace_quantile: float = 0.25
    frr_check_every_step: bool = False
    frr_edge_case_flag: bool = False
    kappa_iter_nums: tuple[float, ...] = (0.5, 0.7, 0.9)
    max_iter: int = 0
    tiling: str = "deterministic"
    progress: Reporter = field(default=SILENT, compare=False, repr=False)

    @classmethod
    def from_config(cls, cfg: Any, *, kappa: float, radius: float, frame_shape: tuple[int, int],
                    progress: Reporter = SILENT) -> RegressionSettings:
        """The settings of a resolved :class:`~nwb_extract.config.ExtractConfig` for one partition's noise level
        ``kappa``, refined ``radius`` (px) and ``frame_shape``. ``max_iter`` stays 0: ``nonnegative_least_squares``
        is re-solved also after refinement (docs/decisions.md)."""
        kappa_iter_nums = (0.5, 0.7, 0.9) if cfg.kappa_iter_nums is None else tuple(cfg.kappa_iter_nums)
        return cls(kappa=kappa, kappa_std_ratio=cfg.kappa_std_ratio, adaptive_kappa=cfg.adaptive_kappa,
                   n_iter=cfg.max_iter_T_final, radius=radius, frame_shape=frame_shape,
                   trace_quantile=cfg.trace_quantile, frr_check_every_step=bool(cfg.frr_check_every_step),
                   frr_edge_case_flag=bool(cfg.frr_edge_case_flag), kappa_iter_nums=kappa_iter_nums,
                   tiling=cfg.python.tiling, progress=progress)


def _solve_kwargs(s: RegressionSettings) -> dict[str, Any]:
    return dict(frame_shape=s.frame_shape, radius=s.radius, tiling=s.tiling, kappa_iter_nums=s.kappa_iter_nums)


def baseline_adjusted(Mt: Any, S: Any, T: Any, s: RegressionSettings, lam: Any = None) -> Any:
    """``baseline_adjusted`` traces (K, n): robust fit with the quantile lower bound, then min 0 per trace."""
    xp = backend.get_namespace(Mt)
    solver = "fp_solve_adaptive_baseline" if s.adaptive_kappa > 0 else "fp_solve_admm_baseline"
    out = solve_T_robust(T, S, Mt, s.kappa, s.n_iter, solver=solver, lam=lam, quantile=s.trace_quantile,
                         check_every_step=s.frr_check_every_step, edge_case_flag=s.frr_edge_case_flag,
                         **_solve_kwargs(s))
    return out - xp.min(out, axis=1, keepdims=True)


def nonneg(Mt: Any, S: Any, T: Any, s: RegressionSettings, lam: Any = None) -> Any:
    """``nonneg`` traces (K, n): robust fit constrained to be >= 0."""
    solver = "fp_solve_adaptive" if s.adaptive_kappa > 0 else "fp_solve_admm"
    return solve_T(T, S, Mt, s.kappa, s.n_iter, solver=solver, lam=lam, **_solve_kwargs(s))


def raw(Mt: Any, S: Any, T: Any, s: RegressionSettings, lam: Any = None) -> Any:
    """``raw`` (``no_constraint``) traces (K, n): unconstrained robust fit (may be negative)."""
    solver = "fp_solve_adaptive_raw" if s.adaptive_kappa > 0 else "fp_solve"
    return solve_T(T, S, Mt, s.kappa, s.n_iter, solver=solver, lam=lam, **_solve_kwargs(s))


def least_squares(Mt: Any, S: Any, T: Any, s: RegressionSettings, lam: Any = None) -> Any:
    """``least_squares`` traces (K, n): ``fp_solve`` with kappa = 100 sigma (effectively ordinary LS)."""
    kappa = s.kappa * 100.0 / s.kappa_std_ratio
    return solve_T(T, S, Mt, kappa, s.n_iter, solver="fp_solve", lam=lam, **_solve_kwargs(s))


def nonnegative_least_squares(Mt: Any, S: Any, T: Any, s: RegressionSettings, lam: Any = None) -> Any:
    """``nonnegative_least_squares`` traces (K, n): ADMM with kappa = 100 sigma when ``max_iter == 0``; otherwise
    the refinement traces are kept (spec §8.2, §13 item 3)."""
    if s.max_iter != 0:
        return T
    kappa = s.kappa * 100.0 / s.kappa_std_ratio
    return solve_T(T, S, Mt, kappa, s.n_iter, solver="fp_solve_admm", lam=lam, **_solve_kwargs(s))


_KIND_FUNCTIONS = {
    "baseline_adjusted": baseline_adjusted,
    "nonneg": nonneg,
    "raw": raw,
    "least_squares": least_squares,
    "nonnegative_least_squares": nonnegative_least_squares,
}


def regress(Mt: Any, S: Any, T: Any, settings: RegressionSettings, option: str, lam: Any = None) -> dict[str, Any]:
    """All trace kinds for ``trace_output_option=option`` (spec §8.2), each (K, n) in Mt's namespace.

    Parameters
    ----------
    Mt : float32 (n, P) preprocessed movie, frames x pixels (row-major pixels).
    S : float32 (P, K) footprints, each column max 1.
    T : float32 (K, n) initial traces (the last refinement or initial estimate; warm start of every solve).
    settings : :class:`RegressionSettings`.
    option : the config's ``trace_output_option``; ``none`` returns ``{}``.
    lam : optional (K,) l1 penalty (spec §6.5), ignored by the adaptive solvers.

    Returns
    -------
    dict mapping ``baseline_adjusted``, ``nonneg``, ``raw`` (and the option's own key for the two least-squares
    options) to (K, n) traces.
    """
    kinds = trace_kinds(option)
    finished: list[str] = []
    lock = threading.Lock()
    settings.progress("frr", 0, len(kinds), ", ".join(kinds), "kinds")

    def solve(kind: str) -> Any:
        traces = _KIND_FUNCTIONS[kind](Mt, S, T, settings, lam)
        with lock:
            finished.append(kind)
            settings.progress("frr", len(finished), len(kinds), f"{kind} done", "kinds")
        return traces

    # the kinds are independent: side by side on the host's cores, their tiles shared among the threads
    return dict(zip(kinds, solver_kernels.map_in_threads(solve, kinds, backend.get_namespace(Mt))))


def trace_kinds(option: str) -> list[str]:
    """Trace kinds computed for ``trace_output_option=option``: the three of every run and the option's own
    least-squares kind; none for ``none``."""
    if option == "none":
        return []
    kinds = list(TRACE_KINDS)
    extra = TRACE_OPTION_TO_KIND[option]
    return kinds if extra in kinds else kinds + [extra]


def interpolate_time(T: Any, n_full: int) -> Any:
    """Linear interpolation of time-downsampled traces ``T`` (K, n) to ``n_full`` frames (spec §8.3).

    Sample j (0-based) sits at full-rate frame ``round(linspace(1, n_full, n))[j] - 1`` (MATLAB rounding, halves
    away from zero); every full-rate frame lies between the first and the last sample, so nothing extrapolates.
    """
    xp, device = backend.get_namespace_and_device(T)
    n = T.shape[1]
    if n == 1:
        return xp.broadcast_to(T, (T.shape[0], n_full))
    positions = [math.floor(1 + j * (n_full - 1) / (n - 1) + 0.5) - 1 for j in range(n)]
    lower, weight = [], []
    seg = 0
    for frame in range(n_full):  # host-side index bookkeeping, O(n_full) integers
        while seg < n - 2 and frame > positions[seg + 1]:
            seg += 1
        lower.append(seg)
        weight.append((frame - positions[seg]) / (positions[seg + 1] - positions[seg]))
    lo = xp.asarray(lower, dtype=xp.int64, device=device)
    w = xp.asarray(weight, dtype=T.dtype, device=device)
    return xp.take(T, lo, axis=1) * (1.0 - w) + xp.take(T, lo + 1, axis=1) * w


def divide_by_cell_baseline(T: Any, S: Any, F_per_pixel: Any) -> Any:
    """Divide each trace by its cell's baseline fluorescence (spec §8.4).

    ``F_cell_k = sum_p S[p,k] F[p] / sum_p S[p,k]``; ``T`` (K, n), ``S`` (P, K), ``F_per_pixel`` (P,). Cells whose
    footprint sums to zero are left undivided.
    """
    xp = backend.get_namespace(T)
    weight = xp.sum(S, axis=0)
    F_cell = (xp.reshape(F_per_pixel, (1, -1)) @ S)[0, :]
    safe = weight > 0
    F_cell = xp.where(safe, F_cell / xp.where(safe, weight, xp.ones_like(weight)), xp.ones_like(weight))
    return T / F_cell[:, None]
