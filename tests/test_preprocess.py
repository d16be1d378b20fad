"""Tests of nwb_extract.engine.preprocess (spec §3) against the reference pack and direct computations.

functions.h5 keeps MATLAB shapes: movies are (rows, cols, frames) and are moved to our (frames, rows, cols) with
``to_engine``. Unless a test says otherwise, golden comparisons use README §4's bar for direct computations,
rtol 1e-5 and atol 1e-5 * max|ref| (the reference is float32; its own rounding sensitivity is ~3e-7 relative).
"""

from __future__ import annotations

import math
from dataclasses import replace

import array_api_compat
import h5py
import numpy as np
import pytest
import scipy.ndimage as ndi
import scipy.signal
from conftest import to_xp
from numpy.lib.stride_tricks import sliding_window_view

from nwb_extract.engine import preprocess as pp
from nwb_extract.engine.backend import to_numpy
from nwb_extract.errors import ConfigError, InputError, NotImplementedYetError


@pytest.fixture(scope="module")
def functions_h5(reference_dir):
    with h5py.File(reference_dir / "functions.h5", "r") as f:
        yield f


def to_engine(a):
    """MATLAB (rows, cols, frames) -> engine (frames, rows, cols); 2-D arrays are returned as they are."""
    a = np.asarray(a)
    return np.ascontiguousarray(np.moveaxis(a, -1, 0)) if a.ndim == 3 else a


def assert_matches_reference(out, ref):
    ref = np.asarray(ref)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def butterworth_full_grid(nf, radius, f_lower_scale, f_upper_scale, scale_x=1.0, scale_y=1.0, miscentred=False):
    """The spec §3.2 filter on the full (unshifted) nf x nf FFT grid, written independently of the engine.

    ``miscentred`` builds the reference's formula for the x frequency, ``s_x * k/nf - 1/2`` on the fftshift-ed
    grid (spec §13 item 9), mapped back to unshifted order.
    """
    f = np.fft.fftfreq(nf)
    fy = scale_y * f
    if miscentred:
        k_shifted = (np.arange(nf) + nf // 2) % nf  # unshifted index j sits at fftshift position (j + nf/2) mod nf
        fx = scale_x * k_shifted / nf - 0.5
    else:
        fx = scale_x * f
    dist = np.maximum(np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2), 1e-6)
    fc = 1 / np.pi / (radius / 2)
    lpf = 1 / (1 + (dist / (fc * f_upper_scale)) ** 8) if np.isfinite(f_upper_scale) else 1.0
    hpf = 1 - 1 / (1 + (dist / (fc / f_lower_scale)) ** 8) if np.isfinite(f_lower_scale) else 1.0
    return (lpf * hpf).astype(np.float32)


def bandpass_direct(stack, H):
    """Symmetric pad, zero pad to nf, full complex FFT, multiply by H, real part, crop: spec §3.2 step by step."""
    n, h, w = stack.shape
    nf = H.shape[0]
    ph, pw = (nf - h) // 2, (nf - w) // 2
    padded = np.pad(stack.astype(np.float64), ((0, 0), (ph, ph), (pw, pw)), mode="symmetric")
    out = np.real(np.fft.ifft2(np.fft.fft2(padded, s=(nf, nf)) * H))
    return out[:, ph:ph + h, pw:pw + w]


# ----------------------------------------------------------------------------------------------------------------
# compute_df (§3.1)


@pytest.mark.parametrize("quantile, key", [(None, "mean"), (0.5, "median"), (0.3, "q30")])
def test_compute_df_baselines(functions_h5, quantile, key):
    g = functions_h5["compute_df"]
    movie_df, F = pp.compute_df(to_engine(g["inputs/M"][...]), quantile)
    assert movie_df.dtype == np.float32 and F.dtype == np.float32
    assert_matches_reference(movie_df, to_engine(g[f"outputs/M_{key}"][...]))
    assert_matches_reference(F, g[f"outputs/F_{key}"][...])


