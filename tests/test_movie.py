"""Tests of nwb_extract.io.movie: finding, selecting and lazily reading imaging series of NWB files.

Files are written here with pynwb (HDF5, and Zarr through hdmf-zarr). Movies are non-square and hold distinct
values per (frame, x, y), so a transposition, an offset frame range or a wrong series gives different bytes.
Streaming is tested against a local HTTP server on 127.0.0.1 with Range support that counts the bytes it serves.
"""

from __future__ import annotations

import contextlib
import http.server
import re
import threading

import h5py
import numpy as np
import pytest
from pynwb import NWBHDF5IO
from pynwb.ophys import OnePhotonSeries, TwoPhotonSeries
from pynwb.testing.mock.file import mock_NWBFile
from pynwb.testing.mock.ophys import mock_ImagingPlane

from conftest import cyclic_gc_paused

from nwb_extract.errors import (
    AmbiguousSeriesError,
    InputError,
    NoImagingSeriesError,
    NotNwbError,
    SeriesNotFoundError,
    SourceNotFoundError,
    UnsupportedSeriesError,
)
from nwb_extract.io.movie import FrameBlockReader, open_series
from nwb_extract.io.movie_write import write_movie_nwb
from nwb_extract.io.source import find_imaging_series

RAW = np.arange(30 * 12 * 17, dtype=np.uint16).reshape(30, 12, 17)  # (frames, x, y), every value distinct
CORRECTED = (np.arange(20 * 12 * 17, dtype=np.float32).reshape(20, 12, 17) / 7.0)
ONE_PHOTON = np.arange(25 * 9 * 14, dtype=np.int16).reshape(25, 9, 14)
TIMESTAMPS = 3.0 + np.arange(20) * 0.05

ALL_SERIES = ["acquisition/OnePhotonSeries", "acquisition/TwoPhotonSeries", "processing/ophys/MotionCorrected",
              "processing/ophys2/TwoPhotonSeries"]


def _nwbfile_with_series():
    nwbfile = mock_NWBFile()
    plane = mock_ImagingPlane(nwbfile=nwbfile)
    nwbfile.add_acquisition(TwoPhotonSeries(name="TwoPhotonSeries", imaging_plane=plane, data=RAW, unit="a.u.",
                                            rate=20.0, starting_time=1.5))
    nwbfile.add_acquisition(OnePhotonSeries(name="OnePhotonSeries", imaging_plane=plane, data=ONE_PHOTON,
                                            unit="a.u.", rate=10.0))
    ophys = nwbfile.create_processing_module(name="ophys", description="processed")
    ophys.add(TwoPhotonSeries(name="MotionCorrected", imaging_plane=plane, data=CORRECTED, unit="a.u.",
                              timestamps=TIMESTAMPS))
    other = nwbfile.create_processing_module(name="ophys2", description="a second series of the same name")
    other.add(TwoPhotonSeries(name="TwoPhotonSeries", imaging_plane=plane, data=RAW[:4], unit="a.u.", rate=20.0))
    return nwbfile


def _write(nwbfile, path):
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    return path


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    return _write(_nwbfile_with_series(), tmp_path_factory.mktemp("movie") / "multi.nwb")


@pytest.fixture(scope="module")
def multi_zarr(multi):
    from hdmf_zarr import NWBZarrIO

    path = multi.with_name("multi.nwb.zarr")
    with NWBHDF5IO(str(multi), "r") as source, NWBZarrIO(str(path), mode="w") as target:
        target.export(src_io=source, write_args={"link_data": False})
    return path


def test_finds_every_imaging_series_by_path(multi):
    with NWBHDF5IO(str(multi), "r") as io:
        found = find_imaging_series(io.read())
    assert list(found) == ALL_SERIES
    assert [s.neurodata_type for s in found.values()] == ["OnePhotonSeries"] + ["TwoPhotonSeries"] * 3


@pytest.mark.parametrize("fmt", ["hdf5", "zarr"])
@pytest.mark.parametrize(("choice", "path", "expected"), [
    ("processing/ophys/MotionCorrected", "processing/ophys/MotionCorrected", CORRECTED),
    ("/processing/ophys/MotionCorrected", "processing/ophys/MotionCorrected", CORRECTED),
    ("MotionCorrected", "processing/ophys/MotionCorrected", CORRECTED),
    ("acquisition/TwoPhotonSeries", "acquisition/TwoPhotonSeries", RAW),
    ("OnePhotonSeries", "acquisition/OnePhotonSeries", ONE_PHOTON),
])
def test_selects_and_reads_blocks_byte_identical(request, fmt, choice, path, expected):
    source = request.getfixturevalue("multi" if fmt == "hdf5" else "multi_zarr")
    with open_series(source, choice) as src:
        assert src.series_path == path
        assert src.data.shape == expected.shape and src.data.dtype == expected.dtype
        block = src.data[2:9, 3:11, 1:16]
        assert block.dtype == expected.dtype
        assert block.tobytes() == expected[2:9, 3:11, 1:16].tobytes()  # stored order, no transposition
        assert src.data[-1].tobytes() == expected[-1].tobytes()
        assert src.data[...].tobytes() == expected.tobytes()
        assert src.data[1:7:3, 5].tobytes() == expected[1:7:3, 5].tobytes()


