"""Tests of the NWB movie writer (nwb_extract.io.movie_write.write_movie_nwb / write_simulated_nwb).

Round trips go through pynwb's reader and h5py; validity through ``pynwb.validate`` (schema) and nwbinspector
(best practices: no CRITICAL and no BEST_PRACTICE_VIOLATION message). Movies are non-square with an asymmetric
cell layout, so a transposition on write would change the stored shape or bytes.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import h5py
import numpy as np
import pynwb
import pytest
from nwbinspector import Importance, inspect_nwbfile
from pynwb import NWBHDF5IO

from nwb_extract.errors import InputError
from nwb_extract.io import movie_write as nwb_io
from nwb_extract.io.movie_write import write_movie_nwb, write_simulated_nwb
from nwb_extract.simulate import simulate_1p, simulate_2p

START = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def sim2p():
    return simulate_2p(n_rows=40, n_cols=56, n_frames=150, n_cells=8, seed=21)


@pytest.fixture(scope="module")
def written_2p(sim2p, tmp_path_factory):
    path = tmp_path_factory.mktemp("nwb") / "sim2p.nwb"
    return write_simulated_nwb(path, sim2p, chunk_frames=64, session_start_time=START, identifier="sim2p-21")


def _messages_at_or_above_violation(path):
    return [
        message for message in inspect_nwbfile(nwbfile_path=str(path))
        if message.importance in (Importance.CRITICAL, Importance.BEST_PRACTICE_VIOLATION)
    ]


def test_round_trip_data_is_byte_identical(written_2p, sim2p):
    with NWBHDF5IO(str(written_2p), "r") as io:
        nwbfile = io.read()
        series = nwbfile.acquisition["TwoPhotonSeries"]
        assert isinstance(series, pynwb.ophys.TwoPhotonSeries)
        data = series.data[:]
    assert data.shape == (150, 40, 56)  # (frames, rows, cols), stored untransposed
    assert data.dtype == np.float32
    assert data.tobytes() == sim2p.movie.tobytes()


def test_series_metadata_imaging_plane_and_subject(written_2p, sim2p):
    with NWBHDF5IO(str(written_2p), "r") as io:
        nwbfile = io.read()
        series = nwbfile.acquisition["TwoPhotonSeries"]
        assert series.rate == 30.0 and series.starting_time == 0.0
        assert series.unit == "dF/F + 1"
        plane = series.imaging_plane
        assert plane.imaging_rate == 30.0
        assert plane.location == "root" and plane.indicator == "unknown"
        assert plane.excitation_lambda == 920.0 and plane.optical_channel[0].emission_lambda == 510.0
        assert plane.device is nwbfile.devices["Microscope"]
        assert nwbfile.identifier == "sim2p-21" and nwbfile.session_start_time == START
        assert nwbfile.subject.subject_id == "simulated"
        assert nwbfile.subject.species == "Mus musculus" and nwbfile.subject.sex == "U"
        assert nwbfile.subject.age == "P90D"
        settings = nwbfile.session_description.split("settings: ", 1)[1]
        assert json.loads(settings) == sim2p.params


def test_chunking_and_compression_as_asked(written_2p, tmp_path):
    with h5py.File(written_2p, "r") as f:
        dataset = f["acquisition/TwoPhotonSeries/data"]
        assert dataset.chunks == (64, 40, 56)
        assert dataset.compression == "gzip"
    movie = np.arange(5 * 6 * 7, dtype=np.uint16).reshape(5, 6, 7)
    plain = write_movie_nwb(tmp_path / "plain.nwb", movie, rate=10.0, compression=None, chunk_frames=100)
    with h5py.File(plain, "r") as f:
        dataset = f["acquisition/TwoPhotonSeries/data"]
        assert dataset.chunks == (5, 6, 7)  # chunk_frames larger than the movie: one chunk of all frames
        assert dataset.compression is None
    with pytest.warns(UserWarning, match="lzf compression may not be available"):  # hdmf's portability warning
        lzf = write_movie_nwb(tmp_path / "lzf.nwb", movie, rate=10.0, compression="lzf", chunk_frames=2)
    with h5py.File(lzf, "r") as f:
        assert f["acquisition/TwoPhotonSeries/data"].chunks == (2, 6, 7)
        assert f["acquisition/TwoPhotonSeries/data"].compression == "lzf"


def test_chunks_are_capped_in_bytes(tmp_path, monkeypatch):
    movie = np.zeros((10, 8, 9), dtype=np.float32)  # 288 bytes per frame
    monkeypatch.setattr(nwb_io, "MAX_CHUNK_BYTES", 3 * 288 + 10)
    path = write_movie_nwb(tmp_path / "capped.nwb", movie, rate=5.0, chunk_frames=100)
    with h5py.File(path, "r") as f:
        assert f["acquisition/TwoPhotonSeries/data"].chunks == (3, 8, 9)


def test_pynwb_validate_is_clean(written_2p):
    assert pynwb.validate(path=str(written_2p)) == []


def test_nwbinspector_reports_no_critical_or_violation(written_2p):
    assert _messages_at_or_above_violation(written_2p) == []


def test_one_photon_simulation_writes_one_photon_series(tmp_path):
    sim = simulate_1p(n_rows=44, n_cols=36, n_frames=60, n_cells=5, background_n_cells=3, seed=4)
    path = write_simulated_nwb(tmp_path / "sim1p.nwb", sim)
    with NWBHDF5IO(str(path), "r") as io:
        nwbfile = io.read()
        assert list(nwbfile.acquisition) == ["OnePhotonSeries"]
        series = nwbfile.acquisition["OnePhotonSeries"]
        assert isinstance(series, pynwb.ophys.OnePhotonSeries)
        assert series.data[:].tobytes() == sim.movie.tobytes()
        assert series.imaging_plane.excitation_lambda == 470.0
        assert json.loads(nwbfile.session_description.split("settings: ", 1)[1])["modality"] == "1p"
    assert pynwb.validate(path=str(path)) == []
    assert _messages_at_or_above_violation(path) == []


def test_custom_metadata_uint16_non_square(tmp_path):
    rng = np.random.default_rng(0)
    movie = rng.integers(0, 4096, size=(60, 17, 41), dtype=np.uint16)
    path = write_movie_nwb(
        tmp_path / "raw.nwb", movie, rate=19.5, series_type="OnePhotonSeries", series_name="MiniscopeMovie",
        starting_time=12.5, unit="counts", session_start_time=START,
        subject={"subject_id": "rat-7", "species": "Rattus norvegicus", "sex": "F", "age": "P120D"},
        imaging_plane={"location": "CA1", "indicator": "GCaMP7s", "excitation_lambda": 488.0,
                       "emission_lambda": 520.0, "grid_spacing": [2e-6, 2e-6], "device_name": "Miniscope",
                       "device_manufacturer": "OpenEphys"},
    )
    with NWBHDF5IO(str(path), "r") as io:
        nwbfile = io.read()
        series = nwbfile.acquisition["MiniscopeMovie"]
        assert series.data.dtype == np.uint16 and series.data.shape == (60, 17, 41)
        assert series.data[:].tobytes() == movie.tobytes()
        assert series.rate == 19.5 and series.starting_time == 12.5 and series.unit == "counts"
        plane = series.imaging_plane
        assert plane.imaging_rate == 19.5 and plane.location == "CA1" and plane.indicator == "GCaMP7s"
        assert plane.excitation_lambda == 488.0 and plane.optical_channel[0].emission_lambda == 520.0
        np.testing.assert_array_equal(plane.grid_spacing, [2e-6, 2e-6])
        assert plane.grid_spacing_unit == "meters"
        assert plane.device.name == "Miniscope" and plane.device.model.manufacturer == "OpenEphys"
        assert plane.device.model.name == "MiniscopeModel"
        assert nwbfile.subject.subject_id == "rat-7" and nwbfile.subject.species == "Rattus norvegicus"
    assert pynwb.validate(path=str(path)) == []
    # rat: no Allen-CCF location check applies; more frames than pixels along an axis (orientation check)
    assert _messages_at_or_above_violation(path) == []


def test_refuses_to_overwrite_unless_asked(written_2p, tmp_path):
    path = tmp_path / "movie.nwb"
    movie = np.ones((4, 5, 6), dtype=np.float32)
    write_movie_nwb(path, movie, rate=1.0)
    before = path.read_bytes()
    with pytest.raises(InputError, match="already exists; pass overwrite=True"):
        write_movie_nwb(path, 2 * movie, rate=1.0)
    assert path.read_bytes() == before
    write_movie_nwb(path, 2 * movie, rate=1.0, overwrite=True)
    with NWBHDF5IO(str(path), "r") as io:
        np.testing.assert_array_equal(io.read().acquisition["TwoPhotonSeries"].data[:], 2 * movie)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["movie.nwb"]  # no temporary file left behind


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    def crash(self, *args, **kwargs):
        raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(NWBHDF5IO, "write", crash)
    with pytest.raises(KeyboardInterrupt):
        write_movie_nwb(tmp_path / "movie.nwb", np.zeros((3, 4, 5), np.float32), rate=1.0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("movie", "kwargs", "match"),
    [
        (np.zeros((4, 5)), {}, r"\(frames, rows, cols\)"),
        (np.zeros((4, 5, 6), dtype=bool), {}, "integer or floating dtype"),
        (np.zeros((4, 5, 6)), {"rate": 0.0}, "rate"),
        (np.zeros((4, 5, 6)), {"series_type": "ImageSeries"}, "series_type"),
        (np.zeros((4, 5, 6)), {"chunk_frames": 0}, "chunk_frames"),
        (np.zeros((4, 5, 6)), {"compression": "zstd"}, "compression"),
        (np.zeros((4, 5, 6)), {"session_start_time": datetime(2024, 1, 1)}, "timezone-aware"),
        (np.zeros((4, 5, 6)), {"imaging_plane": {"wavelength": 1}}, "unknown imaging_plane keys"),
        (np.zeros((4, 5, 6)), {"subject": {"name": "x"}}, "invalid subject"),
    ],
)
def test_bad_input_raises_input_error(tmp_path, movie, kwargs, match):
    options = {"rate": 10.0, **kwargs}
    with pytest.raises(InputError, match=match):
        write_movie_nwb(tmp_path / "bad.nwb", movie, **options)
    assert list(tmp_path.iterdir()) == []


def test_missing_directory_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        write_movie_nwb(tmp_path / "nope" / "movie.nwb", np.zeros((2, 3, 4)), rate=1.0)
