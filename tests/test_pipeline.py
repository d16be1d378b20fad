"""``extract()`` with known footprints (EXTRACT's regression_only): reference agreement, robustness, semantics."""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pytest

import nwb_extract
from nwb_extract.engine.matching import match_optimal
from nwb_extract.errors import ConfigError, InputError, NotImplementedYetError
from nwb_extract.simulate import simulate_2p

from conftest import to_xp

REFERENCE_OPTIONS = {"baseline_adjusted": "baseline_adjusted", "nonneg": "nonneg", "no_constraint": "raw"}


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def _active_cells(sim) -> list[int]:
    """Cells with at least one event (a constant true trace has no correlation)."""
    return [k for k in range(sim.n_cells) if sim.traces[:, k].std() > 0]


@pytest.fixture(scope="module")
def small_sim():
    return simulate_2p(n_rows=40, n_cols=56, n_frames=400, n_cells=12, seed=3)


@pytest.fixture(scope="module")
def small_result(small_sim):
    return nwb_extract.extract(small_sim.movie, S_init=small_sim.footprints, regression_only=True,
                               avg_cell_radius=3.5, backend="numpy")


@pytest.mark.parametrize("movie_name", ["pipeline_m1_2p_nonsquare", "pipeline_m2_1p_background"])
def test_final_regression_matches_reference_pipeline(reference_dir, movie_name):
    """Given the reference run's final footprints, one regression_only run reproduces the reference's traces of
    all three trace options.

    The reference's final regression starts from its last refinement traces; ours starts from the robust initial
    fit of §2.1, so the iterates differ and bit equality is not expected. The noise level and kappa, which set
    every robust weight, must equal the reference's (rounding-level tolerance, float32 reference). Trace shapes
    must agree to correlation > 0.995 per cell and median per-cell max error < 1 % of the trace's max (measured
    on m1: min corr 0.9998, median error 0.0000; on m2: min corr 0.998, median error 0.2 %).
    """
    with h5py.File(reference_dir / f"{movie_name}.h5", "r") as f:
        movie = f["movie"][...]
        radius = json.loads(f.attrs["config_json"])["avg_cell_radius"]
        S_ref = f["reference/baseline_adjusted/spatial_weights"][...]
        ref = {opt: f[f"reference/{opt}/temporal_weights"][...] for opt in REFERENCE_OPTIONS}
        part = f["reference/baseline_adjusted/info/partitions/p1"].attrs
        noise_ref, kappa_ref = float(part["noise_std_refinement"]), float(part["kappa_refinement"])
    result = nwb_extract.extract(movie, S_init=S_ref, regression_only=True, avg_cell_radius=radius, backend="numpy")
    np.testing.assert_allclose(result.run_info["noise_std"], noise_ref, rtol=1e-5)
    np.testing.assert_allclose(result.run_info["kappa"], kappa_ref, rtol=1e-5)
    np.testing.assert_allclose(result.footprints, S_ref, atol=1e-6)
    for option, kind in REFERENCE_OPTIONS.items():
        ours, theirs = result.traces[kind], ref[option]
        assert ours.shape == theirs.shape
        corr = [_corr(ours[:, k], theirs[:, k]) for k in range(theirs.shape[1])]
        assert min(corr) > 0.995, (option, min(corr))
        rel_err = np.abs(ours - theirs).max(axis=0) / np.abs(theirs).max(axis=0)
        assert np.median(rel_err) < 0.01, (option, np.median(rel_err))


