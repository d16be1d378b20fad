"""DANDI layer (nwb_extract.io.dandi, `nwb-extract run dandi://...`) against a local DANDI API stand-in.

Offline: :class:`DandiStandIn` is a real HTTP server on 127.0.0.1 that serves the DANDI API routes the dandi
client uses (dandiset, version info, asset listing by path prefix, asset info with ``contentUrl``, the download
302 redirect, ``/auth/token``) and the asset blobs with HTTP Range support, counting the bytes it serves. The
``no_foreign_hosts`` fixture makes every socket connection to any other address fail, so a client that tried to
reach the real archive (or etelemetry) would fail the test.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from conftest import cyclic_gc_paused

from nwb_extract.cli import main
from nwb_extract.config import ExtractConfig
from nwb_extract.errors import NoImagingSeriesError, SourceNotFoundError
from nwb_extract.io import dandi
from nwb_extract.io.movie_write import write_movie_nwb, write_simulated_nwb
from nwb_extract.io.nwb_read import list_runs, read_result
from nwb_extract.simulate import simulate_2p

DANDISET = "000777"
EMBARGOED = "000778"
TOKEN = "secret-key"
TIMES = "2026-01-01T00:00:00Z"
TUTORIAL = Path(__file__).resolve().parents[1] / "tutorials" / "dandi_asset.py"


class DandiStandIn:
    """A DANDI API (``/api``) and blob store (``/blobs``) on 127.0.0.1, serving files written by the tests.

    ``add(dandiset, path, file)`` publishes a local file as an asset of version ``draft``; ``fail_at[asset_id]
    = offset`` makes every blob request for a range holding byte ``offset`` answer 503 (a mid-stream failure);
    ``faults[asset_id] = (offset, [fault, ...])`` makes the next requests for a range holding ``offset`` fail
    once each, in order (:meth:`_fault`: ``"500"``, ``"503"``, ``"drop"``, ``"stall"``, ``"truncate"``), and the
    later ones succeed; ``bytes_served[asset_id]`` counts the blob bytes sent; ``requests`` logs every request
    line. The blob of an asset is also a plain HTTP file at ``blob_url(asset_id)``.
    """

    stall_s = 3.0  # how long a "stall" fault keeps the client waiting before it closes the connection

    def __init__(self) -> None:
        self.assets: dict[str, dict] = {}
        self.embargoed: set[str] = set()
        self.fail_at: dict[str, int] = {}
        self.faults: dict[str, tuple[int, list[str]]] = {}
        self.bytes_served: dict[str, int] = {}
        self.requests: list[str] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_HEAD(self):
                stand_in._handle(self, head=True)

            def do_GET(self):
                stand_in._handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.api = f"{self.url}/api"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, dandiset: str, path: str, file: Path) -> str:
        asset_id = str(uuid.uuid4())
        self.assets[asset_id] = {"dandiset": dandiset, "path": path, "file": Path(file)}
        self.bytes_served[asset_id] = 0
        return asset_id

    def blob_url(self, asset_id: str) -> str:
        return f"{self.url}/blobs/{asset_id}"

    # -- routes

    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        self.requests.append(f"{h.command} {h.path}")
        split = urlsplit(h.path)
        route, query = split.path, parse_qs(split.query)
        if route.startswith("/blobs/"):
            return self._blob(h, route.split("/")[2], query, head)
        dandiset = re.match(r"/api/dandisets/(\d{6})/", route)
        if dandiset and dandiset[1] in self.embargoed and h.headers.get("Authorization") != f"token {TOKEN}":
            return self._json(h, {"detail": "Authentication credentials were not provided."}, 401)
        if route == "/api/auth/token":
            ok = h.headers.get("Authorization") == f"token {TOKEN}"
            return self._json(h, {} if ok else {"detail": "Invalid token."}, 200 if ok else 401)
        if m := re.fullmatch(r"/api/dandisets/(\d{6})/", route):
            return self._dandiset(h, m[1])
        if m := re.fullmatch(r"/api/dandisets/(\d{6})/versions/([^/]+)/info/", route):
            return self._json(h, self._version(m[1])) if self._known(m[1], m[2]) else self._json(h, {}, 404)
        if m := re.fullmatch(r"/api/dandisets/(\d{6})/versions/([^/]+)/assets/", route):
            if not self._known(m[1], m[2]):
                return self._json(h, {"detail": "Not found."}, 404)
            prefix = query.get("path", [""])[0]
            found = sorted((self._listing(i) for i, a in self.assets.items()
                            if a["dandiset"] == m[1] and a["path"].startswith(prefix)), key=lambda a: a["path"])
            return self._json(h, {"count": len(found), "next": None, "previous": None, "results": found})
        if m := re.fullmatch(r"/api/(?:dandisets/(\d{6})/versions/[^/]+/)?assets/([0-9a-f-]{36})/info/", route):
            if m[2] not in self.assets or (m[1] and self.assets[m[2]]["dandiset"] != m[1]):
                return self._json(h, {"detail": "Not found."}, 404)
            return self._json(h, {**self._listing(m[2]), "metadata": self._metadata(m[2])})
        if m := re.fullmatch(r"/api/(?:dandisets/(\d{6})/versions/[^/]+/)?assets/([0-9a-f-]{36})/", route):
            if m[2] not in self.assets:
                return self._json(h, {"detail": "Not found."}, 404)
            return self._json(h, self._metadata(m[2]))  # the raw metadata, with contentUrl
        if m := re.fullmatch(r"/api/assets/([0-9a-f-]{36})/download/", route):
            if m[1] not in self.assets:
                return self._json(h, {}, 404)
            signed = "?sig=ok" if self.assets[m[1]]["dandiset"] in self.embargoed else ""
            h.send_response(302)
            h.send_header("Location", f"{self.url}/blobs/{m[1]}{signed}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        return self._json(h, {"detail": "Not found."}, 404)

    def _known(self, dandiset: str, version: str) -> bool:
        return version == "draft" and any(a["dandiset"] == dandiset for a in self.assets.values())

    def _version(self, dandiset: str) -> dict:
        return {"version": "draft", "name": "stand-in", "asset_count": 1, "size": 1, "created": TIMES,
                "modified": TIMES, "status": "Valid"}

    def _dandiset(self, h, dandiset: str) -> None:
        if not any(a["dandiset"] == dandiset for a in self.assets.values()):
            return self._json(h, {"detail": "Not found."}, 404)
        status = "EMBARGOED" if dandiset in self.embargoed else "OPEN"
        return self._json(h, {"identifier": dandiset, "created": TIMES, "modified": TIMES, "contact_person": "x",
                              "embargo_status": status, "most_recent_published_version": None,
                              "draft_version": self._version(dandiset)})

    def _listing(self, asset_id: str) -> dict:
        a = self.assets[asset_id]
        return {"asset_id": asset_id, "path": a["path"], "size": a["file"].stat().st_size, "created": TIMES,
                "modified": TIMES, "blob": asset_id, "zarr": None}

    def _metadata(self, asset_id: str) -> dict:
        return {"id": f"dandiasset:{asset_id}", "path": self.assets[asset_id]["path"],
                "contentUrl": [f"{self.api}/assets/{asset_id}/download/", f"{self.url}/blobs/{asset_id}"]}

    def _blob(self, h, asset_id: str, query: dict, head: bool) -> None:
        if asset_id not in self.assets:
            return self._json(h, {}, 404)
        if self.assets[asset_id]["dandiset"] in self.embargoed and query.get("sig") != ["ok"]:
            return self._json(h, {"error": "AccessDenied"}, 403)
        data = self.assets[asset_id]["file"].read_bytes()
        start, stop = 0, len(data) - 1
        ranged = re.fullmatch(r"bytes=(\d+)-(\d+)", h.headers.get("Range", ""))
        if ranged:
            start, stop = int(ranged[1]), min(int(ranged[2]), len(data) - 1)
            if start <= self.fail_at.get(asset_id, -1) <= stop:
                return self._json(h, {"error": "SlowDown"}, 503)
            offset, pending = self.faults.get(asset_id, (-1, []))
            if pending and start <= offset <= stop and not head:
                return self._fault(h, pending.pop(0), data[start:stop + 1], start, len(data))
        body = data[start:stop + 1]
        h.send_response(206 if ranged else 200)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Accept-Ranges", "bytes")
        if ranged:
            h.send_header("Content-Range", f"bytes {start}-{stop}/{len(data)}")
        h.end_headers()
        if not head:
            try:
                h.wfile.write(body)
                self.bytes_served[asset_id] += len(body)
            except (BrokenPipeError, ConnectionResetError):  # a client that only wanted the headers
                pass
        return None

    def _fault(self, h, fault: str, body: bytes, start: int, size: int) -> None:
        """Answer a range request wrongly: an HTTP error status, a connection dropped halfway through the body
        (``drop``), no answer for :attr:`stall_s` (``stall``), or a well-formed answer with half the bytes asked
        for (``truncate``)."""
        if fault in ("500", "503"):
            return self._json(h, {"error": "InternalError" if fault == "500" else "SlowDown"}, int(fault))
        if fault == "stall":
            time.sleep(self.stall_s)
            h.close_connection = True
            return None
        half = body[:len(body) // 2]
        h.send_response(206)
        h.send_header("Content-Length", str(len(body) if fault == "drop" else len(half)))
        h.send_header("Content-Range", f"bytes {start}-{start + (len(body) if fault == 'drop' else len(half)) - 1}"
                                       f"/{size}")
        h.end_headers()
        try:
            h.wfile.write(half)
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        h.close_connection = True
        if fault == "drop":
            h.connection.shutdown(socket.SHUT_RDWR)
        return None

    @staticmethod
    def _json(h, document: dict, status: int = 200) -> None:
        body = json.dumps(document).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)


# ----------------------------------------------------------------------------------------------------------------
# fixtures shared with test_batch.py


@pytest.fixture
def no_foreign_hosts(monkeypatch):
    """Refuse every socket connection except to 127.0.0.1; the list of refused addresses is returned."""
    refused = []
    connect = socket.socket.connect

    def guarded(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "localhost"):
            refused.append(address)
            raise OSError(f"test: connection to {address} refused (tests are offline)")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setenv("DANDI_NO_ET", "1")
    monkeypatch.delenv("DANDI_API_KEY", raising=False)
    return refused


@pytest.fixture
def stand_in(no_foreign_hosts, monkeypatch):
    with cyclic_gc_paused():
        server = DandiStandIn()
        monkeypatch.setenv(dandi.API_URL_ENV, server.api)
        yield server
        server.close()
    assert not no_foreign_hosts, f"something tried to leave 127.0.0.1: {no_foreign_hosts}"


@pytest.fixture(scope="session")
def movie_file(tmp_path_factory) -> Path:
    """The simulated 2p movie of the brief (300 frames of 40 x 56 px, 8 cells), chunked by 25 frames."""
    sim = simulate_2p(n_rows=40, n_cols=56, n_frames=300, n_cells=8, seed=1)
    path = tmp_path_factory.mktemp("dandi") / "movie.nwb"
    write_simulated_nwb(path, sim, chunk_frames=25, compression=None,
                        subject={"subject_id": "mouse-7", "species": "Mus musculus", "sex": "F", "age": "P90D"})
    return path


CONFIG = ExtractConfig().replace(avg_cell_radius=3.5, backend="numpy")
RUN_SETS = ["--set", "avg_cell_radius=3.5", "--backend", "numpy", "-q"]


# ----------------------------------------------------------------------------------------------------------------
# resolution of every input form


def test_derived_file_name():
    assert dandi.derived_file_name("sub-01/sub-01_ses-2_ophys.nwb") == "sub-01/sub-01_ses-2_desc-extract_ophys.nwb"
    assert dandi.derived_file_name("sub-01/sub-01_ses-2_behavior+ophys.nwb.zarr") == \
        "sub-01/sub-01_ses-2_desc-extract_behavior+ophys.nwb"
    assert dandi.derived_file_name("movie.nwb") == "movie_desc-extract.nwb"
    assert dandi.derived_file_name("sub-01/sub-01_ses-2.nwb") == "sub-01/sub-01_ses-2_desc-extract.nwb"


def test_every_input_form_resolves_to_the_asset(stand_in, movie_file):
    asset_id = stand_in.add(DANDISET, "sub-7/sub-7_ophys.nwb", movie_file)
    blob = f"{stand_in.url}/blobs/{asset_id}"
    api = stand_in.api
    forms = [
        (f"dandi://dandi/{DANDISET}@draft/sub-7/sub-7_ophys.nwb", None),
        (f"dandi://dandi/{DANDISET}/sub-7/sub-7_ophys.nwb", None),  # latest version (here the draft)
        (f"DANDI:{DANDISET}/draft", "sub-7/sub-7_ophys.nwb"),
        (f"DANDI:{DANDISET}", "sub-7/sub-7_ophys.nwb"),
        (f"{api}/dandisets/{DANDISET}/versions/draft/assets/?path=sub-7/sub-7_ophys.nwb", None),
        (f"{api}/dandisets/{DANDISET}/versions/draft/assets/{asset_id}/download/", None),
    ]
    for text, path in forms:
        asset = dandi.resolve_asset(text, path=path)
        assert (asset.content_url, asset.path, asset.asset_id, asset.dandiset_id, asset.version) == \
            (blob, "sub-7/sub-7_ophys.nwb", asset_id, DANDISET, "draft"), text
    by_id = dandi.resolve_asset(f"{api}/assets/{asset_id}/download/")  # no dandiset in the URL
    assert (by_id.content_url, by_id.asset_id, by_id.dandiset_id) == (blob, asset_id, None)
    plain = dandi.resolve_asset(blob)
    assert (plain.content_url, plain.dandiset_id) == (blob, None)
    s3 = dandi.resolve_asset("s3://dandiarchive/blobs/abc/def")  # converted only, nothing contacted
    assert s3.content_url == "https://dandiarchive.s3.amazonaws.com/blobs/abc/def"
    assert all(line.startswith(("GET /api/", "HEAD /api/")) for line in stand_in.requests)


def test_dandi_input_detection():
    assert dandi.is_dandi_input("dandi://dandi/000123/sub-1/x.nwb")
    assert dandi.is_dandi_input("DANDI:000123/draft")
    assert dandi.is_dandi_input("s3://bucket/key.nwb")
    assert dandi.is_dandi_input("https://api.dandiarchive.org/api/assets/0a1b2c3d-0000-4000-8000-0123456789ab/")
    assert not dandi.is_dandi_input("https://example.org/data/file.nwb")
    assert not dandi.is_dandi_input("session.nwb")


def test_resolution_errors_are_clear(stand_in, movie_file, monkeypatch):
    stand_in.add(DANDISET, "sub-7/sub-7_ophys.nwb", movie_file)
    with pytest.raises(SourceNotFoundError, match="No such Dandiset"):
        dandi.resolve_asset("dandi://dandi/000999@draft/x.nwb")
    with pytest.raises(SourceNotFoundError, match="No asset at path"):
        dandi.resolve_asset(f"dandi://dandi/{DANDISET}@draft/sub-7/absent.nwb")
    with pytest.raises(dandi.InputError, match="names a dandiset, not an asset"):
        dandi.resolve_asset(f"DANDI:{DANDISET}/draft")
    with pytest.raises(dandi.InputError, match="unknown DANDI instance 'nope'"):
        dandi.resolve_asset(f"dandi://nope/{DANDISET}/x.nwb")
    stand_in.add(EMBARGOED, "sub-1/sub-1_ophys.nwb", movie_file)
    stand_in.embargoed.add(EMBARGOED)
    with pytest.raises(dandi.AuthenticationRequiredError, match="DANDI_API_KEY"):
        dandi.resolve_asset(f"dandi://dandi/{EMBARGOED}@draft/sub-1/sub-1_ophys.nwb")
    monkeypatch.setenv("DANDI_API_KEY", TOKEN)  # honoured: the signed URL of the download redirect is kept
    asset = dandi.resolve_asset(f"dandi://dandi/{EMBARGOED}@draft/sub-1/sub-1_ophys.nwb")
    assert asset.content_url.endswith("?sig=ok")
    with dandi.open_asset(asset) as src:
        assert src.data.shape == (300, 40, 56)


def test_asset_without_imaging_series(stand_in, tmp_path):
    behaviour = tmp_path / "behaviour.nwb"
    _write_without_imaging(behaviour)
    stand_in.add(DANDISET, "sub-1/sub-1_behavior.nwb", behaviour)
    asset = dandi.resolve_asset(f"dandi://dandi/{DANDISET}@draft/sub-1/sub-1_behavior.nwb")
    with pytest.raises(NoImagingSeriesError, match="holds no TwoPhotonSeries"):
        with dandi.open_asset(asset):
            pass


def _write_without_imaging(path: Path) -> None:
    from datetime import datetime, timezone

    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    nwbfile = NWBFile(session_description="behaviour only", identifier=str(uuid.uuid4()),
                      session_start_time=datetime(2026, 1, 1, tzinfo=timezone.utc))
    nwbfile.add_acquisition(TimeSeries(name="speed", data=np.arange(10.0), unit="m/s", rate=10.0))
    with NWBHDF5IO(path, "w") as io:
        io.write(nwbfile)


# ----------------------------------------------------------------------------------------------------------------
# end to end and streaming


def test_run_dandi_uri_writes_a_standalone_result(stand_in, movie_file, tmp_path, capsys):
    asset_id = stand_in.add(DANDISET, "sub-7/sub-7_ophys.nwb", movie_file)
    out = tmp_path / "result.nwb"
    code = main(["run", f"dandi://dandi/{DANDISET}@draft/sub-7/sub-7_ophys.nwb", "-o", str(out), *RUN_SETS])
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == str(out)
    result = read_result(out)
    assert result.frame_shape == (40, 56) and result.n_frames == 300
    assert result.n_cells >= 6  # 8 simulated cells; the engine finds most of them on this easy movie
    from pynwb import NWBHDF5IO, validate

    assert validate(path=str(out)) == []
    with NWBHDF5IO(str(out), "r") as io:
        nwbfile = io.read()
        info = next(obj for obj in nwbfile.objects.values() if getattr(obj, "neurodata_type", None) == "ExtractRunInfo")
        assert (info.dandiset_id, info.dandiset_version, info.dandi_asset_id, info.dandi_asset_path) == \
            (DANDISET, "draft", asset_id, "sub-7/sub-7_ophys.nwb")
        assert info.source_path == f"{stand_in.url}/blobs/{asset_id}"  # the content URL
        assert nwbfile.subject.subject_id == "mouse-7" and nwbfile.subject.species == "Mus musculus"
        assert "Simulated 2p" in nwbfile.session_description
        assert set(nwbfile.imaging_planes) == {"ImagingPlane"} and len(nwbfile.devices) == 1


def _big_asset(stand_in, tmp_path) -> tuple[Path, str]:
    sim = simulate_2p(n_rows=40, n_cols=56, n_frames=1000, n_cells=8, seed=1)
    big = write_movie_nwb(tmp_path / "big.nwb", sim.movie, rate=sim.frame_rate, chunk_frames=100,
                          compression=None)
    return big, stand_in.add(DANDISET, "sub-8/sub-8_ophys.nwb", big)


def test_engine_reads_stream_only_the_frames_asked_for(stand_in, tmp_path):
    """Opening the asset and running the engine on 10 % of a 1000-frame movie (chunks of 100 frames) reads
    at most 30 % of the file: the metadata plus one chunk (~10 %) and remfile's read-ahead."""
    from nwb_extract.engine.pipeline import extract

    big, asset_id = _big_asset(stand_in, tmp_path)
    asset = dandi.resolve_asset(f"DANDI:{DANDISET}/draft", path="sub-8/sub-8_ophys.nwb")
    with dandi.open_asset(asset, frames=(0, 100)) as src:
        result = extract(src.data, CONFIG)
    served, size = stand_in.bytes_served[asset_id], big.stat().st_size
    assert 0.1 * size <= served <= 0.3 * size, f"served {served} of {size} bytes"
    assert result.n_frames == 100


