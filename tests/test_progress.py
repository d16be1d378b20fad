"""Progress reporting: events of every stage in order (per partition too), the tqdm / logging displays, the CLI's
non-terminal log lines, ``--quiet``, and the simulator's events."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nwb_extract
from nwb_extract.config import ExtractConfig
from nwb_extract.io.movie_write import write_simulated_nwb
from nwb_extract.progress import STAGES, ProgressEvent
from nwb_extract.progress_display import LogDisplay
from nwb_extract.simulate import simulate_2p
from nwb_extract.workflow import run_nwb

REPO = Path(__file__).resolve().parents[1]
CONFIG = ExtractConfig(avg_cell_radius=3.5, backend="numpy", chunk_frames=120)


@pytest.fixture(scope="module")
def sim():
    return simulate_2p(n_rows=40, n_cols=56, n_frames=300, n_cells=8, seed=1)


@pytest.fixture(scope="module")
def movie_file(sim, tmp_path_factory):
    return write_simulated_nwb(tmp_path_factory.mktemp("movie") / "movie.nwb", sim)


def _first_seen(events: list[ProgressEvent]) -> list[str]:
    return list(dict.fromkeys(e.stage for e in events))


def _check_stage_events(events: list[ProgressEvent], n_frames: int) -> None:
    """Each stage's events: ``done`` never decreases, the last one is finished, totals are known where the work
    is (everything but cell finding before it stops)."""
    for stage in _first_seen(events):
        mine = [e for e in events if e.stage == stage]
        assert [e.done for e in mine] == sorted(e.done for e in mine), (stage, mine)
        assert mine[-1].finished, (stage, mine[-1])
        assert sum(e.finished for e in mine) == 1, (stage, mine)  # one bar per stage: finished once
        if stage != "cellfinding":
            assert all(e.total is not None for e in mine), mine
    read = [e.done for e in events if e.stage == "read"]
    assert read == [120, 240, n_frames]  # one event a block read (chunk_frames=120)


def test_a_run_reports_every_stage_in_order(movie_file, tmp_path):
    events: list[ProgressEvent] = []
    run = run_nwb(movie_file, tmp_path / "out.nwb", CONFIG, progress=events.append)
    assert _first_seen(events) == list(STAGES)  # read, preprocess, cellfinding, refinement, frr, write
    assert [e.stage for e in events] == sorted((e.stage for e in events), key=STAGES.index)  # stages never interleave
    _check_stage_events(events, 300)
    found = [e for e in events if e.stage == "cellfinding"]
    assert len(found) >= run.result.n_cells + 1  # the start, then one a step
    assert found[-1].message.startswith(f"stopped: {run.result.stop_reason} after ")  # the stop criterion
    refinement = [e for e in events if e.stage == "refinement"]
    assert refinement[0].total == CONFIG.max_iter and refinement[-1].message.endswith(f"{run.result.n_cells} cells")
    assert all(e.message.endswith(" cells") for e in refinement)
    frr = [e for e in events if e.stage == "frr"]  # the kinds run side by side: one event as each finishes
    assert frr[0].message == "baseline_adjusted, nonneg, raw" and frr[0].done == 0
    assert sorted(e.message for e in frr[1:]) == ["baseline_adjusted done", "nonneg done", "raw done"]
    assert [e.done for e in frr] == [0, 1, 2, 3] and frr[-1].finished
    assert events[-1] == ProgressEvent("write", 1, 1, f"wrote {run.path} (run run1)", "files")


def test_partitions_report_their_own_stages(sim):
    events: list[ProgressEvent] = []
    result = nwb_extract.extract(sim.movie, CONFIG, num_partitions_x=2, num_partitions_y=1, progress=events.append)
    assert result.n_cells > 0
    assert {(e.partition, e.n_partitions) for e in events} == {(0, 2), (1, 2)}
    for index in (0, 1):
        mine = [e for e in events if e.partition == index]
        assert _first_seen(mine) == list(STAGES[:-1])  # each partition: read ... frr
        _check_stage_events(mine, 300)
        assert mine[-1].stage == "frr" and mine[-1].finished


def test_no_cells_still_finishes_every_stage(sim):
    events: list[ProgressEvent] = []
    noise = 100 + np.random.default_rng(0).standard_normal((60, 24, 24), dtype=np.float32)  # no cell in pure noise
    result = nwb_extract.extract(noise, avg_cell_radius=3.0, backend="numpy", progress=events.append)
    assert result.n_cells == 0
    assert _first_seen(events) == list(STAGES[:-1])
    assert [e.message for e in events if e.stage in ("refinement", "frr")] == ["skipped: no cells"] * 2


def test_default_python_display_bars_on_a_terminal_and_none_when_off(sim, capsys, monkeypatch):
    movie = sim.movie[:, :24, :24]
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    nwb_extract.extract(movie, avg_cell_radius=3.5, backend="numpy")
    err = capsys.readouterr().err
    for label in ("reading", "preprocessing", "cell finding", "refinement", "final regression"):
        assert f"{label}:" in err, err
    assert "final regression: 100%" in err and "3/3" in err  # tqdm bars with totals (ETA shown while running)
    nwb_extract.extract(movie, avg_cell_radius=3.5, backend="numpy", progress=False)
    nwb_extract.extract(movie, avg_cell_radius=3.5, backend="numpy", python={"progress": False})
    nwb_extract.extract(movie, avg_cell_radius=3.5, backend="numpy", verbose=0)  # EXTRACT's "silent"
    assert capsys.readouterr().err == ""


def test_log_display_lines_with_eta_and_throttling(caplog):
    caplog.set_level(logging.INFO, logger="nwb_extract.progress")
    display = LogDisplay(interval=3600.0)
    for done in range(0, 11):
        display(ProgressEvent("refinement", done, 10, f"{40 - done} cells", "iterations"))
    lines = [r.getMessage() for r in caplog.records if r.name == "nwb_extract.progress"]
    assert len(lines) == 2, lines  # the first and the finishing event; the rest within the interval
    assert lines[0].startswith("refinement: 0/10 iterations (40 cells), ")
    assert lines[1].startswith("refinement: 10/10 iterations (30 cells), ") and lines[1].endswith(", done")
    display = LogDisplay(interval=0.0)
    caplog.clear()
    display(ProgressEvent("preprocess", 0, 300, "baseline", "frames", 1, 4))
    display(ProgressEvent("preprocess", 150, 300, "band-pass", "frames", 1, 4))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("preprocessing [partition 2/4]: 0/300 frames (baseline)")
    assert " ETA " in lines[1]


def test_displays_keep_one_bar_or_line_stream_per_partition_side_by_side(caplog):
    """Partitions run side by side, so their events interleave (and come from several threads): the bar display
    keeps one bar per partition and stage (not a new bar at every switch), the log display throttles each
    partition on its own."""
    from nwb_extract.progress_display import BarDisplay

    made = []

    class Bar:
        def __init__(self, desc, total, **kwargs):
            self.desc, self.total, self.n, self.closed = desc, total, 0, False
            made.append(self)

        def set_postfix_str(self, text, refresh):
            pass

        def update(self, step):
            self.n += step

        def close(self):
            self.closed = True

    bars = BarDisplay()
    bars._tqdm = Bar
    events = [ProgressEvent("refinement", done, 4, "", "iterations", p, 2) for done in range(5) for p in (0, 1)]
    for event in events + [ProgressEvent("frr", 0, 3, "", "kinds", 0, 2)]:
        bars(event)
    assert [b.desc for b in made] == ["refinement [partition 1/2]", "refinement [partition 2/2]",
                                      "final regression [partition 1/2]"]
    assert made[0].n == 4 and made[0].closed and made[1].closed and not made[2].closed
    bars.close()
    assert made[2].closed
    caplog.set_level(logging.INFO, logger="nwb_extract.progress")
    logs = LogDisplay(interval=3600.0)
    for event in events:
        logs(event)
    lines = [r.getMessage() for r in caplog.records if r.name == "nwb_extract.progress"]
    assert len(lines) == 4  # each partition: its first and its finishing event


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DANDI_NO_ET": "1"}
    return subprocess.run([sys.executable, "-m", "nwb_extract.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_without_a_terminal_logs_progress_lines(movie_file, tmp_path):
    """A real process whose stderr is a pipe: INFO lines on nwb_extract.progress, each stage finishing in order."""
    run = _cli("run", str(movie_file), "-o", "r.nwb", "--set", "avg_cell_radius=3.5", "--backend", "numpy",
               cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("INFO nwb_extract.progress: ")]
    finished = [line.split(": ", 1)[1].split(":")[0] for line in lines if line.endswith(", done")]
    assert finished == ["reading", "preprocessing", "cell finding", "refinement", "final regression", "writing"], \
        run.stderr
    assert any("cell finding: " in line and "(stopped: " in line for line in lines), lines


def test_cli_simulate_reports_progress(tmp_path, caplog):
    from nwb_extract.cli import main

    caplog.set_level(logging.INFO, logger="nwb_extract.progress")
    assert main(["simulate", str(tmp_path / "m.nwb"), "--rows", "24", "--cols", "32", "--frames", "60",
                 "--cells", "3"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "nwb_extract.progress"]
    assert lines[0].startswith("simulating: 0/4 steps (start)")
    assert any(line.startswith("simulating: 4/4 steps (movie)") for line in lines), lines
    assert lines[-1].startswith(f"writing: 1/1 files (wrote {tmp_path / 'm.nwb'})"), lines


@pytest.mark.parametrize("off", [["-q"], ["--set", "python.progress=false"]])
def test_cli_quiet_or_progress_off_shows_no_bars(movie_file, tmp_path, capsys, monkeypatch, off):
    from nwb_extract.cli import main

    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert main(["run", str(movie_file), "-o", str(tmp_path / "q.nwb"), "--set", "avg_cell_radius=3.5",
                 "--backend", "numpy", *off]) == 0
    assert capsys.readouterr().err == ""


def test_simulate_reports_its_steps():
    events: list[ProgressEvent] = []
    simulate_2p(n_rows=24, n_cols=24, n_frames=50, n_cells=3, seed=0, progress=events.append)
    assert [(e.stage, e.done, e.total) for e in events] == [("simulate", i, 4) for i in range(5)]
    assert [e.message for e in events] == ["start", "cells: activity", "cells: footprints", "cells: noise", "movie"]
