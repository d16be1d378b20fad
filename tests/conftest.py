"""Shared fixtures: array namespaces to run engine code under, and the reference pack location.

``namespace`` yields ``(xp, device)`` for NumPy, ``array_api_strict`` on two simulated devices (catches a missing
``device=``), and CuPy where it is installed with a GPU (skipped otherwise, and named as skipped in the report).
"""

from __future__ import annotations

import contextlib
import gc
import os
from pathlib import Path

import array_api_compat
import numpy as np
import pytest

os.environ.setdefault("DANDI_NO_ET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference"


def _namespaces():
    yield pytest.param(("numpy", None), id="numpy")
    yield pytest.param(("array_api_strict", "CPU_DEVICE"), id="strict-CPU_DEVICE")
    yield pytest.param(("array_api_strict", "device1"), id="strict-device1")
    yield pytest.param(("cupy", None), id="cupy")


def make_namespace(name: str, device_name: str | None):
    """``(xp, device)`` for a namespace name; skips when CuPy or a GPU is missing."""
    if name == "numpy":
        return array_api_compat.array_namespace(np.empty(0)), "cpu"
    if name == "array_api_strict":
        import array_api_strict

        return array_api_strict, array_api_strict.Device(device_name)
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() == 0:
            raise RuntimeError
    except Exception:
        pytest.skip("CuPy with a CUDA GPU is not available on this machine")
    return array_api_compat.array_namespace(cupy.empty(0)), None


@pytest.fixture(params=list(_namespaces()))
def namespace(request):
    """``(xp, device)`` pairs: numpy, array_api_strict on two devices, cupy (GPU only)."""
    return make_namespace(*request.param)


def to_xp(a, xp, device):
    """NumPy array ``a`` on namespace ``xp`` / ``device`` (dtype kept)."""
    from nwb_extract.engine.backend import from_numpy

    return from_numpy(np.asarray(a), xp, device)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``../shared/reference`` next to the repository (the golden data of the reference EXTRACT)."""
    if not (REFERENCE_DIR / "functions.h5").exists():
        pytest.fail(f"reference pack not found at {REFERENCE_DIR}; CI and developers have it at ../shared/reference")
    return REFERENCE_DIR


@contextlib.contextmanager
def cyclic_gc_paused():
    """Pause Python's cyclic garbage collector while an in-process HTTP server feeds h5py.

    The stand-in servers run in threads of the test process. If a collection starts in a server thread and
    finalizes an unclosed h5py/hdmf object left over from anything earlier, the finalizer waits for h5py's global
    lock, which the main thread holds while it waits for that server's reply: a deadlock (seen intermittently in the
    full suite). Objects are still freed by reference counting; cycles are collected when the block ends.
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()
