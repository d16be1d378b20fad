"""Tests of ``nwb-extract run``, ``inspect`` and ``config show|validate|convert``: end to end on a simulated NWB movie,
and one test per error kind (exit code, one line on stderr, nothing written).

The movie is ``simulate_2p(n_rows=40, n_cols=56, n_frames=300, n_cells=8, seed=1)``: non-square, so masks written in
the wrong axis order cannot match the footprints. Cell finding is being finished elsewhere, so the end-to-end runs
give the true footprints with ``--footprints`` (EXTRACT's regression_only mode); one run without them expects
success once cell finding lands.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from pynwb import NWBHDF5IO
from pynwb.ophys import TwoPhotonSeries
from pynwb.testing.mock.file import mock_NWBFile
from pynwb.testing.mock.ophys import mock_ImagingPlane

from nwb_extract.cli import BATCH_FAILED, EXIT_CODES, main
from nwb_extract.config import ExtractConfig
from nwb_extract.engine.backend import _cupy_device_count
from nwb_extract.io.movie_write import write_movie_nwb, write_simulated_nwb
from nwb_extract.io.nwb_read import list_runs, read_result
from nwb_extract.simulate import simulate_2p

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


@pytest.fixture(scope="module")
def sim():
    return simulate_2p(n_rows=40, n_cols=56, n_frames=300, n_cells=8, seed=1)


@pytest.fixture(scope="module")
def files(sim, tmp_path_factory):
    """(movie.nwb, footprints.npy) in a module folder; tests copy the movie before changing anything."""
    folder = tmp_path_factory.mktemp("cli_run")
    movie = write_simulated_nwb(folder / "movie.nwb", sim)
    footprints = folder / "footprints.npy"
    np.save(footprints, sim.footprints)
    return movie, footprints


def _radius(sim) -> str:
    return f"avg_cell_radius={float(np.mean(sim.params['cell_radius']))}"


def _run_args(files, sim, *extra):
    movie, footprints = files
    return ["run", str(movie), "--footprints", str(footprints), "--set", _radius(sim), "--backend", "numpy", *extra]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _runs(path: Path) -> list:
    """Every run in a result file, read back with the writer's reader (footprints in stored axis order)."""
    return [read_result(path, name) for name in list_runs(path)]


def _primary_starting_time(path: Path) -> float:
    with NWBHDF5IO(str(path), "r") as io:
        nwbfile = io.read()
        [series] = [o for o in nwbfile.objects.values()
                    if getattr(o, "neurodata_type", None) == "RoiResponseSeries" and o.name == "RoiResponseSeries"]
        return series.starting_time


def _one_error_line(capsys, command="run") -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"nwb-extract {command}: error: "), err
    return err


# ----------------------------------------------------------------------------------------------------------------
# end to end


def test_run_with_footprints_writes_cells_and_prints_a_summary(files, sim, tmp_path, capsys):
    movie, _ = files
    before = _digest(movie)
    out = tmp_path / "result.nwb"
    assert main(_run_args(files, sim, "-o", str(out))) == 0
    stdout, stderr = capsys.readouterr()
    assert "reading" not in stderr  # stderr is not a terminal here: no progress bar
    assert re.search(r"found 8 cells in acquisition/TwoPhotonSeries \(frames 0:300, 300 frames of 40 x 56 px\)",
                     stdout), stdout
    assert re.search(r"time per stage: read [\d.]+ s, preprocess [\d.]+ s, .*total [\d.]+ s", stdout), stdout
    assert f"wrote {out}" in stdout
    assert _digest(movie) == before  # the input is never touched without --in-place
    [result] = _runs(out)
    # masks follow the stored axis order (40 x 56) and are the given footprints scaled to max 1 (already max 1):
    # float32 round trip, so 1e-6 absolute
    np.testing.assert_allclose(result.footprints, sim.footprints, atol=1e-6)
    traces = result.primary
    assert result.primary_trace == "baseline_adjusted" and traces.shape == (300, 8)
    corr = [np.corrcoef(traces[:, k], sim.traces[:, k])[0, 1] for k in range(8)]
    assert np.median(corr) > 0.9, corr  # the demo's accuracy bar for regression with true footprints