def test_robust_traces_beat_least_squares_with_unmodelled_overlapping_cells():
    """The robustness EXTRACT exists for: footprints of 70 % of the cells are given; for each modelled cell that
    shares at least 10 % of its footprint weight with an unmodelled one (sum of min(S_k, S_u) / sum S_k > 0.1),
    the median correlation of the ``baseline_adjusted`` trace with the true trace must exceed that of ordinary
    least squares on the mean-removed movie by >= 0.05. Three 64 x 80 x 1000 movies (50 cells, radius 4-5 px,
    seeds 1-3), cells pooled. Measured: robust 0.974, least squares 0.919, difference 0.055 (other seed triples:
    0.058, 0.050; with "any shared pixel" as the overlap criterion the difference is 0.03-0.05).
    """
    robust, ols = [], []
    for seed in (1, 2, 3):
        sim = simulate_2p(n_rows=64, n_cols=80, n_frames=1000, n_cells=50, cell_radius=(4, 5), seed=seed)
        modelled = np.sort(np.random.default_rng(seed).choice(sim.n_cells, size=35, replace=False))
        unmodelled = np.setdiff1d(np.arange(sim.n_cells), modelled)
        F = sim.footprints.reshape(sim.n_cells, -1)
        share = np.array([max(np.minimum(F[k], F[u]).sum() for u in unmodelled) / F[k].sum() for k in modelled])
        result = nwb_extract.extract(sim.movie, S_init=sim.footprints[modelled], regression_only=True,
                                     avg_cell_radius=4.5, backend="numpy")
        M = sim.movie.reshape(sim.movie.shape[0], -1)
        S = result.footprints.reshape(len(modelled), -1).T
        T_ols = np.linalg.lstsq(S, (M - M.mean(axis=0)).T, rcond=None)[0].T
        for i in np.flatnonzero(share > 0.1):
            truth = sim.traces[:, modelled[i]]
            robust.append(_corr(result.traces["baseline_adjusted"][:, i], truth))
            ols.append(_corr(T_ols[:, i], truth))
    assert len(robust) >= 20
    assert np.median(robust) - np.median(ols) >= 0.05, (np.median(robust), np.median(ols))


def test_trace_semantics(small_sim, small_result):
    """All three kinds exist, are finite float32 (frames, cells); nonneg >= 0; baseline_adjusted min 0 per trace;
    raw goes negative (the unconstrained fit follows the noise below baseline)."""
    n, k = small_sim.movie.shape[0], small_sim.n_cells
    assert set(small_result.traces) == {"baseline_adjusted", "nonneg", "raw"}
    assert small_result.primary_trace == "baseline_adjusted"
    for trace in small_result.traces.values():
        assert trace.shape == (n, k) and trace.dtype == np.float32 and np.isfinite(trace).all()
    assert (small_result.traces["nonneg"] >= 0).all()
    np.testing.assert_array_equal(small_result.traces["baseline_adjusted"].min(axis=0), 0.0)
    assert (small_result.traces["raw"] < 0).any()
    assert small_result.footprints.dtype == np.float32
    np.testing.assert_allclose(small_result.footprints.max(axis=(1, 2)), 1.0)
    assert small_result.stop_reason == "external init"
    from nwb_extract.engine.quality import METRIC_NAMES, ST_METRIC_NAMES

    # the spatio-temporal metrics are not computed by default, so they are not reported (no placeholder 1s)
    assert set(small_result.roi_metrics) == (set(METRIC_NAMES) - set(ST_METRIC_NAMES)) | {"partition"}
    assert all(v.shape == (k,) for v in small_result.roi_metrics.values())


def test_traces_follow_truth(small_sim, small_result):
    """Every active cell's baseline_adjusted trace correlates with its true trace (isolated-ish cells, SNR 4)."""
    corr = [_corr(small_result.traces["baseline_adjusted"][:, k], small_sim.traces[:, k])
            for k in _active_cells(small_sim)]
    assert np.median(corr) > 0.9 and min(corr) > 0.7, corr


class _CountingSource:
    """A lazy movie source over an h5py dataset that records every block read."""

    def __init__(self, dataset):
        self._data = dataset
        self.shape = dataset.shape
        self.dtype = dataset.dtype
        self.reads: list[tuple[slice, ...]] = []

    def __getitem__(self, key):
        self.reads.append(key)
        return self._data[key]


def test_lazy_source_is_read_once_and_matches_in_memory(tmp_path, small_sim, small_result):
    """An h5py dataset is read in frame chunks, each frame exactly once, and gives the in-memory result."""
    path = tmp_path / "movie.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("movie", data=small_sim.movie, chunks=(50,) + small_sim.movie.shape[1:])
    with h5py.File(path, "r") as f:
        source = _CountingSource(f["movie"])
        result = nwb_extract.extract(source, S_init=small_sim.footprints, regression_only=True,
                                     avg_cell_radius=3.5, backend="numpy", chunk_frames=150)
    frames = [frame for key in source.reads for frame in range(*key[0].indices(small_sim.movie.shape[0]))]
    assert sorted(frames) == list(range(small_sim.movie.shape[0]))
    assert len(source.reads) == 3
    for kind in small_result.traces:
        np.testing.assert_array_equal(result.traces[kind], small_result.traces[kind])


