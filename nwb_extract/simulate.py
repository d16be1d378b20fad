"""Synthetic 2-photon and 1-photon calcium-imaging movies with ground truth (EXTRACT simulation model, spec §11).

The model (spec §11.1, defaults of the movie builders in §11.2):

* every cell fires Bernoulli events (rate ``event_rate`` per frame) with a refractory period and optional synchrony;
  each event has an amplitude ``Poisson(spike_var_range) + 1``;
* the calcium trace is the event train convolved with an exponential (or asymmetric triangle) kernel whose peak is
  ``cell_snr * noise_std``;
* footprints are rotated elliptical Gaussians (covariance ``Q diag((r1/2)^2, (r2/2)^2) Q^T`` with radii drawn from
  ``cell_radius`` and ``Q`` a random orthogonal matrix), placed with a minimum spacing and a border margin, cropped to
  the field of view, scaled to max 1, values below 0.05 zeroed;
* noise is iid Gaussian plus, when ``ratio_corr_noise > 0``, spatio-temporally correlated Gaussian noise (spatial
  Butterworth band-pass of spec §3.2 computed here with NumPy FFTs, then an exponential filter along time), the two
  parts sharing the variance ``noise_std**2`` in the ratio ``1 - ratio_corr_noise : ratio_corr_noise``;
* the 2-p movie is ``footprints @ traces + noise + 1`` (baseline 1, so traces are dF/F); the 1-p movie adds a
  background movie of large blobs simulated with the same model and a burn-in (spec §11.2).

Orientation follows the package rule: movies ``(frames, rows, cols)``, footprints ``(cells, rows, cols)``, traces
``(frames, cells)``, centres ``[row, col]``, all indices 0-based. Randomness comes only from
``numpy.random.default_rng(seed)``, so a seed fully determines the output (on a given NumPy version).

This module is not engine code: it uses NumPy and SciPy directly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nwb_extract.engine.preprocess import spatial_bandpass
from nwb_extract.errors import InputError
from nwb_extract.progress import ProgressCallback, Reporter

__all__ = ["LEVELS", "SimulatedMovie", "simulate_1p", "simulate_2p", "simulate_level"]

FOOTPRINT_FLOOR = 0.05
"""Footprint values below this fraction of the peak are set to 0 (spec §11.1 step 4)."""



@dataclass(frozen=True)
class _Population:
    """Settings of one simulated population (cells, or background blobs); names as in spec §11.2."""

    n_cells: int
    cell_radius: tuple[float, float]
    min_cell_dist: float
    event_rate: float
    event_tau: float
    cell_snr: float
    noise_std: float
    ratio_corr_noise: float
    exp_trace: bool
    spike_var_range: float
    spike_sync_prob: float
    refractory_period: int
    donut: bool = False
    sync_interval: tuple[int, int] = (200, 600)


@dataclass(frozen=True)
class _Truth:
    """Ground truth of one population: ``footprints (K,H,W)``, ``traces``/``spikes (T,K)``, ``noise (T,H,W)``."""

    footprints: np.ndarray
    traces: np.ndarray
    spikes: np.ndarray
    event_frames: list[np.ndarray]
    centres: np.ndarray
    noise: np.ndarray


@dataclass(frozen=True, eq=False)
class SimulatedMovie:
    """A simulated movie and its ground truth.

    Attributes
    ----------
    movie : numpy.ndarray
        ``(frames, rows, cols)`` float32, the recorded movie: ``clean_movie() + noise``.
    footprints : numpy.ndarray
        ``(cells, rows, cols)`` float32 cell images, each with max 1 and no value in ``(0, 0.05)``.
    traces : numpy.ndarray
        ``(frames, cells)`` float32 clean calcium traces (dF/F, since the baseline is 1).
    spikes : numpy.ndarray
        ``(frames, cells)`` float32 event amplitudes (integers >= 1 at event frames, 0 elsewhere).
    event_frames : list of numpy.ndarray
        Per cell, the 0-based int64 frame indices of its events (sorted).
    centres : numpy.ndarray
        ``(cells, 2)`` int64 footprint centres ``[row, col]``, 0-based.
    noise : numpy.ndarray
        ``(frames, rows, cols)`` float32, exactly ``movie - clean_movie()``.
    frame_rate : float
        Frame rate in Hz (metadata only; the model is defined per frame).
    params : dict
        Every setting of the simulation, the seed and the modality included (JSON-serialisable).
    baseline : float
        Constant added to every pixel (1.0).
    background_footprints, background_traces, background_spikes : numpy.ndarray or None
        ``(components, rows, cols)``, ``(frames, components)``, ``(frames, components)`` float32 ground truth of
        everything in the movie that is not a truth cell: the 1-p background blobs (traces after the burn-in), then
        the opt-in out-of-focus cells and low-rank components (the "Opt-in structure" of :func:`simulate_1p`;
        low-rank components have no events, their spikes are 0). ``params["background_parts"]`` gives each kind's index
        range when there is opt-in structure. None for a 2-p movie without opt-in structure.
    gain : numpy.ndarray or None
        ``(rows, cols)`` float32 multiplicative gain of the optics (vignetting times blood-vessel shadows), applied
        to the whole clean movie, baseline included (not to the noise); None when neither is simulated.
    """

    movie: np.ndarray
    footprints: np.ndarray
    traces: np.ndarray
    spikes: np.ndarray
    event_frames: list[np.ndarray]
    centres: np.ndarray
    noise: np.ndarray
    frame_rate: float
    params: dict[str, Any]
    baseline: float = 1.0
    background_footprints: np.ndarray | None = None
    background_traces: np.ndarray | None = None
    background_spikes: np.ndarray | None = None
    gain: np.ndarray | None = None

    @property
    def modality(self) -> str:
        """``"2p"`` or ``"1p"``."""
        return self.params["modality"]

    @property
    def n_cells(self) -> int:
        """Number of ground-truth cells (background blobs excluded)."""
        return self.footprints.shape[0]

    def clean_movie(self) -> np.ndarray:
        """Noise-free movie ``(frames, rows, cols)`` float32: (cells (+ background) + baseline) x gain.

        ``movie - clean_movie()`` equals :attr:`noise` exactly (the same float32 operations build both).
        """
        return _clean_movie(
            self.footprints, self.traces, self.background_footprints, self.background_traces, self.baseline,
            self.gain,
        )

    def save_truth(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the ground truth (not the movie, not the noise) to a compressed ``.npz`` file.

        Keys: ``footprints``, ``traces``, ``spikes``, ``centres``, ``event_frames`` (all events concatenated) with
        ``event_counts`` (events per cell), ``background_*`` and ``gain`` when simulated, and ``params_json`` (the
        settings as JSON).
        The movie belongs in the NWB file (:func:`nwb_extract.io.movie_write.write_simulated_nwb`); the noise is
        ``movie - clean_movie()``. Refuses to replace an existing file unless ``overwrite=True``.
        """
        path = Path(path)
        if path.suffix != ".npz":
            raise InputError(f"ground-truth file {path} must end in .npz (numpy.savez appends it otherwise)")
        if path.exists() and not overwrite:
            raise InputError(f"{path} already exists; pass overwrite=True to replace it or choose another path")
        arrays = {
            "footprints": self.footprints,
            "traces": self.traces,
            "spikes": self.spikes,
            "centres": self.centres,
            "event_frames": np.concatenate([np.zeros(0, np.int64), *self.event_frames]),
            "event_counts": np.array([e.size for e in self.event_frames], dtype=np.int64),
            "params_json": np.array(json.dumps(self.params)),
        }
        if self.background_footprints is not None:
            arrays["background_footprints"] = self.background_footprints
            arrays["background_traces"] = self.background_traces
            arrays["background_spikes"] = self.background_spikes
        if self.gain is not None:
            arrays["gain"] = self.gain
        np.savez_compressed(path, **arrays)
        return path


