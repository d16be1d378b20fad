"""Tests of cell refinement (``engine.refine``) and quality control (``engine.quality``) (spec §7, §2.2).

Golden cases of ``functions.h5``: ``solve_S_admm`` (mask, both smoothings, radius estimate), ``remove_redundant``,
``remove_redundant_merge`` (metrics, rules, merge, ``update_merged_images``), ``find_conncomp`` and
``stage_extractor`` (the whole refinement loop fed with the pack's preprocessed movie and found cells). The
reference flattens pixels column-major; every pixel axis is converted to our row-major order before the call.

Tolerances (README §4 of the reference pack): integers, flags, groups and rules exactly; direct computations
(metrics, smoothing) ``rtol = 1e-5`` (float32 reference, ~1e-7 relative), except correlation-based metrics, which the
reference accumulates in float32 over 1200 pixels or 300 frames (measured error 3e-5 absolute): ``atol = 1e-4``;
the refinement loop (iterative solvers): ``atol = 1e-3 * max|ref|`` (measured ~1e-6).

Column order: the reference re-orders its classification columns (kept cells first, then the eliminated ones, each
in input order); our records stay in input order, so the tests apply that permutation to our output.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from conftest import to_xp

from nwb_extract.config import ExtractConfig
from nwb_extract.engine import backend, noise, spatiotemporal
from nwb_extract.engine.footprints import cell_area, normalize_to_one
from nwb_extract.engine.matching import find_conncomp
from nwb_extract.engine.quality import METRIC_NAMES, RULE_NAMES, remove_redundant, update_merged_images
from nwb_extract.engine.refine import (RefineSettings, estimate_avg_radius, estimate_radius, make_mask, refine,
                                       smooth_images, smooth_traces)
from nwb_extract.errors import InputError

#: metrics that are correlations accumulated in float32 by the reference (see module docstring)
CORRELATION_METRICS = {"T_max_corr", "S_max_corr", "T_dup_val"}


@pytest.fixture(scope="module")
def functions(reference_dir):
    with h5py.File(reference_dir / "functions.h5", "r") as f:
        yield f


def row_major(a, shape):
    """(P, K) with column-major pixels of ``shape`` -> row-major pixels."""
    h, w = shape
    return np.ascontiguousarray(a.reshape(h, w, -1, order="F").reshape(h * w, -1))


def reference_order(is_bad):
    """The reference's column permutation: kept cells first, then eliminated ones, each in input order."""
    return np.r_[np.flatnonzero(~is_bad), np.flatnonzero(is_bad)]


def assert_metrics(ours, ref):
    for i, name in enumerate(METRIC_NAMES):
        if name in CORRELATION_METRICS:
            np.testing.assert_allclose(ours[i], ref[i], rtol=0, atol=1e-4, err_msg=name)
        else:
            np.testing.assert_allclose(ours[i], ref[i], rtol=1e-5, atol=1e-6, err_msg=name)


# ----------------------------------------------------------------------------------------------------------------
# §2.2 helpers


def test_make_mask_equals_dilating_the_whole_image(namespace):
    """make_mask dilates each image only around its seeds; cells at the corners and edges, an empty image and a
    scattered one give the masks of a whole-image dilation (scipy.ndimage, zero padding)."""
    import scipy.ndimage as ndi

    from nwb_extract.engine.morphology import disk_footprint

    xp, device = namespace
    h, w = 20, 27
    images = np.zeros((5, h, w), np.float32)
    images[0, 0:2, 0:3] = 1.0        # top-left corner
    images[1, 18:20, 24:27] = 0.5    # bottom-right corner
    images[2, 9, 13] = 1.0           # one interior pixel
    images[4] = np.random.default_rng(0).random((h, w)) > 0.97  # scattered pixels; image 3 stays empty
    S = images.reshape(5, -1).T
    disk = np.asarray(backend.to_numpy(disk_footprint(4)), dtype=bool)
    expected = np.stack([ndi.binary_dilation(img > 0.1, structure=disk) for img in images]).reshape(5, -1).T
    got = backend.to_numpy(make_mask(to_xp(np.ascontiguousarray(S), xp, device), (h, w), 4))
    np.testing.assert_array_equal(got, expected)
    assert not got[:, 3].any() and got[:, 0].any()


