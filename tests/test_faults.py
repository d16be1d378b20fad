"""Faults, tested for real (issue #15): a misbehaving HTTP server on 127.0.0.1, a full disk (a small tmpfs), two
processes appending to one file, and bitwise-identical outputs of repeated runs and of a ``--frames`` slice.

The network faults use the DANDI stand-in of ``test_dandi.py`` (its blob store is a plain HTTP file server with
``faults``); each run reads the stand-in's movie (300 frames of 40 x 56 px, chunked by 25 frames) through a plain
http:// URL or a ``dandi://`` address, and the fault hits a byte range inside the frames.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import remfile.RemFile
from test_dandi import (  # noqa: F401  (fixtures)
    DANDISET,
    RUN_SETS,
    movie_file,
    no_foreign_hosts,
    stand_in,
)

from nwb_extract.cli import main
from nwb_extract.io import remote
from nwb_extract.io.nwb_read import list_runs, read_result

REPO_ROOT = Path(__file__).resolve().parents[1]


def _datasets(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an NWB file under processing/ (the results), read back as arrays by path."""
    found = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.dtype.kind != "O" and "run_info_json" not in name:
                found[name] = obj[()]
        f["processing"].visititems(visit)
    return found


def _assert_same_datasets(a: Path, b: Path) -> None:
    first, second = _datasets(a), _datasets(b)
    assert first.keys() == second.keys()
    for name, values in first.items():
        assert values.tobytes() == second[name].tobytes(), name  # bitwise, NaN included


@pytest.fixture(scope="module")
def reference_run(movie_file, tmp_path_factory):
    """The result of a fault-free run on the local file."""
    out = tmp_path_factory.mktemp("faults") / "reference.nwb"
    assert main(["run", str(movie_file), "-o", str(out), *RUN_SETS]) == 0
    return out


# ----------------------------------------------------------------------------------------------------------------
# network


@pytest.fixture
def quick_network(monkeypatch):
    """A 0.5 s time limit per request (instead of 60 s) and the stand-in's stalls of 1.5 s."""
    monkeypatch.setattr(remote, "TIMEOUT_S", 0.5)


@pytest.mark.parametrize("fault", ["500", "503", "drop", "stall", "truncate"])
def test_transient_faults_are_retried_and_the_run_succeeds(fault, stand_in, movie_file, reference_run, tmp_path,
                                                           quick_network, capsys):
    """The server fails 3 times in a row on one range inside the frames (an error status, the connection dropped
    halfway through the body, no answer past the time limit, or a well-formed answer with half the bytes), then
    answers: remfile's retries with backoff recover, and the result is bitwise the fault-free one."""
    stand_in.stall_s = 1.5
    asset_id = stand_in.add(DANDISET, "sub-7/sub-7_ophys.nwb", movie_file)
    stand_in.faults[asset_id] = (movie_file.stat().st_size // 2, [fault] * 3)
    out = tmp_path / "out.nwb"
    assert main(["run", stand_in.blob_url(asset_id), "-o", str(out), *RUN_SETS]) == 0, capsys.readouterr().err
    assert stand_in.faults[asset_id][1] == []  # every fault was served
    _assert_same_datasets(out, reference_run)


@pytest.mark.parametrize("fault, message, address", [
    ("503", "503 Service Unavailable", "url"), ("drop", "Connection broken", "url"), ("stall", "Read timed out", "url"),
    ("truncate", "Unexpected number of bytes", "url"),
    ("stall", "Read timed out", "dandi"),  # a DANDI asset's 503 is test_dandi.py's
])
def test_persistent_faults_are_a_clear_error_and_write_nothing(fault, message, address, stand_in, movie_file,
                                                               tmp_path, quick_network, monkeypatch, capsys):
    monkeypatch.setattr(remfile.RemFile, "_num_request_retries", 1)  # 0.1 s of backoff instead of ~50 s
    stand_in.stall_s = 1.5
    asset_id = stand_in.add(DANDISET, "sub-7/sub-7_ophys.nwb", movie_file)
    stand_in.faults[asset_id] = (movie_file.stat().st_size // 2, [fault] * 100)
    source = (stand_in.blob_url(asset_id) if address == "url"
              else f"dandi://dandi/{DANDISET}@draft/sub-7/sub-7_ophys.nwb")
    out = tmp_path / "never.nwb"
    code = main(["run", source, "-o", str(out), *RUN_SETS])
    err = capsys.readouterr().err.strip()
    assert code == 16, err
    assert len(err.splitlines()) == 1 and err.startswith("nwb-extract run: error: reading ")
    assert "failed after retries with backoff" in err and message in err
    assert list(tmp_path.iterdir()) == []  # no output, no partial file


def test_a_server_that_never_answers_is_a_clear_error(stand_in, movie_file, tmp_path, quick_network, monkeypatch,
                                                      capsys):
    """Also the first request (the file size) has the time limit: without one remfile would wait forever."""
    monkeypatch.setattr(remfile.RemFile, "_num_request_retries", 1)
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections, never answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/movie.nwb"
        assert main(["run", url, "-o", str(tmp_path / "never.nwb"), *RUN_SETS]) == 16
    finally:
        silent.close()
    err = capsys.readouterr().err
    assert "cannot read http://127.0.0.1" in err and "timed out" in err
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------------------------
# a full disk


@pytest.fixture
def small_disk(tmp_path):
    """Mount a tmpfs of a given size at ``tmp_path / "disk"`` (unmounted afterwards); skips when mounting is not
    permitted (CI runs as root, where it is)."""
    mounted = []

    def mount(size: int) -> Path:
        point = tmp_path / "disk"
        point.mkdir()
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip()}); needs root, as in CI")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=True)