def test_compute_df_skip_and_centred_leave_the_movie(functions_h5):
    g = functions_h5["compute_df"]
    M = to_engine(g["inputs/M"][...])
    movie, F = pp.compute_df(M, None, skip_dff=True)
    np.testing.assert_array_equal(movie, to_engine(g["outputs/M_skip"][...]))
    np.testing.assert_array_equal(movie, M)
    assert_matches_reference(F, g["outputs/F_skip"][...])
    centred = to_engine(g["inputs/M_centered"][...])
    movie, F = pp.compute_df(centred)
    np.testing.assert_array_equal(movie, to_engine(g["outputs/M_centered_out"][...]))
    assert_matches_reference(F, g["outputs/F_centered"][...])
    assert np.all(F >= 1)


def test_preprocessing_in_the_inputs_memory_gives_the_same_values(namespace):
    """overwrite=True (the pipeline's own block): ΔF is subtracted and band-passed in the input's memory, with the
    values of the copying path; a centred movie is returned unchanged either way; non-float32 input is never
    overwritten."""
    xp, device = namespace
    rng = np.random.default_rng(5)
    frames = (5.0 + rng.standard_normal((40, 16, 20))).astype(np.float32)
    settings = pp.PreprocessSettings()
    copied, F_copied = pp.preprocess_movie(to_xp(frames, xp, device), settings, radius=3.0)
    own = to_xp(frames, xp, device)
    in_place, F_in_place = pp.preprocess_movie(own, settings, radius=3.0, overwrite=True)
    np.testing.assert_array_equal(to_numpy(in_place), to_numpy(copied))
    np.testing.assert_array_equal(to_numpy(F_in_place), to_numpy(F_copied))
    np.testing.assert_array_equal(to_numpy(own), to_numpy(copied))  # it was the input's memory
    centred = to_xp(frames - frames.mean(axis=0), xp, device)
    out, _ = pp.compute_df(centred, overwrite=True)
    np.testing.assert_array_equal(to_numpy(out), frames - frames.mean(axis=0))
    as_float64 = frames.astype(np.float64)
    pp.compute_df(as_float64, overwrite=True)
    np.testing.assert_array_equal(as_float64, frames.astype(np.float64))


