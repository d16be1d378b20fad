"""roiextractors plugin: conformance of NwbExtractSegmentationExtractor with the SegmentationExtractor API of
roiextractors 0.10, the axis rule (ImagingExtractor path == NWB path), reloading a stored run, and the
NwbSeriesImagingExtractor on series roiextractors' own NWB reader cannot open.

The movie is non-square (stored frames 40 x 56) with cells placed asymmetrically, so a transposition fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from roiextractors import NumpyImagingExtractor, SegmentationExtractor

from nwb_extract.io.movie_write import write_simulated_nwb
from nwb_extract.io.nwb_write import write_result
from nwb_extract.roiextractors import NwbExtractSegmentationExtractor, NwbSeriesImagingExtractor
from nwb_extract.simulate import simulate_2p

CONFIG = {"avg_cell_radius": 3.5}
#: roiextractors trace name -> ExtractResult kind: the primary (baseline_adjusted) as dff, then every kind under its
#: trace_output_option name, so our unconstrained kind is not called 'raw' (raw fluorescence in roiextractors)
NAMES = {"dff": "baseline_adjusted", "baseline_adjusted": "baseline_adjusted", "nonneg": "nonneg",
         "no_constraint": "raw"}


@pytest.fixture(scope="module")
def sim():
    return simulate_2p(n_rows=40, n_cols=56, n_frames=300, n_cells=8, seed=1)


@pytest.fixture(scope="module")
def movie_nwb(sim, tmp_path_factory):
    return write_simulated_nwb(tmp_path_factory.mktemp("movie") / "movie.nwb", sim, chunk_frames=100,
                               starting_time=5.0)


@pytest.fixture(scope="module")
def seg(movie_nwb):
    """One engine run shared by the conformance tests."""
    return NwbExtractSegmentationExtractor(file_path=movie_nwb, config=CONFIG)


def test_imaging_extractor_transposes_stored_frames(movie_nwb, sim):
    imaging = NwbSeriesImagingExtractor(movie_nwb)
    assert imaging.get_image_shape() == (56, 40)  # (height, width) = (stored y, stored x)
    np.testing.assert_array_equal(imaging.get_series(3, 7), sim.movie[3:7].transpose(0, 2, 1))
    assert imaging.get_num_samples() == 300 and imaging.get_sampling_frequency() == 30.0
    np.testing.assert_allclose(imaging.get_timestamps()[:3], 5.0 + np.arange(3) / 30.0, rtol=0, atol=1e-12)
    assert imaging.get_dtype() == np.float32
    imaging.close()


def test_imaging_extractor_reads_processing_series_in_file_with_epochs(sim, tmp_path):
    """roiextractors' NwbImagingExtractor sees only acquisition; ours finds a processing series."""
    from pynwb import NWBHDF5IO
    from pynwb.ophys import TwoPhotonSeries

    path = write_simulated_nwb(tmp_path / "raw.nwb", sim)
    with NWBHDF5IO(str(path), "a") as io:
        nwbfile = io.read()
        nwbfile.add_epoch(start_time=0.0, stop_time=5.0)
        raw = nwbfile.acquisition["TwoPhotonSeries"]
        module = nwbfile.create_processing_module(name="ophys", description="motion corrected")
        module.add(TwoPhotonSeries(name="MotionCorrected", data=sim.movie[:50] * 2, imaging_plane=raw.imaging_plane,
                                   rate=30.0, unit="a.u."))
        io.write(nwbfile)
    imaging = NwbSeriesImagingExtractor(path, "MotionCorrected")
    assert imaging.source.series_path == "processing/ophys/MotionCorrected"
    np.testing.assert_array_equal(imaging.get_series(0, 2), (sim.movie[:2] * 2).transpose(0, 2, 1))
    imaging.close()


