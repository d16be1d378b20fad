"""Tests of the cell review (``nwb-extract review``) without a browser: the curation in NWB and JSON
(nwb_extract.io.curation), what the server serves (nwb_extract.review), the token, streamed inputs, the command.

The browser tests are in test_review_browser.py; the result files both use are made here (``review_file``,
``write_review_file``), with our writer, from synthetic arrays (no engine run).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import h5py
import numpy as np
import pynwb
import pytest

from conftest import REPO_ROOT, cyclic_gc_paused
from test_dandi import no_foreign_hosts, stand_in  # noqa: F401  (fixtures: a stand-in DANDI archive on 127.0.0.1)
from nwb_extract.cli import main
from nwb_extract.config import ExtractConfig
from nwb_extract.errors import InputError, OutputNotWritableError
from nwb_extract.io import schema
from nwb_extract.io.curation import export_curation, import_curation, write_curation
from nwb_extract.io.nwb_read import list_runs, read_result
from nwb_extract.io.nwb_write import write_result
from nwb_extract.result import Curation, EliminatedCandidates, ExtractResult
from nwb_extract.review.data import ReviewData
from nwb_extract.review.server import ReviewServer, open_review

RATE = 20.0
PLANE = "processing/ophys/ImageSegmentation/PlaneSegmentation"
OLD_FILE = REPO_ROOT / "tests" / "data" / "result_ndx-nwb-extract-0.1.0.nwb"


def synthetic_result(n_cells: int = 12, shape: tuple[int, int] = (40, 56), n_frames: int = 600, *, seed: int = 0,
                     n_eliminated: int = 3) -> ExtractResult:
    """Gaussian cells on a grid (apart, so each contour can be clicked), sparse-event traces of three kinds,
    metrics with ``T_maxval`` 1..n_cells, and ``n_eliminated`` candidates between the cells."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    grid = [(r, c) for r in range(6, rows - 5, 9) for c in range(6, cols - 5, 9)]
    offsets = np.arange(-5, 6)
    blob = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 2.0 ** 2)).astype(np.float32)
    blob[blob < 0.05] = 0

    def place(centres):
        out = np.zeros((len(centres), rows, cols), dtype=np.float32)
        for k, (r, c) in enumerate(centres):
            out[k, r - 5:r + 6, c - 5:c + 6] = blob[: min(11, rows - r + 5), : min(11, cols - c + 5)]
        return out

    footprints = place(grid[:n_cells])
    events = (rng.random((n_frames, n_cells)) < 0.01) * rng.uniform(0.5, 2.0, (n_frames, n_cells))
    base = np.zeros((n_frames, n_cells), dtype=np.float32)
    for t in range(n_frames):  # exponential decay after each event
        base[t] = (0.8 * base[t - 1] if t else 0) + events[t]
    traces = {"baseline_adjusted": base, "nonneg": base * np.float32(0.5),
              "raw": base - np.float32(0.2) + rng.normal(0, 0.02, base.shape).astype(np.float32)}
    image = footprints.sum(axis=0).astype(np.float64) + 0.1 * rng.random(shape)
    eliminated = None
    if n_eliminated:
        centres = [(r + 4, c + 4) for r, c in grid[:n_eliminated]]
        eliminated = EliminatedCandidates(footprints=place(centres) * 0.8,
                                          traces=rng.random((n_frames, n_eliminated)).astype(np.float32),
                                          rules=tuple(["T_maxval", "S_corruption", "T_dup"][:n_eliminated]))
    metrics = {"T_maxval": np.arange(1.0, n_cells + 1), "S_area_1": (footprints > 0.2).sum(axis=(1, 2)).astype(float),
               "T_corruption": rng.random(n_cells)}
    return ExtractResult(footprints=footprints, traces=traces, primary_trace="baseline_adjusted",
                         summary_image=image, max_image=image * 2, F_per_pixel=image,
                         config=ExtractConfig(backend="numpy").resolved(), roi_metrics=metrics, eliminated=eliminated)


def write_review_file(path: Path, **kwargs) -> Path:
    """A result file of :func:`synthetic_result` (eliminated candidates included) at ``RATE`` Hz."""
    written, _ = write_result(synthetic_result(**kwargs), path, rate=RATE, include_eliminated=True)
    return written


