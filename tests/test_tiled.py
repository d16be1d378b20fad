"""Tests of nwb_extract.engine.tiled: tiled T-step, robust T-step and S-step (spec §6.6–6.8).

Golden cases of ``functions.h5`` (30 x 40 FOV, 200 frames, 5 cells). The reference flattens pixels column-major
(``p = row + 30 col``); our engine flattens row-major, so every pixel axis is permuted before the call and after.
Tiles are rectangles of the image, so results must agree whatever the flattening. Tolerances (README §4 of the
reference pack): iterative stages ``atol = 1e-3 * max|ref|`` per output (measured ~1e-6); tile counts exactly.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import to_xp

from nwb_extract.engine import backend, solver_kernels
from nwb_extract.engine.tiled import (SStepResult, TileCounts, s_step_tiles, solve_S, solve_T, solve_T_robust,
                                      t_step_tiles)
from nwb_extract.errors import ConfigError, InputError

H, W = 30, 40
T_CASES = [
    # case, function, extra keyword arguments
    ("solve_T_admm", "solve_T", {}),
    ("solve_T_admm_tiled", "solve_T", {}),
    ("solve_T_adaptive", "solve_T", {}),
    ("solve_T_adaptive_raw", "solve_T", {}),
    ("solve_T_fp_solve_untransposed", "solve_T", {}),
    ("solve_T_robust_adaptive_baseline_edge0", "solve_T_robust", {"edge_case_flag": False}),
    ("solve_T_robust_adaptive_baseline_edge1", "solve_T_robust", {"edge_case_flag": True}),
    ("solve_T_robust_admm_baseline", "solve_T_robust", {"edge_case_flag": False}),
]


@pytest.fixture(scope="module")
def functions(reference_dir):
    with h5py.File(reference_dir / "functions.h5", "r") as f:
        yield f


def row_major(a, axis):
    """Permute a column-major pixel axis (``p = row + H col``) of ``a`` to row-major (``p = row * W + col``)."""
    a = np.moveaxis(a, axis, -1)
    images = a.reshape(a.shape[:-1] + (W, H)).swapaxes(-1, -2)
    return np.ascontiguousarray(np.moveaxis(images.reshape(a.shape[:-1] + (H * W,)), -1, axis))


def _movie(inputs):
    if "Mt" in inputs:
        return row_major(inputs["Mt"][...], 1)
    return row_major(np.ascontiguousarray(inputs["M"][...].T), 1)  # the 'least_squares' case passes pixels x frames


def _assert_close(out, ref):
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-3 * np.abs(ref).max())


@pytest.mark.parametrize("case, function, extra", T_CASES, ids=[c[0] for c in T_CASES])
def test_t_steps_golden(functions, case, function, extra):
    g = functions[case]
    inputs, outputs, attrs = g["inputs"], g["outputs"], g.attrs
    S, Mt, T_in = row_major(inputs["S"][...], 0), _movie(inputs), inputs["T_in"][...]
    common = dict(frame_shape=(H, W), radius=float(attrs["avg_radius"]), lam=inputs["lambda"][0, :])
    kappa, n_iter = float(attrs["kappa"]), int(attrs["max_iter"])
    if function == "solve_T":
        out = solve_T(T_in, S, Mt, kappa, n_iter, solver=str(attrs["est_func"]), **common)
        tiles = t_step_tiles((H, W), common["radius"], S.shape[1], Mt.shape[0], apply_minimum=n_iter < 101)
    else:
        out = solve_T_robust(T_in, S, Mt, kappa, n_iter, solver=str(attrs["fp_solve_func"]),
                             quantile=float(attrs["baseline"]), check_every_step=bool(attrs["check_every"]),
                             **extra, **common)
        tiles = t_step_tiles((H, W), common["radius"], S.shape[1], Mt.shape[0],
                             apply_minimum=not extra["edge_case_flag"])
    assert out.shape == T_in.shape and out.dtype == np.float32
    _assert_close(out, outputs["T_out"][...])
    assert tiles == (int(outputs["np_x"][0, 0]), int(outputs["np_y"][0, 0]), int(outputs["np_time"][0, 0]))
    if "T_out_baseline_adjusted" in outputs:  # what run_extract keeps: each trace shifted to minimum 0
        _assert_close(out - out.min(axis=1, keepdims=True), outputs["T_out_baseline_adjusted"][...])


def test_tiled_t_step_is_a_power_weighted_average(functions):
    # avg_radius 1 -> 2 x 2 tiles; the reference result differs from the one-tile fit, and so must ours
    g = functions["solve_T_admm_tiled"]
    S, Mt, T_in = row_major(g["inputs/S"][...], 0), _movie(g["inputs"]), g["inputs/T_in"][...]
    tiled = solve_T(T_in, S, Mt, 0.35, 100, frame_shape=(H, W), radius=1.0)
    single = solve_T(T_in, S, Mt, 0.35, 100, frame_shape=(H, W), radius=4.0)
    assert t_step_tiles((H, W), 1.0, 5, 200, apply_minimum=True) == TileCounts(2, 2, 1)
    assert not np.array_equal(tiled, single)
    reference_gap = np.abs(g["outputs/T_out"][...] - functions["solve_T_admm/outputs/T_out"][...]).max()
    np.testing.assert_allclose(np.abs(tiled - single).max(), reference_gap, rtol=0.05, atol=1e-6)


@pytest.mark.parametrize("radius", [1.0, 4.0])
def test_tiled_steps_do_not_depend_on_the_thread_count(functions, monkeypatch, radius):
    """Tiles run side by side on the host's cores, a tile alone splits its row blocks over them, idle threads help
    with the row blocks of the others, and the tiles are accumulated in the reference's order: 1, 2 and 3 threads
    give identical T- and S-steps (radius 1: 2 x 2 tiles; radius 4: one tile; row blocks of 2 rows or more)."""
    g = functions["solve_T_admm_tiled"]
    S, Mt, T_in = row_major(g["inputs/S"][...], 0), _movie(g["inputs"]), g["inputs/T_in"][...]
    mask = S > 0
    monkeypatch.setattr(solver_kernels, "MIN_THREAD_ROWS", 2)
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(solver_kernels, "host_threads", lambda threads=threads: threads)
        T_out = solve_T(T_in, S, Mt, 0.35, 100, frame_shape=(H, W), radius=radius)
        S_out = solve_S(S, T_out, Mt, mask, 0.35, 100, frame_shape=(H, W), radius=radius)
        results.append((T_out, S_out.S, S_out.T_corr_in, S_out.T_corr_out, S_out.S_surround))
    for one, other in zip(results[0], results[1]):
        np.testing.assert_array_equal(one, other)
    for one, other in zip(results[0], results[2]):
        np.testing.assert_array_equal(one, other)


def test_solve_S_without_projections_gives_the_same_images(functions):
    """``projections=False`` (refinement when the spatio-temporal metrics are off) skips the projections and surround
    images and leaves the images and their scale exactly as they are."""
    g = functions["solve_T_admm_tiled"]
    S, Mt, T_in = row_major(g["inputs/S"][...], 0), _movie(g["inputs"]), g["inputs/T_in"][...]
    full = solve_S(S, T_in, Mt, S > 0, 0.35, 100, frame_shape=(H, W), radius=1.0)
    lean = solve_S(S, T_in, Mt, S > 0, 0.35, 100, frame_shape=(H, W), radius=1.0, projections=False)
    np.testing.assert_array_equal(lean.S, full.S)
    np.testing.assert_array_equal(lean.scale, full.scale)
    assert lean.T_corr_in is None and lean.T_corr_out is None and lean.S_surround is None
    assert full.T_corr_in is not None and np.any(full.S_surround > 0)


def test_solve_S_golden(functions):
    g = functions["solve_S_admm"]
    inputs, outputs, attrs = g["inputs"], g["outputs"], g.attrs
    S_in, Mt = row_major(inputs["S_in"][...], 0), _movie(inputs)
    mask = row_major(outputs["mask"][...], 0).astype(bool)  # the case's make_mask output is the S-step's mask
    res = solve_S(S_in, inputs["T"][...], Mt, mask, float(attrs["kappa"]), int(attrs["max_iter"]),
                  frame_shape=(H, W), radius=float(attrs["avg_radius"]))
    assert isinstance(res, SStepResult)
    _assert_close(res.S, row_major(outputs["S_out"][...], 0))
    _assert_close(res.S_surround, row_major(outputs["S_surround"][...], 0))
    # T_corr_in is multiplied by the normalisation scale, as the reference does (spec §13 item 8)
    _assert_close(res.T_corr_in, outputs["T_corr_in"][...])
    _assert_close(res.T_corr_out, outputs["T_corr_out"][...])
    np.testing.assert_allclose(res.S.max(axis=0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(res.S * res.scale, res.S * res.scale.astype(np.float64), rtol=1e-6)
    assert s_step_tiles((H, W), float(attrs["avg_radius"]), 5, 100) == (int(outputs["np_x"][0, 0]),
                                                                         int(outputs["np_y"][0, 0]), 1)
    assert not res.S[~mask].any()


def test_tile_count_rules():
    # MATLAB round (halves away from zero): 50 / (20 * 1) = 2.5 -> 3 tiles
    assert t_step_tiles((30, 50), 1.0, 5, 100, apply_minimum=True) == TileCounts(3, 2, 1)
    # minimum: round(sqrt(250 / 100)) = 2 per axis; round(50000 / 20000) = 3 time chunks
    assert t_step_tiles((30, 40), 4.0, 250, 50000, apply_minimum=True) == TileCounts(2, 2, 3)
    assert t_step_tiles((30, 40), 4.0, 250, 50000, apply_minimum=False) == TileCounts(1, 1, 1)
    # S-step: both counts from the width (reference rule), minimum below 101 iterations
    assert s_step_tiles((100, 40), 1.0, 5, 100) == TileCounts(2, 2, 1)
    assert s_step_tiles((30, 40), 4.0, 250, 100) == TileCounts(2, 2, 1)
    assert s_step_tiles((30, 40), 4.0, 250, 101) == TileCounts(1, 1, 1)


def _toy(seed=0, n=60):
    """A 12 x 14 FOV with 3 Gaussian cells (one all-zero image), traces and a noisy movie."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:12, 0:14]
    S = np.stack([np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / 4.0) for r, c in [(3, 3), (8, 10), (0, 0)]], -1)
    S[S < 0.1] = 0
    S[:, :, 2] = 0  # a zero-power cell (spec §13 item 17)
    S = S.reshape(-1, 3).astype(np.float32)
    T = np.abs(rng.normal(size=(3, n))).astype(np.float32)
    Mt = (T.T @ S.T + 0.1 * rng.normal(size=(n, S.shape[0]))).astype(np.float32)
    return S, T, Mt