def test_lazy_until_data_access(movie_nwb):
    fresh = NwbExtractSegmentationExtractor(file_path=movie_nwb, config=CONFIG)
    assert fresh.get_num_samples() == 300 and fresh.get_frame_shape() == (56, 40)
    assert fresh.get_timestamps()[0] == 5.0
    assert not fresh.has_run


def test_conformance(seg, sim):
    """The SegmentationExtractor API of roiextractors 0.10, value by value."""
    assert isinstance(seg, SegmentationExtractor)
    result = seg.result
    n = result.n_cells
    assert n >= 6  # 8 simulated cells; EXTRACT finds most on this easy movie
    ids = seg.get_roi_ids()
    assert ids == list(range(n)) and seg.get_num_rois() == n
    assert seg.get_background_ids() == [] and seg.get_num_background_components() == 0
    assert seg.get_frame_shape() == (56, 40) and seg.get_num_planes() == 1
    assert seg.get_sampling_frequency() == 30.0 and seg.get_num_samples() == 300
    # masks both ways, (height, width, n) = footprints (n, x, y) transposed
    masks = seg.get_roi_image_masks()
    assert masks.shape == (56, 40, n) and masks.dtype == np.float32
    np.testing.assert_array_equal(masks, result.footprints.transpose(2, 1, 0))
    pixel = seg.get_roi_pixel_masks(roi_ids=[2])[0]
    rows, cols = np.nonzero(masks[:, :, 2])
    np.testing.assert_array_equal(pixel[:, 0], rows)
    np.testing.assert_array_equal(pixel[:, 1], cols)
    np.testing.assert_array_equal(pixel[:, 2], masks[rows, cols, 2])
    # traces dict: the primary as dff, then our kinds by option name (plus roiextractors' empty standard keys)
    traces = {k: v for k, v in seg.get_traces_dict().items() if v is not None}
    assert list(traces) == list(NAMES)  # dff first: roiextractors' get_num_samples reads the first
    for name, kind in NAMES.items():
        np.testing.assert_array_equal(seg.get_traces(name=name), result.traces[kind])
    assert seg.get_traces(name="raw") is None  # no raw fluorescence: preprocessing ran
    np.testing.assert_array_equal(seg.get_traces(roi_ids=[3, 1], start_frame=10, end_frame=20, name="nonneg"),
                                  result.traces["nonneg"][10:20][:, [3, 1]])
    # images dict in (height, width)
    images = seg.get_images_dict()
    assert set(images) == {"summary_image", "max_image", "F_per_pixel"}
    np.testing.assert_array_equal(seg.get_image("max_image"), result.max_image.T)
    # properties: centroids [row, col] in (height, width), acceptance, metrics
    centroids = seg.get_property("roi_centroids", ids)
    np.testing.assert_allclose(centroids, result.centroids()[:, ::-1])
    weights = masks / masks.sum(axis=(0, 1))
    np.testing.assert_allclose(centroids[:, 0], (weights * np.arange(56)[:, None, None]).sum(axis=(0, 1)),
                               rtol=1e-5)  # float32 masks: relative error ~1e-6
    assert seg.get_property("is_accepted", ids).all()
    np.testing.assert_array_equal(seg.get_property("T_maxval", ids), result.roi_metrics["T_maxval"])
    # timestamps aligned to the input series (starting_time 5 s)
    np.testing.assert_allclose(seg.get_timestamps(), 5.0 + np.arange(300) / 30.0, rtol=0, atol=1e-12)


def test_slicing_and_selecting(seg):
    result = seg.result
    part = seg.slice_samples(100, 150)
    assert part.get_num_samples() == 50
    np.testing.assert_array_equal(part.get_traces(name="no_constraint"), result.traces["raw"][100:150])
    np.testing.assert_allclose(part.get_timestamps()[0], 5.0 + 100 / 30.0, rtol=0, atol=1e-12)
    subset = seg.select_rois([4, 0])
    assert subset.get_roi_ids() == [4, 0]
    np.testing.assert_array_equal(subset.get_roi_image_masks(), seg.get_roi_image_masks()[:, :, [4, 0]])
    np.testing.assert_array_equal(subset.get_traces(name="baseline_adjusted"),
                                  result.traces["baseline_adjusted"][:, [4, 0]])
    aligned = seg.get_timestamps() + 1.0
    seg.set_times(aligned)
    try:
        np.testing.assert_array_equal(seg.get_timestamps(), aligned)
    finally:
        seg._times = None