@pytest.fixture(scope="module")
def review_master(tmp_path_factory):
    return write_review_file(tmp_path_factory.mktemp("review") / "result.nwb")


@pytest.fixture
def review_file(review_master, tmp_path):
    """A fresh copy of the small result file (tests write into it)."""
    return Path(shutil.copy(review_master, tmp_path / "result.nwb"))


def _get(url: str, **headers) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _post(url: str, body: dict, token: str) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"X-Review-Token": token, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


class served:
    """A review server running in a thread for the block (``open_review`` keywords)."""

    def __init__(self, source, **kwargs):
        self.server = open_review(str(source), **kwargs)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self.server

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def _api(server, path: str) -> dict:
    status, body = _get(f"http://127.0.0.1:{server.port}{path}", **{"X-Review-Token": server.token})
    assert status == 200, body
    return json.loads(body)


# ----------------------------------------------------------------------------------------------------------------
# curation in NWB


def test_curation_is_written_atomically_read_by_pynwb_ours_and_roiextractors_and_updated_on_a_second_save(
        review_file):
    from roiextractors import NwbSegmentationExtractor

    from nwb_extract.roiextractors import NwbExtractSegmentationExtractor

    accepted = np.zeros(12, dtype=bool)
    rejected = np.zeros(12, dtype=bool)
    accepted[[0, 3, 4]] = True
    rejected[[1, 7]] = True
    assert read_result(review_file).curation is None
    assert write_curation(review_file, Curation(accepted, rejected, curated_by="ana")) == "run1"
    first = read_result(review_file).curation
    assert first.curated_by == "ana" and first.curated_at is not None
    accepted[0], rejected[0] = False, True  # a second save changes cell 0: updated, not duplicated
    write_curation(review_file, Curation(accepted, rejected, curated_by="ben", curated_at="2026-01-02T03:04:05+00:00"))
    assert not list(review_file.parent.glob(".*partial*"))

    with pynwb.NWBHDF5IO(str(review_file), "r") as io:
        nwbfile = io.read()
        plane = nwbfile.processing["ophys"]["ImageSegmentation"]["PlaneSegmentation"]
        assert list(plane.colnames).count("Accepted") == 1 and list(plane.colnames).count("Rejected") == 1
        np.testing.assert_array_equal(plane["Accepted"].data[:], accepted)
        np.testing.assert_array_equal(plane["Rejected"].data[:], rejected)
        info = nwbfile.processing["ophys"]["ExtractRunInfo"]
        assert (info.curated_by, info.curated_at) == ("ben", "2026-01-02T03:04:05+00:00")
    with h5py.File(review_file, "r") as f:
        assert f[PLANE]["Accepted"].dtype == bool and f[PLANE]["Accepted"].shape == (12,)
        assert schema.NAMESPACE_VERSION in f[f"specifications/{schema.NAMESPACE}"]
    assert pynwb.validate(path=str(review_file)) == []

    ours = read_result(review_file).curation
    np.testing.assert_array_equal(ours.accepted, accepted)
    np.testing.assert_array_equal(ours.rejected, rejected)
    assert (ours.curated_by, ours.curated_at) == ("ben", "2026-01-02T03:04:05+00:00")
    extractor = NwbExtractSegmentationExtractor.from_nwb(review_file)
    ids = extractor.get_roi_ids()
    np.testing.assert_array_equal(extractor.get_property("accepted", ids), accepted)
    np.testing.assert_array_equal(extractor.get_property("rejected", ids), rejected)
    np.testing.assert_array_equal(extractor.get_property("is_accepted", ids), ~rejected)
    theirs = NwbSegmentationExtractor(review_file)
    np.testing.assert_array_equal(theirs.get_property("accepted", theirs.get_roi_ids()), accepted)
    np.testing.assert_array_equal(theirs.get_property("rejected", theirs.get_roi_ids()), rejected)
    del theirs


