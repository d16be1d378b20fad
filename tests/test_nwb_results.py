"""Tests of the NWB result writer and reader: write_result, read_result, list_runs, SourceInfo
(nwb_extract.io.nwb_write, nwb_read, source).

The engine runs once per session (known-footprints path on a non-square simulated movie with an asymmetric cell
layout, 40 x 56 pixels); everything else reuses that result or edits it with ``dataclasses.replace``. Masks, traces
and images are compared exactly (the writer stores float32 data as given, nothing is recomputed), so the only
tolerance in this file is none.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from datetime import datetime, timezone

import h5py
import numpy as np
import pynwb
import pytest
from nwbinspector import Importance, inspect_nwbfile, load_config
from pynwb import NWBHDF5IO

import nwb_extract
from conftest import REPO_ROOT
from nwb_extract import ExtractConfig
from nwb_extract.errors import InputError
from nwb_extract.io import schema
from nwb_extract.io.movie_write import write_simulated_nwb
from nwb_extract.io.nwb_read import list_runs, read_config, read_result
from nwb_extract.io.nwb_write import write_result
from nwb_extract.io.source import SourceInfo
from nwb_extract.result import EliminatedCandidates, ExtractResult
from nwb_extract.simulate import simulate_2p

START = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
SERIES = "acquisition/TwoPhotonSeries"
SUBJECT = {"subject_id": "m1", "species": "Mus musculus", "sex": "F", "age": "P60D", "description": "test mouse"}
IMAGING_PLANE = {"location": "VISp", "indicator": "GCaMP6f", "device_name": "Scope2p", "grid_spacing": [1e-6, 2e-6]}


@pytest.fixture(scope="session")
def sim():
    return simulate_2p(n_rows=40, n_cols=56, n_frames=300, n_cells=8, seed=1)


@pytest.fixture(scope="session")
def movie_file(sim, tmp_path_factory):
    path = tmp_path_factory.mktemp("movie") / "movie.nwb"
    return write_simulated_nwb(path, sim, session_start_time=START, identifier="movie-1", subject=SUBJECT,
                               imaging_plane=IMAGING_PLANE, starting_time=2.0)


@pytest.fixture(scope="session")
def result(sim):
    return nwb_extract.extract(sim.movie, S_init=sim.footprints, regression_only=True, avg_cell_radius=3.5,
                               backend="numpy")


@pytest.fixture(scope="session")
def source(movie_file):
    return SourceInfo.from_nwb(movie_file, SERIES, dandiset_id="000123", asset_id="abc-1")


@pytest.fixture(scope="session")
def new_file(result, source, tmp_path_factory):
    path, run = write_result(result, tmp_path_factory.mktemp("new") / "result.nwb", source=source)
    assert run == "run1"
    return path


@pytest.fixture(scope="session")
def in_place_file(result, movie_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("inplace") / "movie.nwb"
    shutil.copy(movie_file, path)
    written, run = write_result(result, path, source=SourceInfo.from_nwb(path, SERIES), in_place=True)
    assert (written, run) == (path, "run1")
    return path


def _bad_messages(path, config=None):
    return [m for m in inspect_nwbfile(nwbfile_path=str(path), config=config)
            if m.importance in (Importance.CRITICAL, Importance.BEST_PRACTICE_VIOLATION)]


# -- validity


@pytest.mark.parametrize("which", ["new_file", "in_place_file"])
def test_result_file_passes_pynwb_validate_and_nwbinspector(which, request):
    path = request.getfixturevalue(which)
    assert pynwb.validate(path=str(path)) == []
    assert _bad_messages(path) == []
    assert _bad_messages(path, config=load_config("dandi")) == []


# -- masks, centroids, metrics


def test_image_masks_equal_footprints_in_stored_axis_order(new_file, movie_file, result):
    with h5py.File(movie_file, "r") as f:
        frame_shape = f[SERIES]["data"].shape[1:]
    with h5py.File(new_file, "r") as f:
        masks = f["processing/ophys/ImageSegmentation/PlaneSegmentation/image_mask"]
        assert masks.shape == (result.n_cells, *frame_shape) == (8, 40, 56)  # non-square: a transpose cannot hide
        assert masks.dtype == np.float32 and masks.chunks == (1, 40, 56) and masks.compression == "gzip"
        assert masks[()].tobytes() == result.footprints.tobytes()


def test_pixel_masks_index_stored_axes(result, source, tmp_path):
    path, _ = write_result(result, tmp_path / "pixel.nwb", source=source, mask_type="pixel")
    assert pynwb.validate(path=str(path)) == []
    with NWBHDF5IO(str(path), "r") as io:
        table = io.read().processing["ophys"]["ImageSegmentation"]["PlaneSegmentation"]
        assert "image_mask" not in table.colnames
        for k in (0, result.n_cells - 1):
            pixels = np.asarray(table["pixel_mask"][k])
            expected = np.argwhere(result.footprints[k] != 0)  # (x = stored axis 1, y = stored axis 2)
            assert np.array_equal(np.stack([pixels["x"], pixels["y"]], axis=1), expected)
            assert np.array_equal(pixels["weight"], result.footprints[k][tuple(expected.T)])
    assert read_result(path).footprints.tobytes() == result.footprints.tobytes()


def test_centroids_and_metric_columns(new_file, result):
    with NWBHDF5IO(str(new_file), "r") as io:
        table = io.read().processing["ophys"]["ImageSegmentation"]["PlaneSegmentation"]
        centroids = table["ROICentroids"].data[:]
        assert np.array_equal(centroids, result.centroids())
        x, y = np.round(centroids).astype(int).T
        assert np.all(result.footprints[np.arange(result.n_cells), x, y] > 0)  # [x, y] lands inside each cell
        for name, values in result.roi_metrics.items():
            assert np.array_equal(table[name].data[:], values)
            assert table[name].description
        assert list(table.id[:]) == list(range(result.n_cells))


# -- traces, images, run info


def test_three_series_with_the_source_timing(new_file, result):
    with NWBHDF5IO(str(new_file), "r") as io:
        ophys = io.read().processing["ophys"]
        assert "Fluorescence" not in ophys.data_interfaces  # preprocessing on: ΔF/F traces go to DfOverF
        series = ophys["DfOverF"].roi_response_series
        kinds = {"RoiResponseSeries": "baseline_adjusted", "NonnegRoiResponseSeries": "nonneg",
                 "RawRoiResponseSeries": "raw"}
        assert set(series) == set(kinds)
        for name, kind in kinds.items():
            assert np.array_equal(series[name].data[:], result.traces[kind])
            assert f"kind {kind!r}" in series[name].description and "ΔF/F" in series[name].description
            assert series[name].rate == 30.0 and series[name].starting_time == 2.0
            assert list(series[name].rois.data[:]) == list(range(result.n_cells))
            assert series[name].rois.table.name == "PlaneSegmentation"


def test_frame_range_and_timestamps(result, sim, tmp_path):
    # a source series with irregular timestamps; the result covers frames 100:300 of it
    stamps = np.cumsum(np.full(400, 0.05) + np.linspace(0, 0.01, 400))
    nwbfile = pynwb.NWBFile(session_description="timestamps", identifier="ts", session_start_time=START)
    device = nwbfile.create_device(name="Scope")
    plane = nwbfile.create_imaging_plane(
        name="ImagingPlane", optical_channel=pynwb.ophys.OpticalChannel(name="Green", description="green",
                                                                        emission_lambda=510.0),
        description="plane", device=device, excitation_lambda=920.0, indicator="GCaMP6f", location="VISp")
    movie = np.concatenate([sim.movie[:100], sim.movie])
    nwbfile.add_acquisition(pynwb.ophys.TwoPhotonSeries(name="TwoPhotonSeries", data=movie, imaging_plane=plane,
                                                        unit="a.u.", timestamps=stamps))
    with NWBHDF5IO(str(tmp_path / "ts.nwb"), "w") as io:
        io.write(nwbfile)
    src = SourceInfo.from_nwb(tmp_path / "ts.nwb", SERIES, frame_range=(100, 400))
    path, _ = write_result(result, tmp_path / "out.nwb", source=src)
    with NWBHDF5IO(str(path), "r") as io:
        series = io.read().processing["ophys"]["DfOverF"].roi_response_series
        assert np.array_equal(series["RoiResponseSeries"].timestamps[:], stamps[100:400])
    with h5py.File(path, "r") as f:  # the other series link to the first series' timestamps (stored once)
        raw = f["processing/ophys/DfOverF/RawRoiResponseSeries"].get("timestamps", getlink=True)
        assert isinstance(raw, h5py.SoftLink) and raw.path.endswith("DfOverF/RoiResponseSeries/timestamps")
    shifted = SourceInfo.from_nwb(src.path, SERIES, frame_range=(0, 300))
    with pytest.raises(InputError, match=r"frames 0:300 of acquisition/TwoPhotonSeries"):
        write_result(dataclasses.replace(result, traces={k: v[:250] for k, v in result.traces.items()}),
                     tmp_path / "bad.nwb", source=shifted)


def test_rate_timing_shifts_with_the_frame_range(result, movie_file, tmp_path):
    src = SourceInfo.from_nwb(movie_file, SERIES, frame_range=(50, 300))
    cut = dataclasses.replace(result, traces={k: v[50:] for k, v in result.traces.items()})
    path, _ = write_result(cut, tmp_path / "cut.nwb", source=src)
    with NWBHDF5IO(str(path), "r") as io:
        series = io.read().processing["ophys"]["DfOverF"]["RoiResponseSeries"]
        assert series.starting_time == pytest.approx(2.0 + 50 / 30.0, abs=1e-12) and series.rate == 30.0
    with h5py.File(path, "r") as f:
        attrs = f["processing/ophys/ExtractRunInfo"].attrs
        assert (attrs["source_frame_start"], attrs["source_frame_stop"]) == (50, 300)


def test_summary_images(new_file, result):
    with NWBHDF5IO(str(new_file), "r") as io:
        images = io.read().processing["ophys"]["SegmentationImages"].images
        assert set(images) == {"summary_image", "max_image", "F_per_pixel"}
        for name in images:
            assert np.array_equal(images[name].data[:], getattr(result, name))
            assert images[name].data.shape == (40, 56)


def test_run_info_attributes_config_and_source(new_file, result, source):
    with NWBHDF5IO(str(new_file), "r") as io:
        ophys = io.read().processing["ophys"]
        info = ophys["ExtractRunInfo"]
        assert info.plane_segmentation is ophys["ImageSegmentation"]["PlaneSegmentation"]
        assert info.summary_images is ophys["SegmentationImages"]
        assert info.roi_responses_path == "processing/ophys/DfOverF"
        assert info.eliminated_plane_segmentation_path is None
        assert (info.run_name, info.run_index, info.backend, info.device) == ("run1", 1, "numpy", "cpu")
        assert info.package_version == nwb_extract.__version__ and info.engine_version == "EXTRACT 1.3.0"
        assert info.stop_reason == "external init" and info.axis_order == schema.AXIS_ORDER
        assert info.seconds_total == result.timings["total"] and info.seconds_frr == result.timings["frr"]
        assert (info.source_path, info.source_series) == (str(source.path), SERIES)
        assert list(info.source_shape) == [300, 40, 56] and info.source_dtype == "float32"
        assert (info.dandiset_id, info.dandi_asset_id) == ("000123", "abc-1")
        assert info.avg_cell_radius == 3.5 and bool(info.regression_only) is True and info.max_iter == 0
        assert info.thresholds_T_min_snr == 7.0 and info.python_backend == "numpy"
        assert info.trace_output_option == "baseline_adjusted"
        assert np.array_equal(info.S_init[:], result.config.S_init)
        settings = json.loads(info.config_json)
        assert settings["S_init"] == "<dataset S_init>" and settings["avg_cell_radius"] == 3.5
        run = json.loads(info.run_info_json)
        assert run["versions"] == result.versions and run["timings"] == result.timings
        assert run["trace_series"] == {"RoiResponseSeries": "baseline_adjusted", "NonnegRoiResponseSeries": "nonneg",
                                       "RawRoiResponseSeries": "raw"}


def test_new_file_copies_source_metadata(new_file, movie_file):
    with NWBHDF5IO(str(movie_file), "r") as io_src, NWBHDF5IO(str(new_file), "r") as io_new:
        src, new = io_src.read(), io_new.read()
        assert new.identifier != src.identifier and new.session_start_time == src.session_start_time
        assert new.session_description == src.session_description
        assert {k: getattr(new.subject, k) for k in SUBJECT} == SUBJECT
        plane_src, plane_new = src.imaging_planes["ImagingPlane"], new.imaging_planes["ImagingPlane"]
        for field in ("description", "excitation_lambda", "imaging_rate", "indicator", "location"):
            assert getattr(plane_new, field) == getattr(plane_src, field)
        assert np.array_equal(plane_new.grid_spacing[:], plane_src.grid_spacing[:])
        assert plane_new.device.name == "Scope2p" and plane_new.device.description == plane_src.device.description
        assert plane_new.optical_channel[0].emission_lambda == plane_src.optical_channel[0].emission_lambda
        assert len(new.acquisition) == 0  # the movie is not copied; the run info names it
        table = new.processing["ophys"]["ImageSegmentation"]["PlaneSegmentation"]
        assert table.imaging_plane is plane_new and table.reference_images is None


def test_in_place_links_the_source_series(in_place_file, result):
    with NWBHDF5IO(str(in_place_file), "r") as io:
        nwbfile = io.read()
        series = nwbfile.acquisition["TwoPhotonSeries"]
        table = nwbfile.processing["ophys"]["ImageSegmentation"]["PlaneSegmentation"]
        assert table.imaging_plane is series.imaging_plane
        assert list(table.reference_images) == [series]
        assert series.data.shape == (300, 40, 56)  # the movie is untouched
    assert read_result(in_place_file).footprints.tobytes() == result.footprints.tobytes()


# -- reading back


def test_read_result_round_trip(new_file, result):
    back = read_result(new_file)
    assert isinstance(back, ExtractResult)
    assert back.footprints.tobytes() == result.footprints.tobytes()
    assert back.traces.keys() == result.traces.keys() and back.primary_trace == result.primary_trace
    for kind in result.traces:
        assert back.traces[kind].tobytes() == result.traces[kind].tobytes()
    for name in ("summary_image", "max_image", "F_per_pixel"):
        assert np.array_equal(getattr(back, name), getattr(result, name))
    assert back.roi_metrics.keys() == result.roi_metrics.keys()
    for name, values in result.roi_metrics.items():
        assert np.array_equal(back.roi_metrics[name], values) and back.roi_metrics[name].dtype == values.dtype
    assert back.config == result.config
    assert (back.timings, back.versions, back.stop_reason) == (result.timings, result.versions, result.stop_reason)
    assert (back.backend, back.device, back.eliminated) == (result.backend, result.device, None)
    assert back.run_info == json.loads(json.dumps(result.run_info))  # tuples come back as lists (JSON)


def test_zarr_copy_reads_back(new_file, result, tmp_path):
    """The result exported to NWB Zarr (hdmf-zarr) reads back with read_result: our run-info type's integer
    attributes are int32 in the spec, which the generated class accepts as the Python ints hdmf-zarr returns."""
    from hdmf_zarr.nwb import NWBZarrIO
    from pynwb import NWBHDF5IO

    zarr_path = tmp_path / "result.nwb.zarr"
    with NWBHDF5IO(str(new_file), "r") as src, NWBZarrIO(str(zarr_path), "w") as dst:
        dst.export(src_io=src, nwbfile=src.read(), write_args={"link_data": False})
    back = read_result(zarr_path)
    assert list_runs(zarr_path) == list_runs(new_file)
    assert back.footprints.tobytes() == result.footprints.tobytes()
    for kind in result.traces:
        assert back.traces[kind].tobytes() == result.traces[kind].tobytes()
    assert back.config == result.config


def test_config_round_trip_reproduces_the_run(new_file, result, sim):
    config = read_config(new_file)
    assert config == result.config
    again = nwb_extract.extract(sim.movie, config)
    assert again.footprints.tobytes() == result.footprints.tobytes()
    for kind in result.traces:
        assert np.array_equal(again.traces[kind], result.traces[kind])


def test_fresh_process_without_the_package_reads_the_cached_spec(new_file):
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["nwb_extract"] = None  # importing the package would fail
        from pynwb import NWBHDF5IO
        with NWBHDF5IO({str(new_file)!r}, "r", load_namespaces=True) as io:
            ophys = io.read().processing["ophys"]
            info = ophys["ExtractRunInfo"]
            print(json.dumps({{
                "series": sorted(ophys["DfOverF"].roi_response_series),
                "masks": list(ophys["ImageSegmentation"]["PlaneSegmentation"]["image_mask"].data.shape),
                "type": type(info).__name__, "run_name": info.run_name, "backend": info.backend,
                "plane": info.plane_segmentation.name,
                "radius": json.loads(info.config_json)["avg_cell_radius"],
            }}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"series": ["NonnegRoiResponseSeries", "RawRoiResponseSeries", "RoiResponseSeries"],
                    "masks": [8, 40, 56], "type": "ExtractRunInfo", "run_name": "run1", "backend": "numpy",
                    "plane": "PlaneSegmentation", "radius": 3.5}


def test_roiextractors_reads_masks_and_primary_trace(new_file, result):
    from roiextractors import NwbSegmentationExtractor

    extractor = NwbSegmentationExtractor(new_file)
    # roiextractors reads NWB masks (N, x, y) as x = width and returns (height, width, N): the transpose of ours
    assert np.array_equal(extractor.get_roi_image_masks(), np.transpose(result.footprints, (2, 1, 0)))
    assert extractor.get_num_rois() == result.n_cells
    assert np.array_equal(extractor.get_traces(name="dff"), result.primary)  # DfOverF/RoiResponseSeries


# -- several runs, options


def test_two_runs_coexist_and_are_selected_by_name(result, sim, movie_file, tmp_path):
    path = tmp_path / "movie.nwb"
    shutil.copy(movie_file, path)
    src = SourceInfo.from_nwb(path, SERIES)
    nonneg = nwb_extract.extract(sim.movie, S_init=sim.footprints, regression_only=True, avg_cell_radius=3.5,
                                 backend="numpy", trace_output_option="nonneg")
    write_result(result, path, source=src, in_place=True)
    assert write_result(nonneg, path, source=src, in_place=True, run_name="nonneg-run")[1] == "nonneg-run"
    assert list_runs(path) == ["run1", "nonneg-run"]
    assert pynwb.validate(path=str(path)) == []
    assert read_result(path).config == result.config  # the first run by default
    second = read_result(path, run="nonneg-run")
    assert second.config == nonneg.config and second.primary_trace == "nonneg"
    assert np.array_equal(second.traces["nonneg"], nonneg.traces["nonneg"])
    with NWBHDF5IO(str(path), "r") as io:
        ophys = io.read().processing["ophys"]
        assert set(ophys["ImageSegmentation"].plane_segmentations) == {"PlaneSegmentation",
                                                                       "PlaneSegmentation_nonneg-run"}
        series = ophys["DfOverF_nonneg-run"].roi_response_series
        assert set(series) == {"RoiResponseSeries", "BaselineAdjustedRoiResponseSeries", "RawRoiResponseSeries"}
        assert np.array_equal(series["RoiResponseSeries"].data[:], nonneg.traces["nonneg"])
        assert ophys["ExtractRunInfo_nonneg-run"].plane_segmentation.name == "PlaneSegmentation_nonneg-run"
    with pytest.raises(InputError, match="a run named 'run1' already exists"):
        write_result(result, path, source=src, in_place=True, run_name="run1")
    with pytest.raises(InputError, match="no run named 'other'.*runs are run1, nonneg-run"):
        read_result(path, run="other")


def test_eliminated_candidates_only_on_request(result, source, tmp_path):
    eliminated = EliminatedCandidates(footprints=result.footprints[:2] * np.float32(0.5),
                                      traces=result.traces["raw"][:, :2].copy(), rules=("T_zeroed", "S_tiny"))
    with_bad = dataclasses.replace(result, eliminated=eliminated)
    plain, _ = write_result(with_bad, tmp_path / "plain.nwb", source=source)
    kept, _ = write_result(with_bad, tmp_path / "kept.nwb", source=source, include_eliminated=True)
    assert read_result(plain).eliminated is None
    assert pynwb.validate(path=str(kept)) == [] and _bad_messages(kept) == []
    back = read_result(kept).eliminated
    assert back.rules == ("T_zeroed", "S_tiny")
    assert back.footprints.tobytes() == eliminated.footprints.tobytes()
    assert np.array_equal(back.traces, eliminated.traces)
    with NWBHDF5IO(str(kept), "r") as io:
        ophys = io.read().processing["ophys"]
        assert list(ophys["ImageSegmentation"]["EliminatedPlaneSegmentation"]["elimination_rule"].data[:]) == \
            ["T_zeroed", "S_tiny"]
        assert ophys["DfOverF"]["EliminatedRoiResponseSeries"].rois.table.name == "EliminatedPlaneSegmentation"


def test_trace_options_least_squares_none_and_fluorescence(result, source, tmp_path):
    extra = result.traces["raw"] * np.float32(2)
    least = dataclasses.replace(result, traces={**result.traces, "least_squares": extra}, primary_trace="least_squares",
                                config=result.config.replace(trace_output_option="least_squares", preprocess=False))
    path, _ = write_result(least, tmp_path / "ls.nwb", source=source)
    with NWBHDF5IO(str(path), "r") as io:
        ophys = io.read().processing["ophys"]
        assert "DfOverF" not in ophys.data_interfaces  # no preprocessing: not ΔF/F
        series = ophys["Fluorescence"].roi_response_series
        assert set(series) == {"RoiResponseSeries", "BaselineAdjustedRoiResponseSeries", "NonnegRoiResponseSeries",
                               "RawRoiResponseSeries"}
        assert np.array_equal(series["RoiResponseSeries"].data[:], extra)
    none = dataclasses.replace(result, traces={}, primary_trace=None,
                               config=result.config.replace(trace_output_option="none"))
    path, _ = write_result(none, tmp_path / "none.nwb", source=source)
    assert pynwb.validate(path=str(path)) == []
    with NWBHDF5IO(str(path), "r") as io:
        ophys = io.read().processing["ophys"]
        assert not {"DfOverF", "Fluorescence"} & set(ophys.data_interfaces)
    back = read_result(path)
    assert back.traces == {} and back.primary_trace is None


def test_no_source_needs_a_rate(result, tmp_path):
    with pytest.raises(InputError, match="needs the frame timing"):
        write_result(result, tmp_path / "x.nwb")
    path, _ = write_result(result, tmp_path / "x.nwb", rate=15.0)
    assert pynwb.validate(path=str(path)) == [] and _bad_messages(path) == []
    with NWBHDF5IO(str(path), "r") as io:
        assert io.read().processing["ophys"]["DfOverF"]["RoiResponseSeries"].rate == 15.0


def test_errors_name_the_problem_and_the_fix(result, source, new_file, movie_file, tmp_path):
    transposed = dataclasses.replace(
        result, footprints=np.ascontiguousarray(np.transpose(result.footprints, (0, 2, 1))),
        summary_image=result.summary_image.T, max_image=result.max_image.T, F_per_pixel=result.F_per_pixel.T)
    with pytest.raises(InputError, match=r"frame shape \(56, 40\) but acquisition/TwoPhotonSeries in .* stores "
                                         r"frames of shape \(40, 56\)"):
        write_result(transposed, tmp_path / "t.nwb", source=source)
    with pytest.raises(InputError, match="already exists; pass overwrite=True"):
        write_result(result, new_file, source=source)
    with pytest.raises(InputError, match="in_place=True needs source"):
        write_result(result, movie_file, in_place=True)
    with pytest.raises(InputError, match="output_path .* is not source.path"):
        write_result(result, new_file, source=source, in_place=True)
    with pytest.raises(InputError, match="mask_type must be one of 'image', 'pixel'"):
        write_result(result, tmp_path / "m.nwb", source=source, mask_type="voxel")
    with pytest.raises(InputError, match="run_name 'a b' is not valid"):
        write_result(result, tmp_path / "m.nwb", source=source, run_name="a b")
    with pytest.raises(InputError, match="no series 'acquisition/Missing'"):
        SourceInfo.from_nwb(movie_file, "acquisition/Missing")
    with pytest.raises(InputError, match="holds no nwb-extract run"):
        read_result(movie_file)
    assert list_runs(movie_file) == []


# -- atomic in-place append


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


#: Code run in the writer's process that kills it (SIGKILL) at a point of the in-place append: "copied" (the
#: temporary copy exists), "before_replace" (the copy holds the new run, is closed and is about to replace the file).
KILL_AT = {
    "copied": "original = shutil.copy2\nshutil.copy2 = lambda *a, **k: (original(*a, **k), kill())",
    "before_replace": "os.replace = lambda *a, **k: kill()",
}


@pytest.mark.parametrize("point", sorted(KILL_AT))
def test_in_place_append_survives_a_kill(point, result, movie_file, tmp_path):
    path = tmp_path / "movie.nwb"
    shutil.copy(movie_file, path)
    before = _sha256(path)
    (tmp_path / "result.pkl").write_bytes(pickle.dumps(result))
    script = textwrap.dedent(f"""
        import os, pickle, shutil, signal
        from nwb_extract.io.nwb_write import write_result
        from nwb_extract.io.source import SourceInfo
        def kill():
            os.kill(os.getpid(), signal.SIGKILL)
        result = pickle.loads(open({str(tmp_path / "result.pkl")!r}, "rb").read())
        source = SourceInfo.from_nwb({str(path)!r}, {SERIES!r})
    """) + KILL_AT[point] + textwrap.dedent(f"""
        write_result(result, {str(path)!r}, source=source, in_place=True)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert out.returncode == -signal.SIGKILL, out.stderr  # killed at that point, not an ordinary error
    assert _sha256(path) == before and list_runs(path) == []  # the original is intact and readable
    leftovers = list(tmp_path.glob(".movie.*.partial.nwb"))
    assert len(leftovers) == 1  # the killed writer's temporary copy
    if point == "before_replace":  # the kill came after the whole run was written into the copy
        assert list_runs(leftovers[0]) == ["run1"]