def test_default_output_is_next_to_the_input(files, sim, tmp_path, capsys):
    movie = shutil.copy(files[0], tmp_path / "session.nwb")
    assert main(_run_args((movie, files[1]), sim, "-q")) == 0
    expected = tmp_path / "session_extract.nwb"
    assert capsys.readouterr().out.strip() == str(expected)  # -q prints only the output path
    assert [r.n_cells for r in _runs(expected)] == [8]


def test_frame_range_and_series_selection(files, sim, tmp_path, caplog):
    caplog.set_level("INFO", logger="nwb_extract")
    out = tmp_path / "part.nwb"
    assert main(_run_args(files, sim, "--series", "TwoPhotonSeries", "--frames", "100:250", "-v", "-o",
                          str(out))) == 0
    assert any("acquisition/TwoPhotonSeries (TwoPhotonSeries), frames 100:250, 40 x 56 px" in r.getMessage()
               for r in caplog.records)  # -v logs what is read
    [result] = _runs(out)
    assert result.primary.shape == (150, 8)
    assert _primary_starting_time(out) == pytest.approx(100 / sim.frame_rate)  # time of the first frame used


def test_in_place_appends_and_keeps_the_movie(files, sim, tmp_path, capsys):
    movie = Path(shutil.copy(files[0], tmp_path / "session.nwb"))
    assert main(_run_args((movie, files[1]), sim, "--in-place")) == 0
    assert f"wrote {movie}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["session.nwb"]  # no new file, no leftovers
    with NWBHDF5IO(str(movie), "r") as io:
        assert io.read().acquisition["TwoPhotonSeries"].data[:].tobytes() == sim.movie.tobytes()
    assert [r.n_cells for r in _runs(movie)] == [8]


def test_run_plot_writes_the_overview_png(files, sim, tmp_path, capsys, monkeypatch):
    import nwb_extract.plots

    rates = []
    draw = nwb_extract.plots.plot_overview
    monkeypatch.setattr(nwb_extract.plots, "plot_overview",
                        lambda result, path, **kw: rates.append(kw["frame_rate"]) or draw(result, path, **kw))
    png = tmp_path / "overview.png"
    assert main(_run_args(files, sim, "-o", str(tmp_path / "r.nwb"), "--plot", str(png))) == 0
    assert f"figure: {png}" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rates == [pytest.approx(sim.frame_rate)]  # time axis in seconds from the series' rate
    # an existing figure is refused before any work, like the result file
    assert main(_run_args(files, sim, "-o", str(tmp_path / "r2.nwb"), "--plot", str(png))) == 12
    assert "overview.png already exists" in _one_error_line(capsys)
    assert not (tmp_path / "r2.nwb").exists()


def test_negative_frames_count_from_the_end(files, sim, tmp_path, capsys):
    out = tmp_path / "tail.nwb"
    assert main(_run_args(files, sim, "--frames", "-50:", "-o", str(out))) == 0  # not taken for an option
    assert "(frames 250:300, 50 frames of 40 x 56 px)" in capsys.readouterr().out
    assert _runs(out)[0].primary.shape == (50, 8)
    assert main(_run_args(files, sim, "--frames=-100:-40", "-o", str(tmp_path / "mid.nwb"))) == 0
    assert "(frames 200:260, 60 frames" in capsys.readouterr().out


def test_inspect_lists_runs_cells_and_config_differences(files, sim, tmp_path, capsys):
    movie = Path(shutil.copy(files[0], tmp_path / "session.nwb"))
    assert main(_run_args((movie, files[1]), sim, "--in-place", "--run-name", "first")) == 0
    assert main(_run_args((movie, files[1]), sim, "--in-place", "--run-name", "second",
                          "--set", "thresholds.T_min_snr=12", "--set", "trace_output_option=nonneg")) == 0
    capsys.readouterr()
    assert main(["inspect", str(movie)]) == 0
    out = capsys.readouterr().out
    assert "2 nwb-extract run(s)" in out
    assert re.search(r"first: 8 cells", out) and re.search(r"second: 8 cells", out), out
    assert "config first -> second: 2 difference(s)" in out
    assert "thresholds.T_min_snr: 7.0 -> 12.0" in out
    assert "trace_output_option: 'baseline_adjusted' -> 'nonneg'" in out
    # each run's own changes from the defaults (what ran: the backend and use_gpu are the run's record, not a choice)
    first, second = out.split("second: ")[0], out.split("second: ")[1].split("config first")[0]
    assert "settings that differ from the defaults: 4" in first, out
    for line in ("avg_cell_radius: 3.5", "regression_only: True", "S_init: <array (8, 40, 56)>", "max_iter: 0"):
        assert line in first, out
    assert "thresholds.T_min_snr: 12.0" in second and "trace_output_option: 'nonneg'" in second, out