def test_array_api_strict_movie_gives_numpy_result(small_sim, small_result, namespace):
    """The whole known-footprints pipeline runs on a non-NumPy namespace (only backend.py kernels cross to
    NumPy) and agrees with the NumPy run to float32 rounding (atol 1e-4 of each trace's max)."""
    xp, device = namespace
    movie = to_xp(small_sim.movie, xp, device)
    result = nwb_extract.extract(movie, S_init=small_sim.footprints, regression_only=True, avg_cell_radius=3.5)
    for kind, trace in small_result.traces.items():
        np.testing.assert_allclose(result.traces[kind], trace, atol=1e-4 * np.abs(trace).max())


def test_time_downsampling_reestimates_at_full_rate(small_sim):
    """downsample_time_by=2 with S_init and max_iter=0 (not regression_only, which forces 1): traces come back at
    the full frame rate, still close to the truth."""
    result = nwb_extract.extract(small_sim.movie, S_init=small_sim.footprints, max_iter=0, downsample_time_by=2,
                                 avg_cell_radius=3.5, backend="numpy")
    assert result.run_info["dst"] == 2
    trace = result.traces["baseline_adjusted"]
    assert trace.shape == (small_sim.movie.shape[0], small_sim.n_cells)
    corr = [_corr(trace[:, k], small_sim.traces[:, k]) for k in _active_cells(small_sim)]
    assert np.median(corr) > 0.9


def test_space_downsampling_upsamples_footprints(small_sim):
    """downsample_space_by=2: footprints and images come back at full size, max 1, peaks near the truth's."""
    result = nwb_extract.extract(small_sim.movie, S_init=small_sim.footprints, max_iter=0, downsample_space_by=2,
                                 avg_cell_radius=3.5, backend="numpy")
    assert result.footprints.shape == small_sim.footprints.shape
    assert result.max_image.shape == small_sim.movie.shape[1:]
    np.testing.assert_allclose(result.footprints.max(axis=(1, 2)), 1.0, rtol=1e-5)
    peaks_true = np.array(np.unravel_index(small_sim.footprints.reshape(small_sim.n_cells, -1).argmax(1),
                                           small_sim.movie.shape[1:])).T
    peaks = np.array(np.unravel_index(result.footprints.reshape(small_sim.n_cells, -1).argmax(1),
                                      small_sim.movie.shape[1:])).T
    assert np.abs(peaks - peaks_true).max() <= 2


def test_nan_values_warn_with_count(small_sim):
    movie = small_sim.movie.copy()
    movie[5, 3, 4] = np.nan
    movie[6, 1, 1] = np.inf
    with pytest.warns(UserWarning, match="2 NaN or infinite values .* replaced by its pixel's temporal median"):
        result = nwb_extract.extract(movie, S_init=small_sim.footprints, regression_only=True, avg_cell_radius=3.5,
                                     backend="numpy")
    assert all(np.isfinite(t).all() for t in result.traces.values())


def test_not_yet_implemented_paths_say_so(small_sim):
    with pytest.raises(NotImplementedYetError, match="temporal_denoising"):
        nwb_extract.extract(small_sim.movie, S_init=small_sim.footprints, regression_only=True,
                            temporal_denoising=True)
    with pytest.raises(NotImplementedYetError, match="reestimate_S_if_downsampled"):
        nwb_extract.extract(small_sim.movie, S_init=small_sim.footprints, regression_only=True,
                            reestimate_S_if_downsampled=True)


def test_bad_inputs_get_clear_errors(small_sim):
    with pytest.raises(InputError, match="3 axes"):
        nwb_extract.extract(small_sim.movie[0], S_init=small_sim.footprints, regression_only=True)
    with pytest.raises(InputError, match="frame shape"):
        nwb_extract.extract(small_sim.movie[:, :, :-1], S_init=small_sim.footprints, regression_only=True)
    empty = small_sim.footprints.copy()
    empty[2] = 0
    with pytest.raises(InputError, match=r"footprints \[2\] are all zero"):
        nwb_extract.extract(small_sim.movie, S_init=empty, regression_only=True)
    with pytest.raises(ConfigError, match="S_init"):
        nwb_extract.extract(small_sim.movie, regression_only=True)
    with pytest.raises(InputError, match="lazy source"):
        nwb_extract.extract(object(), S_init=small_sim.footprints, regression_only=True)