@pytest.mark.parametrize("room", [20_000, 200_000],
                         ids=["copy-fails", "append-fails"])
def test_full_disk_in_place_append_keeps_the_original(room, movie_file, small_disk, capsys):
    """The in-place append copies the file beside itself: with 20 kB to spare the copy fails, with 200 kB the copy
    fits and the HDF5 append into it fails. Either way: one clear error, the original byte-identical, no partial
    file, and no h5py traceback on stderr."""
    disk = small_disk(2 * movie_file.stat().st_size if room > 100_000 else movie_file.stat().st_size + room)
    path = disk / "movie.nwb"
    shutil.copy(movie_file, path)
    before = path.read_bytes()
    assert main(["run", str(path), "--in-place", *RUN_SETS[:-1]]) == 13
    err = capsys.readouterr().err.strip()
    assert err == (f"nwb-extract run: error: writing {path} failed: the disk is full; nothing was changed there (the "
                   "partial file was removed). Free some space or write elsewhere with -o")
    assert path.read_bytes() == before and list_runs(path) == []
    assert sorted(p.name for p in disk.iterdir()) == ["movie.nwb"]


def test_full_disk_new_file_leaves_nothing(movie_file, small_disk, capsys):
    disk = small_disk(100_000)
    out = disk / "result.nwb"
    assert main(["run", str(movie_file), "-o", str(out), *RUN_SETS[:-1]]) == 13
    assert "the disk is full" in capsys.readouterr().err
    assert list(disk.iterdir()) == []


# ----------------------------------------------------------------------------------------------------------------
# two processes appending to one file


def _script(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


def test_append_while_another_process_appends_is_a_clear_error(movie_file, tmp_path, capsys):
    """A second process holds the file's update lock (as a running in-place append does): this append fails with
    one clear error and changes nothing; once the other is done, appending works and no lock file is left."""
    path = tmp_path / "movie.nwb"
    shutil.copy(movie_file, path)
    before = path.read_bytes()
    holder = subprocess.Popen(_script(f"""
        import sys
        from nwb_extract.io.atomic import exclusive_update
        with exclusive_update({str(path)!r}):
            print("locked", flush=True)
            sys.stdin.readline()
    """), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["run", str(path), "--in-place", *RUN_SETS[:-1]]) == 13
        err = capsys.readouterr().err.strip()
        assert err == (f"nwb-extract run: error: another process is appending to {path} (it holds "
                       f"{tmp_path / '.movie.nwb.lock'}); nothing was written: run again when it has finished")
        assert path.read_bytes() == before
    finally:
        holder.communicate("done\n", timeout=30)
    assert main(["run", str(path), "--in-place", *RUN_SETS[:-1]]) == 0
    assert list_runs(path) == ["run1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["movie.nwb"]


def test_two_concurrent_appends_lose_nothing(movie_file, tmp_path):
    """Two real ``nwb-extract run --in-place`` processes on one file at once: every process either added its run
    or failed with the busy error (exit 13); at least one succeeded, and the file holds exactly the runs of the
    processes that succeeded (without the lock the later rename silently dropped the other's run)."""
    path = tmp_path / "movie.nwb"
    shutil.copy(movie_file, path)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DANDI_NO_ET": "1"}
    runs = [subprocess.Popen([sys.executable, "-m", "nwb_extract.cli", "run", str(path), "--in-place", "--run-name",
                              name, *RUN_SETS], stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=env)
            for name in ("first", "second")]
    outcomes = {name: (p.wait(timeout=300), p.stderr.read()) for name, p in zip(("first", "second"), runs)}
    for name, (code, err) in outcomes.items():
        assert code == 0 or (code == 13 and "another process is appending" in err), (name, code, err)
    won = sorted(name for name, (code, _) in outcomes.items() if code == 0)
    assert won and sorted(list_runs(path)) == won
    for name in won:
        assert read_result(path, name).n_cells > 0
    assert list(tmp_path.glob(".movie.*")) == []


# ----------------------------------------------------------------------------------------------------------------
# determinism


def test_repeated_runs_and_a_frames_slice_are_bitwise_identical(movie_file, reference_run, tmp_path):
    """A second run of the same input, and ``--frames 100:250`` against the same frames stored as their own file,
    give bitwise-identical result datasets (masks, traces, images, metrics)."""
    again = tmp_path / "again.nwb"
    assert main(["run", str(movie_file), "-o", str(again), *RUN_SETS]) == 0
    _assert_same_datasets(again, reference_run)

    from nwb_extract.io.movie_write import write_movie_nwb

    with h5py.File(movie_file, "r") as f:
        frames = f["acquisition/TwoPhotonSeries/data"][100:250]
        rate = float(f["acquisition/TwoPhotonSeries/starting_time"].attrs["rate"])
    part = write_movie_nwb(tmp_path / "part.nwb", frames, rate=rate)
    sliced, whole = tmp_path / "sliced.nwb", tmp_path / "whole.nwb"
    assert main(["run", str(movie_file), "--frames", "100:250", "-o", str(sliced), *RUN_SETS]) == 0
    assert main(["run", str(part), "-o", str(whole), *RUN_SETS]) == 0
    first, second = _datasets(sliced), _datasets(whole)
    timing = {name for name in first if name.endswith(("starting_time", "timestamps"))}
    for name in first.keys() - timing:
        assert first[name].tobytes() == second[name].tobytes(), name
    assert read_result(sliced).n_cells > 0
