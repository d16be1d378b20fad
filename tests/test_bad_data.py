"""Missing and bad data (issue #15): NaN / inf values, movies too short for EXTRACT, constant movies, and runs that
find no cell, end to end through the engine, the CLI, real NWB files, nwbinspector and pynwb validation.

The movie is ``simulate_2p(n_rows=40, n_cols=48, n_frames=400, n_cells=7, cell_radius=(3, 4), event_rate=0.03,
seed=4)``: 7 cells, all found on the clean movie in about half a second.
"""

from __future__ import annotations

import numpy as np
import pytest
from nwbinspector import Importance, inspect_nwbfile
from pynwb import validate

import nwb_extract
from nwb_extract.cli import main
from nwb_extract.engine import preprocess as pp
from nwb_extract.engine.backend import to_numpy
from nwb_extract.errors import InputError
from nwb_extract.io.movie_write import write_simulated_nwb
from nwb_extract.io.nwb_read import read_result
from nwb_extract.metrics import evaluate, match_to_ground_truth, precision_recall_f1
from nwb_extract.roiextractors import NwbExtractSegmentationExtractor
from nwb_extract.simulate import simulate_2p
from conftest import make_namespace, to_xp

RADIUS = 3.5


@pytest.fixture(scope="module")
def sim():
    return simulate_2p(n_rows=40, n_cols=48, n_frames=400, n_cells=7, cell_radius=(3, 4), event_rate=0.03, seed=4)


@pytest.fixture(scope="module")
def clean(sim):
    return nwb_extract.extract(sim.movie, avg_cell_radius=RADIUS, backend="numpy")


def _with_holes(movie: np.ndarray) -> tuple[np.ndarray, int]:
    """NaN patches (a dropped tile, a saturation mask over 5 frames), NaN frames, a NaN border row, an inf border
    column and a -inf patch; returns the movie and its count of bad values."""
    movie = movie.astype(np.float32)
    movie[100, 10:20, 10:20] = np.nan
    movie[150:155, 25:35, 5:15] = np.nan
    movie[[200, 201, 330]] = np.nan
    movie[:, 0, :] = np.nan
    movie[:, :, -1] = np.inf
    movie[300:305, 20:30, 30:40] = -np.inf
    return movie, int((~np.isfinite(movie)).sum())


# ----------------------------------------------------------------------------------------------------------------
# NaN / inf


def test_fill_nonfinite_uses_each_pixel_median_of_finite_values():
    rng = np.random.default_rng(3)
    movie = rng.standard_normal((9, 4, 5)).astype(np.float32) + 10
    movie[2, 1, 1] = np.nan
    movie[[0, 3, 4], 2, 3] = [np.inf, -np.inf, np.nan]  # 6 finite values left: median of an even count
    movie[:, 0, 4] = np.nan  # no finite value at all
    out, n_bad, no_data = pp.fill_nonfinite(movie, chunk_elements=7)  # several pixel chunks
    assert n_bad == 1 + 3 + 9 and out.dtype == np.float32 and np.isfinite(out).all()
    assert out[2, 1, 1] == np.float32(np.nanmedian(movie[:, 1, 1]))
    finite = movie[:, 2, 3][np.isfinite(movie[:, 2, 3])]
    np.testing.assert_allclose(out[[0, 3, 4], 2, 3], np.median(finite), rtol=1e-6)
    means = [np.mean(movie[:, r, c][np.isfinite(movie[:, r, c])]) for r in range(4) for c in range(5)
             if (r, c) != (0, 4)]
    np.testing.assert_allclose(out[:, 0, 4], np.median(means), rtol=1e-6)
    expected_no_data = np.zeros((4, 5), bool)
    expected_no_data[0, 4] = True
    np.testing.assert_array_equal(to_numpy(no_data), expected_no_data)
    good = np.isfinite(movie)
    np.testing.assert_array_equal(out[good], movie[good])  # finite values untouched


def test_fill_nonfinite_clean_and_all_bad_inputs():
    clean, n_bad, no_data = pp.fill_nonfinite(np.arange(6, dtype=np.uint16).reshape(1, 2, 3))
    assert n_bad == 0 and no_data is None and clean.dtype == np.float32
    with pytest.raises(InputError, match="no finite value: all 8 values are NaN or infinite"):
        pp.fill_nonfinite(np.full((2, 2, 2), np.nan))


