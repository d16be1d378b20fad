"""Tests of nwb_extract.engine.noise (spec §4) against the reference pack and against known white noise."""

from __future__ import annotations

import array_api_compat
import h5py
import numpy as np
import pytest
from conftest import to_xp

from nwb_extract.engine.backend import to_numpy
from nwb_extract.engine.noise import estimate_noise_std
from nwb_extract.errors import InputError


@pytest.fixture(scope="module")
def functions_h5(reference_dir):
    with h5py.File(reference_dir / "functions.h5", "r") as f:
        yield f


def assert_matches_reference(out, ref):
    """Direct computation vs the float32 reference: README §4 advises rtol 1e-5 with atol 1e-5 * max|ref|
    (the reference's own rounding sensitivity for this function is 2.5e-8 relative)."""
    ref = np.asarray(ref)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_white_rows_along_both_axes(functions_h5):
    g = functions_h5["estimate_noise_std_white"]
    X = g["inputs/X"][...]  # (6, 4000): one trace per row
    out_rows = estimate_noise_std(X, axis=1)
    out_cols = estimate_noise_std(np.ascontiguousarray(X.T), axis=0)
    assert out_rows.shape == (6,) and out_rows.dtype == np.float32
    assert_matches_reference(out_rows, g["outputs/sigma_time_axis2"][:, 0])
    assert_matches_reference(out_cols, g["outputs/sigma_time_axis1"][:, 0])


def test_single_odd_length_vector(functions_h5):
    g = functions_h5["estimate_noise_std_vector"]
    x = g["inputs/x"][0]  # 1001 samples
    out = estimate_noise_std(x)
    assert out.shape == ()
    assert_matches_reference(out, g["outputs/sigma"][0, 0])


@pytest.mark.parametrize("axis, key", [(1, "sigma_time_axis2"), (0, "sigma_time_axis1")])
def test_coloured_matrix_along_each_axis(functions_h5, axis, key):
    g = functions_h5["estimate_noise_std_matrix"]
    R = g["inputs/R"][...]  # (48, 300)
    out = estimate_noise_std(R, axis=axis)
    assert out.shape == (R.shape[1 - axis],)
    assert_matches_reference(out, g[f"outputs/{key}"][:, 0])


@pytest.mark.parametrize("n", [16, 17, 2])
def test_short_traces_bin_bookkeeping(functions_h5, n):
    g = functions_h5["estimate_noise_std_short"]
    out = estimate_noise_std(g[f"inputs/x{n}"][...], axis=1)
    assert_matches_reference(out, g[f"outputs/sigma{n}"][:, 0])


def test_known_white_noise_within_5_percent_and_blind_to_slow_signal():
    # 20000 samples keep 5000 high-frequency bins: the estimate's relative sd is ~1/sqrt(5000) = 1.4 %, so 5 %
    # is > 3 sd. A slow, large transient-like signal (period 2000 frames) must not leak into the estimate.
    rng = np.random.default_rng(0)
    sigmas = np.array([0.05, 0.5, 3.0], dtype=np.float32)
    n = 20000
    slow = 10.0 * np.sin(2 * np.pi * np.arange(n) / 2000.0)
    traces = (sigmas[:, None] * rng.standard_normal((3, n)) + slow).astype(np.float32)
    out = estimate_noise_std(traces, axis=-1)
    np.testing.assert_allclose(out, sigmas, rtol=0.05)


def test_chunking_does_not_change_values():
    rng = np.random.default_rng(1)
    Mt = rng.standard_normal((64, 50)).astype(np.float32)
    whole = estimate_noise_std(Mt, axis=0)
    chunked = estimate_noise_std(Mt, axis=0, chunk_elements=64 * 7)  # 7 traces at a time, last chunk of 1
    np.testing.assert_array_equal(chunked, whole)


def test_integer_input_and_shape_of_nd_result():
    rng = np.random.default_rng(2)
    movie = rng.integers(0, 1000, size=(40, 3, 5)).astype(np.uint16)  # (frames, rows, cols)
    out = estimate_noise_std(movie, axis=0)
    assert out.shape == (3, 5) and out.dtype == np.float32
    expected = estimate_noise_std(movie.astype(np.float32).reshape(40, 15), axis=0).reshape(3, 5)
    np.testing.assert_array_equal(out, expected)


def test_empty_axis_is_an_input_error():
    with pytest.raises(InputError, match="length >= 1"):
        estimate_noise_std(np.zeros((3, 0), np.float32), axis=1)


def test_namespaces_devices_and_dtype(namespace):
    xp, device = namespace
    rng = np.random.default_rng(3)
    movie = rng.standard_normal((101, 4, 6)).astype(np.float32)
    expected = estimate_noise_std(movie, axis=0)
    out = estimate_noise_std(to_xp(movie, xp, device), axis=0)
    assert array_api_compat.array_namespace(out) is array_api_compat.array_namespace(to_xp(movie, xp, device))
    assert array_api_compat.device(out) == array_api_compat.device(to_xp(movie, xp, device))
    assert out.dtype == xp.float32
    # float32 FFTs of different libraries differ by a few ulp
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-5, atol=1e-6)
