"""The ``nwb-extract`` console script: --version, --help, demo, simulate, config."""

from __future__ import annotations

import json
import subprocess
import sys

import pynwb

from nwb_extract import __version__
from nwb_extract.cli import main
from nwb_extract.config import ExtractConfig
from nwb_extract.io.nwb_read import read_result


def test_console_script_version_and_help():
    out = subprocess.run(["nwb-extract", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"nwb-extract {__version__} (EXTRACT 1.3.0)"
    out = subprocess.run(["nwb-extract", "--help"], capture_output=True, text=True, check=True)
    for command in ("demo", "simulate", "config"):
        assert command in out.stdout


def test_demo_runs_end_to_end(tmp_path, capsys):
    """The demo finds the simulated cells (F1 and trace correlations printed), writes the movie and result NWB
    files and a PNG. Measured (seed 0): 30 of 30 cells, F1 1.000, median trace correlations 0.93-0.96."""
    assert main(["demo", "--out", str(tmp_path), "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    f1 = float(out.split("F1 ")[1].split(",")[0])
    assert f1 >= 0.9, out
    for kind in ("baseline_adjusted", "nonneg", "raw"):
        line = next(line for line in out.splitlines() if line.strip().startswith(kind))
        corr = float(line.split("ground truth")[1].split(",")[0])
        assert corr > 0.85, line
    assert (tmp_path / "demo_movie.nwb").stat().st_size > 0
    result = read_result(tmp_path / "demo_movie_extract.nwb")
    assert result.n_cells == int(out.split("cells found: ")[1].split(" ")[0])
    png = (tmp_path / "demo_overview.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulate_writes_nwb(tmp_path, capsys):
    path = tmp_path / "sim.nwb"
    assert main(["simulate", str(path), "--rows", "30", "--cols", "44", "--frames", "120", "--cells", "5",
                 "--kind", "1p"]) == 0
    with pynwb.NWBHDF5IO(str(path), "r") as io:
        series = io.read().acquisition["OnePhotonSeries"]
        assert series.data.shape == (120, 30, 44)
    assert main(["simulate", str(path)]) == 12  # refuses to overwrite (exit code table: output exists)
    assert "overwrite" in capsys.readouterr().err


def test_config_prints_validates_and_converts(tmp_path, capsys):
    assert main(["config", "show", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == ExtractConfig().to_dict()
    assert main(["config", "show", "--set", "avg_cell_radius=7", "--set", "thresholds.T_min_snr=9",
                 "--set", "backend=numpy", "--format", "json"]) == 0
    cfg = ExtractConfig.from_json(capsys.readouterr().out)
    assert (cfg.avg_cell_radius, cfg.thresholds.T_min_snr, cfg.python.backend) == (7, 9, "numpy")
    source = tmp_path / "c.json"
    source.write_text(cfg.to_json())
    out = tmp_path / "c.yaml"
    assert main(["config", "convert", str(source), str(out)]) == 0
    assert ExtractConfig.load(out) == cfg
    assert main(["config", "show", "--set", "avg_cell_radus=7"]) == 10
    err = capsys.readouterr().err
    assert err.startswith("nwb-extract config: error:") and "avg_cell_radius" in err and len(err.splitlines()) == 1


def test_module_runs_as_script():
    out = subprocess.run([sys.executable, "-m", "nwb_extract.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout


def test_cli_imports_no_numerical_or_nwb_stack_until_a_command_needs_it(tmp_path):
    """``--help`` and argument errors answer at once: importing the CLI (and ``nwb_extract``) loads none of the
    heavy stacks, and a missing input is reported before any of them is imported (measured: 0.35 s for
    ``python -m nwb_extract.cli run /nonexistent.nwb``, was 1.3-4.5 s)."""
    heavy = ("numpy", "scipy", "h5py", "pynwb", "hdmf", "numba", "tqdm", "roiextractors", "neuroconv", "dandi")
    probe = ("import sys, runpy\n"
             "import nwb_extract, nwb_extract.cli\n"
             f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
             "sys.argv = ['nwb-extract', 'run', 'absent.nwb']\n"
             "try:\n"
             "    runpy.run_module('nwb_extract.cli', run_name='__main__')\n"
             "except SystemExit as stop:\n"
             f"    print(stop.code, sorted(m for m in {heavy!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert out.stdout.splitlines() == ["[]", "4 []"], out
    assert "nwb-extract run: error: no such file: absent.nwb" in out.stderr