def test_fill_nonfinite_under_every_namespace(namespace):
    xp, device = namespace
    movie = np.random.default_rng(5).standard_normal((40, 12, 9)).astype(np.float32)
    movie[3, 2:6, 2:6] = np.nan
    movie[[10, 11]] = np.inf
    movie[:, 0, :] = np.nan
    expected, n_expected, no_data_expected = pp.fill_nonfinite(movie)
    out, n_bad, no_data = pp.fill_nonfinite(to_xp(movie, xp, device))
    assert n_bad == n_expected and out.dtype == xp.float32
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-6)
    np.testing.assert_array_equal(to_numpy(no_data), to_numpy(no_data_expected))


def test_nan_patches_frames_and_borders_find_the_same_cells(sim, clean):
    """Before: one 10 x 10 NaN patch took this movie from 7 cells to 1 (NaN set to 0). Now NaN patches, NaN frames,
    NaN/inf borders and a -inf patch (4.8% of the values) find the clean movie's cells: F1 >= 0.95 against the clean
    run and against the truth (measured: 7 of 7, F1 1.0 both). The warning gives the count and what was done; the
    run info records it."""
    movie, n_bad = _with_holes(sim.movie)
    with pytest.warns(UserWarning, match=rf"{n_bad} NaN or infinite values .*replaced by its pixel's temporal "
                                         r"median.*87 pixels without any finite value were left out"):
        holed = nwb_extract.extract(movie, avg_cell_radius=RADIUS, backend="numpy")
    pairs, _ = match_to_ground_truth(clean.footprints, holed.footprints)
    assert precision_recall_f1(clean.n_cells, holed.n_cells, len(pairs))[2] >= 0.95, (clean.n_cells, holed.n_cells)
    ev = evaluate(sim.footprints, sim.traces, holed.footprints, holed.traces["baseline_adjusted"])
    assert ev.f1 >= 0.95, ev.summary()
    assert all(np.isfinite(t).all() for t in holed.traces.values())
    assert holed.run_info["n_nonfinite_values"] == n_bad and holed.run_info["n_pixels_without_data"] == 87
    assert (holed.footprints[:, 0, :] == 0).all() and (holed.footprints[:, :, -1] == 0).all()  # left out


@pytest.mark.parametrize("name, device", [("array_api_strict", "device1"), ("cupy", None)])
def test_nan_handling_under_other_namespaces(name, device):
    """The NaN path of the pipeline (filling, pixels without data left out through the mask) under a non-NumPy
    namespace (array_api_strict on a second device catches a missing ``device=``): the same cells as NumPy,
    footprints and traces within 1e-4 of each array's max. A smaller movie than above, to keep it quick."""
    xp, device = make_namespace(name, device)
    small = simulate_2p(n_rows=28, n_cols=32, n_frames=200, n_cells=3, cell_radius=(3, 4), event_rate=0.04, seed=3)
    movie = small.movie.astype(np.float32)
    movie[50, 5:12, 5:12] = np.nan
    movie[[80, 81]] = np.nan
    movie[:, 0, :] = np.nan
    with pytest.warns(UserWarning, match="NaN or infinite values"):
        ref = nwb_extract.extract(movie, avg_cell_radius=RADIUS, backend="numpy")
        result = nwb_extract.extract(to_xp(movie, xp, device), avg_cell_radius=RADIUS)
    assert result.n_cells == ref.n_cells >= 2
    assert result.run_info["n_pixels_without_data"] == ref.run_info["n_pixels_without_data"] == 32
    np.testing.assert_allclose(result.footprints, ref.footprints, atol=1e-4)
    for kind, trace in ref.traces.items():
        np.testing.assert_allclose(result.traces[kind], trace, atol=1e-4 * np.abs(trace).max())


