"""Every tutorial in tutorials/ (jupytext percent scripts, *.py) runs to the end, in a fresh temporary folder."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

# dandi_asset.py needs the local DANDI stand-in server; tests/test_dandi.py runs it against that server (tests
# are offline: run here it would contact the real archive)
NEEDS_SERVER = {"dandi_asset"}
TUTORIALS = sorted(p for p in (Path(__file__).resolve().parents[1] / "tutorials").glob("*.py")
                   if p.stem not in NEEDS_SERVER)


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path, monkeypatch):
    """A tutorial must finish without error; its own asserts check what it shows."""
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(path), run_name="__main__")


def test_tutorials_found():
    assert any(p.stem == "neuroconv_segmentation" for p in TUTORIALS)
