"""Final-regression helpers of engine/traces.py: time interpolation, division by cell baseline, option set."""

from __future__ import annotations

import numpy as np
import pytest

from nwb_extract.engine import backend, traces

from conftest import to_xp


def test_interpolate_time_matches_matlab_interp1(namespace):
    """Samples sit at round(linspace(1, n_full, n)) (MATLAB rounding); linear in between (np.interp reference)."""
    xp, device = namespace
    rng = np.random.default_rng(0)
    T = rng.standard_normal((3, 7)).astype(np.float32)
    n_full = 20
    out = traces.interpolate_time(to_xp(T, xp, device), n_full)
    assert backend.get_namespace(out) is backend.get_namespace(to_xp(T, xp, device))
    positions = np.floor(np.linspace(1, n_full, 7) + 0.5)
    expected = np.stack([np.interp(np.arange(1, n_full + 1), positions, row) for row in T])
    np.testing.assert_allclose(backend.to_numpy(out), expected, rtol=1e-6, atol=1e-6)


def test_divide_by_cell_baseline(namespace):
    """F_cell = S-weighted mean of F_per_pixel; a zero footprint leaves its trace undivided."""
    xp, device = namespace
    S = np.array([[1.0, 0.0], [0.5, 0.0], [0.0, 0.0]], dtype=np.float32)  # P=3, K=2 (cell 1 empty)
    F = np.array([2.0, 5.0, 7.0], dtype=np.float32)
    T = np.ones((2, 4), dtype=np.float32)
    out = backend.to_numpy(traces.divide_by_cell_baseline(to_xp(T, xp, device), to_xp(S, xp, device),
                                                          to_xp(F, xp, device)))
    f_cell = (1.0 * 2 + 0.5 * 5) / 1.5
    np.testing.assert_allclose(out[0], 1.0 / f_cell, rtol=1e-6)
    np.testing.assert_array_equal(out[1], 1.0)


@pytest.mark.parametrize("option, keys", [
    ("baseline_adjusted", {"baseline_adjusted", "nonneg", "raw"}),
    ("no_constraint", {"baseline_adjusted", "nonneg", "raw"}),
    ("least_squares", {"baseline_adjusted", "nonneg", "raw", "least_squares"}),
    ("nonnegative_least_squares", {"baseline_adjusted", "nonneg", "raw", "nonnegative_least_squares"}),
    ("none", set()),
])
def test_regress_returns_every_kind(option, keys):
    rng = np.random.default_rng(1)
    h, w, n, k = 12, 14, 60, 2
    S = np.zeros((h * w, k), dtype=np.float32)
    S[20:30, 0] = 1.0
    S[100:112, 1] = 1.0
    T_true = np.abs(rng.standard_normal((k, n))).astype(np.float32)
    Mt = (S @ T_true).T + 0.05 * rng.standard_normal((n, h * w)).astype(np.float32)
    settings = traces.RegressionSettings(kappa=0.035, kappa_std_ratio=0.7, adaptive_kappa=1, n_iter=50,
                                         radius=3.0, frame_shape=(h, w))
    T0 = np.clip(np.linalg.lstsq(S, Mt.T, rcond=None)[0], 0, None).astype(np.float32)  # warm start, as §2.1
    out = traces.regress(Mt, S, T0, settings, option)
    assert set(out) == keys
    for key, T in out.items():
        assert T.shape == (k, n)
        assert min(np.corrcoef(T[c], T_true[c])[0, 1] for c in range(k)) > 0.95, key