# -- size


def test_1000_rois_on_512x512_write_under_50_mb(tmp_path):
    rng = np.random.default_rng(0)
    n_cells, side, n_frames = 1000, 512, 500
    footprints = np.zeros((n_cells, side, side), dtype=np.float32)
    offsets = np.arange(-8, 9)
    for k in range(n_cells):  # Gaussian cells, radius ~3-4 px, cut at 5 % (about 60-110 pixels each)
        row, col = rng.integers(8, side - 9, size=2)
        sigma = rng.uniform(2.5, 4.0)
        blob = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma ** 2))
        blob = blob * (1 + 0.05 * rng.standard_normal(blob.shape))
        blob[blob < 0.05] = 0
        footprints[k, row - 8:row + 9, col - 8:col + 9] = blob / blob.max()
    traces = {kind: rng.standard_normal((n_frames, n_cells)).astype(np.float32)
              for kind in ("baseline_adjusted", "nonneg", "raw")}
    image = rng.random((side, side))
    big = ExtractResult(footprints=footprints, traces=traces, primary_trace="baseline_adjusted",
                        summary_image=image, max_image=image, F_per_pixel=image,
                        config=ExtractConfig(backend="numpy").resolved(),
                        roi_metrics={"area": (footprints > 0.1).sum(axis=(1, 2))})
    path, _ = write_result(big, tmp_path / "big.nwb", rate=30.0)
    size_mb = path.stat().st_size / 2**20
    print(f"1000 ROIs, 512 x 512, {n_frames} frames x 3 trace kinds: {size_mb:.1f} MiB")
    assert size_mb < 50
    with h5py.File(path, "r") as f:
        masks = f["processing/ophys/ImageSegmentation/PlaneSegmentation/image_mask"]
        assert masks.shape == (1000, 512, 512) and masks.id.get_storage_size() < 10 * 2**20
        assert np.array_equal(masks[500], footprints[500])