def test_inspect_one_run_shows_its_settings(files, sim, tmp_path, capsys):
    out = tmp_path / "one.nwb"
    assert main(_run_args(files, sim, "-o", str(out), "--set", "thresholds.T_min_snr=9")) == 0
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "1 nwb-extract run(s)" in text and "thresholds.T_min_snr: 9.0" in text, text
    assert "use_gpu" not in text and "python.backend" not in text, text


def test_run_streams_a_url(files, sim, tmp_path, capsys):
    from test_movie import serving  # the local Range HTTP server of the streaming tests

    out = tmp_path / "remote.nwb"
    with serving(files[0].read_bytes()) as server:
        assert main(["run", server.url, "--footprints", str(files[1]), "--set", _radius(sim), "--backend", "numpy",
                     "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    [result] = _runs(out)
    np.testing.assert_allclose(result.footprints, sim.footprints, atol=1e-6)  # float32 round trip
    assert result.primary.shape == (300, 8)


def test_progress_bar_on_a_terminal(files, sim, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert main(_run_args(files, sim, "-o", str(tmp_path / "b.nwb"), "--set", "chunk_frames=120")) == 0
    err = capsys.readouterr().err
    assert [int(n) for n in re.findall(r"(\d+)/300", err) if int(n)][:2] == [120, 240], err  # a step a block


def test_run_without_footprints_finds_cells(files, sim, tmp_path, capsys):
    """Full cell finding (EXTRACT engine II); passes once the engine's cell finding has landed."""
    out = tmp_path / "found.nwb"
    code = main(["run", str(files[0]), "-o", str(out), "--set", _radius(sim), "--backend", "numpy"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    n_found = int(re.search(r"found (\d+) cells", stdout).group(1))
    [result] = _runs(out)
    assert n_found == result.n_cells > 0


# ----------------------------------------------------------------------------------------------------------------
# errors: exit code, one line on stderr, nothing written


def _two_series_file(path: Path, *, volumetric: bool = False) -> Path:
    nwbfile = mock_NWBFile()
    plane = mock_ImagingPlane(nwbfile=nwbfile)
    shape = (5, 6, 7, 2) if volumetric else (5, 6, 7)
    for name in ("A", "B"):
        nwbfile.add_acquisition(TwoPhotonSeries(name=name, imaging_plane=plane, data=np.ones(shape, np.float32),
                                                unit="a.u.", rate=5.0))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    return path


def _no_series_file(path: Path) -> Path:
    with NWBHDF5IO(str(path), "w") as io:
        io.write(mock_NWBFile())
    return path


def _text_file(path: Path) -> Path:
    path.write_text("frame,value\n")
    return path


@pytest.mark.parametrize(("make_input", "extra", "code", "words"), [
    (lambda d, movie: d / "absent.nwb", [], 4, "no such file"),
    (lambda d, movie: _text_file(d / "table.nwb"), [], 5, "not an NWB file"),
    (lambda d, movie: _no_series_file(d / "empty.nwb"), [], 6, "no TwoPhotonSeries or OnePhotonSeries"),
    (lambda d, movie: _two_series_file(d / "two.nwb"), [], 7, "2 imaging series: acquisition/A"),
    (lambda d, movie: movie, ["--series", "Nope"], 8, "no imaging series 'Nope'"),
    (lambda d, movie: _two_series_file(d / "vol.nwb", volumetric=True), ["--series", "A"], 9, "volumetric"),
    (lambda d, movie: movie, ["--set", "avg_cell_radus=3"], 10, "did you mean 'avg_cell_radius'"),
    (lambda d, movie: movie, ["--set", "thresholds.T_min_snr=-4"], 11, "thresholds.T_min_snr"),
    (lambda d, movie: movie, ["--config", "absent.yaml"], 4, "no such config file"),
    (lambda d, movie: movie, ["--footprints", "absent.npy"], 4, "no such footprints file"),
    (lambda d, movie: movie, ["--frames", "250:400"], 3, "frames 250:400 are outside"),
    (lambda d, movie: movie, ["--frames", "-400:"], 3, "frames -400: are outside"),
    (lambda d, movie: movie, ["--frames", "250:100"], 3, "frames 250:100 of acquisition/TwoPhotonSeries are "
                                                         "reversed: START (frame 250) comes after STOP (frame 100)"),
    (lambda d, movie: movie, ["--frames", "100:-200"], 3, "frames 100:-200 of acquisition/TwoPhotonSeries select "
                                                          "no frame"),
    (lambda d, movie: movie, ["--set", "reestimate_S_if_downsampled=true"], 15, "not ported"),
])
def test_input_errors(files, sim, tmp_path, capsys, make_input, extra, code, words):
    source = make_input(tmp_path, files[0])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = sorted(tmp_path.rglob("*"))
    args = ["run", str(source), "-o", str(out_dir / "result.nwb"), "--set", _radius(sim), "--backend", "numpy",
            *extra]
    if "--footprints" not in extra:
        args += ["--footprints", str(files[1])]
    assert main(args) == code
    assert words in _one_error_line(capsys)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, no partial file


def test_footprints_of_the_wrong_shape(files, sim, tmp_path, capsys):
    bad = tmp_path / "fp.npy"
    np.save(bad, np.swapaxes(sim.footprints, 1, 2))  # (cells, cols, rows): the transposed layout
    assert main(["run", str(files[0]), "--footprints", str(bad), "-o", str(tmp_path / "r.nwb")]) == 3
    assert "must be (cells, 40, 56)" in _one_error_line(capsys)
    assert not (tmp_path / "r.nwb").exists()


def test_existing_output_needs_overwrite(files, sim, tmp_path, capsys):
    out = tmp_path / "result.nwb"
    out.write_bytes(b"keep me")
    assert main(_run_args(files, sim, "-o", str(out))) == 12
    assert "--overwrite" in _one_error_line(capsys)
    assert out.read_bytes() == b"keep me"
    assert main(_run_args(files, sim, "-o", str(out), "--overwrite")) == 0
    assert [r.n_cells for r in _runs(out)] == [8]


@pytest.mark.parametrize("where", ["missing folder", "folder is a file", "output is a folder", "output is input"])
def test_unwritable_output(files, sim, tmp_path, capsys, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    movie = Path(shutil.copy(files[0], tmp_path / "movie.nwb"))
    output = {"missing folder": tmp_path / "no" / "r.nwb", "folder is a file": blocker / "r.nwb",
              "output is a folder": tmp_path, "output is input": movie}[where]
    before = {p: _digest(p) for p in tmp_path.rglob("*") if p.is_file()}
    assert main(_run_args((movie, files[1]), sim, "-o", str(output), "--overwrite")) == 13
    _one_error_line(capsys)
    assert {p: _digest(p) for p in tmp_path.rglob("*") if p.is_file()} == before


def test_in_place_on_a_zarr_store_is_refused(files, sim, tmp_path, capsys):
    store = tmp_path / "movie.nwb.zarr"
    store.mkdir()
    (store / ".zgroup").write_text("{}")
    assert main(_run_args((store, files[1]), sim, "--in-place")) == 13
    assert "--in-place appends to a local NWB HDF5 file" in _one_error_line(capsys)


@pytest.mark.skipif(_cupy_device_count() > 0, reason="a GPU is present, so the cupy backend is available")
def test_unavailable_backend(files, sim, tmp_path, capsys):
    args = _run_args(files, sim, "-o", str(tmp_path / "r.nwb"))
    args[args.index("numpy")] = "cupy"
    assert main(args) == 14
    assert "CuPy" in _one_error_line(capsys)
    assert not (tmp_path / "r.nwb").exists()


@pytest.mark.parametrize("extra", [["--frames", "ten:20"], ["--set", "avg_cell_radius"], ["-o", "x.nwb", "--in-place"]])
def test_usage_errors_exit_2(files, extra, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["run", str(files[0]), *extra])
    assert stop.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_exit_codes_are_distinct_and_documented():
    specific = [code for kind, code in EXIT_CODES if kind.__name__ not in ("InputError", "NwbExtractError")]
    assert len(specific) == len(set(specific))
    assert 3 not in specific and not {0, 1, 2, 130} & set(specific)
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", DOCS.read_text(), flags=re.M)}
    assert documented == {code for _, code in EXIT_CODES} | {0, 1, 2, 130, BATCH_FAILED}


# ----------------------------------------------------------------------------------------------------------------
# config show | validate | convert, simulate


def test_config_show(capsys):
    assert main(["config", "show", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == ExtractConfig().to_dict()
    assert main(["config", "show", "--set", "avg_cell_radius=7", "--set", "thresholds.T_min_snr=9",
                 "--set", "backend=numpy", "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["avg_cell_radius"], shown["thresholds"]["T_min_snr"], shown["python"]["backend"]) == (7, 9, "numpy")
    assert main(["config"]) == 0  # no action: the defaults as YAML
    assert ExtractConfig.from_yaml(capsys.readouterr().out) == ExtractConfig()


def test_config_show_describes_every_key_in_groups(capsys):
    from nwb_extract.parameters import PARAMETERS, PYTHON_PARAMETERS, THRESHOLD_PARAMETERS

    assert main(["config", "show", "--set", "avg_cell_radius=7"]) == 0
    text = capsys.readouterr().out
    assert ExtractConfig.from_yaml(text) == ExtractConfig(avg_cell_radius=7)  # the comments change nothing
    lines = text.splitlines()
    assert lines[0] == "# ---- what the algorithm uses"
    assert lines[1:3] == ["# typical cell radius (px); sets filter scales, overlap, tiling, areas",
                          "avg_cell_radius: 7.0"]
    sections = [line for line in lines if line.startswith("# ---- ")]
    assert len(sections) == 5 and sections[-2:] == ["# ---- quality-control thresholds (EXTRACT's config.thresholds)",
                                                    "# ---- Python-only settings"]
    for param in (*PARAMETERS, *THRESHOLD_PARAMETERS, *PYTHON_PARAMETERS):
        assert f"# {param.description}" in text, param.name
    assert "  # minimum trace SNR (cell finding and refinement)\n  T_min_snr: 7.0" in text  # inside thresholds:
    assert "# MATLAB progress bar (see python.progress) [plotting only; no effect here]" in text
    assert main(["config", "show", "--bare"]) == 0
    assert "#" not in capsys.readouterr().out


def test_config_validate_lists_changes_and_rejects_bad_files(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("avg_cell_radius: 7\nthresholds:\n  T_min_snr: 8\n")
    assert main(["config", "validate", str(good)]) == 0
    out = capsys.readouterr().out
    assert "valid EXTRACT config, 2 setting(s) differ from the defaults" in out
    assert "avg_cell_radius: 7" in out and "thresholds.T_min_snr: 8.0" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("avg_cell_radius: -1\n")
    assert main(["config", "validate", str(bad)]) == 11
    assert "avg_cell_radius" in _one_error_line(capsys, "config")
    assert main(["config", "validate", str(good), "--set", "cellfind_min_snr=abc"]) == 11
    _one_error_line(capsys, "config")
    assert main(["config", "validate", str(good), "--set", "thresholds.nope=1"]) == 10
    _one_error_line(capsys, "config")


def test_config_convert_round_trips_between_formats(tmp_path, capsys):
    source = tmp_path / "c.yaml"
    source.write_text("avg_cell_radius: 6\ntrace_output_option: nonneg\nthresholds:\n  T_min_snr: 8\n")
    expected = ExtractConfig.load(source).replace(cellfind_min_snr=2)
    for target in ("c.json", "c.mat", "back.yaml"):
        assert main(["config", "convert", str(source), str(tmp_path / target), "--set", "cellfind_min_snr=2"]) == 0
        assert ExtractConfig.load(tmp_path / target) == expected
    capsys.readouterr()
    assert main(["config", "convert", str(source), str(tmp_path / "c.json")]) == 12  # exists
    _one_error_line(capsys, "config")
    assert main(["config", "convert", str(source), str(tmp_path / "c.txt")]) == 11  # unknown format
    _one_error_line(capsys, "config")
    assert not (tmp_path / "c.txt").exists() and not list(tmp_path.glob(".*partial*"))


def test_simulate_refuses_to_overwrite(tmp_path, capsys):
    path = write_movie_nwb(tmp_path / "m.nwb", np.ones((4, 5, 6), np.float32), rate=5.0)
    before = _digest(path)
    assert main(["simulate", str(path)]) == 12
    assert "--overwrite" in _one_error_line(capsys, "simulate")
    assert _digest(path) == before