def test_run_streams_only_the_frames_asked_for(stand_in, tmp_path, capsys):
    """The whole `run --frames` over 10 % of the movie (chunked by 100 frames) reads at most 30 % of the file."""
    big, asset_id = _big_asset(stand_in, tmp_path)
    code = main(["run", f"DANDI:{DANDISET}/draft", "--path", "sub-8/sub-8_ophys.nwb", "--frames", "0:100",
                 "-o", str(tmp_path / "part.nwb"), *RUN_SETS])
    assert code == 0, capsys.readouterr().err
    size = big.stat().st_size
    served = stand_in.bytes_served[asset_id]
    print(f"run --frames 0:100 of 1000: served {served} of {size} bytes ({served / size:.1%})")
    assert 0.1 * size <= served <= 0.3 * size, f"served {served} of {size} bytes"
    assert read_result(tmp_path / "part.nwb").n_frames == 100


def test_failure_mid_stream_is_a_remote_read_error(stand_in, movie_file, tmp_path, capsys, monkeypatch):
    import remfile.RemFile

    monkeypatch.setattr(remfile.RemFile, "_num_request_retries", 1)  # 0.1 s of backoff instead of ~50 s
    asset_id = stand_in.add(DANDISET, "sub-7/sub-7_ophys.nwb", movie_file)
    stand_in.fail_at[asset_id] = movie_file.stat().st_size // 2  # inside the frames
    out = tmp_path / "never.nwb"
    code = main(["run", f"dandi://dandi/{DANDISET}@draft/sub-7/sub-7_ophys.nwb", "-o", str(out), *RUN_SETS])
    err = capsys.readouterr().err
    assert code == 16, err
    assert "failed after retries" in err and "503" in err and not out.exists()