def simulate_2p(
    *,
    n_rows: int = 64,
    n_cols: int = 80,
    n_frames: int = 1000,
    n_cells: int = 30,
    cell_radius: tuple[float, float] = (3.0, 4.0),
    min_cell_dist: float = 4.0,
    event_rate: float = 0.01,
    event_tau: float = 10.0,
    cell_snr: float = 4.0,
    noise_std: float = 0.02,
    ratio_corr_noise: float = 0.05,
    exp_trace: bool = True,
    spike_var_range: float = 0.3,
    spike_sync_prob: float = 0.0,
    sync_interval: tuple[int, int] = (200, 600),
    refractory_period: int = 1,
    donut: bool = False,
    n_out_of_focus: int = 0,
    out_of_focus_radius: tuple[float, float] = (14.0, 22.0),
    out_of_focus_snr: float = 2.0,
    lowrank_rank: int = 0,
    lowrank_amplitude: float = 0.2,
    lowrank_fluctuation: float = 0.5,
    lowrank_tau: float = 3.0,
    lowrank_scale: float = 16.0,
    vignetting: float = 0.0,
    n_vessels: int = 0,
    vessel_width: float = 4.0,
    vessel_depth: float = 0.4,
    frame_rate: float = 30.0,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> SimulatedMovie:
    """Simulate a 2-photon movie with ground truth (spec §11.1, ``create_2p_movie`` of §11.2).

    Defaults are the §11.2 values except the size: 64 x 80 px, 1000 frames, 30 cells of radius 3-4 px (instead of
    250 x 250 px, 5000 frames, 600 cells of radius 7-9 px), which simulates in well under a second. For the
    §11.2 movie pass ``n_rows=250, n_cols=250, n_frames=5000, n_cells=600, cell_radius=(7, 9)``.

    Parameters
    ----------
    n_rows, n_cols, n_frames : int
        Movie size; the movie is ``(n_frames, n_rows, n_cols)``. Rows and columns may differ.
    n_cells : int
        Number of cells.
    cell_radius : (float, float)
        ``(r_min, r_max)`` in pixels; each footprint's two semi-axes are ``U[r_min, r_max]`` and the Gaussian sigma
        along each axis is half of it.
    min_cell_dist : float
        Minimum distance between cell centres in pixels (0 disables the check).
    event_rate : float
        Event probability per cell and frame (total, synchronous events included).
    event_tau : float
        Decay time constant of the calcium kernel, in frames; the kernel spans ``floor(5 * event_tau)`` frames.
    cell_snr : float
        Kernel peak in units of ``noise_std`` (a unit event peaks at ``cell_snr * noise_std``).
    noise_std : float
        Standard deviation of the total noise (dF/F units).
    ratio_corr_noise : float
        Fraction in ``[0, 1]`` of the noise variance that is spatio-temporally correlated.
    exp_trace : bool
        Exponential kernel (peak at the event frame) if True, else an asymmetric triangle (width
        ``2.5 * event_tau``, skew -0.8) whose peak is at the event frame.
    spike_var_range : float
        Event amplitudes are ``Poisson(spike_var_range) + 1`` (all 1 when it is 0).
    spike_sync_prob : float
        Fraction in ``[0, 1)`` of the event rate that comes from synchronous events shared by many cells.
    sync_interval : (int, int)
        A synchronous event draws ``n ~ U{sync_interval}`` cells with replacement (spec §11.1: 200-600, sized for
        hundreds of cells; with fewer cells than ``n`` every cell joins and the synchronous rate per cell drops
        below ``event_rate * spike_sync_prob``; lower it for small populations).
    refractory_period : int
        A cell cannot fire at frame ``k`` if it fired in frames ``k - 1 - refractory_period ... k - 1``, so
        consecutive events of a cell are at least ``refractory_period + 2`` frames apart.
    donut : bool
        Ring-shaped footprints instead of filled ellipses.
    n_out_of_focus, out_of_focus_radius, out_of_focus_snr, lowrank_rank, lowrank_amplitude, lowrank_fluctuation,
    lowrank_tau, lowrank_scale, vignetting, n_vessels, vessel_width, vessel_depth
        Opt-in structure, all off by default (see :func:`simulate_1p`): out-of-focus cells and low-rank components
        (e.g. slow neuropil: ``lowrank_tau=10``) are stored in ``background_*``; vignetting and vessels in ``gain``.
    frame_rate : float
        Frame rate in Hz (metadata, e.g. for NWB).
    seed : int
        Seed of ``numpy.random.default_rng``; the same seed gives an identical simulation.
    progress : callable, optional
        Receives ``simulate`` :class:`~nwb_extract.progress.ProgressEvent` s, one per step built.

    Returns
    -------
    SimulatedMovie
        Movie, ground truth and ``params``; ``background_*`` and ``gain`` are None without opt-in structure.
    """
    cells = _Population(
        n_cells, _radius_pair(cell_radius, "cell_radius"), min_cell_dist, event_rate, event_tau, cell_snr,
        noise_std, ratio_corr_noise, exp_trace, spike_var_range, spike_sync_prob, refractory_period, donut,
        _interval(sync_interval),
    )
    structure = _Structure(n_out_of_focus, out_of_focus_radius, out_of_focus_snr, lowrank_rank, lowrank_amplitude,
                           lowrank_fluctuation, lowrank_tau, lowrank_scale, vignetting, n_vessels, vessel_width,
                           vessel_depth)
    shape = _check_size(n_rows, n_cols, n_frames, frame_rate)
    _check_population(cells, "")
    structure.check()
    cell_rng, _, structure_rng = np.random.default_rng(seed).spawn(3)  # the first two as without structure
    steps = _Steps(progress, 4 + structure.active)
    truth = _simulate_population(cell_rng, shape, n_frames, cells, burn_in=0, steps=steps)
    params = {"modality": "2p", "n_rows": n_rows, "n_cols": n_cols, "n_frames": n_frames,
              **_population_params(cells, ""), "frame_rate": frame_rate, "seed": seed}
    return _assemble(truth, None, params, frame_rate, steps,
                     _with_structure(structure_rng, shape, n_frames, cells, structure, params, steps))


def simulate_1p(
    *,
    n_rows: int = 64,
    n_cols: int = 80,
    n_frames: int = 1000,
    n_cells: int = 30,
    cell_radius: tuple[float, float] = (3.0, 4.0),
    min_cell_dist: float = 4.0,
    event_rate: float = 0.01,
    event_tau: float = 10.0,
    cell_snr: float = 4.0,
    noise_std: float = 0.02,
    ratio_corr_noise: float = 0.05,
    exp_trace: bool = True,
    spike_var_range: float = 0.3,
    spike_sync_prob: float = 0.0,
    sync_interval: tuple[int, int] = (200, 600),
    refractory_period: int = 1,
    donut: bool = False,
    background_n_cells: int = 10,
    background_radius: tuple[float, float] = (10.0, 20.0),
    background_min_dist: float = 0.0,
    background_event_rate: float = 0.1,
    background_event_tau: float = 40.0,
    background_snr: float = 20.0,
    background_noise_std: float = 0.002,
    background_ratio_corr_noise: float = 0.0,
    background_exp_trace: bool = True,
    background_spike_var_range: float = 0.3,
    background_spike_sync_prob: float = 0.0,
    background_refractory_period: int = 1,
    background_burn_in: int = 1000,
    n_out_of_focus: int = 0,
    out_of_focus_radius: tuple[float, float] = (14.0, 22.0),
    out_of_focus_snr: float = 2.0,
    lowrank_rank: int = 0,
    lowrank_amplitude: float = 0.2,
    lowrank_fluctuation: float = 0.5,
    lowrank_tau: float = 3.0,
    lowrank_scale: float = 16.0,
    vignetting: float = 0.0,
    n_vessels: int = 0,
    vessel_width: float = 4.0,
    vessel_depth: float = 0.4,
    frame_rate: float = 30.0,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> SimulatedMovie:
    """Simulate a 1-photon movie: cells plus a background of large blobs (spec §11.2 ``create_1p_movie``).

    The cell parameters mean the same as in :func:`simulate_2p` and have the same defaults. The background is a
    second population simulated with the same model (``background_*`` parameters, §11.2 ``get_1p_defaults``
    values) over ``n_frames + background_burn_in`` frames, of which the first ``background_burn_in`` are dropped so
    the slow blob traces start in their stationary regime. The movie is ``cells + background + 1``; the noise is the
    sum of both populations' noise.

    The background size is scaled to the small default field of view: 10 blobs of radius 10-20 px (§11.2 uses 150
    blobs of radius 30-100 px on 250 x 250 px; the §11.2 demo uses 10 blobs of radius 20-40 px on 100 x 100 px).
    Blob centres keep ``r_max / 2`` from the border, so ``background_radius[1]`` must be below the FOV size.
    With the same ``seed`` and cell settings the cells equal those of :func:`simulate_2p`.

    Opt-in structure (what makes 1-photon data hard; all off by default, and then the movie, the ground truth and
    ``params`` are exactly those of the settings above; :func:`simulate_2p` takes the same arguments). It is drawn
    from its own random stream, so switching it on leaves the cells and the blobs unchanged. Everything below except
    the gain is stored after the blobs in ``background_*``; none of it is a truth cell.

    n_out_of_focus : int
        Cells outside the focal plane: same event model as the cells (rate, tau, amplitudes), but large, blurred
        Gaussian footprints and dim. They are *not* counted as truth cells: their light is a blurred mixture that no
        extraction can attribute to one in-focus soma, CNMF-E models them as background, and a method that reports
        one reports a background piece (a false positive in :mod:`nwb_extract.metrics` scores).
    out_of_focus_radius : (float, float)
        Their ``(r_min, r_max)`` in pixels (same meaning as ``cell_radius``; default 14-22 px).
    out_of_focus_snr : float
        Their kernel peak in units of the cells' ``noise_std`` (default 2: dimmer than the cells).
    lowrank_rank : int
        Number of low-rank background components ``map_r(x) course_r(t)``: spatially smooth AND fast (the neuropil
        and scattered light of 1-p imaging).
    lowrank_amplitude : float
        Mean level of each component's time course at its map's peak, in units of the baseline (dF/F).
    lowrank_fluctuation : float
        Standard deviation of each time course relative to its mean, before clipping at 0.
    lowrank_tau : float
        Correlation time of the time courses in frames (an AR(1) process; default 3: faster than a calcium event).
    lowrank_scale : float
        Gaussian sigma in pixels of the smoothing that makes each map from white noise (maps scaled to [0, 1]).
    vignetting : float
        Fraction in ``[0, 1)`` of light lost in the corners: the gain falls as ``1 - vignetting (d / d_corner)^2``
        with the distance ``d`` from the image centre. It multiplies the whole clean movie (baseline included) but
        not the noise, so the SNR falls towards the corners.
    n_vessels : int
        Blood-vessel-like dark curves (quadratic Bezier curves crossing the field of view) that multiply the gain.
    vessel_width : float
        Gaussian full width (2 sigma) of a vessel's shadow in pixels.
    vessel_depth : float
        Fraction in ``[0, 1)`` of the light a vessel absorbs at its centre line.

    :data:`LEVELS` names the settings of the benchmark movies (``simulate_level("1p-hard", seed)``).

    Returns
    -------
    SimulatedMovie
        Movie, ground truth (``background_footprints (B,H,W)``, ``background_traces (T,B)``,
        ``background_spikes (T,B)`` included) and ``params``.
    """
    cells = _Population(
        n_cells, _radius_pair(cell_radius, "cell_radius"), min_cell_dist, event_rate, event_tau, cell_snr,
        noise_std, ratio_corr_noise, exp_trace, spike_var_range, spike_sync_prob, refractory_period, donut,
        _interval(sync_interval),
    )
    structure = _Structure(n_out_of_focus, out_of_focus_radius, out_of_focus_snr, lowrank_rank, lowrank_amplitude,
                           lowrank_fluctuation, lowrank_tau, lowrank_scale, vignetting, n_vessels, vessel_width,
                           vessel_depth)
    background = _Population(
        background_n_cells, _radius_pair(background_radius, "background_radius"), background_min_dist,
        background_event_rate, background_event_tau, background_snr, background_noise_std,
        background_ratio_corr_noise, background_exp_trace, background_spike_var_range, background_spike_sync_prob,
        background_refractory_period,
    )
    shape = _check_size(n_rows, n_cols, n_frames, frame_rate)
    _check_population(cells, "")
    _check_population(background, "background_")
    _check_int(background_burn_in, "background_burn_in", minimum=0)
    structure.check()
    cell_rng, background_rng, structure_rng = np.random.default_rng(seed).spawn(3)  # the first two as before
    steps = _Steps(progress, 7 + structure.active)
    truth = _simulate_population(cell_rng, shape, n_frames, cells, burn_in=0, steps=steps)
    back = _simulate_population(background_rng, shape, n_frames, background, burn_in=background_burn_in,
                                steps=steps, name="background")
    params = {"modality": "1p", "n_rows": n_rows, "n_cols": n_cols, "n_frames": n_frames,
              **_population_params(cells, ""), **_population_params(background, "background_"),
              "background_burn_in": background_burn_in, "frame_rate": frame_rate, "seed": seed}
    return _assemble(truth, back, params, frame_rate, steps,
                     _with_structure(structure_rng, shape, n_frames, cells, structure, params, steps))


# ----------------------------------------------------------------------------------------------------------------
# assembly


class _Steps:
    """``simulate`` progress events: step ``done`` of ``total``, each named by what was just built."""

    def __init__(self, progress: ProgressCallback | None, total: int) -> None:
        self._report, self.total, self.done = Reporter(progress), total, 0
        self._report("simulate", 0, total, "start", "steps")

    def __call__(self, message: str) -> None:
        self.done += 1
        self._report("simulate", self.done, self.total, message, "steps")


def _assemble(cells: _Truth, background: _Truth | None, params: dict, frame_rate: float,
              steps: _Steps, extra: _Extra | None = None) -> SimulatedMovie:
    """Build the movie from ground truth; the stored noise is recomputed as ``movie - clean`` (exact in float32).

    ``extra`` (opt-in structure) appends its components after the background blobs and brings the gain."""
    back_footprints = None if background is None else background.footprints
    back_traces = None if background is None else background.traces
    back_spikes = None if background is None else background.spikes
    gain = None
    if extra is not None:
        gain = extra.gain
        if extra.footprints.shape[0]:
            parts = {"blobs": [0, 0 if background is None else int(background.footprints.shape[0])]}
            start = parts["blobs"][1]
            for kind, count in extra.parts:
                parts[kind] = [start, start + count]
                start += count
            params["background_parts"] = parts
            back_footprints, back_traces, back_spikes = (
                extra_part if base is None else np.concatenate([base, extra_part], axis=axis)
                for base, extra_part, axis in ((back_footprints, extra.footprints, 0),
                                               (back_traces, extra.traces, 1), (back_spikes, extra.spikes, 1)))
    clean = _clean_movie(cells.footprints, cells.traces, back_footprints, back_traces, 1.0, gain)
    movie = clean + (cells.noise if background is None else cells.noise + background.noise)
    steps("movie")
    return SimulatedMovie(
        movie=movie, footprints=cells.footprints, traces=cells.traces, spikes=cells.spikes,
        event_frames=cells.event_frames, centres=cells.centres, noise=movie - clean, frame_rate=float(frame_rate),
        params=params, baseline=1.0, background_footprints=back_footprints, background_traces=back_traces,
        background_spikes=back_spikes, gain=gain,
    )


def _clean_movie(
    footprints: np.ndarray,
    traces: np.ndarray,
    background_footprints: np.ndarray | None,
    background_traces: np.ndarray | None,
    baseline: float,
    gain: np.ndarray | None = None,
) -> np.ndarray:
    """(``traces @ footprints`` (+ background) + baseline) x gain as a ``(frames, rows, cols)`` float32 movie."""
    clean = _render(footprints, traces)
    if background_footprints is not None:
        clean += _render(background_footprints, background_traces)
    clean += np.float32(baseline)
    if gain is not None:
        clean *= gain
    return clean


def _render(footprints: np.ndarray, traces: np.ndarray) -> np.ndarray:
    """``traces @ footprints`` as a ``(frames, rows, cols)`` float32 movie."""
    k, h, w = footprints.shape
    return (traces @ footprints.reshape(k, h * w)).reshape(traces.shape[0], h, w)


def _simulate_population(
    rng: np.random.Generator, shape: tuple[int, int], n_frames: int, pop: _Population, *, burn_in: int,
    steps: _Steps, name: str = "cells",
) -> _Truth:
    """Spikes, traces, footprints and noise of one population (spec §11.1 steps 1-6), burn-in frames dropped."""
    n_total = n_frames + burn_in
    events = _event_trains(rng, n_total, pop)
    amplitudes = _event_amplitudes(rng, events, pop.spike_var_range)
    kernel, offset = _calcium_kernel(pop.event_tau, pop.cell_snr * pop.noise_std, exp_trace=pop.exp_trace)
    traces = _convolve_events(amplitudes, kernel, offset)[burn_in:]
    spikes = amplitudes[burn_in:]
    steps(f"{name}: activity")
    centres = _place_centres(rng, shape, pop.n_cells, pop.min_cell_dist, pop.cell_radius[1])
    footprints = np.stack(
        [_footprint(rng, shape, c, pop.cell_radius, pop.donut) for c in centres]
    ) if pop.n_cells else np.zeros((0, *shape), np.float32)
    steps(f"{name}: footprints")
    noise = _noise(rng, (n_frames, *shape), pop)
    steps(f"{name}: noise")
    event_frames = [np.flatnonzero(spikes[:, k]).astype(np.int64) for k in range(pop.n_cells)]
    return _Truth(footprints, traces.astype(np.float32), spikes.astype(np.float32), event_frames, centres, noise)


# ----------------------------------------------------------------------------------------------------------------
# temporal model (spec §11.1 steps 1, 2, 5)


def _calcium_kernel(tau: float, peak: float, *, exp_trace: bool) -> tuple[np.ndarray, int]:
    """Calcium kernel scaled to max ``peak`` and the index of its peak (the sample aligned with the event frame).

    Exponential: ``exp(-j / tau)`` for ``j = 1 .. floor(5 tau)`` (peak first, offset 0). Triangle: MATLAB
    ``tripuls`` of width ``w = 2.5 tau`` and skew -0.8 (support ``[-w/2, w/2]``, apex at ``-0.8 w/2``) sampled at
    integer lags, offset = the apex sample, so the rise precedes the event frame.
    """
    if exp_trace:
        lags = np.arange(1, max(1, math.floor(5 * tau)) + 1, dtype=np.float64)
        kernel = np.exp(-lags / tau)
    else:
        half = 1.25 * tau
        apex = -0.8 * half
        lags = np.arange(-math.floor(half), math.floor(half) + 1, dtype=np.float64)
        rise = (lags + half) / (apex + half)
        fall = (half - lags) / (half - apex)
        kernel = np.clip(np.where(lags <= apex, rise, fall), 0.0, None)
    offset = int(np.argmax(kernel))
    return kernel * (peak / kernel[offset]), offset


def _event_trains(rng: np.random.Generator, n_frames: int, pop: _Population) -> np.ndarray:
    """``(frames, cells)`` bool event trains: Bernoulli events with refractory period and optional synchrony.

    A cell that fired in frames ``k - 1 - refractory ... k - 1`` cannot fire at ``k``. With ``spike_sync_prob``
    ``p > 0`` the independent rate is ``rate (1 - p)``; at each frame a synchronous event happens with probability
    ``rate p K / n`` (``n ~ U{sync_interval}``) and makes ``n`` cells drawn with replacement fire (spec §11.1 step 2).
    """
    k = pop.n_cells
    independent_rate = pop.event_rate * (1.0 - pop.spike_sync_prob)
    draws = rng.random((n_frames, k)) < independent_rate
    sync = None
    if pop.spike_sync_prob > 0:
        sync = _sync_events(rng, n_frames, k, pop.event_rate * pop.spike_sync_prob, pop.sync_interval)
    events = np.zeros((n_frames, k), dtype=bool)
    last = np.full(k, -(10**9), dtype=np.int64)
    for frame in range(n_frames):
        candidates = draws[frame] if sync is None else draws[frame] | sync[frame]
        fire = candidates & (frame - last > pop.refractory_period + 1)
        events[frame] = fire
        last[fire] = frame
    return events


def _sync_events(
    rng: np.random.Generator, n_frames: int, n_cells: int, sync_rate: float, interval: tuple[int, int]
) -> np.ndarray:
    """``(frames, cells)`` bool: cells joining a synchronous event at each frame (before the refractory check)."""
    sync = np.zeros((n_frames, n_cells), dtype=bool)
    if n_cells == 0:
        return sync
    group_sizes = rng.integers(interval[0], interval[1] + 1, size=n_frames)
    happens = rng.random(n_frames) < sync_rate * n_cells / group_sizes
    for frame in np.flatnonzero(happens):
        sync[frame, rng.integers(0, n_cells, size=group_sizes[frame])] = True
    return sync


def _event_amplitudes(rng: np.random.Generator, events: np.ndarray, spike_range: float) -> np.ndarray:
    """``(frames, cells)`` float64 amplitudes: ``Poisson(spike_range) + 1`` at events (1 if the range is 0)."""
    amplitudes = np.zeros(events.shape, dtype=np.float64)
    n = int(events.sum())
    amplitudes[events] = 1.0 + (rng.poisson(spike_range, size=n) if spike_range > 0 else 0.0)
    return amplitudes


def _convolve_events(amplitudes: np.ndarray, kernel: np.ndarray, offset: int) -> np.ndarray:
    """``trace[t] = sum_s a[s] kernel[t - s + offset]`` along axis 0 (exact direct sum, same length as input)."""
    n = amplitudes.shape[0]
    traces = np.zeros_like(amplitudes)
    for j, value in enumerate(kernel):
        shift = j - offset  # kernel sample j lands `shift` frames after the event
        if abs(shift) >= n:
            continue
        if shift >= 0:
            traces[shift:] += value * amplitudes[: n - shift]
        else:
            traces[: n + shift] += value * amplitudes[-shift:]
    return traces


# ----------------------------------------------------------------------------------------------------------------
# spatial model (spec §11.1 steps 3, 4)


def _place_centres(
    rng: np.random.Generator, shape: tuple[int, int], n_cells: int, min_dist: float, r_max: float
) -> np.ndarray:
    """``(cells, 2)`` int64 centres ``[row, col]``: uniform pixels at least ``r_max / 2`` from the border
    (``r_max/2 <= row <= n_rows - 1 - r_max/2``) and at least ``min_dist`` from every earlier centre.

    Raises :class:`InputError` when the cells do not fit after many rejected draws.
    """
    margin = r_max / 2
    size = np.asarray(shape)
    if np.any(size - 1 - 2 * margin < 0):
        raise InputError(
            f"a movie of {shape[0]} x {shape[1]} px has no room for centres {margin:g} px from the border "
            f"(radius max {r_max:g}); use a smaller radius or a larger movie"
        )
    centres = np.zeros((n_cells, 2), dtype=np.int64)
    placed, attempts = 0, 0
    max_attempts = 1000 * (n_cells + 1)
    while placed < n_cells:
        attempts += 1
        if attempts > max_attempts:
            raise InputError(
                f"placed only {placed} of {n_cells} cells {min_dist:g} px apart in {shape[0]} x {shape[1]} px after "
                f"{max_attempts} draws; reduce n_cells or min_cell_dist, or enlarge the movie"
            )
        candidate = np.floor(rng.random(2) * size).astype(np.int64)
        if np.any(candidate < margin) or np.any(candidate > size - 1 - margin):
            continue
        if placed and min_dist > 0:
            if np.min(np.hypot(*(centres[:placed] - candidate).T)) < min_dist:
                continue
        centres[placed] = candidate
        placed += 1
    return centres


def _footprint(
    rng: np.random.Generator, shape: tuple[int, int], centre: np.ndarray, radius: tuple[float, float], donut: bool
) -> np.ndarray:
    """One ``(rows, cols)`` float32 footprint: rotated elliptical Gaussian (or ring), cropped, max 1, < 0.05 -> 0."""
    r_min, r_max = radius
    semi_axes = rng.uniform(r_min, r_max, size=2)
    q, _ = np.linalg.qr(rng.standard_normal((2, 2)))
    covariance = q @ np.diag((semi_axes / 2) ** 2) @ q.T
    half = math.ceil(r_max)
    d_row, d_col = np.meshgrid(np.arange(-half, half + 1), np.arange(-half, half + 1), indexing="ij")
    offsets = np.stack([d_row, d_col], axis=-1).astype(np.float64)
    if donut:
        mu = r_max + 1
        image = np.exp(-((np.hypot(d_row, d_col) - 0.5 * mu) ** 2) / (0.1 * mu**2))
    else:
        image = np.exp(-0.5 * np.einsum("...i,ij,...j->...", offsets, np.linalg.inv(covariance), offsets))
    full = np.zeros(shape, dtype=np.float64)
    rows = np.arange(-half, half + 1) + centre[0]
    cols = np.arange(-half, half + 1) + centre[1]
    keep_r = (rows >= 0) & (rows < shape[0])
    keep_c = (cols >= 0) & (cols < shape[1])
    full[np.ix_(rows[keep_r], cols[keep_c])] = image[np.ix_(keep_r, keep_c)]
    full /= full.max()
    full[full < FOOTPRINT_FLOOR] = 0.0
    return full.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# noise (spec §11.1 step 6)


def _noise(rng: np.random.Generator, shape: tuple[int, int, int], pop: _Population) -> np.ndarray:
    """``(frames, rows, cols)`` float32 noise of total std ``noise_std``: iid part plus correlated part."""
    iid_std = pop.noise_std * math.sqrt(1.0 - pop.ratio_corr_noise)
    noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(iid_std)
    if pop.ratio_corr_noise > 0 and pop.noise_std > 0:
        noise += _correlated_noise(rng, shape, pop)
    return noise


def _correlated_noise(rng: np.random.Generator, shape: tuple[int, int, int], pop: _Population) -> np.ndarray:
    """White noise band-passed in space (Butterworth, radius ``5 * mean(cell_radius)``, a = b = 2), filtered in
    time with ``exp(-j / tau)``, ``j = 1 .. floor(5 tau)`` (centred), scaled to std ``noise_std * sqrt(ratio)``."""
    white = rng.standard_normal(shape, dtype=np.float32)
    smooth = spatial_bandpass(white, 5 * float(np.mean(pop.cell_radius)), 2.0, 2.0)  # the engine's §3.2 filter
    lags = np.arange(1, max(1, math.floor(5 * pop.event_tau)) + 1, dtype=np.float64)
    smooth = _temporal_filter_centred(smooth, np.exp(-lags / pop.event_tau))
    target = pop.noise_std * math.sqrt(pop.ratio_corr_noise)
    return (smooth * np.float32(target / float(np.std(smooth, dtype=np.float64)))).astype(np.float32)


def _temporal_filter_centred(movie: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve every pixel's time course with ``kernel`` and keep the centred ``frames`` samples (MATLAB
    ``conv(..., 'same')``: full-convolution samples ``floor(L/2) ... floor(L/2) + frames - 1``)."""
    n = movie.shape[0]
    length = kernel.size
    n_fft = n + length - 1
    start = length // 2
    out = np.empty_like(movie)
    k_hat = np.fft.rfft(kernel.astype(np.float32), n=n_fft)[:, None, None]
    rows_per_chunk = max(1, (1 << 22) // max(1, n_fft * movie.shape[2]))
    for r0 in range(0, movie.shape[1], rows_per_chunk):
        block = np.fft.irfft(np.fft.rfft(movie[:, r0 : r0 + rows_per_chunk], n=n_fft, axis=0) * k_hat, n=n_fft, axis=0)
        out[:, r0 : r0 + rows_per_chunk] = block[start : start + n]
    return out


# ----------------------------------------------------------------------------------------------------------------
# validation and bookkeeping


def _population_params(pop: _Population, prefix: str) -> dict[str, Any]:
    """Settings of a population as JSON-friendly ``{public argument name: value}``."""
    values = dataclasses.asdict(pop)
    values["cell_radius"] = list(pop.cell_radius)
    values["sync_interval"] = list(pop.sync_interval)
    if prefix:
        values.pop("donut")  # background blobs are always filled
        values.pop("sync_interval")  # and use the default interval
    return {_public_name(key, prefix): value for key, value in values.items()}


def _public_name(key: str, prefix: str) -> str:
    """Keyword name of a population setting in :func:`simulate_2p` / :func:`simulate_1p`."""
    if prefix:
        key = {"cell_radius": "radius", "min_cell_dist": "min_dist", "cell_snr": "snr"}.get(key, key)
    return prefix + key


def _radius_pair(radius: Any, name: str) -> tuple[float, float]:
    try:
        r_min, r_max = (float(r) for r in radius)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a pair (r_min, r_max) of numbers in pixels, got {radius!r}") from None
    if not 0 < r_min <= r_max:
        raise InputError(f"{name} must satisfy 0 < r_min <= r_max, got ({r_min:g}, {r_max:g})")
    return r_min, r_max


def _interval(interval: Any) -> tuple[int, int]:
    try:
        low, high = (int(n) for n in interval)
    except (TypeError, ValueError):
        raise InputError(f"sync_interval must be a pair (min, max) of cell counts, got {interval!r}") from None
    if not 1 <= low <= high:
        raise InputError(f"sync_interval must satisfy 1 <= min <= max, got ({low}, {high})")
    return low, high


def _check_int(value: Any, name: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_range(value: float, name: str, low: float, high: float, *, high_open: bool = False) -> None:
    if not (low <= value <= high) or (high_open and value == high):
        bracket = ")" if high_open else "]"
        raise InputError(f"{name} must be in [{low:g}, {high:g}{bracket}, got {value!r}")


def _check_size(n_rows: int, n_cols: int, n_frames: int, frame_rate: float) -> tuple[int, int]:
    _check_int(n_rows, "n_rows", minimum=1)
    _check_int(n_cols, "n_cols", minimum=1)
    _check_int(n_frames, "n_frames", minimum=1)
    if not frame_rate > 0:
        raise InputError(f"frame_rate must be > 0 Hz, got {frame_rate!r}")
    return int(n_rows), int(n_cols)


def _check_population(pop: _Population, prefix: str) -> None:
    name = {key: _public_name(key, prefix) for key in dataclasses.asdict(pop)}
    _check_int(pop.n_cells, name["n_cells"], minimum=0)
    _check_int(pop.refractory_period, name["refractory_period"], minimum=0)
    _check_range(pop.event_rate, name["event_rate"], 0.0, 1.0)
    _check_range(pop.ratio_corr_noise, name["ratio_corr_noise"], 0.0, 1.0)
    _check_range(pop.spike_sync_prob, name["spike_sync_prob"], 0.0, 1.0, high_open=True)
    for key in ("min_cell_dist", "cell_snr", "noise_std", "spike_var_range"):
        if not getattr(pop, key) >= 0:
            raise InputError(f"{name[key]} must be >= 0, got {getattr(pop, key)!r}")
    if not pop.event_tau > 0:
        raise InputError(f"{name['event_tau']} must be > 0 frames, got {pop.event_tau!r}")


# ----------------------------------------------------------------------------------------------------------------
# opt-in structure: out-of-focus cells, low-rank background, vignetting, blood vessels


@dataclass(frozen=True)
class _Structure:
    """The opt-in structure settings shared by :func:`simulate_1p` and :func:`simulate_2p` (all off by default)."""

    n_out_of_focus: int = 0
    out_of_focus_radius: tuple[float, float] = (14.0, 22.0)
    out_of_focus_snr: float = 2.0
    lowrank_rank: int = 0
    lowrank_amplitude: float = 0.2
    lowrank_fluctuation: float = 0.5
    lowrank_tau: float = 3.0
    lowrank_scale: float = 16.0
    vignetting: float = 0.0
    n_vessels: int = 0
    vessel_width: float = 4.0
    vessel_depth: float = 0.4

    @property
    def active(self) -> bool:
        """Whether anything is simulated (the default settings add nothing and draw no random numbers)."""
        return bool(self.n_out_of_focus or self.lowrank_rank or self.vignetting or self.n_vessels)

    def check(self) -> None:
        _check_int(self.n_out_of_focus, "n_out_of_focus", minimum=0)
        _check_int(self.lowrank_rank, "lowrank_rank", minimum=0)
        _check_int(self.n_vessels, "n_vessels", minimum=0)
        _radius_pair(self.out_of_focus_radius, "out_of_focus_radius")
        _check_range(self.vignetting, "vignetting", 0.0, 1.0, high_open=True)
        _check_range(self.vessel_depth, "vessel_depth", 0.0, 1.0, high_open=True)
        for key in ("out_of_focus_snr", "lowrank_amplitude", "lowrank_fluctuation"):
            if not getattr(self, key) >= 0:
                raise InputError(f"{key} must be >= 0, got {getattr(self, key)!r}")
        for key in ("lowrank_tau", "lowrank_scale", "vessel_width"):
            if not getattr(self, key) > 0:
                raise InputError(f"{key} must be > 0, got {getattr(self, key)!r}")

    def params(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["out_of_focus_radius"] = [float(r) for r in self.out_of_focus_radius]
        return values


@dataclass(frozen=True)
class _Extra:
    """What the opt-in structure adds: components ``(C,H,W)`` / ``(T,C)`` / ``(T,C)``, their kinds and the gain."""

    footprints: np.ndarray
    traces: np.ndarray
    spikes: np.ndarray
    parts: tuple[tuple[str, int], ...]
    gain: np.ndarray | None


def _with_structure(rng: np.random.Generator, shape: tuple[int, int], n_frames: int, cells: _Population,
                    settings: _Structure, params: dict, steps: _Steps) -> _Extra | None:
    """The opt-in structure, its settings recorded in ``params`` (None, with no key added, when all are off)."""
    if not settings.active:
        return None
    params.update(settings.params())
    extra = _structure(rng, shape, n_frames, cells, settings)
    steps("structure")
    return extra


def _structure(rng: np.random.Generator, shape: tuple[int, int], n_frames: int, cells: _Population,
               settings: _Structure) -> _Extra:
    """Simulate the opt-in structure (docstring of :func:`simulate_1p`, "Opt-in structure")."""
    footprints, traces, spikes, parts = [], [], [], []
    if settings.n_out_of_focus:
        blurred = dataclasses.replace(cells, n_cells=settings.n_out_of_focus, spike_sync_prob=0.0,
                                      cell_radius=_radius_pair(settings.out_of_focus_radius, "out_of_focus_radius"),
                                      cell_snr=settings.out_of_focus_snr)
        events = _event_trains(rng, n_frames, blurred)
        amplitudes = _event_amplitudes(rng, events, blurred.spike_var_range)
        kernel, offset = _calcium_kernel(blurred.event_tau, blurred.cell_snr * blurred.noise_std,
                                         exp_trace=blurred.exp_trace)
        centres = _place_centres(rng, shape, blurred.n_cells, 0.0, blurred.cell_radius[1])
        footprints.append(np.stack([_footprint(rng, shape, c, blurred.cell_radius, False) for c in centres]))
        traces.append(_convolve_events(amplitudes, kernel, offset).astype(np.float32))
        spikes.append(amplitudes.astype(np.float32))
        parts.append(("out_of_focus", blurred.n_cells))
    if settings.lowrank_rank:
        maps, courses = _lowrank(rng, shape, n_frames, settings)
        footprints.append(maps)
        traces.append(courses)
        spikes.append(np.zeros_like(courses))
        parts.append(("lowrank", settings.lowrank_rank))
    gain = None
    if settings.vignetting or settings.n_vessels:
        gain = _vignette(shape, settings.vignetting) * _vessel_transmission(rng, shape, settings)
    if not footprints:
        empty = np.zeros((n_frames, 0), np.float32)
        return _Extra(np.zeros((0, *shape), np.float32), empty, empty, (), gain)
    return _Extra(np.concatenate(footprints), np.concatenate(traces, axis=1), np.concatenate(spikes, axis=1),
                  tuple(parts), gain)


def _lowrank(rng: np.random.Generator, shape: tuple[int, int], n_frames: int,
             settings: _Structure) -> tuple[np.ndarray, np.ndarray]:
    """``lowrank_rank`` smooth maps ``(R,H,W)`` in [0, 1] and their fast positive time courses ``(T,R)``.

    A map is white noise smoothed by a Gaussian of sigma ``lowrank_scale`` px, rescaled to min 0 and max 1. A time
    course is ``lowrank_amplitude * max(0, 1 + lowrank_fluctuation * x_t)`` with ``x`` a unit-variance AR(1)
    process of correlation time ``lowrank_tau`` frames (``x_t = a x_{t-1} + sqrt(1 - a^2) e_t``, ``a = exp(-1/tau)``).
    """
    from scipy.ndimage import gaussian_filter  # only the opt-in structure needs SciPy here

    maps = np.empty((settings.lowrank_rank, *shape), np.float32)
    for r in range(settings.lowrank_rank):
        smooth = gaussian_filter(rng.standard_normal(shape), settings.lowrank_scale, mode="reflect")
        maps[r] = (smooth - smooth.min()) / max(float(np.ptp(smooth)), 1e-12)
    a = math.exp(-1.0 / settings.lowrank_tau)
    innovations = rng.standard_normal((n_frames, settings.lowrank_rank))
    x = np.empty_like(innovations)
    x[0] = innovations[0]
    for t in range(1, n_frames):
        x[t] = a * x[t - 1] + math.sqrt(1 - a * a) * innovations[t]
    courses = settings.lowrank_amplitude * np.maximum(0.0, 1.0 + settings.lowrank_fluctuation * x)
    return maps, courses.astype(np.float32)


def _vignette(shape: tuple[int, int], strength: float) -> np.ndarray:
    """``(H,W)`` float32 gain ``1 - strength * (d / d_corner)^2``, ``d`` the distance from the image centre."""
    rows = np.arange(shape[0]) - (shape[0] - 1) / 2
    cols = np.arange(shape[1]) - (shape[1] - 1) / 2
    d2 = rows[:, None] ** 2 + cols[None, :] ** 2
    return (1.0 - strength * d2 / max(float(d2.max()), 1e-12)).astype(np.float32)


def _vessel_transmission(rng: np.random.Generator, shape: tuple[int, int], settings: _Structure) -> np.ndarray:
    """``(H,W)`` float32 transmission of ``n_vessels`` dark curved vessels (1 away from every vessel).

    Each vessel is a quadratic Bezier curve from a random point on the left or top edge to the opposite edge,
    through a random interior control point; across it the transmission is
    ``1 - vessel_depth * exp(-d^2 / (2 (vessel_width / 2)^2))``, ``d`` the distance to the curve in pixels.
    """
    from scipy.ndimage import distance_transform_edt

    transmission = np.ones(shape, np.float64)
    h, w = shape
    s = np.linspace(0.0, 1.0, 4 * (h + w))[:, None]
    for _ in range(settings.n_vessels):
        if rng.random() < 0.5:  # left -> right
            start, end = np.array([rng.uniform(0, h - 1), 0.0]), np.array([rng.uniform(0, h - 1), w - 1.0])
        else:  # top -> bottom
            start, end = np.array([0.0, rng.uniform(0, w - 1)]), np.array([h - 1.0, rng.uniform(0, w - 1)])
        control = rng.uniform([0, 0], [h - 1, w - 1])
        curve = (1 - s) ** 2 * start + 2 * s * (1 - s) * control + s**2 * end
        on_curve = np.ones(shape, bool)
        idx = np.clip(np.rint(curve).astype(np.int64), 0, [h - 1, w - 1])
        on_curve[idx[:, 0], idx[:, 1]] = False
        d = distance_transform_edt(on_curve)
        transmission *= 1.0 - settings.vessel_depth * np.exp(-(d**2) / (2 * (settings.vessel_width / 2) ** 2))
    return transmission.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# named difficulty levels (benchmarks/onep_quality.py, tests)

_ONE_PHOTON_BASE: dict[str, Any] = {
    "n_rows": 128, "n_cols": 128, "n_frames": 1000, "n_cells": 40, "cell_radius": (6.0, 10.0),
    "min_cell_dist": 12.0, "cell_snr": 6.0, "background_radius": (20.0, 40.0),
}

#: Named settings of the benchmark movies: keyword arguments of :func:`simulate_1p` (``"1p-moderate"``,
#: ``"1p-hard"``) or :func:`simulate_2p` (``"2p-neuropil"``); see :func:`simulate_level`.
LEVELS: dict[str, dict[str, Any]] = {
    "1p-moderate": {**_ONE_PHOTON_BASE, "background_n_cells": 5, "background_snr": 10.0, "n_out_of_focus": 4,
                    "out_of_focus_snr": 3.0, "lowrank_rank": 2, "lowrank_amplitude": 0.1, "lowrank_scale": 12.0,
                    "vignetting": 0.3, "n_vessels": 1},
    "1p-hard": {**_ONE_PHOTON_BASE, "n_out_of_focus": 8, "out_of_focus_snr": 3.0, "lowrank_rank": 4,
                "lowrank_amplitude": 0.15, "lowrank_scale": 12.0, "vignetting": 0.5, "n_vessels": 3},
    "2p-neuropil": {"n_rows": 128, "n_cols": 128, "n_frames": 1000, "n_cells": 40, "cell_radius": (5.0, 7.0),
                    "min_cell_dist": 10.0, "n_out_of_focus": 8, "out_of_focus_radius": (10.0, 16.0),
                    "out_of_focus_snr": 2.0, "lowrank_rank": 3, "lowrank_amplitude": 0.05,
                    "lowrank_fluctuation": 0.5, "lowrank_tau": 10.0, "lowrank_scale": 12.0},
}


def simulate_level(level: str, seed: int = 0, **overrides: Any) -> SimulatedMovie:
    """Simulate the named movie of :data:`LEVELS` (``overrides`` replace single settings, e.g. ``n_frames``)."""
    if level not in LEVELS:
        raise InputError(f"unknown simulation level {level!r}; choose one of {', '.join(LEVELS)}")
    settings = {**LEVELS[level], **overrides, "seed": seed}
    return simulate_1p(**settings) if level.startswith("1p") else simulate_2p(**settings)
