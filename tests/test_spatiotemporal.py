"""Tests of nwb_extract.engine.spatiotemporal: the spatio-temporal (ST) quality metrics (spec §7.6, §7.2, §7.3).

The reference pack has no golden case for the ST metrics (EXTRACT disables them by default), so the tests use
synthetic cells whose answer is known by construction: a clean cell (movie = S T + small noise, silent surround)
scores at the good end (ST1 ~ 0, ST2 ~ ST3 ~ 1, ST_corr ~ 1); a component whose transients fill its surround, or
whose image does not match where the movie is active, scores at the bad end. Bookkeeping (events, MATLAB's Hazen
quantile with NaN ignored, the S-step scale fix of spec §13 item 8) is checked on hand-made numbers.

Tolerances: metrics of the noisy synthetic movies are bounded (not equated) with margins far wider than the noise
effect (noise 0.01 against transient peaks of 1-2, see each test); exact hand computations use ``rtol = 1e-6``
(float32 inputs, float64 sums); namespaces agree with NumPy to ``rtol = atol = 1e-5`` (float32 reductions in
possibly another summation order).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_xp

import nwb_extract
from nwb_extract.engine import backend, spatiotemporal
from nwb_extract.engine.footprints import normalize_to_one
from nwb_extract.engine.quality import METRIC_NAMES, quality_metrics
from nwb_extract.engine.refine import smooth_images
from nwb_extract.engine.spatiotemporal import (CORR_QUANTILES, INDEX_QUANTILES, SpatioTemporalInputs,
                                               inputs_from_s_step, residual_indices, spatiotemporal_metrics,
                                               st_correlation)
from nwb_extract.engine.tiled import solve_S
from nwb_extract.errors import InputError
from nwb_extract.simulate import simulate_2p

SHAPE = (32, 32)
N = 400
RADIUS = 3.0
ST_NAMES = [name for name in METRIC_NAMES if name.startswith("ST")]


def _blob(center, sigma=1.8):
    rr, cc = np.mgrid[: SHAPE[0], : SHAPE[1]]
    img = np.exp(-((rr - center[0]) ** 2 + (cc - center[1]) ** 2) / (2 * sigma ** 2))
    img[img < 0.05] = 0
    return (img / img.max()).astype(np.float32).ravel()


def _ring(image, outer=4):
    """Surround image: pixels within ``outer`` px of the cell support but outside it (value 1)."""
    support = image.reshape(SHAPE) > 0
    rr, cc = np.nonzero(support)
    grid_r, grid_c = np.mgrid[: SHAPE[0], : SHAPE[1]]
    near = np.zeros(SHAPE, bool)
    for r, c in zip(rr, cc):
        near |= (np.abs(grid_r - r) <= outer) & (np.abs(grid_c - c) <= outer)
    return (near & ~support).astype(np.float32).ravel()


def _transients(rng, rate=0.02, tau=8.0):
    spikes = (rng.random(N) < rate) * (1 + rng.random(N))
    return np.convolve(spikes, np.exp(-np.arange(50) / tau))[:N].astype(np.float32)


def _inputs(S, surround, Mt, radius=RADIUS):
    """ST inputs as the S-step gives them after the scale fix: projections of the movie on the images."""
    return SpatioTemporalInputs(Mt, (Mt @ S).T.copy(), (Mt @ surround).T.copy(), surround, radius)


def _table(S, T, inputs):
    return dict(zip(ST_NAMES, np.asarray(spatiotemporal_metrics(S, T, inputs, SHAPE))))


@pytest.fixture(scope="module")
def clean():
    """Two separated cells; the movie is exactly S T plus white noise of std 0.01 (peaks 1-4)."""
    rng = np.random.default_rng(0)
    S = np.stack([_blob((9, 9)), _blob((22, 22))], axis=1)
    T = np.stack([_transients(rng), _transients(rng)])
    Mt = (T.T @ S.T + 0.01 * rng.standard_normal((N, S.shape[0]))).astype(np.float32)
    surround = np.stack([_ring(S[:, 0]), _ring(S[:, 1])], axis=1)
    return S, T, Mt, surround, rng


def test_clean_cell_scores_at_the_good_end(clean):
    S, T, Mt, surround, _ = clean
    table = _table(S, T, _inputs(S, surround, Mt))
    assert set(table) == set(ST_NAMES) and all(v.shape == (2,) for v in table.values())
    # ST1: the image region has no activity beyond the trace (noise 0.01 / peaks >= 1: ratios of a few %)
    assert np.all(table["ST1_index_3"] < 0.05) and np.all(table["ST1_index_5"] < 0.2)
    # ST2 / ST3: the surround is silent, so nearly all of the trace is the cell's own
    assert np.all(table["ST2_index_4"] > 0.95) and np.all(table["ST3_index_3"] > 0.9)
    # ST_corr: the movie's correlation-with-trace image is the cell image
    assert np.all(table["ST_corr_1"] > 0.9)
    assert all(np.all(np.diff(np.stack([table[f"ST{j}_index_{i}"] for i in range(1, 6)]), axis=0) >= 0)
               for j in (1, 2, 3)), "quantile rows must be non-decreasing"


def test_trace_explained_by_its_surround_scores_at_the_bad_end(clean):
    """Cell 0's transients also fill its whole surround (a piece of a larger active structure, or neuropil): ST2
    and ST3 collapse to ~0. Cell 1's image region carries twice the activity its trace explains (a second source
    on the same pixels firing with it): ST1, the unexplained activity per unit of trace, becomes ~1."""
    S, T, Mt, surround, _ = clean
    spurious = Mt + np.outer(T[0], surround[:, 0]) + np.outer(T[1], S[:, 1])
    table = _table(S, T, _inputs(S, surround, spurious))
    assert table["ST2_index_4"][0] < 0.1 and table["ST3_index_3"][0] < 0.1
    assert table["ST2_index_4"][1] > 0.95  # cell 1's surround is still silent
    assert table["ST1_index_1"][1] > 0.9 and table["ST1_index_5"][0] < 0.2


def test_image_that_does_not_match_the_movie_activity_has_low_st_corr(clean):
    """Cell 0's trace drives pixels 10 px away from its image: inside the image's box the movie holds only noise,
    so the per-event correlation with the image is noise-level (|r| ~ 1/sqrt(box pixels) ~ 0.06)."""
    S, T, Mt, _, rng = clean
    elsewhere = np.stack([np.roll(S[:, 0].reshape(SHAPE), 10, axis=1).ravel(), S[:, 1]], axis=1)
    movie = (T.T @ elsewhere.T + 0.01 * rng.standard_normal((N, S.shape[0]))).astype(np.float32)
    corr = np.asarray(st_correlation(S, T, movie, SHAPE, RADIUS))
    assert corr.shape == (len(CORR_QUANTILES), 2)
    assert np.all(np.abs(corr[:, 0]) < 0.4) and corr[0, 1] > 0.9


def test_residual_indices_by_hand_hazen_quantiles_and_ignored_nan():
    """One single-pixel cell (|S| = max S = 1). Events of T > 0.5 max = 2: frames 5-6 and 9-10 (T = 2 is not
    above). Event 1: T_in exceeds T by 2 per frame -> ST1 ratio 4/8; event 2: T_in = 0 -> ST1 ratio 0, and its
    ST3 ratio is 0/0, which the quantile ignores (MATLAB). The surround image is zero -> T_out terms are 0 and
    ST2 = ST3 = 1."""
    T = np.array([[0, 2, 2, 0, 0, 4, 4, 0, 0, 3, 3, 0]], np.float32)
    T_in = T.copy()
    T_in[0, 5:7] += 2
    T_in[0, 9:11] = 0
    S = np.ones((1, 1), np.float32)
    out = np.asarray(residual_indices(S, T, T_in, np.zeros_like(T), np.zeros_like(S)))
    assert out.shape == (15, 1)
    expected_st1 = np.quantile([0.5, 0.0], INDEX_QUANTILES, method="hazen")  # MATLAB quantile
    np.testing.assert_allclose(out[:5, 0], expected_st1, rtol=1e-6)
    np.testing.assert_allclose(out[5:, 0], 1.0, rtol=1e-6)


def test_per_cell_quantiles_match_numpy_hazen_with_nan_ignored():
    """The per-cell quantile (MATLAB ``quantile``: Hazen, NaN ignored, NaN for no value) against
    ``numpy.nanquantile(method='hazen')`` on ragged random lists (1-6 values, some NaN, one cell without values,
    one with only NaN); float64 throughout, so rtol = 1e-12."""
    rng = np.random.default_rng(3)
    counts = [3, 0, 1, 6, 2, 4]
    values = [rng.random(c) for c in counts]
    values[3][[1, 4]] = np.nan
    values[4][:] = np.nan
    flat = np.concatenate(values)
    cell = np.repeat(np.arange(len(counts)), counts)
    out = np.asarray(spatiotemporal._quantiles_by_cell(flat, cell, len(counts), INDEX_QUANTILES))
    for k, v in enumerate(values):
        expected = np.full(len(INDEX_QUANTILES), np.nan) if np.isnan(v).all() else \
            np.nanquantile(v, INDEX_QUANTILES, method="hazen")
        np.testing.assert_allclose(out[:, k], expected, rtol=1e-12, err_msg=f"cell {k}")


def test_cells_without_events_get_nan_then_zero_in_the_table(clean):
    """An all-zero trace has no event: every ST row is NaN (MATLAB quantile([])) and the §7.2 table turns NaN into
    0. An all-zero image gets ST_corr = 0 (the reference's early return) and ST1 = 0 (no projection)."""
    S, T, Mt, surround, _ = clean
    T_quiet = T.copy()
    T_quiet[0] = 0
    S_empty = S.copy()
    S_empty[:, 1] = 0
    inputs = _inputs(S_empty, surround, Mt)
    table = _table(S_empty, T_quiet, inputs)
    assert all(np.isnan(table[name][0]) for name in ST_NAMES)
    assert all(table[f"ST_corr_{i}"][1] == 0 for i in (1, 2, 3))
    assert all(table[f"ST1_index_{i}"][1] == 0 for i in range(1, 6))
    S_smooth = normalize_to_one(smooth_images(S_empty, SHAPE))
    metrics = np.asarray(quality_metrics(S_empty, S_smooth, T_quiet, SHAPE, st=inputs))
    assert metrics.shape == (30, 2) and not np.isnan(metrics).any()
    assert np.all(metrics[[METRIC_NAMES.index(n) for n in ST_NAMES], 0] == 0)


def test_correlation_events_grow_by_two_frames_and_need_five():
    """medfilt1(T, 5) keeps a 3-frame plateau (3 of 5 window values); each run of active frames grows by 2 frames on
    each side, clipped at the ends: [0, 5) and [8, 15). Plateaus 32-34 and 38-40 stay apart after the median
    (the gap is 3 frames) but merge after growth: [30, 43). Runs shorter than 5 frames are dropped; with the
    5-frame median and the growth that can only happen in traces shorter than 5 frames (a 4-frame trace)."""
    trace = np.zeros((1, 60), np.float32)
    trace[0, 0:3] = 1
    trace[0, 10:13] = 1
    trace[0, 32:35] = 1
    trace[0, 38:41] = 1
    _, events = spatiotemporal._correlation_events(trace)
    assert np.asarray(events.start).tolist() == [0, 8, 30] and np.asarray(events.stop).tolist() == [5, 15, 43]
    assert np.asarray(events.cell).tolist() == [0, 0, 0]
    _, short = spatiotemporal._correlation_events(np.array([[0, 1, 1, 1]], np.float32))
    assert short.start.shape == (0,)


def test_inputs_from_s_step_project_on_the_normalised_images(clean):
    """``solve_S`` returns ``T_corr_in`` multiplied by the image scale (reference, spec §13 item 8): S^T M scale^2.
    The ST inputs divide it back to the projection on the returned max-1 images (our fix, docs/decisions.md)."""
    S, T, Mt, _, _ = clean
    mask = (S > 0) | (np.stack([_ring(S[:, 0]), _ring(S[:, 1])], axis=1) > 0)
    step = solve_S(S, T, Mt, mask, 0.01, 20, frame_shape=SHAPE, radius=RADIUS)
    scale = np.asarray(step.scale)
    assert np.all(np.abs(scale - 1) > 1e-2), "the test needs a scale away from 1 to tell the conventions apart"
    inputs = inputs_from_s_step(step, Mt, RADIUS)
    projection = (Mt @ np.asarray(step.S)).T
    np.testing.assert_allclose(inputs.T_in, projection, rtol=1e-4, atol=1e-4 * np.abs(projection).max())
    np.testing.assert_allclose(step.T_corr_in, projection * scale[:, None] ** 2, rtol=1e-4,
                               atol=1e-4 * np.abs(projection).max() * scale.max() ** 2)
    assert inputs.T_out is step.T_corr_out and inputs.S_surround is step.S_surround


def test_shape_errors_name_the_arrays(clean):
    S, T, Mt, surround, _ = clean
    with pytest.raises(InputError, match="T_in"):
        residual_indices(S, T, T[:, :10], T, surround)
    with pytest.raises(InputError, match="frame_shape"):
        st_correlation(S, T, Mt, (16, 16), RADIUS)


def test_namespaces_agree_with_numpy(namespace, clean):
    xp, device = namespace
    S, T, Mt, surround, rng = clean
    movie = Mt + np.outer(T[0], surround[:, 0]).astype(np.float32)
    inputs = _inputs(S, surround, movie)
    expected = np.asarray(spatiotemporal_metrics(S, T, inputs, SHAPE))
    moved = SpatioTemporalInputs(*(to_xp(a, xp, device) for a in inputs[:4]), RADIUS)
    out = spatiotemporal_metrics(to_xp(S, xp, device), to_xp(T, xp, device), moved, SHAPE)
    assert out.shape == (18, 2) and out.dtype == xp.float64
    np.testing.assert_allclose(backend.to_numpy(out), expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def small_movie():
    return simulate_2p(n_rows=48, n_cols=48, n_frames=400, n_cells=6, seed=0).movie


def test_extract_computes_st_rows_and_applies_the_st_rule(small_movie):
    """End to end (§7.2/§7.3 through ``extract``): default -> no ST rows (not computed); ST check on -> real
    values in range; a
    threshold no ratio can pass (ST2 <= 1 always) -> every cell is eliminated by ``ST_spurious``; tuning mode
    records the ST rows too (§7.5)."""
    kwargs = dict(avg_cell_radius=4, backend="numpy")
    default = nwb_extract.extract(small_movie, **kwargs)
    assert default.footprints.shape[0] > 0
    assert not set(ST_NAMES) & set(default.roi_metrics)  # not computed: not reported
    on = nwb_extract.extract(small_movie, thresholds={"low_ST_index_thresh": 0.1}, **kwargs)
    assert on.footprints.shape[0] > 0
    assert not all(np.all(on.roi_metrics[name] == 1) for name in ST_NAMES)
    assert np.all((on.roi_metrics["ST2_index_4"] > 0.1) & (on.roi_metrics["ST2_index_4"] <= 1.0))
    assert np.all(np.abs(on.roi_metrics["ST_corr_3"]) <= 1.0)
    strict = nwb_extract.extract(small_movie, thresholds={"low_ST_index_thresh": 1.5}, **kwargs)
    assert strict.footprints.shape[0] == 0 and "ST_spurious" in strict.eliminated.rules
    tuning = nwb_extract.extract(small_movie, hyperparameter_tuning_flag=True, **kwargs)
    assert not all(np.all(tuning.roi_metrics[name] == 1) for name in ST_NAMES)