def test_cli_errors_have_their_exit_codes(stand_in, movie_file, tmp_path, capsys):
    stand_in.add(DANDISET, "sub-7/sub-7_ophys.nwb", movie_file)
    assert main(["run", "dandi://dandi/000999@draft/x.nwb", "-o", str(tmp_path / "a.nwb")]) == 4
    assert "No such Dandiset" in capsys.readouterr().err
    assert main(["run", f"DANDI:{DANDISET}/draft", "--path", "nope.nwb", "-o", str(tmp_path / "a.nwb")]) == 4
    stand_in.embargoed.add(DANDISET)
    assert main(["run", f"DANDI:{DANDISET}/draft", "--path", "sub-7/sub-7_ophys.nwb",
                 "-o", str(tmp_path / "a.nwb")]) == 17
    assert "DANDI_API_KEY" in capsys.readouterr().err
    assert main(["run", f"DANDI:{DANDISET}", "--in-place"]) == 13
    assert not list(tmp_path.iterdir())


def test_tutorial_runs_against_the_stand_in(stand_in, movie_file, tmp_path, monkeypatch):
    stand_in.add(DANDISET, "sub-7/sub-7_ophys.nwb", movie_file)
    monkeypatch.setenv("NWB_EXTRACT_TUTORIAL_DANDISET", DANDISET)
    monkeypatch.setenv("NWB_EXTRACT_TUTORIAL_ASSET", "sub-7/sub-7_ophys.nwb")
    monkeypatch.chdir(tmp_path)
    namespace = runpy.run_path(str(TUTORIAL), run_name="__main__")
    assert Path(namespace["output"]).is_file()
    assert list_runs(namespace["output"]) == ["run1"]
    assert os.environ[dandi.API_URL_ENV] == stand_in.api