def test_spatial_corruption_box_means_equal_the_whole_frame_filter(namespace):
    """spatial_corruption filters each image on a crop around its non-zero pixels: on every non-zero pixel the 4 x 4
    box means (offsets -1..+2, replicate padding) are those of filtering the whole frame, for cells at the four
    edges, an interior one, an empty image and a scattered one; S_corruption follows from them by its definition
    (the metric golden checks it against the reference)."""
    import scipy.ndimage as ndi

    from nwb_extract.engine import quality

    xp, device = namespace
    h, w = 21, 26
    rng = np.random.default_rng(3)
    images = np.zeros((6, h, w), np.float32)
    images[0, 0:3, 0:4] = rng.random((3, 4))          # top-left corner
    images[1, 18:21, 23:26] = rng.random((3, 3))      # bottom-right corner
    images[2, 8:12, 10:14] = rng.random((4, 4))       # interior
    images[3, 0:21, 5] = rng.random(21)               # a full column: top and bottom edges
    images[5] = rng.random((h, w)) * (rng.random((h, w)) > 0.95)  # scattered pixels; image 4 stays empty
    S = np.ascontiguousarray(images.reshape(6, -1).T)
    full = np.stack([ndi.correlate(img, np.full((4, 4), 1 / 16, np.float32), mode="nearest", origin=(-1, -1))
                     for img in images]).reshape(6, -1).T
    got = backend.to_numpy(quality._box_means_near_support(to_xp(S, xp, device), (h, w)))
    support = S != 0
    np.testing.assert_array_equal(got[support], full[support])
    corruption = backend.to_numpy(quality.spatial_corruption(to_xp(S, xp, device), (h, w)))
    inside = S > 1e-3
    count = inside.sum(axis=0)
    for k in (0, 1, 2, 3, 5):
        values = S[inside[:, k], k]
        mean = values.mean(dtype=np.float64)
        local = full[inside[:, k], k]
        v_local = np.sum((values - local) ** 2 / np.maximum(local, 0.01)) / count[k]
        v_global = np.sum((values - mean) ** 2 / max(mean, 0.01)) / count[k]
        np.testing.assert_allclose(corruption[k], v_local / v_global, rtol=1e-4)