def test_compute_df_uses_matlab_rounding_for_the_centre_pixel():
    # 9 x 12 frames: MATLAB round(4.5) = 5 -> 0-based row 4 (banker's rounding would give row 3), column 5.
    # Only that pixel is very noisy (std 100 > 10 * level 2), so the movie counts as centred only if it is read.
    rng = np.random.default_rng(0)
    movie = np.full((50, 9, 12), 2.0, np.float32)
    movie[:, 4, 5] += 100 * rng.standard_normal(50).astype(np.float32)
    out, F = pp.compute_df(movie)
    np.testing.assert_array_equal(out, movie)
    moved = np.roll(movie, -1, axis=1)  # noisy pixel now at row 3: not the centre, so the baseline is removed
    out, _ = pp.compute_df(moved)
    np.testing.assert_allclose(out, moved - moved.mean(axis=0), atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# spatial_bandpass (§3.2)


@pytest.mark.parametrize("case", ["spatial_bandpass_highpass", "spatial_bandpass_highpass_r5",
                                  "spatial_bandpass_cellfind_butter", "spatial_bandpass_bandpass",
                                  "spatial_bandpass_2d", "spatial_bandpass_ratio05"])
def test_spatial_bandpass_golden(functions_h5, case):
    g = functions_h5[case]
    a = g.attrs
    data = g["inputs/stack"][...] if "stack" in g["inputs"] else g["inputs/image"][...]
    out = pp.spatial_bandpass(to_engine(data), float(a["radius"]), float(a["f_lower_scale"]),
                              float(a["f_upper_scale"]), float(a.get("smoothing_ratio", 1.0)), chunk_frames=2)
    assert out.shape == to_engine(data).shape and out.dtype == np.float32
    # ratio 0.5 scales y only (s_x = 1), where the reference's x mis-centring (spec §13 item 9) has no effect.
    assert_matches_reference(out, to_engine(g["outputs/out"][...]))


def test_symmetric_padding_from_slices_equals_the_gather(namespace):
    # spatial_bandpass pads with slices (runs of the reflected index list) instead of an element-wise take
    xp, device = namespace
    movie = np.random.default_rng(3).standard_normal((2, 7, 5)).astype(np.float32)
    rng = np.random.default_rng(4)
    index_lists = [pp._symmetric_indices(7, pad) for pad in (0, 1, 3, 7, 12)]
    index_lists += [list(rng.integers(0, 7, size=rng.integers(1, 15))) for _ in range(40)]
    for indices in index_lists:
        got = to_numpy(pp._take_runs(xp, to_xp(movie, xp, device), pp._runs([int(i) for i in indices]), 1))
        np.testing.assert_array_equal(got, np.take(movie, indices, axis=1))
        across = [int(i) % 5 for i in indices]
        got = to_numpy(pp._take_runs(xp, to_xp(movie, xp, device), pp._runs(across), 2))
        np.testing.assert_array_equal(got, np.take(movie, across, axis=2))


def test_spatial_bandpass_noop_returns_the_input(functions_h5):
    g = functions_h5["spatial_bandpass_noop"]
    stack = to_engine(g["inputs/stack"][...])
    assert pp.spatial_bandpass(stack, 3.0, math.inf, math.inf) is stack


@pytest.mark.parametrize("case, scales", [("spatial_bandpass_highpass", (1.0, 1.0)),
                                          ("spatial_bandpass_bandpass", (1.0, 1.0)),
                                          ("spatial_bandpass_ratio05", (1.0, 2.0))])
def test_test_filter_reproduces_the_reference_power_retained(functions_h5, case, scales):
    # Validates the test's own filter construction: the reference reports sum(H^2) / nf^2 of its filter.
    g = functions_h5[case]
    a = g.attrs
    H = butterworth_full_grid(32, float(a["radius"]), float(a["f_lower_scale"]), float(a["f_upper_scale"]), *scales)
    np.testing.assert_allclose(np.mean(H.astype(np.float64) ** 2), g["outputs/power_retained"][0, 0], rtol=1e-6)


def test_spatial_bandpass_ratio2_implements_the_intended_filter_not_the_reference_bug(functions_h5):
    # Spec §13 item 9: with smoothing_ratio 2 the reference computes the x frequency as s_x*k/nf - 1/2 (k on the
    # fftshift-ed grid) instead of s_x*(k/nf - 1/2); we implement s_x * f_x. Three checks:
    g = functions_h5["spatial_bandpass_ratio2"]
    a = g.attrs
    radius, lo, hi = float(a["radius"]), float(a["f_lower_scale"]), float(a["f_upper_scale"])
    stack = to_engine(g["inputs/stack"][...])  # (5, 20, 28): nf = 32
    golden = to_engine(g["outputs/out"][...])
    H_bug = butterworth_full_grid(32, radius, lo, hi, scale_x=2.0, miscentred=True)
    H_intended = butterworth_full_grid(32, radius, lo, hi, scale_x=2.0)
    # (1) the golden is the mis-centred formula (so this test's reading of the bug is right) ...
    np.testing.assert_allclose(np.mean(H_bug.astype(np.float64) ** 2), g["outputs/power_retained"][0, 0], rtol=1e-6)
    assert_matches_reference(np.real(bandpass_direct(stack, H_bug)), golden)
    # (2) ... we equal the intended filter built independently ...
    out = pp.spatial_bandpass(stack, radius, lo, hi, 2.0)
    assert_matches_reference(out, bandpass_direct(stack, H_intended))
    # (3) ... and therefore differ from the golden by far more than rounding (the bug shifts the pass band to
    # |f_x| ~ 1/4 cycles/px: measured max difference 2.2 x max|golden|).
    assert np.abs(out - golden).max() > 0.5 * np.abs(golden).max()


@pytest.mark.parametrize("ky, kx", [(1, 2), (10, 25)])  # near the high-pass and the low-pass corner
def test_spatial_bandpass_scales_a_periodic_sinusoid_by_the_frequency_response(ky, kx):
    # A 64 x 64 frame needs no padding (nf = 64), and a cosine with whole periods is an eigenfunction of the
    # circular filter: the output is H(f) times the input, with H evaluated by hand from spec §3.2.
    y, x = np.mgrid[0:64, 0:64]
    frame = np.cos(2 * np.pi * (ky * y + kx * x) / 64).astype(np.float32)
    radius, lo, hi = 3.0, 5.0, 2.0
    f = math.hypot(ky / 64, kx / 64)
    fc = 2 / (math.pi * radius)
    gain = (1 / (1 + (f / (fc * hi)) ** 8)) * (1 - 1 / (1 + (f / (fc / lo)) ** 8))
    assert 0.05 < gain < 0.95  # a frequency in the transition band, so a wrong corner would show
    out = pp.spatial_bandpass(frame, radius, lo, hi)
    np.testing.assert_allclose(out, gain * frame, atol=1e-5)  # float32 FFT of a unit-amplitude image


def test_spatial_bandpass_chunking_does_not_change_values(functions_h5):
    stack = to_engine(functions_h5["spatial_bandpass_bandpass/inputs/stack"][...])
    whole = pp.spatial_bandpass(stack, 3.0, 5.0, 2.0, chunk_frames=100)
    chunked = pp.spatial_bandpass(stack, 3.0, 5.0, 2.0, chunk_frames=2)
    np.testing.assert_array_equal(chunked, whole)


def test_spatial_bandpass_pads_symmetrically_beyond_the_frame_size():
    # 3 x 40 frames: nf = 64 asks for 30 padding rows on each side of a 3-row frame (periodic mirror).
    rng = np.random.default_rng(5)
    stack = rng.standard_normal((2, 3, 40)).astype(np.float32)
    out = pp.spatial_bandpass(stack, 2.0, 5.0, 2.0)
    np.testing.assert_allclose(out, bandpass_direct(stack, butterworth_full_grid(64, 2.0, 5.0, 2.0)), atol=1e-5)


def test_spatial_bandpass_rejects_a_non_positive_radius():
    with pytest.raises(InputError, match="radius"):
        pp.spatial_bandpass(np.zeros((1, 4, 4), np.float32), 0.0, 5.0, math.inf)


# ----------------------------------------------------------------------------------------------------------------
# cell-finding filters (§3.5)


def test_cellfind_filter_butter_is_the_golden_cellfind_bandpass(functions_h5):
    g = functions_h5["spatial_bandpass_cellfind_butter"]
    out = pp.cellfind_filter(to_engine(g["inputs/stack"][...]), "butter", 3.0)  # defaults: (inf, 2, ratio 1)
    assert_matches_reference(out, to_engine(g["outputs/out"][...]))


def test_cellfind_filter_gauss_golden(functions_h5):
    g = functions_h5["cellfind_filter_gauss"]
    out = pp.cellfind_filter(to_engine(g["inputs/stack"][...]), "gauss", float(g.attrs["radius"]))
    assert_matches_reference(out, to_engine(g["outputs/out"][...]))


def _movie(seed=0, shape=(12, 10, 11)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) + 3.0


def _gaussian(sigma, half):
    k = np.arange(-half, half + 1)
    return np.exp(-k ** 2 / (2 * sigma ** 2))


def test_cellfind_filter_gauss_non_integer_radius_rounds_the_size_up():
    # Decision (spec §13 item 10): r = 2.5 gives a 7 x 7 kernel (2 ceil(r) + 1), sigma r/2, replicate padding.
    movie = _movie()
    K = np.outer(_gaussian(1.25, 3), _gaussian(1.25, 3))
    expected = ndi.correlate(movie.astype(np.float64), (K / K.sum())[None], mode="nearest")
    np.testing.assert_allclose(pp.cellfind_filter(movie, "gauss", 2.5), expected, rtol=1e-5, atol=1e-5)


def test_cellfind_filter_gaus_is_a_3d_gaussian_with_replicate_padding():
    movie = _movie()
    sy, sx, st = 1.0, 1.5, 2.0
    t, y, x = np.meshgrid(*(np.arange(-math.ceil(2 * s), math.ceil(2 * s) + 1) for s in (st, sy, sx)),
                          indexing="ij")
    K = np.exp(-t ** 2 / (2 * st ** 2) - y ** 2 / (2 * sy ** 2) - x ** 2 / (2 * sx ** 2))
    expected = ndi.correlate(movie.astype(np.float64), K / K.sum(), mode="nearest")
    out = pp.cellfind_filter(movie, "gaus", 3.0, filter_sigma=(sy, sx, st))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_cellfind_filter_movavg_matches_matlab_convn_same():
    # r_s = 4 (even: MATLAB 'same' keeps offsets -1..+2), r_t = 3; zero padding; box mean.
    movie = _movie()
    box = np.ones((3, 4, 4)) / 48.0
    full = scipy.signal.convolve(movie.astype(np.float64), box, mode="full")
    expected = full[1:1 + 12, 2:2 + 10, 2:2 + 11]  # MATLAB 'same': start at floor(size/2) on each axis
    out = pp.cellfind_filter(movie, "movavg", 3.0, moving_radius_spatial=4.7, moving_radius_temporal=3.2)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_cellfind_filter_median_is_3x3x3_with_symmetric_padding():
    movie = _movie()
    padded = np.pad(movie, 1, mode="symmetric")
    expected = np.median(sliding_window_view(padded, (3, 3, 3)), axis=(-3, -2, -1))
    np.testing.assert_array_equal(pp.cellfind_filter(movie, "median", 3.0), expected)


def test_cellfind_filter_wiener_direct():
    movie = _movie().astype(np.float64)
    box = np.ones((1, 7, 7)) / 49
    mu = ndi.correlate(movie, box, mode="constant")
    var = ndi.correlate(movie ** 2, box, mode="constant") - mu ** 2
    noise = var.mean()
    expected = mu + np.maximum(var - noise, 0) / np.maximum(var, noise) * (movie - mu)
    out = pp.cellfind_filter(movie.astype(np.float32), "wiener", 3.0)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)  # float32 box sums of values ~3