def test_series_metadata_and_frame_range(multi):
    with open_series(multi, "acquisition/TwoPhotonSeries", frames=(10, 25)) as src:
        assert src.series_type == "TwoPhotonSeries"
        assert src.frames == (10, 25) and src.data.shape == (15, 12, 17) and len(src.data) == 15
        assert src.rate == 20.0 and src.timestamps is None
        assert src.starting_time == pytest.approx(1.5 + 10 / 20.0)  # time of the first selected frame
        assert src.data[0:3].tobytes() == RAW[10:13].tobytes()  # frame indices are relative to the range
        assert src.data[-1].tobytes() == RAW[24].tobytes()
        assert src.data[14:40].shape == (1, 12, 17)  # clipped at the range end like a NumPy slice
        assert src.imaging_plane is src.series.imaging_plane
        assert src.nwbfile.imaging_planes[src.imaging_plane.name] is src.imaging_plane
        assert src.nwbfile.acquisition["TwoPhotonSeries"] is src.series
        with pytest.raises(IndexError):
            src.data[15]
    with open_series(multi, "MotionCorrected", frames=(None, 5)) as src:
        assert src.rate is None and src.starting_time is None
        np.testing.assert_array_equal(src.timestamps, TIMESTAMPS[:5])
        assert src.data.shape == (5, 12, 17)


def test_reader_reads_relative_to_its_range():
    reader = FrameBlockReader(RAW, 4, 24)
    assert reader[0:7].tobytes() == RAW[4:11].tobytes()
    assert reader[7:30].shape[0] == 13 and reader[3].tobytes() == RAW[7].tobytes()


def test_open_objects_are_used_and_left_open(multi):
    with h5py.File(multi, "r") as h5file:
        with open_series(h5file, "MotionCorrected") as src:
            assert src.data[0:2].tobytes() == CORRECTED[0:2].tobytes()
        assert h5file.id.valid  # not closed by the source
    nwbfile = _nwbfile_with_series()  # in memory, never written
    with open_series(nwbfile, "processing/ophys2/TwoPhotonSeries") as src:
        assert src.data[1:3].tobytes() == RAW[1:3].tobytes()
        assert src.location.startswith("NWBFile")


def test_closes_the_file_it_opened(multi):
    with open_series(multi, "MotionCorrected") as src:
        dataset = src.series.data
    assert not dataset.id.valid


def test_several_series_without_choice_is_ambiguous_and_lists_them(multi):
    with pytest.raises(AmbiguousSeriesError) as err:
        open_series(multi)
    for path in ALL_SERIES:
        assert path in str(err.value)
    assert "--series" in str(err.value)
    with pytest.raises(AmbiguousSeriesError, match="named 'TwoPhotonSeries'.*give the full path"):
        open_series(multi, "TwoPhotonSeries")


def test_unknown_series_lists_the_candidates(multi):
    with pytest.raises(SeriesNotFoundError, match="no imaging series 'Motion'.*processing/ophys/MotionCorrected"):
        open_series(multi, "Motion")


def test_single_series_needs_no_choice(tmp_path):
    movie = np.arange(6 * 5 * 7, dtype=np.float32).reshape(6, 5, 7)
    path = write_movie_nwb(tmp_path / "one.nwb", movie, rate=5.0, series_type="OnePhotonSeries")
    with open_series(str(path)) as src:
        assert src.series_path == "acquisition/OnePhotonSeries" and src.series_type == "OnePhotonSeries"
        assert src.data[:].tobytes() == movie.tobytes()


def test_missing_file_and_non_nwb_inputs(tmp_path):
    with pytest.raises(SourceNotFoundError, match="no such file"):
        open_series(tmp_path / "absent.nwb")
    text = tmp_path / "notes.nwb"
    text.write_text("not an HDF5 file")
    with pytest.raises(NotNwbError, match="not HDF5"):
        open_series(text)
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["data"] = np.zeros((3, 4, 5))
    with pytest.raises(NotNwbError, match="no 'nwb_version'"):
        open_series(plain)
    with pytest.raises(NotNwbError, match="is a folder"):
        open_series(tmp_path)
    with pytest.raises(InputError, match="only local paths and http"):
        open_series("s3://bucket/file.nwb")


def test_file_without_imaging_series(tmp_path):
    path = _write(mock_NWBFile(), tmp_path / "empty.nwb")
    with pytest.raises(NoImagingSeriesError, match="no TwoPhotonSeries or OnePhotonSeries"):
        open_series(path)