def test_a_failed_save_leaves_the_file_as_it_was(review_file, monkeypatch):
    before = review_file.read_bytes()

    def refuse(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)  # the copy is written, then the rename fails
    with pytest.raises(OutputNotWritableError, match="disk full"):  # io.atomic names the failure
        write_curation(review_file, Curation(np.ones(12, bool), np.zeros(12, bool)))
    assert review_file.read_bytes() == before
    assert not list(review_file.parent.glob(".*partial*"))


def test_a_reviewed_result_keeps_its_review_when_written_again(review_file, tmp_path):
    write_curation(review_file, Curation(np.arange(12) < 4, np.arange(12) >= 10, curated_by="ana"))
    again, _ = write_result(read_result(review_file), tmp_path / "again.nwb", rate=RATE)
    curation = read_result(again).curation
    np.testing.assert_array_equal(curation.accepted, np.arange(12) < 4)
    assert curation.curated_by == "ana"


def test_a_file_of_namespace_0_1_0_is_reviewed_and_still_reads(tmp_path):
    old = Path(shutil.copy(OLD_FILE, tmp_path / "old.nwb"))
    data = ReviewData(str(old))  # pixel masks and eliminated candidates
    try:
        overview = data.overview()
        assert (overview["run"], overview["n_cells"], overview["eliminated"]["rules"]) == ("old", 3, ["T_maxval"])
        assert all(overview["contours"]) and overview["eliminated"]["contours"][0]
        assert data.cell(0, eliminated=True)["rule"] == "T_maxval"
    finally:
        data.close()
    write_curation(old, Curation(np.array([True, False, False]), np.array([False, False, True])))
    result = read_result(old, "old")
    np.testing.assert_array_equal(result.curation.rejected, [False, False, True])
    assert list_runs(old) == ["old"] and result.eliminated.rules == ("T_maxval",)


def test_curation_json_round_trip_and_its_checks(tmp_path):
    curation = Curation(np.array([1, 0, 0, 1], bool), np.array([0, 1, 0, 0], bool), curated_by="ana",
                        curated_at="2026-01-02T03:04:05+00:00")
    path = export_curation(tmp_path / "c.json", curation, source="https://example.org/a.nwb", run="run1")
    document = json.loads(path.read_text())
    assert (document["accepted"], document["rejected"], document["n_cells"]) == ([0, 3], [1], 4)
    back = import_curation(path, run="run1", n_cells=4)
    np.testing.assert_array_equal(back.accepted, curation.accepted)
    assert back.curated_by == "ana"
    with pytest.raises(InputError, match="reviews run 'run1' with 4 cells, not run 'run2'"):
        import_curation(path, run="run2", n_cells=4)
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(InputError, match="not a curation file"):
        import_curation(tmp_path / "x.json", run="run1", n_cells=4)
    with pytest.raises(InputError, match="both accepted and rejected"):
        Curation(np.array([True]), np.array([True]))


# ----------------------------------------------------------------------------------------------------------------
# what the server serves


def test_requests_without_the_token_or_from_another_host_are_refused(review_file):
    with served(review_file) as server:
        base = f"http://127.0.0.1:{server.port}"
        assert server.url == f"{base}/?token={server.token}" and len(server.token) >= 32
        for path in ("/", "/api/overview", "/api/trace?i=0", "/static/review.js"):
            assert _get(base + path)[0] == 403
            assert _get(base + path + ("&" if "?" in path else "?") + "token=wrong")[0] == 403
        assert _get(f"{base}/api/overview", **{"X-Review-Token": server.token, "Host": "evil.example:80"})[0] == 403
        status, page = _get(server.url)
        assert status == 200 and server.token.encode() in page and b"review.js" in page
        assert _get(f"{base}/static/review.js?token={server.token}")[0] == 200
        assert _get(f"{base}/static/../server.py?token={server.token}")[0] == 404