def test_zero_power_cell_is_guarded():
    S, T, Mt = _toy()
    for out in (solve_T(T, S, Mt, 0.07, 30, frame_shape=(12, 14), radius=1.0),
                solve_T_robust(T, S, Mt, 0.07, 30, frame_shape=(12, 14), radius=1.0, edge_case_flag=True)):
        assert np.isfinite(out).all()
        np.testing.assert_array_equal(out[2], 0.0)
    mask = S > 0
    res = solve_S(S, T, Mt, mask, 0.07, 30, frame_shape=(12, 14), radius=1.0)
    assert np.isfinite(res.S).all() and not res.S[:, 2].any()


def test_bad_arguments_raise_package_errors():
    S, T, Mt = _toy()
    with pytest.raises(ConfigError, match="deterministic"):  # the memory rule is not offered (docs/decisions.md)
        solve_T(T, S, Mt, 0.1, 10, frame_shape=(12, 14), radius=1.0, tiling="memory")
    with pytest.raises(ConfigError, match="fp_solve_admm"):
        solve_T(T, S, Mt, 0.1, 10, frame_shape=(12, 14), radius=1.0, solver="fp_solve_magic")
    with pytest.raises(InputError, match="frame_shape"):
        solve_T(T, S, Mt, 0.1, 10, frame_shape=(14, 14), radius=1.0)
    with pytest.raises(InputError, match="Mt"):
        solve_S(S, T, Mt.T.copy(), S > 0, 0.1, 10, frame_shape=(12, 14), radius=1.0)


