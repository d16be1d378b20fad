"""Footprint matching (engine/matching.py): Pearson matrix, EXTRACT's greedy match_sets, optimal assignment.

Correlations computed in float32 are compared with a float64 reference at ``atol=1e-5``: the float32 error of a
Pearson coefficient over a few hundred samples is ~1e-7, and any mistake (ddof, centring, normalisation) moves it
by far more than 1e-5.
"""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest
from conftest import to_xp

from nwb_extract.engine import backend, matching


def _same_namespace(out, xp, device):
    assert array_api_compat.array_namespace(out) == array_api_compat.array_namespace(xp.asarray(0))
    if device is not None:
        assert array_api_compat.device(out) == device


def _with_correlations(target: np.ndarray, n_pixels: int = 64, seed: int = 0) -> np.ndarray:
    """Columns (n_pixels, k) whose population Pearson correlation matrix is exactly ``target``."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(n_pixels, target.shape[0]))
    basis -= basis.mean(axis=0)
    basis, _ = np.linalg.qr(basis)  # orthonormal, centred columns
    return basis @ np.linalg.cholesky(target).T + 3.0  # an offset does not change correlations


# a, b in set 1; c, d in set 2 (a positive definite correlation matrix). Greedy takes (a, c) = 0.9 first and is
# left with (b, d) = 0.2; the optimum pairs (a, d) + (b, c) = 0.75 + 0.8.
TARGET = np.array([[1.0, 0.65, 0.9, 0.75],
                   [0.65, 1.0, 0.8, 0.2],
                   [0.9, 0.8, 1.0, 0.6],
                   [0.75, 0.2, 0.6, 1.0]])


@pytest.fixture(scope="module")
def crafted_sets():
    columns = _with_correlations(TARGET)
    return columns[:, :2].T.reshape(2, 8, 8), columns[:, 2:].T.reshape(2, 8, 8)  # (K, H, W) stacks


def test_pearson_columns_against_corrcoef(namespace):
    xp, device = namespace
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 4)).astype(np.float32)
    Y = (X[:, :3] * [1.0, -2.0, 0.5] + rng.normal(size=(300, 3))).astype(np.float32)
    out = matching.pearson_columns(to_xp(X, xp, device), to_xp(Y, xp, device))
    _same_namespace(out, xp, device)
    assert out.dtype == xp.float32
    expected = np.corrcoef(X.astype(np.float64), Y.astype(np.float64), rowvar=False)[:4, 4:]
    np.testing.assert_allclose(backend.to_numpy(out), expected, atol=1e-5)
    auto = backend.to_numpy(matching.pearson_columns(to_xp(X, xp, device)))
    np.testing.assert_allclose(auto, np.corrcoef(X.astype(np.float64), rowvar=False), atol=1e-5)


def test_pearson_columns_constant_columns_give_zero(namespace):
    xp, device = namespace
    X = np.random.default_rng(2).normal(size=(50, 3)).astype(np.float32)
    X[:, 1] = 0.1  # float32 mean of 50 x 0.1f need not be exactly 0.1f: must still count as constant
    Y = np.stack([X[:, 0], np.zeros(50, np.float32)], axis=1)
    out = backend.to_numpy(matching.pearson_columns(to_xp(X, xp, device), to_xp(Y, xp, device)))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[1, :], 0)
    np.testing.assert_array_equal(out[:, 1], 0)
    assert out[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_pearson_columns_float64_and_shape_errors():
    X = np.random.default_rng(3).normal(size=(20, 2))
    out = backend.to_numpy(matching.pearson_columns(X, X.astype(np.float32)))
    assert out.dtype == np.float64
    with pytest.raises(ValueError, match="same P"):
        matching.pearson_columns(X, X[:10])


def test_footprint_correlation_reproduces_target(crafted_sets):
    F1, F2 = crafted_sets
    np.testing.assert_allclose(backend.to_numpy(matching.footprint_correlation(F1, F2)), TARGET[:2, 2:], atol=1e-12)
    # (K, H, W) and (K, P) are the same convention
    flat = matching.footprint_correlation(F1.reshape(2, -1), F2.reshape(2, -1))
    np.testing.assert_array_equal(backend.to_numpy(flat), backend.to_numpy(matching.footprint_correlation(F1, F2)))
    with pytest.raises(ValueError, match="same image shape"):
        matching.footprint_correlation(F1, F2[:, :4])


def test_greedy_and_optimal_differ_as_designed(namespace, crafted_sets):
    xp, device = namespace
    F1, F2 = (to_xp(f.astype(np.float32), xp, device) for f in crafted_sets)
    greedy = matching.match_sets(F1, F2, 0.5)
    _same_namespace(greedy, xp, device)
    assert greedy.dtype == xp.int64
    np.testing.assert_array_equal(backend.to_numpy(greedy), [[0, 0]])  # (b, d) = 0.2 <= 0.5 stops the loop
    np.testing.assert_array_equal(backend.to_numpy(matching.match_sets(F1, F2, 0.1)), [[0, 0], [1, 1]])
    pairs, corr = matching.match_optimal(F1, F2, 0.5)
    _same_namespace(pairs, xp, device)
    assert pairs.dtype == xp.int64 and corr.dtype == xp.float32
    np.testing.assert_array_equal(backend.to_numpy(pairs), [[0, 1], [1, 0]])
    np.testing.assert_allclose(backend.to_numpy(corr), [0.75, 0.8], atol=1e-5)


def test_optimal_never_trades_an_admissible_pair_for_a_rejected_one():
    # plain Hungarian on all correlations prefers (0,1)+(1,0) = 0.6 + 0.3 = 0.9 over (0,0)+(1,1) = 0.85 + (-0.3),
    # then drops the 0.3 pair; restricted to pairs above 0.5 the best is (0,0) alone with 0.85 > 0.6
    target = np.array([[1.0, 0.0, 0.85, 0.6],
                       [0.0, 1.0, 0.3, -0.3],
                       [0.85, 0.3, 1.0, 0.4],
                       [0.6, -0.3, 0.4, 1.0]])
    columns = _with_correlations(target)
    pairs, corr = matching.match_optimal(columns[:, :2].T, columns[:, 2:].T, 0.5)
    np.testing.assert_array_equal(backend.to_numpy(pairs), [[0, 0]])
    np.testing.assert_allclose(backend.to_numpy(corr), [0.85], atol=1e-12)


def test_greedy_ties_follow_matlab_column_major_order():
    x = np.random.default_rng(4).normal(size=(1, 6, 6))
    twice = np.concatenate([x, x])
    # all correlations are 1: MATLAB max(C(:)) takes the first in column-major order
    np.testing.assert_array_equal(backend.to_numpy(matching.match_sets(twice, x, 0.5)), [[0, 0]])
    np.testing.assert_array_equal(backend.to_numpy(matching.match_sets(x, twice, 0.5)), [[0, 0]])
    # pairs come back sorted by the first set's index even though (2, 0) is found first
    y = np.random.default_rng(5).normal(size=(3, 6, 6))
    order = backend.to_numpy(matching.match_sets(y, y[::-1] + 0.01 * np.ones_like(y), 0.5))
    np.testing.assert_array_equal(order, [[0, 2], [1, 1], [2, 0]])


def test_empty_sets_and_bad_threshold():
    x = np.random.default_rng(6).normal(size=(3, 5, 5))
    empty = np.zeros((0, 5, 5))
    assert backend.to_numpy(matching.match_sets(x, empty, 0.5)).shape == (0, 2)
    pairs, corr = matching.match_optimal(empty, x, 0.5)
    assert backend.to_numpy(pairs).shape == (0, 2) and backend.to_numpy(corr).shape == (0,)
    with pytest.raises(ValueError, match="threshold must be a correlation >= 0"):
        matching.match_sets(x, x, -0.1)
    with pytest.raises(ValueError, match="threshold must be a correlation >= 0"):
        matching.match_optimal(x, x, float("nan"))


def test_pearson_columns_float64_result_of_float32_input():
    """``dtype=float64`` on float32 input gives, bitwise, the correlations of its float64 cast (no cast needed)."""
    X = np.random.default_rng(3).random((500, 7)).astype(np.float32)
    X[:, 2] = 0.25  # a constant column: 0 against everything
    got = matching.pearson_columns(X, dtype=np.float64)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, matching.pearson_columns(X.astype(np.float64)))
    assert matching.pearson_columns(X).dtype == np.float32