def test_mask_smoothing_radius_golden(functions):
    g = functions["solve_S_admm"]
    shape = (30, 40)
    S_in = row_major(g["inputs/S_in"][...], shape)
    S_out = row_major(g["outputs/S_out"][...], shape)
    mask = make_mask(S_in, shape, 4)
    np.testing.assert_array_equal(mask, row_major(g["outputs/mask"][...], shape).astype(bool))
    median = smooth_images(S_out, shape, method="median")
    np.testing.assert_allclose(median, row_major(g["outputs/S_smooth_median"][...], shape), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(normalize_to_one(median),
                               row_major(g["outputs/S_smooth_median_normalized"][...], shape), rtol=1e-5, atol=1e-7)
    gauss = smooth_images(S_out, shape, method="gaussian", radius=round(4 / 3))
    np.testing.assert_allclose(gauss, row_major(g["outputs/S_smooth_gauss"][...], shape), rtol=1e-5, atol=1e-7)
    assert estimate_avg_radius(S_out) == pytest.approx(float(g["outputs/avg_radius_estimate"][0, 0]), rel=1e-12)


def test_estimate_radius_uses_the_first_cells_and_averages():
    S = np.zeros((100, 7), np.float32)
    for k in range(7):
        S[: 4 * (k + 1), k] = 1.0  # areas 4, 8, ..., 28
    expected = (np.median(np.sqrt(np.array([4, 8, 12, 16, 20]) / np.pi)) + 3.0) / 2  # K_sel = 5
    assert estimate_radius(S, 3.0) == pytest.approx(expected)
    assert np.isnan(estimate_radius(S[:, :0], 3.0))
    np.testing.assert_array_equal(cell_area(S), [4, 8, 12, 16, 20, 24, 28])


def test_median_smoothing_zeroes_images_without_support_and_checks_shape():
    S = np.zeros((20, 2), np.float32)
    S[5, 0] = 0.05  # nothing above 0.1
    S[[6, 7, 8, 10, 11, 12], 1] = 1.0
    out = smooth_images(S, (4, 5))
    assert not out[:, 0].any()
    with pytest.raises(InputError, match="frame_shape"):
        smooth_images(S, (5, 5))
    with pytest.raises(ValueError, match="method"):
        smooth_images(S, (4, 5), method="mean")


def test_smooth_traces_is_circular_121_filter_with_even_padding():
    T = np.array([[0.0, 4.0, 0.0, 0.0, 8.0]], np.float32)  # odd length: a zero is appended before filtering
    np.testing.assert_allclose(smooth_traces(T), [[1.0, 2.0, 1.0, 2.0, 4.0]])


# ----------------------------------------------------------------------------------------------------------------
# §7.2-7.4 golden


@pytest.mark.parametrize("case", ["remove_redundant", "remove_redundant_merge"])
def test_remove_redundant_golden(functions, case):
    g = functions[case]
    shape = (30, 40)
    S = row_major(g["inputs/S"][...], shape)
    T = g["inputs/T"][...]
    thresholds = json.loads(g.attrs["thresholds_json"])
    S_smooth = normalize_to_one(smooth_images(S, shape))
    np.testing.assert_allclose(S_smooth, row_major(g["outputs/S_smooth"][...], shape), rtol=1e-5, atol=1e-7)
    result = remove_redundant(S, S_smooth, T, shape, thresholds)
    is_bad = np.asarray(result.is_bad)
    np.testing.assert_array_equal(is_bad, g["outputs/is_bad"][0].astype(bool))
    order = reference_order(is_bad)
    assert_metrics(np.asarray(result.metrics)[:, order], g["outputs/metrics"][...])
    np.testing.assert_array_equal(np.asarray(result.is_attr_bad)[:, order], g["outputs/is_attr_bad"][...].astype(bool))
    assert result.cell_ids == tuple(range(S.shape[1]))
    if case == "remove_redundant":
        # one all-zero smoothed image makes corr(S_smooth) NaN: no trace duplicates, T_dup_val 0 (quirk §5.3)
        assert result.merge_groups == ()
        assert result.rules() == ("S_duplicate", None, "S_tiny", "S_eccent", "T_zeroed", "S_tiny", None)
    else:
        assert result.merge_groups == (tuple(int(i) - 1 for i in g["outputs/merge_cc_1"][0]),)
        assert result.merge_groups[0][0] == int(g["outputs/merge_idx_merged"][0, 0]) - 1
        assert result.rules() == ("T_duplicate", None, "S_eccent", "T_zeroed", None)
        merged = update_merged_images(S, T, result.merge_groups)
        ref = row_major(g["outputs/S_after_merge"][...], shape)
        np.testing.assert_allclose(merged, ref, rtol=1e-5, atol=1e-6)


def test_individual_metrics_golden(functions):
    """The metric functions in input order (``outputs/trace_snr`` etc. are not re-ordered)."""
    g = functions["remove_redundant"]
    S = row_major(g["inputs/S"][...], (30, 40))
    T = g["inputs/T"][...]
    result = remove_redundant(S, normalize_to_one(smooth_images(S, (30, 40))), T, (30, 40),
                              json.loads(g.attrs["thresholds_json"]))
    rows = {name: np.asarray(result.metric(name)) for name in METRIC_NAMES}
    for name, key in [("T_maxval", "trace_snr"), ("T_corruption", "temporal_corruption"),
                      ("S_corruption", "spat_corruption"), ("S_circularity", "circularity"),
                      ("S_eccent", "eccentricity"), ("S_area_2", "cell_areas_0p1"), ("S_area_1", "cell_areas_0p2")]:
        np.testing.assert_allclose(rows[name], g["outputs/" + key][...].ravel(), rtol=1e-5, err_msg=name)


def test_find_conncomp_golden(functions):
    g = functions["find_conncomp"]
    X = g["inputs/X"][...]
    groups, A = find_conncomp(X, float(g.attrs["threshold"]))
    np.testing.assert_array_equal(np.asarray(A), g["outputs/A"][...].astype(bool))
    assert groups == [tuple(int(v) - 1 for v in g[f"outputs/cc_{i}"][0]) for i in (1, 2)]
    groups2, A2 = find_conncomp(X, float(g.attrs["threshold"]), g["inputs/A2"][...] > 0)
    np.testing.assert_array_equal(np.asarray(A2), g["outputs/A_with_A2"][...] > 0)
    assert groups2 == [tuple(int(v) - 1 for v in g[f"outputs/cc_with_A2_{i}"][0]) for i in (1, 2)]


# ----------------------------------------------------------------------------------------------------------------
# §7.3 hand-made cells, one per rule

SHAPE = (60, 60)
N_FRAMES = 300
RADIUS = 4.0


def _blob(center, sigma_r, sigma_c=None, angle=0.0):
    sigma_c = sigma_r if sigma_c is None else sigma_c
    rr, cc = np.mgrid[: SHAPE[0], : SHAPE[1]].astype(np.float64)
    dr, dc = rr - center[0], cc - center[1]
    u = np.cos(angle) * dr + np.sin(angle) * dc
    v = -np.sin(angle) * dr + np.cos(angle) * dc
    img = np.exp(-0.5 * ((u / sigma_r) ** 2 + (v / sigma_c) ** 2))
    img[img < 0.05] = 0
    return (img / img.max()).astype(np.float32).ravel()


def _spiky_trace(rng, rate=0.03, tau=6.0):
    spikes = (rng.random(N_FRAMES) < rate) * (1 + rng.random(N_FRAMES))
    kernel = np.exp(-np.arange(30) / tau)
    return (np.convolve(spikes, kernel)[:N_FRAMES] + 0.02 * rng.standard_normal(N_FRAMES)).astype(np.float32)


def _classify(test_image, test_trace, rng):
    """Two good, distant cells plus the test cell; returns the rules of the three."""
    S = np.stack([_blob((12, 12), 2.0), _blob((12, 46), 2.2), test_image], axis=1)
    T = np.stack([_spiky_trace(rng), _spiky_trace(rng), test_trace])
    thresholds = ExtractConfig().thresholds.to_dict()
    area = np.pi * RADIUS ** 2
    thresholds.update(size_lower_limit=0.1 * area, size_upper_limit=10 * area)
    S_smooth = normalize_to_one(smooth_images(S, SHAPE))
    return remove_redundant(S, S_smooth, T, SHAPE, thresholds).rules()


def _speckled():
    """A bright core plus isolated single-pixel specks of the same brightness on a diagonal lattice."""
    rng = np.random.default_rng(7)
    rr, cc = np.mgrid[: SHAPE[0], : SHAPE[1]]
    d2 = (rr - 44) ** 2 + (cc - 30) ** 2
    img = np.zeros(SHAPE)
    core = d2 <= 3.5 ** 2
    img[core] = 0.8 + 0.2 * rng.random(int(core.sum()))
    img[(d2 >= 36) & (d2 <= 121) & ((rr + cc) % 4 == 0) & ((rr - cc) % 4 == 0)] = 0.9
    return img.astype(np.float32).ravel()


def _huge():
    rr, cc = np.mgrid[: SHAPE[0], : SHAPE[1]]
    return (((rr - 38) ** 2 + (cc - 30) ** 2) <= 15 ** 2).astype(np.float32).ravel()  # ~700 px > 10 pi r^2 = 503


def _tiny():
    img = np.zeros(SHAPE, np.float32)
    img[44, 30] = 1.0
    img[44, 31] = 0.5
    return img.ravel()


@pytest.mark.parametrize("name, image, trace, rule", [
    ("good", lambda: _blob((44, 30), 2.0), "spiky", None),
    ("tiny", _tiny, "spiky", "S_tiny"),
    ("huge", _huge, "spiky", "S_huge"),
    ("elongated", lambda: _blob((44, 30), 1.2, 9.0, angle=0.5), "spiky", "S_eccent"),
    ("noise_only_trace", lambda: _blob((44, 30), 2.0), "noise", "T_zeroed"),
    ("speckled", _speckled, "spiky", "S_poor"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_each_rule_on_a_hand_made_cell(name, image, trace, rule):
    rng = np.random.default_rng(1)
    test_trace = _spiky_trace(rng) if trace == "spiky" else np.abs(rng.standard_normal(N_FRAMES)).astype(np.float32)
    assert _classify(image(), test_trace, np.random.default_rng(2)) == (None, None, rule)


def test_duplicate_pair_keeps_the_higher_index_and_merges():
    rng = np.random.default_rng(3)
    t0 = _spiky_trace(rng)
    img = _blob((30, 30), 2.5)
    shifted = np.roll(img.reshape(SHAPE), 1, axis=1).ravel()
    S = np.stack([img, _blob((10, 10), 2.0), shifted], axis=1)
    T = np.stack([t0, _spiky_trace(rng), 0.9 * t0])
    thresholds = ExtractConfig().thresholds.to_dict()
    thresholds.update(size_lower_limit=0.1 * np.pi * 16, size_upper_limit=10 * np.pi * 16)
    result = remove_redundant(S, normalize_to_one(smooth_images(S, SHAPE)), T, SHAPE, thresholds)
    # the pair forms one trace-duplicate group and one image-duplicate group; the hub (lower index, tie) goes
    assert result.merge_groups == ((2, 0),)
    assert result.rules() == ("T_duplicate", None, None)
    flags = np.asarray(result.is_attr_bad)
    assert flags[RULE_NAMES.index("S_duplicate"), 0] and not flags[:, 2].any()
    merged = update_merged_images(S, T, result.merge_groups)
    expected = img * np.linalg.norm(t0) + shifted * np.linalg.norm(0.9 * t0)
    np.testing.assert_allclose(merged[:, 2], expected / expected.max(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(merged[:, :2], S[:, :2])


def test_st_check_needs_the_movie_and_flags_a_trace_explained_by_its_surround():
    """With ``low_ST_index_thresh`` set the ST rows are computed and ``ST_spurious`` applies (§7.3); without the
    S-step projections the check cannot run and says so. Cell 0's surround carries exactly its activity (ST2 ~ 0,
    flagged), cell 1's surround is silent (ST2 ~ 1, kept); the ST metrics themselves are tested in
    tests/test_spatiotemporal.py."""
    rng = np.random.default_rng(0)
    S = np.stack([_blob((12, 12), 2.0), _blob((40, 40), 2.0)], axis=1)
    T = np.stack([_spiky_trace(rng), _spiky_trace(rng)])
    surround = ((np.stack([_blob((12, 12), 5.0), _blob((40, 40), 5.0)], axis=1) > 0) & (S <= 0.01)).astype(np.float32)
    Mt = (T.T @ S.T).astype(np.float32)
    Mt += np.outer(T[0], surround[:, 0])  # cell 0's transients also fill its surround
    st = spatiotemporal.SpatioTemporalInputs(Mt, (Mt @ S).T, (Mt @ surround).T, surround, RADIUS)
    thresholds = ExtractConfig(thresholds={"low_ST_index_thresh": 0.5}).thresholds.to_dict()
    area = np.pi * RADIUS ** 2
    thresholds.update(size_lower_limit=0.1 * area, size_upper_limit=10 * area)
    S_smooth = normalize_to_one(smooth_images(S, SHAPE))
    with pytest.raises(InputError, match="low_ST_index_thresh"):
        remove_redundant(S, S_smooth, T, SHAPE, thresholds)
    record = remove_redundant(S, S_smooth, T, SHAPE, thresholds, st=st)
    assert record.rules() == ("ST_spurious", None)
    assert record.metric("ST2_index_4")[0] < 0.1 < 0.9 < record.metric("ST2_index_4")[1]
    off = remove_redundant(S, S_smooth, T, SHAPE, ExtractConfig().thresholds.to_dict() | {
        "size_lower_limit": 0.1 * area, "size_upper_limit": 10 * area}, st=st)
    assert off.rules() == (None, None) and np.all(np.asarray(off.metrics)[11:29] == 1)  # disabled: ST rows are 1


# ----------------------------------------------------------------------------------------------------------------
# §7.1 the loop


def test_refine_golden_stage_extractor(functions):
    """The pack's tiny pipeline: refinement from the found cells on the preprocessed movie (all 5 cells kept)."""
    g = functions["stage_extractor"]
    out = g["outputs"]
    shape = (32, 40)
    M = functions["stage_preprocess/outputs/M_pre"][...]
    Mt = np.ascontiguousarray(M.transpose(2, 0, 1).reshape(M.shape[2], -1))
    S0 = row_major(out["S_found"][...], shape)
    radius = estimate_radius(S0, 4.0)
    assert radius == pytest.approx(json.loads(g.attrs["effective_config_json"])["avg_cell_radius"], rel=1e-12)
    kappa = 0.7 * float(backend.median(noise.estimate_noise_std(Mt, axis=0)))
    cfg = ExtractConfig(**{k: v for k, v in json.loads(g.attrs["config_json"]).items()
                           if k in ("avg_cell_radius", "max_iter", "adaptive_kappa")}).resolved()
    res = refine(S0, out["T_found"][...], Mt, RefineSettings.from_config(cfg), radius=radius, kappa=kappa,
                 frame_shape=shape)
    assert (res.iterations, res.stop_reason, res.converged_early) == (6, "max_iter", False)
    assert res.cell_ids == (0, 1, 2, 3, 4) and res.bad_rules == () and res.S_bad.shape == (32 * 40, 0)
    ref_S = out["spatial_weights"][...].reshape(32 * 40, -1)  # MATLAB rows x cols x cells -> row-major pixels
    np.testing.assert_allclose(res.S, ref_S, rtol=0, atol=1e-3 * np.abs(ref_S).max())
    for key in ("S_change", "T_change"):
        ref = out[key][...]
        np.testing.assert_allclose(getattr(res, key), ref, rtol=0, atol=1e-3 * np.abs(ref).max(), err_msg=key)
    assert len(res.classifications) == 6
    for i, record in enumerate(res.classifications):
        ref = out[f"iter{i + 1}_metrics"][...] if i < 5 else out["cellcheck_metrics"][...]
        assert not np.asarray(record.is_bad).any()
        for j, name in enumerate(METRIC_NAMES):  # stage tolerance: the metrics follow the iterative solvers
            np.testing.assert_allclose(np.asarray(record.metrics)[j], ref[j], rtol=1e-3, atol=1e-4, err_msg=name)
    np.testing.assert_array_equal(np.stack([res.metrics[n] for n in METRIC_NAMES])[3:7],
                                  out["cellcheck_metrics"][...][3:7])


def _synthetic_movie(seed=0, shape=(40, 40), n=300, noise_std=0.02):
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    centres = [(10, 10), (12, 28), (28, 18)]
    S = []
    for r0, c0 in centres:
        img = np.exp(-((rr - r0) ** 2 + (cc - c0) ** 2) / (2 * 2.0 ** 2))
        img[img < 0.05] = 0
        S.append(img.ravel())
    S = np.stack(S, axis=1).astype(np.float32)
    T = np.stack([_spike_train(rng, n) for _ in centres]).astype(np.float32)
    Mt = (T.T @ S.T + noise_std * rng.standard_normal((n, S.shape[0]))).astype(np.float32)
    return S, T, Mt, rng


def _spike_train(rng, n):
    """Sparse transients (rate 0.015, decay 10 frames): trace SNR (T_maxval) well above T_min_snr = 7."""
    spikes = (rng.random(n) < 0.015) * (1 + rng.random(n))
    return np.convolve(spikes, np.exp(-np.arange(40) / 10.0))[:n]


def test_refine_removes_duplicate_and_noise_blob():
    S_true, T_true, Mt, rng = _synthetic_movie()
    shape = (40, 40)
    blob = np.roll(np.roll(S_true[:, 0].reshape(shape), 22, axis=0), 22, axis=1).ravel()  # empty region
    duplicate = np.roll(S_true[:, 0].reshape(shape), 1, axis=1).ravel()
    S0 = np.stack([S_true[:, 0], S_true[:, 1], S_true[:, 2], duplicate, blob], axis=1)
    T0 = np.vstack([T_true, 0.9 * T_true[:1], np.abs(rng.standard_normal((1, T_true.shape[1])))]).astype(np.float32)
    cfg = ExtractConfig(avg_cell_radius=4, max_iter=4, max_iter_T=50, max_iter_S=50).resolved()
    kappa = 0.7 * float(np.median(noise.estimate_noise_std(Mt, axis=0)))
    res = refine(S0, T0, Mt, RefineSettings.from_config(cfg), radius=4.0, kappa=kappa, frame_shape=shape)
    rules = dict(zip(res.bad_cell_ids, res.bad_rules))
    assert rules[4] == "T_zeroed"
    # of the symmetric duplicate pair (0, 3) exactly one survives: the higher index (reference quirk §5.4)
    assert set(res.cell_ids) == {1, 2, 3} and rules[0] in ("T_duplicate", "S_duplicate")
    assert res.S.shape == (1600, 3) and res.T.shape == (3, 300) and res.S_bad.shape == (1600, 2)
    assert set(res.metrics) == set(METRIC_NAMES) and all(v.shape == (3,) for v in res.metrics.values())
    for k, cell in enumerate(res.cell_ids):
        truth = S_true[:, 0 if cell == 3 else cell]
        assert np.corrcoef(res.S[:, k], truth)[0, 1] > 0.95
        assert np.corrcoef(res.T[k], T_true[0 if cell == 3 else cell])[0, 1] > 0.95


def test_refine_hyperparameter_tuning_and_skipped_checks():
    S_true, T_true, Mt, _ = _synthetic_movie(seed=1, n=200)
    base = dict(avg_cell_radius=4, max_iter=3, max_iter_T=20, max_iter_S=20)
    settings = RefineSettings.from_config(ExtractConfig(hyperparameter_tuning_flag=True, **base).resolved())
    tuning = refine(S_true, T_true, Mt, settings, radius=4.0, kappa=0.05, frame_shape=(40, 40))
    assert (tuning.iterations, tuning.stop_reason, len(tuning.classifications)) == (1, "hyperparameter_tuning", 1)
    assert not np.asarray(tuning.classifications[0].is_attr_bad).any()
    settings = RefineSettings.from_config(ExtractConfig(num_iter_stop_quality_checks=[1, 3], **base).resolved())
    skipped = refine(S_true, T_true, Mt, settings, radius=4.0, kappa=0.05, frame_shape=(40, 40))
    # iteration 2 runs quality control; iteration 3 (the last, skipped) records the tuning metrics
    assert skipped.iterations == 3 and len(skipped.classifications) == 2
    assert np.asarray(skipped.S_change)[:, :3].all()


def test_refine_early_convergence_and_zero_cells():
    S_true, T_true, Mt, _ = _synthetic_movie(seed=2, noise_std=0.0, n=200)
    cfg = ExtractConfig(avg_cell_radius=4, max_iter=6, max_iter_T=30, max_iter_S=30, TOL_main=0.5).resolved()
    res = refine(S_true, T_true, Mt, RefineSettings.from_config(cfg), radius=4.0, kappa=0.05, frame_shape=(40, 40))
    assert res.converged_early and res.stop_reason == "converged" and res.iterations == 2
    empty = refine(S_true[:, :0], T_true[:0], Mt, RefineSettings.from_config(cfg), radius=4.0, kappa=0.05,
                   frame_shape=(40, 40))
    assert (empty.stop_reason, empty.iterations, empty.S.shape, empty.metrics) == ("no_cells", 1, (1600, 0), {})


def test_refine_namespaces_agree_with_numpy(namespace):
    xp, device = namespace
    rng = np.random.default_rng(4)
    rr, cc = np.mgrid[:20, :24]
    S0 = np.stack([np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / 8.0).ravel() for r, c in ((6, 6), (12, 16))], 1)
    S0 = np.where(S0 < 0.05, 0, S0).astype(np.float32)
    T0 = np.stack([_spike_train(rng, 120) for _ in range(2)]).astype(np.float32)
    Mt = (T0.T @ S0.T + 0.05 * rng.standard_normal((120, 480))).astype(np.float32)
    settings = RefineSettings.from_config(
        ExtractConfig(avg_cell_radius=3, max_iter=2, max_iter_T=20, max_iter_S=20).resolved())
    ref = refine(S0, T0, Mt, settings, radius=3.0, kappa=0.035, frame_shape=(20, 24))
    res = refine(to_xp(S0, xp, device), to_xp(T0, xp, device), to_xp(Mt, xp, device), settings, radius=3.0, kappa=0.035,
                 frame_shape=(20, 24))
    assert backend.get_namespace(res.S) is backend.get_namespace(to_xp(S0, xp, device))
    assert res.cell_ids == ref.cell_ids and len(res.classifications) == 2
    for key in ("S", "T", "S_smooth", "S_change", "T_change"):
        np.testing.assert_allclose(backend.to_numpy(getattr(res, key)), getattr(ref, key), rtol=1e-5,
                                   atol=1e-5 * max(float(np.abs(getattr(ref, key)).max()), 1e-12), err_msg=key)
    np.testing.assert_allclose(backend.to_numpy(res.classifications[-1].metrics), ref.classifications[-1].metrics,
                               rtol=1e-5, atol=1e-6)
