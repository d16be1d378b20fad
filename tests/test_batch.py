"""`nwb-extract batch` over a stand-in dandiset: per-asset isolation, manifest, resume, final table."""

from __future__ import annotations

import json

import remfile.RemFile
from test_dandi import (  # noqa: F401  (fixtures)
    DANDISET,
    RUN_SETS,
    _write_without_imaging,
    movie_file,
    no_foreign_hosts,
    stand_in,
)

from nwb_extract.cli import BATCH_FAILED, main
from nwb_extract.io.dandi import MANIFEST_NAME
from nwb_extract.io.nwb_read import read_result


def test_batch_isolates_failures_and_resumes(stand_in, movie_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(remfile.RemFile, "_num_request_retries", 1)  # 0.1 s of backoff instead of ~50 s
    behaviour = tmp_path / "behaviour.nwb"
    _write_without_imaging(behaviour)
    stand_in.add(DANDISET, "sub-1/sub-1_ses-1_ophys.nwb", movie_file)
    flaky = stand_in.add(DANDISET, "sub-2/sub-2_ses-1_ophys.nwb", movie_file)
    stand_in.add(DANDISET, "sub-3/sub-3_behavior.nwb", behaviour)
    stand_in.add(DANDISET, "sub-3/notes.txt", behaviour)  # not NWB: never listed
    stand_in.fail_at[flaky] = movie_file.stat().st_size // 2  # fails mid-stream, inside the frames
    out = tmp_path / "out"
    args = ["batch", f"DANDI:{DANDISET}/draft", "-o", str(out), *RUN_SETS]

    assert main(args) == BATCH_FAILED
    first = capsys.readouterr().out
    manifest = json.loads((out / MANIFEST_NAME).read_text())["assets"]
    assert {p: e["status"] for p, e in manifest.items()} == {
        "sub-1/sub-1_ses-1_ophys.nwb": "done", "sub-2/sub-2_ses-1_ophys.nwb": "failed",
        "sub-3/sub-3_behavior.nwb": "skipped"}
    assert "503" in manifest["sub-2/sub-2_ses-1_ophys.nwb"]["error"]
    assert "no TwoPhotonSeries" in manifest["sub-3/sub-3_behavior.nwb"]["error"]
    done = out / "sub-1" / "sub-1_ses-1_desc-extract_ophys.nwb"
    assert manifest["sub-1/sub-1_ses-1_ophys.nwb"]["output"] == "sub-1/sub-1_ses-1_desc-extract_ophys.nwb"
    assert read_result(done).n_cells == manifest["sub-1/sub-1_ses-1_ophys.nwb"]["n_cells"] > 0
    assert not (out / "sub-2" / "sub-2_ses-1_desc-extract_ophys.nwb").exists()
    assert "3 asset(s): 1 done, 1 failed, 1 skipped" in first
    done_mtime = done.stat().st_mtime_ns

    stand_in.fail_at.clear()  # the network is back: a re-run retries only the failed asset
    served_before = dict(stand_in.bytes_served)
    assert main(args) == 0
    second = capsys.readouterr().out
    manifest = json.loads((out / MANIFEST_NAME).read_text())["assets"]
    assert [e["status"] for e in manifest.values()] == ["done", "done", "skipped"]
    assert done.stat().st_mtime_ns == done_mtime  # not redone
    changed = {a for a, n in stand_in.bytes_served.items() if n != served_before[a]}
    assert changed == {flaky}
    assert (out / "sub-2" / "sub-2_ses-1_desc-extract_ophys.nwb").is_file()
    lines = second.splitlines()
    assert any(line.startswith("done ") and "sub-2/sub-2_ses-1_ophys.nwb" in line for line in lines)
    assert any(line.startswith("done (earlier)") and "sub-1/" in line for line in lines)
    assert "3 asset(s): 2 done, 0 failed, 1 skipped" in second


def test_batch_include_glob_and_unknown_dandiset(stand_in, movie_file, tmp_path, capsys):
    stand_in.add(DANDISET, "sub-1/sub-1_ophys.nwb", movie_file)
    stand_in.add(DANDISET, "sub-2/sub-2_ophys.nwb", movie_file)
    out = tmp_path / "out"
    assert main(["batch", f"dandi://dandi/{DANDISET}@draft/", "-o", str(out), "--include", "sub-2/*",
                 *RUN_SETS]) == 0
    manifest = json.loads((out / MANIFEST_NAME).read_text())["assets"]
    assert list(manifest) == ["sub-2/sub-2_ophys.nwb"]
    assert main(["batch", "DANDI:000999/draft", "-o", str(tmp_path / "x")]) == 4
    assert "No such Dandiset" in capsys.readouterr().err