def test_overview_cell_and_trace_answers(review_file):
    result = synthetic_result()
    with served(review_file) as server:
        overview = _api(server, "/api/overview")
        assert (overview["n_cells"], overview["frame_shape"], overview["kinds"]) == (12, [40, 56],
                                                                                    ["baseline_adjusted", "nonneg",
                                                                                     "raw"])
        assert overview["time"] == {"start": 0.0, "end": 599 / RATE, "n_frames": 600}
        assert overview["metric_names"] == ["T_maxval", "S_area_1", "T_corruption"]
        assert overview["metrics"][0] == list(np.arange(1.0, 13)) and overview["status"] == [0] * 12
        assert len(overview["contours"]) == 12 and len(overview["eliminated"]["contours"]) == 3
        for k, (row, col) in enumerate(result.centroids()):  # each contour surrounds its cell's centre
            points = np.asarray(overview["contours"][k][0]).reshape(-1, 2)
            assert np.all(np.abs(points.mean(axis=0) - (row, col)) < 0.5)
        cell = _api(server, "/api/cell?i=5")
        assert cell["metrics"]["T_maxval"] == 6.0 and cell["crop_shape"][0] > 4
        assert _api(server, "/api/cell?i=1&elim=1")["rule"] == "S_corruption"

        whole = _api(server, "/api/trace?i=5&bins=100")  # 600 frames in 100 bins of 6: min and max of each
        frames = result.traces["nonneg"][:, 5].reshape(100, 6)
        np.testing.assert_allclose(whole["kinds"]["nonneg"]["min"], frames.min(axis=1), atol=1e-5)
        np.testing.assert_allclose(whole["kinds"]["nonneg"]["max"], frames.max(axis=1), atol=1e-5)
        np.testing.assert_allclose(whole["t"], np.arange(0, 600, 6) / RATE)
        window = _api(server, "/api/trace?i=5&bins=100&t0=10&t1=15")  # 101 frames: the samples themselves
        assert window["frames"] == [200, 301]
        np.testing.assert_allclose(window["kinds"]["raw"]["max"], result.traces["raw"][200:301, 5], atol=1e-5)
        eliminated = _api(server, "/api/trace?i=2&elim=1&bins=600")
        np.testing.assert_allclose(eliminated["kinds"]["traces"]["min"], result.eliminated.traces[:, 2], atol=1e-5)
        assert _get(f"http://127.0.0.1:{server.port}/api/cell?i=12", **{"X-Review-Token": server.token})[0] == 400


def test_a_run_without_traces_is_reviewed_too(tmp_path):
    from dataclasses import replace

    result = synthetic_result(n_eliminated=0)
    result = replace(result, traces={}, primary_trace=None,
                     config=result.config.replace(trace_output_option="none").resolved())
    path, _ = write_result(result, tmp_path / "none.nwb", rate=RATE)
    data = ReviewData(str(path))
    try:
        assert data.overview()["kinds"] == [] and data.overview()["time"]["n_frames"] == 0
        assert data.trace(3) == {"t": [], "frames": [0, 0], "kinds": {}}
        assert data.cell(3)["metrics"]["T_maxval"] == 4.0
    finally:
        data.close()


def test_traces_chunked_across_all_cells_are_loaded_whole(tmp_path, monkeypatch):
    """Files written before the writer chunked traces by cell: their traces load in the background."""
    monkeypatch.setattr("nwb_extract.review.data.WIDE_CHUNK", 8)  # 12 cells here, more than 64 in real files
    path = write_review_file(tmp_path / "r.nwb")
    with h5py.File(path, "a") as f:  # rewrite one series the old way, one chunk across every cell
        group = f["processing/ophys/DfOverF/NonnegRoiResponseSeries"]
        values = group["data"][:]
        attrs = dict(group["data"].attrs)
        del group["data"]
        group.create_dataset("data", data=values, chunks=(64, 12), compression="gzip").attrs.update(attrs)
    data = ReviewData(str(path))
    try:
        data._loader.join(timeout=30)
        assert set(data._whole) == {"nonneg"}
        np.testing.assert_allclose(data.trace(3, bins=600)["kinds"]["nonneg"]["min"], values[:, 3], atol=1e-5)
    finally:
        data.close()