def test_nan_run_info_is_written_and_read_back(sim, tmp_path, capsys):
    movie, n_bad = _with_holes(sim.movie)
    path = tmp_path / "holes.nwb"
    write_simulated_nwb(path, sim)
    import h5py

    with h5py.File(path, "r+") as f:
        f["acquisition/TwoPhotonSeries/data"][...] = movie
    out = tmp_path / "holes_extract.nwb"
    assert main(["run", str(path), "-o", str(out), "--set", f"avg_cell_radius={RADIUS}", "--backend", "numpy"]) == 0
    err = capsys.readouterr().err
    assert f"nwb-extract run: warning: the movie holds {n_bad} NaN or infinite values" in err
    assert "Traceback" not in err and ".py:" not in err  # one line, no source location
    assert read_result(out).run_info["n_nonfinite_values"] == n_bad


# ----------------------------------------------------------------------------------------------------------------
# too short, constant


@pytest.mark.parametrize("n_frames, dst", [(2, 1), (4, 1), (9, 2)])
def test_too_few_frames_is_a_clear_error(sim, n_frames, dst):
    with pytest.raises(InputError, match=rf"the movie has {n_frames} frames.*at least 5 working frames"):
        nwb_extract.extract(sim.movie[:n_frames], avg_cell_radius=RADIUS, downsample_time_by=dst, backend="numpy")


def test_few_frames_warn_and_still_run(sim):
    with pytest.warns(UserWarning, match=r"only 50 frames, fewer than 10 x avg_event_tau = 100"):
        result = nwb_extract.extract(sim.movie[:50], avg_cell_radius=RADIUS, backend="numpy")
    assert result.n_cells <= sim.n_cells


@pytest.mark.parametrize("value", [0.0, 7.5])
def test_constant_movie_is_a_clear_error(value):
    with pytest.raises(InputError, match="constant in time .*no activity to extract"):
        nwb_extract.extract(np.full((120, 20, 24), value, np.float32), avg_cell_radius=RADIUS, backend="numpy")


def test_huge_values_are_a_clear_error():
    """Found by the property tests: int64 values near -2**63 made float32 sums of squares overflow and the solver
    fail deep inside numpy.linalg (LinAlgError). Now a clear error that says to rescale."""
    movie = np.zeros((12, 6, 6), np.int64)
    movie[::2, 2:4, 2:4] = np.iinfo(np.int64).min
    with pytest.raises(InputError, match=r"values up to 9.22e\+18 in magnitude.*rescale the movie"):
        nwb_extract.extract(movie, avg_cell_radius=2.0, backend="numpy")


# ----------------------------------------------------------------------------------------------------------------
# a run without cells: a valid, inspectable file


def _errors(path):
    return [m for m in inspect_nwbfile(nwbfile_path=str(path))
            if m.importance in (Importance.ERROR, Importance.PYNWB_VALIDATION, Importance.CRITICAL)]


def test_zero_cell_run_writes_a_file_nwbinspector_reads(sim, tmp_path, capsys):
    """Before: a 5-frame movie gave a file that made nwbinspector 0.7.2 crash with 3 ERRORs (its table checks read
    element 0 of each zero-length column). Now: no ERROR, pynwb validation clean, read back with 0 cells, and
    stderr says no cell was found."""
    path = write_simulated_nwb(tmp_path / "short.nwb", simulate_2p(n_rows=40, n_cols=48, n_frames=5, n_cells=3,
                                                                   seed=1))
    out = tmp_path / "short_extract.nwb"
    assert main(["run", str(path), "-o", str(out), "--set", f"avg_cell_radius={RADIUS}", "--backend", "numpy"]) == 0
    captured = capsys.readouterr()
    assert "found 0 cells" in captured.out
    assert "nwb-extract run: warning: no cells were found" in captured.err
    assert "nwb-extract run: warning: the movie has only 5 frames" in captured.err
    assert _errors(out) == []
    assert validate(path=str(out)) == []
    back = read_result(out)
    assert back.n_cells == 0 and back.footprints.shape == (0, 40, 48)
    assert all(t.shape == (5, 0) for t in back.traces.values())
    assert all(v.shape == (0,) for v in back.roi_metrics.values())
    assert NwbExtractSegmentationExtractor.from_nwb(out).get_num_rois() == 0