@pytest.mark.parametrize("step", ["solve_T", "solve_T_robust_edge1", "solve_S_adaptive_filter"])
def test_tiled_steps_under_namespaces(namespace, step):
    xp, device = namespace
    S, T, Mt = _toy(seed=1)
    common = dict(frame_shape=(12, 14), radius=0.3)  # 2 x 2 tiles, so the scatter paths run
    if step == "solve_T":
        run = lambda S_, T_, Mt_: solve_T(T_, S_, Mt_, 0.07, 20, solver="fp_solve_adaptive", **common)  # noqa: E731
    elif step == "solve_T_robust_edge1":
        run = lambda S_, T_, Mt_: solve_T_robust(T_, S_, Mt_, 0.07, 20, edge_case_flag=True, **common)  # noqa: E731
    else:
        run = lambda S_, T_, Mt_: solve_S(S_, T_, Mt_, S_ > 0, 0.07, 20,  # noqa: E731
                                          solver="fp_solve_adaptive_filter", **common).S
    ref = run(S, T, Mt)
    assert np.isfinite(ref).all()
    out = run(to_xp(S, xp, device), to_xp(T, xp, device), to_xp(Mt, xp, device))
    assert backend.get_namespace(out) is backend.get_namespace(to_xp(np.zeros(1, np.float32), xp, device))
    if device is not None:
        assert out.device == device
    host = backend.to_numpy(out)
    assert host.dtype == np.float32
    # 20 float32 iterations in another summation order: 1e-5 of the largest value
    np.testing.assert_allclose(host, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
