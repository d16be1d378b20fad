"""Tests of nwb_extract.simulate: the EXTRACT simulation model (spec §11.1/§11.2) and its ground truth.

The simulator draws random numbers, so there is no golden data to compare with (the reference pack's movies come
from a different generator); the tests check the model's defining properties exactly where they are exact, and
statistically (with the tolerance justified at each assert) where they are random.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from nwb_extract.errors import InputError
from nwb_extract.simulate import SimulatedMovie, simulate_1p, simulate_2p

N_FRAMES = 400  # short movies keep the file fast; the model's properties do not depend on the length


@pytest.fixture(scope="module")
def sim2p() -> SimulatedMovie:
    """Default 2-p settings (non-square 64 x 80 FOV), shortened."""
    return simulate_2p(n_frames=N_FRAMES, seed=3)


@pytest.fixture(scope="module")
def sim1p() -> SimulatedMovie:
    return simulate_1p(n_frames=N_FRAMES, seed=3)


def test_shapes_and_dtypes(sim2p):
    t, h, w, k = N_FRAMES, 64, 80, 30
    assert sim2p.movie.shape == sim2p.noise.shape == (t, h, w)
    assert sim2p.footprints.shape == (k, h, w)
    assert sim2p.traces.shape == sim2p.spikes.shape == (t, k)
    assert sim2p.centres.shape == (k, 2)
    assert len(sim2p.event_frames) == k
    for array in (sim2p.movie, sim2p.noise, sim2p.footprints, sim2p.traces, sim2p.spikes):
        assert array.dtype == np.float32
    assert sim2p.centres.dtype == np.int64
    assert all(e.dtype == np.int64 for e in sim2p.event_frames)
    assert sim2p.baseline == 1.0 and sim2p.frame_rate == 30.0 and sim2p.modality == "2p"
    assert sim2p.background_footprints is None and sim2p.background_traces is None


def test_same_seed_identical_different_seed_different():
    a = simulate_2p(n_frames=120, n_cells=8, seed=11)
    b = simulate_2p(n_frames=120, n_cells=8, seed=11)
    c = simulate_2p(n_frames=120, n_cells=8, seed=12)
    for name in ("movie", "footprints", "traces", "spikes", "centres", "noise"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.params == b.params
    assert not np.array_equal(a.movie, c.movie)
    assert not np.array_equal(a.centres, c.centres)


def test_params_record_every_setting_and_are_json(sim2p):
    params = json.loads(json.dumps(sim2p.params))
    assert params["seed"] == 3 and params["modality"] == "2p"
    expected = {"n_rows": 64, "n_cols": 80, "n_frames": N_FRAMES, "n_cells": 30, "cell_radius": [3.0, 4.0],
                "min_cell_dist": 4.0, "event_rate": 0.01, "event_tau": 10.0, "cell_snr": 4.0, "noise_std": 0.02,
                "ratio_corr_noise": 0.05, "exp_trace": True, "spike_var_range": 0.3, "spike_sync_prob": 0.0,
                "sync_interval": [200, 600], "refractory_period": 1, "donut": False, "frame_rate": 30.0}
    assert {key: params[key] for key in expected} == expected


def test_movie_minus_clean_movie_is_exactly_the_noise(sim2p):
    np.testing.assert_array_equal(sim2p.movie - sim2p.clean_movie(), sim2p.noise)
    # the clean movie is footprints @ traces + 1: check one pixel by hand (float32 sum of 30 products: 1e-6 rel.)
    r, c = sim2p.centres[0]
    by_hand = sim2p.traces @ sim2p.footprints[:, r, c] + 1.0
    np.testing.assert_allclose(sim2p.clean_movie()[:, r, c], by_hand, rtol=1e-6)


def test_noise_std_matches_noise_std(sim2p):
    # 2e6 samples; the correlated 5 % is rescaled to its exact std, the iid 95 % has a relative std error of
    # ~1/sqrt(2 * 2e6) = 5e-4, so 2 % is a safe bound that still catches a wrong variance split (e.g. std 0.02*1.05).
    assert sim2p.noise.std() == pytest.approx(0.02, rel=0.02)
    assert abs(float(sim2p.noise.mean())) < 1e-3  # zero-mean noise: 20 standard errors of the mean (~4e-5 x 20)


def test_correlated_noise_is_spatially_correlated():
    def neighbour_corr(ratio):
        noise = simulate_2p(n_frames=100, n_cells=0, ratio_corr_noise=ratio, seed=1).noise
        return np.corrcoef(noise[:, :, :-1].ravel(), noise[:, :, 1:].ravel())[0, 1]

    # iid noise: correlation ~ N(0, 1/sqrt(5e5)) -> |r| < 0.01; fully correlated noise is band-passed at a length
    # scale of ~5 cell radii, so adjacent pixels are strongly correlated (measured ~0.97).
    assert abs(neighbour_corr(0.0)) < 0.01
    assert neighbour_corr(1.0) > 0.8


def test_footprints_max_one_and_floor(sim2p):
    s = sim2p.footprints
    np.testing.assert_array_equal(s.reshape(len(s), -1).max(axis=1), np.ones(len(s), np.float32))
    assert not np.any((s > 0) & (s < 0.05))
    # Gaussian footprints peak at their centre
    for k, (r, c) in enumerate(sim2p.centres):
        assert s[k, r, c] == 1.0
    # support is elliptical with semi-axes in [3, 4]: area above 0.05 between the disks of sigma r/2 at the floor
    # (pi * 2 ln 20 * (r/2)^2 ~ 42 px for r=3, 75 px for r=4), with pixelisation slack of 25 %
    area = (s > 0).sum(axis=(1, 2))
    assert np.all(area >= 0.75 * 42) and np.all(area <= 1.25 * 75)


def test_footprints_are_rotated_ellipses():
    sim = simulate_2p(n_frames=50, n_cells=20, cell_radius=(3.0, 8.0), seed=5)
    orientations = []
    for k, (r, c) in enumerate(sim.centres):
        rows, cols = np.nonzero(sim.footprints[k])
        cov = np.cov(np.stack([rows - r, cols - c]), aweights=sim.footprints[k][rows, cols])
        evals, evecs = np.linalg.eigh(cov)
        assert evals[1] / evals[0] > 1.0  # never exactly circular (radii are continuous draws)
        orientations.append(np.arctan2(evecs[1, 1], evecs[0, 1]) % np.pi)
    # random rotations: principal axes spread over [0, pi) (axis-aligned would give only 0 or pi/2)
    assert np.ptp(orientations) > np.pi / 2 and len(np.unique(np.round(orientations, 2))) > 10


def test_centres_inside_margins_and_min_spacing():
    h, w, r_max, spacing = 40, 90, 6.0, 9.0
    sim = simulate_2p(n_rows=h, n_cols=w, n_frames=30, n_cells=25, cell_radius=(4.0, r_max),
                      min_cell_dist=spacing, seed=2)
    rows, cols = sim.centres.T
    assert np.all(rows >= r_max / 2) and np.all(rows <= h - 1 - r_max / 2)
    assert np.all(cols >= r_max / 2) and np.all(cols <= w - 1 - r_max / 2)
    distance = np.hypot(*(sim.centres[:, None, :] - sim.centres[None, :, :]).transpose(2, 0, 1))
    distance[np.diag_indices(len(distance))] = np.inf
    assert distance.min() >= spacing
    # non-square FOV: cells use the long axis (columns) beyond the short one (a transposition would fail this)
    assert cols.max() > h
    assert sim.footprints[np.argmax(cols)].shape == (h, w)


def test_placement_that_cannot_fit_raises():
    with pytest.raises(InputError, match="reduce n_cells or min_cell_dist"):
        simulate_2p(n_rows=20, n_cols=20, n_frames=10, n_cells=50, min_cell_dist=8.0)


def test_events_respect_refractory_period():
    refractory = 4
    sim = simulate_2p(n_rows=24, n_cols=30, ratio_corr_noise=0.0, n_frames=2000, n_cells=10, event_rate=0.3,
                      refractory_period=refractory, seed=4)
    gaps = np.concatenate([np.diff(e) for e in sim.event_frames])
    # spec §11.1: no event if the cell fired in frames k-1-refractory .. k-1, so gaps >= refractory + 2, and at
    # this high rate the bound is reached (so the rule is not stricter than specified)
    assert gaps.min() == refractory + 2


def test_spikes_hold_event_amplitudes(sim2p):
    for k, frames in enumerate(sim2p.event_frames):
        np.testing.assert_array_equal(np.flatnonzero(sim2p.spikes[:, k]), frames)
    amplitudes = sim2p.spikes[sim2p.spikes > 0]
    np.testing.assert_array_equal(amplitudes, np.round(amplitudes))  # Poisson + 1: integers >= 1
    assert amplitudes.min() >= 1
    # about 0.01 * 400 * 30 = 120 events (refractory removes ~2 %); Poisson sd ~11, so +-40 % is > 3 sd
    assert 0.6 * 120 < amplitudes.size < 1.4 * 120


def test_amplitude_mean_and_event_rate():
    sim = simulate_2p(n_rows=24, n_cols=30, ratio_corr_noise=0.0, n_frames=3000, n_cells=20, event_rate=0.05,
                      spike_var_range=0.5, seed=6)
    amplitudes = sim.spikes[sim.spikes > 0]
    # mean of Poisson(0.5) + 1 is 1.5 (sd 0.71); ~2700 events -> standard error 0.014, bound 0.06 is > 4 se
    assert amplitudes.mean() == pytest.approx(1.5, abs=0.06)
    # rate with refractory 1 (2 blocked frames after each event): 0.05 / (1 + 2 * 0.05) = 0.0455; se ~ 9e-4
    assert amplitudes.size / (3000 * 20) == pytest.approx(0.05 / 1.1, abs=0.004)
    no_var = simulate_2p(n_frames=300, n_cells=10, spike_var_range=0.0, seed=6)
    np.testing.assert_array_equal(no_var.spikes[no_var.spikes > 0], 1.0)


@pytest.mark.parametrize("exp_trace", [True, False])
def test_kernel_peak_is_snr_times_noise_std_at_the_event(exp_trace):
    snr, sigma, tau = 5.0, 0.03, 6.0
    sim = simulate_2p(n_rows=24, n_cols=30, n_frames=1500, n_cells=10, event_tau=tau, cell_snr=snr, noise_std=sigma,
                      exp_trace=exp_trace, event_rate=0.005, seed=7)
    reach = int(5 * tau)  # kernel length: an event further back than this has no effect
    checked = 0
    for k, frames in enumerate(sim.event_frames):
        for previous, event, following in zip(np.r_[-10**6, frames[:-1]], frames, np.r_[frames[1:], 10**6]):
            if event - previous <= reach + 2 or following - event <= reach or event < 2 or event + reach >= 1500:
                continue  # only isolated events have a trace equal to one scaled kernel
            segment = sim.traces[event - 2: event + reach, k]
            amplitude = sim.spikes[event, k]
            assert np.argmax(segment) == 2  # the peak is at the event frame
            # float32 trace vs float64 peak: relative 1e-6
            assert segment[2] == pytest.approx(amplitude * snr * sigma, rel=1e-6)
            if exp_trace:  # exp(-j/tau) decay after the event, nothing before it
                j = np.arange(reach - 1)
                np.testing.assert_allclose(segment[2:-1], amplitude * snr * sigma * np.exp(-j / tau), rtol=1e-5)
                np.testing.assert_array_equal(segment[:2], 0.0)
            else:  # asymmetric triangle: short rise before the event (0.25 tau), long linear fall after it
                assert segment[1] > 0 and segment[0] == 0
                fall = np.diff(segment[2: 2 + int(2.25 * tau)])
                np.testing.assert_allclose(fall, fall[0], rtol=1e-4)
            checked += 1
    assert checked >= 10


def test_synchronous_events_make_cells_fire_together():
    def crowded_frames(sync_prob):
        sim = simulate_2p(n_rows=24, n_cols=30, ratio_corr_noise=0.0, n_frames=2000, n_cells=20, event_rate=0.01,
                          spike_sync_prob=sync_prob, sync_interval=(8, 12), seed=8)
        return int(((sim.spikes > 0).sum(axis=1) >= 5).sum())

    # independent firing at 0.01: P(>= 5 of 20 cells in one frame) ~ 1.5e-6 per frame -> 0 in 2000 frames;
    # synchronous events (prob 0.01 * 0.8 * 20 / 10 = 0.016 per frame) each recruit ~8-11 distinct cells
    assert crowded_frames(0.0) == 0
    assert crowded_frames(0.8) >= 10


def test_donut_footprints_peak_on_a_ring():
    sim = simulate_2p(n_frames=30, n_cells=5, cell_radius=(5.0, 6.0), donut=True, seed=9)
    for k, (r, c) in enumerate(sim.centres):
        image = sim.footprints[k]
        assert image.max() == 1.0 and image[r, c] < 0.5  # hollow centre
        peak = np.unravel_index(np.argmax(image), image.shape)
        assert np.hypot(peak[0] - r, peak[1] - c) == pytest.approx(0.5 * (6.0 + 1), abs=1.0)


def test_1p_has_background_and_same_cells_as_2p(sim1p):
    t, h, w = N_FRAMES, 64, 80
    assert sim1p.modality == "1p"
    assert sim1p.background_footprints.shape == (10, h, w)
    assert sim1p.background_traces.shape == sim1p.background_spikes.shape == (t, 10)
    assert sim1p.background_footprints.dtype == sim1p.background_traces.dtype == np.float32
    np.testing.assert_array_equal(sim1p.movie - sim1p.clean_movie(), sim1p.noise)
    # background blobs are large: radius >= 10 px gives >= pi * 2 ln 20 * 5^2 = 470 px above 0.05 (less where
    # cropped by the FOV), against <= 75 px for a cell; the background is in the movie
    assert (sim1p.background_footprints > 0).sum(axis=(1, 2)).min() > 300
    background = np.einsum("tb,bhw->thw", sim1p.background_traces, sim1p.background_footprints)
    np.testing.assert_allclose(
        sim1p.clean_movie() - 1.0 - np.einsum("tk,khw->thw", sim1p.traces, sim1p.footprints), background, atol=1e-5
    )  # float32 sums of values <= ~1: atol 1e-5
    # cells: identical to the 2-p simulation with the same seed and cell settings (separate random streams)
    sim2p = simulate_2p(n_frames=N_FRAMES, seed=3)
    np.testing.assert_array_equal(sim1p.footprints, sim2p.footprints)
    np.testing.assert_array_equal(sim1p.traces, sim2p.traces)
    # total noise: cell noise (0.02) plus background noise (0.002) -> sqrt(0.02^2 + 0.002^2) = 0.0201, 2 % bound
    assert sim1p.noise.std() == pytest.approx(np.hypot(0.02, 0.002), rel=0.02)


def test_1p_background_burn_in():
    burned = simulate_1p(n_frames=50, n_cells=3, seed=10)
    cold = simulate_1p(n_frames=50, n_cells=3, background_burn_in=0, seed=10)
    # after 1000 burn-in frames at rate 0.1 with tau 40, every blob carries calcium at frame 0; without burn-in
    # a blob is active at frame 0 only if it fires exactly then (probability 0.1 each)
    assert np.all(burned.background_traces[0] > 0)
    assert np.count_nonzero(cold.background_traces[0]) <= 5
    assert burned.params["background_burn_in"] == 1000 and cold.params["background_burn_in"] == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cell_radius": (5.0, 3.0)}, "r_min <= r_max"),
        ({"ratio_corr_noise": 1.5}, "ratio_corr_noise"),
        ({"n_frames": 0}, "n_frames"),
        ({"spike_sync_prob": 1.0}, "spike_sync_prob"),
        ({"event_tau": 0.0}, "event_tau"),
        ({"n_rows": 6, "cell_radius": (3.0, 8.0)}, "no room"),
    ],
)
def test_bad_settings_raise_input_error(kwargs, match):
    with pytest.raises(InputError, match=match):
        simulate_2p(**kwargs)


def test_bad_background_setting_names_the_background_argument():
    with pytest.raises(InputError, match="background_event_rate"):
        simulate_1p(n_frames=10, background_event_rate=2.0)


def test_save_truth_round_trip(sim1p, tmp_path):
    path = sim1p.save_truth(tmp_path / "truth.npz")
    with np.load(path) as truth:
        np.testing.assert_array_equal(truth["footprints"], sim1p.footprints)
        np.testing.assert_array_equal(truth["traces"], sim1p.traces)
        np.testing.assert_array_equal(truth["spikes"], sim1p.spikes)
        np.testing.assert_array_equal(truth["centres"], sim1p.centres)
        np.testing.assert_array_equal(truth["background_traces"], sim1p.background_traces)
        events = np.split(truth["event_frames"], np.cumsum(truth["event_counts"])[:-1])
        assert all(np.array_equal(a, b) for a, b in zip(events, sim1p.event_frames))
        assert json.loads(str(truth["params_json"])) == sim1p.params
    with pytest.raises(InputError, match="already exists"):
        sim1p.save_truth(path)


# ----------------------------------------------------------------------------------------------------------------
# opt-in 1-photon structure (issue 16)

STRUCTURE = {"n_out_of_focus": 3, "lowrank_rank": 2, "lowrank_tau": 3.0, "lowrank_scale": 10.0, "vignetting": 0.5,
             "n_vessels": 2, "vessel_depth": 0.4}


@pytest.fixture(scope="module")
def structured() -> SimulatedMovie:
    return simulate_1p(n_frames=N_FRAMES, seed=3, **STRUCTURE)


def test_structure_off_by_default_changes_nothing(sim1p, structured):
    assert sim1p.gain is None and "background_parts" not in sim1p.params and "vignetting" not in sim1p.params
    # the structure has its own random stream: cells and blobs are those of the plain simulation
    np.testing.assert_array_equal(structured.footprints, sim1p.footprints)
    np.testing.assert_array_equal(structured.traces, sim1p.traces)
    np.testing.assert_array_equal(structured.background_footprints[:10], sim1p.background_footprints)
    assert structured.params["background_parts"] == {"blobs": [0, 10], "out_of_focus": [10, 13], "lowrank": [13, 15]}
    assert structured.params["vignetting"] == 0.5 and json.loads(json.dumps(structured.params))
    np.testing.assert_array_equal(structured.movie - structured.clean_movie(), structured.noise)


def test_vignetting_darkens_the_corners():
    sim = simulate_2p(n_frames=50, n_cells=0, noise_std=0.0, vignetting=0.5, seed=1)
    # a movie of baseline only: the corners get 1 - 0.5, the centre pixels (0.5 px from the centre) almost 1
    assert sim.gain[0, 0] == pytest.approx(0.5) and sim.gain[-1, -1] == pytest.approx(0.5)
    assert sim.gain[31:33, 39:41].min() > 0.999
    np.testing.assert_allclose(sim.movie[7], sim.gain, rtol=1e-6)


def test_lowrank_background_has_the_requested_rank_and_is_smooth_and_fast(structured):
    start, stop = structured.params["background_parts"]["lowrank"]
    maps = structured.background_footprints[start:stop]
    courses = structured.background_traces[:, start:stop]
    movie = courses @ maps.reshape(2, -1)
    s = np.linalg.svd(movie.astype(np.float64), compute_uv=False)
    assert s[2] < 1e-5 * s[0]  # rank 2 (float32 round-off only)
    # smooth in space: neighbouring pixels of a map (sigma 10 px) differ by far less than the map's range [0, 1]
    assert np.abs(np.diff(maps, axis=2)).max() < 0.1 and maps.min() == 0.0 and maps.max() == 1.0
    # fast in time: lag-1 autocorrelation of an AR(1) with tau 3 is exp(-1/3) = 0.72 (clipping at 0 changes it a
    # little; 400 frames give a standard error of ~0.05)
    x = courses - courses.mean(axis=0)
    lag1 = (x[1:] * x[:-1]).sum(axis=0) / (x * x).sum(axis=0)
    np.testing.assert_allclose(lag1, np.exp(-1 / 3), atol=0.15)
    assert np.all(structured.background_spikes[:, start:stop] == 0)


def test_out_of_focus_cells_are_large_dim_background(structured):
    start, stop = structured.params["background_parts"]["out_of_focus"]
    blurred = structured.background_footprints[start:stop]
    assert structured.n_cells == 30  # not truth cells
    assert (blurred > 0).sum(axis=(1, 2)).min() > 2 * (structured.footprints > 0).sum(axis=(1, 2)).max()
    # dim: kernel peak out_of_focus_snr (2) x noise_std (0.02) = 0.04 per unit event, against 0.08 for a cell
    assert structured.background_traces[:, start:stop].max() < structured.traces.max()
    assert np.all(structured.background_spikes[:, start:stop].sum(axis=0) > 0)  # they fire like cells


def test_vessels_are_dark_curves(structured):
    gain_without = simulate_1p(n_frames=5, seed=3, vignetting=0.5).gain
    transmission = structured.gain / gain_without
    # depth 0.4 on a centre line: 0.6 there, 0.6^2 where the two vessels cross
    assert np.any(np.abs(transmission - 0.6) < 0.01) and transmission.min() >= 0.36 - 1e-6
    assert 0.02 < np.mean(transmission < 0.9) < 0.3  # thin curves, not the whole field


def test_levels_regenerate_and_bad_names_raise():
    from nwb_extract.simulate import LEVELS, simulate_level

    assert {"1p-moderate", "1p-hard", "2p-neuropil"} <= set(LEVELS)
    a = simulate_level("1p-hard", 2, n_frames=30)
    assert a.modality == "1p" and a.params["n_vessels"] == LEVELS["1p-hard"]["n_vessels"] and a.params["seed"] == 2
    assert simulate_level("2p-neuropil", 2, n_frames=30).modality == "2p"
    with pytest.raises(InputError, match="unknown simulation level"):
        simulate_level("1p-impossible")
    with pytest.raises(InputError, match="vignetting"):
        simulate_1p(n_frames=10, vignetting=1.0)