def test_streamed_file_exports_then_a_local_copy_imports_and_saves(review_file, tmp_path):
    from test_movie import serving  # the local Range HTTP server of the streaming tests

    export = tmp_path / "curation.json"
    with serving(review_file.read_bytes()) as remote, cyclic_gc_paused():
        with pytest.raises(OutputNotWritableError, match="read-only.*--export"):
            open_review(remote.url)
        with served(remote.url, export=export) as server:
            assert _api(server, "/api/overview")["n_cells"] == 12
            assert len(_api(server, "/api/trace?i=3&bins=50")["t"]) == 50
            saved = _post(f"http://127.0.0.1:{server.port}/api/save", {"accepted": [0, 2], "rejected": [5]},
                          server.token)
    assert saved["saved_to"] == str(export) and saved["accepted"] == 1 + 1 and saved["rejected"] == 1
    assert json.loads(export.read_text())["source"] == remote.url
    assert read_result(review_file).curation is None  # the file itself is untouched
    with served(review_file, import_from=export, curator="carl") as server:
        assert _api(server, "/api/overview")["status"][:6] == [1, 0, 1, 0, 0, 2]
        _post(f"http://127.0.0.1:{server.port}/api/save", {"accepted": [0, 2], "rejected": [5]}, server.token)
    curation = read_result(review_file).curation
    assert np.flatnonzero(curation.accepted).tolist() == [0, 2] and curation.curated_by == "carl"


# ----------------------------------------------------------------------------------------------------------------
# the command


@pytest.fixture
def no_run_file(tmp_path):
    from nwb_extract.io.movie_write import write_movie_nwb

    return write_movie_nwb(tmp_path / "movie.nwb", np.zeros((5, 8, 9), dtype=np.uint16), rate=10.0)


def test_bad_input_gives_one_line_errors(review_file, no_run_file, tmp_path, capsys):
    def error_of(*args):
        code = main(["review", *args, "--no-browser"])
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        return code, err

    code, err = error_of(str(no_run_file))
    assert code == 3 and "holds no nwb-extract run" in err
    code, err = error_of(str(review_file), "--run", "nope")
    assert code == 3 and "no run named 'nope'" in err and "run1" in err
    code, err = error_of(str(tmp_path / "absent.nwb"))
    assert code == 4
    code, err = error_of("http://127.0.0.1:9/result.nwb")
    assert code == 13 and "--export" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, err = error_of(str(review_file), "--port", str(taken.getsockname()[1]))
    assert code == 3 and "in use" in err
    code, err = error_of(str(review_file), "--port", "70000")
    assert code == 3 and "not a port number" in err
    code, err = error_of(str(review_file), "--import", str(tmp_path / "absent.json"))
    assert code == 4 and "curation file" in err


def test_the_command_serves_until_interrupted(review_file):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "nwb_extract.cli", "review", str(review_file), "--no-browser"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = [process.stdout.readline() for _ in range(2)]
        assert lines[0].startswith("reviewing run run1 of") and "12 cells" in lines[0], lines
        url = lines[1].split()[-1]
        assert url.startswith("http://127.0.0.1:") and "token=" in url
        status, page = _get(url)
        assert status == 200 and b"<canvas" in page
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0 and "stopped" in err


def test_a_dandi_asset_is_reviewed_read_only_with_export(stand_in, review_file, tmp_path, capsys, monkeypatch):
    stand_in.add("000123", "sub-1/sub-1_ophys.nwb", review_file)
    address = "dandi://dandi/000123@draft/sub-1/sub-1_ophys.nwb"
    assert main(["review", address, "--no-browser"]) == 13
    assert "DANDI:000123/draft/sub-1/sub-1_ophys.nwb is read-only" in capsys.readouterr().err
    seen = []

    def serve_once(server):  # the served page is tested above: here, what the command opened and prints
        seen.append((server.data.label, server.data.n_cells, server.target, server.data.source))
        raise KeyboardInterrupt

    monkeypatch.setattr(ReviewServer, "serve_forever", serve_once)
    export = tmp_path / "c.json"
    assert main(["review", address, "--no-browser", "--export", str(export)]) == 0
    out = capsys.readouterr().out
    assert seen == [("DANDI:000123/draft/sub-1/sub-1_ophys.nwb", 12, str(export), seen[0][3])]
    assert seen[0][3].startswith(stand_in.url) and "open http://127.0.0.1:" in out