def test_run_info_records_the_backend_that_ran(sim, source, tmp_path):
    """The config asks for 'auto' (use_gpu true by default); the file says what ran: NumPy here (use_gpu false),
    CuPy on a GPU machine (use_gpu true)."""
    asked = ExtractConfig(avg_cell_radius=3.5, S_init=sim.footprints, regression_only=True)
    assert asked.use_gpu and asked.python.backend == "auto"
    result = nwb_extract.extract(sim.movie, asked, progress=False)
    path, _ = write_result(result, tmp_path / "auto.nwb", source=source)
    with NWBHDF5IO(str(path), "r") as io:
        info = io.read().processing["ophys"]["ExtractRunInfo"]
        assert info.backend == result.backend and info.python_backend == result.backend
        assert bool(info.use_gpu) is (result.backend == "cupy")
        assert json.loads(info.config_json)["use_gpu"] is (result.backend == "cupy")
    assert read_config(path).python.backend == result.backend


def test_layout_doc_lists_the_columns_written(new_file):
    """docs/nwb-layout.md's PlaneSegmentation column table names exactly the columns of a written run (the ST
    metrics only when computed, which the default run does not)."""
    from nwb_extract.engine.quality import ST_METRIC_NAMES

    doc = (REPO_ROOT / "docs" / "nwb-layout.md").read_text()
    section = doc.split("## PlaneSegmentation columns")[1].split("\n## ")[0]
    rows = re.findall(r"^\| `([A-Za-z0-9_]+)` \| (always|ST only) \|", section, flags=re.M)
    always = {name for name, when in rows if when == "always"}
    assert {name for name, when in rows if when == "ST only"} == set(ST_METRIC_NAMES)
    with NWBHDF5IO(str(new_file), "r") as io:
        table = io.read().processing["ophys"]["ImageSegmentation"]["PlaneSegmentation"]
        written = set(table.colnames) - {"image_mask"}
        assert written == always
        assert not [name for name in table.colnames if "§" in table[name].description]