def test_volumetric_and_external_series_are_refused_with_alternatives(tmp_path):
    nwbfile = mock_NWBFile()
    plane = mock_ImagingPlane(nwbfile=nwbfile)
    nwbfile.add_acquisition(TwoPhotonSeries(name="Volume", imaging_plane=plane, data=np.zeros((4, 5, 6, 3)),
                                            unit="a.u.", rate=5.0))
    nwbfile.add_acquisition(TwoPhotonSeries(name="External", imaging_plane=plane, external_file=["movie.tif"],
                                            starting_frame=[0], format="external", rate=5.0, num_samples=10,
                                            unit="a.u."))
    path = _write(nwbfile, tmp_path / "odd.nwb")
    with pytest.raises(UnsupportedSeriesError, match=r"volumetric.*\(4, 5, 6, 3\).*one plane"):
        open_series(path, "Volume")
    with pytest.raises(UnsupportedSeriesError, match=r"external files \(movie.tif\).*neuroconv.*extract\(\)"):
        open_series(path, "External")


@pytest.mark.parametrize("frames", [(5, 5), (-1, 4), (0, 31), (20, 10), ("0", 3), (1, 2, 3)])
def test_bad_frame_ranges(multi, frames):
    with pytest.raises(InputError, match="frames"):
        open_series(multi, "acquisition/TwoPhotonSeries", frames=frames)


def test_source_info_describes_the_selection(multi):
    with open_series(multi, "acquisition/TwoPhotonSeries", frames=(3, 12)) as src:
        info = src.source_info(dandiset_id="000123")
    assert (info.path, info.series_path) == (str(multi), "acquisition/TwoPhotonSeries")
    assert (info.shape, info.dtype, info.frame_range) == ((30, 12, 17), "uint16", (3, 12))  # whole stored shape
    assert info.dandiset_id == "000123"


# ----------------------------------------------------------------------------------------------------------------
# streaming over HTTP


class _RangeServer(http.server.ThreadingHTTPServer):
    """Serves one file at /movie.nwb with Range support; counts the bytes of every response body it sends."""

    daemon_threads = True

    def __init__(self, payload: bytes):
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.payload = payload
        self.range_bytes = 0  # bodies of 206 (Range) answers: the data the client asked for
        self.full_requests = 0  # plain GETs; remfile sends one to learn the size and drops it after the headers
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/movie.nwb"


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    timeout = 20  # seconds per connection: a stuck client cannot hold the test

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_HEAD(self):
        if self.path != "/movie.nwb":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.server.payload)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self):
        server = self.server
        if self.path != "/movie.nwb":
            self.send_error(404)
            return
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match is None:
            with server.lock:
                server.full_requests += 1
            self.send_response(200)
            self.send_header("Content-Length", str(len(server.payload)))
            self.end_headers()
            try:
                self.wfile.write(server.payload)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        first = int(match.group(1))
        last = min(int(match.group(2) or len(server.payload) - 1), len(server.payload) - 1)
        body = server.payload[first:last + 1]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {first}-{last}/{len(server.payload)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        with server.lock:
            server.range_bytes += len(body)


@contextlib.contextmanager
def serving(payload: bytes):
    """A :class:`_RangeServer` for ``payload``, running in a thread until the block ends."""
    server = _RangeServer(payload)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    with cyclic_gc_paused():
        thread.start()
        try:
            yield server
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)


@pytest.fixture
def http_movie(tmp_path):
    """A 1000-frame float32 movie (64 x 80 px, 20.7 MB, uncompressed, 50-frame chunks of 1 MB) served over HTTP."""
    movie = np.random.default_rng(3).random((1000, 64, 80), dtype=np.float32)
    path = write_movie_nwb(tmp_path / "stream.nwb", movie, rate=30.0, chunk_frames=50, compression=None)
    with serving(path.read_bytes()) as server:
        yield server, movie


def test_streaming_reads_a_block_without_downloading_the_file(http_movie):
    server, movie = http_movie
    size = len(server.payload)
    with open_series(server.url, frames=(500, 600)) as src:  # 10 % of the frames, from the middle
        assert src.location == server.url and src.series_path == "acquisition/TwoPhotonSeries"
        block = src.data[:, 5:60, 7:70]
    assert block.tobytes() == movie[500:600, 5:60, 7:70].tobytes()
    # Needed: 2 whole-frame chunks = 10 % of the file, plus the file's metadata (~0.3 MB) and remfile's read-ahead
    # (measured: 16 % in all). The file's size is learnt from one plain GET that remfile drops after the headers
    # (counted apart: what the server pushed into the socket before the drop is not data the client read).
    assert server.full_requests == 1
    assert movie[500:600].nbytes <= server.range_bytes < 0.2 * size, (server.range_bytes, size)


def test_streaming_missing_url_is_not_found(http_movie):
    server, _ = http_movie
    with pytest.raises(SourceNotFoundError, match="404"):
        open_series(server.url.replace("movie.nwb", "absent.nwb"))


def test_streaming_errors():
    with serving(b"frame,value\n" * 1000) as server:
        with pytest.raises(NotNwbError, match="not an NWB HDF5 file"):
            open_series(server.url)
        url = server.url
    with pytest.raises(InputError, match="cannot read http://127.0.0.1") as err:  # the server is gone
        open_series(url)
    assert not isinstance(err.value, (NotNwbError, SourceNotFoundError))