def test_cellfind_filter_none_and_unknown():
    movie = _movie()
    np.testing.assert_array_equal(pp.cellfind_filter(movie, "none", 3.0), movie)
    with pytest.raises(ConfigError, match="cellfind_filter_type='sobel'"):
        pp.cellfind_filter(movie, "sobel", 3.0)


# ----------------------------------------------------------------------------------------------------------------
# correct_baseline (§3.3), outliers (§3.7), edges (§3.8)


def test_correct_baseline_golden(functions_h5):
    g = functions_h5["correct_baseline"]
    out = pp.correct_baseline(to_engine(g["inputs/M"][...]), float(g.attrs["tau"]))
    assert_matches_reference(out, to_engine(g["outputs/M_remove_background"][...]))


def test_correct_baseline_runs_only_with_remove_background(functions_h5):
    # The reference's default call is a no-op (spec §13 item 4): preprocess_movie calls it only on request.
    g = functions_h5["correct_baseline"]
    M = to_engine(g["inputs/M"][...])
    settings = pp.PreprocessSettings(spatial_highpass_cutoff=math.inf, skip_dff=True)
    default, _ = pp.preprocess_movie(M, settings, radius=3.0)
    np.testing.assert_array_equal(default, M)
    with_background = replace(settings, remove_background=True, avg_event_tau=float(g.attrs["tau"]))
    removed, _ = pp.preprocess_movie(M, with_background, radius=3.0)
    assert_matches_reference(removed, to_engine(g["outputs/M_remove_background"][...]))


