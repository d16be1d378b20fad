"""Ground-truth evaluation (nwb_extract/metrics.py): hand-made cases with exact answers, an independent
re-implementation of EXTRACT's ROC code, and the stored ``match_to_ground_truth`` of the reference pipelines.

Golden tolerances: footprint correlations are computed in float32 from the float32 footprints (error ~1e-6 over
4-9k pixels), compared at ``atol=1e-5``; trace correlations are computed in float64 from the same float32 traces
the reference used, so ``atol=1e-9`` (measured agreement ~1e-15).
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from scipy.signal import deconvolve

from nwb_extract import metrics
from nwb_extract.errors import InputError

MOVIES = ["m1_2p_nonsquare", "m2_1p_background", "m3_partitions_2x2"]
OPTIONS = ["baseline_adjusted", "nonneg", "no_constraint"]


def _blobs(centres, shape=(20, 24), sigma=1.5):
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    return np.stack([np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * sigma**2)) for r, c in centres])


def _spike_traces(n_frames, n_cells, seed):
    rng = np.random.default_rng(seed)
    spikes = rng.random((n_frames, n_cells)) < 0.03
    kernel = np.exp(-np.arange(1, 51) / 10)
    traces = np.stack([np.convolve(spikes[:, k], kernel)[:n_frames] for k in range(n_cells)], axis=1)
    return spikes, traces


# ---------------------------------------------------------------------------------------------------------------
# hand-made cases


def test_perfect_extraction_scores_one():
    footprints = _blobs([(4, 4), (10, 15), (15, 5)])
    # isolated unit spikes (60 frames apart, decay 10 frames): each trace peaks at exp(-1/10) < 1
    events = [np.arange(5 + 7 * k, 400, 60) for k in range(3)]
    kernel = np.exp(-np.arange(1, 51) / 10)
    traces = np.zeros((400, 3))
    for k, frames in enumerate(events):
        for frame in frames:
            stop = min(400, frame + 50)
            traces[frame:stop, k] += kernel[:stop - frame]
    order = [2, 0, 1]  # a permuted output must still match cell by cell
    result = metrics.evaluate(footprints, traces, footprints[order], traces[:, order], true_event_frames=events)
    assert (result.n_true, result.n_est, result.n_matched) == (3, 3, 3)
    assert result.precision == result.recall == result.f1 == 1.0
    np.testing.assert_array_equal(result.pairs, [[0, 1], [1, 2], [2, 0]])
    assert result.median_footprint_corr == pytest.approx(1.0, abs=1e-6)
    assert result.median_trace_corr == pytest.approx(1.0, abs=1e-12)
    # noiseless traces deconvolve to their spikes exactly: every threshold detects every event and nothing
    # else, so each cell's ROC is (tpr 1, fpr 0) x 100 -> fprs 1e-4 .. 1e-2 after tie spreading -> area 1 - 1e-4
    assert result.auc == pytest.approx(1 - 1e-4, abs=1e-12)
    assert result.summary() == ("3/3 true cells matched by 3 of 3 found: precision 1.000, recall 1.000, F1 1.000, "
                                "median footprint r 1.000, median trace r 1.000, event AUC 1.000")


def test_shuffled_traces_correlate_poorly():
    footprints = _blobs([(4, 4), (10, 15), (15, 5)])
    _, traces = _spike_traces(600, 3, seed=1)
    shuffled = traces[np.random.default_rng(2).permutation(600)]
    result = metrics.evaluate(footprints, traces, footprints, shuffled)
    assert result.n_matched == 3 and result.auc is None
    assert abs(result.median_trace_corr) < 0.2  # independent series of 600 frames: |r| ~ 0.04


def test_partial_match_exact_values():
    truth = _blobs([(4, 4), (10, 15), (15, 5), (4, 18)])
    est = np.concatenate([truth[[1, 3]], _blobs([(17, 20)], sigma=1.0)])  # 2 true cells found, 1 spurious
    pairs, corr = metrics.match_to_ground_truth(truth, est)
    np.testing.assert_array_equal(pairs, [[1, 0], [3, 1]])
    np.testing.assert_allclose(corr, 1.0, atol=1e-6)
    assert metrics.precision_recall_f1(4, 3, 2) == pytest.approx((2 / 3, 0.5, 4 / 7))
    greedy_pairs, _ = metrics.match_to_ground_truth(truth, est, method="greedy")
    np.testing.assert_array_equal(greedy_pairs, pairs)


def test_precision_recall_f1_edge_cases():
    assert metrics.precision_recall_f1(5, 5, 5) == (1.0, 1.0, 1.0)
    precision, recall, f1 = metrics.precision_recall_f1(5, 0, 0)
    assert np.isnan(precision) and recall == 0.0 and f1 == 0.0
    with pytest.raises(InputError, match="0 <= n_matched <= min"):
        metrics.precision_recall_f1(2, 3, 3)


def test_input_errors_name_the_problem():
    a = _blobs([(4, 4)])
    with pytest.raises(InputError, match="same image shape"):
        metrics.match_to_ground_truth(a, a[:, :10])
    with pytest.raises(InputError, match="must be a \\(cells, rows, cols\\) stack"):
        metrics.match_to_ground_truth(a[0], a)
    with pytest.raises(InputError, match="method must be 'optimal' or 'greedy'"):
        metrics.match_to_ground_truth(a, a, method="hungarian")
    with pytest.raises(InputError, match="same frame count"):
        metrics.trace_correlations(np.zeros((10, 1)), np.zeros((9, 1)), [[0, 0]])


def test_match_events_hand_cases():
    # truth 10, 20, 30; estimates 11 (-> 10), 19 and 21 (one of them -> 20), 40 (unmatched)
    assert metrics.match_events([10, 20, 30], [11, 19, 21, 40]) == (2 / 3, 2 / 4)
    assert metrics.match_events([10], [14]) == (0.0, 1.0)  # 4 frames is too far
    assert metrics.match_events([10], [13]) == (1.0, 0.0)  # 3 frames is close enough
    assert metrics.match_events([10, 20], []) == (0.0, 0.0)
    assert metrics.match_events([], [5]) == (1.0, 0.0)
    # equal distances go to the lower true index: 10 takes 11, and 12 still reaches 15 (distance 3)
    assert metrics.match_events([10, 12], [11, 15]) == (1.0, 0.0)
    assert metrics.match_events([10, 11], [11]) == (0.5, 0.0)


def test_roc_auc_tie_handling_and_forward_passes():
    # one cell, four thresholds: fprs [0.5, 0.2, 0.2, 0.0], tprs [0.9, 0.6, 0.8, 0.7]
    rocs = np.array([[[0.9], [0.6], [0.8], [0.7]], [[0.5], [0.2], [0.2], [0.0]]])
    # sorted by fpr: (0, .7), (.2, .6), (.2, .8), (.5, .9); ties sorted by tpr and spread: fprs
    # 1e-4, .2001, .2002, .5001; tpr forward-filled: .7, .7, .8, .9; plus (1, .9)
    fpr = np.array([1e-4, 0.2001, 0.2002, 0.5001, 1.0])
    tpr = np.array([0.7, 0.7, 0.8, 0.9, 0.9])
    expected = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)
    assert metrics.roc_auc(rocs) == pytest.approx(expected, abs=1e-15)
    # cells are averaged
    assert metrics.roc_auc(np.concatenate([rocs, rocs], axis=2)) == pytest.approx(expected, abs=1e-15)
    assert np.isnan(metrics.roc_auc(np.zeros((2, 100, 0))))


def _matlab_style_roc(events, traces, tau):
    """Independent transcription of compute_ROC_curve / match_events_to_ground (spec §11.3): scipy's deconvolve
    (= MATLAB deconv) and the repeated global-minimum loop over the full distance matrix."""
    kernel = np.exp(-np.arange(1, 5 * tau + 1) / tau)
    rocs = np.zeros((2, 100, traces.shape[1]))
    for k in range(traces.shape[1]):
        t = traces[:, k] / traces[:, k].max()
        quotient, _ = deconvolve(np.concatenate([t, np.zeros(5 * tau - 1)]), kernel)
        quotient[quotient < 0] = 0
        for s in range(100):
            est = np.flatnonzero(quotient > (s + 1) / 100)
            gt = np.asarray(events[k])
            if est.size == 0:
                continue
            if gt.size == 0:
                rocs[0, s, k] = 1
                continue
            dist = ((gt[:, None] - est[None, :]) ** 2).astype(float)
            hits = 0
            while True:
                flat = np.argmin(dist.ravel(order="F"))
                i, j = flat % gt.size, flat // gt.size
                if dist[i, j] > 9:
                    break
                hits += 1
                dist[i, :] = np.inf
                dist[:, j] = np.inf
            rocs[:, s, k] = hits / gt.size, (est.size - hits) / est.size
    return rocs


@pytest.mark.parametrize("tau", [10, 4])
def test_event_roc_matches_an_independent_transcription(tau):
    rng = np.random.default_rng(7)
    spikes, traces = _spike_traces(300, 3, seed=3)
    noisy = traces + 0.15 * rng.normal(size=traces.shape)
    events = [np.flatnonzero(spikes[:, k]) for k in range(3)]
    events[2] = np.array([], dtype=int)  # a cell without true events
    got = metrics.event_roc(events, noisy, tau=tau)
    assert got.shape == (2, 100, 3)
    np.testing.assert_allclose(got, _matlab_style_roc(events, noisy, tau), rtol=0, atol=1e-12)
    assert 0.5 < metrics.roc_auc(got[:, :, :2]) < 1.0
    with pytest.raises(InputError, match="one column per event list"):
        metrics.event_roc(events[:2], noisy)


# ---------------------------------------------------------------------------------------------------------------
# golden: reference pipelines' match_to_ground_truth


@pytest.mark.parametrize("movie", MOVIES)
def test_reference_match_to_ground_truth(reference_dir, movie):
    with h5py.File(reference_dir / f"pipeline_{movie}.h5") as f:
        truth_f = f["ground_truth/footprints"][...]
        truth_t = f["ground_truth/traces"][...]
        spatial = f["reference/baseline_adjusted/spatial_weights"][...]
        for option in OPTIONS:
            group = f[f"reference/{option}"]
            stored = group["match_to_ground_truth"]
            assert "Hungarian" in stored.attrs["method"]
            stats = json.loads(stored.attrs["stats_json"])
            stored_pairs = stored["pairs"][...][:, ::-1]  # stored as [reference cell, truth cell]
            result = metrics.evaluate(truth_f, truth_t, group["spatial_weights"][...], group["temporal_weights"][...])
            np.testing.assert_array_equal(result.pairs, stored_pairs)
            assert (result.n_true, result.n_est, result.n_matched) == (stats["n_true"], stats["n_found"],
                                                                       stats["n_matched"])
            assert result.precision == pytest.approx(stats["precision"], abs=1e-15)
            assert result.recall == pytest.approx(stats["recall"], abs=1e-15)
            assert result.median_footprint_corr == pytest.approx(stats["median_footprint_corr"], abs=1e-5)
            assert result.median_trace_corr == pytest.approx(stats["median_trace_corr"], abs=1e-9)
            pairs, footprint_corr = metrics.match_to_ground_truth(truth_f, group["spatial_weights"][...])
            np.testing.assert_allclose(footprint_corr, stored["footprint_corr"][...], rtol=0, atol=1e-5)
            trace_corr = metrics.trace_correlations(truth_t, group["temporal_weights"][...], pairs)
            np.testing.assert_allclose(trace_corr, stored["trace_corr"][...], rtol=0, atol=1e-9)
            assert trace_corr.min() == pytest.approx(stats["min_trace_corr"], abs=1e-9)
        # on these data EXTRACT's greedy match_sets finds the same pairs as the stored Hungarian matching
        greedy, _ = metrics.match_to_ground_truth(truth_f, spatial, method="greedy")
        np.testing.assert_array_equal(greedy, stored_pairs)