def test_imaging_extractor_input_gives_same_masks(seg, sim):
    """Axis rule: a (T, H, W) ImagingExtractor of the same stored movie gives byte-identical footprints."""
    frames = sim.movie.transpose(0, 2, 1)[..., None]  # roiextractors' (T, height, width, channels)
    other = NwbExtractSegmentationExtractor(NumpyImagingExtractor(frames, sampling_frequency=30.0), config=CONFIG)
    assert other.result.footprints.tobytes() == seg.result.footprints.tobytes()
    assert other.result.traces["raw"].tobytes() == seg.result.traces["raw"].tobytes()


def test_reload_from_result_file(seg, movie_nwb, tmp_path):
    from nwb_extract.io.source import SourceInfo

    path, _ = write_result(seg.result, tmp_path / "result.nwb",
                           source=SourceInfo.from_nwb(movie_nwb, "acquisition/TwoPhotonSeries"))
    loaded = NwbExtractSegmentationExtractor.from_nwb(path)
    assert loaded.has_run and loaded.config == seg.config
    np.testing.assert_array_equal(loaded.get_roi_image_masks(), seg.get_roi_image_masks())
    for name in NAMES:
        np.testing.assert_array_equal(loaded.get_traces(name=name), seg.get_traces(name=name))
    np.testing.assert_allclose(loaded.get_timestamps(), seg.get_timestamps(), rtol=0, atol=1e-12)
    assert loaded.get_frame_shape() == seg.get_frame_shape()


def test_bad_inputs(movie_nwb):
    from nwb_extract.errors import ConfigError, InputError

    with pytest.raises(InputError, match="exactly one input"):
        NwbExtractSegmentationExtractor()
    with pytest.raises(InputError, match="ImagingExtractor"):
        NwbExtractSegmentationExtractor(np.zeros((3, 4, 5)))
    with pytest.raises(ConfigError):
        NwbExtractSegmentationExtractor(file_path=movie_nwb, config={"avg_cell_radiuss": 3})


def test_numpy_imaging_extractor_input(sim):
    """roiextractors' NumpyImagingExtractor: a (T, H, W, 1) array, and a 3-D (T, H, W) array (which roiextractors
    0.10 stores as (1, T, H, W), so its get_series returns the wrong shape) give the same cells; an extractor whose
    frames do not match its own shape is a clear InputError."""
    from roiextractors import NumpyImagingExtractor

    from nwb_extract.errors import InputError

    runs = []
    for video in (sim.movie[..., None], sim.movie):
        seg = NwbExtractSegmentationExtractor(NumpyImagingExtractor(video, 30.0), config={"avg_cell_radius": 3.5},
                                              backend="numpy")
        assert seg.get_roi_image_masks().shape[:2] == (40, 56) and seg.get_num_rois() > 0
        assert seg.get_traces(name="dff").shape == (300, seg.get_num_rois())
        runs.append(seg)
    np.testing.assert_array_equal(runs[0].get_roi_image_masks(), runs[1].get_roi_image_masks())

    class Broken(NumpyImagingExtractor):
        def get_series(self, start_sample=None, end_sample=None):
            return super().get_series(start_sample, end_sample)[:, :-1]

    broken = NwbExtractSegmentationExtractor(Broken(sim.movie[..., None], 30.0), config={"avg_cell_radius": 3.5},
                                             backend="numpy")
    with pytest.raises(InputError, match=r"Broken.get_series\(0, \d+\) returned an array of shape .* expected"):
        broken.get_num_rois()