def test_medfilt_outliers_golden(functions_h5):
    g = functions_h5["medfilt_outliers"]
    out, n_outliers = pp.medfilt_outliers(to_engine(g["inputs/M"][...]))
    assert n_outliers == int(g["outputs/num_outliers"][0, 0]) == 15  # 3 planted + 12 zero-padded border pixels
    assert_matches_reference(out, to_engine(g["outputs/M_out"][...]))


def test_medfilt_outliers_direct():
    # A constant image: the zero-padded 5 x 5 median is 0 at each corner and at the two edge pixels next to it
    # (fewer than 13 of 25 samples inside), so those 12 pixels are flagged (ratio inf) as in the golden case;
    # plus one hot pixel. Every flagged trace becomes the median of its 3 x 3 neighbourhood: 10 everywhere.
    movie = np.full((6, 9, 11), 10.0, np.float32)
    movie[:, 5, 6] = 1000.0
    out, n = pp.medfilt_outliers(movie)
    assert n == 13
    np.testing.assert_array_equal(out, np.full_like(movie, 10.0))
    assert movie[0, 5, 6] == 1000.0  # the input is not modified


def test_remove_zero_edge_pixels_golden(functions_h5):
    g = functions_h5["get_current_partition"]
    movie = to_engine(g["inputs/M_zero_edges"][...])  # zero first column and zero last row
    cropped, trims = pp.remove_zero_edge_pixels(movie)
    assert trims == tuple(int(v) for v in g["outputs/nz_top_bottom_left_right"][0]) == (0, 2, 1, 0)
    rows, cols, _ = (int(v) for v in g["outputs/size_zero_edges"][0])
    assert cropped.shape == (movie.shape[0], rows, cols)
    kept = g["outputs/fov_occupation_zero_edges"][...].astype(bool)
    np.testing.assert_array_equal(cropped, movie[:, kept].reshape(movie.shape[0], rows, cols))