def test_config_object_and_overrides_combine(small_sim, small_result):
    cfg = nwb_extract.ExtractConfig(avg_cell_radius=3.5, trace_output_option="raw", backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = nwb_extract.extract(small_sim.movie, cfg, S_init=small_sim.footprints, regression_only=True)
    assert result.primary_trace == "raw"
    assert result.config.trace_output_option == "no_constraint"
    np.testing.assert_array_equal(result.traces["raw"], small_result.traces["raw"])


def test_early_convergence_check_finds_the_same_cells():
    """python.early_convergence_check (ours, off by default) on a small simulated movie: the same cells as the
    reference stopping rule, footprints correlated >= 0.99 and traces >= 0.95 cell by cell; it does not change the
    run without the option (the default is the reference rule)."""
    sim = simulate_2p(n_rows=48, n_cols=48, n_frames=500, n_cells=8, cell_radius=(4, 5), seed=2)
    reference = nwb_extract.extract(sim.movie, avg_cell_radius=4.5, backend="numpy")
    early = nwb_extract.extract(sim.movie, avg_cell_radius=4.5, backend="numpy", early_convergence_check=True)
    assert reference.config.python.early_convergence_check is False
    assert early.n_cells == reference.n_cells > 0
    pairs, fp_corr = match_optimal(reference.footprints, early.footprints, 0.5)
    assert len(pairs) == reference.n_cells and fp_corr.min() >= 0.99
    for a, b in pairs:
        assert _corr(reference.traces["baseline_adjusted"][:, a], early.traces["baseline_adjusted"][:, b]) >= 0.95


def test_work_is_counted_per_stage(small_sim):
    """solver_kernels.counting_work attributes the movie-sized kernels' work to the pipeline's stages (the benchmark's
    roofline), and counting changes nothing in the result."""
    from nwb_extract.engine import solver_kernels

    plain = nwb_extract.extract(small_sim.movie, avg_cell_radius=3.5, backend="numpy")
    with solver_kernels.counting_work() as work:
        result = nwb_extract.extract(small_sim.movie, avg_cell_radius=3.5, backend="numpy")
    assert result.n_cells > 0
    np.testing.assert_array_equal(result.footprints, plain.footprints)
    for stage in ("cellfinding", "refinement", "frr"):
        flops, nbytes, _ = work.stages[stage]
        assert flops > 0 and nbytes > 0, stage
    # the refinement reads the movie at least once per solver iteration, from memory or (its row blocks after their
    # first iteration) from cache: far more bytes than one movie; the final regression never reads from cache
    assert work.stages["refinement"][1] + work.stages["refinement"][2] > 10 * small_sim.movie.nbytes
    assert work.stages["refinement"][2] > 0 and work.stages["frr"][2] == 0
    assert solver_kernels._work is None  # off again after the block


def test_result_repr_is_one_short_line(small_result):
    text = repr(small_result)
    assert "\n" not in text and len(text) < 300, text
    k = small_result.n_cells
    assert text.startswith(f"ExtractResult({k} cells, 400 frames of 40 x 56 px; "), text
    assert "traces baseline_adjusted*, nonneg, raw (* primary)" in text, text
    assert "array(" not in text


@pytest.mark.parametrize("chunk", [7, 30, 1000])
@pytest.mark.parametrize("dtype", ["uint16", "float32", "float64"])
def test_block_reads_in_chunks_equal_the_stored_frames(tmp_path, namespace, chunk, dtype):
    """A lazy source is read chunk by chunk straight into the block (any chunk size gives the same block): HDF5
    converts uint16 and float32 while reading into it (h5py read_direct), float64 goes through NumPy; the whole
    field of view, one partition of a 2 x 2 grid, and a frame range of an NWB-style (FrameBlockReader) source."""
    from nwb_extract.engine import backend, partition, pipeline
    from nwb_extract.io.movie import FrameBlockReader

    xp, device = namespace
    frames = (np.random.default_rng(7).integers(0, 4000, size=(30, 12, 10)) * 1.25).astype(dtype)
    with h5py.File(tmp_path / "movie.h5", "w") as f:
        f["movie"] = frames
    [whole] = partition.partition_blocks((12, 10), 1, 1, 0)
    corner = partition.partition_blocks((12, 10), 2, 2, 1)[3]
    with h5py.File(tmp_path / "movie.h5", "r") as f:
        for block, source, expected in ((whole, f["movie"], frames[:25]),
                                        (corner, f["movie"], frames[:25][(slice(None), *corner.slices)]),
                                        (corner, FrameBlockReader(f["movie"], 3, 30),
                                         frames[3:28][(slice(None), *corner.slices)])):
            Y = pipeline._read_block(source, 25, block, xp=xp, device=device, chunk=chunk)
            np.testing.assert_array_equal(backend.to_numpy(Y), expected.astype(np.float32))