def test_remove_zero_edge_pixels_sees_every_frame_chunk():
    """The profiles are taken chunk by chunk of frames: a zero column in one late frame only (past the first chunk)
    and a zero row in the last frame are trimmed, as the per-frame minimum over the whole movie says."""
    n = 2 * pp.DEFAULT_CHUNK_FRAMES + 5
    movie = np.random.default_rng(0).uniform(1.0, 2.0, (n, 150, 160)).astype(np.float32)  # enough lines that one
    movie[pp.DEFAULT_CHUNK_FRAMES + 7, :, 0] = 0.0                                   # is > 10 std off
    movie[n - 1, 149, :] = 0.0
    cropped, trims = pp.remove_zero_edge_pixels(movie)
    assert trims == (0, 2, 1, 0)
    assert cropped.shape == (n, 148, 159)


def test_remove_zero_edge_pixels_keeps_a_clean_movie():
    movie = _movie(shape=(3, 20, 30))
    cropped, trims = pp.remove_zero_edge_pixels(movie)
    assert trims == (0, 0, 0, 0)
    np.testing.assert_array_equal(cropped, movie)


# ----------------------------------------------------------------------------------------------------------------
# downsampling (§3.6)


def test_downsample_time_golden(functions_h5):
    g = functions_h5["downsample_time"]
    M3 = to_engine(g["inputs/M3"][...])
    assert_matches_reference(pp.downsample_time(M3, 2), to_engine(g["outputs/M3_df2"][...]))
    assert_matches_reference(pp.downsample_time(M3, 3), to_engine(g["outputs/M3_df3"][...]))
    M2 = np.ascontiguousarray(g["inputs/M2"][...].T)  # (pixels, frames) -> (frames, pixels)
    assert_matches_reference(pp.downsample_time(M2, 4), g["outputs/M2_df4"][...].T)


def test_downsample_space_golden(functions_h5):
    g = functions_h5["downsample_space"]
    Ms = to_engine(g["inputs/Ms"][...])
    assert_matches_reference(pp.downsample_space(Ms, 2), to_engine(g["outputs/Ms_df2"][...]))
    assert_matches_reference(pp.downsample_space(Ms, 3), to_engine(g["outputs/Ms_df3"][...]))


def test_downsampling_equals_reshape_mean():
    movie = _movie(shape=(23, 11, 14))
    expected_t = movie[:21].reshape(7, 3, 11, 14).mean(axis=1)
    np.testing.assert_allclose(pp.downsample_time(movie, 3), expected_t, rtol=1e-6)
    expected_s = movie[:, :10, :14].reshape(23, 5, 2, 7, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(pp.downsample_space(movie, 2), expected_s, rtol=1e-6)
    assert pp.downsample_time(movie, 1) is movie and pp.downsample_space(movie, 1) is movie


def test_downsampling_errors():
    movie = _movie(shape=(4, 3, 3))
    with pytest.raises(ConfigError, match="downsample_time_by"):
        pp.downsample_time(movie, 0)
    with pytest.raises(InputError, match="fewer frames"):
        pp.downsample_time(movie, 5)
    with pytest.raises(ConfigError, match="downsample_space_by"):
        pp.downsample_space(movie, 1.5)


def test_resolve_downsampling_uses_matlab_rounding():
    # 12.5 / 5 = 2.5 -> 3 and 7.5 / 5 = 1.5 -> 2 (halves away from zero; numpy's round would give 2 and 2)
    assert pp.resolve_downsampling(12.5, 7.5, downsample_space_by="auto", downsample_time_by="auto") == (3, 2)
    assert pp.resolve_downsampling(2.0, 2.0, downsample_space_by=None, downsample_time_by="") == (1, 1)
    assert pp.resolve_downsampling(12.5, 40.0) == (1, 1)  # EXTRACT's defaults are 1, not auto
    assert pp.resolve_downsampling(6.0, 10.0, downsample_space_by=2, downsample_time_by=4) == (2, 4)
    with pytest.raises(ConfigError, match="downsample_time_by must be an integer >= 1 or 'auto', got 'fast'"):
        pp.resolve_downsampling(6.0, 10.0, downsample_time_by="fast")


# ----------------------------------------------------------------------------------------------------------------
# small steps and the whole preprocessing


def test_apply_movie_mask_and_its_shape_check():
    movie = _movie(shape=(3, 4, 5))
    mask = np.zeros((4, 5), bool)
    mask[1:3, 1:4] = True
    np.testing.assert_array_equal(pp.apply_movie_mask(movie, mask), movie * mask)
    with pytest.raises(InputError, match=r"movie_mask has shape \(5, 4\) but the movie frames are \(4, 5\)"):
        pp.apply_movie_mask(movie, mask.T)


@pytest.mark.parametrize("q", [0.5, 0.2])
def test_apply_second_df_subtracts_the_temporal_quantile(q):
    movie = _movie(shape=(9, 4, 5))
    expected = movie - np.quantile(movie, q, axis=0, method="hazen")
    np.testing.assert_allclose(pp.apply_second_df(movie, q), expected, atol=1e-6)


def test_preprocess_movie_stage_golden(functions_h5):
    g = functions_h5["stage_preprocess"]
    movie = to_engine(g["inputs/M"][...])  # uint16, converted inside
    out, F = pp.preprocess_movie(movie, pp.PreprocessSettings(), radius=4.0)  # defaults: mean ΔF, high-pass cutoff 5
    assert out.dtype == np.float32 and F.shape == (32, 40)
    assert_matches_reference(out, to_engine(g["outputs/M_pre"][...]))
    assert_matches_reference(F, g["outputs/F_per_pixel"][...])


def test_preprocess_movie_step_order_with_every_option():
    rng = np.random.default_rng(7)
    movie = (100 + rng.standard_normal((30, 12, 14))).astype(np.float32)
    movie[:, 5, 6] = 1000.0  # a hot pixel
    mask = np.ones((12, 14), bool)
    mask[:, :2] = False
    settings = pp.PreprocessSettings(medfilt_outlier_pixels=True, second_df=0.5, fix_zero_FOV_strips=True)
    out, F = pp.preprocess_movie(movie, settings, radius=2.0, movie_mask=mask)
    step, _ = pp.medfilt_outliers(movie)
    step, F_expected = pp.compute_df(step)
    step = pp.spatial_bandpass(step, 2.0, 5.0, math.inf)
    step = pp.apply_second_df(pp.apply_movie_mask(step, mask), 0.5)
    np.testing.assert_array_equal(out, step)
    np.testing.assert_array_equal(F, F_expected)
    assert F[5, 6] < 200  # the hot pixel was repaired before the baseline was taken


def test_preprocess_movie_temporal_denoising_is_not_implemented_yet():
    with pytest.raises(NotImplementedYetError, match="temporal_denoising"):
        pp.preprocess_movie(_movie(), pp.PreprocessSettings(temporal_denoising=True), radius=3.0)


# ----------------------------------------------------------------------------------------------------------------
# every namespace


_CALLS = {
    "preprocess_movie": lambda m: pp.preprocess_movie(m, pp.PreprocessSettings(second_df=0.3), radius=3.0,
                                                      movie_mask=None)[0],
    "compute_df_F": lambda m: pp.compute_df(m, 0.5)[1],
    "bandpass_ratio2": lambda m: pp.spatial_bandpass(m, 3.0, 5.0, 2.0, 2.0, chunk_frames=7),
    "gauss": lambda m: pp.cellfind_filter(m, "gauss", 2.5),
    "gaus": lambda m: pp.cellfind_filter(m, "gaus", 2.0, filter_sigma=(1, 1, 2)),
    "wiener": lambda m: pp.cellfind_filter(m, "wiener", 2.0),
    "movavg": lambda m: pp.cellfind_filter(m, "movavg", 2.0),
    "median": lambda m: pp.cellfind_filter(m, "median", 2.0),
    "correct_baseline": lambda m: pp.correct_baseline(m, 0.3),
    "medfilt_outliers": lambda m: pp.medfilt_outliers(m)[0],
    "remove_zero_edge_pixels": lambda m: pp.remove_zero_edge_pixels(m)[0],
    "downsample_time": lambda m: pp.downsample_time(m, 3),
    "downsample_space": lambda m: pp.downsample_space(m, 2),
}


@pytest.mark.parametrize("name", list(_CALLS))
def test_namespaces_devices_and_dtype(namespace, name):
    xp, device = namespace
    rng = np.random.default_rng(11)
    movie = (50 + 5 * rng.standard_normal((40, 10, 13))).astype(np.float32)
    movie[:, 4, 4] = 500.0  # an outlier pixel for medfilt_outliers
    movie[:, :, 0] = 0.0  # a zero strip for remove_zero_edge_pixels
    expected = _CALLS[name](movie)
    x = to_xp(movie, xp, device)
    out = _CALLS[name](x)
    assert array_api_compat.array_namespace(out) is array_api_compat.array_namespace(x)
    assert array_api_compat.device(out) == array_api_compat.device(x)
    assert out.dtype == xp.float32
    # same float32 algorithm; FFT and reduction orders differ between libraries by a few ulp of values ~50-500
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape", [(56, 72), (58, 58), (5, 7), (33, 17), (64, 64)])
def test_spatial_bandpass_equals_the_2d_transform_of_the_padded_frames(shape):
    """The band-pass transforms axis by axis, rows before the padding repeats them and only the kept rows back: in
    NumPy the same values, bit for bit, as the 2-D transform of the whole padded frame cropped (odd and even
    paddings, padding wider than the frame, no padding)."""
    import scipy.fft

    h, w = shape
    movie = np.random.default_rng(5).standard_normal((9, h, w)).astype(np.float32)
    nf = 1 << (max(h, w) - 1).bit_length()
    padded = np.take(np.take(movie, pp._symmetric_indices(h, (nf - h) // 2), axis=1),
                     pp._symmetric_indices(w, (nf - w) // 2), axis=2)
    response = pp._butterworth_response(nf, 3.0, 10.0, 2.0, 1.0, xp=array_api_compat.array_namespace(movie),
                                        device=None)
    whole = scipy.fft.irfftn(scipy.fft.rfftn(padded, s=(nf, nf), axes=(1, 2)) * response, s=(nf, nf), axes=(1, 2))
    expected = whole[:, (nf - h) // 2:(nf - h) // 2 + h, (nf - w) // 2:(nf - w) // 2 + w]
    np.testing.assert_array_equal(pp.spatial_bandpass(movie, 3.0, 10.0, 2.0, chunk_frames=4), expected)
